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

/// What whisper made of one speech segment.
#[derive(Debug, Clone, PartialEq)]
pub enum Transcription {
    /// Recognised text (empty when whisper heard no words).
    Text(Vec<RawText>),
    /// Speech whose decodings all looped, ran away or were unsure (a repetition loop such as
    /// `W-W-W-W-...` on digits read one by one): no text is shown for it, only that it happened.
    Unintelligible,
}

/// zlib compression ratio above which a text of at least `LOOP_COMPRESSION_MIN_LEN` bytes is a
/// repetition loop: OpenAI Whisper's `compression_ratio_threshold`, the test its temperature
/// fallback uses on 30 s windows (on a short text the ratio says little: a card number read in
/// words compresses by 3).
const LOOP_COMPRESSION_RATIO: f64 = 2.4;
const LOOP_COMPRESSION_MIN_LEN: usize = 200;
/// A unit repeated this often in a row, over this many bytes, is a loop (see [`is_loop`]).
const LOOP_UNIT_MAX: usize = 24;
const LOOP_REPEATS: usize = 8;
const LOOP_SPAN_MIN: usize = 24;
/// Average log-probability of the text tokens below which a decoding is retried: OpenAI
/// Whisper's `logprob_threshold` (whisper.cpp's `logprob_thold`).
const DOUBTFUL_LOGPROB: f32 = -1.0;
/// Text tokens one segment may produce: whisper.cpp's per-segment cap (`max_tokens`) stops a
/// runaway segment, and more than `TOKENS_PER_S` per second of audio over the whole segment
/// (plus `TOKENS_SLACK`) is a runaway too. Read speech is 3-6 tokens per second; spoken digits
/// about as many.
const TOKENS_PER_SEGMENT: i32 = 96;
const TOKENS_PER_S: f64 = 12.0;
const TOKENS_SLACK: f64 = 24.0;

/// One thread's whisper decoder.
pub struct WhisperSession {
    model: WhisperModel,
    state: whisper_rs::WhisperState,
    threads: i32,
}

/// One decoding pass and how far to trust it.
struct Pass {
    pieces: Vec<RawText>,
    /// Looped, ran away, or (`unsure`) decoded with low confidence.
    looped: bool,
    unsure: bool,
}

impl WhisperSession {
    /// Transcribes 16 kHz mono speech (at most 30 s).
    ///
    /// Greedy decoding first; a pass that loops, runs away or is unsure (the tests of OpenAI
    /// Whisper's fallback: repetition, average log-probability) is decoded again with beam
    /// search, and a segment whose second pass still fails them is
    /// [`Transcription::Unintelligible`]: counted, never shown. The retry is
    /// beam search rather than whisper's sampling at a raised temperature so that the same audio
    /// always gives the same text (sampling draws from a generator whose state depends on what the
    /// worker decoded before). Each segment is decoded alone (`no_context`), so nothing a failed
    /// segment produced is carried into the next.
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<Transcription, TranscribeError> {
        let greedy = self.pass(samples, SamplingStrategy::Greedy { best_of: 1 })?;
        if !greedy.looped && !greedy.unsure {
            return Ok(Transcription::Text(greedy.pieces));
        }
        let beam = self.pass(
            samples,
            SamplingStrategy::BeamSearch {
                beam_size: 5,
                patience: -1.0,
            },
        )?;
        if !beam.looped && !beam.unsure {
            return Ok(Transcription::Text(beam.pieces));
        }
        Ok(Transcription::Unintelligible)
    }

    fn pass(
        &mut self,
        samples: &[f32],
        strategy: SamplingStrategy,
    ) -> Result<Pass, TranscribeError> {
        let mut params = FullParams::new(strategy);
        params.set_n_threads(self.threads);
        params.set_language(self.model.language.as_deref());
        params.set_translate(false);
        // Each speech segment stands alone: no carried-over text to hallucinate from.
        params.set_no_context(true);
        params.set_suppress_blank(true);
        // No sampling at higher temperatures: the fallback is ours (see `transcribe`).
        params.set_temperature(0.0);
        params.set_temperature_inc(0.0);
        params.set_max_tokens(TOKENS_PER_SEGMENT);
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
        let eot = self.model.context.token_eot();
        let (mut tokens, mut logprob) = (0usize, 0f64);
        let mut looped = false;
        let mut pieces = Vec::new();
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
            for i in 0..segment.n_tokens() {
                if let Some(token) = segment.get_token(i)
                    && token.token_id() < eot
                {
                    tokens += 1;
                    logprob += f64::from(token.token_data().plog);
                }
            }
            looped |= is_loop(text);
            pieces.push(RawText {
                // whisper's timestamps are in 10 ms units.
                start_ms: segment.start_timestamp().max(0) as u64 * 10,
                end_ms: segment.end_timestamp().max(0) as u64 * 10,
                text: text.to_owned(),
            });
        }
        let seconds = samples.len() as f64 / 16_000.0;
        looped |= tokens as f64 > TOKENS_SLACK + TOKENS_PER_S * seconds;
        let joined: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
        looped |= is_loop(&joined.join(" "));
        let mean_logprob = if tokens > 0 {
            logprob / tokens as f64
        } else {
            0.0
        };
        let unsure = mean_logprob < f64::from(DOUBTFUL_LOGPROB);
        tracing::debug!(tokens, mean_logprob, looped, unsure, "Whisper pass.");
        Ok(Pass {
            pieces,
            looped,
            unsure,
        })
    }
}

/// Whether `text` is a repetition loop: a unit of up to [`LOOP_UNIT_MAX`] characters repeated
/// at least [`LOOP_REPEATS`] times in a row over at least [`LOOP_SPAN_MIN`] characters
/// (`W-W-W-W-...`, `Thank you. Thank you. ...`), or a long text that compresses (zlib) by more
/// than [`LOOP_COMPRESSION_RATIO`], as only text that repeats itself does. Digit strings read in
/// groups ("four one one one, one one one one, ...") are not loops: their runs are short.
pub fn is_loop(text: &str) -> bool {
    let b = text.as_bytes();
    for unit in 1..=LOOP_UNIT_MAX.min(b.len()) {
        // `same`: how many bytes in a row equal the byte one unit earlier.
        let mut same = 0;
        for j in unit..b.len() {
            same = if b[j] == b[j - unit] { same + 1 } else { 0 };
            let span = same + unit;
            if span >= LOOP_SPAN_MIN && span / unit >= LOOP_REPEATS {
                return true;
            }
        }
    }
    b.len() >= LOOP_COMPRESSION_MIN_LEN && compression_ratio(b) > LOOP_COMPRESSION_RATIO
}

fn compression_ratio(bytes: &[u8]) -> f64 {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec does not fail; if it did, the text would count as incompressible.
    match z.write_all(bytes).and_then(|()| z.finish()) {
        Ok(packed) if !packed.is_empty() => bytes.len() as f64 / packed.len() as f64,
        _ => 1.0,
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

#[cfg(test)]
mod tests {
    use super::is_loop;

    #[test]
    fn repetition_loops_are_told_from_speech_and_digit_strings() {
        let stutter = "W-".repeat(120);
        assert!(is_loop(&stutter));
        assert!(is_loop(&"one one one one ".repeat(12)));
        assert!(is_loop(&"Thank you. ".repeat(20)));
        assert!(is_loop("W-W-W-W-W-W-W-W-W-W-W-W-W"));
        assert!(is_loop(
            &"I will transfer the money to the account now. ".repeat(6)
        ));
        for fine in [
            "My card number is 4111 1111 1111 1111. Thank you.",
            "four one one one, one one one one, one one one one, one one one one",
            "A B C D E F G H I J K L M N O P",
            "Please wire the money today, and don't tell anyone. I need it before the bank closes \
             at five, and my manager says the account is waiting for the transfer.",
            "",
            "Yes.",
            "1111111111111111",
            "My card number is four one one one, one one one one, one one one one, one one one one. Thank you.",
            "A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P, Q, R, S, T, U, V, W, X, Y, Z.",
            "........",
        ] {
            assert!(!is_loop(fine), "{fine:?}");
        }
    }
}
