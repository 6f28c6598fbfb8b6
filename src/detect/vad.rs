//! Silero VAD (v6, ONNX) for speech gating: 32 ms frames, at 16 kHz or, for narrowband calls, in
//! the model's own 8 kHz mode on the call's 8 kHz audio (256-sample frames: about 40% cheaper, and
//! no upsampled band for it to look at). The session is shared by every call a thread drives; each
//! call keeps only its own recurrent state ([`VadState`]). One run of the model can score the next
//! frame of many calls at once (a batch costs about 90 µs per frame where one frame alone costs
//! about 210 µs); calls at the two rates share a [`SileroVad::run`], which makes one model run
//! per rate.

use ort::session::Session;
use ort::value::TensorRef;

use super::DetectError;
use super::session::open_session;

/// Samples per VAD frame at 16 kHz.
pub const FRAME: usize = 512;
/// Samples per VAD frame at 8 kHz (the same 32 ms).
pub const FRAME_8K: usize = 256;
const CONTEXT: usize = 64;
const CONTEXT_8K: usize = 32;
const STATE: usize = 2 * 128;
const WIDTH: usize = CONTEXT + FRAME;

/// The two rates the model runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rate {
    Wide,
    Narrow,
}

impl Rate {
    fn frame(self) -> usize {
        match self {
            Rate::Wide => FRAME,
            Rate::Narrow => FRAME_8K,
        }
    }

    fn width(self) -> usize {
        match self {
            Rate::Wide => WIDTH,
            Rate::Narrow => CONTEXT_8K + FRAME_8K,
        }
    }

    fn hz(self) -> i64 {
        match self {
            Rate::Wide => 16_000,
            Rate::Narrow => 8_000,
        }
    }
}

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
    /// Context then frame; an 8 kHz call uses the first `CONTEXT_8K + FRAME_8K`.
    input: [f32; WIDTH],
    state: [f32; STATE],
    frame: Frame,
    rate: Rate,
}

impl Default for VadState {
    /// A call gated at 16 kHz.
    fn default() -> Self {
        Self {
            input: [0.0; WIDTH],
            state: [0.0; STATE],
            frame: Frame::Idle,
            rate: Rate::Wide,
        }
    }
}

impl VadState {
    /// A call gated in the model's 8 kHz mode: its frames are [`FRAME_8K`] samples at 8 kHz.
    pub fn narrowband() -> Self {
        Self {
            rate: Rate::Narrow,
            ..Self::default()
        }
    }

    /// Samples per frame this call hands over: [`FRAME`] at 16 kHz, [`FRAME_8K`] at 8 kHz.
    pub fn frame_len(&self) -> usize {
        self.rate.frame()
    }

    fn context(&self) -> usize {
        self.rate.width() - self.rate.frame()
    }

    /// Hands over the call's next frame ([`VadState::frame_len`] samples) for the next
    /// [`SileroVad::run`].
    pub fn stage(&mut self, frame: &[f32]) {
        let (context, width) = (self.context(), self.rate.width());
        self.input[context..width].copy_from_slice(&frame[..width - context]);
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
        let (context, width) = (self.context(), self.rate.width());
        self.input[context..width].copy_from_slice(&frame[..width - context]);
        self.input.copy_within(width - context..width, 0);
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

    /// Scores the staged frame of every call in `calls` (one frame per call: the state is
    /// recurrent), in one model run per rate present. Each call reads its probability back with
    /// [`VadState::take`].
    pub fn run(&mut self, calls: &mut [&mut VadState]) -> Result<(), DetectError> {
        let mut outcome = Ok(());
        for rate in [Rate::Wide, Rate::Narrow] {
            let n = calls.iter().filter(|c| c.rate == rate).count();
            if n > 0 {
                // A failed run leaves its calls' frames staged (`take` says so); the other
                // rate's calls are still scored.
                let result = self.run_rate(rate, n, calls);
                outcome = outcome.and(result);
            }
        }
        outcome
    }

    /// One model run over the `n` calls of `rate` among `calls`.
    fn run_rate(
        &mut self,
        rate: Rate,
        n: usize,
        calls: &mut [&mut VadState],
    ) -> Result<(), DetectError> {
        let (half, width, frame) = (STATE / 2, rate.width(), rate.frame());
        self.input.resize(n * width, 0.0);
        self.state.resize(n * STATE, 0.0);
        for (b, call) in calls.iter().filter(|c| c.rate == rate).enumerate() {
            self.input[b * width..(b + 1) * width].copy_from_slice(&call.input[..width]);
            // The state is [2, batch, 128]: each call's two halves go to the two planes.
            self.state[b * half..(b + 1) * half].copy_from_slice(&call.state[..half]);
            self.state[(n + b) * half..(n + b + 1) * half].copy_from_slice(&call.state[half..]);
        }
        let sr = [rate.hz()];
        let outputs = self
            .session
            .run(ort::inputs![
                "input" => TensorRef::from_array_view(([n, width], &self.input[..n * width])).map_err(DetectError::run)?,
                "state" => TensorRef::from_array_view(([2usize, n, 128], &self.state[..n * STATE])).map_err(DetectError::run)?,
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
        for (b, call) in calls.iter_mut().filter(|c| c.rate == rate).enumerate() {
            call.state[..half].copy_from_slice(&s[b * half..(b + 1) * half]);
            call.state[half..].copy_from_slice(&s[(n + b) * half..(n + b + 1) * half]);
            // The frame's last samples become the next frame's context.
            call.input.copy_within(frame..width, 0);
            call.frame = Frame::Scored(p[b]);
        }
        Ok(())
    }

    /// Speech probability of the next frame of one call, in a run of its own.
    pub fn probability(&mut self, call: &mut VadState, frame: &[f32]) -> Result<f32, DetectError> {
        call.stage(frame);
        let result = self.run(&mut [&mut *call]);
        let p = call.take().flatten();
        result.map(|()| p.unwrap_or(0.0))
    }
}
