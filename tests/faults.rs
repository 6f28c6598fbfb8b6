//! Faults in what the daemon stands on, each with what must survive: a corrupt or locked alert
//! log, a corrupt or missing detector or VAD model, ONNX Runtime that is missing or not a
//! library. Each is a clear error naming the thing at fault, an exit code, and never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args` and `env`; returns (exit code, stderr). Fails the test if it is
/// still running after `limit` (a daemon that started when it should have refused).
fn exits(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(common::root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(
                !err.contains("panicked"),
                "a panic instead of an error: {err}"
            );
            return (status.code().unwrap_or(-1), err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("callguard {args:?} still running after {limit:?}: it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_daemon(config: &Path) -> (i32, String) {
    exits(
        &["--config", config.to_str().unwrap(), "run"],
        &[],
        Duration::from_secs(60),
    )
}

#[test]
fn a_corrupt_alert_log_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::daemon::write_config(dir.path(), 1.0, false, "");
    let store = dir.path().join("alerts.db");
    // Not a database: a page of bytes that is no SQLite header.
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&store, &junk).unwrap();
    let (code, err) = run_daemon(&config);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("alert log") && err.contains("alerts.db"),
        "{err}"
    );
    assert!(err.contains("not a database"), "{err}");
    // The file is the operator's evidence: left as it was.
    assert_eq!(std::fs::read(&store).unwrap(), junk);
}

#[test]
fn an_alert_log_locked_by_another_process_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::daemon::write_config(dir.path(), 1.0, false, "");
    let store = dir.path().join("alerts.db");
    // Another process (Python's sqlite3) holds an exclusive lock on the file until told to
    // let go: it prints "locked" once it holds it.
    let mut holder = Command::new(common::root().join(".deps/venv/bin/python"))
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('CREATE TABLE IF NOT EXISTS other (x)')\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n",
            store.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let (code, err) = run_daemon(&config);
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("alert log") && err.contains("locked"), "{err}");
}

/// A config whose detector or VAD model is `model` (the other one the shipped file).
fn model_config(dir: &Path, detector: &Path, vad: &Path) -> std::path::PathBuf {
    let config = dir.join("models.toml");
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = \"{}\"\n[speech]\nvad_model = \"{}\"\n[transcribe]\nenabled = false\n",
            detector.display(),
            vad.display()
        ),
    )
    .unwrap();
    config
}

fn scan_with(config: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let wav = common::audio("genuine_1.wav");
    exits(
        &[
            "--config",
            config.to_str().unwrap(),
            "scan",
            wav.to_str().unwrap(),
        ],
        env,
        Duration::from_secs(120),
    )
}

#[test]
fn corrupt_or_missing_models_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::root();
    let detector = root.join("models/detector.onnx");
    let vad = root.join(".deps/silero_vad.onnx");
    // Half a model: a download cut off.
    let bytes = std::fs::read(&detector).unwrap();
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("text.onnx");
    std::fs::write(&text, "<html>404 Not Found</html>\n").unwrap();
    // Their sidecars are the shipped one: only the graph is at fault.
    std::fs::copy(&detector, dir.path().join("whole.onnx")).unwrap();
    for stem in ["cut", "text", "whole"] {
        std::fs::copy(
            root.join("models/detector.json"),
            dir.path().join(format!("{stem}.json")),
        )
        .unwrap();
    }
    // The shipped sidecar names its cascade's first stage beside it: bring it along whole.
    for file in ["first-stage.onnx", "first-stage.json"] {
        std::fs::copy(root.join("models").join(file), dir.path().join(file)).unwrap();
    }
    let missing = dir.path().join("missing.onnx");
    for (what, det, v) in [
        ("cut detector", &cut, &vad),
        ("text as detector", &text, &vad),
        ("missing detector", &missing, &vad),
        ("text as VAD", &detector, &text),
        ("missing VAD", &detector, &missing),
    ] {
        let config = model_config(dir.path(), det, v);
        let (code, err) = scan_with(&config, &[]);
        assert_ne!(code, 0, "{what}: {err}");
        let named = if det == &detector { v } else { det };
        let name = named.file_stem().unwrap().to_str().unwrap();
        assert!(
            err.contains(name),
            "{what}: the error should name {name}: {err}"
        );
    }
    // A whole detector whose cascade's first stage was cut off names the first stage.
    let first = std::fs::read(root.join("models/first-stage.onnx")).unwrap();
    std::fs::write(
        dir.path().join("first-stage.onnx"),
        &first[..first.len() / 2],
    )
    .unwrap();
    let config = model_config(dir.path(), &dir.path().join("whole.onnx"), &vad);
    let (code, err) = scan_with(&config, &[]);
    assert_ne!(code, 0, "cut first stage: {err}");
    assert!(
        err.contains("first-stage"),
        "cut first stage: the error should name first-stage: {err}"
    );
}

#[test]
fn onnx_runtime_missing_or_not_a_library_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not a shared library").unwrap();
    let config = model_config(
        dir.path(),
        &common::root().join("models/detector.onnx"),
        &common::root().join(".deps/silero_vad.onnx"),
    );
    for lib in [fake.to_str().unwrap(), "/nonexistent/libonnxruntime.so"] {
        let (code, err) = scan_with(&config, &[("CALLGUARD_ORT_LIB", lib)]);
        assert_ne!(code, 0, "{lib}: {err}");
        assert!(err.contains("ONNX Runtime"), "{lib}: {err}");
    }
}

/// A small tmpfs mounted for the length of a test (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The disk under the alert log fills up mid-call: the alerts that cannot be committed are held
/// (not published, not lost), `/readyz` says not ready and the pending gauge counts them; when
/// space returns they are committed and published in order, and the daemon is ready again.
/// Needs root for its tmpfs (CI runs as root); elsewhere it says so and does nothing.
#[test]
fn a_full_disk_holds_alerts_back_and_delivers_them_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("store"), "8m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let config = dir.path().join("disk.toml");
    std::fs::write(
        &config,
        format!(
            "[speech]\nvad_model = \"{vad}\"\n[detector]\nmodel = \"{model}\"\nwhen_full = \"block\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\nmax_speed = 1000.0\nburst_ms = 3600000\n\
             [[server.tenants]]\nname = \"bank-a\"\ntoken_sha256 = \"{token}\"\n\
             [store]\npath = \"{store}\"\n[transcribe]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n",
            vad = common::root().join(".deps/silero_vad.onnx").display(),
            model = common::root().join(".deps/test-models/loudness.onnx").display(),
            token = callguard::grpc::token_sha256(common::grpc::TOKEN_A),
            store = disk.0.join("alerts.db").display(),
        ),
    )
    .unwrap();
    let daemon = common::daemon::Daemon::start(&config, &[], &["gRPC", "operations HTTP"]);
    let ops = daemon.addr("operations HTTP").to_owned();
    // Ready once every listener has reported in (a moment after they print their addresses).
    let mut ready = 0;
    for _ in 0..100 {
        ready = common::http_get(&ops, "/readyz").0;
        if ready == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ready, 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use callguard::grpc::proto as pb;
        use common::grpc::*;
        let mut sub = client(&daemon.grpc_url(), TOKEN_A).await;
        let mut live = sub
            .stream_alerts(pb::AlertSubscription::default())
            .await
            .unwrap()
            .into_inner();
        // Fill the disk.
        let filler = disk.0.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0xa5u8; 64 << 10];
            while f.write_all(&block).is_ok() {}
            let _ = f.sync_all();
        }
        // Loud then quiet: the loudness model alerts, then clears.
        let (frames, rate) = common::loud_quiet_frames(1);
        let mut caller = client(&daemon.grpc_url(), TOKEN_A).await;
        let updates = stream_call(
            &mut caller,
            open_frame("disk-full", pb::Codec::Pcm16le, rate, 1),
            numbered(frames),
        )
        .await
        .unwrap();
        assert!(
            alerts_of(&updates).is_empty(),
            "an alert was published before it was logged"
        );
        // Not ready while alerts wait for the log.
        let mut ready = 200;
        for _ in 0..100 {
            ready = common::http_get(&ops, "/readyz").0;
            if ready != 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(ready, 503, "ready with alerts that cannot be logged");
        let metrics = common::http_get(&ops, "/metrics").1;
        let pending = metrics
            .lines()
            .find_map(|l| l.strip_prefix("callguard_alerts_pending "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no callguard_alerts_pending in {metrics}"));
        assert!(pending >= 1.0, "pending {pending}");
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(2), live.message())
                .await
                .is_err(),
            "a subscriber heard an alert the log does not hold"
        );
        // Space returns: the held alerts are logged and published, in order.
        std::fs::remove_file(&filler).unwrap();
        let mut heard = Vec::new();
        while heard.len() < 2 {
            let event = tokio::time::timeout(std::time::Duration::from_secs(30), live.message())
                .await
                .expect("held alerts not delivered after space returned")
                .unwrap()
                .unwrap();
            if let Some(pb::alert_event::Event::Alert(a)) = event.event {
                heard.push(a);
            }
        }
        assert_eq!(heard[0].call_id, "disk-full");
        assert!(heard[1].sequence > heard[0].sequence);
        let mut ready = 0;
        for _ in 0..100 {
            ready = common::http_get(&ops, "/readyz").0;
            if ready == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(ready, 200, "not ready again after the log took the alerts");
        let mut replay = sub
            .stream_alerts(pb::AlertSubscription {
                after_sequence: Some(0),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut logged = Vec::new();
        while logged.len() < heard.len() {
            let event = replay.message().await.unwrap().unwrap();
            if let Some(pb::alert_event::Event::Alert(a)) = event.event {
                logged.push(a);
            }
        }
        assert_eq!(logged, heard);
    });
    drop(daemon);
    drop(disk);
}
