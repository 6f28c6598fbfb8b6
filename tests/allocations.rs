//! No allocation per window on the detection path, proved with a counting allocator: once a call
//! is warmed up, taking its audio in (caller channel, resampling), gating it (energy floor, VAD
//! staging, hysteresis) and cutting windows allocates nothing, the window buffers coming back
//! from the detector as the pool hands them back; and a scoring run (the cascade's two models, or
//! the VAD over many calls) allocates the same whether it holds one window or many: what it does
//! allocate is ONNX Runtime's per-run bookkeeping on the Rust side (output names and values),
//! paid once per batch, never per window.
//!
//! Counting is per thread (the `allocation-counter` crate's allocator), so the test harness's
//! other threads do not disturb it.

mod common;

use allocation_counter::{measure, opt_out};
use callguard::audio::{ChannelPick, SourceFormat};
use callguard::detect::{ModelCard, Scorer, SileroVad, WindowBuffers};
use callguard::pipeline::CallStream;
use callguard::pipeline::stream::StreamOutput;

/// Allocations made by `f` on this thread.
fn counted(f: impl FnOnce()) -> u64 {
    measure(f).count_total
}

/// Genuine speech at 8 kHz, the three test recordings one after another.
fn speech_8k() -> Vec<f32> {
    let mut all = Vec::new();
    for name in ["genuine_1.wav", "genuine_2.wav", "genuine_3.wav"] {
        let (x, rate) = common::read_wav(&common::audio(name));
        assert_eq!(rate, 8_000, "{name}");
        all.extend(x);
    }
    all
}

#[test]
fn a_warm_call_takes_gates_and_windows_audio_without_allocating() {
    let config = common::shipped_config();
    let buffers = WindowBuffers::new(8);
    let mut stream = CallStream::new(
        1,
        SourceFormat {
            sample_rate: 8_000,
            channels: 1,
        },
        ChannelPick::Mix,
        &config.speech,
        &config.windows,
        16_000,
        None,
    )
    .unwrap()
    .with_window_buffers(buffers.clone());
    let mut vad = SileroVad::new(&config.speech.vad_model).unwrap();
    let audio = speech_8k();
    let chunks: Vec<&[f32]> = audio.chunks(160).collect(); // 20 ms, as a network ingest gets them
    let warm = 5 * 50; // the first 5 s: buffers and scratch reach their working size
    assert!(chunks.len() > warm + 20 * 50, "need 25 s of speech");

    let mut windows = Vec::with_capacity(256);
    let mut ours = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        // VAD runs are not counted here (the last test counts them); everything around is.
        let n = counted(|| {
            let mut emit = |out: StreamOutput| {
                if let StreamOutput::Window(job) = out {
                    windows.push(job);
                }
            };
            stream.take(chunk).unwrap();
            while let Some(state) = stream.stage(&mut emit) {
                opt_out(|| vad.run(&mut [state]).unwrap());
                stream.gate_staged(&mut emit);
            }
            // The detector hands each window's buffer back once scored.
            for job in windows.drain(..) {
                buffers.give(job.samples);
            }
        });
        if i >= warm {
            ours += n;
        }
    }
    let emitted = stream.stats().windows_emitted;
    assert!(emitted >= 40, "{emitted} windows");
    assert_eq!(
        ours,
        0,
        "{ours} allocations over {} s of warm audio ({emitted} windows)",
        (chunks.len() - warm) / 50
    );
    assert!(
        buffers.made() <= 8,
        "{} window buffers made",
        buffers.made()
    );
}

/// Allocations of one `run` (which counts its own) after warm-up, for batches of 1 and `many`.
fn per_run(mut run: impl FnMut(usize) -> u64, many: usize) -> (u64, u64) {
    for _ in 0..3 {
        run(1);
        run(many);
    }
    (run(1), run(many))
}

#[test]
fn scoring_allocates_per_model_run_never_per_window() {
    for model in [
        common::root().join("models/detector.onnx"),
        common::root().join(".deps/test-models/loudness-cascade.onnx"),
    ] {
        let card = ModelCard::load(&model).unwrap();
        let mut scorer = Scorer::new(&card, 1).unwrap();
        // Every window at a sampled position (0), so a cascade runs both of its models.
        let window: Vec<f32> = (0..16_000).map(|i| 0.5 * (i as f32 * 0.07).sin()).collect();
        let mut out = Vec::with_capacity(16);
        let (one, sixteen) = per_run(
            |n| {
                let windows = (0..n).map(|_| (0u64, window.as_slice()));
                let allocations = counted(|| scorer.score(windows, &mut out).unwrap());
                assert_eq!(out.len(), n);
                assert!(
                    out.iter()
                        .all(|s| s.stage == callguard::detect::Stage::Full)
                );
                allocations
            },
            16,
        );
        assert_eq!(
            one,
            sixteen,
            "{}: a batch of 1 allocates {one} times, of 16 {sixteen}",
            card.id()
        );
        eprintln!("{}: {one} allocations per batch", card.id());
    }
}

#[test]
fn a_vad_run_allocates_the_same_for_one_call_or_many() {
    let config = common::shipped_config();
    let mut vad = SileroVad::new(&config.speech.vad_model).unwrap();
    let mut states: Vec<callguard::detect::VadState> = vec![Default::default(); 32];
    let frame: Vec<f32> = (0..512).map(|i| 0.1 * (i as f32 * 0.05).sin()).collect();
    let (one, many) = per_run(
        |n| {
            let mut calls: Vec<&mut callguard::detect::VadState> = Vec::with_capacity(32);
            calls.extend(states.iter_mut().take(n));
            for s in calls.iter_mut() {
                s.stage(&frame);
            }
            counted(|| vad.run(&mut calls).unwrap())
        },
        32,
    );
    assert_eq!(one, many, "1 call: {one} allocations, 32 calls: {many}");
}
