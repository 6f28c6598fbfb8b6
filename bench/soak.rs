//! Soak: `callguard run` holding a steady number of calls for a long time while calls start and
//! end all the time and alert subscribers come and go. Samples the daemon's resident memory,
//! open file descriptors, threads, and the alert log's database and write-ahead-log sizes, and
//! checks after a warm-up that they stay within stated bounds, that no frame was lost and no
//! window dropped, that every call's summary arrived, and that a subscriber connected from the
//! start saw every alert the log holds.
//!
//!   cargo bench --bench soak -- --minutes 30 --calls 48 --out bench    # the documented soak
//!   cargo bench --profile dev --bench soak -- --minutes 2 --calls 6 --check   # CI (scripts/test.sh)
//!
//! `--subscribers N` (default 4) subscribers connect, listen for 5-20 s and leave, over and over;
//! `--sample-s S` (default 10) between samples; `--out DIR` writes `soak.png` and `soak.json`
//! there (default `target/soak`); `--check` exits 1 when a bound is broken. Run without
//! `--bench` (as test runners do) it does nothing.
//!
//! Bounds, after the first quarter of the run (warm-up): resident memory at most 10 % + 16 MB
//! over its warm-up peak; file descriptors at most 8 and threads at most 4 over theirs; the
//! write-ahead log at most 64 MB at any time; the database at most 64 KB per call and alert it
//! holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callguard::grpc::proto as pb;
use callguard::grpc::proto::call_guard_client::CallGuardClient;
use serde_json::json;
use tonic::transport::Channel;

#[path = "harness.rs"]
mod harness;
use harness::*;

#[derive(Clone, Copy, Debug)]
struct Sample {
    t_s: f64,
    rss_mb: f64,
    fds: u64,
    threads: u64,
    db_mb: f64,
    wal_mb: f64,
}

fn sample(pid: u32, db: &std::path::Path, t_s: f64) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let size = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / 1e6
    };
    Sample {
        t_s,
        rss_mb: field("VmRSS:") as f64 / 1e3,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        threads: field("Threads:"),
        db_mb: size(""),
        wal_mb: size("-wal"),
    }
}

fn client(
    channel: &Channel,
) -> CallGuardClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>> {
    CallGuardClient::with_interceptor(
        channel.clone(),
        Bearer(format!("Bearer {TOKEN}").parse().unwrap()),
    )
}

/// A small deterministic generator (the same run on every machine).
fn next(state: &mut u64, lo: u64, hi: u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    lo + (*state >> 33) % (hi - lo + 1)
}

#[derive(Default)]
struct Totals {
    calls: AtomicU64,
    without_summary: AtomicU64,
    frames_lost: AtomicU64,
    frames_rejected: AtomicU64,
    windows_dropped: AtomicU64,
    call_seconds: AtomicU64,
    subscriptions: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let value = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num =
        |name: &str, default: u64| value(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let minutes = value("--minutes")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(30.0);
    let calls = num("--calls", 48) as usize;
    let subscribers = num("--subscribers", 4) as usize;
    let sample_s = num("--sample-s", 10).max(1);
    let check = args.iter().any(|a| a == "--check");
    let out = value("--out").map_or_else(|| root().join("target/soak"), Into::into);
    std::fs::create_dir_all(&out).unwrap();
    let duration = Duration::from_secs_f64(minutes * 60.0);

    let daemon = Daemon::start(false, "cascade = true", "");
    let db = daemon.dir.path().join("alerts.db");
    let pid = daemon.child.id();
    // Calls of 8 to 30 s, genuine and switching to a clone, the caller talking in turns.
    let plans: Vec<Plan> = [8u64, 14, 22, 30]
        .iter()
        .flat_map(|s| plans(6, *s, true))
        .collect();
    let plans = Arc::new(plans);
    let totals = Arc::new(Totals::default());
    let done = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let started = Instant::now();
    let sampler = {
        let (done, samples, db) = (done.clone(), samples.clone(), db.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let s = sample(pid, &db, started.elapsed().as_secs_f64());
                samples.lock().unwrap().push(s);
                let until = Instant::now() + Duration::from_secs(sample_s);
                while Instant::now() < until && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (audited, logged) = runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", daemon.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        // The auditor: connected from the first alert to the last.
        let mut auditor = client(&channel)
            .stream_alerts(pb::AlertSubscription {
                after_sequence: Some(0),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let heard = Arc::new(Mutex::new(Vec::<u64>::new()));
        let audit = {
            let heard = heard.clone();
            tokio::spawn(async move {
                while let Ok(Some(e)) = auditor.message().await {
                    if let Some(pb::alert_event::Event::Alert(a)) = e.event {
                        heard.lock().unwrap().push(a.sequence);
                    }
                }
            })
        };
        let deadline = tokio::time::Instant::now() + duration;
        let mut slots = Vec::new();
        for slot in 0..calls {
            let (channel, plans, totals) = (channel.clone(), plans.clone(), totals.clone());
            slots.push(tokio::spawn(async move {
                let mut rng = slot as u64 + 1;
                // Slots start spread over the first 5 s.
                tokio::time::sleep(Duration::from_millis(slot as u64 * 5_000 / calls as u64)).await;
                let mut n = 0;
                while tokio::time::Instant::now() < deadline {
                    let p = &plans[next(&mut rng, 0, plans.len() as u64 - 1) as usize];
                    let plan = Plan {
                        id: format!("{}-s{slot}-{n}", p.id),
                        frames: p.frames.clone(),
                        onset_ms: p.onset_ms,
                    };
                    let seconds = plan.frames.len() as u64 * FRAME_MS / 1000;
                    let r = run_call(client(&channel), plan, tokio::time::Instant::now()).await;
                    totals.calls.fetch_add(1, Ordering::Relaxed);
                    totals.call_seconds.fetch_add(seconds, Ordering::Relaxed);
                    totals
                        .frames_rejected
                        .fetch_add(r.rejected, Ordering::Relaxed);
                    match r.summary {
                        Some(s) => {
                            totals
                                .frames_lost
                                .fetch_add(s.frames_lost, Ordering::Relaxed);
                            totals
                                .windows_dropped
                                .fetch_add(s.windows_dropped, Ordering::Relaxed);
                        }
                        None => {
                            totals.without_summary.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                    // A short gap between calls on the line.
                    tokio::time::sleep(Duration::from_millis(next(&mut rng, 100, 2_000))).await;
                }
            }));
        }
        for sub in 0..subscribers {
            let (channel, totals) = (channel.clone(), totals.clone());
            slots.push(tokio::spawn(async move {
                let mut rng = 1_000 + sub as u64;
                while tokio::time::Instant::now() < deadline {
                    if let Ok(r) = client(&channel)
                        .stream_alerts(pb::AlertSubscription::default())
                        .await
                    {
                        totals.subscriptions.fetch_add(1, Ordering::Relaxed);
                        let mut stream = r.into_inner();
                        let listen = Duration::from_secs(next(&mut rng, 5, 20));
                        let _ = tokio::time::timeout(listen, async {
                            while let Ok(Some(_)) = stream.message().await {}
                        })
                        .await;
                    }
                    tokio::time::sleep(Duration::from_millis(next(&mut rng, 1_000, 3_000))).await;
                }
            }));
        }
        for s in slots {
            s.await.unwrap();
        }
        // Every alert the log holds, read back from the start.
        let mut replay = client(&channel)
            .stream_alerts(pb::AlertSubscription {
                after_sequence: Some(0),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut logged = Vec::new();
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_secs(3), replay.message()).await
        {
            if let Some(pb::alert_event::Event::Alert(a)) = e.event {
                logged.push(a.sequence);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        audit.abort();
        let heard = heard.lock().unwrap().clone();
        (heard, logged)
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap().clone();
    let last = sample(pid, &db, started.elapsed().as_secs_f64());

    // Bounds after the warm-up (the first quarter of the samples).
    let warm = (samples.len() / 4).max(1).min(samples.len());
    let (early, steady) = samples.split_at(warm);
    let peak = |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).fold(0.0f64, f64::max);
    let rss_bound = peak(early, |s| s.rss_mb) * 1.10 + 16.0;
    let fds_bound = peak(early, |s| s.fds as f64) + 8.0;
    let threads_bound = peak(early, |s| s.threads as f64) + 4.0;
    let records = totals.calls.load(Ordering::Relaxed) + logged.len() as u64;
    let db_bound = 0.064 * records.max(1) as f64 + 1.0;
    let mut broken = Vec::new();
    let mut bound = |what: &str, value: f64, limit: f64| {
        if value > limit {
            broken.push(format!("{what} {value:.1} over {limit:.1}"));
        }
    };
    bound("resident MB", peak(steady, |s| s.rss_mb), rss_bound);
    bound(
        "file descriptors",
        peak(steady, |s| s.fds as f64),
        fds_bound,
    );
    bound("threads", peak(steady, |s| s.threads as f64), threads_bound);
    bound("WAL MB", peak(&samples, |s| s.wal_mb), 64.0);
    bound("database MB", last.db_mb, db_bound);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    bound("frames lost", load(&totals.frames_lost) as f64, 0.0);
    bound("frames rejected", load(&totals.frames_rejected) as f64, 0.0);
    bound("windows dropped", load(&totals.windows_dropped) as f64, 0.0);
    bound(
        "calls without summary",
        load(&totals.without_summary) as f64,
        0.0,
    );
    let audited_set: std::collections::HashSet<u64> = audited.iter().copied().collect();
    let unheard = logged.iter().filter(|s| !audited_set.contains(s)).count();
    bound("alerts the auditor missed", unheard as f64, 0.0);
    bound(
        "alerts heard twice",
        (audited.len() - audited_set.len()) as f64,
        0.0,
    );

    let panels = vec![
        (
            "resident memory (MB)".to_owned(),
            samples.iter().map(|s| (s.t_s / 60.0, s.rss_mb)).collect(),
        ),
        (
            "open file descriptors".to_owned(),
            samples
                .iter()
                .map(|s| (s.t_s / 60.0, s.fds as f64))
                .collect(),
        ),
        (
            "threads".to_owned(),
            samples
                .iter()
                .map(|s| (s.t_s / 60.0, s.threads as f64))
                .collect(),
        ),
        (
            "alert log database (MB)".to_owned(),
            samples.iter().map(|s| (s.t_s / 60.0, s.db_mb)).collect(),
        ),
        (
            "write-ahead log (MB)".to_owned(),
            samples.iter().map(|s| (s.t_s / 60.0, s.wal_mb)).collect(),
        ),
    ];
    let png = out.join("soak.png");
    let title = format!(
        "callguard soak: {calls} calls at once, {:.0} min, {} calls",
        minutes,
        load(&totals.calls)
    );
    if let Err(e) = callguard::eval::plot_panels(&png, &title, "minutes", &panels) {
        eprintln!("soak: no plot: {e}");
    }
    let report = json!({
        "minutes": minutes,
        "calls_at_once": calls,
        "calls": load(&totals.calls),
        "call_seconds": load(&totals.call_seconds),
        "subscriptions": load(&totals.subscriptions),
        "alerts_logged": logged.len(),
        "alerts_heard_by_auditor": audited.len(),
        "frames_lost": load(&totals.frames_lost),
        "frames_rejected": load(&totals.frames_rejected),
        "windows_dropped": load(&totals.windows_dropped),
        "calls_without_summary": load(&totals.without_summary),
        "warmup_samples": warm,
        "samples": samples.len(),
        "rss_mb": { "warmup_peak": peak(early, |s| s.rss_mb), "steady_peak": peak(steady, |s| s.rss_mb), "bound": rss_bound, "end": last.rss_mb },
        "fds": { "warmup_peak": peak(early, |s| s.fds as f64), "steady_peak": peak(steady, |s| s.fds as f64), "bound": fds_bound, "end": last.fds },
        "threads": { "warmup_peak": peak(early, |s| s.threads as f64), "steady_peak": peak(steady, |s| s.threads as f64), "bound": threads_bound, "end": last.threads },
        "wal_mb_peak": peak(&samples, |s| s.wal_mb),
        "db_mb_end": last.db_mb,
        "db_kb_per_record": last.db_mb * 1e3 / records.max(1) as f64,
        "broken": broken,
        "plot": png.display().to_string(),
    });
    std::fs::write(out.join("soak.json"), format!("{report:#}\n")).unwrap();
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    if check && !broken.is_empty() {
        eprintln!("soak: bounds broken: {}", broken.join("; "));
        std::process::exit(1);
    }
}
