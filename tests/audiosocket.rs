//! Asterisk AudioSocket into the daemon binary: an independent Python client written from the
//! protocol's description (`tests/clients/audiosocket_client.py`) plays a call as Asterisk
//! does (UUID, then 20 ms signed-linear frames, then a hangup); the call shows in
//! ListCalls/GetCall as an AudioSocket call named by its UUID and the clone alert arrives on
//! StreamAlerts; broken streams get an error message and nothing else is lost.

mod common;

use std::path::Path;
use std::time::Duration;

use callguard::grpc::proto as pb;
use common::daemon::{Daemon, python};
use common::grpc::*;
use serde_json::Value;

fn start(dir: &Path) -> Daemon {
    start_with(dir, "")
}

/// The daemon with an AudioSocket listener for bank-a, and `server` settings added.
fn start_with(dir: &Path, server: &str) -> Daemon {
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
{server}
[[server.tenants]]
name = "bank-a"
token_sha256 = "{a}"
[store]
path = "alerts.db"
[transcribe]
enabled = false
[[connectors.audiosocket]]
listen = "127.0.0.1:0"
tenant = "bank-a"
"#,
        vad = common::root().join(".deps/silero_vad.onnx").display(),
        model = common::root().join("models/detector.onnx").display(),
        a = callguard::grpc::token_sha256(TOKEN_A),
    );
    std::fs::write(&path, text).unwrap();
    Daemon::start(&path, &[], &["gRPC", "AudioSocket"])
}

fn args(daemon: &Daemon, uuid: &str, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = ["--addr", daemon.addr("AudioSocket"), "--uuid", uuid]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().cloned());
    a
}

fn wav(name: &str) -> String {
    common::audio(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asterisk_call_is_screened_and_its_clone_alert_names_the_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let mut alerts = client
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap()
        .into_inner();
    let uuid = "40325ec2-5efd-4bd3-805f-53576e581d13";
    let a = args(
        &daemon,
        uuid,
        &[
            "--speed".into(),
            "4".into(),
            wav("genuine_1.wav"),
            wav("synthetic_espeak.wav"),
        ],
    );
    let player = std::thread::spawn(move || python("audiosocket_client.py", &a));
    let live = loop {
        let calls = client
            .list_calls(pb::ListCallsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .calls;
        if let Some(c) = calls.into_iter().find(|c| c.call_id == uuid) {
            break c;
        }
        assert!(!player.is_finished(), "the call never showed in ListCalls");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(live.source, pb::CallSource::Audiosocket as i32);
    assert_eq!(live.metadata.unwrap().labels["audiosocket_uuid"], uuid);
    let (code, lines) = tokio::task::spawn_blocking(move || player.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 0, "{lines:?}");
    // A normal hangup gets no reply, only the close.
    assert_eq!(lines, [serde_json::json!({"event": "closed"})]);

    let event = tokio::time::timeout(Duration::from_secs(120), alerts.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::alert_event::Event::Alert(alert)) = event.event else {
        panic!("{event:?}")
    };
    assert_eq!(alert.call_id, uuid);
    assert_eq!(alert.kind, pb::AlertKind::SuspectedClone as i32);
    assert_eq!(alert.metadata.unwrap().labels["audiosocket_uuid"], uuid);
    let info = ended_call(&mut client, uuid).await;
    assert_eq!(info.source, pb::CallSource::Audiosocket as i32);
    let summary = info.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Suspected as i32);
    assert_eq!(summary.frames_rejected, 0);
}

fn error_code(lines: &[Value]) -> Option<String> {
    lines
        .iter()
        .find(|l| l["event"] == "received" && l["kind"] == 0xff)
        .map(|l| l["payload"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_get_an_error_message_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let run = |uuid: &str, scenario: &str| {
        python(
            "audiosocket_client.py",
            &args(&daemon, uuid, &["--scenario".into(), scenario.into()]),
        )
    };

    // Each broken stream is answered with an error message (0xff, callguard's code) and a close.
    for (uuid, scenario, code) in [
        (
            "00000000-0000-0000-0000-000000000001",
            "audio-before-uuid",
            "10",
        ),
        ("00000000-0000-0000-0000-000000000002", "bad-uuid", "11"),
        ("00000000-0000-0000-0000-000000000003", "truncated", "14"),
    ] {
        let (exit, lines) = run(uuid, scenario);
        assert_eq!(exit, 0, "{scenario}: {lines:?}");
        assert_eq!(
            error_code(&lines).as_deref(),
            Some(code),
            "{scenario}: {lines:?}"
        );
        assert_eq!(lines.last().unwrap()["event"], "closed", "{scenario}");
    }
    // The truncated stream had opened its call: it ended with a summary.
    let info = ended_call(&mut client, "00000000-0000-0000-0000-000000000003").await;
    assert_eq!(info.summary.unwrap().frames_received, 100);

    // An odd-length frame is rejected and counted; an unknown kind is skipped; the call goes on.
    let uuid = "00000000-0000-0000-0000-000000000004";
    let (_, lines) = run(uuid, "odd-frame");
    assert_eq!(lines, [serde_json::json!({"event": "closed"})]);
    let summary = ended_call(&mut client, uuid).await.summary.unwrap();
    assert_eq!(summary.frames_received, 100);
    assert_eq!(summary.frames_rejected, 1);

    // The connection resets without a hangup: the call ends and its summary is written.
    let uuid = "00000000-0000-0000-0000-000000000005";
    let (_, lines) = run(uuid, "drop");
    assert_eq!(lines.last().unwrap()["event"], "dropped");
    let info = ended_call(&mut client, uuid).await;
    assert_eq!(info.source, pb::CallSource::Audiosocket as i32);
    assert!(info.summary.is_some());

    // And a good call still goes through.
    let uuid = "00000000-0000-0000-0000-000000000006";
    let (code, lines) = python(
        "audiosocket_client.py",
        &args(
            &daemon,
            uuid,
            &["--speed".into(), "4".into(), wav("genuine_2.wav")],
        ),
    );
    assert_eq!(code, 0, "{lines:?}");
    let summary = ended_call(&mut client, uuid).await.summary.unwrap();
    assert_eq!(summary.verdict, pb::CallState::Genuine as i32);
}

/// The tenant's call limit holds through the connector: with one call allowed and one on the
/// line, a second Asterisk call is refused with the "cannot screen" error message and closed,
/// and the first is screened to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_tenant_limit_is_refused_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_with(dir.path(), "max_calls_per_tenant = 1");
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let first = "9b5c2a44-0d7e-4c55-9a3e-2f1b6f0e7a10";
    let a = args(
        &daemon,
        first,
        &[
            "--speed".into(),
            "1".into(),
            wav("genuine_1.wav"),
            wav("genuine_2.wav"),
        ],
    );
    let player = std::thread::spawn(move || python("audiosocket_client.py", &a));
    loop {
        let calls = client
            .list_calls(pb::ListCallsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .calls;
        if calls.iter().any(|c| c.call_id == first) {
            break;
        }
        assert!(
            !player.is_finished(),
            "the first call never showed in ListCalls"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = args(
        &daemon,
        "1f0e7a10-9b5c-4c55-9a3e-2a440d7e2f1b",
        &["--speed".into(), "4".into(), wav("genuine_3.wav")],
    );
    let (_, lines) = tokio::task::spawn_blocking(move || python("audiosocket_client.py", &second))
        .await
        .unwrap();
    assert_eq!(error_code(&lines).as_deref(), Some("15"), "{lines:?}");
    assert!(lines.iter().any(|l| l["event"] == "closed"), "{lines:?}");
    let (code, lines) = tokio::task::spawn_blocking(move || player.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 0, "{lines:?}");
    let summary = ended_call(&mut client, first).await.summary.unwrap();
    assert_eq!(summary.frames_lost, 0);
    assert!(summary.audio_ms > 4_000, "{summary:?}");
}
