//! Load harness: N calls streamed in real time through the gRPC ingest of a separate
//! `callguard run` process, half genuine and half switching to a synthetic voice at a known
//! moment, all as 8 kHz G.711 mu-law in 20 ms frames (what a media server forks).
//!
//!   cargo bench --bench load                     # search the largest N sustained in real time
//!   cargo bench --bench load -- --calls 40       # one run of 40 calls
//!   cargo bench --bench load -- --seconds 60     # audio per call (default 40)
//!   cargo bench --bench load -- --transcribe     # with transcription on (default: off, the
//!                                                # detection path the targets are about)
//!   cargo bench --bench load -- --turns          # the caller talks in turns, silent between
//!                                                # them (default: talks without pause)
//!   cargo bench --bench load -- --hop-ms 1000    # a detector window every 1000 ms of speech
//!                                                # (default: the config's 500), the fusion
//!                                                # still averaging 2 s of speech
//!   cargo bench --bench load -- --no-cascade     # the full detector on every window (default:
//!                                                # the sidecar's cascade, when it has one)
//!   cargo bench --bench load -- --workers 1 --intra-threads 2 --batch-wait-ms 5
//!                                                # the [detector] pool's settings (default:
//!                                                # the config's: a worker per core, 1 ORT
//!                                                # thread each, no batch wait)
//!
//! Run without `--bench` (as test runners do) it does nothing.
//!
//! Reports, per run: alert latency after clone onset (audio time, p50/p95/max) and how long the
//! alert took to reach the client after that audio was sent (wall time), false alerts per
//! genuine call-hour, daemon CPU per call-second, daemon peak memory and memory per call, and
//! lost frames and dropped windows (and, on stderr, the fused scores of each clone call that raised
//! no alert). A run is sustained when nothing was lost or dropped and
//! every call's summary arrived within 5 s of its last frame. Results print as JSON lines.
//! Needs scripts/setup.sh and a release build of the binary (cargo bench builds it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callguard::grpc::proto::call_guard_client::CallGuardClient;
use serde_json::json;
use tonic::transport::Channel;

#[path = "harness.rs"]
mod harness;
use harness::*;

/// Speech the shipped fusion averages (4 windows at the 500 ms hop); `--hop-ms` keeps it.
const FUSED_SPEECH_MS: u64 = 2_000;

/// One load run; returns whether it was sustained, and prints its report.
/// What every run of a search shares.
#[derive(Clone, Copy)]
struct Options {
    seconds: u64,
    transcribe: bool,
    turns: bool,
    hop_ms: Option<u64>,
    cascade: bool,
    workers: Option<u64>,
    intra_threads: Option<u64>,
    batch_wait_ms: Option<u64>,
}

fn run(n: usize, options: Options) -> bool {
    let Options {
        seconds,
        transcribe,
        turns,
        hop_ms,
        cascade,
        workers,
        intra_threads,
        batch_wait_ms,
    } = options;
    let mut detector = format!("cascade = {cascade}\n");
    for (key, value) in [
        ("workers", workers),
        ("intra_threads", intra_threads),
        ("batch_wait_ms", batch_wait_ms),
    ] {
        if let Some(v) = value {
            detector += &format!("{key} = {v}\n");
        }
    }
    let extra = hop_ms.map_or(String::new(), |hop| {
        format!(
            "[windows]\nhop_ms = {hop}\n[verdict]\nsmoothing_windows = {}\n",
            (FUSED_SPEECH_MS / hop).max(1)
        )
    });
    let daemon = Daemon::start(transcribe, &detector, &extra);
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, rss0) = daemon.usage();
    let plans = plans(n, seconds, turns);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pid = daemon.child.id();
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                {
                    peak.fetch_max(kb * 1024, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let wall = Instant::now();
    let results: Vec<CallResult> = runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", daemon.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer = Bearer(format!("Bearer {TOKEN}").parse().unwrap());
        let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
        let tasks: Vec<_> = plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| {
                let client = CallGuardClient::with_interceptor(channel.clone(), bearer.clone());
                // Calls start spread over the first second, like real traffic.
                let start = t0 + Duration::from_millis((i as u64 * 997) % 1000);
                tokio::spawn(run_call(client, plan, start))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = wall.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let (cpu1, _) = daemon.usage();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);

    let mut latency_audio = Vec::new();
    let mut latency_wall = Vec::new();
    let (mut false_alerts, mut missed, mut genuine_ms) = (0u64, 0u64, 0u64);
    let (mut lost, mut rejected, mut dropped_windows, mut failed_windows, mut no_summary) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut slow_summary = 0u64;
    let (mut segments, mut transcribed, mut skipped) = (0u64, 0u64, 0u64);
    for r in &results {
        let audio_ms = seconds * 1000;
        let onset = r.onset_ms.unwrap_or(audio_ms);
        genuine_ms += onset;
        false_alerts += r.suspected.iter().filter(|(at, _)| *at < onset).count() as u64;
        if r.onset_ms.is_some() {
            match r.suspected.iter().find(|(at, _)| *at >= onset) {
                Some((at, wall)) => {
                    latency_audio.push((at - onset) as f64 / 1000.0);
                    latency_wall.push(wall.as_secs_f64());
                }
                None => {
                    missed += 1;
                    // Why: the fused score the clone reached (the genuine part stays below the
                    // threshold, or it would have raised a false alert).
                    if let Some(s) = &r.summary {
                        eprintln!(
                            "missed clone: {} (onset {:.1} s, {:.1} s of speech, {} windows) fused final {:.3}, peak {:.3}",
                            s.call_id,
                            onset as f64 / 1000.0,
                            s.speech_ms as f64 / 1000.0,
                            s.windows_scored,
                            s.p_spoof.unwrap_or(f32::NAN),
                            s.p_spoof_peak.unwrap_or(f32::NAN)
                        );
                    }
                }
            }
        }
        rejected += r.rejected;
        match &r.summary {
            Some(s) => {
                lost += s.frames_lost;
                dropped_windows += s.windows_dropped;
                failed_windows += s.windows_failed;
                segments += s.segments;
                transcribed += s.segments_transcribed;
                skipped += s.segments_skipped;
            }
            None => no_summary += 1,
        }
        if r.summary_delay.is_none_or(|d| d > Duration::from_secs(5)) {
            slow_summary += 1;
        }
    }
    latency_audio.sort_by(f64::total_cmp);
    latency_wall.sort_by(f64::total_cmp);
    let call_seconds = (n as u64 * seconds) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let sustained = lost == 0
        && rejected == 0
        && dropped_windows == 0
        && failed_windows == 0
        && no_summary == 0
        && slow_summary == 0;
    let report = json!({
        "calls": n,
        "transcribe": transcribe,
        "caller_talks_in_turns": turns,
        "cascade": cascade,
        "detector_settings": detector.trim_end().replace('\n', "; "),
        "hop_ms": hop_ms.unwrap_or(callguard::config::WindowConfig::default().hop_ms.into()),
        "speech_segments": { "cut": segments, "transcribed": transcribed, "skipped_over_budget": skipped },
        "seconds_per_call": seconds,
        "wall_s": elapsed,
        "sustained": sustained,
        "clone_calls": latency_audio.len() as u64 + missed,
        "missed_clones": missed,
        "alert_latency_audio_s": {
            "p50": percentile(&latency_audio, 0.5),
            "p95": percentile(&latency_audio, 0.95),
            "max": latency_audio.last(),
        },
        "alert_delivery_wall_s": {
            "p50": percentile(&latency_wall, 0.5),
            "p95": percentile(&latency_wall, 0.95),
            "max": latency_wall.last(),
        },
        "false_alerts": false_alerts,
        "false_alerts_per_genuine_call_hour": false_alerts as f64 / (genuine_ms as f64 / 3_600_000.0),
        "daemon_cpu_ms_per_call_second": (cpu1 - cpu0) * 1000.0 / call_seconds,
        "daemon_cpu_cores_used": (cpu1 - cpu0) / elapsed,
        "machine_cores": cores,
        "daemon_rss_idle_mb": rss0 as f64 / 1e6,
        "daemon_rss_peak_mb": peak as f64 / 1e6,
        "memory_per_call_kb": (peak.saturating_sub(rss0)) as f64 / 1e3 / n as f64,
        "frames_lost": lost,
        "frames_rejected": rejected,
        "windows_dropped": dropped_windows,
        "windows_failed": failed_windows,
        "calls_without_summary": no_summary,
        "calls_with_late_summary": slow_summary,
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    sustained
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Only `cargo bench` (which passes --bench) runs the harness; test runners that list or
    // run every target (`cargo nextest run --all-targets`, `cargo test --all-targets`) find
    // no tests in it.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let value = |name: &str| -> Option<u64> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let options = Options {
        seconds: value("--seconds").unwrap_or(40),
        transcribe: args.iter().any(|a| a == "--transcribe"),
        turns: args.iter().any(|a| a == "--turns"),
        hop_ms: value("--hop-ms"),
        cascade: !args.iter().any(|a| a == "--no-cascade"),
        workers: value("--workers"),
        intra_threads: value("--intra-threads"),
        batch_wait_ms: value("--batch-wait-ms"),
    };
    assert!(Path::new(env!("CARGO_BIN_EXE_callguard")).exists());
    if let Some(n) = value("--calls") {
        run(n as usize, options);
        return;
    }
    // Double until a run is not sustained, then bisect between the last good and first bad.
    let (mut good, mut bad) = (0usize, None::<usize>);
    let mut n = 8usize;
    while bad.is_none() && n <= 4_096 {
        if run(n, options) {
            good = n;
            n *= 2;
        } else {
            bad = Some(n);
        }
    }
    if let Some(mut hi) = bad {
        while hi - good > (good / 8).max(2) {
            let mid = (good + hi) / 2;
            if run(mid, options) {
                good = mid;
            } else {
                hi = mid;
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            json!({ "largest_sustained_calls": good, "per_core": good as f64 / cores as f64, "machine_cores": cores })
        );
    }
}
