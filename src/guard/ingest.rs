//! The threads that run streamed calls: each owns a VAD session and the calls assigned to it,
//! and takes decoded audio from a bounded queue. Audio that does not fit is lost and counted;
//! opening and finishing a call wait for room instead, so no call is left open.
//!
//! A worker gathers commands for up to `GATHER` after the first arrives (at most `DRAIN`), then
//! gates the audio of all its calls together: each VAD run scores the next frame of up to
//! `BATCH` calls at once, which costs well under half of what running it call by call does.
//! Gathering delays the speech gate by at most `GATHER`, a small part of a detector window.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::detect::SileroVad;
use crate::pipeline::{Call, Engine, EngineError};

pub enum IngestCmd {
    Open(Box<Call>),
    Audio { key: u64, samples: Vec<f32> },
    Finish { key: u64 },
}

impl IngestCmd {
    fn key(&self) -> u64 {
        match self {
            Self::Open(call) => call.key(),
            Self::Audio { key, .. } | Self::Finish { key } => *key,
        }
    }
}

#[derive(Debug, Default)]
pub struct IngestStats {
    /// Audio chunks lost because a worker's queue was full.
    pub chunks_lost: AtomicU64,
    /// Chunks that the pipeline could not process (logged).
    pub chunks_failed: AtomicU64,
    /// One speech-detection run over a batch of calls' frames.
    pub vad_run: crate::ops::SecondsHistogram,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    #[error("the ingest queue is full")]
    Full,
    #[error("the ingest workers have stopped")]
    Stopped,
}

/// How long a worker gathers commands before it gates their audio.
const GATHER: Duration = Duration::from_millis(20);
/// Most commands a worker gathers before it gates their audio.
const DRAIN: usize = 512;
/// Most calls whose frames one VAD run scores.
const BATCH: usize = 64;

pub struct IngestPool {
    queues: Vec<Sender<IngestCmd>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<IngestStats>,
}

impl IngestPool {
    /// `workers` threads, each with a VAD session and a queue of `queue` commands.
    pub fn start(engine: &Engine, workers: usize, queue: usize) -> Result<Self, EngineError> {
        let stats = Arc::new(IngestStats::default());
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let mut vad = engine.vad()?;
            let (tx, rx) = bounded::<IngestCmd>(queue.max(2));
            let stats = stats.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ingest-{i}"))
                .spawn(move || {
                    let mut calls: HashMap<u64, Call> = HashMap::new();
                    let mut finishing = Vec::new();
                    while let Ok(first) = rx.recv() {
                        let until = Instant::now() + GATHER;
                        take(first, &mut calls, &mut finishing, &stats);
                        for _ in 1..DRAIN {
                            let Ok(cmd) = rx.recv_deadline(until) else {
                                break;
                            };
                            take(cmd, &mut calls, &mut finishing, &stats);
                        }
                        gate(&mut calls, &mut vad, &stats);
                        for key in finishing.drain(..) {
                            if let Some(call) = calls.remove(&key) {
                                finish(call, &mut vad);
                            }
                        }
                    }
                    for (_, call) in calls.drain() {
                        finish(call, &mut vad);
                    }
                })
                .map_err(|e| EngineError::Detect(crate::detect::DetectError::Run(e.to_string())))?;
            queues.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            queues,
            threads,
            stats,
        })
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    fn queue(&self, key: u64) -> &Sender<IngestCmd> {
        &self.queues[(key % self.queues.len() as u64) as usize]
    }

    /// Queues audio for a call without waiting.
    pub fn try_audio(&self, key: u64, samples: Vec<f32>) -> Result<(), IngestError> {
        match self.queue(key).try_send(IngestCmd::Audio { key, samples }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.chunks_lost.fetch_add(1, Ordering::Relaxed);
                Err(IngestError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(IngestError::Stopped),
        }
    }

    /// Queues an open or finish if there is room; hands it back if the queue is full.
    pub fn try_control(&self, cmd: IngestCmd) -> Result<(), Option<IngestCmd>> {
        match self.queue(cmd.key()).try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(back)) => Err(Some(back)),
            Err(TrySendError::Disconnected(_)) => Err(None),
        }
    }

    /// Finishes every call still open and stops the workers.
    pub fn shutdown(&mut self) {
        self.queues.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for IngestPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Carries out one command; audio is only taken in, and calls to finish are noted.
fn take(
    cmd: IngestCmd,
    calls: &mut HashMap<u64, Call>,
    finishing: &mut Vec<u64>,
    stats: &IngestStats,
) {
    match cmd {
        IngestCmd::Open(call) => {
            calls.insert(call.key(), *call);
        }
        IngestCmd::Audio { key, samples } => {
            if let Some(call) = calls.get_mut(&key)
                && let Err(e) = call.take(&samples)
            {
                stats.chunks_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(call = key, error = %e, "Audio chunk could not be processed.");
            }
        }
        IngestCmd::Finish { key } => finishing.push(key),
    }
}

/// Gates all audio taken in: rounds of one VAD run over the next frame of up to `BATCH` calls.
fn gate(calls: &mut HashMap<u64, Call>, vad: &mut SileroVad, stats: &IngestStats) {
    loop {
        let mut staged: Vec<_> = calls
            .values_mut()
            .filter_map(Call::stage)
            .take(BATCH)
            .collect();
        if staged.is_empty() {
            return;
        }
        let started = Instant::now();
        let outcome = vad.run(&mut staged);
        stats.vad_run.observe(started.elapsed());
        if let Err(e) = outcome {
            // Those frames count as silence; the calls go on.
            stats.chunks_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(frames = staged.len(), error = %e, "Speech detection failed.");
        }
        for call in calls.values_mut() {
            call.gate_staged();
        }
    }
}

fn finish(call: Call, vad: &mut SileroVad) {
    let key = call.key();
    if let Err(e) = call.finish(vad) {
        tracing::warn!(call = key, error = %e, "Call's last audio could not be processed.");
    }
}
