//! The live calls of every tenant: who owns each, where its audio comes from, its state as the
//! dispatcher last saw it, and how to reach its `StreamAudio` client. Ended calls leave the
//! registry and live on in the alert log.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::alert::{CallMeta, LoggedAlert};
use crate::transcribe::{SegmentCounts, TranscriptSegment};
use crate::verdict::{CallState, ChannelClass, WindowScore};

/// Windows kept for `GetCall`'s recent timeline.
pub const RECENT_WINDOWS: usize = 20;

/// Transcript segments kept for `GetCall` while a call runs (an ended call has its whole,
/// `transcribe.transcript_limit`-bounded transcript).
pub const RECENT_SEGMENTS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSource {
    Stream,
    Device,
    /// A Twilio Media Stream (`src/connect/twilio.rs`).
    Twilio,
    /// An Asterisk AudioSocket connection (`src/connect/audiosocket.rs`).
    #[serde(rename = "audiosocket")]
    AudioSocket,
    /// A Genesys Cloud AudioHook session.
    #[serde(rename = "audiohook")]
    AudioHook,
    /// A SIPREC recording session (`src/connect/sip/`).
    Siprec,
}

/// Frames of a streamed call: received, rejected, and lost (sequence gaps or a full queue).
#[derive(Debug, Default)]
pub struct FrameCounters {
    pub received: AtomicU64,
    pub rejected: AtomicU64,
    pub lost: AtomicU64,
}

/// Asks a call to end; remembered if nobody is waiting yet.
#[derive(Debug, Default)]
pub struct EndSignal {
    flag: Arc<AtomicBool>,
    notify: Notify,
}

impl EndSignal {
    pub fn end(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    pub fn is_ended(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The flag, for code that polls (device capture loops).
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    pub async fn wait(&self) {
        if !self.is_ended() {
            self.notify.notified().await;
        }
    }
}

/// What a `StreamAudio` client is told while its call runs.
#[derive(Debug, Clone)]
pub enum CallUpdate {
    Verdict {
        state: CallState,
        p_spoof: f32,
        audio_ms: u64,
        windows_scored: u64,
    },
    Window(WindowScore),
    Alert(Arc<LoggedAlert>),
    /// The caller said something (redacted).
    Transcript(TranscriptSegment),
}

/// A call's totals when it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndedSummary {
    pub verdict: CallState,
    pub p_spoof: Option<f32>,
    pub p_spoof_peak: Option<f32>,
    pub first_alert_ms: Option<u64>,
    pub first_verdict_ms: Option<u64>,
    pub audio_ms: u64,
    pub speech_ms: u64,
    pub windows: u64,
    pub windows_scored: u64,
    pub windows_dropped: u64,
    pub windows_failed: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    pub frames_lost: u64,
    pub model: String,
    pub alerts: u32,
    /// The class the call was screened as and its enter threshold (absent in records logged
    /// before classes existed).
    #[serde(default)]
    pub channel_class: Option<ChannelClass>,
    #[serde(default)]
    pub enter_threshold: Option<f32>,
    /// Speech segments cut for transcription and what became of them.
    #[serde(default)]
    pub segments: u64,
    #[serde(default)]
    pub segment_counts: SegmentCounts,
}

/// What `GetCall` answers, for a live or an ended call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call_id: String,
    pub tenant: String,
    pub state: CallState,
    pub source: CallSource,
    /// The class the call is screened as and its enter threshold (absent in records logged
    /// before classes existed).
    #[serde(default)]
    pub channel_class: Option<ChannelClass>,
    #[serde(default)]
    pub enter_threshold: Option<f32>,
    pub p_spoof: Option<f32>,
    pub p_spoof_peak: Option<f32>,
    pub first_alert_ms: Option<u64>,
    pub audio_ms: u64,
    pub windows_scored: u64,
    pub alerts: u32,
    pub started_wall_time_ms: i64,
    pub ended_wall_time_ms: Option<i64>,
    pub metadata: CallMeta,
    pub recent_windows: Vec<WindowScore>,
    /// What the caller said (redacted), oldest first.
    #[serde(default)]
    pub transcript: Vec<TranscriptSegment>,
    pub summary: Option<EndedSummary>,
    /// Where the call ran in a cluster (`src/cluster/`); absent on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterPlace>,
}

/// A call's place in a cluster, as `GetCall` and `ListCalls` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlace {
    pub node: String,
    /// Why the call ended when its source did not end it (`node_lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The node the call ran on before its source continued it here, and the gap between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_node: Option<String>,
    #[serde(default)]
    pub resume_gap_ms: u64,
}

/// One live call.
pub struct CallEntry {
    pub tenant: Arc<str>,
    pub call_id: Arc<str>,
    pub source: CallSource,
    pub channel_class: ChannelClass,
    pub enter_threshold: f32,
    pub metadata: CallMeta,
    pub started_wall_time_ms: i64,
    pub state: CallState,
    pub p_spoof: Option<f32>,
    pub p_spoof_peak: Option<f32>,
    pub first_alert_ms: Option<u64>,
    /// Call time where the first scored speech window began.
    pub first_speech_ms: Option<u64>,
    pub audio_ms: u64,
    pub windows_scored: u64,
    pub alerts: u32,
    pub recent: VecDeque<WindowScore>,
    pub transcript: VecDeque<TranscriptSegment>,
    /// The `StreamAudio` client's updates (never waited on; a full queue skips an update).
    pub updates: Option<mpsc::Sender<CallUpdate>>,
    pub window_updates: bool,
    /// Where the final record goes when the call ends.
    pub ended: Option<oneshot::Sender<CallRecord>>,
    pub end: Arc<EndSignal>,
    pub frames: Arc<FrameCounters>,
}

impl CallEntry {
    /// A call that has just opened: listening, nothing scored, no client to tell yet.
    pub fn opened(
        tenant: &str,
        call_id: &str,
        source: CallSource,
        (channel_class, enter_threshold): (ChannelClass, f32),
        metadata: CallMeta,
        end: Arc<EndSignal>,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            call_id: call_id.into(),
            source,
            channel_class,
            enter_threshold,
            metadata,
            started_wall_time_ms: crate::alert::now_ms(),
            state: CallState::Listening,
            p_spoof: None,
            p_spoof_peak: None,
            first_alert_ms: None,
            first_speech_ms: None,
            audio_ms: 0,
            windows_scored: 0,
            alerts: 0,
            recent: VecDeque::new(),
            transcript: VecDeque::new(),
            updates: None,
            window_updates: false,
            ended: None,
            end,
            frames: Arc::default(),
        }
    }

    pub fn record(&self) -> CallRecord {
        CallRecord {
            recent_windows: self.recent.iter().copied().collect(),
            transcript: self.transcript.iter().cloned().collect(),
            ..self.brief()
        }
    }

    /// The record without its windows and transcript (what a cluster shares each heartbeat:
    /// nothing is copied only to be thrown away under the registry's lock).
    pub fn brief(&self) -> CallRecord {
        CallRecord {
            call_id: self.call_id.to_string(),
            tenant: self.tenant.to_string(),
            state: self.state,
            source: self.source,
            channel_class: Some(self.channel_class),
            enter_threshold: Some(self.enter_threshold),
            p_spoof: self.p_spoof,
            p_spoof_peak: self.p_spoof_peak,
            first_alert_ms: self.first_alert_ms,
            audio_ms: self.audio_ms,
            windows_scored: self.windows_scored,
            alerts: self.alerts,
            started_wall_time_ms: self.started_wall_time_ms,
            ended_wall_time_ms: None,
            metadata: self.metadata.clone(),
            recent_windows: Vec::new(),
            transcript: Vec::new(),
            summary: None,
            cluster: None,
        }
    }

    /// Applies a fused window; returns whether the call's state changed.
    pub fn observe(&mut self, score: WindowScore, state: CallState) -> bool {
        let changed = state != self.state;
        self.state = state;
        self.p_spoof = Some(score.fused);
        self.p_spoof_peak = Some(
            self.p_spoof_peak
                .map_or(score.fused, |p| p.max(score.fused)),
        );
        self.audio_ms = self.audio_ms.max(score.end_ms);
        self.first_speech_ms.get_or_insert(score.start_ms);
        self.windows_scored += 1;
        if self.recent.len() == RECENT_WINDOWS {
            self.recent.pop_front();
        }
        self.recent.push_back(score);
        changed
    }

    /// Hands an update to the streaming client without waiting.
    pub fn tell(&self, update: CallUpdate) {
        if let Some(tx) = &self.updates {
            let _ = tx.try_send(update);
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("call {0:?} is already live")]
    AlreadyLive(String),
    #[error("the tenant has {limit} live calls, the most allowed")]
    TooMany { limit: usize },
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<u64, CallEntry>,
    by_id: HashMap<(Arc<str>, Arc<str>), u64>,
}

/// One live call as metrics see it.
#[derive(Debug, Clone)]
pub struct Census {
    pub source: CallSource,
    pub tenant: Arc<str>,
    pub audio_ms: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    pub frames_lost: u64,
}

/// Live calls by engine key and by (tenant, call id).
#[derive(Default)]
pub struct CallRegistry {
    inner: Mutex<Inner>,
}

impl CallRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that the call may open, runs `open` (which returns the engine key and whatever
    /// the caller needs) and registers the entry `make` builds, all under one lock so two
    /// opens of one id cannot race.
    pub fn open<T, E: From<RegisterError>>(
        &self,
        tenant: &str,
        call_id: &str,
        limit: usize,
        open: impl FnOnce() -> Result<(u64, T), E>,
        make: impl FnOnce() -> CallEntry,
    ) -> Result<(u64, T), E> {
        let mut inner = self.lock();
        let id = (Arc::<str>::from(tenant), Arc::<str>::from(call_id));
        if inner.by_id.contains_key(&id) {
            return Err(RegisterError::AlreadyLive(call_id.to_owned()).into());
        }
        let live = inner.by_id.keys().filter(|(t, _)| **t == *tenant).count();
        if live >= limit {
            return Err(RegisterError::TooMany { limit }.into());
        }
        let (key, value) = open()?;
        inner.by_id.insert(id, key);
        inner.by_key.insert(key, make());
        Ok((key, value))
    }

    pub fn with<R>(&self, key: u64, f: impl FnOnce(&mut CallEntry) -> R) -> Option<R> {
        self.lock().by_key.get_mut(&key).map(f)
    }

    /// Runs `f` on the tenant's live call with this id, under one lock, without copying it.
    /// The engine key of the tenant's live call `call_id`.
    pub fn key_of(&self, tenant: &str, call_id: &str) -> Option<u64> {
        self.lock()
            .by_id
            .get(&(Arc::<str>::from(tenant), Arc::<str>::from(call_id)))
            .copied()
    }

    pub fn with_id<R>(
        &self,
        tenant: &str,
        call_id: &str,
        f: impl FnOnce(&mut CallEntry) -> R,
    ) -> Option<R> {
        let mut inner = self.lock();
        let key = *inner
            .by_id
            .get(&(Arc::<str>::from(tenant), Arc::<str>::from(call_id)))?;
        inner.by_key.get_mut(&key).map(f)
    }

    pub fn remove(&self, key: u64) -> Option<CallEntry> {
        self.remove_and(key, |_| {})
    }

    /// Removes the call and runs `f` on it under the same lock (so a [`Self::census`] sees a
    /// call either live or in `f`'s totals, never both or neither).
    pub fn remove_and(&self, key: u64, f: impl FnOnce(&CallEntry)) -> Option<CallEntry> {
        let mut inner = self.lock();
        let entry = inner.by_key.remove(&key)?;
        f(&entry);
        inner
            .by_id
            .remove(&(entry.tenant.clone(), entry.call_id.clone()));
        Some(entry)
    }

    /// Every tenant's live calls, without their windows and transcripts (what a cluster shares).
    pub fn all_brief(&self) -> Vec<CallRecord> {
        let inner = self.lock();
        inner.by_key.values().map(CallEntry::brief).collect()
    }

    pub fn list(&self, tenant: &str) -> Vec<CallRecord> {
        let inner = self.lock();
        let mut calls: Vec<_> = inner
            .by_key
            .values()
            .filter(|e| *e.tenant == *tenant)
            .map(CallEntry::record)
            .collect();
        calls.sort_by(|a, b| {
            (a.started_wall_time_ms, &a.call_id).cmp(&(b.started_wall_time_ms, &b.call_id))
        });
        calls
    }

    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Every live call's source, tenant and counters, for metrics, and what `also` reads under
    /// the same lock.
    pub fn census<R>(&self, also: impl FnOnce() -> R) -> (Vec<Census>, R) {
        let inner = self.lock();
        let live = inner
            .by_key
            .values()
            .map(|e| Census {
                source: e.source,
                tenant: e.tenant.clone(),
                audio_ms: e.audio_ms,
                frames_received: e.frames.received.load(Ordering::Relaxed),
                frames_rejected: e.frames.rejected.load(Ordering::Relaxed),
                frames_lost: e.frames.lost.load(Ordering::Relaxed),
            })
            .collect();
        (live, also())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every live call to end.
    pub fn end_all(&self) {
        for e in self.lock().by_key.values() {
            e.end.end();
        }
    }
}
