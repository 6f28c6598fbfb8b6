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
    /// The model's calibrated enter threshold per channel class (`wideband`,
    /// `narrowband_g711`, `narrowband_lossy`); a class not listed uses `p_spoof`.
    #[serde(default)]
    pub by_class: crate::verdict::ClassThresholds,
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
        // Other keys are the training report's (validation, provenance); a misspelt channel
        // class would silently drop its threshold, so those are refused.
        let mut bad_class = Vec::new();
        let mut card: Self =
            serde_ignored::deserialize(&mut serde_json::Deserializer::from_str(&text), |path| {
                let path = path.to_string();
                if path.starts_with("threshold.by_class.") {
                    bad_class.push(path);
                }
            })
            .map_err(|e| err(e.to_string()))?;
        if !bad_class.is_empty() {
            return Err(err(format!(
                "unknown channel class {} (wideband, narrowband_g711, narrowband_lossy)",
                bad_class.join(", ")
            )));
        }
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
        if let Some(&(class, t)) = card.threshold.by_class.not_probabilities().first() {
            return Err(err(format!(
                "threshold.by_class.{class} {t} is not a probability"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(threshold: &str) -> Result<ModelCard, String> {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(
            ModelCard::sidecar_path(&model),
            format!(
                r#"{{"name": "m", "version": "1",
                    "input": {{"name": "waveform", "sample_rate": 16000, "window_samples": 16000}},
                    "output": {{"name": "logit", "kind": "logit"}},
                    "threshold": {threshold}}}"#
            ),
        )
        .unwrap();
        ModelCard::load(&model).map_err(|e| e.to_string())
    }

    #[test]
    fn per_class_thresholds_are_optional_and_validated() {
        let card = load_with(r#"{"p_spoof": 0.7}"#).unwrap();
        assert!(card.threshold.by_class.is_empty());
        let card = load_with(
            r#"{"p_spoof": 0.7, "by_class": {"wideband": 0.74, "narrowband_lossy": 0.6}}"#,
        )
        .unwrap();
        assert_eq!(card.threshold.by_class.wideband, Some(0.74));
        assert_eq!(card.threshold.by_class.narrowband_g711, None);
        let err =
            load_with(r#"{"p_spoof": 0.7, "by_class": {"narrowband_g711": 1.5}}"#).unwrap_err();
        assert!(err.contains("threshold.by_class.narrowband_g711"), "{err}");
        let err = load_with(r#"{"p_spoof": 0.7, "by_class": {"phone": 0.5}}"#).unwrap_err();
        assert!(err.contains("phone"), "{err}");
    }
}
