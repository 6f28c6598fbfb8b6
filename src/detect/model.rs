//! The detector's sidecar (`models/detector.json`): everything the Rust side needs to know about
//! the model, stated once, next to the model.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::DetectError;

/// What the model's output tensor holds per window.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Calibrated log-odds of spoof: p = 1 / (1 + e^-x).
    Logit,
    /// Calibrated probability of spoof.
    Probability,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelInput {
    /// Input tensor name; shape [batch, window_samples], float32 in [-1, 1].
    pub name: String,
    pub sample_rate: u32,
    pub window_samples: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelOutput {
    /// Output tensor name; shape [batch] or [batch, 1].
    pub name: String,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Threshold {
    /// Calibrated spoof probability at which a call is suspected.
    pub p_spoof: f32,
}

/// The parts of the sidecar the daemon uses; the rest (training data, validation numbers) is
/// documentation and is carried through as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelCard {
    pub name: String,
    pub version: String,
    pub input: ModelInput,
    pub output: ModelOutput,
    pub threshold: Threshold,
    #[serde(skip)]
    pub model_path: PathBuf,
}

impl ModelCard {
    /// The sidecar of `model` (same path, `.json`).
    pub fn sidecar_path(model: &Path) -> PathBuf {
        model.with_extension("json")
    }

    pub fn load(model: &Path) -> Result<Self, DetectError> {
        let path = Self::sidecar_path(model);
        let err = |message: String| DetectError::Sidecar {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let mut card: Self = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if card.input.window_samples == 0 || card.input.window_samples > 10 * 48_000 {
            return Err(err(format!(
                "input.window_samples {} is not a plausible window",
                card.input.window_samples
            )));
        }
        if !(card.threshold.p_spoof > 0.0 && card.threshold.p_spoof < 1.0) {
            return Err(err(format!(
                "threshold.p_spoof {} is not a probability",
                card.threshold.p_spoof
            )));
        }
        card.model_path = model.to_owned();
        Ok(card)
    }

    /// Window length in milliseconds.
    pub fn window_ms(&self) -> u32 {
        (self.input.window_samples as u64 * 1000 / self.input.sample_rate as u64) as u32
    }

    /// `name@version`, as alerts report it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}
