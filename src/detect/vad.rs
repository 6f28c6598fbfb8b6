//! Silero VAD (v6, ONNX) for speech gating: 32 ms frames at 16 kHz. The session is shared by
//! every call a thread drives; each call keeps only its own recurrent state ([`VadState`]).

use ort::session::Session;
use ort::value::TensorRef;

use super::DetectError;
use super::session::open_session;

/// Samples per VAD frame at 16 kHz.
pub const FRAME: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;

/// One ONNX session of the VAD model, owned by one thread.
pub struct SileroVad {
    session: Session,
}

/// The recurrent state and audio context of one call (about 1.3 KB).
#[derive(Clone)]
pub struct VadState {
    input: [f32; CONTEXT + FRAME],
    state: [f32; STATE],
}

impl Default for VadState {
    fn default() -> Self {
        Self {
            input: [0.0; CONTEXT + FRAME],
            state: [0.0; STATE],
        }
    }
}

impl SileroVad {
    pub fn new(model: &std::path::Path) -> Result<Self, DetectError> {
        Ok(Self {
            session: open_session(model, 1)?,
        })
    }

    /// Passes over a frame without running the model (a silent frame): it becomes the next
    /// frame's context, and the recurrent state carries on from the last frame scored.
    pub fn skip(&self, call: &mut VadState, frame: &[f32]) {
        call.input[CONTEXT..].copy_from_slice(&frame[..FRAME]);
        call.input.copy_within(FRAME.., 0);
    }

    /// Speech probability of the next 512-sample frame of the call whose state is `call`.
    pub fn probability(&mut self, call: &mut VadState, frame: &[f32]) -> Result<f32, DetectError> {
        call.input[CONTEXT..].copy_from_slice(&frame[..FRAME]);
        let sr = [16_000i64];
        let outputs = self
            .session
            .run(ort::inputs![
                "input" => TensorRef::from_array_view(([1usize, CONTEXT + FRAME], &call.input[..])).map_err(DetectError::run)?,
                "state" => TensorRef::from_array_view(([2usize, 1, 128], &call.state[..])).map_err(DetectError::run)?,
                "sr" => TensorRef::from_array_view(((), &sr[..])).map_err(DetectError::run)?,
            ])
            .map_err(DetectError::run)?;
        let (_, p) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(DetectError::run)?;
        let (_, s) = outputs["stateN"]
            .try_extract_tensor::<f32>()
            .map_err(DetectError::run)?;
        if s.len() != STATE {
            return Err(DetectError::Run(format!(
                "VAD state has {} values",
                s.len()
            )));
        }
        let p = p.first().copied().unwrap_or(0.0);
        call.state.copy_from_slice(s);
        // The last 64 samples become the next frame's context.
        call.input.copy_within(FRAME.., 0);
        Ok(p)
    }
}
