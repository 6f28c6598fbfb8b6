//! Memory per call: the daemon core (`Guard`: registry, ingest workers, engine, detector pool,
//! alert log) runs in this process under a counting allocator; N calls are opened through the
//! same `open_stream` path the gRPC `StreamAudio` handler uses and fed 8 kHz G.711 mu-law in
//! 20 ms frames until each is well into speech (window buffers full, a speech segment being
//! gathered). Once the workers are idle, the heap still held, less what the core held with no
//! call open, divided by N, is the state one call costs. The calls then end, and more sets of N
//! calls run the same way (`--sets`, 3 in all by default): the heap each later set leaves behind
//! shows whether ended calls leak.
//!
//!   cargo bench --bench memory                      # 100 and 400 calls; 100 with transcription
//!   cargo bench --bench memory -- --calls 200       # one size
//!   cargo bench --bench memory -- --sets 6          # sets of calls run one after another
//!
//! Run without `--bench` (as test runners do) it does nothing. Needs scripts/setup.sh.

use std::alloc::System;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use callguard::audio::g711::{self, Law};
use callguard::audio::push::Encoding;
use callguard::audio::{AudioSource, Read};
use callguard::config::Config;
use callguard::guard::{Guard, OpenSpec, StreamCall};
use cap::Cap;
use serde_json::json;

/// Every Rust allocation, counted. ONNX Runtime's and whisper.cpp's own allocations (model
/// weights, arenas: shared by all calls, not per call) do not pass through it.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Genuine speech from `.deps/audio`, 8 kHz mono, as 20 ms mu-law frames.
fn frames() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for name in ["genuine_1.wav", "genuine_2.wav", "genuine_3.wav"] {
        let path = root().join(".deps/audio").join(name);
        let mut src = callguard::audio::file::FileSource::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
        assert_eq!(src.format().sample_rate, 8_000, "{name}");
        let channels = src.format().channels as usize;
        let mut buf = Vec::new();
        while let Read::Samples = src.read(&mut buf).unwrap() {
            all.extend(
                buf.chunks(channels)
                    .map(|c| c.iter().sum::<f32>() / c.len() as f32),
            );
        }
    }
    all.chunks_exact(160)
        .map(|c| {
            let mut out = Vec::with_capacity(160);
            g711::encode_into(Law::MuLaw, c, &mut out);
            out
        })
        .collect()
}

fn config(dir: &std::path::Path, transcribe: bool) -> Config {
    let path = dir.join("memory.toml");
    std::fs::write(
        &path,
        format!(
            "[speech]\nvad_model = \"{}\"\n[detector]\nmodel = \"{}\"\n\
             [server]\nmax_calls_per_tenant = 100000\nmax_speed = 1000.0\n\
             [store]\npath = \"alerts.db\"\n[transcribe]\nenabled = {transcribe}\nmodel = \"{}\"\n",
            root().join(".deps/silero_vad.onnx").display(),
            root().join("models/detector.onnx").display(),
            root().join(".deps/whisper/ggml-tiny.en.bin").display(),
        ),
    )
    .unwrap();
    Config::load(&path).unwrap()
}

fn open(guard: &Guard, id: String) -> StreamCall {
    guard
        .open_stream(
            "bench",
            OpenSpec {
                call_id: id,
                encoding: Encoding::MuLaw,
                sample_rate: 8_000,
                channels: 1,
                caller_channel: None,
                metadata: Default::default(),
                window_updates: false,
                channel_class: None,
                source: callguard::guard::CallSource::Stream,
            },
        )
        .unwrap()
}

/// Pushes `count` frames into every call, round robin. A frame the full ingest queue refused is
/// sent again (under the next sequence number) after a pause, so every call really holds the
/// state of that much audio. Returns the most heap seen, sampled after each round.
fn feed(calls: &mut [StreamCall], audio: &[Vec<u8>], count: usize) -> usize {
    let mut seqs = vec![0u64; calls.len()];
    let mut peak = 0;
    for f in 0..count {
        for (i, call) in calls.iter_mut().enumerate() {
            let frame = &audio[(f + i * 997) % audio.len()];
            loop {
                seqs[i] += 1;
                match call.push(seqs[i], frame) {
                    Ok(()) => break,
                    Err(callguard::guard::FrameError::Busy) => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        peak = peak.max(ALLOCATOR.allocated());
    }
    peak
}

/// Waits until the heap stops changing (the workers have caught up), then reads it.
fn settled() -> usize {
    let mut last = ALLOCATOR.allocated();
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = ALLOCATOR.allocated();
        let still = now.abs_diff(last) < 64 * 1024;
        last = now;
        if (still && started.elapsed() > Duration::from_secs(2))
            || started.elapsed() > Duration::from_secs(120)
        {
            return now;
        }
    }
}

fn run(
    n: usize,
    transcribe: bool,
    seconds: usize,
    sets: usize,
    audio: &[Vec<u8>],
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let guard = Guard::start(&config(dir.path(), transcribe), None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Warm up: one call through every stage, so arenas and sessions are set up before the base.
    let mut warm = vec![open(&guard, "warm-up".into())];
    feed(&mut warm, audio, 50 * seconds);
    rt.block_on(warm[0].finish());
    drop(warm);
    let base = settled();

    let cycle = |name: &str| {
        let started = Instant::now();
        let mut calls: Vec<StreamCall> = (0..n)
            .map(|i| open(&guard, format!("{name}-{i}")))
            .collect();
        let peak = feed(&mut calls, audio, 50 * seconds);
        let fed_s = started.elapsed().as_secs_f64();
        let open_heap = settled();
        for call in &mut calls {
            rt.block_on(call.finish());
        }
        drop(calls);
        (fed_s, peak, open_heap, settled())
    };
    let (fed_s, peak, open_heap, after_end) = cycle("set-0");
    // The same again: what each later set of calls leaves behind is what ended calls leak.
    let mut after = vec![after_end];
    for k in 1..sets {
        after.push(cycle(&format!("set-{k}")).3);
    }
    let left_per_call_kb: Vec<f64> = after
        .windows(2)
        .map(|w| ((w[1] as f64 - w[0] as f64) / n as f64 / 1024.0 * 10.0).round() / 10.0)
        .collect();
    guard.shutdown();
    let mb = |b: f64| (b / 1e4).round() / 1e2;
    let per_call = open_heap.saturating_sub(base) as f64 / n as f64;
    json!({
        "calls": n,
        "transcribe": transcribe,
        "audio_per_call_s": seconds,
        "feed_wall_s": (fed_s * 10.0).round() / 10.0,
        "heap_base_mb": mb(base as f64),
        "heap_with_calls_mb": mb(open_heap as f64),
        "heap_per_call_kb": (per_call / 1024.0).round(),
        "heap_peak_per_call_kb": ((peak.saturating_sub(base)) as f64 / n as f64 / 1024.0).round(),
        "heap_after_end_per_call_kb": (after_end.saturating_sub(base) as f64 / n as f64 / 1024.0).round(),
        "heap_left_by_each_later_set_per_call_kb": left_per_call_kb,
        "target_kb": 1024,
        "met": per_call <= 1024.0 * 1024.0,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<usize>().expect(flag))
    };
    let seconds = value("--seconds").unwrap_or(12);
    let sets = value("--sets").unwrap_or(3).max(1);
    // Transcription holds a segment of speech per call and a shared queue that drains at
    // whisper's pace, so its runs are slow: 100 calls by default.
    let runs = value("--calls").map_or(vec![(100, false), (400, false), (100, true)], |n| {
        vec![(n, false), (n, true)]
    });
    let audio = frames();
    for (n, transcribe) in runs {
        let report = run(n, transcribe, seconds, sets, &audio);
        #[allow(clippy::print_stdout)]
        {
            println!("{report}");
        }
    }
}
