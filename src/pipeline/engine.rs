//! Wiring: calls feed windows to the shared detector pool; one fusion thread puts each call's
//! scores back in order and turns them into timeline updates, alerts and a final summary.
//!
//! ```text
//! Call::push ──windows──► DetectorPool (bounded, N workers) ──scores──┐
//!      └──────────── opened / dropped / closed ─────────────────────┴─► fusion thread ──► events
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use serde::Serialize;

use super::stream::{CallStream, SegmentLimits, StreamError, StreamOutput, StreamStats};
use crate::audio::{AudioSource, ChannelPick, Read, SourceFormat};
use crate::config::{Config, OnMissing, TranscribeConfig, VoiceConfig, WhenFull};
use crate::detect::pool::WindowSubmitter;
use crate::detect::{
    DetectError, DetectorPool, ModelCard, PoolStats, ScoredWindow, SileroVad, SpeakerCard, VadState,
};
use crate::transcribe::{
    CallTranscript, SegmentCounts, SegmentResult, SegmentSubmitter, TranscribeError,
    TranscribeStats, TranscriberPool, TranscriptSegment, WhisperModel,
};
use crate::verdict::voice::{VoiceTracker, Voiceprint};
use crate::verdict::{
    Alert, AlertKind, CallEvidence, CallState, ChannelClass, EnterThreshold, FusionParams,
    WindowScore,
};

/// Fusion inputs and engine events waiting at most this many deep.
const FUSION_QUEUE: usize = 8_192;
const EVENT_QUEUE: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("model {model} runs at {rate} Hz; the pipeline needs 16000 Hz")]
    ModelRate { model: String, rate: u32 },
    #[error(transparent)]
    Transcribe(#[from] TranscribeError),
    #[error("the engine has shut down")]
    Stopped,
}

/// How to open a call.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub id: String,
    pub format: SourceFormat,
    pub pick: ChannelPick,
    /// The channel the call's audio came through (the adapter decides, usually with
    /// [`Engine::classify`]); it picks the call's enter threshold.
    pub channel_class: ChannelClass,
    pub when_full: WhenFull,
    /// Most windows kept on the call's timeline.
    pub timeline_limit: usize,
    /// Recorded audio (a file): every speech segment is transcribed, however long it takes.
    /// Live audio: transcription never holds the call up; over budget, segments are skipped.
    pub recorded: bool,
    /// The call's tenant's allowed synthetic voices (needs `[voice] speaker_model`).
    pub allowed_voices: Arc<[Voiceprint]>,
    /// The protected person the call claims to be (`callguard enroll`), if any.
    pub claimed: Option<Arc<Voiceprint>>,
}

/// What the engine reports, in order per call.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// A window was scored and fused.
    Window {
        call: u64,
        call_id: Arc<str>,
        score: WindowScore,
    },
    /// The call changed state.
    Alert { call: u64, alert: Alert },
    /// The caller said something (redacted text, with the cues it raised).
    Transcript {
        call: u64,
        call_id: Arc<str>,
        segment: TranscriptSegment,
    },
    /// The call ended and every window it produced has been accounted for.
    Ended(Box<CallSummary>),
}

/// Everything known about a call when it ends.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    #[serde(skip)]
    pub key: u64,
    pub call_id: String,
    /// The channel class the call was screened as, and its enter threshold.
    pub channel_class: ChannelClass,
    pub enter_threshold: f32,
    pub verdict: CallState,
    /// Fused spoof probability at the end of the call (null when no speech was scored).
    pub p_spoof: Option<f32>,
    /// Highest fused spoof probability during the call.
    pub p_spoof_peak: Option<f32>,
    pub first_alert_ms: Option<u64>,
    pub first_verdict_ms: Option<u64>,
    pub audio_ms: u64,
    pub speech_ms: u64,
    /// Audio below `speech.energy_floor_dbfs`, taken as silence without running the VAD.
    pub quiet_ms: u64,
    /// Windows the call produced; each was scored, dropped (queue full) or failed.
    pub windows: u64,
    pub windows_scored: u64,
    pub windows_dropped: u64,
    pub windows_failed: u64,
    pub non_finite_samples: u64,
    pub alerts: Vec<Alert>,
    pub timeline: Vec<WindowScore>,
    pub timeline_truncated: u64,
    pub model: String,
    /// What the caller said (redacted), oldest first; empty without transcription.
    pub transcript: Vec<TranscriptSegment>,
    /// Older segments let go because of `transcribe.transcript_limit`.
    pub transcript_truncated: u64,
    /// Speech segments cut for transcription and what became of them.
    pub segments: u64,
    pub segment_counts: SegmentCounts,
    /// With a speaker encoder: the call's voice (the mean of its windows' embeddings, unit
    /// length) over `voice_windows` windows; what `callguard enroll` and `allow-voice` keep.
    /// Not printed (`scan --json`): a voiceprint is biometric data.
    #[serde(skip)]
    pub voice_embedding: Option<Vec<f32>>,
    pub voice_windows: u64,
    /// Windows set aside as each allowed synthetic voice (`callguard allow-voice`).
    pub allowed_voice_windows: BTreeMap<String, u64>,
}

enum FusionInput {
    Opened {
        key: u64,
        id: Arc<str>,
        params: FusionParams,
        allowed: Arc<[Voiceprint]>,
        claimed: Option<Arc<Voiceprint>>,
    },
    Scored(ScoredWindow),
    Dropped {
        key: u64,
        seq: u64,
    },
    Closed {
        key: u64,
        windows: u64,
        stats: StreamStats,
    },
    Transcribed(SegmentResult),
    /// The call now claims this protected identity (`ClaimIdentity` mid-call).
    Claim {
        key: u64,
        voice: Arc<Voiceprint>,
    },
}

impl From<SegmentResult> for FusionInput {
    fn from(r: SegmentResult) -> Self {
        Self::Transcribed(r)
    }
}

impl From<ScoredWindow> for FusionInput {
    fn from(w: ScoredWindow) -> Self {
        Self::Scored(w)
    }
}

/// The running detection engine: detector pool, fusion thread and event stream.
pub struct Engine {
    config: Config,
    card: Arc<ModelCard>,
    pool: Option<DetectorPool>,
    submitter: Option<WindowSubmitter>,
    fusion_tx: Option<Sender<FusionInput>>,
    fusion: Option<JoinHandle<()>>,
    transcriber: Option<TranscriberPool>,
    segments: Option<SegmentSubmitter>,
    events: Receiver<EngineEvent>,
    next_key: AtomicU64,
}

impl Engine {
    /// Loads the model named in `config` and starts the workers.
    pub fn start(config: &Config) -> Result<Self, EngineError> {
        let mut card = ModelCard::load(&config.detector.model)?;
        if !config.detector.cascade {
            card.first_stage = None;
        }
        let card = Arc::new(card);
        if let (Some(first), Some(cascade)) = (&card.first_stage, &card.cascade) {
            tracing::info!(
                first_stage = first.id(),
                escalate_logit = cascade.escalate_logit,
                sample_every = cascade.sample_every,
                "Detector cascade on."
            );
        }
        if card.input.sample_rate != super::PIPELINE_RATE {
            return Err(EngineError::ModelRate {
                model: card.id(),
                rate: card.input.sample_rate,
            });
        }
        for class in ChannelClass::ALL {
            let t = crate::verdict::enter_threshold(&config.verdict, &card, class);
            tracing::info!(channel_class = %class, enter_threshold = t.p_spoof, source = t.source.as_str(), "Enter threshold.");
        }
        let (fusion_tx, fusion_rx) = bounded::<FusionInput>(FUSION_QUEUE);
        let (events_tx, events) = bounded(EVENT_QUEUE);
        let d = &config.detector;
        let speaker = config
            .voice
            .speaker_model
            .as_deref()
            .map(SpeakerCard::load)
            .transpose()?;
        if let Some(s) = &speaker {
            tracing::info!(
                model = s.id(),
                change_below = config.voice.change_below,
                "Voice-change tracking on."
            );
        }
        let voice = speaker.as_ref().map(|_| config.voice.clone());
        let pool = DetectorPool::start(
            card.clone(),
            speaker.as_ref(),
            config.detector_workers(),
            d.intra_threads,
            (d.max_batch, Duration::from_millis(d.batch_wait_ms.into())),
            d.queue_windows,
            fusion_tx.clone(),
        )?;
        let transcriber = start_transcriber(&config.transcribe, fusion_tx.clone())?;
        let segments = transcriber.as_ref().map(|t| t.submitter());
        let context = TranscriptContext::new(&config.transcribe, segments.clone());
        let fusion = std::thread::Builder::new()
            .name("fusion".into())
            .spawn(move || fuse(fusion_rx, events_tx, context, voice))
            .map_err(|e| EngineError::Detect(DetectError::Run(e.to_string())))?;
        Ok(Self {
            config: config.clone(),
            submitter: Some(pool.submitter()),
            card,
            pool: Some(pool),
            fusion_tx: Some(fusion_tx),
            fusion: Some(fusion),
            transcriber,
            segments,
            events,
            next_key: AtomicU64::new(0),
        })
    }

    /// Transcription counters, when transcription runs.
    pub fn transcribe_stats(&self) -> Option<&TranscribeStats> {
        self.transcriber.as_ref().map(|t| t.stats())
    }

    /// Milliseconds of speech waiting for a transcription worker.
    pub fn transcribe_queued_ms(&self) -> u64 {
        self.transcriber.as_ref().map_or(0, |t| t.queued_ms())
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The class of a call whose source runs at `sample_rate` Hz, G.711-coded or not, with the
    /// configured `verdict.narrowband_class` for narrowband audio that is not G.711.
    pub fn classify(&self, sample_rate: u32, g711: bool) -> ChannelClass {
        ChannelClass::of_source(sample_rate, g711, self.config.verdict.narrowband_class)
    }

    /// The enter threshold of a class's calls, and where it came from.
    pub fn enter_threshold(&self, class: ChannelClass) -> EnterThreshold {
        crate::verdict::enter_threshold(&self.config.verdict, &self.card, class)
    }

    /// Scored, dropped and failed windows, batches and inference time over all calls.
    pub fn pool_stats(&self) -> Option<&Arc<PoolStats>> {
        self.pool.as_ref().map(|p| p.stats())
    }

    /// Windows waiting for a detector worker.
    pub fn queue_depth(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.queue_depth())
    }

    /// The engine's events (window scores, alerts, call summaries) for all calls.
    pub fn events(&self) -> &Receiver<EngineEvent> {
        &self.events
    }

    /// Another reader of the event stream, for a thread that consumes it (each event goes to
    /// one reader).
    pub fn event_receiver(&self) -> Receiver<EngineEvent> {
        self.events.clone()
    }

    /// A new VAD session for a thread that drives calls.
    pub fn vad(&self) -> Result<SileroVad, EngineError> {
        Ok(SileroVad::new(&self.config.speech.vad_model)?)
    }

    /// The call `key` now claims the protected identity `voice`: its voice so far and from now
    /// on is checked against it. Unknown or ended calls are ignored.
    pub fn claim(&self, key: u64, voice: Arc<Voiceprint>) -> Result<(), EngineError> {
        let Some(fusion) = &self.fusion_tx else {
            return Err(EngineError::Stopped);
        };
        fusion
            .send(FusionInput::Claim { key, voice })
            .map_err(|_| EngineError::Stopped)
    }

    /// Opens a call; its audio is pushed through the returned [`Call`].
    pub fn open_call(&self, spec: CallSpec) -> Result<Call, EngineError> {
        let (Some(fusion), Some(submitter)) = (&self.fusion_tx, &self.submitter) else {
            return Err(EngineError::Stopped);
        };
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let stream = CallStream::new(
            key,
            spec.format,
            spec.pick,
            &self.config.speech,
            &self.config.windows,
            self.card.input.window_samples,
            self.segments.as_ref().map(|_| {
                let ms = |v: u32| v as usize * super::PIPELINE_RATE as usize / 1000;
                let t = &self.config.transcribe;
                SegmentLimits {
                    min_samples: ms(t.min_segment_ms),
                    max_samples: ms(t.max_segment_ms),
                }
            }),
        )?;
        let stream = match &self.pool {
            Some(pool) => stream.with_window_buffers(pool.buffers().clone()),
            None => stream,
        };
        let params = FusionParams::from_config(
            &self.config.verdict,
            &self.card,
            spec.channel_class,
            spec.timeline_limit,
        );
        let (channel_class, enter_threshold) = (params.channel_class, params.enter_threshold);
        fusion
            .send(FusionInput::Opened {
                key,
                id: spec.id.into(),
                params,
                allowed: spec.allowed_voices,
                claimed: spec.claimed,
            })
            .map_err(|_| EngineError::Stopped)?;
        Ok(Call {
            stream,
            out: CallOutput {
                key,
                submitter: submitter.clone(),
                segments: self.segments.clone(),
                segments_when_full: if spec.recorded {
                    WhenFull::Block
                } else {
                    WhenFull::DropNewest
                },
                fusion: fusion.clone(),
                windows_when_full: spec.when_full,
            },
            channel_class,
            enter_threshold,
            closed: false,
        })
    }

    /// Scores everything queued, delivers the last events, and stops.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.submitter = None;
        self.segments = None;
        if let Some(pool) = self.pool.take() {
            pool.shutdown();
        }
        if let Some(t) = self.transcriber.take() {
            t.shutdown();
        }
        self.fusion_tx = None;
        // Unblock the fusion thread if nobody reads events any more.
        while let Some(f) = &self.fusion {
            if f.is_finished() {
                break;
            }
            let _ = self
                .events
                .recv_timeout(std::time::Duration::from_millis(5));
        }
        if let Some(f) = self.fusion.take() {
            let _ = f.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One open call. Dropping it without [`Call::finish`] closes it with what it had.
pub struct Call {
    stream: CallStream,
    out: CallOutput,
    channel_class: ChannelClass,
    enter_threshold: f32,
    closed: bool,
}

/// Where a call's windows and speech segments go.
struct CallOutput {
    key: u64,
    submitter: WindowSubmitter,
    segments: Option<SegmentSubmitter>,
    segments_when_full: WhenFull,
    fusion: Sender<FusionInput>,
    windows_when_full: WhenFull,
}

impl CallOutput {
    fn submit(&self, out: StreamOutput) {
        match out {
            StreamOutput::Window(job) => {
                if let Err(job) = self.submitter.submit(job, self.windows_when_full) {
                    let _ = self.fusion.send(FusionInput::Dropped {
                        key: self.key,
                        seq: job.seq,
                    });
                }
            }
            StreamOutput::Speech(segment) => {
                let Some(segments) = &self.segments else {
                    return;
                };
                if let Some(skipped) = segments.submit(segment, self.segments_when_full) {
                    let _ = self.fusion.send(FusionInput::Transcribed(skipped));
                }
            }
        }
    }
}

impl Call {
    pub fn key(&self) -> u64 {
        self.stream.key()
    }

    pub fn format(&self) -> SourceFormat {
        self.stream.format()
    }

    /// The class the call is screened as.
    pub fn channel_class(&self) -> ChannelClass {
        self.channel_class
    }

    /// The spoof probability at which the call becomes suspected.
    pub fn enter_threshold(&self) -> f32 {
        self.enter_threshold
    }

    pub fn stats(&self) -> &StreamStats {
        self.stream.stats()
    }

    /// Feeds interleaved samples in the call's source format.
    pub fn push(&mut self, vad: &mut SileroVad, interleaved: &[f32]) -> Result<(), StreamError> {
        let out = &self.out;
        self.stream.push(vad, interleaved, &mut |o| out.submit(o))
    }

    /// Takes interleaved samples in without gating them; [`Call::stage`] and
    /// [`Call::gate_staged`] gate them, so that one VAD run can serve many calls.
    pub fn take(&mut self, interleaved: &[f32]) -> Result<(), StreamError> {
        self.stream.take(interleaved)
    }

    /// Gates the frames too quiet for the VAD, then stages the next frame that needs it and
    /// returns its VAD state for a (batched) [`SileroVad::run`]; `None` when none is waiting.
    pub fn stage(&mut self) -> Option<&mut VadState> {
        let out = &self.out;
        self.stream.stage(&mut |o| out.submit(o))
    }

    /// Gates the staged frame with the probability the run gave it (no-op if none is staged).
    pub fn gate_staged(&mut self) {
        let out = &self.out;
        self.stream.gate_staged(&mut |o| out.submit(o))
    }

    /// Ends the call: the last audio is scored and the summary follows on the event stream.
    pub fn finish(mut self, vad: &mut SileroVad) -> Result<(), StreamError> {
        let out = &self.out;
        let result = self.stream.finish(vad, &mut |o| out.submit(o));
        self.close();
        result
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.out.fusion.send(FusionInput::Closed {
                key: self.stream.key(),
                windows: self.stream.stats().windows_emitted,
                stats: self.stream.stats().clone(),
            });
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.close();
    }
}

/// Loads the Whisper model and starts its workers, or explains why not (as configured).
fn start_transcriber(
    config: &TranscribeConfig,
    results: Sender<FusionInput>,
) -> Result<Option<TranscriberPool>, EngineError> {
    if !config.enabled {
        return Ok(None);
    }
    let started = WhisperModel::load(&config.model, Some(&config.language))
        .and_then(|model| TranscriberPool::start(&model, config, results));
    match (started, config.on_missing) {
        (Ok(pool), _) => Ok(Some(pool)),
        (Err(e), OnMissing::Warn) => {
            tracing::warn!(error = %e, "Transcription is off: running without transcripts.");
            Ok(None)
        }
        (Err(e), OnMissing::Error) => Err(e.into()),
    }
}

/// What the fusion thread needs to attach transcripts to alerts.
struct TranscriptContext {
    segments: Option<SegmentSubmitter>,
    limit: usize,
    snippet_ms: u64,
    cue_window_ms: u64,
    escalate_intent: f32,
}

impl TranscriptContext {
    fn new(c: &TranscribeConfig, segments: Option<SegmentSubmitter>) -> Self {
        Self {
            segments,
            limit: c.transcript_limit,
            snippet_ms: u64::from(c.snippet_s) * 1000,
            cue_window_ms: u64::from(c.cue_window_s) * 1000,
            escalate_intent: c.escalate_intent,
        }
    }

    /// Suspected calls' speech is transcribed first.
    fn prioritise(&self, key: u64, suspected: bool) {
        if let Some(s) = &self.segments {
            s.set_priority(key, suspected);
        }
    }
}

/// Reads `source` to its end (or until `stop`) through `call`, then finishes the call.
pub fn drive(
    mut call: Call,
    vad: &mut SileroVad,
    source: &mut dyn AudioSource,
    stop: &AtomicBool,
) -> Result<(), EngineError> {
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match source.read(&mut buf).map_err(StreamError::from)? {
            Read::Samples => call.push(vad, &buf)?,
            Read::End => break,
        }
    }
    Ok(call.finish(vad)?)
}

/// Items by sequence number, handed out in order: those that arrive ahead of the next one due
/// wait in a slot by their distance from it. A call's windows reach fusion nearly in order (a
/// few detector workers), so the slots stay few and, once grown, take no allocation per window
/// (a map would allocate a node for each).
struct Reorder<T> {
    next: u64,
    slots: VecDeque<Option<T>>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            next: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> Reorder<T> {
    /// Files item `seq`; one already handed out (or a repeat) is ignored.
    fn insert(&mut self, seq: u64, item: T) {
        let Some(slot) = seq.checked_sub(self.next).map(|d| d as usize) else {
            return;
        };
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot].get_or_insert(item);
    }

    /// The next item due, if it has arrived.
    fn pop_next(&mut self) -> Option<T> {
        if !matches!(self.slots.front(), Some(Some(_))) {
            return None;
        }
        self.next += 1;
        self.slots.pop_front().flatten()
    }

    /// The sequence number of the next item due: how many were handed out.
    fn next_seq(&self) -> u64 {
        self.next
    }
}

struct CallFusion {
    id: Arc<str>,
    evidence: CallEvidence,
    transcript: CallTranscript,
    /// Windows scored (or dropped: `None`) ahead of the next one due.
    waiting: Reorder<Option<ScoredWindow>>,
    closed: Option<(u64, StreamStats)>,
    dropped: u64,
    failed: u64,
    /// With a speaker encoder: who is speaking (`VOICE_CHANGED`).
    voice: Option<VoiceTracker>,
    /// The sum of the call's window embeddings and how many: the call's voice.
    voice_sum: Vec<f32>,
    voice_windows: u64,
    /// The tenant's allowed synthetic voices, and the windows each matched.
    allowed: Arc<[Voiceprint]>,
    allowed_matches: BTreeMap<String, u64>,
    allow_above: f32,
    /// The protected identity the call claims, and whether it was found wanting.
    claim: Option<Claim>,
}

struct Claim {
    voice: Arc<Voiceprint>,
    below: f32,
    min_windows: u64,
    mismatched: bool,
}

impl Claim {
    /// The cosine of the call's voice so far (`sum` of unit embeddings) with the voiceprint.
    fn similarity(&self, sum: &[f32]) -> f32 {
        crate::verdict::voice::cosine(sum, &self.voice.embedding)
    }
}

fn fuse(
    inputs: Receiver<FusionInput>,
    events: Sender<EngineEvent>,
    context: TranscriptContext,
    voice: Option<VoiceConfig>,
) {
    let mut calls: HashMap<u64, CallFusion> = HashMap::new();
    for input in inputs {
        let key = match input {
            FusionInput::Opened {
                key,
                id,
                params,
                allowed,
                claimed,
            } => {
                calls.insert(
                    key,
                    CallFusion {
                        evidence: CallEvidence::new(id.to_string(), params),
                        transcript: CallTranscript::new(context.limit),
                        id,
                        waiting: Reorder::default(),
                        closed: None,
                        dropped: 0,
                        failed: 0,
                        voice: voice.as_ref().map(VoiceTracker::new),
                        voice_sum: Vec::new(),
                        voice_windows: 0,
                        allowed,
                        allowed_matches: BTreeMap::new(),
                        allow_above: voice.as_ref().map_or(1.0, |v| v.allow_above),
                        claim: voice.as_ref().zip(claimed).map(|(v, c)| Claim {
                            voice: c,
                            below: v.identity_below,
                            min_windows: v.identity_min_windows as u64,
                            mismatched: false,
                        }),
                    },
                );
                key
            }
            FusionInput::Scored(w) => {
                let key = w.call;
                if let Some(c) = calls.get_mut(&key) {
                    c.waiting.insert(w.seq, Some(w));
                }
                key
            }
            FusionInput::Dropped { key, seq } => {
                if let Some(c) = calls.get_mut(&key) {
                    c.waiting.insert(seq, None);
                }
                key
            }
            FusionInput::Closed {
                key,
                windows,
                stats,
            } => {
                if let Some(c) = calls.get_mut(&key) {
                    c.closed = Some((windows, stats));
                }
                key
            }
            FusionInput::Claim {
                key,
                voice: claimed,
            } => {
                if let (Some(c), Some(v)) = (calls.get_mut(&key), &voice) {
                    c.claim = Some(Claim {
                        voice: claimed,
                        below: v.identity_below,
                        min_windows: v.identity_min_windows as u64,
                        mismatched: false,
                    });
                    let at = c.evidence.last_window_end().unwrap_or(0);
                    if check_claim(key, c, at, &context, &events).is_err() {
                        return;
                    }
                }
                key
            }
            FusionInput::Transcribed(result) => {
                let key = result.call;
                if let Some(c) = calls.get_mut(&key)
                    && transcribed(key, c, result, &context, &events).is_err()
                {
                    return;
                }
                key
            }
        };
        let Some(call) = calls.get_mut(&key) else {
            continue;
        };
        if advance(key, call, &context, &events).is_err() {
            return;
        }
        if let Some((windows, stats)) = &call.closed
            && call.waiting.next_seq() >= *windows
            && call.transcript.accounted() >= stats.segments_emitted
        {
            context.prioritise(key, false);
            let call = calls.remove(&key).expect("present");
            if events
                .send(EngineEvent::Ended(Box::new(summary(key, call))))
                .is_err()
            {
                return;
            }
        }
    }
}

/// Records a segment's transcript; a suspected call whose cues bring the caller's intent to
/// `escalate_intent` is escalated.
fn transcribed(
    key: u64,
    call: &mut CallFusion,
    result: SegmentResult,
    context: &TranscriptContext,
    events: &Sender<EngineEvent>,
) -> Result<(), ()> {
    let Some(segment) = call.transcript.add(result).cloned() else {
        return Ok(());
    };
    let end_ms = segment.end_ms;
    let has_cues = !segment.cues.is_empty();
    events
        .send(EngineEvent::Transcript {
            call: key,
            call_id: call.id.clone(),
            segment,
        })
        .map_err(|_| ())?;
    if !has_cues {
        return Ok(());
    }
    let intent = call.transcript.intent(end_ms, context.cue_window_ms);
    if let Some(mut alert) = call
        .evidence
        .escalate(end_ms, intent, context.escalate_intent)
    {
        alert.attach(&call.transcript, context.snippet_ms, context.cue_window_ms);
        call.evidence.update_last(&alert);
        events
            .send(EngineEvent::Alert { call: key, alert })
            .map_err(|_| ())?;
    }
    Ok(())
}

/// `IdentityMismatch` once the call's voice so far (enough windows of it) is clearly not the
/// claimed person's; once per claim.
fn check_claim(
    key: u64,
    call: &mut CallFusion,
    at_ms: u64,
    context: &TranscriptContext,
    events: &Sender<EngineEvent>,
) -> Result<(), ()> {
    let Some(c) = &mut call.claim else {
        return Ok(());
    };
    if c.mismatched || call.voice_windows < c.min_windows {
        return Ok(());
    }
    let similarity = c.similarity(&call.voice_sum);
    if similarity >= c.below {
        return Ok(());
    }
    c.mismatched = true;
    let below = c.below;
    tracing::info!(call_id = %call.id, audio_ms = at_ms, similarity, "Caller is not the claimed identity.");
    let alert = call.evidence.identity_mismatch(at_ms, similarity, below);
    send_voice_alert(key, call, alert, context, events)
}

/// A voice alert (`VoiceChanged`, `IdentityMismatch`) with the call's transcript context
/// attached, keeping the risk its kind set when the cues' risk is lower, then sent.
fn send_voice_alert(
    key: u64,
    call: &mut CallFusion,
    mut alert: Alert,
    context: &TranscriptContext,
    events: &Sender<EngineEvent>,
) -> Result<(), ()> {
    let risk = alert.risk;
    alert.attach(&call.transcript, context.snippet_ms, context.cue_window_ms);
    alert.risk = alert.risk.max(risk);
    call.evidence.update_last(&alert);
    events
        .send(EngineEvent::Alert { call: key, alert })
        .map_err(|_| ())
}

/// Fuses the call's windows that are next in order.
fn advance(
    key: u64,
    call: &mut CallFusion,
    context: &TranscriptContext,
    events: &Sender<EngineEvent>,
) -> Result<(), ()> {
    while let Some(entry) = call.waiting.pop_next() {
        match entry {
            None => call.dropped += 1,
            Some(ScoredWindow {
                p_spoof: Err(e),
                seq,
                ..
            }) => {
                call.failed += 1;
                tracing::warn!(call_id = %call.id, seq, error = %e, "Window could not be scored.");
            }
            Some(ScoredWindow {
                p_spoof: Ok(p),
                seq,
                start_ms,
                end_ms,
                embedding,
                ..
            }) => {
                if let Some(e) = &embedding {
                    if call.voice_sum.len() != e.len() {
                        call.voice_sum = vec![0.0; e.len()];
                    }
                    call.voice_sum
                        .iter_mut()
                        .zip(e.iter())
                        .for_each(|(s, x)| *s += x);
                    call.voice_windows += 1;
                }
                let allowed = embedding.as_ref().and_then(|e| {
                    call.allowed
                        .iter()
                        .find(|v| v.matches(e, p, call.allow_above))
                });
                if let Some(v) = allowed {
                    *call.allowed_matches.entry(v.name.clone()).or_default() += 1;
                    let score = call.evidence.add_allowed(seq, start_ms, end_ms, p);
                    events
                        .send(EngineEvent::Window {
                            call: key,
                            call_id: call.id.clone(),
                            score,
                        })
                        .map_err(|_| ())?;
                    continue;
                }
                let (score, alert) = call.evidence.add(seq, start_ms, end_ms, p);
                let change = call
                    .voice
                    .as_mut()
                    .zip(embedding)
                    .and_then(|(v, e)| v.add(end_ms, &e).map(|c| (c, v.threshold())));
                events
                    .send(EngineEvent::Window {
                        call: key,
                        call_id: call.id.clone(),
                        score,
                    })
                    .map_err(|_| ())?;
                if let Some(mut alert) = alert {
                    alert.attach(&call.transcript, context.snippet_ms, context.cue_window_ms);
                    // Spoof-aware verification: a voice that matches the claimed person and
                    // sounds synthetic is a clone of that person; its risk rises with both.
                    if let Some(c) = call
                        .claim
                        .as_ref()
                        .filter(|_| alert.kind == AlertKind::SuspectedClone)
                    {
                        let s = c.similarity(&call.voice_sum);
                        if s >= c.below {
                            alert.risk = alert.risk.max(1.0 - (1.0 - alert.p_spoof) * (1.0 - s));
                            alert.voice_similarity = Some(s);
                        }
                    }
                    call.evidence.update_last(&alert);
                    let suspected = alert.kind == AlertKind::SuspectedClone;
                    context.prioritise(key, suspected);
                    let intent = crate::transcribe::cues::intent(&alert.cues);
                    if suspected && intent >= context.escalate_intent {
                        // The first alert already carries the cues: no second one for them.
                        call.evidence.mark_escalated();
                    }
                    events
                        .send(EngineEvent::Alert { call: key, alert })
                        .map_err(|_| ())?;
                }
                check_claim(key, call, end_ms, context, events)?;
                if let Some((change, threshold)) = change {
                    tracing::info!(call_id = %call.id, audio_ms = change.audio_ms, similarity = change.similarity, "Caller's voice changed.");
                    let alert =
                        call.evidence
                            .voice_changed(change.audio_ms, change.similarity, threshold);
                    send_voice_alert(key, call, alert, context, events)?;
                }
            }
        }
    }
    Ok(())
}

fn summary(key: u64, call: CallFusion) -> CallSummary {
    let (_, stats) = call.closed.unwrap_or_default();
    let e = call.evidence;
    let model = e.params().model.clone();
    CallSummary {
        key,
        channel_class: e.params().channel_class,
        enter_threshold: e.params().enter_threshold,
        call_id: e.call_id,
        verdict: e.state,
        p_spoof: e.last_fused,
        p_spoof_peak: e.peak_fused,
        first_alert_ms: e.first_alert_ms,
        first_verdict_ms: e.first_verdict_ms,
        audio_ms: stats.audio_ms,
        speech_ms: stats.speech_ms,
        quiet_ms: stats.quiet_ms,
        windows: stats.windows_emitted,
        windows_scored: e.windows_scored,
        windows_dropped: call.dropped,
        windows_failed: call.failed,
        non_finite_samples: stats.non_finite_samples,
        alerts: e.alerts,
        timeline: e.timeline.into(),
        timeline_truncated: e.timeline_dropped,
        model,
        transcript: call.transcript.segments().cloned().collect(),
        transcript_truncated: call.transcript.dropped,
        segments: stats.segments_emitted,
        segment_counts: call.transcript.counts,
        voice_embedding: (call.voice_windows > 0).then(|| {
            let norm = call.voice_sum.iter().map(|x| x * x).sum::<f32>().sqrt() + 1e-9;
            call.voice_sum.iter().map(|x| x / norm).collect()
        }),
        voice_windows: call.voice_windows,
        allowed_voice_windows: call.allowed_matches,
    }
}

#[cfg(test)]
mod tests {
    use super::Reorder;

    #[test]
    fn reorder_hands_items_out_in_sequence_whatever_order_they_arrive_in() {
        let mut r = Reorder::default();
        r.insert(2, 'c');
        assert_eq!(r.pop_next(), None, "0 is not there yet");
        r.insert(0, 'a');
        r.insert(3, 'd');
        assert_eq!(r.pop_next(), Some('a'));
        assert_eq!(r.pop_next(), None, "1 is missing");
        r.insert(1, 'b');
        r.insert(0, 'x'); // handed out already: ignored
        let out: Vec<char> = std::iter::from_fn(|| r.pop_next()).collect();
        assert_eq!(out, ['b', 'c', 'd']);
        assert_eq!(r.next_seq(), 4);
    }
}
