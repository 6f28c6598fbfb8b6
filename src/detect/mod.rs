//! Where audio is scored: the model's sidecar, ONNX Runtime sessions for the detector and the
//! Silero VAD, and the pool of detector workers that batches windows across calls.

pub mod cascade;
pub mod model;
pub mod pool;
pub mod session;
pub mod speaker;
pub mod vad;

pub use cascade::{Scorer, Stage, StagedScore};
pub use model::{CascadeCard, ModelCard, OutputKind};
pub use pool::{DetectorPool, PoolStats, ScoredWindow, WindowBuffers, WindowJob};
pub use session::Detector;
pub use speaker::{SpeakerCard, SpeakerEncoder};
pub use vad::{SileroVad, VadState};

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Runtime(#[from] crate::assets::RuntimeError),
    #[error("cannot read model sidecar {path}: {message}")]
    Sidecar {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("cannot load model {path}: {message}")]
    Load {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("model {path} does not match its sidecar: {message}")]
    Mismatch {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("inference failed: {0}")]
    Run(String),
}

impl DetectError {
    pub(crate) fn run(e: impl std::fmt::Display) -> Self {
        Self::Run(e.to_string())
    }
}
