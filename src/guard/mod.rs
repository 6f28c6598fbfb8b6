//! The daemon's core, behind the gRPC face and `callguard run`: live calls of many tenants
//! (streamed or from sound devices) feeding one detection engine, and the dispatcher that turns
//! engine events into call state, durable alerts and updates for subscribers.
//!
//! ```text
//! StreamAudio ─► StreamCall::push ─► IngestPool (bounded, N threads, VAD) ─┐
//! sound device ─► device thread (capture, VAD) ─────────────────────────────┴► Engine
//! Engine events ─► dispatcher ─► CallRegistry (state) ─► StreamAudio updates
//!                            └─► AlertLog (commit) ─► AlertHub ─► StreamAlerts
//! ```

mod device;
mod dispatch;
pub mod ingest;
pub mod registry;
mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

pub use device::{BindError, DeviceSpec};
pub use dispatch::Observer;
pub use ingest::{IngestError, IngestPool, IngestStats};
pub use registry::{
    CallEntry, CallRecord, CallRegistry, CallSource, CallUpdate, Census, ClusterPlace, EndSignal,
    EndedSummary, FrameCounters, RegisterError,
};
pub use stream::{
    AlertFeed, FeedError, FeedItem, FrameError, OpenError, OpenSpec, StreamCall, valid_call_id,
};

use crate::alert::{AlertFilter, AlertHub, AlertLog, StoreError};
use crate::config::Config;
use crate::ops::{Metrics, Readiness};
use crate::pipeline::{Engine, EngineError};

/// Why a voiceprint could not be made or a claim not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("voiceprints need the speaker encoder: set [voice] speaker_model")]
    NoEncoder,
    #[error("no live call {0:?}")]
    NoCall(String),
    #[error("no protected voice {0:?} (callguard enroll)")]
    NoVoiceprint(String),
    #[error("{0}")]
    Audio(String),
    #[error("store: {0}")]
    Store(String),
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// What the guard's parts share with calls, tasks and threads.
pub(crate) struct Shared {
    config: Config,
    engine: RwLock<Option<Engine>>,
    ingest: RwLock<Option<IngestPool>>,
    registry: CallRegistry,
    log: AlertLog,
    hub: AlertHub,
    model: String,
    window_ms: u32,
    stopping: AtomicBool,
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

impl Shared {
    /// The tenant's allowed synthetic voices, read at each call's opening (so `callguard
    /// allow-voice` takes effect on the next call); none without a speaker encoder, or when
    /// the store cannot be read (logged: the call is screened as if none were allowed).
    fn allowed_voices(&self, tenant: &str) -> Arc<[crate::verdict::voice::Voiceprint]> {
        if self.config.voice.speaker_model.is_none() {
            return Arc::from([]);
        }
        match self.log.voices(tenant, "allowed") {
            Ok(v) => v.into(),
            Err(e) => {
                tracing::warn!(tenant, error = %e, "Allowed voices cannot be read; none apply.");
                Arc::from([])
            }
        }
    }

    /// The protected voice a call claims: its `claimed_identity` metadata label, else the
    /// first `[[voice.claims]]` rule its ANI/DNIS match; `None` without a speaker encoder or
    /// claim. A claimed name with no voiceprint is logged and ignored.
    fn claimed_identity(
        &self,
        tenant: &str,
        meta: &crate::alert::CallMeta,
    ) -> Option<Arc<crate::verdict::voice::Voiceprint>> {
        self.config.voice.speaker_model.as_ref()?;
        let matches = |re: &Option<String>, value: &str| {
            re.as_deref()
                .is_none_or(|re| regex::Regex::new(re).is_ok_and(|re| re.is_match(value)))
        };
        let name = meta.labels.get("claimed_identity").cloned().or_else(|| {
            self.config
                .voice
                .claims
                .iter()
                .find(|c| matches(&c.ani, &meta.ani) && matches(&c.dnis, &meta.dnis))
                .map(|c| c.identity.clone())
        })?;
        match self.log.voices(tenant, "protected") {
            Ok(v) => match v.into_iter().find(|v| v.name == name) {
                Some(v) => Some(Arc::new(v)),
                None => {
                    tracing::warn!(
                        tenant,
                        identity = name,
                        "Claimed identity has no voiceprint (callguard enroll); not checked."
                    );
                    None
                }
            },
            Err(e) => {
                tracing::warn!(tenant, error = %e, "Protected voices cannot be read; the claim is not checked.");
                None
            }
        }
    }

    fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> Result<R, EngineError> {
        let engine = self.engine.read().unwrap_or_else(|e| e.into_inner());
        engine.as_ref().map(f).ok_or(EngineError::Stopped)
    }

    fn with_ingest<R>(&self, f: impl FnOnce(&IngestPool) -> R) -> Result<R, IngestError> {
        let ingest = self.ingest.read().unwrap_or_else(|e| e.into_inner());
        ingest.as_ref().map(f).ok_or(IngestError::Stopped)
    }
}

/// The running daemon core.
pub struct Guard {
    shared: Arc<Shared>,
    /// Set once by `callguard run` when `[cluster] nats` is configured.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    devices: Mutex<Vec<(Arc<EndSignal>, JoinHandle<()>)>>,
}

impl Guard {
    /// Loads the models, opens the alert log and starts the workers. `observer` sees every
    /// engine event after the guard has handled it (the CLI prints them).
    pub fn start(config: &Config, observer: Option<Observer>) -> Result<Self, GuardError> {
        let log = AlertLog::open_store(&config.store)?;
        let engine = Engine::start(config)?;
        let ingest = IngestPool::start(
            &engine,
            config.ingest_workers(),
            config.server.ingest_queue_frames,
        )?;
        let events = engine.event_receiver();
        let shared = Arc::new(Shared {
            model: engine.card().id(),
            window_ms: engine.card().window_ms(),
            config: config.clone(),
            engine: RwLock::new(Some(engine)),
            ingest: RwLock::new(Some(ingest)),
            registry: CallRegistry::default(),
            log,
            hub: AlertHub::new(
                config.server.max_subscribers,
                config.server.max_subscribers_per_tenant,
                config.server.subscriber_queue,
            ),
            stopping: AtomicBool::new(false),
            metrics: Arc::default(),
            readiness: Readiness::default(),
        });
        shared.readiness.set_model_loaded(true);
        shared.readiness.set_store_writable(true);
        let dispatcher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("dispatch".into())
                .spawn(move || dispatch::run(&shared, events, observer))
                .map_err(|e| GuardError::Thread("dispatch", e))?
        };
        let guard = Self {
            shared,
            dispatcher: Mutex::new(Some(dispatcher)),
            cluster: std::sync::OnceLock::new(),
            devices: Mutex::default(),
        };
        Ok(guard)
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The detector model, `name@version`.
    pub fn model(&self) -> &str {
        &self.shared.model
    }

    /// Speech the detector needs for one window, in ms.
    pub fn window_ms(&self) -> u32 {
        self.shared.window_ms
    }

    pub fn registry(&self) -> &CallRegistry {
        &self.shared.registry
    }

    pub fn log(&self) -> &AlertLog {
        &self.shared.log
    }

    pub fn hub(&self) -> &AlertHub {
        &self.shared.hub
    }

    /// What the stages do not count themselves (latencies, alerts by kind, connector errors).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Whether the daemon should be sent calls (`/readyz`, the gRPC health service).
    pub fn readiness(&self) -> &Readiness {
        &self.shared.readiness
    }

    /// Runs `f` on the engine (detector statistics); `None` once stopped.
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> Option<R> {
        self.shared.with_engine(f).ok()
    }

    /// Ingest counters; `None` once stopped.
    pub fn ingest_stats(&self) -> Option<Arc<IngestStats>> {
        self.shared.with_ingest(|i| i.stats().clone()).ok()
    }

    /// Opens a streamed call for `tenant`.
    pub fn open_stream(&self, tenant: &str, spec: OpenSpec) -> Result<StreamCall, OpenError> {
        stream::open(&self.shared, tenant, spec)
    }

    /// Starts screening a sound device as the tenant's call, retrying while it is missing when
    /// `wait_for_device`; otherwise a device that cannot be opened now is an error.
    pub fn bind_device(&self, spec: DeviceSpec, wait_for_device: bool) -> Result<(), BindError> {
        let end = Arc::new(EndSignal::default());
        let thread = device::start(self.shared.clone(), spec, end.clone(), wait_for_device)?;
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((end, thread));
        Ok(())
    }

    /// The tenant's live call `call_id` claims to be the protected person `identity` from now on
    /// (its speech so far counts too).
    pub fn claim_identity(
        &self,
        tenant: &str,
        call_id: &str,
        identity: &str,
    ) -> Result<(), ClaimError> {
        if self.shared.config.voice.speaker_model.is_none() {
            return Err(ClaimError::NoEncoder);
        }
        let key = self
            .shared
            .registry
            .key_of(tenant, call_id)
            .ok_or_else(|| ClaimError::NoCall(call_id.to_owned()))?;
        let voice = self
            .shared
            .log
            .voices(tenant, "protected")
            .map_err(|e| ClaimError::Store(e.to_string()))?
            .into_iter()
            .find(|v| v.name == identity)
            .ok_or_else(|| ClaimError::NoVoiceprint(identity.to_owned()))?;
        self.shared
            .with_engine(|e| e.claim(key, Arc::new(voice)))
            .and_then(|r| r)
            .map_err(|e| ClaimError::Store(e.to_string()))
    }

    /// Keeps a voiceprint made from recordings (`EnrollVoice`) by a short-lived engine of the
    /// same config: `kind` is `protected` or `allowed`.
    pub fn enroll_voice(
        &self,
        tenant: &str,
        kind: &str,
        name: &str,
        files: &[std::path::PathBuf],
        min_speech_s: f64,
    ) -> Result<crate::pipeline::VoiceprintMade, ClaimError> {
        if self.shared.config.voice.speaker_model.is_none() {
            return Err(ClaimError::NoEncoder);
        }
        // An engine of its own: the running one's events belong to the dispatcher, and an
        // enrolment is no call of the tenant's.
        let mut config = self.shared.config.clone();
        config.transcribe.enabled = false;
        config.detector.workers = 1;
        let engine = Engine::start(&config).map_err(|e| ClaimError::Store(e.to_string()))?;
        let made = crate::pipeline::voiceprint(&engine, name, files, min_speech_s)
            .map_err(ClaimError::Audio)?;
        self.shared
            .log
            .put_voice(tenant, kind, &made.voice)
            .map_err(|e| ClaimError::Store(e.to_string()))?;
        Ok(made)
    }

    /// Asks the tenant's live call to end; false if there is none.
    pub fn end_call(&self, tenant: &str, call_id: &str) -> bool {
        self.shared
            .registry
            .with_id(tenant, call_id, |e| e.end.end())
            .is_some()
    }

    /// A live call, or else the last ended one with that id.
    pub fn get_call(&self, tenant: &str, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        if let Some(record) = self
            .shared
            .registry
            .with_id(tenant, call_id, |e| e.record())
        {
            return Ok(Some(record));
        }
        self.shared.log.get_call(tenant, call_id)
    }

    pub fn list_calls(&self, tenant: &str) -> Vec<CallRecord> {
        self.shared.registry.list(tenant)
    }

    /// Joins this node to a cluster (once); the gRPC face then answers for the whole cluster.
    pub fn attach_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// The tenant's alerts: those logged after `after` (or only new ones when `None`), then
    /// live ones, caught up from the log whenever the subscriber falls behind.
    pub fn alerts(
        &self,
        tenant: &str,
        filter: AlertFilter,
        after: Option<u64>,
    ) -> Result<AlertFeed, FeedError> {
        stream::AlertFeed::new(self.shared.clone(), tenant, filter, after)
    }

    /// First step of shutting down, for the server to take before it drains its RPCs: every
    /// call is asked to end (streamed calls send their summaries) and alert subscriptions end.
    pub fn begin_shutdown(&self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        shared.readiness.set_stopping();
        shared.registry.end_all();
        shared.hub.close();
    }

    /// Ends every call, scores what was queued, logs the last alerts and summaries, and stops.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        self.begin_shutdown();
        let devices: Vec<_> =
            std::mem::take(&mut *self.devices.lock().unwrap_or_else(|e| e.into_inner()));
        for (end, _) in &devices {
            end.end();
        }
        for (_, thread) in devices {
            let _ = thread.join();
        }
        // Finishes the streamed calls still open.
        if let Some(mut ingest) = shared
            .ingest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            ingest.shutdown();
        }
        // Every call has been closed: wait (bounded) until the dispatcher has logged their ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !shared.registry.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(engine) = shared
            .engine
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            engine.shutdown();
        }
        if let Some(d) = self
            .dispatcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = d.join();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shutdown();
    }
}
