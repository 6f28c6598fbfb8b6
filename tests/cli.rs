//! The command line as outside tools use it: `scan --json` and `eval --json` contracts
//! (ARCHITECTURE.md), golden verdicts and timelines, caller-channel selection, `devices`.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

fn callguard(args: &[&str], files: &[&Path]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(args)
        .args(files)
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), doc, stderr)
}

const GOLDEN_FILES: [&str; 6] = [
    "genuine_1.wav",
    "genuine_2.wav",
    "genuine_1_alaw.wav",
    "synthetic_espeak.wav",
    "synthetic_espeak_ulaw.wav",
    "synthetic_flite.wav",
];

/// The stable part of one file's scan: verdict, alert time, window times, rounded scores.
fn digest(file: &Value) -> Value {
    let round = |v: &Value| v.as_f64().map(|p| (p * 100.0).round() / 100.0);
    json!({
        "verdict": file["verdict"],
        "first_alert_ms": file["first_alert_ms"],
        "windows_scored": file["windows_scored"],
        "p_spoof": round(&file["p_spoof"]),
        "window_end_ms": file["timeline"].as_array().unwrap().iter().map(|w| w["end_ms"].clone()).collect::<Vec<_>>(),
        "window_p_spoof": file["timeline"].as_array().unwrap().iter().map(|w| round(&w["p_spoof"])).collect::<Vec<_>>(),
    })
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 0.035
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b))
        }
        _ => a == b,
    }
}

/// Golden verdicts and timelines of the generated genuine and synthetic recordings. After a
/// deliberate model change, regenerate with CALLGUARD_UPDATE_GOLDEN=1 and review the diff.
#[test]
fn scan_golden_verdicts_and_timelines() {
    let paths: Vec<_> = GOLDEN_FILES.iter().map(|f| common::audio(f)).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let (code, doc, stderr) = callguard(&["scan", "--json"], &refs);
    assert_eq!(code, 0, "{stderr}");
    let got: serde_json::Map<String, Value> = GOLDEN_FILES
        .iter()
        .zip(doc["files"].as_array().unwrap())
        .map(|(name, f)| (name.to_string(), digest(f)))
        .collect();
    let golden_path = common::root().join("tests/golden/scan.json");
    let got = json!({ "model": doc["model"], "files": got });
    if std::env::var_os("CALLGUARD_UPDATE_GOLDEN").is_some() {
        std::fs::write(
            &golden_path,
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    assert_eq!(
        got["model"], want["model"],
        "model changed: regenerate the golden file"
    );
    for name in GOLDEN_FILES {
        let (g, w) = (&got["files"][name], &want["files"][name]);
        for key in [
            "verdict",
            "first_alert_ms",
            "windows_scored",
            "window_end_ms",
            "p_spoof",
            "window_p_spoof",
        ] {
            assert!(
                close(&g[key], &w[key]),
                "{name}.{key}: got {} want {}",
                g[key],
                w[key]
            );
        }
    }
}

#[test]
fn scan_json_follows_the_contract() {
    let f = common::audio("synthetic_flite.wav");
    let (code, doc, _) = callguard(&["scan", "--json"], &[&f]);
    assert_eq!(code, 0);
    let file = &doc["files"][0];
    assert!(doc["model"].is_string());
    assert!(["genuine", "suspected", "listening"].contains(&file["verdict"].as_str().unwrap()));
    let p = file["p_spoof"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert!(file.get("first_alert_ms").is_some());
    let timeline = file["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 5);
    for w in timeline {
        let (start, end) = (
            w["start_ms"].as_u64().unwrap(),
            w["end_ms"].as_u64().unwrap(),
        );
        assert!(
            end > start && end - start >= 1_000,
            "a window spans at least 1 s of audio"
        );
        assert!(w["p_spoof"].as_f64().is_some() && w["fused"].as_f64().is_some());
    }
    // The final fused probability is the last timeline point.
    let last = timeline.last().unwrap()["fused"].as_f64().unwrap();
    assert!((last - p).abs() < 1e-6);
}

#[test]
fn eval_json_follows_the_contract_with_scores_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    // One relative path (beside the manifest) and absolute ones.
    std::fs::copy(
        common::audio("genuine_2.wav"),
        dir.path().join("local_genuine.wav"),
    )
    .unwrap();
    let rows = [
        ("local_genuine.wav".to_string(), "bonafide", ""),
        (
            common::audio("genuine_1.wav").display().to_string(),
            "bonafide",
            "",
        ),
        (
            common::audio("genuine_3.wav").display().to_string(),
            "bonafide",
            "",
        ),
        (
            common::audio("synthetic_espeak.wav").display().to_string(),
            "spoof",
            "espeak-ng",
        ),
        (
            common::audio("synthetic_espeak_ulaw.wav")
                .display()
                .to_string(),
            "spoof",
            "espeak-ng",
        ),
        (
            common::audio("synthetic_flite.wav").display().to_string(),
            "spoof",
            "flite",
        ),
    ];
    let mut manifest = String::from("path,label,system\n");
    for (p, l, s) in &rows {
        manifest += &format!("{p},{l},{s}\n");
    }
    let manifest_path = dir.path().join("manifest.csv");
    std::fs::write(&manifest_path, manifest).unwrap();
    let scores = dir.path().join("scores.csv");
    let plot = dir.path().join("det.png");
    let (code, doc, stderr) = callguard(
        &[
            "eval",
            "--json",
            "--scores",
            scores.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
        &[&manifest_path],
    );
    assert_eq!(code, 0, "{stderr}");
    let eer = doc["eer"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&eer));
    assert_eq!(doc["files"], 6);
    assert_eq!(doc["per_system"]["espeak-ng"]["n"], 2);
    assert_eq!(doc["per_system"]["flite"]["n"], 1);
    assert!(doc["per_system"]["flite"]["eer"].as_f64().is_some());
    assert!(doc["min_dcf"].as_f64().is_some());
    let csv = std::fs::read_to_string(&scores).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn eval_reports_every_bad_manifest_row() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    std::fs::write(&manifest, "path,label\na.wav,fake\nb.wav,\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .arg("eval")
        .arg(&manifest)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("line 3"),
        "{stderr}"
    );
}

/// Stereo feeds carry the agent and the caller on separate channels; only the caller is scored.
/// With the test-only loudness model, a loud agent on the left must not flag a quiet caller.
#[test]
fn only_the_caller_channel_is_screened() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, rate) = common::read_wav(&common::audio("genuine_3.wav"));
    let caller = common::at_level(&caller, -30.0);
    let (agent, _) = common::read_wav(&common::audio("genuine_1.wav"));
    let agent = common::at_level(&agent, -6.0);
    let mut stereo = Vec::new();
    for i in 0..caller.len() {
        stereo.push(agent[i % agent.len()]);
        stereo.push(caller[i]);
    }
    let path = dir.path().join("stereo.wav");
    common::write_wav_i16(&path, rate, 2, &stereo);
    let config = dir.path().join("loudness.toml");
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = \"{}\"\n[speech]\nvad_model = \"{}\"\n",
            common::root()
                .join(".deps/test-models/loudness.onnx")
                .display(),
            common::root().join(".deps/silero_vad.onnx").display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (_, caller_doc, _) = callguard(
        &["--config", cfg, "scan", "--json", "--caller-channel", "1"],
        &[&path],
    );
    let (_, agent_doc, _) = callguard(
        &["--config", cfg, "scan", "--json", "--caller-channel", "0"],
        &[&path],
    );
    assert_eq!(caller_doc["files"][0]["verdict"], "genuine");
    assert_eq!(agent_doc["files"][0]["verdict"], "suspected");
    let (code, _, stderr) = callguard(
        &["--config", cfg, "scan", "--json", "--caller-channel", "2"],
        &[&path],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("caller channel 2"), "{stderr}");
}

#[test]
fn devices_lists_without_failing() {
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["devices", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.is_array());
}

#[test]
fn token_prints_a_fresh_token_and_the_entry_that_accepts_it() {
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
            .args(["token", "bank-a"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (first, second) = (run(), run());
    let token_of = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("token (give to the client; it is not stored): "))
            .unwrap()
            .to_owned()
    };
    let token = token_of(&first);
    assert_ne!(token, token_of(&second), "tokens must not repeat");
    assert!(token.len() >= 40);
    // The printed entry is valid config and accepts exactly that token.
    let entry = first
        .split_once("config entry (append it to the end of config.toml):\n")
        .unwrap()
        .1;
    let config =
        callguard::config::Config::from_toml(entry).unwrap_or_else(|e| panic!("{e}: {entry}"));
    assert_eq!(config.server.tenants.len(), 1);
    // Pasted as printed at the end of the shipped config, it is that config plus the tenant.
    let shipped = std::fs::read_to_string(common::root().join("config.toml")).unwrap();
    let pasted = callguard::config::Config::from_toml(&format!("{shipped}\n{entry}"))
        .unwrap_or_else(|e| panic!("the shipped config with the entry pasted: {e}"));
    assert_eq!(pasted.server.tenants, config.server.tenants);
    pasted.validate().unwrap();
    let auth = callguard::grpc::Authenticator::new(&config.server.tenants);
    assert_eq!(auth.tenant(&token).as_deref(), Some("bank-a"));
    let bad = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["token", "bad name"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn check_config_reports_every_problem_and_starts_nothing() {
    let ok = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["check-config"])
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "config OK\n");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[detector]\nmodel = \"missing.onnx\"\nworkerz = 2\n[server.tls]\ncert = \"no.pem\"\nkey = \"no.key\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["--config", bad.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "detector.model",
        "detector.workerz",
        "server.tls.cert",
        "server.tls.key",
    ] {
        assert!(err.contains(key), "{key} not in: {err}");
    }
    assert_eq!(
        err.matches("detector.workerz").count(),
        1,
        "each problem once: {err}"
    );
}
