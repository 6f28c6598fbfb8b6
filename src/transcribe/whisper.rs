//! whisper.cpp through whisper-rs: one shared model, one decoding state per worker thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use super::TranscribeError;

/// Segments whisper thinks are probably not speech are dropped above this probability.
const NO_SPEECH_MAX: f32 = 0.6;

/// A loaded ggml Whisper model, shared by the workers.
#[derive(Clone)]
pub struct WhisperModel {
    context: Arc<WhisperContext>,
    path: PathBuf,
    language: Option<String>,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("path", &self.path)
            .finish()
    }
}

impl WhisperModel {
    /// Loads a ggml model (CPU only). `language` is an ISO code, or `None` to detect it
    /// (multilingual models only).
    pub fn load(path: &Path, language: Option<&str>) -> Result<Self, TranscribeError> {
        static HOOKS: Once = Once::new();
        // whisper.cpp's own logging goes through `tracing` instead of stderr.
        HOOKS.call_once(whisper_rs::install_logging_hooks);
        if !path.is_file() {
            return Err(TranscribeError::MissingModel(path.to_path_buf()));
        }
        let params = WhisperContextParameters {
            use_gpu: false,
            ..Default::default()
        };
        let context =
            WhisperContext::new_with_params(path, params).map_err(|e| TranscribeError::Load {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if let Some(lang) = language
            && !context.is_multilingual()
            && lang != "en"
        {
            return Err(TranscribeError::Load {
                path: path.to_path_buf(),
                message: format!("an English-only model cannot transcribe language {lang:?}"),
            });
        }
        Ok(Self {
            context: Arc::new(context),
            path: path.to_path_buf(),
            language: language.map(str::to_owned),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A decoding state for one thread.
    pub fn session(&self, threads: usize) -> Result<WhisperSession, TranscribeError> {
        let state = self
            .context
            .create_state()
            .map_err(|e| TranscribeError::Run(e.to_string()))?;
        Ok(WhisperSession {
            model: self.clone(),
            state,
            threads: threads.max(1) as i32,
        })
    }
}

/// A piece of recognised text, times relative to the start of the audio it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RawText {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Unredacted: never stored, logged or sent; see [`super::redact`].
    pub text: String,
}

/// One thread's whisper decoder.
pub struct WhisperSession {
    model: WhisperModel,
    state: whisper_rs::WhisperState,
    threads: i32,
}

impl WhisperSession {
    /// Transcribes 16 kHz mono speech (at most 30 s); empty when whisper heard no words.
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<Vec<RawText>, TranscribeError> {
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads);
        params.set_language(self.model.language.as_deref());
        params.set_translate(false);
        // Each speech segment stands alone: no carried-over text to hallucinate from.
        params.set_no_context(true);
        params.set_suppress_blank(true);
        // No sampling fallback at higher temperatures: the same audio gives the same text.
        params.set_temperature(0.0);
        params.set_temperature_inc(0.0);
        params.set_suppress_nst(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        // Padding to whisper's 30 s is the costliest part; VAD segments are short, so it
        // pays to run the encoder only over the segment.
        params.set_audio_ctx(audio_ctx(samples.len()));
        self.state
            .full(params, samples)
            .map_err(|e| TranscribeError::Run(e.to_string()))?;
        let mut out = Vec::new();
        for segment in self.state.as_iter() {
            if segment.no_speech_probability() > NO_SPEECH_MAX {
                continue;
            }
            let text = segment
                .to_str_lossy()
                .map_err(|e| TranscribeError::Run(e.to_string()))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            out.push(RawText {
                // whisper's timestamps are in 10 ms units.
                start_ms: segment.start_timestamp().max(0) as u64 * 10,
                end_ms: segment.end_timestamp().max(0) as u64 * 10,
                text: text.to_owned(),
            });
        }
        Ok(out)
    }
}

/// Encoder frames (20 ms each, 1500 for whisper's full 30 s) to run for `samples` at 16 kHz.
///
/// Measured on the Asterisk prompts (tests/transcribe.rs): a context of at least 384 frames
/// (7.7 s) with 128 frames (2.6 s) beyond the speech gives 2-4% WER; 256 with 64 gave 14-22%
/// (whisper repeats itself when its context ends right after the speech); the full 1500 costs
/// four times as much.
fn audio_ctx(samples: usize) -> i32 {
    let frames = samples.div_ceil(320) + 128;
    frames.clamp(384, 1500) as i32
}
