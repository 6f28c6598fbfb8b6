//! The speaker encoder (`models/speaker.onnx`, Resemblyzer's GE2E cut at its embedding by
//! `train/speaker.py export`): a 1 s window of 16 kHz speech in, a unit-length voice embedding
//! out. Run by the detector workers on the windows they score, so a call's windows are embedded
//! once, in the batches the detector already forms.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;
use serde::Deserialize;

use super::DetectError;
use super::session::open_checked;

/// The encoder's sidecar (`speaker.json`): what goes in and comes out.
#[derive(Debug, Clone, Deserialize)]
pub struct SpeakerCard {
    pub name: String,
    pub version: String,
    pub input: SpeakerInput,
    pub output: SpeakerOutput,
    #[serde(skip)]
    pub model_path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SpeakerInput {
    pub name: String,
    pub sample_rate: u32,
    pub window_samples: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SpeakerOutput {
    pub name: String,
    pub dim: usize,
}

impl SpeakerCard {
    /// Reads `model`'s sidecar (the same path with `.json`).
    pub fn load(model: &Path) -> Result<Self, DetectError> {
        let path = model.with_extension("json");
        let sidecar = |message: String| DetectError::Sidecar {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| sidecar(e.to_string()))?;
        let mut card: Self = serde_json::from_str(&text).map_err(|e| sidecar(e.to_string()))?;
        if card.input.sample_rate != 16_000 || card.output.dim == 0 {
            return Err(sidecar(format!(
                "a {} Hz input and a {}-value embedding: 16000 Hz and a non-empty embedding expected",
                card.input.sample_rate, card.output.dim
            )));
        }
        card.model_path = model.to_owned();
        Ok(card)
    }

    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// One ONNX Runtime session of the encoder, owned by one detector worker.
pub struct SpeakerEncoder {
    session: Session,
    card: SpeakerCard,
    batch: Vec<f32>,
}

impl SpeakerEncoder {
    pub fn new(card: &SpeakerCard, intra_threads: usize) -> Result<Self, DetectError> {
        let session = open_checked(
            &card.model_path,
            intra_threads,
            &card.input.name,
            &card.output.name,
        )?;
        Ok(Self {
            session,
            card: card.clone(),
            batch: Vec::new(),
        })
    }

    pub fn dim(&self) -> usize {
        self.card.output.dim
    }

    /// The embeddings of `windows`, `dim()` values each, one after another in `out`. A window of
    /// another length than the encoder's is cut or zero-padded to it.
    pub fn embed<'w>(
        &mut self,
        windows: impl ExactSizeIterator<Item = &'w [f32]>,
        out: &mut Vec<f32>,
    ) -> Result<(), DetectError> {
        out.clear();
        let n = windows.len();
        if n == 0 {
            return Ok(());
        }
        let len = self.card.input.window_samples;
        self.batch.clear();
        for w in windows {
            let w = &w[..w.len().min(len)];
            self.batch.extend_from_slice(w);
            self.batch.resize(self.batch.len() + (len - w.len()), 0.0);
        }
        let input =
            TensorRef::from_array_view(([n, len], &self.batch[..])).map_err(DetectError::run)?;
        let outputs = self
            .session
            .run(ort::inputs![self.card.input.name.as_str() => input])
            .map_err(DetectError::run)?;
        let (_, values) = outputs[self.card.output.name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(DetectError::run)?;
        if values.len() != n * self.card.output.dim {
            return Err(DetectError::Run(format!(
                "speaker encoder returned {} values for {n} windows of {}",
                values.len(),
                self.card.output.dim
            )));
        }
        out.extend_from_slice(values);
        Ok(())
    }
}
