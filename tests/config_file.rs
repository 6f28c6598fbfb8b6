//! The shipped config.toml parses, validates, and says what it says.

mod common;

use callguard::config::{Config, WhenFull};

#[test]
fn shipped_config_validates_and_matches_the_defaults() {
    let shipped = common::transcribing_config();
    let mut defaults = Config::default();
    defaults.resolve_paths(Some(&common::root()));
    assert_eq!(
        shipped, defaults,
        "config.toml documents the defaults; keep them in step"
    );
    assert_eq!(shipped.detector.when_full, WhenFull::DropNewest);
}

#[test]
fn a_bad_file_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[windows]\nhop_ms = 0\n[detector]\nmax_batch = 0\nmodel = \"nope.onnx\"\n[verdict]\nexit_threshold = 1.5\n\
         [transcribe]\nworkers = 0\nmax_segment_ms = 60000\n\
         [[transcribe.cues]]\nname = \"x\"\nweight = 2.0\nphrases = []\n",
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    for key in [
        "windows.hop_ms",
        "detector.max_batch",
        "detector.model",
        "verdict.exit_threshold",
        "transcribe.workers",
        "transcribe.max_segment_ms",
        "transcribe.cues[0].weight",
        "transcribe.cues[0].phrases",
    ] {
        assert!(err.contains(key), "{key} not in: {err}");
    }
}

#[test]
fn unknown_keys_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[detector]\nworkerz = 3\nmax_batch = 0\n[server.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\ncertt = \"b\"\n\
         [[transcribe.cues]]\nname = \"x\"\nweight = 0.5\nphrases = [\"wire\"]\nnmae = \"y\"\n[verdict.enter_thresholds]\nnarrowband = 0.6\n[nope]\n",
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    // Every unknown key, with its path, and the other problems beside them.
    for key in [
        "detector.workerz",
        "server.tls.certt",
        "transcribe.cues.0.nmae",
        "verdict.enter_thresholds.narrowband",
        "nope",
        "detector.max_batch",
    ] {
        assert!(err.contains(key), "{key} not in: {err}");
    }
    // Six, and the two TLS files that do not exist.
    assert!(err.contains("8 problem(s)"), "{err}");
}

#[test]
fn the_speaker_encoder_is_found_like_the_detector_wherever_the_config_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callguard.toml");
    std::fs::write(&path, "[voice]\nspeaker_model = \"models/speaker.onnx\"\n").unwrap();
    let config = Config::load(&path).unwrap();
    let model = config.voice.speaker_model.unwrap();
    assert_eq!(model, common::root().join("models/speaker.onnx"));
    std::fs::write(&path, "[voice]\nspeaker_model = \"nowhere/speaker.onnx\"\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("voice.speaker_model"), "{err}");
}
