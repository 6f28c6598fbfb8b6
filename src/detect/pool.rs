//! The detector worker pool: one ONNX session per worker thread, windows of many calls batched
//! into one model run, a bounded job queue with an explicit full-queue policy, and counters for
//! everything scored, batched, dropped or failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::cascade::{Scorer, Stage, StagedScore};
use super::speaker::{SpeakerCard, SpeakerEncoder};
use super::{DetectError, ModelCard};
use crate::config::WhenFull;

/// Internal key of a call inside one engine.
pub type CallKey = u64;

/// One window of one call, waiting to be scored.
#[derive(Debug)]
pub struct WindowJob {
    pub call: CallKey,
    /// Position of the window among the call's windows (0-based, no gaps).
    pub seq: u64,
    /// Call audio time of the window's first and last speech sample.
    pub start_ms: u64,
    pub end_ms: u64,
    pub samples: Vec<f32>,
}

/// Window sample buffers handed back by the detector workers once scored, for the streams to
/// fill again: a window costs no allocation once the pool has as many buffers as windows in
/// flight. Bounded; a buffer with nowhere to go is freed, and one made afresh is counted.
#[derive(Clone, Debug)]
pub struct WindowBuffers {
    back: Sender<Vec<f32>>,
    free: Receiver<Vec<f32>>,
    made: Arc<AtomicU64>,
}

impl WindowBuffers {
    /// Keeps at most `keep` buffers for reuse.
    pub fn new(keep: usize) -> Self {
        let (back, free) = bounded(keep.max(1));
        Self {
            back,
            free,
            made: Arc::default(),
        }
    }

    /// An empty buffer of at least `samples` capacity: a returned one, or a new one.
    pub fn take(&self, samples: usize) -> Vec<f32> {
        match self.free.try_recv() {
            Ok(mut buffer) => {
                buffer.reserve(samples);
                buffer
            }
            Err(_) => {
                self.made.fetch_add(1, Ordering::Relaxed);
                Vec::with_capacity(samples)
            }
        }
    }

    /// Hands a buffer back for reuse (freed when enough are kept already).
    pub fn give(&self, mut buffer: Vec<f32>) {
        buffer.clear();
        let _ = self.back.try_send(buffer);
    }

    /// Buffers allocated because none was free.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

impl Default for WindowBuffers {
    /// A small private set, for a stream outside an engine.
    fn default() -> Self {
        Self::new(4)
    }
}

/// The detector's answer for one window.
#[derive(Debug, Clone)]
pub struct ScoredWindow {
    pub call: CallKey,
    pub seq: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Calibrated spoof probability, or why the window could not be scored.
    pub p_spoof: Result<f32, String>,
    /// Which model of a cascade gave the score (`Full` without a cascade).
    pub stage: Stage,
    /// The voice embedding of the window (unit length), with a speaker encoder configured.
    pub embedding: Option<Box<[f32]>>,
}

#[derive(Debug, Default)]
pub struct PoolStats {
    pub windows_scored: AtomicU64,
    pub windows_failed: AtomicU64,
    /// Windows dropped because the queue was full (the intentional, live-call policy).
    pub windows_dropped_full: AtomicU64,
    /// Windows a cascade's first stage cleared, so the full model never ran on them.
    pub windows_cleared_first_stage: AtomicU64,
    pub batches: AtomicU64,
    pub inference_ns: AtomicU64,
    /// Inference time per window (a batch's time shared by its windows).
    pub window_time: crate::ops::SecondsHistogram,
}

pub struct DetectorPool {
    jobs: Option<Sender<WindowJob>>,
    buffers: WindowBuffers,
    workers: Vec<JoinHandle<()>>,
    stats: Arc<PoolStats>,
    card: Arc<ModelCard>,
}

impl DetectorPool {
    /// Starts `workers` threads, each with its own session (and its own speaker encoder's, when
    /// `speaker` is given); results go to `results`.
    pub fn start<M>(
        card: Arc<ModelCard>,
        speaker: Option<&SpeakerCard>,
        workers: usize,
        intra_threads: usize,
        (max_batch, batch_wait): (usize, Duration),
        queue_windows: usize,
        results: Sender<M>,
    ) -> Result<Self, DetectError>
    where
        M: From<ScoredWindow> + Send + 'static,
    {
        let (jobs_tx, jobs_rx) = bounded::<WindowJob>(queue_windows.max(1));
        // Every window that can be in flight at once: queued, in a batch, or being filled.
        let buffers = WindowBuffers::new(queue_windows + workers.max(1) * max_batch.max(1) + 16);
        let stats = Arc::new(PoolStats::default());
        // Sessions are created here so that a broken model fails start(), not a worker.
        let detectors = (0..workers.max(1))
            .map(|_| {
                let encoder = speaker
                    .map(|s| SpeakerEncoder::new(s, intra_threads))
                    .transpose()?;
                Ok((Scorer::new(&card, intra_threads)?, encoder))
            })
            .collect::<Result<Vec<_>, DetectError>>()?;
        let workers = detectors
            .into_iter()
            .enumerate()
            .map(|(i, detector)| {
                let (rx, tx, stats) = (jobs_rx.clone(), results.clone(), stats.clone());
                let buffers = buffers.clone();
                std::thread::Builder::new()
                    .name(format!("detector-{i}"))
                    .spawn(move || {
                        worker(
                            detector,
                            rx,
                            tx,
                            stats,
                            buffers,
                            (max_batch.max(1), batch_wait),
                        )
                    })
                    .map_err(|e| DetectError::Load {
                        path: card.model_path.clone(),
                        message: format!("cannot start worker thread: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            jobs: Some(jobs_tx),
            buffers,
            workers,
            stats,
            card,
        })
    }

    pub fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.stats
    }

    /// The window buffers the workers hand back, for the streams that feed this pool.
    pub fn buffers(&self) -> &WindowBuffers {
        &self.buffers
    }

    /// A handle for submitting windows from stream threads.
    pub fn submitter(&self) -> WindowSubmitter {
        WindowSubmitter {
            jobs: self.jobs.clone().expect("pool is running"),
            stats: self.stats.clone(),
        }
    }

    /// Windows waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.jobs.as_ref().map_or(0, |j| j.len())
    }

    /// Scores what is queued, then stops the workers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for DetectorPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Cloneable sending side of the pool's queue.
#[derive(Clone)]
pub struct WindowSubmitter {
    jobs: Sender<WindowJob>,
    stats: Arc<PoolStats>,
}

impl WindowSubmitter {
    /// Queues a window under `policy`; returns it back if it was dropped (full or stopped).
    pub fn submit(&self, job: WindowJob, policy: WhenFull) -> Result<(), WindowJob> {
        match policy {
            WhenFull::Block => self.jobs.send(job).map_err(|e| e.0),
            WhenFull::DropNewest => match self.jobs.try_send(job) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(job)) => {
                    self.stats
                        .windows_dropped_full
                        .fetch_add(1, Ordering::Relaxed);
                    Err(job)
                }
                Err(TrySendError::Disconnected(job)) => Err(job),
            },
        }
    }
}

fn worker<M: From<ScoredWindow>>(
    (mut scorer, mut encoder): (Scorer, Option<SpeakerEncoder>),
    jobs: Receiver<WindowJob>,
    results: Sender<M>,
    stats: Arc<PoolStats>,
    buffers: WindowBuffers,
    (max_batch, batch_wait): (usize, Duration),
) {
    let mut batch: Vec<WindowJob> = Vec::with_capacity(max_batch);
    let mut scores: Vec<StagedScore> = Vec::with_capacity(max_batch);
    let mut embeddings = Vec::new();
    while let Ok(first) = jobs.recv() {
        batch.clear();
        batch.push(first);
        // Whatever is queued joins the batch; then, up to `batch_wait` after the first window,
        // windows still arriving do (a fuller batch costs less per window).
        let deadline = Instant::now() + batch_wait;
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) if batch_wait.is_zero() => break,
                Err(_) => match jobs.recv_deadline(deadline) {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                },
            }
        }
        let started = Instant::now();
        let outcome = scorer.score(
            batch.iter().map(|j| (j.seq, j.samples.as_slice())),
            &mut scores,
        );
        // The voice of each window; a failure costs the embeddings, never the scores.
        let dim = encoder.as_ref().map_or(0, SpeakerEncoder::dim);
        let embedded = encoder.as_mut().is_some_and(|e| {
            e.embed(batch.iter().map(|j| j.samples.as_slice()), &mut embeddings)
                .inspect_err(
                    |err| tracing::warn!(error = %err, "Speaker encoder failed on a batch."),
                )
                .is_ok()
        });
        let took = started.elapsed();
        stats
            .inference_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        let per_window = took / batch.len() as u32;
        for _ in 0..batch.len() {
            stats.window_time.observe(per_window);
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let counter = if outcome.is_ok() {
            &stats.windows_scored
        } else {
            &stats.windows_failed
        };
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if outcome.is_ok() {
            let cleared = scores.iter().filter(|s| s.stage == Stage::First).count();
            stats
                .windows_cleared_first_stage
                .fetch_add(cleared as u64, Ordering::Relaxed);
        }
        for (i, job) in batch.drain(..).enumerate() {
            let (p_spoof, stage) = match &outcome {
                Ok(()) => (Ok(scores[i].p_spoof), scores[i].stage),
                Err(e) => (Err(e.to_string()), Stage::Full),
            };
            let WindowJob {
                call,
                seq,
                start_ms,
                end_ms,
                samples,
            } = job;
            buffers.give(samples);
            let scored = ScoredWindow {
                call,
                seq,
                start_ms,
                end_ms,
                p_spoof,
                stage,
                embedding: embedded.then(|| embeddings[i * dim..(i + 1) * dim].into()),
            };
            if results.send(scored.into()).is_err() {
                return;
            }
        }
    }
}
