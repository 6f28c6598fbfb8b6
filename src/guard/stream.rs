//! Calls streamed in over the network (`StreamAudio`), and the alert feed of a subscriber
//! (`StreamAlerts`): replay from the log, then live, with catch-up after a lag.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::ingest::IngestCmd;
use super::registry::{
    CallEntry, CallRecord, CallSource, CallUpdate, EndSignal, FrameCounters, RegisterError,
};
use crate::alert::{AlertFilter, CallMeta, HubError, LoggedAlert, StoreError, Subscription};
use crate::audio::push::Encoding;
use crate::audio::{ChannelPick, SourceFormat};
use crate::pipeline::{CallSpec, EngineError};
use crate::verdict::ChannelClass;

/// Updates queued for a `StreamAudio` client before some are skipped.
const UPDATE_QUEUE: usize = 256;
/// Live calls keep this many windows on their engine timeline.
const TIMELINE_LIMIT: usize = 2_000;
/// Alerts read from the log per catch-up query.
const REPLAY_PAGE: usize = 256;

/// How a client opens a streamed call.
#[derive(Debug, Clone)]
pub struct OpenSpec {
    pub call_id: String,
    pub encoding: Encoding,
    pub sample_rate: u32,
    pub channels: u16,
    pub caller_channel: Option<u16>,
    pub metadata: CallMeta,
    pub window_updates: bool,
    /// The client's word for the call's channel class; absent: from the codec and rate
    /// (G.711 is `narrowband_g711`, PCM below 16 kHz `verdict.narrowband_class`).
    pub channel_class: Option<ChannelClass>,
    /// Where the call comes from, as `ListCalls`/`GetCall` name it.
    pub source: CallSource,
}

impl OpenSpec {
    /// The call's channel class: the client's, or else from its codec and rate.
    pub fn class(&self, narrowband: ChannelClass) -> ChannelClass {
        self.channel_class.unwrap_or_else(|| {
            let g711 = matches!(self.encoding, Encoding::MuLaw | Encoding::ALaw);
            ChannelClass::of_source(self.sample_rate, g711, narrowband)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the server is busy; try again")]
    Busy,
    #[error("the server is shutting down")]
    Stopped,
}

/// Why one frame was not taken; the call goes on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("{0}")]
    Invalid(String),
    #[error("audio arrives faster than {max_speed}x real time (burst of {burst_ms} ms used up)")]
    TooFast { max_speed: f32, burst_ms: u32 },
    #[error("the server is overloaded; the frame was lost")]
    Busy,
    #[error("the server is shutting down")]
    Stopped,
}

/// Call ids: 1-128 characters of letters, digits and `-_.:@#`.
pub fn valid_call_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@#".contains(&b))
}

fn check_spec(spec: &OpenSpec) -> Result<SourceFormat, String> {
    let mut problems = Vec::new();
    if !valid_call_id(&spec.call_id) {
        problems.push(format!(
            "call_id {:?} is not 1-128 letters, digits or -_.:@#",
            spec.call_id
        ));
    }
    if !(4_000..=192_000).contains(&spec.sample_rate) {
        problems.push(format!(
            "sample_rate {} is outside 4000..=192000",
            spec.sample_rate
        ));
    }
    if !(1..=8).contains(&spec.channels) {
        problems.push(format!("channels {} is outside 1..=8", spec.channels));
    }
    if let Some(c) = spec.caller_channel
        && c >= spec.channels
    {
        problems.push(format!(
            "caller_channel {c} does not exist in a {}-channel stream",
            spec.channels
        ));
    }
    let m = &spec.metadata;
    if m.labels.len() > 16
        || [&m.ani, &m.dnis, &m.agent]
            .into_iter()
            .chain(m.labels.keys())
            .chain(m.labels.values())
            .any(|v| v.len() > 256)
    {
        problems.push("metadata exceeds 16 labels or 256 bytes per value".into());
    }
    if problems.is_empty() {
        Ok(SourceFormat {
            sample_rate: spec.sample_rate,
            channels: spec.channels,
        })
    } else {
        Err(problems.join("; "))
    }
}

/// A call whose audio arrives in frames.
pub struct StreamCall {
    shared: Arc<Shared>,
    key: u64,
    call_id: String,
    channel_class: ChannelClass,
    enter_threshold: f32,
    encoding: Encoding,
    channels: u16,
    sample_rate: u32,
    max_frame_bytes: usize,
    last_seq: Option<u64>,
    /// Audio the call may still send ahead of real time, in ms.
    allowance_ms: f64,
    refilled: Instant,
    frames: Arc<FrameCounters>,
    end: Arc<EndSignal>,
    updates: mpsc::Receiver<CallUpdate>,
    ended: Option<oneshot::Receiver<CallRecord>>,
    finished: bool,
}

pub(super) fn open(
    shared: &Arc<Shared>,
    tenant: &str,
    spec: OpenSpec,
) -> Result<StreamCall, OpenError> {
    let format = check_spec(&spec).map_err(OpenError::Invalid)?;
    let server = &shared.config.server;
    let (updates_tx, updates) = mpsc::channel(UPDATE_QUEUE);
    let (ended_tx, ended) = oneshot::channel();
    let end = Arc::new(EndSignal::default());
    let frames = Arc::new(FrameCounters::default());
    let channel_class = spec.class(shared.config.verdict.narrowband_class);
    // What the engine screens the call as, for the registry entry made after it opens.
    let screened_as = std::cell::Cell::new((channel_class, 0.0));
    // Read before the registry is locked for the opening.
    let allowed = shared.allowed_voices(tenant);
    let claimed = shared.claimed_identity(tenant, &spec.metadata);
    let (key, engine_call) = shared.registry.open(
        tenant,
        &spec.call_id,
        server.max_calls_per_tenant,
        || -> Result<_, OpenError> {
            let call = shared.with_engine(|e| {
                e.open_call(CallSpec {
                    id: spec.call_id.clone(),
                    format,
                    pick: ChannelPick::from_option(spec.caller_channel),
                    channel_class,
                    when_full: shared.config.detector.when_full,
                    timeline_limit: TIMELINE_LIMIT,
                    recorded: false,
                    allowed_voices: allowed.clone(),
                    claimed: claimed.clone(),
                })
            })??;
            screened_as.set((call.channel_class(), call.enter_threshold()));
            Ok((call.key(), call))
        },
        || CallEntry {
            updates: Some(updates_tx),
            window_updates: spec.window_updates,
            ended: Some(ended_tx),
            frames: frames.clone(),
            ..CallEntry::opened(
                tenant,
                &spec.call_id,
                spec.source,
                screened_as.get(),
                spec.metadata.clone(),
                end.clone(),
            )
        },
    )?;
    // The call is registered; if a worker cannot take it, dropping it closes it and the
    // dispatcher unregisters it when its (empty) summary arrives.
    let queued = shared.with_ingest(|i| i.try_control(IngestCmd::Open(Box::new(engine_call))));
    match queued {
        Ok(Ok(())) => {}
        Ok(Err(Some(_))) => return Err(OpenError::Busy),
        Ok(Err(None)) | Err(_) => return Err(OpenError::Stopped),
    }
    let (channel_class, enter_threshold) = screened_as.get();
    tracing::info!(
        tenant,
        call_id = %spec.call_id,
        source = ?spec.source,
        channel_class = channel_class.as_str(),
        sample_rate = spec.sample_rate,
        "Call opened."
    );
    Ok(StreamCall {
        shared: shared.clone(),
        key,
        channel_class,
        enter_threshold,
        call_id: spec.call_id,
        encoding: spec.encoding,
        channels: spec.channels,
        sample_rate: spec.sample_rate,
        max_frame_bytes: (spec.sample_rate as usize * server.max_frame_ms as usize / 1000)
            * spec.channels as usize
            * spec.encoding.bytes_per_sample(),
        last_seq: None,
        allowance_ms: server.burst_ms as f64,
        refilled: Instant::now(),
        frames,
        end,
        updates,
        ended: Some(ended),
        finished: false,
    })
}

impl StreamCall {
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The class the call is screened as.
    pub fn channel_class(&self) -> ChannelClass {
        self.channel_class
    }

    /// The spoof probability at which the call becomes suspected.
    pub fn enter_threshold(&self) -> f32 {
        self.enter_threshold
    }

    /// Takes one frame: checks it, decodes it and queues it for the call's ingest worker.
    pub fn push(&mut self, sequence: u64, data: &[u8]) -> Result<(), FrameError> {
        self.frames.received.fetch_add(1, Ordering::Relaxed);
        let result = self.take(sequence, data);
        if result.is_err() {
            self.frames.rejected.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Counts a frame that a protocol adapter received but could not decode (bad base64, a
    /// torn frame), so the call's summary accounts for it as `push` would have.
    pub fn count_rejected(&self) {
        self.frames.received.fetch_add(1, Ordering::Relaxed);
        self.frames.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts audio that a protocol adapter knows was lost (a gap in the platform's positions).
    pub fn count_lost(&self, frames: u64) {
        self.frames.lost.fetch_add(frames, Ordering::Relaxed);
    }

    fn take(&mut self, sequence: u64, data: &[u8]) -> Result<(), FrameError> {
        if data.is_empty() {
            return Err(FrameError::Invalid(format!("frame {sequence} is empty")));
        }
        if data.len() > self.max_frame_bytes {
            return Err(FrameError::Invalid(format!(
                "frame {sequence} has {} bytes, more than max_frame_ms of audio ({} bytes)",
                data.len(),
                self.max_frame_bytes
            )));
        }
        if let Some(last) = self.last_seq
            && sequence <= last
        {
            return Err(FrameError::Invalid(format!(
                "frame {sequence} is out of order (after {last})"
            )));
        }
        let mut samples = Vec::with_capacity(data.len() / self.encoding.bytes_per_sample());
        self.encoding
            .decode(data, self.channels, &mut samples)
            .map_err(|e| FrameError::Invalid(format!("frame {sequence}: {e}")))?;
        let server = &self.shared.config.server;
        let now = Instant::now();
        let refill =
            now.duration_since(self.refilled).as_secs_f64() * 1000.0 * server.max_speed as f64;
        self.allowance_ms = (self.allowance_ms + refill).min(server.burst_ms as f64);
        self.refilled = now;
        let frame_ms =
            (samples.len() / self.channels as usize) as f64 * 1000.0 / self.sample_rate as f64;
        if frame_ms > self.allowance_ms {
            return Err(FrameError::TooFast {
                max_speed: server.max_speed,
                burst_ms: server.burst_ms,
            });
        }
        let expected = self.last_seq.map_or(0, |l| l + 1);
        if sequence > expected {
            self.frames
                .lost
                .fetch_add(sequence - expected, Ordering::Relaxed);
        }
        self.last_seq = Some(sequence);
        self.allowance_ms -= frame_ms;
        match self.shared.with_ingest(|i| i.try_audio(self.key, samples)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(super::IngestError::Full)) => {
                self.frames.lost.fetch_add(1, Ordering::Relaxed);
                Err(FrameError::Busy)
            }
            _ => Err(FrameError::Stopped),
        }
    }

    /// The next update for the client; `None` once the call has ended and all were read.
    pub async fn update(&mut self) -> Option<CallUpdate> {
        self.updates.recv().await
    }

    /// Set when someone asks the call to end (`EndCall`, shutdown).
    pub fn end_signal(&self) -> Arc<EndSignal> {
        self.end.clone()
    }

    /// Ends the call: the rest of its audio is scored; returns the final record once the
    /// dispatcher has logged it. Updates still queued stay readable through `update`.
    pub async fn finish(&mut self) -> Option<CallRecord> {
        if !self.finished {
            self.finished = true;
            let mut cmd = IngestCmd::Finish { key: self.key };
            while let Ok(Err(Some(back))) = self.shared.with_ingest(|i| i.try_control(cmd)) {
                cmd = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.ended.take()?.await.ok()
    }
}

impl Drop for StreamCall {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Abandoned (the task was cancelled): finish it from a thread that may wait for room.
        let shared = self.shared.clone();
        let key = self.key;
        let _ = std::thread::Builder::new()
            .name("finish-call".into())
            .spawn(move || {
                let mut cmd = IngestCmd::Finish { key };
                while let Ok(Err(Some(back))) = shared.with_ingest(|i| i.try_control(cmd)) {
                    cmd = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Alert(Arc<LoggedAlert>),
    /// The subscriber fell behind by `overflowed` live alerts and is caught up from the log,
    /// starting after `resume_after`.
    Lag {
        resume_after: u64,
        overflowed: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One subscriber's alerts, in sequence order, none missed.
pub struct AlertFeed {
    shared: Arc<Shared>,
    tenant: String,
    sub: Subscription,
    last: u64,
    backlog: VecDeque<LoggedAlert>,
    catching_up: bool,
}

impl AlertFeed {
    pub(super) fn new(
        shared: Arc<Shared>,
        tenant: &str,
        filter: AlertFilter,
        after: Option<u64>,
    ) -> Result<Self, FeedError> {
        // Read the log's end before subscribing: anything logged in between is found by the
        // first catch-up, and anything published after subscribing is also queued (and skipped
        // there by sequence if the catch-up already delivered it).
        let last = match after {
            Some(s) => s,
            None => shared.log.last_sequence()?,
        };
        let sub = shared.hub.subscribe(tenant, filter)?;
        Ok(Self {
            shared,
            tenant: tenant.to_owned(),
            sub,
            last,
            backlog: VecDeque::new(),
            catching_up: true,
        })
    }

    /// The next alert or lag notice; `None` when the server stops.
    pub async fn next(&mut self) -> Option<Result<FeedItem, StoreError>> {
        loop {
            if let Some(a) = self.backlog.pop_front() {
                self.last = a.sequence;
                return Some(Ok(FeedItem::Alert(Arc::new(a))));
            }
            if self.catching_up {
                let (shared, tenant, filter, after) = (
                    self.shared.clone(),
                    self.tenant.clone(),
                    self.sub.filter().clone(),
                    self.last,
                );
                let page = tokio::task::spawn_blocking(move || {
                    shared.log.after(&tenant, &filter, after, REPLAY_PAGE)
                })
                .await
                .unwrap_or_else(|e| Err(StoreError::Interrupted(e.to_string())));
                match page {
                    Ok(page) => {
                        self.catching_up = page.len() == REPLAY_PAGE;
                        self.backlog.extend(page);
                        continue;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let alert = self.sub.recv().await?;
            let overflowed = self.sub.take_overflow();
            if overflowed > 0 {
                self.catching_up = true;
                return Some(Ok(FeedItem::Lag {
                    resume_after: self.last,
                    overflowed,
                }));
            }
            if alert.sequence > self.last {
                self.last = alert.sequence;
                return Some(Ok(FeedItem::Alert(alert)));
            }
        }
    }
}
