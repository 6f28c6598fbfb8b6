//! `callguard calibrate` on the project's genuine recordings: the thresholds it writes load
//! through the config loader, its numbers hold together, a re-scan with the calibration alerts
//! on exactly the calls the report says, and a corrupt file is reported while the rest count.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use callguard::audio::resample::Resampler;
use callguard::config::Config;
use callguard::verdict::ChannelClass;
use serde_json::Value;

/// Generated genuine recordings: Asterisk prompts, 8 kHz PCM, A-law and mu-law.
const GENUINE: [&str; 6] = [
    "genuine_1.wav",
    "genuine_2.wav",
    "genuine_3.wav",
    "genuine_1_alaw.wav",
    "prompts.wav",
    "prompts_ulaw.wav",
];

/// Alerts allowed per call-hour: the files are minutes long, so a high rate is what lets the
/// target allow a few alerts and pick a threshold among the peaks.
const TARGET: f64 = 30.0;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str, stderr: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"))
}

/// A config with the shipped models, no transcription, and one detector worker scoring one
/// window per run, so that every run scores every window identically however loaded the
/// machine is (the chosen threshold sits exactly on a call's peak).
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("callguard.toml");
    std::fs::write(
        &path,
        format!(
            "[speech]\nvad_model = \"{}\"\n[detector]\nmodel = \"{}\"\nworkers = 1\nmax_batch = 1\n\
             [transcribe]\nenabled = false\n{extra}",
            common::root().join(".deps/silero_vad.onnx").display(),
            common::root().join("models/detector.onnx").display(),
        ),
    )
    .unwrap();
    path
}

/// The genuine calls, a 16 kHz copy of one (a wideband call) in a subfolder, and a corrupt file.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    for name in GENUINE {
        std::fs::copy(common::audio(name), dir.join(name)).unwrap();
    }
    let (pcm, rate) = common::read_wav(&common::audio("genuine_3.wav"));
    let mut wide = Vec::new();
    let mut r = Resampler::new(rate, 16_000).unwrap();
    r.process(&pcm, &mut wide).unwrap();
    r.flush(&mut wide).unwrap();
    std::fs::create_dir(dir.join("wideband")).unwrap();
    common::write_wav_i16(&dir.join("wideband/genuine_3_16k.wav"), 16_000, 1, &wide);
    std::fs::write(
        dir.join("broken.wav"),
        b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk",
    )
    .unwrap();
    let mut all: Vec<PathBuf> = GENUINE.iter().map(|n| dir.join(n)).collect();
    all.push(dir.join("wideband/genuine_3_16k.wav"));
    all.sort();
    all
}

/// Files with a suspected-clone alert in a `scan --json`, per class, and each file's class
/// and threshold.
fn scan(config: &Path, files: &[PathBuf]) -> Vec<(String, String, f32, bool)> {
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "scan".into(),
        "--json".into(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "{stderr}");
    let doc = json(&stdout, &stderr);
    doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let alerted = f["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["kind"] == "suspected_clone");
            (
                f["path"].as_str().unwrap().to_owned(),
                f["channel_class"].as_str().unwrap().to_owned(),
                f["enter_threshold"].as_f64().unwrap() as f32,
                alerted,
            )
        })
        .collect()
}

#[test]
fn calibrated_thresholds_load_and_alert_as_reported() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    std::fs::create_dir(&calls).unwrap();
    let files = recordings(&calls);
    let config = write_config(dir.path(), "");
    let out = dir.path().join("calibration.toml");
    let plot = dir.path().join("rates.png");
    let (code, stdout, stderr) = run(&[
        "--config",
        config.to_str().unwrap(),
        "calibrate",
        calls.to_str().unwrap(),
        "--alerts-per-hour",
        &TARGET.to_string(),
        "--allow-below-half",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let report = json(&stdout, &stderr);

    // The corrupt file is reported, with exit code 1, and every other file is used.
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(report["files"], files.len() + 1);
    assert_eq!(report["scored"], files.len());
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["path"].as_str().unwrap().ends_with("broken.wav"));
    assert!(!failed[0]["error"].as_str().unwrap().is_empty());
    assert!(stderr.contains("broken.wav"), "{stderr}");

    // Classes from the files' rates and codecs: 8 kHz PCM and G.711 are narrowband_g711.
    let classes = report["classes"].as_object().unwrap();
    let names: Vec<&str> = classes.keys().map(String::as_str).collect();
    assert_eq!(names, ["narrowband_g711", "wideband"]);
    assert_eq!(classes["narrowband_g711"]["calls"], GENUINE.len());
    assert_eq!(classes["wideband"]["calls"], 1);

    // The numbers hold together.
    let per_call = report["calls"].as_array().unwrap();
    let mut after = std::collections::BTreeMap::new();
    for (name, c) in classes {
        let hours = c["call_hours"].as_f64().unwrap();
        let speech = c["speech_hours"].as_f64().unwrap();
        assert!(
            hours > 0.0 && speech > 0.0 && speech <= hours,
            "{name}: {c}"
        );
        let allowed = (TARGET * hours).floor() as u64;
        assert_eq!(c["allowed_alerts"], allowed, "{name}");
        let t = c["after"]["threshold"].as_f64().unwrap() as f32;
        let peaks: Vec<f32> = per_call
            .iter()
            .filter(|f| f["channel_class"] == name.as_str())
            .map(|f| f["peak"].as_f64().unwrap() as f32)
            .collect();
        let alerts = peaks.iter().filter(|&&p| p >= t).count();
        assert_eq!(c["after"]["alerts"], alerts, "{name}");
        assert!(alerts as u64 <= allowed, "{name}");
        let rate = c["after"]["alerts_per_hour"].as_f64().unwrap();
        assert!(rate <= TARGET, "{name}: {rate}");
        assert!((rate - alerts as f64 / hours).abs() < 1e-9);
        if allowed == 0 {
            // Too little audio to resolve the target: above the highest peak, never below the
            // threshold before (no alert in a few minutes is no evidence for a lower one).
            assert_eq!(c["resolved"], false);
            let highest = peaks.iter().copied().fold(0.0f32, f32::max);
            let before = c["before"]["threshold"].as_f64().unwrap() as f32;
            assert!(
                t > highest && t >= before,
                "{name}: {t} against {highest}, {before}"
            );
            assert!(
                c["notes"][0].as_str().unwrap().contains("too little data"),
                "{c}"
            );
        } else {
            // Between the lowest peak within the budget and the next one down, which would
            // alert once more.
            assert_eq!(c["resolved"], true);
            let lower = peaks
                .iter()
                .copied()
                .filter(|&p| p < t && p > 0.0)
                .fold(0.0f32, f32::max);
            if lower > 0.0 {
                assert!(peaks.iter().filter(|&&p| p >= lower).count() as u64 > allowed);
            }
        }
        after.insert(name.clone(), t);
    }
    assert!(
        classes["narrowband_g711"]["allowed_alerts"]
            .as_u64()
            .unwrap()
            > 0,
        "the narrowband calls must be enough hours for the target to allow an alert: {}",
        classes["narrowband_g711"]
    );
    assert_eq!(&std::fs::read(&plot).unwrap()[..8], b"\x89PNG\r\n\x1a\n");

    // The file is a config fragment with the classes that had calls, as they were reported.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("# callguard calibration"), "{text}");
    assert!(text.contains("callguard-whisper-mlp@"), "{text}");
    let fragment = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let t = fragment.verdict.enter_thresholds;
    assert_eq!(t.narrowband_g711, Some(after["narrowband_g711"]));
    assert_eq!(t.wideband, Some(after["wideband"]));
    assert_eq!(t.narrowband_lossy, None);

    // A config that includes it loads, and scanning with it alerts as the report said.
    let calibrated = dir.path().join("calibrated");
    std::fs::create_dir(&calibrated).unwrap();
    std::fs::copy(&out, calibrated.join("calibration.toml")).unwrap();
    let with = write_config(
        &calibrated,
        "[verdict]\nthresholds_file = \"calibration.toml\"\n",
    );
    let loaded = Config::load(&with).unwrap();
    assert_eq!(loaded.verdict.file_thresholds, t);
    for (label, config, key) in [
        ("before", &config, "alerted_before"),
        ("after", &with, "alerted_after"),
    ] {
        let scanned = scan(config, &files);
        for (name, c) in classes {
            let of_class: Vec<_> = scanned.iter().filter(|s| s.1 == *name).collect();
            assert_eq!(
                of_class.len() as u64,
                c["calls"].as_u64().unwrap(),
                "{label} {name}"
            );
            let threshold = c[label]["threshold"].as_f64().unwrap() as f32;
            assert!(
                of_class.iter().all(|s| s.2 == threshold),
                "{label} {name}: {of_class:?}"
            );
            let alerted = of_class.iter().filter(|s| s.3).count();
            assert_eq!(
                alerted as u64,
                c[label]["alerts"].as_u64().unwrap(),
                "{label} {name}: {of_class:?}"
            );
        }
        for (path, _, _, alerted) in &scanned {
            let call = per_call
                .iter()
                .find(|c| c["path"] == path.as_str())
                .unwrap();
            assert_eq!(call[key], *alerted, "{label}: {path}");
        }
    }
}

#[test]
fn a_manifest_uses_its_bonafide_rows_and_class_forces_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.csv");
    std::fs::write(
        &manifest,
        format!(
            "path,label,system\n{},bonafide,\n{},bonafide,\n{},spoof,espeak-ng\n",
            common::audio("genuine_1.wav").display(),
            common::audio("genuine_2.wav").display(),
            common::audio("synthetic_espeak.wav").display(),
        ),
    )
    .unwrap();
    let config = write_config(dir.path(), "");
    let out = dir.path().join("lossy.toml");
    let (code, stdout, stderr) = run(&[
        "--config",
        config.to_str().unwrap(),
        "calibrate",
        manifest.to_str().unwrap(),
        "--class",
        "narrowband_lossy",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 spoof rows skipped"), "{stdout}");
    assert!(stdout.contains("narrowband_lossy: 2 calls"), "{stdout}");
    assert!(stdout.contains("too little data"), "{stdout}");
    let fragment = Config::from_toml(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let t = fragment.verdict.enter_thresholds;
    assert!(
        t.narrowband_lossy.is_some_and(|t| t >= 0.5),
        "never below 0.5 by default: {t:?}"
    );
    assert_eq!(
        t.iter().map(|(c, _)| c).collect::<Vec<_>>(),
        [ChannelClass::NarrowbandLossy]
    );

    let (code, _, stderr) = run(&[
        "--config",
        config.to_str().unwrap(),
        "calibrate",
        manifest.to_str().unwrap(),
        "--class",
        "phone",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("phone"), "{stderr}");
}
