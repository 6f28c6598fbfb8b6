//! One ONNX Runtime session of the detector, owned by one worker thread.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::{DetectError, ModelCard, OutputKind};

/// Opens an ONNX session with explicit thread counts (the pool decides parallelism, not ORT).
pub(crate) fn open_session(
    path: &std::path::Path,
    intra_threads: usize,
) -> Result<Session, DetectError> {
    let env = crate::assets::onnx_runtime()?;
    let load = |message: String| DetectError::Load {
        path: path.to_owned(),
        message,
    };
    Session::builder(env)
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
        .and_then(|b| Ok(b.with_intra_threads(intra_threads)?))
        .and_then(|b| Ok(b.with_inter_threads(1)?))
        .map_err(|e| load(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| load(e.to_string()))
}

/// [`open_session`], checked to have the input and output its sidecar names.
pub(crate) fn open_checked(
    path: &std::path::Path,
    intra_threads: usize,
    input: &str,
    output: &str,
) -> Result<Session, DetectError> {
    let session = open_session(path, intra_threads)?;
    let mismatch = |message: String| DetectError::Mismatch {
        path: path.to_owned(),
        message,
    };
    if !session.inputs().iter().any(|i| i.name() == input) {
        return Err(mismatch(format!("no input named {input:?}")));
    }
    if !session.outputs().iter().any(|o| o.name() == output) {
        return Err(mismatch(format!("no output named {output:?}")));
    }
    Ok(session)
}

/// Scores fixed-length windows of 16 kHz speech for synthesis.
pub struct Detector {
    session: Session,
    card: ModelCard,
    batch: Vec<f32>,
}

impl Detector {
    pub fn new(card: &ModelCard, intra_threads: usize) -> Result<Self, DetectError> {
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

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// Spoof probabilities, one per window; every window must be `window_samples` long.
    pub fn score<'w>(
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
            if w.len() != len {
                return Err(DetectError::Run(format!(
                    "window of {} samples, model expects {len}",
                    w.len()
                )));
            }
            self.batch.extend_from_slice(w);
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
        if values.len() != n {
            return Err(DetectError::Run(format!(
                "model returned {} values for {n} windows",
                values.len()
            )));
        }
        out.extend(values.iter().map(|&v| match self.card.output.kind {
            OutputKind::Logit => 1.0 / (1.0 + (-v).exp()),
            OutputKind::Probability => v.clamp(0.0, 1.0),
        }));
        Ok(())
    }
}
