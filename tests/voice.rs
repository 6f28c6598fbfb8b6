//! A voice that changes mid-call raises `VOICE_CHANGED` soon after the change; one voice all
//! along raises none. Calls go through G.711 mu-law at 8 kHz, as a phone line would carry them,
//! pushed as 20 ms PCM frames; the speaker encoder is the shipped `models/speaker.onnx` and the
//! detector the test-only loudness graph (the clone score does not matter here).

mod common;

use std::sync::atomic::AtomicBool;

use callguard::audio::g711::{Law, decode_into, encode_into};
use callguard::audio::push::{self, Encoding};
use callguard::audio::{ChannelPick, SourceFormat};
use callguard::config::WhenFull;
use callguard::pipeline::{CallSpec, CallSummary, Engine, EngineEvent, drive};
use callguard::verdict::AlertKind;

const RATE: u32 = 8_000;

fn engine() -> Engine {
    let mut config = common::loudness_config();
    config.voice.speaker_model = Some(common::root().join("models/speaker.onnx"));
    Engine::start(&config).unwrap()
}

/// A test WAV at 8 kHz (linear interpolation from its rate) through mu-law and back, at -20 dBFS.
fn phone(name: &str) -> Vec<f32> {
    let (x, rate) = common::read_wav(&common::audio(name));
    let x = common::at_level(&x, -20.0);
    let n = (x.len() as u64 * RATE as u64 / rate as u64) as usize;
    let narrow: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f64 * rate as f64 / RATE as f64;
            let (k, f) = (t as usize, (t.fract()) as f32);
            let a = x[k.min(x.len() - 1)];
            let b = x[(k + 1).min(x.len() - 1)];
            a + (b - a) * f
        })
        .collect();
    let (mut codes, mut out) = (Vec::new(), Vec::new());
    encode_into(Law::MuLaw, &narrow, &mut codes);
    decode_into(Law::MuLaw, &codes, &mut out);
    out
}

fn call(engine: &Engine, id: &str, samples: &[f32]) -> CallSummary {
    let format = SourceFormat {
        sample_rate: RATE,
        channels: 1,
    };
    let (handle, mut source) = push::channel(format, Encoding::Pcm16Le, 64).unwrap();
    let call = engine
        .open_call(CallSpec {
            id: id.into(),
            format,
            pick: ChannelPick::Mix,
            channel_class: engine.classify(RATE, true),
            when_full: WhenFull::Block,
            timeline_limit: 10_000,
            recorded: true,
        })
        .unwrap();
    let mut vad = engine.vad().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| drive(call, &mut vad, &mut source, &stop).unwrap());
        for chunk in samples.chunks(RATE as usize / 50) {
            let bytes: Vec<u8> = chunk
                .iter()
                .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
                .collect();
            while let Err(push::PushError::Full) = handle.push_bytes(&bytes) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        drop(handle);
    });
    loop {
        match engine.events().recv().unwrap() {
            EngineEvent::Ended(s) if s.call_id == id => return *s,
            _ => {}
        }
    }
}

fn changes(s: &CallSummary) -> Vec<(u64, f32)> {
    s.alerts
        .iter()
        .filter(|a| a.kind == AlertKind::VoiceChanged)
        .map(|a| (a.audio_ms, a.voice_similarity.unwrap()))
        .collect()
}

#[test]
fn one_voice_all_along_never_changes() {
    let engine = engine();
    let same: Vec<f32> = ["genuine_3.wav", "genuine_1.wav", "genuine_2.wav"]
        .iter()
        .flat_map(|n| phone(n))
        .collect();
    let s = call(&engine, "one-voice", &same);
    assert!(s.windows_scored >= 40, "{} windows", s.windows_scored);
    assert_eq!(changes(&s), [], "{:?}", s.alerts);
}

#[test]
fn another_voice_taking_over_is_reported_within_three_seconds() {
    let engine = engine();
    let human: Vec<f32> = ["genuine_3.wav", "genuine_1.wav"]
        .iter()
        .flat_map(|n| phone(n))
        .collect();
    let switch_ms = human.len() as u64 * 1000 / RATE as u64;
    let mut audio = human;
    audio.extend(phone("synthetic_espeak.wav"));
    let s = call(&engine, "takeover", &audio);
    let found = changes(&s);
    assert_eq!(found.len(), 1, "one change: {found:?}");
    let (at, similarity) = found[0];
    assert!(
        at > switch_ms && at <= switch_ms + 3_000,
        "reported at {at} ms, the voice changed at {switch_ms} ms"
    );
    assert!(similarity < 0.65, "{similarity}");
    // The call's state is the clone detector's, not the change's.
    let change = s
        .alerts
        .iter()
        .find(|a| a.kind == AlertKind::VoiceChanged)
        .unwrap();
    assert!((change.risk - (1.0 - (1.0 - change.p_spoof).powi(2))).abs() < 1e-4);
}
