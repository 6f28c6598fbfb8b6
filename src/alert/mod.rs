//! Alerts after the decision: the durable log they are written to first (SQLite, WAL), and the
//! fan-out that publishes them to live subscribers.
//!
//! ```text
//! fusion ──Alert──► dispatcher ──append──► AlertLog (fsync'd) ──publish──► AlertHub ──► subscribers
//!                                                 ▲                                     │
//!                                                 └──── replay / catch-up after a lag ──┘
//! ```

pub mod hub;
pub mod log;
pub mod seal;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use hub::{AlertHub, HubError, Subscription};
pub use log::{AlertLog, NewAlert, SinkState, StoreError};
pub use seal::Sealer;

use crate::transcribe::{Cue, Redacted};
use crate::verdict::{AlertKind, WindowScore};

/// What the call-center software told us about a call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMeta {
    /// Calling number.
    pub ani: String,
    /// Dialled number.
    pub dnis: String,
    pub agent: String,
    pub labels: BTreeMap<String, String>,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info = 1,
    Warning = 2,
    Critical = 3,
}

impl Severity {
    /// A suspected clone is critical when its risk (clone score raised by the caller's
    /// requests, `crate::verdict::risk`) is at or above `critical`, else a warning; an
    /// escalation is critical; a cleared call is informational.
    pub fn of(kind: AlertKind, risk: f32, critical: f32) -> Self {
        match kind {
            AlertKind::Cleared => Self::Info,
            AlertKind::Escalated => Self::Critical,
            AlertKind::SuspectedClone if risk >= critical => Self::Critical,
            AlertKind::SuspectedClone => Self::Warning,
            AlertKind::VoiceChanged if risk >= critical => Self::Critical,
            AlertKind::VoiceChanged => Self::Warning,
            AlertKind::IdentityMismatch => Self::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(Self::Info),
            2 => Some(Self::Warning),
            3 => Some(Self::Critical),
            _ => None,
        }
    }
}

/// An alert as it was logged: a decision about a call, with its evidence and log position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedAlert {
    /// Position in the log; strictly increasing, never reused.
    #[serde(default)]
    pub sequence: u64,
    pub id: String,
    pub tenant: String,
    pub call_id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub p_spoof: f32,
    pub threshold: f32,
    /// Call audio time of the decision.
    pub audio_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub wall_time_ms: i64,
    pub evidence: Vec<WindowScore>,
    pub model: String,
    /// What the caller said just before the decision (redacted); empty without transcription.
    #[serde(default)]
    pub transcript_snippet: Redacted,
    /// Clone score raised by the caller's requests (`crate::verdict::risk`).
    #[serde(default)]
    pub risk: f32,
    /// Social-engineering cues said before the decision.
    #[serde(default)]
    pub cues: Vec<Cue>,
    pub metadata: CallMeta,
    /// `VoiceChanged`: the recent voice's cosine with the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_similarity: Option<f32>,
    /// Who acknowledged it, when, and why; kept beside the alert in the log (the alert itself
    /// is never rewritten) and filled in when it is read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledgement>,
}

/// A person's acknowledgement of an alert (a supervisor who looked at the call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    pub alert_id: String,
    /// As the person gave it (a name or staff id), at most 100 characters.
    pub by: String,
    /// At most 1,000 characters, redacted like transcripts.
    pub note: Redacted,
    pub at_ms: i64,
}

/// Which alerts a subscriber wants (besides its tenant).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    pub call_id: Option<String>,
    pub min_severity: Option<Severity>,
}

impl AlertFilter {
    pub fn matches(&self, alert: &LoggedAlert) -> bool {
        self.call_id.as_ref().is_none_or(|c| *c == alert.call_id)
            && self.min_severity.is_none_or(|s| alert.severity >= s)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
