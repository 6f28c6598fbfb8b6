//! Alert delivery to a SOC, with real receivers: a webhook receiver (Python's http.server, in
//! `tests/clients/webhook_receiver.py`) that is down at first, then refuses the first attempts,
//! and checks every signature, across restarts of the daemon; and a syslog collector (a TCP
//! socket here) that parses the octet-counted RFC 5424 frames and their CEF records.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use callguard::alert::AlertLog;
use callguard::audio::g711::Law;
use callguard::grpc::proto as pb;
use common::daemon::Daemon;
use common::grpc::{TOKEN_A, alerts_of, decode, g711_frames, numbered, open_frame, stream_call};
use serde_json::Value;

const SECRET: &str = "soc-webhook-secret";

fn write_config(dir: &std::path::Path, sinks: &str) -> std::path::PathBuf {
    common::daemon::write_config(dir, 1000.0, false, sinks)
}

/// Streams the espeak clone as a G.711 call; returns the alerts the call saw.
fn clone_call(daemon: &Daemon, call_id: &str) -> Vec<pb::Alert> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::grpc::client(&daemon.grpc_url(), TOKEN_A).await;
        let (clone, rate) = decode("synthetic_espeak_ulaw.wav");
        let updates = stream_call(
            &mut client,
            open_frame(call_id, pb::Codec::G711Mulaw, rate, 1),
            numbered(g711_frames(&clone, rate, Law::MuLaw)),
        )
        .await
        .unwrap();
        alerts_of(&updates)
    })
}

/// A free local port (bound, then released for the receiver to take later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Receiver {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Receiver {
    fn start(port: u16, fail_first: u32) -> Self {
        let mut child = Command::new(common::root().join(".deps/venv/bin/python"))
            .arg(common::root().join("tests/clients/webhook_receiver.py"))
            .args(["--secret", SECRET, "--port", &port.to_string()])
            .args(["--fail-first", &fail_first.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run scripts/setup.sh for .deps/venv");
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(first["listening"], port, "{first}");
        Self { child, lines }
    }

    /// Requests until `n` were accepted (all of them, accepted or not, returned).
    fn until_accepted(&self, n: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while all
            .iter()
            .filter(|v: &&Value| v["accepted"] == true)
            .count()
            < n
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => all.push(v),
                Err(_) => panic!("only these arrived: {all:?}"),
            }
        }
        all
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sinks_status(config: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "sinks",
            "status",
            "--json",
        ])
        .env("CALLGUARD_TEST_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

#[test]
fn a_webhook_receiver_down_then_refusing_gets_every_alert_in_order_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[[sinks.webhook]]
name = "soc"
url = "http://127.0.0.1:{port}/callguard"
secret_env = "CALLGUARD_TEST_WEBHOOK_SECRET"
retry_initial_ms = 100
retry_max_ms = 400
timeout_ms = 5000
"#
        ),
    );
    let env = [("CALLGUARD_TEST_WEBHOOK_SECRET", SECRET)];

    // The receiver is down: the alerts of the first call wait in the log.
    let daemon = Daemon::start(&config, &env, &["gRPC"]);
    let first = clone_call(&daemon, "soc-1");
    assert!(!first.is_empty(), "the shipped model alerts on the clone");
    let mut status = sinks_status(&config);
    for _ in 0..100 {
        if status["failures"].as_u64() > Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        status = sinks_status(&config);
    }
    assert_eq!(status["pending"], first.len(), "{status}");
    assert_eq!(status["delivered"], 0, "{status}");
    assert!(
        status["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    // Restarted (as systemd would) while the receiver is still down.
    assert!(daemon.stop(), "the daemon exits cleanly on SIGTERM");
    let daemon = Daemon::start(&config, &env, &["gRPC"]);
    let second = clone_call(&daemon, "soc-2");
    assert!(!second.is_empty());

    // The receiver comes up, refuses its first three requests, then takes everything.
    let receiver = Receiver::start(port, 3);
    let total = first.len() + second.len();
    let requests = receiver.until_accepted(total);
    let refused: Vec<_> = requests.iter().filter(|v| v["accepted"] == false).collect();
    assert_eq!(refused.len(), 3, "{requests:?}");
    assert!(
        refused.iter().all(|v| v["status"] == 503),
        "signatures verified: {refused:?}"
    );
    let accepted: Vec<_> = requests.iter().filter(|v| v["accepted"] == true).collect();
    // Every alert the log holds, in the log's order, each once.
    let log = AlertLog::open(&dir.path().join("alerts.db")).unwrap();
    let logged = log.all_after(0, 1000).unwrap();
    assert_eq!(logged.len(), total);
    let got: Vec<u64> = accepted
        .iter()
        .map(|v| v["sequence"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = logged.iter().map(|a| a.sequence).collect();
    assert_eq!(got, want, "in order, none lost, none twice");
    for (v, a) in accepted.iter().zip(&logged) {
        assert_eq!(v["id"], a.id.as_str());
        assert_eq!(
            v["delivery"],
            a.id.as_str(),
            "the delivery id is the alert id"
        );
        assert_eq!(v["type"], "alert");
        assert_eq!(v["tenant"], "bank-a");
    }
    assert_eq!(accepted[0]["call_id"], "soc-1");
    assert_eq!(accepted[total - 1]["call_id"], "soc-2");
    let mut status = sinks_status(&config);
    for _ in 0..100 {
        if status["pending"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        status = sinks_status(&config);
    }
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["delivered"], total, "{status}");
    assert!(status["last_error"].is_null(), "{status}");

    // A supervisor acknowledges the first alert: the acknowledgement follows.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::grpc::client(&daemon.grpc_url(), TOKEN_A).await;
        client
            .acknowledge_alert(pb::AcknowledgeAlertRequest {
                alert_id: logged[0].id.clone(),
                by: "supervisor-2".into(),
                note: "customer confirmed by call-back".into(),
            })
            .await
            .unwrap();
    });
    let ack = receiver
        .lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the acknowledgement is delivered");
    assert_eq!(ack["type"], "acknowledgement", "{ack}");
    assert_eq!(ack["alert_id"], logged[0].id.as_str());
    assert_eq!(ack["by"], "supervisor-2");
    assert_eq!(ack["tenant"], "bank-a");
    assert!(daemon.stop());
    // A restart after everything went out sends nothing again.
    let daemon = Daemon::start(&config, &env, &["gRPC"]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        receiver.lines.try_recv().is_err(),
        "nothing delivered twice"
    );
    assert!(daemon.stop());
}

/// One octet-counted frame (RFC 6587 3.4.1: `LEN SP MSG`) from `r`.
fn read_frame(r: &mut impl Read) -> String {
    let mut len = String::new();
    let mut byte = [0u8; 1];
    loop {
        r.read_exact(&mut byte).unwrap();
        if byte[0] == b' ' {
            break;
        }
        assert!(
            byte[0].is_ascii_digit(),
            "not a frame length: {len}{}",
            byte[0] as char
        );
        len.push(byte[0] as char);
    }
    let mut msg = vec![0u8; len.parse().unwrap()];
    r.read_exact(&mut msg).unwrap();
    String::from_utf8(msg).unwrap()
}

#[test]
fn a_syslog_collector_gets_each_alert_as_rfc5424_with_cef() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = collector.local_addr().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[[sinks.syslog]]
name = "siem"
address = "{addr}"
facility = 13
retry_initial_ms = 100
retry_max_ms = 400
"#
        ),
    );
    let daemon = Daemon::start(&config, &[], &["gRPC"]);
    let alerts = clone_call(&daemon, "siem-1");
    assert!(!alerts.is_empty());
    let (mut conn, _) = collector.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = AlertLog::open(&dir.path().join("alerts.db")).unwrap();
    let logged = log.all_after(0, 1000).unwrap();
    for a in &logged {
        let m = read_frame(&mut conn);
        // <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD SP MSG
        let fields: Vec<&str> = m.splitn(8, ' ').collect();
        let pri: u32 = fields[0]
            .strip_prefix('<')
            .and_then(|p| p.strip_suffix(">1"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not RFC 5424: {m}"));
        assert_eq!(pri / 8, 13, "facility: {m}");
        assert!(fields[1].ends_with('Z') && fields[1].contains('T'), "{m}");
        assert_eq!(&fields[3..7], ["callguard", "-", "alert", "-"], "{m}");
        let cef = fields[7];
        let header: Vec<&str> = cef.splitn(8, '|').collect();
        assert_eq!(&header[..3], ["CEF:0", "callguard", "callguard"], "{cef}");
        assert_eq!(header[4], a.kind.as_str());
        let ext = header[7];
        assert!(ext.contains(&format!("externalId={}", a.id)), "{ext}");
        assert!(ext.contains(&format!("cn1={}", a.sequence)), "{ext}");
        assert!(ext.contains("cs1=bank-a"), "{ext}");
        assert!(ext.contains("cs2=siem-1"), "{ext}");
        assert!(ext.contains("suser=+15550100"), "{ext}");
    }
    let status = sinks_status(&config);
    assert_eq!(status["kind"], "syslog");
    assert!(daemon.stop());
}
