//! Daemon configuration: serde structs with documented defaults, unknown keys reported,
//! and a `validate()` that reports every problem at once.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::assets;
use crate::verdict::{ChannelClass, ClassThresholds};

/// Everything `callguard` can be told; see the shipped `config.toml` for each key's meaning.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub capture: CaptureConfig,
    pub speech: SpeechConfig,
    pub windows: WindowConfig,
    pub detector: DetectorConfig,
    pub verdict: VerdictConfig,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub transcribe: TranscribeConfig,
    pub connectors: ConnectorsConfig,
    pub siprec: SiprecConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub sinks: SinksConfig,
    pub voice: VoiceConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several nodes sharing one alert stream and one view of live calls through NATS
/// JetStream (`src/cluster/`, `docs/cluster.md`). Without `nats` the node is alone, exactly as
/// it has always been: its SQLite store is the whole truth.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClusterConfig {
    /// NATS servers of the cluster (`nats://host:4222`); the client fails over among them.
    /// Empty: a single node.
    pub nats: Vec<String>,
    /// This node's name in the cluster (its calls' owner, its request subject); unique.
    pub node: String,
    /// A file holding the NATS token this node authenticates with (nothing else in it).
    pub token_file: Option<PathBuf>,
    /// Copies JetStream keeps of the alert stream and the buckets (1, or 3 for a 3-server cluster).
    pub replicas: usize,
    /// How often the node says it is alive and writes its live calls' state.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is lost: its calls are ended (node lost). Longer
    /// than a JetStream leader election after a server dies (a few seconds), during which
    /// heartbeats cannot be written.
    pub node_timeout_ms: u64,
    /// How long JetStream drops a republished alert (same id): covers a crash between the
    /// publish and the cursor's commit.
    pub duplicate_window_s: u64,
    /// How long the alert stream keeps alerts.
    pub retention_days: u64,
    /// How long the calls bucket keeps a call's entry after its last write (ended calls stay
    /// in each node's store regardless).
    pub call_history_hours: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: Vec::new(),
            node: String::new(),
            token_file: None,
            replicas: 3,
            heartbeat_ms: 1000,
            node_timeout_ms: 15_000,
            duplicate_window_s: 600,
            retention_days: 30,
            call_history_hours: 24,
        }
    }
}

impl ClusterConfig {
    /// The keys `validate` finds fault with (for tests).
    #[cfg(test)]
    fn validate_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        self.validate(&mut |k: &str, _| keys.push(k.to_owned()));
        keys
    }

    pub fn is_active(&self) -> bool {
        !self.nats.is_empty()
    }

    fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !self.is_active() {
            return;
        }
        for (i, url) in self.nats.iter().enumerate() {
            if !(url.starts_with("nats://") || url.starts_with("tls://"))
                || url.parse::<async_nats::ServerAddr>().is_err()
            {
                bad(
                    &format!("cluster.nats[{i}]"),
                    format!("{url:?} is not a nats:// or tls:// URL"),
                );
            }
        }
        if !valid_name(&self.node) {
            bad(
                "cluster.node",
                format!(
                    "{:?}: name this node (1-64 letters, digits or -_.)",
                    self.node
                ),
            );
        }
        if let Some(f) = &self.token_file
            && !f.is_file()
        {
            bad("cluster.token_file", format!("{} not found", f.display()));
        }
        if !(1..=5).contains(&self.replicas) {
            bad(
                "cluster.replicas",
                format!("{} is outside 1..=5", self.replicas),
            );
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            bad(
                "cluster.heartbeat_ms",
                format!("{} is outside 100..=60000", self.heartbeat_ms),
            );
        }
        if self.node_timeout_ms < 3 * self.heartbeat_ms {
            bad(
                "cluster.node_timeout_ms",
                format!(
                    "{} must be at least three heartbeats ({})",
                    self.node_timeout_ms,
                    3 * self.heartbeat_ms
                ),
            );
        }
        if !(10..=86_400).contains(&self.duplicate_window_s) {
            bad(
                "cluster.duplicate_window_s",
                format!("{} is outside 10..=86400", self.duplicate_window_s),
            );
        }
        if self.retention_days == 0 {
            bad("cluster.retention_days", "must be at least 1".into());
        }
        if !(1..=168).contains(&self.call_history_hours) {
            bad(
                "cluster.call_history_hours",
                format!("{} is outside 1..=168", self.call_history_hours),
            );
        }
    }
}

/// Who is speaking on the caller's channel (`src/verdict/voice.rs`): a speaker encoder embeds
/// every scored window, and a voice that stops matching the call's first seconds of speech
/// raises `VOICE_CHANGED` (a clone taking over from a human, or the phone handed to another).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct VoiceConfig {
    /// The speaker encoder (its sidecar beside it, `.json`); absent: no voice tracking.
    pub speaker_model: Option<PathBuf>,
    /// The cosine between the recent and the reference voice below which it counts as another.
    pub change_below: f32,
    /// Speech windows (0.5 s apart) that make the reference voice: the first of the call, and
    /// the first after each change.
    pub reference_windows: usize,
    /// The latest windows averaged into the recent voice.
    pub recent_windows: usize,
    /// Successive windows below `change_below` before a change is reported.
    pub consecutive: usize,
    /// A window whose cosine with one of the tenant's allowed voices (`callguard allow-voice`)
    /// is at least this (and whose score fits that voice's) is not evidence of a clone.
    pub allow_above: f32,
    /// A call claiming a protected identity (`callguard enroll`) whose voice so far (the mean of
    /// its windows, after `identity_min_windows`) has a cosine below this with the voiceprint
    /// raises `IDENTITY_MISMATCH`.
    pub identity_below: f32,
    pub identity_min_windows: usize,
    /// Calls that claim an identity by their numbers: the first rule whose `ani` and/or `dnis`
    /// regexes match the call's metadata names the protected voice. A `claimed_identity` label
    /// in the call's metadata (gRPC `CallOpen`, connectors) comes first.
    pub claims: Vec<IdentityClaim>,
}

/// `[[voice.claims]]`: e.g. the CFO's extension.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct IdentityClaim {
    /// The protected voice's name (`callguard enroll NAME`).
    pub identity: String,
    #[serde(default)]
    pub ani: Option<String>,
    #[serde(default)]
    pub dnis: Option<String>,
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self {
            speaker_model: None,
            change_below: 0.65,
            reference_windows: 6,
            recent_windows: 4,
            consecutive: 1,
            allow_above: 0.8,
            identity_below: 0.7,
            identity_min_windows: 6,
            claims: Vec::new(),
        }
    }
}

impl VoiceConfig {
    fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if let Some(model) = &self.speaker_model
            && !model.is_file()
        {
            bad(
                "voice.speaker_model",
                format!("{} not found", model.display()),
            );
        }
        for (i, c) in self.claims.iter().enumerate() {
            if c.ani.is_none() && c.dnis.is_none() {
                bad(
                    &format!("voice.claims[{i}]"),
                    "needs ani or dnis (a regex)".into(),
                );
            }
            for (what, re) in [("ani", &c.ani), ("dnis", &c.dnis)] {
                if let Some(re) = re
                    && let Err(e) = regex::Regex::new(re)
                {
                    bad(
                        &format!("voice.claims[{i}].{what}"),
                        format!("is not a regex: {e}"),
                    );
                }
            }
        }
        for (key, v) in [
            ("voice.change_below", self.change_below),
            ("voice.allow_above", self.allow_above),
            ("voice.identity_below", self.identity_below),
        ] {
            if !(-1.0..=1.0).contains(&v) {
                bad(key, format!("{v} is not a cosine in -1..=1"));
            }
        }
        for (key, n, hi) in [
            ("voice.reference_windows", self.reference_windows, 120),
            ("voice.recent_windows", self.recent_windows, 120),
            ("voice.consecutive", self.consecutive, 120),
            ("voice.identity_min_windows", self.identity_min_windows, 120),
        ] {
            if !(1..=hi).contains(&n) {
                bad(key, format!("{n} is outside 1..={hi}"));
            }
        }
    }
}

/// Alert delivery to a SOC (`src/sinks/`): every alert the log commits goes to each sink in
/// order, from a cursor kept in the alert log, retried with backoff until it is taken, so a
/// receiver that is down, or a restart of callguard, loses nothing.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SinksConfig {
    pub webhook: Vec<WebhookSinkConfig>,
    pub syslog: Vec<SyslogSinkConfig>,
}

/// Each alert POSTed as JSON, signed with HMAC-SHA256.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct WebhookSinkConfig {
    /// Names the sink's cursor in the alert log, its metrics and `callguard sinks status`.
    pub name: String,
    /// `https://...` (or `http://` on a private network).
    pub url: String,
    /// The HMAC key: an environment variable's value, or a file's first line.
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM roots that the receiver's certificate must chain to; absent: the Mozilla roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Tenants whose alerts go here; empty: every tenant's.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// One attempt's time limit.
    #[serde(default = "default_sink_timeout_ms")]
    pub timeout_ms: u64,
    /// First wait after a failed attempt; doubles up to `retry_max_ms`.
    #[serde(default = "default_sink_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_sink_retry_max_ms")]
    pub retry_max_ms: u64,
}

/// Each alert as an RFC 5424 syslog message carrying CEF, over TCP or TLS (octet-counted frames,
/// RFC 6587 / RFC 5425), for SIEMs that take only syslog.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SyslogSinkConfig {
    pub name: String,
    /// `host:port` of the collector (rsyslog, syslog-ng, a SIEM's listener).
    pub address: String,
    /// TLS (RFC 5425); the collector's certificate is checked against `ca`, or the Mozilla
    /// roots.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Syslog facility, 0-23 (default 13, log audit).
    #[serde(default = "default_syslog_facility")]
    pub facility: u8,
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default = "default_sink_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_sink_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_sink_retry_max_ms")]
    pub retry_max_ms: u64,
}

pub const DEFAULT_SINK_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_SINK_RETRY_INITIAL_MS: u64 = 1_000;
pub const DEFAULT_SINK_RETRY_MAX_MS: u64 = 60_000;
const fn default_sink_timeout_ms() -> u64 {
    DEFAULT_SINK_TIMEOUT_MS
}
const fn default_sink_retry_initial_ms() -> u64 {
    DEFAULT_SINK_RETRY_INITIAL_MS
}
const fn default_sink_retry_max_ms() -> u64 {
    DEFAULT_SINK_RETRY_MAX_MS
}
const fn default_syslog_facility() -> u8 {
    13
}

impl SinksConfig {
    fn resolve_paths(&mut self, base: Option<&Path>) {
        let Some(base) = base else { return };
        let beside = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for w in &mut self.webhook {
            for f in [&mut w.secret_file, &mut w.ca].into_iter().flatten() {
                beside(f);
            }
        }
        for s in &mut self.syslog {
            if let Some(f) = &mut s.ca {
                beside(f);
            }
        }
    }

    fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        let mut names = std::collections::HashSet::new();
        let mut name_ok = |key: &str, name: &str, bad: &mut dyn FnMut(&str, String)| {
            if !valid_name(name) || !names.insert(name.to_owned()) {
                bad(
                    &format!("{key}.name"),
                    format!("{name:?} is not 1-64 letters, digits or -_., or names two sinks"),
                );
            } else if name == crate::cluster::PUBLISHER {
                bad(
                    &format!("{key}.name"),
                    format!("{name:?} is the cluster publisher's cursor; choose another"),
                );
            }
        };
        let retry =
            |key: &str, initial: u64, max: u64, timeout: u64, bad: &mut dyn FnMut(&str, String)| {
                if initial == 0 || initial > max {
                    bad(
                        &format!("{key}.retry_initial_ms"),
                        format!("{initial} must be positive and at most retry_max_ms ({max})"),
                    );
                }
                if !(100..=600_000).contains(&timeout) {
                    bad(
                        &format!("{key}.timeout_ms"),
                        format!("{timeout} is outside 100..=600000"),
                    );
                }
            };
        for (i, w) in self.webhook.iter().enumerate() {
            let key = format!("sinks.webhook[{i}]");
            name_ok(&key, &w.name, bad);
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) || w.url.len() < 10
            {
                bad(
                    &format!("{key}.url"),
                    format!("{:?} is not an http(s):// URL", w.url),
                );
            }
            if let Err(m) = read_secret(w.secret_env.as_deref(), w.secret_file.as_deref()) {
                bad(&format!("{key}.secret_env"), m);
            }
            retry(&key, w.retry_initial_ms, w.retry_max_ms, w.timeout_ms, bad);
        }
        for (i, s) in self.syslog.iter().enumerate() {
            let key = format!("sinks.syslog[{i}]");
            name_ok(&key, &s.name, bad);
            if s.address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                bad(
                    &format!("{key}.address"),
                    format!("{:?} is not host:port", s.address),
                );
            }
            if s.facility > 23 {
                bad(
                    &format!("{key}.facility"),
                    format!("{} is outside 0..=23", s.facility),
                );
            }
            retry(&key, s.retry_initial_ms, s.retry_max_ms, s.timeout_ms, bad);
        }
    }
}

/// The operations HTTP listener (`src/ops/`): `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpConfig {
    /// Address to listen on, e.g. "127.0.0.1:9464"; absent: no operations listener. It needs
    /// no token (it shows counts, never audio, transcripts or call ids): bind it to a
    /// management network.
    pub listen: Option<SocketAddr>,
}

/// How the daemon logs (to stderr).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    /// "text" (human-readable, colour on a terminal) or "json" (one JSON object per line,
    /// with the event's fields such as `call_id` and `tenant`, for a log shipper).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Live capture from sound devices (`callguard run`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CaptureConfig {
    /// Input devices to screen, one call each. Empty: the host's default input device.
    pub devices: Vec<CaptureDevice>,
    /// Capacity of the lock-free queue between the audio callback and the pipeline.
    pub queue_ms: u32,
    /// First delay before rebuilding a failed or vanished device stream; doubles up to `max`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

/// One capture device and which of its channels carries the caller.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CaptureDevice {
    /// Device name as `callguard devices` prints it; "default" for the host default.
    pub name: String,
    /// Channel that carries the caller (0-based); absent: all channels are mixed.
    #[serde(default)]
    pub caller_channel: Option<u16>,
    /// Call id used in verdicts and logs; defaults to the device name.
    #[serde(default)]
    pub call_id: Option<String>,
    /// Tenant that owns the device's calls (sees them over gRPC); defaults to `local`.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// The gRPC server (`callguard run`): call audio in, verdicts and alerts out.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on, e.g. "127.0.0.1:50051"; absent: no gRPC server.
    pub listen: Option<SocketAddr>,
    /// Clients, one bearer token each; a tenant sees and controls only its own calls.
    pub tenants: Vec<TenantConfig>,
    /// TLS for the server; absent: plaintext (keep `listen` on loopback then).
    pub tls: Option<TlsConfig>,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most audio in one `StreamAudio` chunk, in milliseconds.
    pub max_frame_ms: u32,
    /// Audio a call may send faster than real time: this many seconds of audio per second...
    pub max_speed: f32,
    /// ...after a burst of up to this much audio, in milliseconds.
    pub burst_ms: u32,
    /// Live calls per tenant (streamed and device-bound together).
    pub max_calls_per_tenant: usize,
    /// `StreamAlerts` subscribers (and supervisor pages) over all tenants...
    pub max_subscribers: usize,
    /// ...and of one tenant, so one tenant's clients cannot take every place.
    pub max_subscribers_per_tenant: usize,
    /// Live alerts queued per subscriber before it is sent a lag and caught up from the log.
    pub subscriber_queue: usize,
    /// Threads that run streamed calls' speech gating and windowing; 0 = one per CPU core.
    pub ingest_workers: usize,
    /// Audio chunks queued per ingest worker; a chunk that does not fit is lost and counted.
    pub ingest_queue_frames: usize,
    /// A suspected-clone alert is CRITICAL at or above this fused probability, WARNING below.
    pub critical_p_spoof: f32,
}

/// One tenant and the SHA-256 of its bearer token (`callguard token` makes both).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TenantConfig {
    pub name: String,
    /// Lowercase hex SHA-256 of the token; the token itself is never stored.
    pub token_sha256: String,
}

/// Server certificate, and a client CA for mutual TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TlsConfig {
    /// PEM certificate chain and private key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA that client certificates must chain to; absent: no client certificates asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The durable log of alerts and call summaries (SQLite, WAL). Call audio is never stored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct StoreConfig {
    /// Database file; relative paths are beside the config file.
    pub path: PathBuf,
    /// Alerts and call summaries older than this are deleted, in days.
    pub retention_days: u32,
    /// 32 random bytes as 64 hex characters (`openssl rand -hex 32`): transcripts, cues and
    /// acknowledgement notes are encrypted in the log with it (`src/alert/seal.rs`). Relative
    /// paths are beside the config file. Absent: stored redacted but not encrypted.
    pub encryption_key_file: Option<PathBuf>,
}

/// Speech gating (Silero VAD) so silence, tones and hold music are not scored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct SpeechConfig {
    /// Silero VAD ONNX model; relative paths are looked up beside the project.
    pub vad_model: PathBuf,
    /// A 32 ms frame starts speech when its VAD probability reaches this.
    pub start_threshold: f32,
    /// Speech continues while the probability stays at or above this.
    pub continue_threshold: f32,
    /// Frames after speech ends that are still kept (short pauses inside a sentence).
    pub hangover_ms: u32,
    /// A frame whose level (RMS, dB full scale) is below this is silence without asking the VAD
    /// (the caller's channel is quiet while the agent talks); `-200` asks the VAD about every frame.
    pub energy_floor_dbfs: f32,
    /// Outside speech, a frame less than this many dB above the call's noise level (tracked per
    /// call) is silence without asking the VAD; 0 asks the VAD about every frame over the floor.
    pub noise_margin_db: f32,
    /// 8 kHz calls are gated by the VAD's own 8 kHz mode on the call's audio (cheaper, and no
    /// upsampled band); false: every call at 16 kHz.
    pub narrowband_vad: bool,
}

/// Sliding windows over gated speech.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct WindowConfig {
    /// New speech between two windows of one call.
    pub hop_ms: u32,
    /// A call that ends with less speech than a window is still scored once if it had this much
    /// (the speech is repeated to fill the window); 0 disables.
    pub min_final_speech_ms: u32,
}

/// What happens when a bounded queue is full.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Drop the new item and count it (live audio: never stall capture).
    DropNewest,
    /// Wait for room (recorded audio: nothing is lost, the reader slows down).
    Block,
}

/// The ONNX detector and its worker pool.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct DetectorConfig {
    /// The model; its sidecar is the same path with `.json`.
    pub model: PathBuf,
    /// Detector worker threads, each with its own ONNX Runtime session. 0: one per core.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Most windows (of any calls) scored in one model run.
    pub max_batch: usize,
    /// How long a worker holding fewer than `max_batch` windows waits for more before it runs
    /// the model (0: it runs on what is queued).
    pub batch_wait_ms: u32,
    /// Windows waiting for a worker, over all calls.
    pub queue_windows: usize,
    /// What live calls do when the window queue is full (`scan` and `eval` always block).
    pub when_full: WhenFull,
    /// Run the sidecar's cascade (a cheap first stage in front of the model) when it has one;
    /// false: the model scores every window.
    pub cascade: bool,
}

/// Evidence fusion, hysteresis and debounce.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct VerdictConfig {
    /// Spoof probability at which a call becomes suspected, for every channel class that has
    /// no threshold of its own; absent: the model's calibrated threshold (per class).
    pub enter_threshold: Option<f32>,
    /// `[verdict.enter_thresholds]`: the enter threshold of one channel class (`wideband`,
    /// `narrowband_g711`, `narrowband_lossy`); above every other source.
    pub enter_thresholds: ClassThresholds,
    /// A calibration (`callguard calibrate` writes one): its `[verdict.enter_thresholds]` are
    /// read at load, below this file's own `[verdict.enter_thresholds]`. Relative paths are
    /// beside the config file.
    pub thresholds_file: Option<PathBuf>,
    /// The class of narrowband audio that is not G.711-coded (PCM below 16 kHz):
    /// `narrowband_g711`, or `narrowband_lossy` where the upstream is GSM, AMR or Opus.
    pub narrowband_class: ChannelClass,
    /// The thresholds read from `thresholds_file` (by [`Config::load`] or
    /// [`Config::read_thresholds_file`]).
    #[serde(skip)]
    pub file_thresholds: ClassThresholds,
    /// A suspected call is cleared when the fused probability falls below this.
    pub exit_threshold: f32,
    /// Windows averaged (in log-odds) into the fused probability.
    pub smoothing_windows: usize,
    /// Consecutive fused scores above the enter threshold before an alert is raised.
    pub enter_windows: usize,
    /// Consecutive fused scores below the exit threshold before the call is cleared.
    pub exit_windows: usize,
}

pub const DEFAULT_QUEUE_MS: u32 = 2_000;
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 250;
pub const DEFAULT_RETRY_MAX_MS: u64 = 10_000;
pub const DEFAULT_VAD_MODEL: &str = ".deps/silero_vad.onnx";
pub const DEFAULT_DETECTOR_MODEL: &str = "models/detector.onnx";
pub const DEFAULT_WHISPER_MODEL: &str = ".deps/whisper/ggml-tiny.en.bin";
pub const DEFAULT_STORE_PATH: &str = "state/callguard.db";

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tenants: Vec::new(),
            tls: None,
            max_message_bytes: 1 << 20,
            max_frame_ms: 1_000,
            max_speed: 4.0,
            burst_ms: 30_000,
            max_calls_per_tenant: 1_000,
            max_subscribers: 64,
            max_subscribers_per_tenant: 32,
            subscriber_queue: 256,
            ingest_workers: 0,
            ingest_queue_frames: 8_192,
            critical_p_spoof: 0.9,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_STORE_PATH),
            retention_days: 90,
            encryption_key_file: None,
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            queue_ms: DEFAULT_QUEUE_MS,
            retry_initial_ms: DEFAULT_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
        }
    }
}

impl Default for SpeechConfig {
    fn default() -> Self {
        Self {
            vad_model: PathBuf::from(DEFAULT_VAD_MODEL),
            start_threshold: 0.5,
            continue_threshold: 0.35,
            hangover_ms: 160,
            energy_floor_dbfs: -60.0,
            noise_margin_db: 6.0,
            narrowband_vad: true,
        }
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            hop_ms: 500,
            min_final_speech_ms: 400,
        }
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from(DEFAULT_DETECTOR_MODEL),
            workers: 0,
            intra_threads: 1,
            max_batch: 16,
            batch_wait_ms: 0,
            queue_windows: 256,
            when_full: WhenFull::DropNewest,
            cascade: true,
        }
    }
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            enter_threshold: None,
            enter_thresholds: ClassThresholds::default(),
            thresholds_file: None,
            narrowband_class: ChannelClass::NarrowbandG711,
            file_thresholds: ClassThresholds::default(),
            exit_threshold: 0.3,
            smoothing_windows: 4,
            enter_windows: 2,
            exit_windows: 4,
        }
    }
}

/// What a missing or unloadable optional model does at startup.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Log a warning and run without the feature.
    Warn,
    /// Refuse to start.
    Error,
}

/// Transcription of the caller (whisper.cpp), cues and redaction.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TranscribeConfig {
    pub enabled: bool,
    /// ggml Whisper model (scripts/setup.sh converts tiny.en from PyPI).
    pub model: PathBuf,
    pub on_missing: OnMissing,
    /// Language spoken ("en" for an English-only model).
    pub language: String,
    /// Worker threads, and whisper threads in each: the CPU budget in cores is their product.
    pub workers: usize,
    pub threads_per_worker: usize,
    /// Most speech waiting for a worker, over all calls, in seconds.
    pub queue_s: u32,
    /// A live call's segment waiting longer than this is skipped (and counted).
    pub max_wait_s: u32,
    /// Speech segments shorter than this are not transcribed; longer than max are cut.
    pub min_segment_ms: u32,
    pub max_segment_ms: u32,
    /// Seconds of transcript before an alert that travel with it.
    pub snippet_s: u32,
    /// Segments kept per call (the oldest are let go and counted).
    pub transcript_limit: usize,
    /// Cues said within this many seconds of audio count toward a call's intent.
    pub cue_window_s: u32,
    /// A suspected call is escalated once when the caller's intent (from cues) reaches this.
    pub escalate_intent: f32,
    /// Phrase rules; see src/transcribe/cues.rs.
    pub cues: Vec<crate::transcribe::CueRule>,
}

impl Default for TranscribeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: PathBuf::from(DEFAULT_WHISPER_MODEL),
            on_missing: OnMissing::Warn,
            language: "en".into(),
            workers: 1,
            threads_per_worker: 1,
            queue_s: 120,
            max_wait_s: 20,
            min_segment_ms: 300,
            max_segment_ms: 8_000,
            snippet_s: 15,
            transcript_limit: 200,
            cue_window_s: 120,
            escalate_intent: 0.5,
            cues: crate::transcribe::cues::default_rules(),
        }
    }
}

impl TranscribeConfig {
    fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !self.enabled {
            return;
        }
        if self.language.len() < 2
            || self.language.len() > 3
            || !self.language.chars().all(|c| c.is_ascii_lowercase())
        {
            bad(
                "transcribe.language",
                format!(
                    "{:?} is not an ISO 639-1 code such as \"en\"",
                    self.language
                ),
            );
        }
        let u = |v: u32| u64::from(v);
        for (key, v, range) in [
            ("transcribe.workers", self.workers as u64, 1..=64),
            (
                "transcribe.threads_per_worker",
                self.threads_per_worker as u64,
                1..=16,
            ),
            (
                "transcribe.transcript_limit",
                self.transcript_limit as u64,
                1..=100_000,
            ),
            ("transcribe.queue_s", u(self.queue_s), 1..=3_600),
            ("transcribe.max_wait_s", u(self.max_wait_s), 1..=3_600),
            (
                "transcribe.min_segment_ms",
                u(self.min_segment_ms),
                100..=10_000,
            ),
            (
                "transcribe.max_segment_ms",
                u(self.max_segment_ms),
                1_000..=30_000,
            ),
            ("transcribe.snippet_s", u(self.snippet_s), 0..=600),
            ("transcribe.cue_window_s", u(self.cue_window_s), 1..=86_400),
        ] {
            if !range.contains(&v) {
                bad(key, format!("{v} is outside {range:?}"));
            }
        }
        if self.min_segment_ms > self.max_segment_ms {
            bad(
                "transcribe.min_segment_ms",
                format!(
                    "{} is above transcribe.max_segment_ms ({})",
                    self.min_segment_ms, self.max_segment_ms
                ),
            );
        }
        if self.queue_s as u64 * 1000 < self.max_segment_ms as u64 {
            bad(
                "transcribe.queue_s",
                format!(
                    "{} s cannot hold one segment of transcribe.max_segment_ms ({} ms)",
                    self.queue_s, self.max_segment_ms
                ),
            );
        }
        if !(self.escalate_intent > 0.0 && self.escalate_intent <= 1.0) {
            bad(
                "transcribe.escalate_intent",
                format!("{} is outside (0, 1]", self.escalate_intent),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.cues.iter().enumerate() {
            let key = format!("transcribe.cues[{i}]");
            if rule.name.trim().is_empty() || !names.insert(rule.name.as_str()) {
                bad(
                    &format!("{key}.name"),
                    format!("{:?} is empty or repeated", rule.name),
                );
            }
            if !(rule.weight > 0.0 && rule.weight <= 1.0) {
                bad(
                    &format!("{key}.weight"),
                    format!("{} is outside (0, 1]", rule.weight),
                );
            }
            if rule.phrases.is_empty()
                || rule
                    .phrases
                    .iter()
                    .any(|p| !p.chars().any(char::is_alphanumeric))
            {
                bad(
                    &format!("{key}.phrases"),
                    "must list phrases, each with at least one word".into(),
                );
            }
        }
    }
}

/// What `verdict.thresholds_file` may hold: a config fragment with only
/// `[verdict.enter_thresholds]`.
#[derive(Debug, Default, Deserialize)]
struct ThresholdsFile {
    #[serde(default)]
    verdict: ThresholdsFileVerdict,
}

#[derive(Debug, Default, Deserialize)]
struct ThresholdsFileVerdict {
    #[serde(default)]
    enter_thresholds: ClassThresholds,
}

const UNKNOWN_KEY: &str = "unknown key (not a callguard setting; config.toml lists them all)";

/// Parses TOML into `T`, collecting the keys `T` does not know (`detector.workerz`,
/// `transcribe.cues.0.nmae`) instead of stopping at the first: serde's `deny_unknown_fields`
/// would stop there, and the README promises every problem at once.
fn parse_collecting<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<(T, Vec<String>), String> {
    let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(de, |path| {
        // serde_ignored writes an optional table's level as `?` (`server.tls.?.cert`).
        unknown.push(
            path.to_string()
                .replace(".?.", ".")
                .replace("?.", ".")
                .replace('?', ""),
        )
    })
    .map_err(|e| e.to_string())?;
    Ok((value, unknown))
}

/// One thing wrong with a configuration, named by its key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for callguard: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n  {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl Config {
    /// Reads, parses and validates a config file; relative model paths are resolved against the
    /// file's folder first, then the project's usual places.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // A TOML syntax error or a value of the wrong type stops parsing; unknown keys do not,
        // and are reported with every other problem.
        let (mut config, unknown) =
            parse_collecting::<Self>(&text).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        config.resolve_paths(path.parent());
        let mut problems: Vec<ConfigProblem> = unknown
            .into_iter()
            .map(|key| ConfigProblem {
                key,
                message: UNKNOWN_KEY.into(),
            })
            .collect();
        problems.extend(config.read_thresholds_file());
        problems.extend(config.validate().err().unwrap_or_default());
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// Reads `verdict.thresholds_file` (if set) into `verdict.file_thresholds`; returns what is
    /// wrong with it. The file is a config fragment of which only `[verdict.enter_thresholds]`
    /// may be set (what `callguard calibrate` writes).
    pub fn read_thresholds_file(&mut self) -> Vec<ConfigProblem> {
        const KEY: &str = "verdict.thresholds_file";
        self.verdict.file_thresholds = ClassThresholds::default();
        let Some(path) = &self.verdict.thresholds_file else {
            return Vec::new();
        };
        let problem = |message: String| ConfigProblem {
            key: KEY.into(),
            message: format!("{}: {message}", path.display()),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return vec![problem(format!("cannot read it: {e}"))],
        };
        let file: ThresholdsFile = match parse_collecting(&text) {
            Ok((f, unknown)) if unknown.is_empty() => f,
            Ok((_, unknown)) => {
                return vec![problem(format!(
                    "not a thresholds file (only [verdict.enter_thresholds] may be set): {}",
                    unknown.join(", ")
                ))];
            }
            Err(e) => {
                return vec![problem(format!(
                    "not a thresholds file (only [verdict.enter_thresholds] may be set): {e}"
                ))];
            }
        };
        let thresholds = file.verdict.enter_thresholds;
        let mut problems: Vec<_> = thresholds
            .not_probabilities()
            .into_iter()
            .map(|(class, t)| {
                problem(format!(
                    "verdict.enter_thresholds.{class} {t} is not a probability strictly between 0 and 1"
                ))
            })
            .collect();
        if thresholds.is_empty() {
            problems.push(problem("sets no [verdict.enter_thresholds]".into()));
        }
        if problems.is_empty() {
            self.verdict.file_thresholds = thresholds;
        }
        problems
    }

    /// Parses TOML without validating; unknown keys are an error that names them all.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let (config, unknown) = parse_collecting::<Self>(text)?;
        if unknown.is_empty() {
            Ok(config)
        } else {
            Err(unknown
                .iter()
                .map(|k| format!("{k}: {UNKNOWN_KEY}"))
                .collect::<Vec<_>>()
                .join("; "))
        }
    }

    /// Makes relative model paths absolute where the file can be found, and the store and TLS
    /// files relative to the config file's folder.
    pub fn resolve_paths(&mut self, base: Option<&Path>) {
        for path in [
            &mut self.speech.vad_model,
            &mut self.detector.model,
            &mut self.transcribe.model,
        ] {
            if let Some(found) = assets::locate(path, base) {
                *path = found;
            }
        }
        // The speaker encoder is found like the detector (beside the config, or the project's).
        if let Some(path) = &mut self.voice.speaker_model
            && let Some(found) = assets::locate(path, base)
        {
            *path = found;
        }
        let Some(base) = base else { return };
        let beside = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        beside(&mut self.store.path);
        if let Some(k) = &mut self.store.encryption_key_file {
            beside(k);
        }
        if let Some(t) = &mut self.verdict.thresholds_file {
            beside(t);
        }
        if let Some(tls) = &mut self.server.tls {
            beside(&mut tls.cert);
            beside(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                beside(ca);
            }
        }
        self.connectors.resolve_paths(Some(base));
        self.sinks.resolve_paths(Some(base));
        if let Some(tls) = &mut self.siprec.tls {
            beside(&mut tls.cert);
            beside(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                beside(ca);
            }
        }
    }

    /// Number of ingest workers after `0 = one per core` is applied.
    pub fn ingest_workers(&self) -> usize {
        match self.server.ingest_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Number of detector workers after `0 = one per core` is applied.
    pub fn detector_workers(&self) -> usize {
        if self.detector.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.detector.workers
        }
    }

    /// Every problem in the configuration, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.to_owned(),
                message,
            })
        };
        let c = &self.capture;
        if !(20..=60_000).contains(&c.queue_ms) {
            bad(
                "capture.queue_ms",
                format!("{} is outside 20..=60000", c.queue_ms),
            );
        }
        if c.retry_initial_ms == 0 || c.retry_initial_ms > c.retry_max_ms {
            bad(
                "capture.retry_initial_ms",
                format!(
                    "{} must be positive and at most capture.retry_max_ms ({})",
                    c.retry_initial_ms, c.retry_max_ms
                ),
            );
        }
        for (i, d) in c.devices.iter().enumerate() {
            if d.name.trim().is_empty() {
                bad(&format!("capture.devices[{i}].name"), "is empty".into());
            }
            if let Some(ch) = d.caller_channel
                && ch > 63
            {
                bad(
                    &format!("capture.devices[{i}].caller_channel"),
                    format!("{ch} is not a plausible channel index (0..=63)"),
                );
            }
        }
        let s = &self.speech;
        for (key, v) in [
            ("speech.start_threshold", s.start_threshold),
            ("speech.continue_threshold", s.continue_threshold),
        ] {
            if !(v > 0.0 && v < 1.0) {
                bad(
                    key,
                    format!("{v} is not a probability strictly between 0 and 1"),
                );
            }
        }
        if s.continue_threshold > s.start_threshold {
            bad(
                "speech.continue_threshold",
                format!(
                    "{} is above speech.start_threshold ({})",
                    s.continue_threshold, s.start_threshold
                ),
            );
        }
        if !(-200.0..=-20.0).contains(&s.energy_floor_dbfs) {
            bad(
                "speech.energy_floor_dbfs",
                format!(
                    "{} is outside -200..=-20 (dB full scale)",
                    s.energy_floor_dbfs
                ),
            );
        }
        if !(0.0..=30.0).contains(&s.noise_margin_db) {
            bad(
                "speech.noise_margin_db",
                format!("{} is outside 0..=30 (dB)", s.noise_margin_db),
            );
        }
        if s.hangover_ms > 5_000 {
            bad(
                "speech.hangover_ms",
                format!("{} is above 5000", s.hangover_ms),
            );
        }
        if !s.vad_model.is_file() {
            bad(
                "speech.vad_model",
                format!(
                    "{} not found (run scripts/setup.sh to fetch it)",
                    s.vad_model.display()
                ),
            );
        }
        let w = &self.windows;
        if !(32..=10_000).contains(&w.hop_ms) {
            bad(
                "windows.hop_ms",
                format!("{} is outside 32..=10000", w.hop_ms),
            );
        }
        if w.min_final_speech_ms > 10_000 {
            bad(
                "windows.min_final_speech_ms",
                format!("{} is above 10000", w.min_final_speech_ms),
            );
        }
        let d = &self.detector;
        if !d.model.is_file() {
            bad("detector.model", format!("{} not found", d.model.display()));
        }
        if d.workers > 256 {
            bad("detector.workers", format!("{} is above 256", d.workers));
        }
        if !(1..=64).contains(&d.intra_threads) {
            bad(
                "detector.intra_threads",
                format!("{} is outside 1..=64", d.intra_threads),
            );
        }
        if !(1..=1024).contains(&d.max_batch) {
            bad(
                "detector.max_batch",
                format!("{} is outside 1..=1024", d.max_batch),
            );
        }
        if d.batch_wait_ms > 1_000 {
            bad(
                "detector.batch_wait_ms",
                format!("{} is over 1000 (it delays every alert)", d.batch_wait_ms),
            );
        }
        if !(1..=1_000_000).contains(&d.queue_windows) {
            bad(
                "detector.queue_windows",
                format!("{} is outside 1..=1000000", d.queue_windows),
            );
        }
        let v = &self.verdict;
        if let Some(t) = v.enter_threshold
            && !(t > 0.0 && t < 1.0)
        {
            bad(
                "verdict.enter_threshold",
                format!("{t} is not a probability strictly between 0 and 1"),
            );
        }
        if !(v.exit_threshold > 0.0 && v.exit_threshold < 1.0) {
            bad(
                "verdict.exit_threshold",
                format!(
                    "{} is not a probability strictly between 0 and 1",
                    v.exit_threshold
                ),
            );
        }
        if let Some(t) = v.enter_threshold
            && v.exit_threshold > t
        {
            bad(
                "verdict.exit_threshold",
                format!(
                    "{} is above verdict.enter_threshold ({t})",
                    v.exit_threshold
                ),
            );
        }
        for (class, t) in v.enter_thresholds.iter() {
            let key = format!("verdict.enter_thresholds.{class}");
            if !(t > 0.0 && t < 1.0) {
                bad(
                    &key,
                    format!("{t} is not a probability strictly between 0 and 1"),
                );
            } else if v.exit_threshold > t {
                bad(
                    "verdict.exit_threshold",
                    format!("{} is above {key} ({t})", v.exit_threshold),
                );
            }
        }
        if v.narrowband_class == ChannelClass::Wideband {
            bad(
                "verdict.narrowband_class",
                "must be narrowband_g711 or narrowband_lossy".into(),
            );
        }
        self.validate_server(&mut bad);
        self.transcribe.validate(&mut bad);
        self.connectors.validate(&mut bad);
        self.siprec.validate(&mut bad);
        self.sinks.validate(&mut bad);
        self.voice.validate(&mut bad);
        self.cluster.validate(&mut bad);
        for (key, n) in [
            ("verdict.smoothing_windows", v.smoothing_windows),
            ("verdict.enter_windows", v.enter_windows),
            ("verdict.exit_windows", v.exit_windows),
        ] {
            if !(1..=1000).contains(&n) {
                bad(key, format!("{n} is outside 1..=1000"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl Config {
    fn validate_server(&self, bad: &mut impl FnMut(&str, String)) {
        let s = &self.server;
        if s.listen.is_some() && s.tenants.is_empty() {
            bad(
                "server.tenants",
                "is empty, so no client could authenticate (add one with `callguard token`)".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, t) in s.tenants.iter().enumerate() {
            if !valid_name(&t.name) {
                bad(
                    &format!("server.tenants[{i}].name"),
                    format!("{:?} is not 1-64 letters, digits or -_.", t.name),
                );
            }
            if !names.insert(&t.name) {
                bad(
                    &format!("server.tenants[{i}].name"),
                    format!("{:?} is listed twice", t.name),
                );
            }
            let h = &t.token_sha256;
            if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                bad(
                    &format!("server.tenants[{i}].token_sha256"),
                    "is not 64 lowercase hex digits".into(),
                );
            } else if !hashes.insert(h) {
                bad(
                    &format!("server.tenants[{i}].token_sha256"),
                    "is the same token as another tenant's".into(),
                );
            }
        }
        if let Some(tls) = &s.tls {
            let ca = tls.client_ca.iter().map(|p| ("server.tls.client_ca", p));
            for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)]
                .into_iter()
                .chain(ca)
            {
                if !path.is_file() {
                    bad(key, format!("{} not found", path.display()));
                }
            }
        }
        for (key, v, lo, hi) in [
            (
                "server.max_message_bytes",
                s.max_message_bytes,
                1_024,
                64 << 20,
            ),
            ("server.max_frame_ms", s.max_frame_ms as usize, 1, 10_000),
            ("server.burst_ms", s.burst_ms as usize, 0, 3_600_000),
            (
                "server.max_calls_per_tenant",
                s.max_calls_per_tenant,
                1,
                1_000_000,
            ),
            ("server.max_subscribers", s.max_subscribers, 1, 100_000),
            (
                "server.max_subscribers_per_tenant",
                s.max_subscribers_per_tenant,
                1,
                100_000,
            ),
            ("server.subscriber_queue", s.subscriber_queue, 1, 1_000_000),
            ("server.ingest_workers", s.ingest_workers, 0, 256),
            (
                "server.ingest_queue_frames",
                s.ingest_queue_frames,
                1,
                10_000_000,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                bad(key, format!("{v} is outside {lo}..={hi}"));
            }
        }
        if !(s.max_speed >= 1.0 && s.max_speed <= 1_000.0) {
            bad(
                "server.max_speed",
                format!("{} is outside 1..=1000", s.max_speed),
            );
        }
        if !(s.critical_p_spoof > 0.0 && s.critical_p_spoof <= 1.0) {
            bad(
                "server.critical_p_spoof",
                format!("{} is not a probability in (0, 1]", s.critical_p_spoof),
            );
        }
        for (i, d) in self.capture.devices.iter().enumerate() {
            if let Some(t) = &d.tenant
                && !valid_name(t)
            {
                bad(
                    &format!("capture.devices[{i}].tenant"),
                    format!("{t:?} is not 1-64 letters, digits or -_."),
                );
            }
        }
        if self.store.retention_days == 0 {
            bad("store.retention_days", "must be at least 1".into());
        }
        if let Some(k) = &self.store.encryption_key_file
            && let Err(e) = crate::alert::Sealer::from_file(k)
        {
            bad("store.encryption_key_file", e.to_string());
        }
        if self.store.path.as_os_str().is_empty() {
            bad("store.path", "is empty".into());
        }
    }
}

/// Cloud contact-center connectors (`src/connect/`): Twilio Media Streams and Genesys AudioHook
/// on an HTTP/WebSocket listener, Asterisk AudioSocket on TCP listeners of their own. Each session becomes a call
/// as `StreamAudio` would open it, under the `[server]` limits (calls per tenant, frame size,
/// speed). Absent: no connector runs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConnectorsConfig {
    /// HTTP/WebSocket address (Twilio at `/twilio/TENANT`, AudioHook at `/audiohook/TENANT`);
    /// absent: no WebSocket listener.
    pub listen: Option<SocketAddr>,
    /// The origin the platforms dial, e.g. "wss://callguard.example.com": Twilio signs the URL
    /// it connects to, which a proxy in front may change. Absent: `ws(s)://` + the Host header.
    pub public_url: Option<String>,
    /// TLS for the WebSocket listener (rustls); absent: plaintext (terminate TLS in front).
    pub tls: Option<TlsConfig>,
    /// Largest WebSocket text message taken, in bytes; a larger one closes the session.
    pub max_text_bytes: usize,
    /// A session that sends nothing for this long is closed and its call ended, in seconds.
    pub idle_timeout_s: u32,
    /// Replies and inline alerts queued for one session before it is closed as stuck.
    pub outbound_queue: usize,
    /// Twilio Media Streams, one entry per tenant.
    pub twilio: Vec<TwilioTenantConfig>,
    /// Asterisk AudioSocket listeners, each owned by one tenant.
    pub audiosocket: Vec<AudioSocketConfig>,
    /// Genesys Cloud AudioHook Monitor integrations, one entry per tenant.
    pub audiohook: Vec<AudioHookTenantConfig>,
}

pub const DEFAULT_CONNECTOR_MAX_TEXT_BYTES: usize = 64 << 10;
pub const DEFAULT_CONNECTOR_IDLE_TIMEOUT_S: u32 = 30;
pub const DEFAULT_CONNECTOR_OUTBOUND_QUEUE: usize = 64;

impl Default for ConnectorsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public_url: None,
            tls: None,
            max_text_bytes: DEFAULT_CONNECTOR_MAX_TEXT_BYTES,
            idle_timeout_s: DEFAULT_CONNECTOR_IDLE_TIMEOUT_S,
            outbound_queue: DEFAULT_CONNECTOR_OUTBOUND_QUEUE,
            twilio: Vec::new(),
            audiosocket: Vec::new(),
            audiohook: Vec::new(),
        }
    }
}

/// Which Twilio track carries the caller.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TwilioTrack {
    /// Audio Twilio receives from the call's party (the caller on an inbound call).
    #[default]
    Inbound,
    /// Audio Twilio sends to that party (the far end of a `<Dial>`).
    Outbound,
}

/// A tenant's Twilio account as the connector knows it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TwilioTenantConfig {
    /// The tenant that owns the calls (its gRPC token sees them); the URL path is `/twilio/TENANT`.
    pub tenant: String,
    /// The account's auth token, which signs `X-Twilio-Signature`: read from this environment
    /// variable, or from this file (its first line). Never written in the config itself.
    #[serde(default)]
    pub auth_token_env: Option<String>,
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// The track screened as the caller; the other track of a two-track stream is not scored.
    #[serde(default)]
    pub caller_track: TwilioTrack,
    /// Each alert is also sent on the stream as a `mark` message named `callguard:...`.
    #[serde(default)]
    pub inline_alerts: bool,
}

/// A tenant's AudioHook Monitor integration (`wss://HOST/audiohook/TENANT`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AudioHookTenantConfig {
    pub tenant: String,
    /// The integration's API key (`X-API-KEY`): from this environment variable or file.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The integration's client secret (base64, as Genesys shows it); given, every upgrade
    /// must carry a valid HTTP Message Signature made with it. From an environment variable
    /// or file; absent: the API key alone authenticates.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The Genesys organization whose sessions are taken (`Audiohook-Organization-Id`);
    /// absent: any.
    #[serde(default)]
    pub organization_id: Option<String>,
    /// Each alert is also sent to the client as an `event` message (`callguard.alert`).
    #[serde(default)]
    pub inline_alerts: bool,
}

/// One AudioSocket listener: every connection on it is a call of `tenant`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AudioSocketConfig {
    /// TCP address Asterisk connects to, e.g. "0.0.0.0:9092" (AudioSocket has no TLS or
    /// credentials: keep it on the telephony network).
    pub listen: SocketAddr,
    /// The tenant that owns this listener's calls.
    pub tenant: String,
}

/// A SIPREC Session Recording Server (`src/connect/sip/`): an SBC forks each call's media to
/// it (RFC 7866), and the caller's stream becomes a call of the peer's tenant.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct SiprecConfig {
    /// SIP address, UDP and TCP on the same port (e.g. "0.0.0.0:5060"); absent: no SRS.
    pub listen: Option<SocketAddr>,
    /// SIP over TLS (TCP) on this address, with `[siprec.tls]`.
    pub tls_listen: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    /// The address written in SDP answers (where the SRC sends RTP); absent: the address the
    /// INVITE arrived on.
    pub media_address: Option<std::net::IpAddr>,
    /// RTP ports, inclusive; each stream takes an even port and the odd one above (RTCP).
    pub rtp_ports: [u16; 2],
    /// A stream with no RTP for this long (not paused) ends the recording: BYE to the SRC.
    pub rtp_timeout_ms: u32,
    /// Recording sessions at once; more get 503.
    pub max_sessions: usize,
    /// Packets the jitter buffer holds back to reorder (20 ms each).
    pub jitter_packets: usize,
    /// Waits this long before answering an INVITE (the SRC may CANCEL meanwhile); 0: at once.
    pub answer_delay_ms: u32,
    /// How the caller's stream is picked from the recording metadata: the stream whose
    /// `label` is this, or the one sent by the participant whose `aor` matches `caller_aor`
    /// (a regex), or by the participant whose `aor` does not match `agent_aor`; none set: the
    /// external party (a telephone number, or a host outside `local_domains`; see
    /// `connect::sip::metadata::CallerRule::External`).
    pub caller_label: Option<String>,
    pub caller_aor: Option<String>,
    pub agent_aor: Option<String>,
    /// The site's own SIP domains (agents, extensions), e.g. ["bank.example"]: a participant
    /// at one of them (or below) is internal, any other host external.
    pub local_domains: Vec<String>,
    /// SRCs allowed to record, each with the tenant that owns its calls; any other peer
    /// gets 403.
    pub peers: Vec<SiprecPeerConfig>,
}

/// An SRC (an SBC or call manager) by address and, where one SBC records for several
/// tenants, by SIP identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SiprecPeerConfig {
    pub tenant: String,
    /// IP addresses or CIDR networks, e.g. ["10.20.0.0/16", "192.0.2.7"]: the gate.
    pub addresses: Vec<String>,
    /// Hosts of the `From` URI (and hosts below them) that pick this tenant among the peers at
    /// the same address, e.g. ["a.bank.example"]; empty: any request from the addresses.
    #[serde(default)]
    pub domains: Vec<String>,
}

impl Default for SiprecConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: None,
            tls: None,
            media_address: None,
            rtp_ports: [40_000, 40_999],
            rtp_timeout_ms: 10_000,
            max_sessions: 500,
            jitter_packets: 5,
            answer_delay_ms: 0,
            caller_label: None,
            caller_aor: None,
            agent_aor: None,
            local_domains: Vec::new(),
            peers: Vec::new(),
        }
    }
}

impl SiprecConfig {
    pub fn is_active(&self) -> bool {
        self.listen.is_some() || self.tls_listen.is_some()
    }

    fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !self.is_active() {
            return;
        }
        if self.peers.is_empty() {
            bad(
                "siprec.peers",
                "is empty, so every SRC would be refused".into(),
            );
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !valid_name(&p.tenant) {
                bad(
                    &format!("siprec.peers[{i}].tenant"),
                    format!("{:?} is not 1-64 letters, digits or -_.", p.tenant),
                );
            }
            if p.addresses.is_empty() {
                bad(&format!("siprec.peers[{i}].addresses"), "is empty".into());
            }
            for d in &p.domains {
                let ok = !d.is_empty()
                    && d.len() <= 253
                    && d.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                if !ok {
                    bad(
                        &format!("siprec.peers[{i}].domains"),
                        format!("{d:?} is not a host name"),
                    );
                }
            }
            for a in &p.addresses {
                if a.parse::<ipnet::IpNet>().is_err() && a.parse::<std::net::IpAddr>().is_err() {
                    bad(
                        &format!("siprec.peers[{i}].addresses"),
                        format!("{a:?} is not an IP address or CIDR network"),
                    );
                }
            }
        }
        let [lo, hi] = self.rtp_ports;
        if lo < 1024 || hi < lo || (hi - lo) < 3 {
            bad(
                "siprec.rtp_ports",
                format!("[{lo}, {hi}] must be at least 4 ports from 1024 up"),
            );
        }
        if self.tls_listen.is_some() != self.tls.is_some() {
            bad(
                "siprec.tls",
                "and siprec.tls_listen must be set together".into(),
            );
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("siprec.tls.cert", &tls.cert), ("siprec.tls.key", &tls.key)] {
                if !path.is_file() {
                    bad(key, format!("{} not found", path.display()));
                }
            }
        }
        for d in &self.local_domains {
            if d.is_empty() || d.contains(['@', ':', '/', ' ']) {
                bad("siprec.local_domains", format!("{d:?} is not a host name"));
            }
        }
        let set = [&self.caller_label, &self.caller_aor, &self.agent_aor]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            bad(
                "siprec.caller_label",
                "set only one of caller_label, caller_aor and agent_aor".into(),
            );
        }
        for (key, re) in [
            ("siprec.caller_aor", &self.caller_aor),
            ("siprec.agent_aor", &self.agent_aor),
        ] {
            if let Some(re) = re
                && let Err(e) = regex::Regex::new(re)
            {
                bad(key, format!("is not a regex: {e}"));
            }
        }
        for (key, v, lo, hi) in [
            (
                "siprec.rtp_timeout_ms",
                self.rtp_timeout_ms as usize,
                500,
                3_600_000,
            ),
            ("siprec.max_sessions", self.max_sessions, 1, 100_000),
            ("siprec.jitter_packets", self.jitter_packets, 1, 50),
            (
                "siprec.answer_delay_ms",
                self.answer_delay_ms as usize,
                0,
                30_000,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                bad(key, format!("{v} is outside {lo}..={hi}"));
            }
        }
    }
}

/// Reads a secret named by config: an environment variable's value, or a file's first line.
pub fn read_secret(env: Option<&str>, file: Option<&Path>) -> Result<String, String> {
    let value = match (env, file) {
        (Some(var), None) => {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        (Some(_), Some(_)) => return Err("name either an environment variable or a file".into()),
        (None, None) => return Err("is missing (name an environment variable or a file)".into()),
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(value)
}

impl ConnectorsConfig {
    fn resolve_paths(&mut self, base: Option<&Path>) {
        let Some(base) = base else { return };
        let beside = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(tls) = &mut self.tls {
            beside(&mut tls.cert);
            beside(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                beside(ca);
            }
        }
        for t in &mut self.twilio {
            if let Some(f) = &mut t.auth_token_file {
                beside(f);
            }
        }
        for h in &mut self.audiohook {
            for f in [&mut h.api_key_file, &mut h.client_secret_file]
                .into_iter()
                .flatten()
            {
                beside(f);
            }
        }
    }

    /// Whether any connector listener is configured.
    pub fn is_active(&self) -> bool {
        self.listen.is_some() || !self.audiosocket.is_empty()
    }

    /// The Twilio entry of a tenant.
    pub fn twilio_tenant(&self, tenant: &str) -> Option<&TwilioTenantConfig> {
        self.twilio.iter().find(|t| t.tenant == tenant)
    }

    fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        let ws_tenants = !self.twilio.is_empty() || !self.audiohook.is_empty();
        if self.listen.is_some() && !ws_tenants {
            bad(
                "connectors.twilio",
                "and connectors.audiohook are empty, so connectors.listen would serve no platform"
                    .into(),
            );
        }
        if self.listen.is_none() && ws_tenants {
            bad(
                "connectors.listen",
                "is not set, so the Twilio and AudioHook tenants cannot connect".into(),
            );
        }
        let mut hook_tenants = std::collections::HashSet::new();
        for (i, h) in self.audiohook.iter().enumerate() {
            let key = format!("connectors.audiohook[{i}]");
            if !valid_name(&h.tenant) || !hook_tenants.insert(&h.tenant) {
                bad(
                    &format!("{key}.tenant"),
                    format!(
                        "{:?} is not 1-64 letters, digits or -_., or is listed twice",
                        h.tenant
                    ),
                );
            }
            if let Err(m) = read_secret(h.api_key_env.as_deref(), h.api_key_file.as_deref()) {
                bad(&format!("{key}.api_key_env"), m);
            }
            if (h.client_secret_env.is_some() || h.client_secret_file.is_some())
                && let Err(m) = read_secret(
                    h.client_secret_env.as_deref(),
                    h.client_secret_file.as_deref(),
                )
            {
                bad(&format!("{key}.client_secret_env"), m);
            }
        }
        if let Some(url) = &self.public_url {
            let rest = url
                .strip_prefix("wss://")
                .or_else(|| url.strip_prefix("ws://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['/', '?', '#'])) {
                bad(
                    "connectors.public_url",
                    format!("{url:?} is not ws(s)://HOST[:PORT] (no path)"),
                );
            }
        }
        if let Some(tls) = &self.tls {
            let ca = tls
                .client_ca
                .iter()
                .map(|p| ("connectors.tls.client_ca", p));
            for (key, path) in [
                ("connectors.tls.cert", &tls.cert),
                ("connectors.tls.key", &tls.key),
            ]
            .into_iter()
            .chain(ca)
            {
                if !path.is_file() {
                    bad(key, format!("{} not found", path.display()));
                }
            }
        }
        for (key, v, lo, hi) in [
            (
                "connectors.max_text_bytes",
                self.max_text_bytes,
                1_024,
                16 << 20,
            ),
            (
                "connectors.idle_timeout_s",
                self.idle_timeout_s as usize,
                1,
                86_400,
            ),
            ("connectors.outbound_queue", self.outbound_queue, 1, 65_536),
        ] {
            if !(lo..=hi).contains(&v) {
                bad(key, format!("{v} is outside {lo}..={hi}"));
            }
        }
        let mut tenants = std::collections::HashSet::new();
        for (i, t) in self.twilio.iter().enumerate() {
            let key = format!("connectors.twilio[{i}]");
            if !valid_name(&t.tenant) {
                bad(
                    &format!("{key}.tenant"),
                    format!("{:?} is not 1-64 letters, digits or -_.", t.tenant),
                );
            } else if !tenants.insert(&t.tenant) {
                bad(
                    &format!("{key}.tenant"),
                    format!("{:?} is listed twice", t.tenant),
                );
            }
            if let Err(m) = read_secret(t.auth_token_env.as_deref(), t.auth_token_file.as_deref()) {
                bad(&format!("{key}.auth_token_env"), m);
            }
        }
        let mut addrs = std::collections::HashSet::new();
        for (i, a) in self.audiosocket.iter().enumerate() {
            let key = format!("connectors.audiosocket[{i}]");
            if !valid_name(&a.tenant) {
                bad(
                    &format!("{key}.tenant"),
                    format!("{:?} is not 1-64 letters, digits or -_.", a.tenant),
                );
            }
            if a.listen.port() != 0 && !addrs.insert(a.listen) {
                bad(
                    &format!("{key}.listen"),
                    format!("{} is used by another listener", a.listen),
                );
            }
        }
    }
}

/// Tenant names: 1-64 ASCII letters, digits, `-`, `_` or `.`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[windows]\nhop_ms = 500\nwindow_len = 3\n").unwrap_err();
        assert!(err.contains("window_len"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = Config::default();
        c.windows.hop_ms = 1;
        c.detector.max_batch = 0;
        c.verdict.exit_threshold = 2.0;
        c.speech.vad_model = PathBuf::from("/nonexistent/vad.onnx");
        c.detector.model = PathBuf::from("/nonexistent/detector.onnx");
        let problems = c.validate().unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "windows.hop_ms",
            "detector.max_batch",
            "verdict.exit_threshold",
            "speech.vad_model",
            "detector.model",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn cluster_problems_are_reported_with_their_keys_and_a_single_node_has_none() {
        assert!(Config::default().cluster.validate_keys().is_empty());
        let mut c = ClusterConfig {
            nats: vec!["nats://10.0.0.1:4222".into(), "http://x:4222".into()],
            node: "has space".into(),
            token_file: Some(PathBuf::from("/nonexistent/nats.token")),
            replicas: 0,
            ..ClusterConfig::default()
        };
        c.node_timeout_ms = 2 * c.heartbeat_ms;
        let keys = c.validate_keys();
        for key in [
            "cluster.nats[1]",
            "cluster.node",
            "cluster.token_file",
            "cluster.replicas",
            "cluster.node_timeout_ms",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k == "cluster.nats[0]"), "{keys:?}");
        // A sink may not take the cluster publisher's cursor.
        let mut config = Config::default();
        config.sinks.webhook.push(
            toml::from_str(&format!(
                "name = \"{}\"\nurl = \"http://127.0.0.1:9/x\"\nsecret_env = \"X\"",
                crate::cluster::PUBLISHER
            ))
            .unwrap(),
        );
        let problems = config.validate().unwrap_err();
        assert!(
            problems.iter().any(|p| p.key == "sinks.webhook[0].name"),
            "{problems:?}"
        );
    }

    #[test]
    fn server_problems_are_reported_with_their_keys() {
        let mut c = Config::default();
        c.server.listen = Some("127.0.0.1:0".parse().unwrap());
        c.server.max_speed = 0.5;
        c.server.tls = Some(TlsConfig {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            client_ca: None,
        });
        let keys = |c: &Config| -> Vec<String> {
            c.validate()
                .unwrap_err()
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        let k = keys(&c);
        for key in [
            "server.tenants",
            "server.max_speed",
            "server.tls.cert",
            "server.tls.key",
        ] {
            assert!(k.iter().any(|x| x == key), "{key} missing from {k:?}");
        }
        let tenant = |name: &str, hash: &str| TenantConfig {
            name: name.into(),
            token_sha256: hash.into(),
        };
        let good = "ab".repeat(32);
        c.server.tenants = vec![
            tenant("bank a", &good),
            tenant("b", "ABC"),
            tenant("c", &good),
            tenant("c", &"cd".repeat(32)),
        ];
        let k = keys(&c);
        for key in [
            "server.tenants[0].name",
            "server.tenants[1].token_sha256",
            "server.tenants[2].token_sha256",
            "server.tenants[3].name",
        ] {
            assert!(k.iter().any(|x| x == key), "{key} missing from {k:?}");
        }
    }

    #[test]
    fn connector_problems_are_reported_with_their_keys() {
        let mut c = Config::default();
        c.connectors.listen = Some("127.0.0.1:0".parse().unwrap());
        c.connectors.public_url = Some("https://example.com/path".into());
        c.connectors.max_text_bytes = 10;
        let twilio = |tenant: &str, env: Option<&str>| TwilioTenantConfig {
            tenant: tenant.into(),
            auth_token_env: env.map(Into::into),
            auth_token_file: None,
            caller_track: TwilioTrack::Inbound,
            inline_alerts: false,
        };
        // PATH is set in any test environment; the token is only checked for presence.
        c.connectors.twilio = vec![
            twilio("bank a", Some("PATH")),
            twilio("b", Some("CALLGUARD_SURELY_UNSET_VARIABLE")),
            twilio("b", None),
        ];
        c.connectors.audiosocket = vec![
            AudioSocketConfig {
                listen: "127.0.0.1:9092".parse().unwrap(),
                tenant: "b".into(),
            },
            AudioSocketConfig {
                listen: "127.0.0.1:9092".parse().unwrap(),
                tenant: "c".into(),
            },
        ];
        c.connectors.audiohook = vec![AudioHookTenantConfig {
            tenant: "b".into(),
            api_key_env: None,
            api_key_file: None,
            client_secret_env: Some("CALLGUARD_SURELY_UNSET_VARIABLE".into()),
            client_secret_file: None,
            organization_id: None,
            inline_alerts: false,
        }];
        let problems = c.validate().unwrap_err();
        let k: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "connectors.audiohook[0].api_key_env",
            "connectors.audiohook[0].client_secret_env",
            "connectors.public_url",
            "connectors.max_text_bytes",
            "connectors.twilio[0].tenant",
            "connectors.twilio[1].auth_token_env",
            "connectors.twilio[2].tenant",
            "connectors.twilio[2].auth_token_env",
            "connectors.audiosocket[1].listen",
        ] {
            assert!(k.contains(&key), "{key} missing from {k:?}");
        }
        let unset = problems
            .iter()
            .find(|p| p.key == "connectors.twilio[1].auth_token_env")
            .unwrap();
        assert!(unset.message.contains("CALLGUARD_SURELY_UNSET_VARIABLE"));
        // Without [connectors] nothing is asked for.
        assert!(!Config::default().connectors.is_active());
    }

    #[test]
    fn secrets_come_from_a_file_or_the_environment() {
        let dir = std::env::temp_dir().join(format!("callguard-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret \nsecond line\n").unwrap();
        assert_eq!(read_secret(None, Some(&dir)).unwrap(), "s3cret");
        std::fs::write(&dir, "\n").unwrap();
        assert!(read_secret(None, Some(&dir)).is_err());
        std::fs::remove_file(&dir).unwrap();
        assert!(read_secret(None, Some(&dir)).is_err());
        assert!(read_secret(Some("PATH"), Some(&dir)).is_err());
        assert!(read_secret(None, None).is_err());
        assert!(read_secret(Some("PATH"), None).is_ok());
    }

    #[test]
    fn exit_above_enter_is_a_problem() {
        let mut c = Config::default();
        c.verdict.enter_threshold = Some(0.4);
        c.verdict.exit_threshold = 0.6;
        let problems = c.validate().unwrap_err();
        assert!(problems.iter().any(|p| p.key == "verdict.exit_threshold"
            && p.message.contains("above verdict.enter_threshold")));
    }

    #[test]
    fn class_thresholds_are_validated_and_unknown_classes_rejected() {
        let err = Config::from_toml("[verdict.enter_thresholds]\nnarrowband = 0.5\n").unwrap_err();
        assert!(err.contains("narrowband"), "{err}");
        let mut c = Config::from_toml(
            "[verdict]\nnarrowband_class = \"wideband\"\n\
             [verdict.enter_thresholds]\nwideband = 1.5\nnarrowband_lossy = 0.2\nnarrowband_g711 = 0.6\n",
        )
        .unwrap();
        c.resolve_paths(None);
        let problems = c.validate().unwrap_err();
        let has = |key: &str, text: &str| {
            problems
                .iter()
                .any(|p| p.key == key && p.message.contains(text))
        };
        assert!(
            has("verdict.enter_thresholds.wideband", "not a probability"),
            "{problems:?}"
        );
        assert!(
            has(
                "verdict.exit_threshold",
                "verdict.enter_thresholds.narrowband_lossy"
            ),
            "{problems:?}"
        );
        assert!(
            has(
                "verdict.narrowband_class",
                "narrowband_g711 or narrowband_lossy"
            ),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|p| p.key.ends_with("narrowband_g711")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_thresholds_file_is_read_beside_the_config_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("callguard.toml");
        std::fs::write(
            &config,
            "[windows]\nhop_ms = 1\n[verdict]\nthresholds_file = \"cal.toml\"\n",
        )
        .unwrap();
        let problems = |path: &Path| match Config::load(path) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("{other:?}"),
        };
        // Missing: reported with the config's other problems.
        let p = problems(&config);
        assert!(
            p.iter()
                .any(|p| p.key == "verdict.thresholds_file" && p.message.contains("cannot read")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.key == "windows.hop_ms"), "{p:?}");
        let cal = dir.path().join("cal.toml");
        for (text, why) in [
            (
                "[verdict]\nexit_threshold = 0.2\n",
                "only [verdict.enter_thresholds]",
            ),
            (
                "[verdict.enter_thresholds]\nwideband = 0\n",
                "wideband 0 is not a probability",
            ),
            ("# nothing\n", "sets no [verdict.enter_thresholds]"),
            ("[verdict.enter_thresholds\n", "not a thresholds file"),
        ] {
            std::fs::write(&cal, text).unwrap();
            let p = problems(&config);
            assert!(
                p.iter()
                    .any(|p| p.key == "verdict.thresholds_file" && p.message.contains(why)),
                "{text:?}: {p:?}"
            );
        }
        std::fs::write(
            &cal,
            "# calibrated\n[verdict.enter_thresholds]\nnarrowband_g711 = 0.61\n",
        )
        .unwrap();
        let mut c = Config::from_toml(&std::fs::read_to_string(&config).unwrap()).unwrap();
        c.resolve_paths(Some(dir.path()));
        assert_eq!(c.verdict.thresholds_file.as_deref(), Some(cal.as_path()));
        assert!(c.read_thresholds_file().is_empty());
        assert_eq!(c.verdict.file_thresholds.narrowband_g711, Some(0.61));
        assert_eq!(c.verdict.file_thresholds.wideband, None);
        // The file is a config fragment as it stands.
        let fragment = Config::from_toml(&std::fs::read_to_string(&cal).unwrap()).unwrap();
        assert_eq!(
            fragment.verdict.enter_thresholds.narrowband_g711,
            Some(0.61)
        );
    }
}
