//! The daemon binary serving gRPC: an independent Python client (grpcio, stubs generated from
//! the proto at run time) streams calls and hears alerts; `kill -9` and a restart lose no
//! alert that was published.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use callguard::grpc::proto as pb;
use common::grpc::*;
use serde_json::Value;

/// `callguard run` with a gRPC server on a free port and no sound devices.
struct Daemon {
    child: Child,
    addr: String,
}

fn write_config(dir: &Path, model: &Path) -> std::path::PathBuf {
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
[[server.tenants]]
name = "bank-b"
token_sha256 = "{b}"
[store]
path = "alerts.db"
"#,
        vad = common::root().join(".deps/silero_vad.onnx").display(),
        model = model.display(),
        a = callguard::grpc::token_sha256(TOKEN_A),
        b = callguard::grpc::token_sha256(TOKEN_B),
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_callguard"))
            .args(["--config", config.to_str().unwrap(), "run", "--json"])
            .env("CALLGUARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the daemon exited before listening")
                .unwrap();
            if let Some(rest) = line.split("gRPC listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining the log so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_client(daemon: &Daemon, token: &str, wav: &Path, call_id: &str) -> (i32, Vec<Value>) {
    let out = Command::new(common::root().join(".deps/venv/bin/python"))
        .arg(common::root().join("clients/python/callguard_client.py"))
        .args([
            "--addr",
            &daemon.addr,
            "--token",
            token,
            "--call-id",
            call_id,
        ])
        .arg(wav)
        .output()
        .expect("run scripts/setup.sh for .deps/venv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[test]
fn the_python_client_streams_calls_and_hears_the_clone_alert() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&write_config(
        dir.path(),
        &common::root().join("models/detector.onnx"),
    ));

    let (code, lines) = python_client(
        &daemon,
        TOKEN_A,
        &common::audio("synthetic_espeak.wav"),
        "py-clone",
    );
    assert_eq!(code, 0, "{lines:?}");
    let ended = lines
        .iter()
        .find_map(|l| l.pointer("/update/ended"))
        .expect("a summary");
    assert_eq!(ended["verdict"], "CALL_STATE_SUSPECTED", "{ended}");
    let alerts: Vec<_> = lines.iter().filter_map(|l| l.get("alert")).collect();
    assert_eq!(alerts[0]["kind"], "ALERT_KIND_SUSPECTED_CLONE", "{lines:?}");
    // The daemon transcribes too: the caller's request may escalate the call once, never more.
    assert!(
        alerts[1..]
            .iter()
            .all(|a| a["kind"] == "ALERT_KIND_ESCALATED" && a["severity"] == "SEVERITY_CRITICAL"),
        "{lines:?}"
    );
    assert!(alerts.len() <= 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.pointer("/update/transcript/text").is_some()),
        "transcript segments stream to the call's client: {lines:?}"
    );
    assert_eq!(alerts[0]["callId"], "py-clone");
    assert_eq!(alerts[0]["tenant"], "bank-a");
    assert_eq!(alerts[0]["metadata"]["agent"], "python-client");
    // The same alert arrived on the call's own stream.
    let on_call = lines
        .iter()
        .find_map(|l| l.pointer("/update/alert"))
        .expect("alert on the call stream");
    assert_eq!(on_call, alerts[0]);

    let (code, lines) = python_client(
        &daemon,
        TOKEN_A,
        &common::audio("genuine_1.wav"),
        "py-genuine",
    );
    assert_eq!(code, 0, "{lines:?}");
    assert!(lines.iter().all(|l| l.get("alert").is_none()), "{lines:?}");
    let ended = lines
        .iter()
        .find_map(|l| l.pointer("/update/ended"))
        .unwrap();
    assert_eq!(ended["verdict"], "CALL_STATE_GENUINE", "{ended}");

    let (code, lines) = python_client(&daemon, "wrong", &common::audio("genuine_1.wav"), "py-x");
    assert_eq!(code, 2);
    assert_eq!(lines.last().unwrap()["error"], "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_replays_every_published_alert() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &common::root().join(".deps/test-models/loudness.onnx"),
    );
    let daemon = Daemon::start(&config);
    let mut first = client(&daemon.url(), TOKEN_A).await;
    let mut live = first
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap()
        .into_inner();
    // Loud, quiet, quiet: the loudness test model alerts, then clears.
    let (frames, rate) = common::loud_quiet_frames(1);
    let updates = stream_call(
        &mut first,
        open_frame("before-crash", pb::Codec::Pcm16le, rate, 1),
        numbered(frames),
    )
    .await
    .unwrap();
    assert_eq!(alerts_of(&updates).len(), 2);
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(60), live.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::alert_event::Event::Alert(a)) = event.event {
            heard.push(a);
        }
    }
    drop(live);
    drop(first);

    // SIGKILL: no shutdown, no flush.
    let mut daemon = daemon;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    drop(daemon);

    let daemon = Daemon::start(&config);
    let mut client = client(&daemon.url(), TOKEN_A).await;
    let mut replay = client
        .stream_alerts(pb::AlertSubscription {
            after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut replayed = Vec::new();
    while replayed.len() < heard.len() {
        let event = tokio::time::timeout(Duration::from_secs(60), replay.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::alert_event::Event::Alert(a)) = event.event {
            replayed.push(a);
        }
    }
    assert_eq!(replayed, heard);
    // The ended call's record survived too.
    let info = client
        .get_call(pb::GetCallRequest {
            call_id: "before-crash".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.state, pb::CallState::Ended as i32);
    assert_eq!(info.summary.unwrap().alerts, 2);
    drop(daemon);
}

/// `kill -9` in the middle of a burst of alerts from many calls, twenty times over one alert
/// log: after each restart every alert a live subscriber saw is replayed with the same id and
/// sequence, and over all twenty the log's sequences only grow and no alert is there twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_alert_bursts_twenty_times_loses_and_repeats_nothing() {
    const ROUNDS: usize = 20;
    const CALLS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &common::root().join(".deps/test-models/loudness.onnx"),
    );
    // Loud then quiet, over and over: the loudness test model alerts and clears every cycle.
    let (frames, rate) = common::loud_quiet_frames(6);
    let mut seen: Vec<pb::Alert> = Vec::new();
    for round in 0..ROUNDS {
        let daemon = Daemon::start(&config);
        let mut sub = client(&daemon.url(), TOKEN_A).await;
        let last = seen.last().map_or(0, |a| a.sequence);
        let mut live = sub
            .stream_alerts(pb::AlertSubscription {
                after_sequence: Some(last),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut calls = Vec::new();
        for c in 0..CALLS {
            let url = daemon.url();
            let frames = frames.clone();
            calls.push(tokio::spawn(async move {
                // The kill may come before this call has connected.
                let Ok(channel) = tonic::transport::Channel::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                else {
                    return;
                };
                let mut caller = with_token(channel, TOKEN_A);
                let open = open_frame(&format!("r{round}-c{c}"), pb::Codec::Pcm16le, rate, 1);
                // Cut off by the kill: an error here is expected.
                let _ = stream_call(&mut caller, open, numbered(frames)).await;
            }));
        }
        // Kill after a few alerts of this round have been heard, at a different point each round.
        let want = 2 + round % 5;
        let mut heard = 0;
        while heard < want {
            let event = tokio::time::timeout(Duration::from_secs(60), live.message())
                .await
                .expect("no alert within 60 s")
                .unwrap()
                .expect("the stream ended before the kill");
            if let Some(pb::alert_event::Event::Alert(a)) = event.event {
                seen.push(a);
                heard += 1;
            }
        }
        let mut daemon = daemon;
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        // What was in flight on the stream when the daemon died may still be read.
        while let Ok(Ok(Some(event))) =
            tokio::time::timeout(Duration::from_secs(5), live.message()).await
        {
            if let Some(pb::alert_event::Event::Alert(a)) = event.event {
                seen.push(a);
            }
        }
        for call in calls {
            call.await.unwrap();
        }
    }
    let daemon = Daemon::start(&config);
    let mut reader = client(&daemon.url(), TOKEN_A).await;
    let mut replay = reader
        .stream_alerts(pb::AlertSubscription {
            after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let last_seen = seen.last().unwrap().sequence;
    let mut logged: Vec<pb::Alert> = Vec::new();
    while logged.last().is_none_or(|a| a.sequence < last_seen) {
        let event = tokio::time::timeout(Duration::from_secs(60), replay.message())
            .await
            .expect("replay stalled")
            .unwrap()
            .unwrap();
        if let Some(pb::alert_event::Event::Alert(a)) = event.event {
            logged.push(a);
        }
    }
    assert!(
        logged.windows(2).all(|p| p[1].sequence > p[0].sequence),
        "sequences must only grow"
    );
    let ids: std::collections::HashSet<_> = logged.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids.len(), logged.len(), "an alert is in the log twice");
    let by_seq: std::collections::HashMap<u64, &pb::Alert> =
        logged.iter().map(|a| (a.sequence, a)).collect();
    for a in &seen {
        assert_eq!(
            by_seq.get(&a.sequence),
            Some(&a),
            "seen but not replayed as seen"
        );
    }
    assert!(seen.len() >= ROUNDS * 2, "{} alerts seen", seen.len());
    eprintln!(
        "{ROUNDS} kills: {} alerts seen live, {} in the log",
        seen.len(),
        logged.len()
    );
}
