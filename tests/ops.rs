//! The operations face: `/metrics` read by the Prometheus project's own parser while a clone call
//! is screened, `/healthz` and `/readyz` following the daemon's state (and the gRPC health
//! service with them), and JSON log lines with the call's id and tenant.

mod common;

use std::process::Command;
use std::time::Duration;

use callguard::audio::g711::Law;
use callguard::grpc::proto as pb;
use common::grpc::{
    TOKEN_A, TestServer, alerts_of, audio_frame, decode, g711_frames, open_frame, server_config,
    summary_of,
};
use serde_json::Value;

/// A plain HTTP/1.1 GET: the status code and the body.
use common::http_get as get;

async fn get_async(addr: &str, path: &'static str) -> (u16, String) {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || get(&addr, path))
        .await
        .unwrap()
}

async fn scrape(addr: &str) -> Samples {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || Samples::scrape(&addr))
        .await
        .unwrap()
}

/// `/metrics` as the Prometheus client library's OpenMetrics parser reads it: (name, labels,
/// value) of every sample. The parser refusing the page fails the test.
struct Samples(
    Vec<(String, serde_json::Map<String, Value>, f64)>,
    /// Metric families: (name, type).
    Vec<(String, String)>,
);

impl Samples {
    fn scrape(addr: &str) -> Self {
        let out = Command::new(common::root().join(".deps/venv/bin/python"))
            .arg(common::root().join("tests/clients/scrape.py"))
            .arg(format!("http://{addr}/metrics"))
            .output()
            .expect("run scripts/setup.sh for .deps/venv");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the parser refused /metrics: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["content_type"]
                .as_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
            "{v}"
        );
        let samples = v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_owned(),
                    s[1].as_object().unwrap().clone(),
                    s[2].as_f64().unwrap(),
                )
            })
            .collect();
        let families = v["families"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f[0].as_str().unwrap().to_owned(),
                    f[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        Self(samples, families)
    }

    /// The value of the sample with this name whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }

    fn get(&self, name: &str) -> f64 {
        self.value(name, &[])
            .unwrap_or_else(|| panic!("no sample {name} in {:?}", self.names()))
    }

    fn sum(&self, name: &str) -> f64 {
        self.0.iter().filter(|s| s.0 == name).map(|s| s.2).sum()
    }

    fn names(&self) -> Vec<&str> {
        self.0.iter().map(|s| s.0.as_str()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_screened_clone_call_and_readiness_follows_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::shipped_config())).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = listener.local_addr().unwrap().to_string();
    tokio::spawn(callguard::ops::serve(
        server.guard.clone(),
        listener,
        std::future::pending(),
    ));

    let (code, body) = get_async(&ops, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = get_async(&ops, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    let before = scrape(&ops).await;
    assert_eq!(before.get("callguard_ready"), 1.0);
    assert_eq!(before.get("callguard_calls_ended_total"), 0.0);
    assert_eq!(
        before.value("callguard_build_info", &[("model", server.guard.model())]),
        Some(1.0),
        "{:?}",
        before.names()
    );

    // A G.711 clone call: the first half sent and the call held open, so it shows as live.
    let (clone, rate) = decode("synthetic_espeak_ulaw.wav");
    let frames = g711_frames(&clone, rate, Law::MuLaw);
    let n = frames.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AudioFrame>(n + 1);
    tx.send(open_frame("ops-1", pb::Codec::G711Mulaw, rate, 1))
        .await
        .unwrap();
    let mut frames = frames.into_iter().enumerate();
    for (i, f) in frames.by_ref().take(n / 2) {
        tx.send(audio_frame(i as u64, f)).await.unwrap();
    }
    let mut client = server.client(TOKEN_A).await;
    let call = tokio::spawn(async move {
        let mut inbound = client
            .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut updates = Vec::new();
        while let Some(u) = inbound.message().await.unwrap() {
            updates.push(u);
        }
        updates
    });
    let mut live = None;
    for _ in 0..200 {
        let s = scrape(&ops).await;
        live = s.value(
            "callguard_calls_live",
            &[("source", "stream"), ("tenant", "bank-a")],
        );
        if live == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        live,
        Some(1.0),
        "the open call is live by source and tenant"
    );
    for (i, f) in frames {
        tx.send(audio_frame(i as u64, f)).await.unwrap();
    }
    drop(tx);
    let updates = call.await.unwrap();
    let summary = summary_of(&updates);
    let alerts = alerts_of(&updates);
    assert!(!alerts.is_empty(), "the shipped model alerts on this clone");

    // The call has ended: the dispatcher has counted it once its summary was sent.
    let mut after = scrape(&ops).await;
    for _ in 0..100 {
        if after.get("callguard_calls_ended_total") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(&ops).await;
    }
    assert_eq!(after.get("callguard_calls_ended_total"), 1.0);
    assert_eq!(after.sum("callguard_calls_live"), 0.0);
    let audio_s = clone.len() as f64 / rate as f64;
    let counted = after.get("callguard_audio_seconds_total");
    assert!(
        (counted - audio_s).abs() < 0.05,
        "audio {counted} s counted, {audio_s} s sent"
    );
    assert_eq!(after.get("callguard_frames_received_total"), n as f64);
    assert_eq!(after.get("callguard_frames_lost_total"), 0.0);
    let scored = summary.windows_scored as f64;
    assert!(scored > 0.0);
    assert_eq!(after.get("callguard_windows_scored_total"), scored);
    assert_eq!(after.get("callguard_windows_dropped_total"), 0.0);
    assert_eq!(after.get("callguard_detector_window_seconds_count"), scored);
    assert!(after.get("callguard_detector_window_seconds_sum") > 0.0);
    assert!(after.get("callguard_vad_run_seconds_count") > 0.0);
    assert_eq!(
        after.value(
            "callguard_detector_window_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(scored)
    );
    assert_eq!(
        after.value("callguard_alerts_total", &[("kind", "suspected_clone")]),
        Some(
            alerts
                .iter()
                .filter(|a| a.kind == pb::AlertKind::SuspectedClone as i32)
                .count() as f64
        )
    );
    assert_eq!(after.sum("callguard_alerts_total"), alerts.len() as f64);
    assert_eq!(
        after.get("callguard_alert_commit_seconds_count"),
        alerts.len() as f64
    );
    assert_eq!(
        after.get("callguard_first_alert_after_speech_seconds_count"),
        1.0
    );
    let delay = after.get("callguard_first_alert_after_speech_seconds_sum");
    assert!(
        delay > 0.0 && delay < audio_s,
        "first alert {delay} s after speech"
    );
    assert_eq!(after.get("callguard_alerts_pending"), 0.0);

    // Conventions: latencies are histograms in seconds, counters end in _total.
    let kind = |name: &str| {
        after
            .1
            .iter()
            .find(|f| f.0 == name)
            .map(|f| f.1.as_str())
            .unwrap_or_else(|| panic!("no family {name}: {:?}", after.1))
    };
    for h in [
        "callguard_detector_window_seconds",
        "callguard_vad_run_seconds",
        "callguard_first_alert_after_speech_seconds",
        "callguard_alert_commit_seconds",
    ] {
        assert_eq!(kind(h), "histogram", "{h}");
    }
    for c in [
        "callguard_windows_scored",
        "callguard_alerts",
        "callguard_audio_seconds",
    ] {
        assert_eq!(kind(c), "counter", "{c}");
    }
    assert_eq!(kind("callguard_connector_errors"), "counter");
    assert_eq!(kind("callguard_calls_live"), "gauge");

    // Every metric the shipped Grafana dashboard charts is one the daemon exports.
    let dashboard =
        std::fs::read_to_string(common::root().join("deploy/grafana-dashboard.json")).unwrap();
    let mut charted: Vec<&str> = dashboard
        .match_indices("callguard_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    charted.sort_unstable();
    charted.dedup();
    assert!(charted.len() > 15, "{charted:?}");
    for m in charted {
        let exported = after.0.iter().any(|s| s.0 == m)
            || after.1.iter().any(|(f, _)| {
                m.strip_prefix(f.as_str()).is_some_and(|rest| {
                    ["", "_total", "_bucket", "_count", "_sum", "_info"].contains(&rest)
                })
            });
        assert!(
            exported,
            "the dashboard charts {m}, which /metrics does not export"
        );
    }

    // An alert log that refuses writes: not ready, on /readyz, the gauge and gRPC health.
    server.guard.readiness().set_store_writable(false);
    let (code, body) = get_async(&ops, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("alert log"), "{body}");
    let s = scrape(&ops).await;
    assert_eq!(s.get("callguard_ready"), 0.0);
    server.guard.readiness().set_store_writable(true);
    server.stop().await;
}

#[test]
fn the_daemon_serves_operations_http_and_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::daemon::write_config(
        dir.path(),
        1000.0,
        false,
        "[http]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"",
    );
    let daemon = common::daemon::Daemon::start(&config, &[], &["gRPC", "operations HTTP"]);
    let ops = daemon.addr("operations HTTP").to_owned();
    let mut ready = get(&ops, "/readyz");
    for _ in 0..100 {
        if ready.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        ready = get(&ops, "/readyz");
    }
    assert_eq!(ready, (200, "ready\n".to_owned()));
    assert_eq!(get(&ops, "/nothing-here").0, 404);

    // One call over gRPC, so the daemon logs its opening and end.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::grpc::client(&daemon.grpc_url(), TOKEN_A).await;
        let (genuine, rate) = decode("genuine_1_alaw.wav");
        let frames = common::grpc::numbered(g711_frames(&genuine, rate, Law::ALaw));
        let updates = common::grpc::stream_call(
            &mut client,
            open_frame("ops-json-1", pb::Codec::G711Alaw, rate, 1),
            frames,
        )
        .await
        .unwrap();
        summary_of(&updates);
        // A refused token is logged too.
        let mut bad = common::grpc::client(&daemon.grpc_url(), "not-a-token").await;
        assert!(bad.list_calls(pb::ListCallsRequest {}).await.is_err());
    });
    let find = |message: &str| -> Option<Value> {
        daemon
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == message)
    };
    // The daemon's output reaches `daemon.log` through a reader thread: wait for each line.
    let wait_for = |message: &str| -> Option<Value> {
        for _ in 0..200 {
            if let Some(line) = find(message) {
                return Some(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    };
    let ended = wait_for("Call ended.");
    let opened = find("Call opened.").expect("a JSON line for the call's opening");
    for line in [&opened, ended.as_ref().expect("a JSON line for its end")] {
        assert_eq!(line["call_id"], "ops-json-1", "{line}");
        assert_eq!(line["tenant"], "bank-a", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
    assert_eq!(opened["channel_class"], "narrowband_g711", "{opened}");
    assert!(
        wait_for("gRPC request with a missing or unknown token refused.").is_some(),
        "the refused token is logged"
    );
    // Every line the daemon wrote is JSON, except its "listening on" banners.
    for line in daemon.log.lock().unwrap().iter() {
        assert!(
            line.starts_with("callguard: ") || serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
}
