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
    /// A cheaper first stage in front of this model (`src/detect/cascade.rs`).
    #[serde(default)]
    pub cascade: Option<CascadeCard>,
    /// The first stage's own card, read from its sidecar at load.
    #[serde(skip)]
    pub first_stage: Option<Box<ModelCard>>,
    #[serde(skip)]
    pub model_path: PathBuf,
}

/// The sidecar's `cascade` section: every window is scored by `first_stage`, and goes on to this
/// model when the first stage's calibrated log-odds reach `escalate_logit` or when the window's
/// position in its call is a multiple of `sample_every`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CascadeCard {
    /// The first stage's model, relative to this model's folder; its sidecar beside it.
    pub first_stage: PathBuf,
    /// First-stage log-odds (calibrated) at or above which a window goes on to this model.
    pub escalate_logit: f32,
    /// Every Nth window of a call, its first included, goes on whatever the first stage says, so
    /// a clone the first stage misses is still looked at; 0: never.
    pub sample_every: u64,
    /// How `escalate_logit` was chosen (documentation).
    #[serde(default)]
    pub chosen_on: Option<String>,
}

impl CascadeCard {
    /// `escalate_logit` as a probability, which is what [`super::Detector::score`] gives.
    pub fn escalate_p(&self) -> f32 {
        1.0 / (1.0 + (-self.escalate_logit).exp())
    }
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
        if let Some(cascade) = &card.cascade {
            card.first_stage = Some(Box::new(card.load_first_stage(cascade)?));
        }
        Ok(card)
    }

    /// The cascade's first stage: its own sidecar, checked to take this model's windows.
    fn load_first_stage(&self, cascade: &CascadeCard) -> Result<ModelCard, DetectError> {
        let folder = self.model_path.parent().unwrap_or(Path::new("."));
        let path = folder.join(&cascade.first_stage);
        let mismatch = |message: String| DetectError::Mismatch {
            path: self.model_path.clone(),
            message,
        };
        if !cascade.escalate_logit.is_finite() {
            return Err(mismatch(format!(
                "cascade.escalate_logit {} is not a number",
                cascade.escalate_logit
            )));
        }
        let first = Self::load(&path)?;
        if first.cascade.is_some() {
            return Err(mismatch(format!(
                "the first stage {} has a cascade of its own",
                path.display()
            )));
        }
        if (first.input.sample_rate, first.input.window_samples)
            != (self.input.sample_rate, self.input.window_samples)
        {
            return Err(mismatch(format!(
                "the first stage {} takes {} samples at {} Hz, this model {} at {} Hz",
                path.display(),
                first.input.window_samples,
                first.input.sample_rate,
                self.input.window_samples,
                self.input.sample_rate
            )));
        }
        Ok(first)
    }

    /// Window length in milliseconds.
    pub fn window_ms(&self) -> u32 {
        (self.input.window_samples as u64 * 1000 / self.input.sample_rate as u64) as u32
    }

    /// `name@version`, as alerts report it; a cascade adds its first stage's
    /// (`name@version+first@version`).
    pub fn id(&self) -> String {
        match &self.first_stage {
            Some(first) => format!("{}@{}+{}", self.name, self.version, first.id()),
            None => format!("{}@{}", self.name, self.version),
        }
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
