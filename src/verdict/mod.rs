//! Where scores become decisions: per-call evidence fusion (smoothed log-odds), hysteresis and
//! debounce, so a call yields a few state changes with their evidence, not one alert per window.
//! Each call is screened at the enter threshold of its channel class (wideband, G.711, lossy).

mod class;
mod fusion;
pub mod voice;

pub use class::{
    ChannelClass, ClassThresholds, EnterThreshold, ThresholdSource, WIDEBAND_MIN_RATE,
    enter_threshold,
};
pub use fusion::{CallEvidence, FusionParams, alert_peak};

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
    /// The window's voice is one of the tenant's allowed synthetic voices (`callguard
    /// allow-voice`): it did not count as evidence, and `fused` is the call's before it.
    #[serde(default)]
    pub allowed_voice: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The call turned suspicious.
    SuspectedClone,
    /// A suspected call no longer looks synthetic.
    Cleared,
    /// A suspected call's caller asked for something a fraudster would (transfer, codes,
    /// secrecy...): the intent from their cues reached `transcribe.escalate_intent`. Once per
    /// suspicion.
    Escalated,
    /// The caller's voice stopped matching the call's earlier speech (`voice.rs`): a clone
    /// taking over from a human, or the phone handed to someone else. Does not change the
    /// call's state; its risk rises with the clone score.
    VoiceChanged,
    /// The call claims a protected identity (`callguard enroll`) and its voice is clearly not
    /// that person's. Once per call; the state stays the clone detector's.
    IdentityMismatch,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SuspectedClone => "suspected_clone",
            Self::Cleared => "cleared",
            Self::Escalated => "escalated",
            Self::VoiceChanged => "voice_changed",
            Self::IdentityMismatch => "identity_mismatch",
        }
    }
}

/// A call's risk from its clone score and what the caller asks for:
/// `risk = 1 - (1 - p_spoof) * (1 - intent * p_spoof)`, where `intent` (0..1) comes from the
/// social-engineering cues in the transcript (`crate::transcribe::cues::intent`). With no cues
/// the risk is the clone score; cues raise it in proportion to the clone score, so a genuine
/// caller asking for a transfer stays low-risk, and a likely clone asking for one is critical.
pub fn risk(p_spoof: f32, intent: f32) -> f32 {
    let (p, i) = (p_spoof.clamp(0.0, 1.0), intent.clamp(0.0, 1.0));
    1.0 - (1.0 - p) * (1.0 - i * p)
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
    /// [`risk`] at the decision, from `p_spoof` and the cues below.
    pub risk: f32,
    /// Cues said within `transcribe.cue_window_s` before the decision.
    pub cues: Vec<crate::transcribe::Cue>,
    /// What the caller said in the `transcribe.snippet_s` before the decision (redacted).
    pub transcript: Vec<crate::transcribe::TranscriptSegment>,
    /// `VoiceChanged`: the cosine of the recent voice with the reference that fell below
    /// `threshold`.
    pub voice_similarity: Option<f32>,
}

impl Alert {
    /// Attaches the call's transcript context and sets the risk.
    pub fn attach(
        &mut self,
        transcript: &crate::transcribe::CallTranscript,
        snippet_ms: u64,
        cue_window_ms: u64,
    ) {
        self.cues = transcript.recent_cues(self.audio_ms, cue_window_ms);
        self.transcript = transcript.snippet(self.audio_ms, snippet_ms);
        self.risk = risk(self.p_spoof, crate::transcribe::cues::intent(&self.cues));
    }
}
