//! Bounded queues with an explicit full-queue policy: live calls drop the newest window when the
//! detector is behind, count it, and still account for every window when the call ends.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use callguard::config::WhenFull;
use callguard::detect::{DetectorPool, ModelCard, ScoredWindow, WindowJob};

fn job(seq: u64) -> WindowJob {
    WindowJob {
        call: 1,
        seq,
        start_ms: seq * 500,
        end_ms: seq * 500 + 1000,
        samples: vec![0.01; 16_000],
    }
}

#[test]
fn a_full_detector_queue_drops_newest_and_counts() {
    let card =
        Arc::new(ModelCard::load(&common::root().join(".deps/test-models/loudness.onnx")).unwrap());
    // Results go to a rendezvous channel nobody reads yet: the one worker blocks after its first
    // window, so the queue (one slot) fills deterministically.
    let (results_tx, results_rx) = crossbeam_channel::bounded::<ScoredWindow>(0);
    let pool = DetectorPool::start(card, None, 1, 1, (1, Duration::ZERO), 1, results_tx).unwrap();
    let submit = pool.submitter();
    submit.submit(job(0), WhenFull::DropNewest).unwrap();
    // Wait until the worker holds window 0 (the queue is empty again), then fill the one slot.
    while pool.queue_depth() > 0 {
        std::thread::yield_now();
    }
    submit.submit(job(1), WhenFull::DropNewest).unwrap();
    let mut dropped = Vec::new();
    for seq in 2..10 {
        if let Err(j) = submit.submit(job(seq), WhenFull::DropNewest) {
            dropped.push(j.seq);
        }
    }
    assert_eq!(
        dropped,
        (2..10).collect::<Vec<_>>(),
        "every window past the bound is handed back"
    );
    assert_eq!(pool.stats().windows_dropped_full.load(Ordering::Relaxed), 8);
    // The queued windows are still scored once the consumer reads.
    let scored: Vec<u64> = (0..2).map(|_| results_rx.recv().unwrap().seq).collect();
    assert_eq!(scored, [0, 1]);
    drop(submit);
    drop(results_rx);
    pool.shutdown();
}

#[test]
fn every_window_of_a_live_call_is_accounted_for() {
    // One worker and a one-window queue shared by eight calls pushed faster than real time.
    let mut config = common::loudness_config();
    config.detector.workers = 1;
    config.detector.queue_windows = 1;
    config.detector.max_batch = 1;
    let engine = callguard::pipeline::Engine::start(&config).unwrap();
    let (speech, rate) = common::read_wav(&common::audio("genuine_3.wav"));
    let format = callguard::audio::SourceFormat {
        sample_rate: rate,
        channels: 1,
    };
    common::push_live_calls(&engine, 8, &speech, format);
    let mut ended = 0;
    let mut dropped = 0;
    while ended < 8 {
        if let callguard::pipeline::EngineEvent::Ended(s) = engine.events().recv().unwrap() {
            ended += 1;
            assert!(s.windows >= 40, "{}: {} windows", s.call_id, s.windows);
            assert_eq!(
                s.windows,
                s.windows_scored + s.windows_dropped + s.windows_failed,
                "{s:?}"
            );
            assert_eq!(s.windows_failed, 0);
            dropped += s.windows_dropped;
        }
    }
    let stats = engine.pool_stats().unwrap();
    assert_eq!(stats.windows_dropped_full.load(Ordering::Relaxed), dropped);
}

#[test]
fn a_worker_waits_up_to_batch_wait_for_a_fuller_batch() {
    let card =
        Arc::new(ModelCard::load(&common::root().join(".deps/test-models/loudness.onnx")).unwrap());
    let (results_tx, results_rx) = crossbeam_channel::unbounded::<ScoredWindow>();
    // A wait far longer than the windows' spacing: the four windows make one batch.
    let pool = DetectorPool::start(
        card,
        None,
        1,
        1,
        (16, Duration::from_secs(2)),
        16,
        results_tx,
    )
    .unwrap();
    let submit = pool.submitter();
    for seq in 0..4 {
        submit.submit(job(seq), WhenFull::Block).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let seqs: Vec<u64> = (0..4).map(|_| results_rx.recv().unwrap().seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    assert_eq!(pool.stats().batches.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats().windows_scored.load(Ordering::Relaxed), 4);
    drop(submit);
    pool.shutdown();
}
