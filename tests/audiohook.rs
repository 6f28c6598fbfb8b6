//! Genesys AudioHook Monitor into the daemon binary: an independent Python client written from
//! the protocol's documentation (`tests/clients/audiohook_client.py`) opens a signed session,
//! streams stereo PCMU (customer and agent) in 100 ms frames and closes; the call shows in
//! ListCalls/GetCall as an AudioHook call with the conversation and participant, the clone
//! alert arrives on StreamAlerts and inline as an `event`, for the customer only; protocol
//! errors get a `disconnect` with the reason, and nothing else is lost.

mod common;

use std::path::Path;
use std::time::Duration;

use callguard::grpc::proto as pb;
use common::daemon::{Daemon, python};
use common::grpc::*;
use serde_json::Value;

const API_KEY: &str = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";
const SECRET: &str = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=";

fn start(dir: &Path) -> Daemon {
    let path = dir.join("daemon.toml");
    let text = format!(
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
[[connectors.audiohook]]
tenant = "bank-a"
api_key_env = "CALLGUARD_TEST_AUDIOHOOK_KEY"
client_secret_file = "secret.txt"
inline_alerts = true
"#,
        vad = common::root().join(".deps/silero_vad.onnx").display(),
        model = common::root().join("models/detector.onnx").display(),
        a = callguard::grpc::token_sha256(TOKEN_A),
    );
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.join("secret.txt"), format!("{SECRET}\n")).unwrap();
    Daemon::start(
        &path,
        &[("CALLGUARD_TEST_AUDIOHOOK_KEY", API_KEY)],
        &["gRPC", "connectors"],
    )
}

fn args(daemon: &Daemon, session: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--url",
        &format!("ws://{}/audiohook/bank-a", daemon.addr("connectors")),
        "--api-key",
        API_KEY,
        "--client-secret",
        SECRET,
        "--session-id",
        session,
        "--conversation-id",
        &format!("c0{}", &session[2..]),
        "--speed",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn wav(name: &str) -> String {
    common::audio(name).display().to_string()
}

fn received<'a>(lines: &'a [Value], ty: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "received" && l["message"]["type"] == ty)
        .map(|l| &l["message"])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stereo_session_alerts_for_the_customer_only() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let mut alerts = client
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap()
        .into_inner();
    let session = "00000000-0000-4000-8000-000000000001";
    let a = args(
        &daemon,
        session,
        &[
            "--external",
            &wav("genuine_1.wav"),
            &wav("synthetic_espeak.wav"),
            "--internal",
            &wav("genuine_2.wav"),
        ],
    );
    let player = std::thread::spawn(move || python("audiohook_client.py", &a));
    let live = loop {
        let calls = client
            .list_calls(pb::ListCallsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .calls;
        if let Some(c) = calls.into_iter().find(|c| c.call_id == session) {
            break c;
        }
        assert!(!player.is_finished(), "the call never showed in ListCalls");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(live.source, pb::CallSource::Audiohook as i32);
    let meta = live.metadata.unwrap();
    assert_eq!(meta.ani, "+15550100");
    assert_eq!(meta.dnis, "+18005550199");
    assert_eq!(
        meta.labels["audiohook_conversation_id"],
        "c0000000-0000-4000-8000-000000000001"
    );
    let (code, lines) = tokio::task::spawn_blocking(move || player.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 0, "{lines:?}");
    // opened chose stereo with the customer, every server message numbered in order.
    let opened = received(&lines, "opened");
    assert_eq!(
        opened[0]["parameters"]["media"][0]["channels"],
        serde_json::json!(["external", "internal"])
    );
    let seqs: Vec<u64> = lines
        .iter()
        .filter(|l| l["event"] == "received")
        .map(|l| l["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{lines:?}"
    );
    assert!(!received(&lines, "pong").is_empty(), "{lines:?}");
    let events = received(&lines, "event");
    let inline =
        &events.first().unwrap_or_else(|| panic!("{lines:?}"))["parameters"]["entities"][0];
    assert_eq!(inline["type"], "callguard.alert");
    assert_eq!(inline["data"]["kind"], "suspected_clone");
    assert_eq!(received(&lines, "closed").len(), 1);
    assert_eq!(lines.last().unwrap()["code"], 1000, "{lines:?}");

    let event = tokio::time::timeout(Duration::from_secs(120), alerts.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::alert_event::Event::Alert(alert)) = event.event else {
        panic!("{event:?}")
    };
    assert_eq!(alert.call_id, session);
    assert_eq!(alert.id, inline["data"]["id"].as_str().unwrap());
    let meta = alert.metadata.unwrap();
    assert_eq!(meta.ani, "+15550100");
    assert_eq!(
        meta.labels["audiohook_conversation_id"],
        "c0000000-0000-4000-8000-000000000001"
    );
    let summary = ended_call(&mut client, session).await.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Suspected as i32);
    assert_eq!((summary.frames_rejected, summary.frames_lost), (0, 0));

    // The synthetic voice is the agent's (internal): the customer is genuine, no alert.
    let session = "00000000-0000-4000-8000-000000000002";
    let a = args(
        &daemon,
        session,
        &[
            "--external",
            &wav("genuine_1.wav"),
            "--internal",
            &wav("synthetic_espeak.wav"),
        ],
    );
    let (code, lines) = tokio::task::spawn_blocking(move || python("audiohook_client.py", &a))
        .await
        .unwrap();
    assert_eq!(code, 0, "{lines:?}");
    assert!(received(&lines, "event").is_empty(), "{lines:?}");
    let summary = ended_call(&mut client, session).await.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Genuine as i32);
    assert_eq!(summary.alerts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_a_disconnect_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let run = |session: &str, scenario: &str| {
        let mut a = args(&daemon, session, &["--scenario", scenario]);
        a.extend(["--external".into(), wav("genuine_2.wav")]);
        python("audiohook_client.py", &a)
    };
    // Refused upgrades say why.
    for (scenario, status, words) in [
        ("bad-signature", 401, "signature"),
        ("missing-header", 400, "audiohook-session-id"),
    ] {
        let (code, lines) = run("00000000-0000-4000-8000-000000000010", scenario);
        assert_eq!(code, 0, "{lines:?}");
        assert_eq!(lines[0]["event"], "rejected", "{lines:?}");
        assert_eq!(lines[0]["status"], status, "{lines:?}");
        assert!(
            lines[0]["body"].as_str().unwrap().contains(words),
            "{lines:?}"
        );
    }
    // Protocol errors: a disconnect with reason error and why, then close -> closed.
    for (n, scenario, words) in [
        (11, "audio-before-open", "before opened"),
        (12, "huge-frame", "limit"),
        (13, "out-of-order-seq", "out of order"),
        (14, "unknown-type", "not an AudioHook client message"),
        (15, "ping-storm", "ping storm"),
    ] {
        let session = format!("00000000-0000-4000-8000-0000000000{n}");
        let (code, lines) = run(&session, scenario);
        assert_eq!(code, 0, "{scenario}: {lines:?}");
        let d = received(&lines, "disconnect");
        assert_eq!(d.len(), 1, "{scenario}: {lines:?}");
        assert_eq!(d[0]["parameters"]["reason"], "error");
        assert!(
            d[0]["parameters"]["info"].as_str().unwrap().contains(words),
            "{scenario}: {lines:?}"
        );
        assert_eq!(received(&lines, "closed").len(), 1, "{scenario}: {lines:?}");
    }
    // The opened sessions among them ended their calls with a summary.
    for n in [14, 15] {
        let info = ended_call(
            &mut client,
            &format!("00000000-0000-4000-8000-0000000000{n}"),
        )
        .await;
        assert!(info.summary.is_some());
    }

    // A second of audio missing from the positions is counted as lost.
    let session = "00000000-0000-4000-8000-000000000020";
    let (_, lines) = run(session, "gap");
    assert_eq!(received(&lines, "closed").len(), 1, "{lines:?}");
    let summary = ended_call(&mut client, session).await.summary.unwrap();
    assert_eq!(summary.frames_received, 20);
    assert_eq!(summary.frames_lost, 50, "1 s in 20 ms frames");

    // Audio after close is not taken; close still gets closed.
    let session = "00000000-0000-4000-8000-000000000021";
    let (_, lines) = run(session, "close-mid-audio");
    assert_eq!(received(&lines, "closed").len(), 1, "{lines:?}");
    let summary = ended_call(&mut client, session).await.summary.unwrap();
    assert_eq!(summary.frames_received, 20);

    // The connection drops without close: the call ends with its summary.
    let session = "00000000-0000-4000-8000-000000000022";
    let (_, lines) = run(session, "drop");
    assert_eq!(lines.last().unwrap()["event"], "dropped");
    let info = ended_call(&mut client, session).await;
    assert_eq!(info.source, pb::CallSource::Audiohook as i32);
    assert_eq!(info.summary.unwrap().frames_received, 20);

    // And a good session still goes through.
    let session = "00000000-0000-4000-8000-000000000023";
    let (code, lines) = run(session, "call");
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(received(&lines, "closed").len(), 1, "{lines:?}");
    let summary = ended_call(&mut client, session).await.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Genuine as i32);
}
