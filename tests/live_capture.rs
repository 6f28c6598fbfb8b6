//! Live capture through a virtual sound card: a PulseAudio null sink whose monitor is the
//! default source. A recording played into it in real time is captured by cpal on `run`'s code
//! path and scored as it plays; SIGTERM then ends the call cleanly with its summary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The sound card is shared: tests in this file take turns (nextest also runs them alone).
static SOUND_CARD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn runtime_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("callguard-pulse");
    std::fs::create_dir_all(&dir).unwrap();
    Command::new("chmod").arg("700").arg(&dir).status().unwrap();
    dir
}

fn pulse(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (run scripts/setup.sh)"))
}

/// Starts the virtual sound card unless it is already up.
fn virtual_sound_card() {
    if !pulse("pactl", &["info"]).status.success() {
        let out = pulse(
            "pulseaudio",
            &[
                "--daemonize=yes",
                "--exit-idle-time=-1",
                "-n",
                "--load=module-native-protocol-unix",
                "--load=module-null-sink sink_name=vsink rate=48000 channels=2",
            ],
        );
        assert!(
            out.status.success(),
            "pulseaudio: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pulse("pactl", &["info"]).status.success() {
            assert!(Instant::now() < deadline, "pulseaudio did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        pulse("pactl", &["set-default-sink", "vsink"])
            .status
            .success()
    );
    assert!(
        pulse("pactl", &["set-default-source", "vsink.monitor"])
            .status
            .success()
    );
}

/// Plays a test recording into the null sink in real time (20 ms latency).
fn play_into_sound_card(name: &str) {
    let play = Command::new("paplay")
        .args(["--latency-msec=20", "--device=vsink"])
        .arg(common::audio(name))
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .status()
        .unwrap();
    assert!(play.success());
}

fn terminate(daemon: &std::process::Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
}

#[test]
fn played_audio_is_captured_and_scored_in_real_time() {
    let _turn = SOUND_CARD.lock().unwrap_or_else(|e| e.into_inner());
    virtual_sound_card();
    // The shipped config as a user runs it, but its alert log in a throw-away folder, not in
    // the repository's state/.
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(common::root().join("config.toml")).unwrap();
    let store = dir.path().join("callguard.db");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        shipped.replace(
            "path = \"state/callguard.db\"",
            &format!("path = {:?}", store.display().to_string()),
        ),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["--config", config.to_str().unwrap(), "run", "--json"])
        .current_dir(common::root())
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = daemon.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Value)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send((Instant::now(), v)).is_err() {
                break;
            }
        }
    });
    // Let the capture stream start, then play 9.8 s of speech in real time.
    std::thread::sleep(Duration::from_millis(1500));
    let played_at = Instant::now();
    play_into_sound_card("genuine_1.wav");
    let play_secs = played_at.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&daemon);
    let status = daemon.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut stderr).unwrap();
    reader.join().unwrap();
    let events: Vec<(Instant, Value)> = rx.try_iter().collect();
    assert!(status.success(), "daemon exit {status:?}: {stderr}");

    let windows: Vec<(Instant, &Value)> = events
        .iter()
        .filter(|(_, e)| e["event"] == "window")
        .map(|(t, e)| (*t, &e["window"]))
        .collect();
    assert!(
        play_secs >= 9.0,
        "paplay returned after {play_secs:.1} s: not real time"
    );
    // 9.8 s of speech at a 0.5 s hop after the first 1 s window: about 17 windows.
    assert!(
        (12..=22).contains(&windows.len()),
        "{} windows: {stderr}",
        windows.len()
    );
    for (i, (_, w)) in windows.iter().enumerate() {
        assert_eq!(w["seq"], i as u64);
        let span = w["end_ms"].as_u64().unwrap() - w["start_ms"].as_u64().unwrap();
        assert!((1_000..1_400).contains(&span), "window {i} spans {span} ms");
    }
    for pair in windows.windows(2) {
        let hop = pair[1].1["end_ms"].as_u64().unwrap() - pair[0].1["end_ms"].as_u64().unwrap();
        assert!((480..=1_200).contains(&hop), "hop {hop} ms");
    }
    // Audio time of the windows matches the wall clock they arrived at: scored live, as played.
    let (first, last) = (windows[0], windows[windows.len() - 1]);
    let audio_span =
        (last.1["end_ms"].as_u64().unwrap() - first.1["end_ms"].as_u64().unwrap()) as f64 / 1000.0;
    let wall_span = last.0.duration_since(first.0).as_secs_f64();
    assert!(audio_span > 6.0, "audio span {audio_span:.2} s");
    assert!(
        (wall_span - audio_span).abs() < 1.5,
        "windows over {audio_span:.2} s of audio arrived over {wall_span:.2} s"
    );
    // The first window ends about 1 s (one window) after the speech began to play.
    let first_after_play = first.0.duration_since(played_at).as_secs_f64();
    assert!(
        (0.9..=2.5).contains(&first_after_play),
        "first window {first_after_play:.2} s after play"
    );
    // SIGTERM ends the call with a summary that counts what was scored.
    let ended = events
        .iter()
        .find(|(_, e)| e["event"] == "ended")
        .expect("ended event");
    assert_eq!(ended.1["summary"]["windows_scored"], windows.len() as u64);
    assert_eq!(ended.1["summary"]["windows_dropped"], 0);
}

/// The sound server vanishes mid-call and comes back: the daemon reports it, retries with
/// backoff, rebuilds the stream, and scores the audio played afterwards. Never a crash.
#[test]
fn a_vanished_device_is_retried_and_rebuilt() {
    let _turn = SOUND_CARD.lock().unwrap_or_else(|e| e.into_inner());
    virtual_sound_card();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fast-retry.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nretry_initial_ms = 100\nretry_max_ms = 800\n[speech]\nvad_model = \"{}\"\n[detector]\nmodel = \"{}\"\n",
            common::root().join(".deps/silero_vad.onnx").display(),
            common::root().join("models/detector.onnx").display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["--config", config.to_str().unwrap(), "run", "--json"])
        .current_dir(common::root())
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .env("CALLGUARD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pulse("pulseaudio", &["--kill"]).status.success());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon died with its device"
    );
    virtual_sound_card();
    // Backoff is capped at 0.8 s here: the stream is back well within 3 s.
    std::thread::sleep(Duration::from_secs(3));
    play_into_sound_card("genuine_1.wav");
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&daemon);
    let out = daemon.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Capture device failed; rebuilding."),
        "{stderr}"
    );
    assert!(stderr.contains("Capture device rebuilt."), "{stderr}");
    let windows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"event\":\"window\""))
        .count();
    assert!(
        windows >= 12,
        "{windows} windows after the rebuild: {stderr}"
    );
}
