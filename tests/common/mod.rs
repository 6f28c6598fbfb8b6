//! Shared helpers: the project's generated audio, configs, and WAV writers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod daemon;
pub mod grpc;

use callguard::audio::{ChannelPick, SourceFormat};
use callguard::config::{Config, WhenFull};
use callguard::pipeline::{Call, CallSpec, Engine};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Audio made by `scripts/make-test-audio.sh` (run by `scripts/setup.sh`).
pub fn audio(name: &str) -> PathBuf {
    let p = root().join(".deps/audio").join(name);
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

/// The shipped configuration with the shipped model, without transcription (the tests that
/// want it use [`transcribing_config`]; elsewhere it would only load the machine).
pub fn shipped_config() -> Config {
    let mut c = transcribing_config();
    c.transcribe.enabled = false;
    c
}

/// The shipped configuration as it is, transcription included.
pub fn transcribing_config() -> Config {
    let c = Config::load(&root().join("config.toml")).expect("shipped config.toml validates");
    assert!(
        c.transcribe.model.is_file(),
        "{} missing: run scripts/setup.sh",
        c.transcribe.model.display()
    );
    c
}

/// The shipped configuration with the test-only loudness model (tests/models/make_test_models.py).
pub fn loudness_config() -> Config {
    let mut c = shipped_config();
    c.detector.model = root().join(".deps/test-models/loudness.onnx");
    assert!(c.detector.model.is_file(), "run scripts/setup.sh");
    c.detector.workers = 2;
    c
}

/// Reads a WAV (any format hound reads) as mono f32 and its rate.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let ch = spec.channels as usize;
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(|s| s.unwrap()).collect(),
        hound::SampleFormat::Int => {
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.unwrap() as f32 / scale)
                .collect()
        }
    };
    let mono = samples
        .chunks(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect();
    (mono, spec.sample_rate)
}

pub fn write_wav_f32(path: &Path, rate: u32, channels: u16, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

pub fn write_wav_i16(path: &Path, rate: u32, channels: u16, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// Scales a signal to an RMS level in dBFS.
pub fn at_level(x: &[f32], dbfs: f32) -> Vec<f32> {
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt();
    let gain = 10f32.powf(dbfs / 20.0) / rms.max(1e-9);
    x.iter().map(|v| (v * gain).clamp(-1.0, 1.0)).collect()
}

/// `n` live calls (`live-0`..), each pushing all of `speech` in chunks of 1600 samples as fast as it can
/// from its own thread (live policy: windows and segments that do not fit are dropped), then
/// finishing. Their events arrive on the engine's event stream.
pub fn push_live_calls(
    engine: &callguard::pipeline::Engine,
    n: usize,
    speech: &[f32],
    format: callguard::audio::SourceFormat,
) {
    std::thread::scope(|s| {
        for i in 0..n {
            s.spawn(move || {
                let mut call = engine
                    .open_call(callguard::pipeline::CallSpec {
                        id: format!("live-{i}"),
                        format,
                        pick: callguard::audio::ChannelPick::Mix,
                        channel_class: engine.classify(format.sample_rate, false),
                        when_full: callguard::config::WhenFull::DropNewest,
                        timeline_limit: 10_000,
                        recorded: false,
                        allowed_voices: Default::default(),
                        claimed: None,
                    })
                    .unwrap();
                let mut vad = engine.vad().unwrap();
                for chunk in speech.chunks(1_600) {
                    call.push(&mut vad, chunk).unwrap();
                }
                call.finish(&mut vad).unwrap();
            });
        }
    });
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// Neither eight card digits in a row (separators between digits ignored) nor four spoken
/// card digits in a row anywhere in `text`. (Shorter digit runs are not checked here: logs and
/// JSON carry times and scores whose digits could match by chance; the redaction unit and
/// property tests cover short runs.)
pub fn assert_no_card(text: &str, what: &str) {
    const CARD: &str = "4111111111111111";
    let mut digits = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let between_digits = i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c.is_ascii_digit() {
            digits.push(*c);
        } else if !(between_digits && matches!(c, ' ' | '-' | ',' | '.')) {
            digits.push(' ');
        }
    }
    for start in 0..=CARD.len() - 8 {
        let piece = &CARD[start..start + 8];
        assert!(
            !digits.contains(piece),
            "{what}: card digits {piece} leaked"
        );
    }
    let lower = text.to_lowercase();
    for spoken in ["one one one one", "four one one one", "one, one, one, one"] {
        assert!(!lower.contains(spoken), "{what}: spoken card digits leaked");
    }
}

/// Mono audio as 20 ms frames of 16-bit little-endian PCM.
pub fn pcm16_frames(x: &[f32], rate: u32) -> Vec<Vec<u8>> {
    x.chunks(rate as usize / 50)
        .map(|c| {
            c.iter()
                .flat_map(|v| ((v * 32767.0) as i16).to_le_bytes())
                .collect()
        })
        .collect()
}

/// A loud prompt then two quiet ones, `cycles` times over, as 20 ms PCM16 frames, and their
/// rate: the loudness test model alerts in each loud part and clears in the quiet.
pub fn loud_quiet_frames(cycles: usize) -> (Vec<Vec<u8>>, u32) {
    let (quiet, rate) = read_wav(&audio("genuine_2.wav"));
    let (loud, _) = read_wav(&audio("genuine_1.wav"));
    let (quiet, loud) = (at_level(&quiet, -30.0), at_level(&loud, -6.0));
    let cycle: Vec<f32> = loud.iter().chain(&quiet).chain(&quiet).copied().collect();
    let x: Vec<f32> = cycle
        .iter()
        .cycle()
        .take(cycle.len() * cycles)
        .copied()
        .collect();
    (pcm16_frames(&x, rate), rate)
}

/// Opens a recorded mono call on `engine` (channels mixed, blocking when full), classed by its
/// rate and whether it was G.711-coded.
pub fn open_mono_call(engine: &Engine, id: &str, format: SourceFormat, g711: bool) -> Call {
    engine
        .open_call(CallSpec {
            id: id.into(),
            format,
            pick: ChannelPick::Mix,
            channel_class: engine.classify(format.sample_rate, g711),
            when_full: WhenFull::Block,
            timeline_limit: 10_000,
            recorded: true,
            allowed_voices: Default::default(),
            claimed: None,
        })
        .unwrap()
}
