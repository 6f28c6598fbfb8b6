//! The detector cascade (src/detect/cascade.rs): a first stage scores every window, the full
//! model only those the first stage cannot clear and every `sample_every`-th window of a call.
//! The models are the test-only loudness graphs (tests/models/make_test_models.py): the first
//! stage reads 2 lower in log-odds than the full model, so a window's score tells which one ran.

mod common;

use callguard::audio::SourceFormat;
use callguard::config::Config;
use callguard::detect::{ModelCard, Scorer, Stage};
use callguard::pipeline::{CallSummary, Engine, EngineEvent};
use callguard::verdict::AlertKind;

fn cascade_model() -> std::path::PathBuf {
    common::root().join(".deps/test-models/loudness-cascade.onnx")
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Log-odds of the full loudness model for a sine of amplitude `a` (RMS a / sqrt 2).
fn full_logit(a: f32) -> f32 {
    0.5 * (20.0 * (a / 2f32.sqrt()).log10() + 18.0)
}

fn sine(a: f32) -> Vec<f32> {
    (0..16_000).map(|i| a * (i as f32 * 0.07).sin()).collect()
}

#[test]
fn the_full_model_scores_only_what_the_first_stage_cannot_clear_and_a_sample() {
    let card = ModelCard::load(&cascade_model()).unwrap();
    assert_eq!(
        card.id(),
        "test-loudness-cascade@1+test-loudness-first@1",
        "alerts name both stages"
    );
    let mut scorer = Scorer::new(&card, 1).unwrap();
    assert!(scorer.is_cascade());
    let (quiet, loud) = (0.03, 0.5); // about -33 and -9 dBFS
    let windows: Vec<(u64, Vec<f32>)> = (0..9u64)
        .map(|seq| (seq, sine(if seq == 5 { loud } else { quiet })))
        .collect();
    let mut out = Vec::new();
    scorer
        .score(
            windows.iter().map(|(seq, w)| (*seq, w.as_slice())),
            &mut out,
        )
        .unwrap();
    let stages: Vec<Stage> = out.iter().map(|s| s.stage).collect();
    use Stage::{First, Full};
    // 0, 4 and 8: every 4th window of the call; 5: loud enough that the first stage escalates.
    assert_eq!(
        stages,
        [Full, First, First, First, Full, Full, First, First, Full]
    );
    for ((seq, _), s) in windows.iter().zip(&out) {
        let a = if *seq == 5 { loud } else { quiet };
        let want = match s.stage {
            Full => sigmoid(full_logit(a)),
            First => sigmoid(full_logit(a) - 2.0),
        };
        assert!(
            (s.p_spoof - want).abs() < 1e-3,
            "window {seq}: {} against {want}",
            s.p_spoof
        );
    }
}

#[test]
fn without_a_cascade_every_window_gets_the_full_model() {
    let card = ModelCard::load(&common::root().join(".deps/test-models/loudness.onnx")).unwrap();
    let mut scorer = Scorer::new(&card, 1).unwrap();
    assert!(!scorer.is_cascade());
    let w = sine(0.03);
    let mut out = Vec::new();
    scorer
        .score(
            (0..3u32).map(|seq| (u64::from(seq), w.as_slice())),
            &mut out,
        )
        .unwrap();
    assert!(out.iter().all(|s| s.stage == Stage::Full));
}

fn config(cascade: bool) -> Config {
    let mut c = common::loudness_config();
    c.detector.model = cascade_model();
    c.detector.cascade = cascade;
    c
}

/// One call pushed in 20 ms chunks through the engine; its summary.
fn call(engine: &Engine, id: &str, samples: &[f32], rate: u32) -> CallSummary {
    let format = SourceFormat {
        sample_rate: rate,
        channels: 1,
    };
    let mut call = common::open_mono_call(engine, id, format, false);
    let mut vad = engine.vad().unwrap();
    for chunk in samples.chunks(rate as usize / 50) {
        call.push(&mut vad, chunk).unwrap();
    }
    call.finish(&mut vad).unwrap();
    loop {
        match engine.events().recv().unwrap() {
            EngineEvent::Ended(s) if s.call_id == id => return *s,
            _ => {}
        }
    }
}

#[test]
fn a_switch_alerts_the_same_with_the_cascade_on_and_off_and_the_first_stage_clears_the_rest() {
    let (quiet, rate) = common::read_wav(&common::audio("genuine_3.wav"));
    let (loud, _) = common::read_wav(&common::audio("genuine_1.wav"));
    let quiet = common::at_level(&quiet, -30.0);
    let loud = common::at_level(&loud, -6.0);
    let switch_ms = quiet.len() as u64 * 1000 / rate as u64;
    let audio: Vec<f32> = quiet.iter().chain(&loud).copied().collect();

    let mut summaries = Vec::new();
    for cascade in [false, true] {
        let engine = Engine::start(&config(cascade)).unwrap();
        let s = call(&engine, "switch", &audio, rate);
        let cleared = engine
            .pool_stats()
            .unwrap()
            .windows_cleared_first_stage
            .load(std::sync::atomic::Ordering::Relaxed);
        summaries.push((s, cleared));
    }
    let [(off, cleared_off), (on, cleared_on)] = <[_; 2]>::try_from(summaries).unwrap();
    assert_eq!(cleared_off, 0);
    assert_eq!(off.model, "test-loudness-cascade@1");
    assert_eq!(on.model, "test-loudness-cascade@1+test-loudness-first@1");
    for s in [&off, &on] {
        let kinds: Vec<_> = s.alerts.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [AlertKind::SuspectedClone], "{:?}", s.alerts);
        assert!(s.first_alert_ms.unwrap() > switch_ms);
    }
    assert_eq!(
        on.first_alert_ms, off.first_alert_ms,
        "same alert, same time"
    );
    assert_eq!(on.windows_scored, off.windows_scored);
    // Every window was scored by one stage or the other: the full model's score as without the
    // cascade, or the first stage's, 2 lower in log-odds. The sampled windows (every 4th) and the
    // loud ones got the full model; before the switch, the first stage cleared all the others.
    let l = |p: f32| (p / (1.0 - p)).ln();
    let mut first_stage = 0;
    for w in &on.timeline {
        let reference = off.timeline.iter().find(|f| f.seq == w.seq).unwrap();
        let full = (w.p_spoof - reference.p_spoof).abs() < 1e-4;
        if !full {
            assert!(
                (l(reference.p_spoof) - l(w.p_spoof) - 2.0).abs() < 1e-2,
                "window {}: {} against the full model's {}",
                w.seq,
                w.p_spoof,
                reference.p_spoof
            );
            first_stage += 1;
        }
        if w.seq % 4 == 0 || reference.p_spoof > 0.9 {
            assert!(full, "window {} should have gone to the full model", w.seq);
        } else if w.end_ms < switch_ms {
            assert!(!full, "window {} should have been cleared", w.seq);
        }
    }
    assert!(first_stage >= 12, "{first_stage} windows cleared");
    assert_eq!(
        cleared_on, first_stage as u64,
        "every cleared window counted"
    );
}

#[test]
fn a_cascade_whose_stages_disagree_on_the_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::root().join(".deps/test-models");
    for name in ["loudness-cascade", "loudness-first"] {
        std::fs::copy(
            src.join(format!("{name}.onnx")),
            dir.path().join(format!("{name}.onnx")),
        )
        .unwrap();
    }
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("loudness-first.json")).unwrap())
            .unwrap();
    let mut short = first.clone();
    short["input"]["window_samples"] = 8_000.into();
    std::fs::write(dir.path().join("loudness-first.json"), short.to_string()).unwrap();
    std::fs::copy(
        src.join("loudness-cascade.json"),
        dir.path().join("loudness-cascade.json"),
    )
    .unwrap();
    let model = dir.path().join("loudness-cascade.onnx");
    let err = ModelCard::load(&model).unwrap_err().to_string();
    assert!(err.contains("first stage") && err.contains("8000"), "{err}");
    std::fs::remove_file(dir.path().join("loudness-first.json")).unwrap();
    let err = ModelCard::load(&model).unwrap_err().to_string();
    assert!(err.contains("loudness-first.json"), "{err}");
}
