//! The transcription worker pool. Speech segments of all calls wait in one queue bounded in
//! seconds of audio; workers take segments of suspected calls first; a live call's segment
//! that finds the queue full, or waits longer than `max_wait_s`, is skipped and counted, so
//! transcription degrades under load instead of delaying anything else. Text is redacted and
//! matched against the cue rules inside the worker, before it goes anywhere.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use super::{Cue, CueMatcher, Redacted, TranscribeError, WhisperModel, redact};
use crate::config::{TranscribeConfig, WhenFull};

const RATE: u64 = 16;

/// One caller speech segment (16 kHz), cut by the speech gate.
#[derive(Debug)]
pub struct SpeechSegment {
    pub call: u64,
    /// Position among the call's segments (0-based, no gaps).
    pub seq: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub samples: Vec<f32>,
}

/// A transcribed, redacted segment of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptSegment {
    pub seq: u64,
    /// Call audio time of the speech.
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: Redacted,
    pub cues: Vec<Cue>,
}

/// Why a segment has no text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skipped {
    /// The queue was full (live call).
    QueueFull,
    /// It waited longer than `max_wait_s` (live call).
    Stale,
    /// Whisper found no words.
    NoSpeech,
    /// Whisper failed on it.
    Failed,
    /// Whisper's decodings of it failed (see [`super::Transcription::Unintelligible`]).
    Unintelligible,
}

/// What became of one segment.
#[derive(Debug, Clone)]
pub struct SegmentResult {
    pub call: u64,
    pub seq: u64,
    pub outcome: Result<TranscriptSegment, Skipped>,
}

/// Counters over all calls.
#[derive(Debug, Default)]
pub struct TranscribeStats {
    pub segments_transcribed: AtomicU64,
    pub segments_no_speech: AtomicU64,
    pub segments_skipped_full: AtomicU64,
    pub segments_skipped_stale: AtomicU64,
    pub segments_failed: AtomicU64,
    pub segments_unintelligible: AtomicU64,
    /// Audio whisper ran over, and the worker time it took (real-time factor = busy / audio).
    pub audio_ms: AtomicU64,
    pub busy_ns: AtomicU64,
    /// Spans masked by redaction.
    pub masked: AtomicU64,
}

impl TranscribeStats {
    pub fn skipped(&self) -> u64 {
        self.segments_skipped_full.load(Ordering::Relaxed)
            + self.segments_skipped_stale.load(Ordering::Relaxed)
    }
}

struct Waiting {
    segment: SpeechSegment,
    since: Instant,
    /// Live audio: may be skipped when stale.
    live: bool,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Waiting>,
    samples: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    room: Condvar,
    max_samples: usize,
    max_wait: Duration,
    /// Calls whose segments go first (suspected ones).
    priority: Mutex<HashSet<u64>>,
    stats: TranscribeStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The priority calls (taken after the queue lock, never before it).
    fn priority(&self) -> MutexGuard<'_, HashSet<u64>> {
        self.priority.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Transcription workers sharing one Whisper model.
pub struct TranscriberPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl TranscriberPool {
    /// Starts `config.workers` threads; each segment's result goes to `results`.
    pub fn start<M>(
        model: &WhisperModel,
        config: &TranscribeConfig,
        results: Sender<M>,
    ) -> Result<Self, TranscribeError>
    where
        M: From<SegmentResult> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            max_samples: config.queue_s as usize * RATE as usize * 1000,
            max_wait: Duration::from_secs(config.max_wait_s.into()),
            priority: Mutex::new(HashSet::new()),
            stats: TranscribeStats::default(),
        });
        let cues = CueMatcher::new(&config.cues);
        let mut workers = Vec::new();
        for i in 0..config.workers.max(1) {
            // Sessions are made here so that a broken model fails start(), not a worker.
            let session = model.session(config.threads_per_worker)?;
            let (shared, results, cues) = (shared.clone(), results.clone(), cues.clone());
            let handle = std::thread::Builder::new()
                .name(format!("transcribe-{i}"))
                .spawn(move || work(&shared, session, &cues, &results))
                .map_err(|e| TranscribeError::Run(e.to_string()))?;
            workers.push(handle);
        }
        Ok(Self { shared, workers })
    }

    pub fn stats(&self) -> &TranscribeStats {
        &self.shared.stats
    }

    /// Seconds of speech waiting for a worker.
    pub fn queued_ms(&self) -> u64 {
        self.shared.lock().samples as u64 / RATE
    }

    /// A handle that calls use to queue their segments.
    pub fn submitter(&self) -> SegmentSubmitter {
        SegmentSubmitter {
            shared: self.shared.clone(),
        }
    }

    /// Transcribes what is queued, then stops the workers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        self.shared.room.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for TranscriberPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Queues segments into a [`TranscriberPool`]; cheap to clone.
#[derive(Clone)]
pub struct SegmentSubmitter {
    shared: Arc<Shared>,
}

impl SegmentSubmitter {
    /// Puts `call`'s segments ahead of the others (a suspected call), or back in line.
    pub fn set_priority(&self, call: u64, first: bool) {
        let mut p = self.shared.priority();
        if first {
            p.insert(call);
        } else {
            p.remove(&call);
        }
    }

    /// Queues a segment. Live audio (`DropNewest`) never waits: when the queue is full the
    /// oldest waiting segment of a call that is not a priority is skipped to make room for a
    /// priority call's segment, otherwise the new one is; the skipped one is returned.
    /// Recorded audio (`Block`) waits for room.
    pub fn submit(&self, segment: SpeechSegment, when_full: WhenFull) -> Option<SegmentResult> {
        let s = &self.shared;
        let len = segment.samples.len();
        let mut q = s.lock();
        let mut skipped = None;
        match when_full {
            WhenFull::Block => {
                while !q.items.is_empty() && q.samples + len > s.max_samples && !q.closed {
                    q = s.room.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
            WhenFull::DropNewest if q.samples + len > s.max_samples => {
                s.stats
                    .segments_skipped_full
                    .fetch_add(1, Ordering::Relaxed);
                let priority = s.priority();
                let evict = if priority.contains(&segment.call) {
                    q.items
                        .iter()
                        .position(|w| w.live && !priority.contains(&w.segment.call))
                } else {
                    None
                };
                drop(priority);
                let Some(i) = evict else {
                    return Some(SegmentResult {
                        call: segment.call,
                        seq: segment.seq,
                        outcome: Err(Skipped::QueueFull),
                    });
                };
                let old = q.items.remove(i).expect("index in range").segment;
                q.samples -= old.samples.len();
                skipped = Some(SegmentResult {
                    call: old.call,
                    seq: old.seq,
                    outcome: Err(Skipped::QueueFull),
                });
            }
            WhenFull::DropNewest => {}
        }
        q.samples += len;
        q.items.push_back(Waiting {
            segment,
            since: Instant::now(),
            live: when_full == WhenFull::DropNewest,
        });
        s.work.notify_one();
        skipped
    }
}

/// The next segment: the oldest of a priority call, else the oldest.
fn next(shared: &Shared) -> Option<Waiting> {
    let mut q = shared.lock();
    loop {
        if !q.items.is_empty() {
            let priority = shared.priority();
            let i = q
                .items
                .iter()
                .position(|w| priority.contains(&w.segment.call))
                .unwrap_or(0);
            drop(priority);
            let w = q.items.remove(i).expect("index in range");
            q.samples -= w.segment.samples.len();
            shared.room.notify_all();
            return Some(w);
        }
        if q.closed {
            return None;
        }
        q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
    }
}

fn work<M: From<SegmentResult>>(
    shared: &Shared,
    mut session: super::WhisperSession,
    cues: &CueMatcher,
    results: &Sender<M>,
) {
    let stats = &shared.stats;
    while let Some(w) = next(shared) {
        let SpeechSegment {
            call,
            seq,
            start_ms,
            end_ms,
            samples,
        } = w.segment;
        let outcome = if w.live && w.since.elapsed() > shared.max_wait {
            stats.segments_skipped_stale.fetch_add(1, Ordering::Relaxed);
            Err(Skipped::Stale)
        } else {
            let started = Instant::now();
            let text = session.transcribe(&samples);
            stats
                .busy_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            stats
                .audio_ms
                .fetch_add(samples.len() as u64 / RATE, Ordering::Relaxed);
            match text {
                Ok(super::Transcription::Unintelligible) => {
                    stats
                        .segments_unintelligible
                        .fetch_add(1, Ordering::Relaxed);
                    Err(Skipped::Unintelligible)
                }
                Ok(super::Transcription::Text(pieces)) if pieces.is_empty() => {
                    stats.segments_no_speech.fetch_add(1, Ordering::Relaxed);
                    Err(Skipped::NoSpeech)
                }
                Ok(super::Transcription::Text(pieces)) => {
                    let raw: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
                    // Redacted as one text, so a number split over whisper's pieces is caught.
                    let (text, masked) = redact(&raw.join(" "));
                    stats
                        .masked
                        .fetch_add(masked.total().into(), Ordering::Relaxed);
                    stats.segments_transcribed.fetch_add(1, Ordering::Relaxed);
                    Ok(TranscriptSegment {
                        seq,
                        start_ms,
                        end_ms,
                        cues: cues.find(&text, start_ms, end_ms),
                        text,
                    })
                }
                Err(e) => {
                    tracing::warn!(call, seq, error = %e, "Speech segment could not be transcribed.");
                    stats.segments_failed.fetch_add(1, Ordering::Relaxed);
                    Err(Skipped::Failed)
                }
            }
        };
        let result = SegmentResult { call, seq, outcome };
        if results.send(result.into()).is_err() {
            return;
        }
    }
}
