//! The per-call streaming path and the engine that runs many calls against one detector pool.

pub mod engine;
pub mod stream;

pub use engine::{Call, CallSpec, CallSummary, Engine, EngineError, EngineEvent, drive};
pub use stream::{CallStream, PIPELINE_RATE, StreamError, StreamStats};
pub mod files;

pub use files::{FileOutcome, Screening, VoiceprintMade, score_files, score_files_as, voiceprint};
