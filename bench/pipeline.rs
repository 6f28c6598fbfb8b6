//! Per-stage costs, as time per second of call audio where that applies.
//!   cargo bench --bench pipeline
//! Needs scripts/setup.sh (ONNX Runtime, Silero VAD, Whisper tiny.en, test audio) and the
//! shipped model.

use std::path::PathBuf;

use callguard::audio::g711::{self, Law};
use callguard::audio::resample::Resampler;
use callguard::detect::{Detector, ModelCard, SileroVad, VadState};
use callguard::verdict::{CallEvidence, ChannelClass, FusionParams};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn noise(n: usize) -> Vec<f32> {
    let mut seed = 7u32;
    (0..n)
        .map(|_| {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn resample(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample_1s_to_16k");
    for rate in [8_000u32, 11_025, 22_050, 44_100, 48_000, 96_000] {
        let input = noise(rate as usize);
        let mut r = Resampler::new(rate, 16_000).unwrap();
        let mut out = Vec::with_capacity(20_000);
        g.bench_with_input(BenchmarkId::from_parameter(rate), &input, |b, input| {
            b.iter(|| {
                out.clear();
                for chunk in input.chunks(rate as usize / 50) {
                    r.process(chunk, &mut out).unwrap();
                }
            })
        });
    }
    g.finish();
}

fn g711_decode(c: &mut Criterion) {
    let codes: Vec<u8> = (0..8_000u32).map(|i| (i * 37 % 256) as u8).collect();
    let mut out = Vec::with_capacity(8_000);
    c.bench_function("g711_mulaw_decode_1s", |b| {
        b.iter(|| {
            out.clear();
            g711::decode_into(Law::MuLaw, &codes, &mut out);
        })
    });
}

fn vad(c: &mut Criterion) {
    let mut vad = SileroVad::new(&root().join(".deps/silero_vad.onnx")).unwrap();
    let mut state = VadState::default();
    let frame = noise(512);
    c.bench_function("vad_per_32ms_frame", |b| {
        b.iter(|| vad.probability(&mut state, &frame).unwrap())
    });
    // One frame of each of n calls in one run (what an ingest worker does with the calls whose
    // audio is waiting); criterion's time is per batch, divide by n.
    let mut group = c.benchmark_group("vad_batch_of_calls");
    for n in [4usize, 16, 64] {
        let mut states = vec![VadState::default(); n];
        let frames: Vec<Vec<f32>> = (0..n).map(|i| noise(512 + i)[i..].to_vec()).collect();
        group.bench_function(format!("calls/{n}"), |b| {
            b.iter(|| {
                let mut batch: Vec<&mut VadState> = states
                    .iter_mut()
                    .zip(&frames)
                    .map(|(s, f)| {
                        s.stage(f);
                        s
                    })
                    .collect();
                vad.run(&mut batch).unwrap();
                batch.iter_mut().map(|s| s.take()).count()
            })
        });
    }
    group.finish();
}

/// The shipped detector, and the AASIST anchor when bench/anchors/setup.sh has exported it,
/// on the same kind of windows (each at its own window length), batch 1 and batch 16.
/// Candidate models (with their sidecars) are timed beside them in the same run when listed in
/// `CALLGUARD_BENCH_MODELS` (paths separated by `:`), each named by its folder.
fn detector(c: &mut Criterion) {
    let anchor = root().join(".deps/anchors/aasist.onnx");
    let mut models = vec![
        ("shipped".to_string(), root().join("models/detector.onnx")),
        ("anchor".to_string(), anchor.clone()),
    ];
    for path in std::env::var("CALLGUARD_BENCH_MODELS")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
    {
        let path = PathBuf::from(path);
        let folder = path
            .parent()
            .and_then(|d| d.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            path.is_file(),
            "CALLGUARD_BENCH_MODELS: no model at {}",
            path.display()
        );
        models.push((folder, path));
    }
    for (label, model) in models.iter().filter(|(_, m)| m.is_file()) {
        let card = ModelCard::load(model).unwrap();
        let mut detector = Detector::new(&card, 1).unwrap();
        let windows: Vec<Vec<f32>> = (0..16)
            .map(|i| noise(card.input.window_samples + i)[i..].to_vec())
            .collect();
        let mut out = Vec::new();
        let name = match label.as_str() {
            "shipped" | "anchor" => card.name.clone(),
            _ => format!("{}-{label}", card.name),
        };
        let mut g = c.benchmark_group(format!("detector_window/{name}"));
        for batch in [1usize, 16] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
                b.iter(|| {
                    detector
                        .score(windows[..batch].iter().map(|w| w.as_slice()), &mut out)
                        .unwrap()
                })
            });
        }
        g.finish();
    }
    if !anchor.is_file() {
        eprintln!("AASIST anchor skipped: run bench/anchors/setup.sh");
    }
}

/// The speaker encoder of voice-change tracking (`[voice]`, models/speaker.onnx), per 1 s window,
/// one thread, alone and in a batch of 16: its cost on top of the detector's.
fn speaker(c: &mut Criterion) {
    use callguard::detect::{SpeakerCard, SpeakerEncoder};
    let card = SpeakerCard::load(&root().join("models/speaker.onnx")).unwrap();
    let mut encoder = SpeakerEncoder::new(&card, 1).unwrap();
    let windows: Vec<Vec<f32>> = (0..16).map(|i| noise(16_000 + i)[i..].to_vec()).collect();
    let mut out = Vec::new();
    let mut g = c.benchmark_group("speaker_window");
    for batch in [1usize, 16] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                encoder
                    .embed(windows[..batch].iter().map(|w| w.as_slice()), &mut out)
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// The Whisper tiny.en anchor (transcription, issue 4): real speech segments of 2, 5 and 8 s
/// from the Asterisk prompts (8 kHz, resampled to 16 kHz), one thread; time per segment, so
/// the real-time factor per core is the time over the segment length.
fn whisper(c: &mut Criterion) {
    use callguard::transcribe::WhisperModel;
    let model_path = root().join(".deps/whisper/ggml-tiny.en.bin");
    let prompts = root().join(".deps/audio/prompts.wav");
    if !model_path.is_file() || !prompts.is_file() {
        eprintln!("Whisper anchor skipped: run scripts/setup.sh");
        return;
    }
    let mut reader = hound::WavReader::open(&prompts).unwrap();
    let rate = reader.spec().sample_rate;
    let pcm: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect();
    let mut speech = Vec::new();
    Resampler::new(rate, 16_000)
        .unwrap()
        .process(&pcm, &mut speech)
        .unwrap();
    let model = WhisperModel::load(&model_path, Some("en")).unwrap();
    let mut session = model.session(1).unwrap();
    let mut g = c.benchmark_group("whisper_tiny_en_segment");
    g.sample_size(10);
    for seconds in [2usize, 5, 8] {
        let segment = &speech[16_000..16_000 * (1 + seconds)];
        g.bench_with_input(BenchmarkId::new("seconds", seconds), &segment, |b, seg| {
            b.iter(|| session.transcribe(seg).unwrap())
        });
    }
    g.finish();
}

fn fusion(c: &mut Criterion) {
    let params = FusionParams {
        channel_class: ChannelClass::NarrowbandG711,
        enter_threshold: 0.6,
        exit_threshold: 0.3,
        smoothing: 4,
        enter_windows: 2,
        exit_windows: 4,
        timeline_limit: 2_000,
        model: "bench".into(),
    };
    let mut e = CallEvidence::new("bench".into(), params);
    let mut seq = 0u64;
    c.bench_function("fusion_per_window", |b| {
        b.iter(|| {
            seq += 1;
            e.add(seq, seq * 500, seq * 500 + 1000, ((seq % 10) as f32) / 10.0)
        })
    });
}

criterion_group! {
    name = benches;
    // The project's plotters build (for DET curves) embeds its own font; criterion's HTML plots
    // are not needed for numbers.
    config = Criterion::default().without_plots();
    targets = resample, g711_decode, vad, detector, speaker, whisper, fusion
}
criterion_main!(benches);
