//! Twilio Media Streams into the daemon binary: an independent Python client written from
//! Twilio's documentation (`tests/clients/twilio_client.py`) plays a two-track call as Twilio
//! does (signed upgrade, 20 ms mu-law media per track); the call shows in ListCalls/GetCall as a
//! Twilio call with its SIDs, the clone alert arrives on StreamAlerts and inline as a `mark`,
//! for the caller's track only; broken streams get their close code and nothing else is lost.

mod common;

use std::path::Path;
use std::time::Duration;

use callguard::grpc::proto as pb;
use common::daemon::{Daemon, python};
use common::grpc::*;
use serde_json::Value;

const AUTH_TOKEN: &str = "twilio-auth-token-of-bank-a";
const TOKEN_ENV: &str = "CALLGUARD_TEST_TWILIO_TOKEN";

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("daemon.toml");
    let mut text = format!(
        r#"[speech]
vad_model = "{vad}"
[detector]
model = "{model}"
when_full = "block"
[server]
listen = "127.0.0.1:0"
max_speed = 1000.0
burst_ms = 3600000
[[server.tenants]]
name = "bank-a"
token_sha256 = "{a}"
[store]
path = "alerts.db"
[transcribe]
enabled = false
[connectors]
listen = "127.0.0.1:0"
[[connectors.twilio]]
tenant = "bank-a"
auth_token_env = "{TOKEN_ENV}"
caller_track = "inbound"
inline_alerts = true
"#,
        vad = common::root().join(".deps/silero_vad.onnx").display(),
        model = common::root().join("models/detector.onnx").display(),
        a = callguard::grpc::token_sha256(TOKEN_A),
    );
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path) -> Daemon {
    Daemon::start(
        &write_config(dir, ""),
        &[(TOKEN_ENV, AUTH_TOKEN)],
        &["gRPC", "connectors"],
    )
}

fn stream_url(daemon: &Daemon) -> String {
    format!("ws://{}/twilio/bank-a", daemon.addr("connectors"))
}

fn wav(name: &str) -> String {
    common::audio(name).display().to_string()
}

/// The client's arguments for a call on `daemon`.
fn call_args(daemon: &Daemon, stream_sid: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--url",
        &stream_url(daemon),
        "--auth-token",
        AUTH_TOKEN,
        "--stream-sid",
        stream_sid,
        "--call-sid",
        &format!("CA{}", &stream_sid[2..]),
        // Four times real time: the daemon is configured to take it.
        "--speed",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn marks(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.pointer("/message/event") == Some(&Value::from("mark")))
        .map(|l| {
            l.pointer("/message/mark/name")
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn closed(lines: &[Value]) -> (i64, String) {
    let c = lines
        .iter()
        .find(|l| l["event"] == "closed")
        .unwrap_or_else(|| panic!("no close: {lines:?}"));
    (
        c["code"].as_i64().unwrap_or(-1),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn get_call(client: &mut Client, call_id: &str) -> pb::CallInfo {
    client
        .get_call(pb::GetCallRequest {
            call_id: call_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs the client in a thread while the call is watched in ListCalls: the call must show there
/// as a live Twilio call.
async fn call_seen_live(
    client: &mut Client,
    args: Vec<String>,
    stream_sid: &str,
) -> (i32, Vec<Value>, pb::CallInfo) {
    let player = std::thread::spawn(move || python("twilio_client.py", &args));
    let live = loop {
        let calls = client
            .list_calls(pb::ListCallsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .calls;
        if let Some(c) = calls.into_iter().find(|c| c.call_id == stream_sid) {
            break c;
        }
        assert!(!player.is_finished(), "the call never showed in ListCalls");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (code, lines) = tokio::task::spawn_blocking(move || player.join().unwrap())
        .await
        .unwrap();
    (code, lines, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_track_call_alerts_for_the_caller_track_only() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let mut alerts = client
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap()
        .into_inner();

    // The caller speaks genuinely, then a synthetic voice; the agent (outbound) is genuine.
    let sid = "MZ00000000000000000000000000000001";
    let args = call_args(
        &daemon,
        sid,
        &[
            "--inbound",
            &wav("genuine_1.wav"),
            &wav("synthetic_espeak.wav"),
            "--outbound",
            &wav("genuine_2.wav"),
            "--param",
            "From=+15550100",
            "--param",
            "To=+15550199",
            "--param",
            "queue=fraud-desk",
        ],
    );
    let (code, lines, live) = call_seen_live(&mut client, args, sid).await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(live.source, pb::CallSource::Twilio as i32);
    let meta = live.metadata.as_ref().unwrap();
    assert_eq!(meta.ani, "+15550100");
    assert_eq!(meta.dnis, "+15550199");
    assert_eq!(
        meta.labels["twilio_call_sid"],
        "CA00000000000000000000000000000001"
    );
    assert_eq!(meta.labels["twilio_stream_sid"], sid);
    assert_eq!(meta.labels["twilio_tracks"], "inbound,outbound");
    assert_eq!(meta.labels["param.queue"], "fraud-desk");

    // Twilio heard the alert inline, and the stream closed normally after `stop`.
    let marks = marks(&lines);
    assert!(
        marks
            .first()
            .is_some_and(|m| m.starts_with("callguard:suspected_clone:")),
        "{lines:?}"
    );
    assert_eq!(closed(&lines).0, 1000, "{lines:?}");

    // The same alert on StreamAlerts, with the platform's ids.
    let event = tokio::time::timeout(Duration::from_secs(120), alerts.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::alert_event::Event::Alert(alert)) = event.event else {
        panic!("{event:?}")
    };
    assert_eq!(alert.call_id, sid);
    assert_eq!(alert.kind, pb::AlertKind::SuspectedClone as i32);
    assert!(marks[0].ends_with(&alert.id), "{marks:?} {alert:?}");
    let meta = alert.metadata.unwrap();
    assert_eq!(meta.ani, "+15550100");
    assert_eq!(
        meta.labels["twilio_call_sid"],
        "CA00000000000000000000000000000001"
    );

    let info = get_call(&mut client, sid).await;
    assert_eq!(info.source, pb::CallSource::Twilio as i32);
    assert_eq!(info.state, pb::CallState::Ended as i32);
    let summary = info.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Suspected as i32);
    assert_eq!(summary.frames_rejected, 0);
    assert_eq!(summary.frames_lost, 0);

    // The other way round: the synthetic voice is on the agent's (outbound) track, which is
    // not screened, and the caller is genuine: no alert, no mark.
    let sid = "MZ00000000000000000000000000000002";
    let args = call_args(
        &daemon,
        sid,
        &[
            "--inbound",
            &wav("genuine_1.wav"),
            "--outbound",
            &wav("synthetic_espeak.wav"),
        ],
    );
    let (code, lines) = tokio::task::spawn_blocking(move || python("twilio_client.py", &args))
        .await
        .unwrap();
    assert_eq!(code, 0, "{lines:?}");
    assert!(marks_of_alerts(&lines).is_empty(), "{lines:?}");
    assert_eq!(closed(&lines).0, 1000);
    let info = get_call(&mut client, sid).await;
    let summary = info.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Genuine as i32);
    assert_eq!(summary.alerts, 0);
}

fn marks_of_alerts(lines: &[Value]) -> Vec<String> {
    marks(lines)
        .into_iter()
        .filter(|m| m.starts_with("callguard:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_get_their_error_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let run = |sid: &str, scenario: &str| {
        let args = call_args(&daemon, sid, &["--scenario", scenario]);
        python("twilio_client.py", &args)
    };

    // The upgrade is refused, with the reason, unless Twilio signed it.
    for scenario in ["bad-signature", "no-signature"] {
        let (code, lines) = run("MZ10", scenario);
        assert_eq!(code, 0, "{lines:?}");
        assert_eq!(lines[0]["event"], "rejected", "{lines:?}");
        assert_eq!(lines[0]["status"], 403);
        assert!(
            lines[0]["body"]
                .as_str()
                .unwrap()
                .contains("X-Twilio-Signature"),
            "{lines:?}"
        );
    }
    // An unknown tenant.
    let mut args = call_args(&daemon, "MZ11", &[]);
    args[1] = args[1].replace("bank-a", "bank-z");
    let (_, lines) = python("twilio_client.py", &args);
    assert_eq!(lines[0]["status"], 404, "{lines:?}");

    // Protocol violations close the WebSocket with their code and a reason.
    for (scenario, code, words) in [
        ("media-before-start", 1008, "before start"),
        ("bad-encoding", 1003, "audio/x-l16"),
        ("not-json", 1007, "invalid JSON"),
        ("huge-frame", 1009, "limit"),
    ] {
        let (exit, lines) = run(&format!("MZ2{code}"), scenario);
        assert_eq!(exit, 0, "{scenario}: {lines:?}");
        let (got, reason) = closed(&lines);
        assert_eq!(got, code, "{scenario}: {lines:?}");
        assert!(reason.contains(words), "{scenario}: {reason}");
    }
    // A stream that started and then broke still ended its call with a summary.
    let info = get_call(&mut client, "MZ21007").await;
    assert_eq!(info.state, pb::CallState::Ended as i32);
    assert!(info.summary.is_some());

    // A frame with bad base64 is rejected and counted; an unknown event is ignored; the call
    // goes on to its normal end.
    let (_, lines) = run("MZ30", "bad-base64");
    assert_eq!(closed(&lines).0, 1000, "{lines:?}");
    let summary = get_call(&mut client, "MZ30").await.summary.unwrap();
    assert_eq!(summary.frames_received, 100);
    assert_eq!(summary.frames_rejected, 1);
    let (_, lines) = run("MZ31", "unknown-event");
    assert_eq!(closed(&lines).0, 1000, "{lines:?}");
    let summary = get_call(&mut client, "MZ31").await.summary.unwrap();
    assert_eq!(summary.frames_received, 99);
    assert_eq!(summary.frames_rejected, 0);

    // The TCP connection drops without stop or close: the call ends and its summary is
    // written.
    let (_, lines) = run("MZ40", "drop");
    assert_eq!(lines.last().unwrap()["event"], "dropped", "{lines:?}");
    let info = ended_call(&mut client, "MZ40").await;
    assert_eq!(info.source, pb::CallSource::Twilio as i32);
    assert!(info.summary.unwrap().frames_received <= 100);

    // And the daemon still takes a good call.
    let args = call_args(&daemon, "MZ50", &["--inbound", &wav("genuine_2.wav")]);
    let (code, lines) = python("twilio_client.py", &args);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(closed(&lines).0, 1000, "{lines:?}");
    let summary = get_call(&mut client, "MZ50").await.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Genuine as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_arrive_over_tls() {
    use rcgen::{CertificateParams, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let config = write_config(
        dir.path(),
        "[connectors.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    );
    let daemon = Daemon::start(&config, &[(TOKEN_ENV, AUTH_TOKEN)], &["gRPC", "connectors"]);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let port = daemon
        .addr("connectors")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let sid = "MZ00000000000000000000000000000060";
    let mut args = call_args(&daemon, sid, &["--inbound", &wav("genuine_2.wav")]);
    // Twilio signs the wss:// URL; the certificate is for localhost.
    args[1] = format!("wss://localhost:{port}/twilio/bank-a");
    args.extend(["--cafile".into(), cert_path.display().to_string()]);
    let (code, lines) = python("twilio_client.py", &args);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(closed(&lines).0, 1000, "{lines:?}");
    let info = ended_call(&mut client, sid).await;
    assert_eq!(info.summary.unwrap().verdict, pb::CallState::Genuine as i32);
}
