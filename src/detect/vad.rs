//! Silero VAD (v6, ONNX) for speech gating: 32 ms frames at 16 kHz. The session is shared by
//! every call a thread drives; each call keeps only its own recurrent state ([`VadState`]).
//! One run of the model can score the next frame of many calls at once (a batch costs about
//! 90 µs per frame where one frame alone costs about 210 µs).

use ort::session::Session;
use ort::value::TensorRef;

use super::DetectError;
use super::session::open_session;

/// Samples per VAD frame at 16 kHz.
pub const FRAME: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;
const WIDTH: usize = CONTEXT + FRAME;

/// One ONNX session of the VAD model, owned by one thread.
pub struct SileroVad {
    session: Session,
    /// Scratch for a run: every call's context and frame, then every call's state.
    input: Vec<f32>,
    state: Vec<f32>,
}

/// Where a call's next frame stands.
#[derive(Clone, Copy, Debug)]
enum Frame {
    /// No frame handed over.
    Idle,
    /// A frame waits in `input` for the next run.
    Staged,
    /// The run scored it.
    Scored(f32),
}

/// The recurrent state and audio context of one call (about 3.3 KB).
#[derive(Clone)]
pub struct VadState {
    input: [f32; WIDTH],
    state: [f32; STATE],
    frame: Frame,
}

impl Default for VadState {
    fn default() -> Self {
        Self {
            input: [0.0; WIDTH],
            state: [0.0; STATE],
            frame: Frame::Idle,
        }
    }
}

impl VadState {
    /// Hands over the call's next 512-sample frame for the next [`SileroVad::run`].
    pub fn stage(&mut self, frame: &[f32]) {
        self.input[CONTEXT..].copy_from_slice(&frame[..FRAME]);
        self.frame = Frame::Staged;
    }

    /// The staged frame's speech probability, once: `None` if no frame was staged, `Some(None)`
    /// if the run that should have scored it failed.
    pub fn take(&mut self) -> Option<Option<f32>> {
        let frame = std::mem::replace(&mut self.frame, Frame::Idle);
        match frame {
            Frame::Idle => None,
            Frame::Staged => Some(None),
            Frame::Scored(p) => Some(Some(p)),
        }
    }

    /// Passes over a frame without running the model (a silent frame): it becomes the next
    /// frame's context, and the recurrent state carries on from the last frame scored.
    pub fn pass(&mut self, frame: &[f32]) {
        self.input[CONTEXT..].copy_from_slice(&frame[..FRAME]);
        self.input.copy_within(FRAME.., 0);
    }
}

impl SileroVad {
    pub fn new(model: &std::path::Path) -> Result<Self, DetectError> {
        Ok(Self {
            session: open_session(model, 1)?,
            input: Vec::new(),
            state: Vec::new(),
        })
    }

    /// Scores the staged frame of every call in `calls` in one run (one frame per call: the
    /// state is recurrent). Each call reads its probability back with [`VadState::take`].
    pub fn run(&mut self, calls: &mut [&mut VadState]) -> Result<(), DetectError> {
        let n = calls.len();
        if n == 0 {
            return Ok(());
        }
        let half = STATE / 2;
        self.input.resize(n * WIDTH, 0.0);
        self.state.resize(n * STATE, 0.0);
        for (b, call) in calls.iter().enumerate() {
            self.input[b * WIDTH..(b + 1) * WIDTH].copy_from_slice(&call.input);
            // The state is [2, batch, 128]: each call's two halves go to the two planes.
            self.state[b * half..(b + 1) * half].copy_from_slice(&call.state[..half]);
            self.state[(n + b) * half..(n + b + 1) * half].copy_from_slice(&call.state[half..]);
        }
        let sr = [16_000i64];
        let outputs = self
            .session
            .run(ort::inputs![
                "input" => TensorRef::from_array_view(([n, WIDTH], &self.input[..])).map_err(DetectError::run)?,
                "state" => TensorRef::from_array_view(([2usize, n, 128], &self.state[..])).map_err(DetectError::run)?,
                "sr" => TensorRef::from_array_view(((), &sr[..])).map_err(DetectError::run)?,
            ])
            .map_err(DetectError::run)?;
        let (_, p) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(DetectError::run)?;
        let (_, s) = outputs["stateN"]
            .try_extract_tensor::<f32>()
            .map_err(DetectError::run)?;
        if p.len() != n || s.len() != n * STATE {
            return Err(DetectError::Run(format!(
                "VAD gave {} probabilities and {} state values for {n} frames",
                p.len(),
                s.len()
            )));
        }
        for (b, call) in calls.iter_mut().enumerate() {
            call.state[..half].copy_from_slice(&s[b * half..(b + 1) * half]);
            call.state[half..].copy_from_slice(&s[(n + b) * half..(n + b + 1) * half]);
            // The last 64 samples become the next frame's context.
            call.input.copy_within(FRAME.., 0);
            call.frame = Frame::Scored(p[b]);
        }
        Ok(())
    }

    /// Speech probability of the next 512-sample frame of one call, in a run of its own.
    pub fn probability(&mut self, call: &mut VadState, frame: &[f32]) -> Result<f32, DetectError> {
        call.stage(frame);
        let result = self.run(&mut [&mut *call]);
        let p = call.take().flatten();
        result.map(|()| p.unwrap_or(0.0))
    }
}
