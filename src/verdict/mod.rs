//! Where scores become decisions: per-call evidence fusion (smoothed log-odds), hysteresis and
//! debounce, so a call yields a few state changes with their evidence, not one alert per window.

mod fusion;

pub use fusion::{CallEvidence, FusionParams};

use serde::{Deserialize, Serialize};

/// A call's screening state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Not enough speech scored yet.
    Listening,
    /// Scored, and not suspected.
    Genuine,
    /// The fused spoof probability crossed the enter threshold.
    Suspected,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listening => "listening",
            Self::Genuine => "genuine",
            Self::Suspected => "suspected",
        }
    }
}

/// One scored window on a call's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowScore {
    pub seq: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The detector's calibrated probability for this window alone.
    pub p_spoof: f32,
    /// The call's fused probability after this window.
    pub fused: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The call turned suspicious.
    SuspectedClone,
    /// A suspected call no longer looks synthetic.
    Cleared,
}

/// A state change of a call, with the windows that justify it.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub call_id: String,
    pub kind: AlertKind,
    /// Call audio time at which the decision was made (end of the deciding window).
    pub audio_ms: u64,
    /// Fused spoof probability at the decision.
    pub p_spoof: f32,
    /// Threshold that was crossed.
    pub threshold: f32,
    /// The windows fused into the decision.
    pub evidence: Vec<WindowScore>,
    pub model: String,
}
