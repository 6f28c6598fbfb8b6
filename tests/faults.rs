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
    for stem in ["cut", "text"] {
        std::fs::copy(
            root.join("models/detector.json"),
            dir.path().join(format!("{stem}.json")),
        )
        .unwrap();
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
