//! SIPREC into the daemon binary, with sipp (Debian `sip-tester`) as the recording client (the
//! SRC): scenarios in `tests/sipp/`, G.711 RTP from pcaps made by `tests/clients/rtp_pcap.py`
//! (sipp's `play_pcap_audio` plays the caller's stream, the script the agent's). The clone
//! alert arrives on StreamAlerts with the recording metadata, for the caller's stream only;
//! pause/resume, late metadata, CANCEL, refused codecs and peers, packet loss and an RTP stream
//! that stops without BYE each do what RFC 7866 and RFC 3261 say.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use callguard::grpc::proto as pb;
use common::daemon::Daemon;
use common::grpc::*;

fn config(dir: &Path, peer: &str, extra: &str) -> PathBuf {
    let siprec = format!("agent_aor = \"@cc\\\\.bank\\\\.example$\"\n{extra}");
    let peers = format!("[[siprec.peers]]\ntenant = \"bank-a\"\naddresses = [\"{peer}\"]\n");
    write_config(dir, &siprec, &peers)
}

/// The daemon's config: tenants bank-a and bank-b, `siprec` lines added to `[siprec]`, then
/// the `peers` tables.
fn write_config(dir: &Path, siprec: &str, peers: &str) -> PathBuf {
    let path = dir.join("daemon.toml");
    let text = format!(
        r#"[speech]
vad_model = "{vad}"
[detector]
model = "{model}"
when_full = "block"
[server]
listen = "127.0.0.1:0"
[[server.tenants]]
name = "bank-a"
token_sha256 = "{a}"
[[server.tenants]]
name = "bank-b"
token_sha256 = "{b}"
[store]
path = "alerts.db"
[transcribe]
enabled = false
[siprec]
listen = "127.0.0.1:0"
rtp_ports = [42000, 44999]
rtp_timeout_ms = 1500
{siprec}
{peers}"#,
        vad = common::root().join(".deps/silero_vad.onnx").display(),
        model = common::root().join("models/detector.onnx").display(),
        a = callguard::grpc::token_sha256(TOKEN_A),
        b = callguard::grpc::token_sha256(TOKEN_B),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path, extra: &str) -> Daemon {
    Daemon::start(&config(dir, "127.0.0.1", extra), &[], &["gRPC", "SIPREC"])
}

fn venv_python() -> PathBuf {
    common::root().join(".deps/venv/bin/python")
}

/// Writes `name` in `dir`: the WAVs as 20 ms PCMU RTP packets, with loss and reordering.
fn pcap(dir: &Path, name: &str, wavs: &[&str], loss: f32) -> serde_json::Value {
    let mut args = Vec::new();
    if loss > 0.0 {
        args = vec![
            "--loss".to_owned(),
            loss.to_string(),
            "--reorder".into(),
            loss.to_string(),
        ];
    }
    pcap_with(dir, name, wavs, &args)
}

/// As `pcap`, with more of `rtp_pcap.py make`'s options (codec, cut, RTCP).
fn pcap_with(dir: &Path, name: &str, wavs: &[&str], args: &[String]) -> serde_json::Value {
    let mut cmd = Command::new(venv_python());
    cmd.arg(common::root().join("tests/clients/rtp_pcap.py"))
        .arg("make")
        .args(wavs.iter().map(|w| common::audio(w)))
        .arg("--out")
        .arg(dir.join(name))
        .args(args);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn free_port(even: bool) -> u16 {
    loop {
        let p = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if (!even || p.is_multiple_of(2)) && p < 65_000 {
            return p;
        }
    }
}

/// Runs one sipp scenario against the daemon from `dir` (where its pcaps are); returns
/// whether every call of it succeeded, and sipp's output.
fn sipp(
    srs: &str,
    dir: &Path,
    scenario: &str,
    call_id: &str,
    duration_ms: u32,
    local_ip: &str,
    transport: &str,
) -> (bool, String) {
    let agent_cmd = format!(
        "{} {} send {} --to",
        venv_python().display(),
        common::root().join("tests/clients/rtp_pcap.py").display(),
        dir.join("agent.pcap").display(),
    );
    let out = Command::new("sipp")
        .current_dir(dir)
        .arg(srs)
        .arg("-sf")
        .arg(common::root().join("tests/sipp").join(scenario))
        .args(["-m", "1", "-l", "1", "-i", local_ip, "-nostdin"])
        .args(["-t", transport])
        .args([
            "-p",
            &free_port(false).to_string(),
            "-mp",
            &free_port(true).to_string(),
        ])
        .args(["-d", &duration_ms.to_string()])
        .args(["-cid_str", &format!("{call_id}-%u")])
        .args(["-key", "agent_cmd", &agent_cmd])
        .args([
            "-timeout",
            "90s",
            "-timeout_error",
            "-trace_err",
            "-error_file",
        ])
        .arg(dir.join(format!("{scenario}.errors")))
        .output()
        .expect("sipp is installed by scripts/setup.sh (Debian sip-tester)");
    let errors =
        std::fs::read_to_string(dir.join(format!("{scenario}.errors"))).unwrap_or_default();
    let text = format!(
        "{}\n{}\n{errors}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn next_alert(alerts: &mut tonic::Streaming<pb::AlertEvent>) -> pb::Alert {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), alerts.message())
            .await
            .expect("no alert in 120 s")
            .unwrap()
            .unwrap();
        if let Some(pb::alert_event::Event::Alert(a)) = event.event {
            return a;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_raises_the_clone_alert_for_the_caller_stream_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), "");
    pcap(dir.path(), "caller.pcap", &["synthetic_espeak.wav"], 0.0);
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let mut alerts = client
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap()
        .into_inner();
    let srs = daemon.addr("SIPREC").to_owned();
    let path = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        sipp(&srs, &path, "call.xml", "clone", 10_000, "127.0.0.1", "u1")
    });
    let (ok, log) = run.await.unwrap();
    assert!(ok, "{log}");
    let alert = next_alert(&mut alerts).await;
    assert_eq!(alert.call_id, "sip-clone-1");
    assert_eq!(alert.kind, pb::AlertKind::SuspectedClone as i32);
    let meta = alert.metadata.unwrap();
    assert_eq!(
        meta.ani, "+15551230001",
        "the caller comes from the metadata"
    );
    assert_eq!(meta.dnis, "agent-7");
    assert_eq!(meta.labels["siprec_session_id"], "hVpd7YQgRW2nD22h7q60JQ==");
    assert_eq!(
        meta.labels["siprec_participant_id"],
        "srfBElmCRp2QB23b7Mpk0w=="
    );
    assert_eq!(meta.labels["siprec_stream_label"], "1");
    assert_eq!(meta.labels["sip_call_id"], "clone-1");
    let info = ended_call(&mut client, "sip-clone-1").await;
    assert_eq!(info.source, pb::CallSource::Siprec as i32);
    let summary = info.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Suspected as i32);
    // 8.95 s of caller audio, every 20 ms packet of it pushed as one frame.
    assert!(
        (440..=450).contains(&summary.frames_received),
        "{summary:?}"
    );
    assert_eq!(summary.frames_rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_on_the_agent_stream_is_not_screened() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), "");
    pcap(dir.path(), "caller.pcap", &["genuine_1.wav"], 0.0);
    pcap(dir.path(), "agent.pcap", &["synthetic_espeak.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let (ok, log) = sipp(
        daemon.addr("SIPREC"),
        dir.path(),
        "call.xml",
        "agent-clone",
        10_500,
        "127.0.0.1",
        "u1",
    );
    assert!(ok, "{log}");
    let summary = ended_call(&mut client, "sip-agent-clone-1")
        .await
        .summary
        .unwrap();
    assert_eq!(
        summary.verdict,
        pb::CallState::Genuine as i32,
        "{summary:?}"
    );
    assert_eq!(summary.alerts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_late_metadata_and_loss_keep_the_call_screened() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), "");
    let made = pcap(dir.path(), "caller.pcap", &["synthetic_espeak.wav"], 0.02);
    assert!(made["dropped"].as_u64().unwrap() > 0 && made["swapped"].as_u64().unwrap() > 0);
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    for (scenario, id) in [("pause.xml", "paused"), ("late_metadata.xml", "late")] {
        let (ok, log) = sipp(
            daemon.addr("SIPREC"),
            dir.path(),
            scenario,
            id,
            10_000,
            "127.0.0.1",
            "u1",
        );
        assert!(ok, "{scenario}: {log}");
        let info = ended_call(&mut client, &format!("sip-{id}-1")).await;
        assert_eq!(info.metadata.unwrap().ani, "+15551230001", "{scenario}");
        let s = info.summary.unwrap();
        assert_eq!(
            s.verdict,
            pb::CallState::Suspected as i32,
            "{scenario}: {s:?}"
        );
        // Lost packets are filled with silence: call time stays that of the RTP timestamps
        // (8.94 s of caller audio), within 1 %.
        assert!(s.audio_ms.abs_diff(8_940) <= 90, "{scenario}: {s:?}");
        assert!(
            s.frames_lost > 0,
            "{scenario}: the lost packets are counted: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_that_stops_without_bye_ends_the_session_with_our_bye_over_udp_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), "");
    pcap(dir.path(), "caller.pcap", &["genuine_1.wav"], 0.0);
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    // sipp passes only if the SRS sends BYE once the caller's RTP has stopped (over TCP: on
    // the connection the INVITE came on).
    for transport in ["u1", "t1"] {
        let id = format!("stops-{transport}");
        let (ok, log) = sipp(
            daemon.addr("SIPREC"),
            dir.path(),
            "rtp_stops.xml",
            &id,
            0,
            "127.0.0.1",
            transport,
        );
        assert!(ok, "{transport}: {log}");
        let info = ended_call(&mut client, &format!("sip-{id}-1")).await;
        assert!(info.summary.unwrap().frames_received >= 480, "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_over_tls_is_answered() {
    use rcgen::{CertificateParams, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let extra =
        "tls_listen = \"127.0.0.1:0\"\n[siprec.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"";
    let daemon = Daemon::start(
        &config(dir.path(), "127.0.0.1", extra),
        &[],
        &["gRPC", "SIPREC-TLS"],
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(daemon.addr("SIPREC-TLS"))
        .await
        .unwrap();
    let me = tcp.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let options = format!(
        "OPTIONS sips:srs@localhost SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bK-tls1\r\n\
         From: <sips:sbc@localhost>;tag=1\r\nTo: <sips:srs@localhost>\r\nCall-ID: tls-options\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    // A keep-alive CRLF first (RFC 5626), then the request split across two writes.
    stream.write_all(b"\r\n\r\n").await.unwrap();
    let (a, b) = options.as_bytes().split_at(40);
    stream.write_all(a).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(b).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(reply.contains("Supported: siprec"), "{reply}");
    assert!(reply.contains("Via: SIP/2.0/TLS"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sessions_get_the_right_final_response() {
    let dir = tempfile::tempdir().unwrap();
    // Answers wait a second, so a CANCEL can come first.
    let daemon = Daemon::start(
        &config(dir.path(), "127.0.0.1", "answer_delay_ms = 1000"),
        &[],
        &["gRPC", "SIPREC"],
    );
    pcap(dir.path(), "caller.pcap", &["genuine_1.wav"], 0.0);
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    for scenario in ["cancel.xml", "codec.xml"] {
        let (ok, log) = sipp(
            daemon.addr("SIPREC"),
            dir.path(),
            scenario,
            "refused",
            0,
            "127.0.0.1",
            "u1",
        );
        assert!(ok, "{scenario}: {log}");
    }
    // An SRC whose address is not in siprec.peers.
    let (ok, log) = sipp(
        daemon.addr("SIPREC"),
        dir.path(),
        "forbidden.xml",
        "stranger",
        0,
        "127.0.0.2",
        "u1",
    );
    assert!(ok, "{log}");
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let calls = client
        .list_calls(pb::ListCallsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .calls;
    assert!(
        calls.is_empty(),
        "no refused session became a call: {calls:?}"
    );

    // Malformed SIP (RFC 4475-style) gets a 400 with a reason, or nothing when it cannot be
    // answered; OPTIONS keep-alives and unknown methods are answered; the server lives on.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = sock.local_addr().unwrap();
    let srs = daemon.addr("SIPREC");
    let head = |method: &str, extra: &str| {
        format!(
            "{method} sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{method}\r\n\
             From: <sip:sbc@{me}>;tag=1\r\nTo: <sip:srs@{srs}>\r\nCall-ID: torture-{method}\r\n\
             CSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    let ask = |msg: &str| -> Option<String> {
        sock.send_to(msg.as_bytes(), srs).unwrap();
        let mut buf = [0u8; 4096];
        sock.recv_from(&mut buf)
            .ok()
            .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let status = |r: Option<String>| r.and_then(|r| r.split_whitespace().nth(1).map(str::to_owned));
    assert_eq!(status(ask(&head("OPTIONS", ""))).as_deref(), Some("200"));
    assert_eq!(status(ask(&head("REGISTER", ""))).as_deref(), Some("405"));
    assert_eq!(status(ask(&head("BYE", ""))).as_deref(), Some("481"));
    // Not a recording session: the siprec extension is required.
    assert_eq!(
        status(ask(&head("INVITE", "Contact: <sip:ua@x>\r\n"))).as_deref(),
        Some("421")
    );
    // A body that is not the Content-Type it claims.
    let bad_sdp = head(
        "INVITE",
        "Require: siprec\r\nContent-Type: application/sdp\r\n",
    )
    .replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Length: 5\r\n\r\nhello",
    )
    // Another transaction: the same Call-ID and branch would be the 421's retransmission.
    .replace("torture-INVITE", "torture-INVITE-2")
    .replace("z9hG4bK-INVITE", "z9hG4bK-INVITE-2");
    let r = ask(&bad_sdp).unwrap();
    assert!(r.starts_with("SIP/2.0 400 Bad Request (SDP"), "{r}");
    // Missing Call-ID: answerable, 400 names it.
    let r = ask(&head("OPTIONS", "").replace("Call-ID: torture-OPTIONS\r\n", "")).unwrap();
    assert!(r.starts_with("SIP/2.0 400") && r.contains("Call-ID"), "{r}");
    // A negative Content-Length and a broken start line: no crash.
    for junk in [
        head("OPTIONS", "").replace("Content-Length: 0", "Content-Length: -999"),
        "INVITE sip:x SIP/7.0\r\n\r\n".to_owned(),
        "\u{0}\u{1}\u{2}garbage".to_owned(),
    ] {
        let _ = ask(&junk);
    }
    assert_eq!(
        status(ask(&head("OPTIONS", ""))).as_deref(),
        Some("200"),
        "the SRS still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_g722_call_is_screened_wideband_for_the_tenant_its_sbc_names() {
    // One SBC address, two tenants: bank-b takes any identity, bank-a its SBC's From domain.
    // No caller rule is set: the external party (the E.164 number, listed second) is the caller.
    let dir = tempfile::tempdir().unwrap();
    let peers = "[[siprec.peers]]\ntenant = \"bank-b\"\naddresses = [\"127.0.0.1\"]\n\
                 [[siprec.peers]]\ntenant = \"bank-a\"\naddresses = [\"127.0.0.1\"]\n\
                 domains = [\"bank-a.example\"]\n";
    let daemon = Daemon::start(
        &write_config(dir.path(), "", peers),
        &[],
        &["gRPC", "SIPREC"],
    );
    pcap_with(
        dir.path(),
        "caller.pcap",
        &["synthetic_espeak.wav"],
        &["--law".into(), "g722".into()],
    );
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let (ok, log) = sipp(
        daemon.addr("SIPREC"),
        dir.path(),
        "g722.xml",
        "wide",
        10_000,
        "127.0.0.1",
        "u1",
    );
    assert!(ok, "{log}");
    let info = ended_call(&mut client, "sip-wide-1").await;
    assert_eq!(info.metadata.as_ref().unwrap().ani, "+15551230001");
    assert_eq!(
        info.channel_class,
        pb::ChannelClass::Wideband as i32,
        "{info:?}"
    );
    let s = info.summary.unwrap();
    assert_eq!(s.verdict, pb::CallState::Suspected as i32, "{s:?}");
    // 16 kHz audio on the 8 kHz RTP clock: call time is still the audio's (8.94 s).
    assert!(s.audio_ms.abs_diff(8_940) <= 90, "{s:?}");
    assert_eq!(s.frames_rejected, 0, "{s:?}");
    let mut other = common::grpc::client(&daemon.grpc_url(), TOKEN_B).await;
    let calls = other
        .list_calls(pb::ListCallsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .calls;
    assert!(
        calls.is_empty(),
        "bank-b sees none of bank-a's calls: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codec_change_mid_call_and_rtcp_keep_the_call_screened() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), "");
    let rtcp = |seed: &str| {
        vec![
            "--rtcp-every".to_owned(),
            "25".into(),
            "--seed".into(),
            seed.into(),
        ]
    };
    let mut a = rtcp("1");
    a.extend(["--seconds".into(), "4.5".into()]);
    let mut b = rtcp("2");
    b.extend([
        "--start".into(),
        "4.5".into(),
        "--law".into(),
        "g722".into(),
    ]);
    let made_a = pcap_with(dir.path(), "caller_a.pcap", &["synthetic_espeak.wav"], &a);
    let made_b = pcap_with(dir.path(), "caller_b.pcap", &["synthetic_espeak.wav"], &b);
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let (ok, log) = sipp(
        daemon.addr("SIPREC"),
        dir.path(),
        "reinvite_codec.xml",
        "recodec",
        4_700,
        "127.0.0.1",
        "u1",
    );
    assert!(ok, "{log}");
    let info = ended_call(&mut client, "sip-recodec-1").await;
    // The call opened narrowband (PCMU) and stays so; G.722 after the re-INVITE is decoded
    // into it, so call time is the audio's: 4.5 s + 4.44 s.
    assert_eq!(
        info.channel_class,
        pb::ChannelClass::NarrowbandG711 as i32,
        "{info:?}"
    );
    let s = info.summary.unwrap();
    assert_eq!(s.verdict, pb::CallState::Suspected as i32, "{s:?}");
    assert!(s.audio_ms.abs_diff(8_940) <= 90, "{s:?}");
    // Every RTCP report (muxed on the RTP port) was read and set aside, runts too.
    let sent = made_a["rtcp"].as_u64().unwrap() + made_b["rtcp"].as_u64().unwrap();
    let finished = (0..100)
        .find_map(|_| {
            let line = daemon
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("SIPREC session finished.") && l.contains("recodec-1"))
                .cloned();
            if line.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            line
        })
        .expect("the session's counters are logged");
    let field = |name: &str| -> u64 {
        let at = finished
            .find(&format!(" {name}="))
            .unwrap_or_else(|| panic!("{name} in {finished}"));
        finished[at + name.len() + 2..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("rtcp"), sent, "{finished}");
    assert_eq!(field("malformed"), sent, "the runts: {finished}");
    assert_eq!(field("unknown_payload"), 0, "{finished}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_over_the_session_limit_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), "max_sessions = 1");
    pcap(dir.path(), "caller.pcap", &["genuine_1.wav"], 0.0);
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let (srs, path) = (daemon.addr("SIPREC").to_owned(), dir.path().to_owned());
    let first = tokio::task::spawn_blocking(move || {
        sipp(&srs, &path, "call.xml", "first", 9_000, "127.0.0.1", "u1")
    });
    // Wait for the first session's call, then a second recording is refused.
    for _ in 0..400 {
        let calls = client
            .list_calls(pb::ListCallsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .calls;
        if !calls.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (srs, path) = (daemon.addr("SIPREC").to_owned(), dir.path().to_owned());
    let (ok, log) = tokio::task::spawn_blocking(move || {
        sipp(&srs, &path, "busy.xml", "second", 0, "127.0.0.1", "u1")
    })
    .await
    .unwrap();
    assert!(ok, "{log}");
    let (ok, log) = first.await.unwrap();
    assert!(ok, "the first session is unharmed: {log}");
    assert_eq!(
        ended_call(&mut client, "sip-first-1")
            .await
            .summary
            .unwrap()
            .alerts,
        0
    );
    // With the first ended, the same offer is taken again.
    let (srs, path) = (daemon.addr("SIPREC").to_owned(), dir.path().to_owned());
    let (ok, log) = tokio::task::spawn_blocking(move || {
        sipp(&srs, &path, "call.xml", "third", 500, "127.0.0.1", "u1")
    })
    .await
    .unwrap();
    assert!(ok, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opus_call_is_screened_as_narrowband_through_a_lossy_codec() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path(), "");
    let made = pcap_with(
        dir.path(),
        "caller.pcap",
        &["synthetic_espeak.wav"],
        &[
            "--law".into(),
            "opus".into(),
            "--rtcp-every".into(),
            "50".into(),
        ],
    );
    assert_eq!(made["packets"], 447);
    pcap(dir.path(), "agent.pcap", &["genuine_1.wav"], 0.0);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let (ok, log) = sipp(
        daemon.addr("SIPREC"),
        dir.path(),
        "opus.xml",
        "opus",
        10_000,
        "127.0.0.1",
        "u1",
    );
    assert!(ok, "{log}");
    let info = ended_call(&mut client, "sip-opus-1").await;
    assert_eq!(
        info.channel_class,
        pb::ChannelClass::NarrowbandLossy as i32,
        "{info:?}"
    );
    let s = info.summary.unwrap();
    // Opus frames on the 48 kHz clock, decoded to 8 kHz: call time is the audio's (8.94 s).
    assert!(s.audio_ms.abs_diff(8_940) <= 90, "{s:?}");
    assert_eq!(s.frames_rejected, 0, "{s:?}");
    assert!(s.windows_scored >= 10, "{s:?}");
}
