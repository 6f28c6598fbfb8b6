//! One call's audio path: caller channel, resampling to 16 kHz, Silero speech gating, and
//! sliding windows over the speech, handed to the detector pool as they fill.

use std::collections::VecDeque;

use crate::audio::resample::Resampler;
use crate::audio::{AudioError, ChannelPick, SourceFormat};
use crate::config::{SpeechConfig, WindowConfig};
use crate::detect::vad::{FRAME, FRAME_8K};
use crate::detect::{DetectError, SileroVad, VadState, WindowBuffers, WindowJob};
use crate::transcribe::SpeechSegment;

/// The pipeline's sample rate (Silero VAD and the detector both run at 16 kHz).
pub const PIPELINE_RATE: u32 = 16_000;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("speech detection: {0}")]
    Vad(#[from] DetectError),
}

/// Counters of one call's audio path.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamStats {
    /// Caller audio received, in milliseconds.
    pub audio_ms: u64,
    /// Speech kept by the gate, in milliseconds.
    pub speech_ms: u64,
    /// Audio taken as silence without running the VAD (below the energy floor, or outside
    /// speech and within `speech.noise_margin_db` of the call's noise level), in milliseconds.
    pub quiet_ms: u64,
    /// NaN or infinite input samples replaced by silence.
    pub non_finite_samples: u64,
    pub windows_emitted: u64,
    /// Speech segments handed to transcription.
    pub segments_emitted: u64,
}

/// What a call's audio path hands on.
#[derive(Debug)]
pub enum StreamOutput {
    /// A detector window.
    Window(WindowJob),
    /// A whole speech segment, for transcription.
    Speech(SpeechSegment),
}

/// Lengths of the speech segments cut for transcription, in 16 kHz samples.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    pub min_samples: usize,
    pub max_samples: usize,
}

/// Gated speech gathered into segments: one per stretch of speech, cut at `max_samples`.
#[derive(Debug)]
struct Segmenter {
    limits: SegmentLimits,
    samples: Vec<f32>,
    /// Call time (16 kHz samples) of `samples[0]`.
    start: u64,
    next_seq: u64,
}

impl Segmenter {
    fn new(limits: SegmentLimits) -> Self {
        Self {
            limits,
            samples: Vec::new(),
            start: 0,
            next_seq: 0,
        }
    }

    /// Adds a kept speech frame that started at call sample `start`.
    fn push(&mut self, frame: &[f32], start: u64, call: u64) -> Option<SpeechSegment> {
        if self.samples.is_empty() {
            self.start = start;
        }
        self.samples.extend_from_slice(frame);
        (self.samples.len() >= self.limits.max_samples)
            .then(|| self.end(call))
            .flatten()
    }

    /// Speech stopped: the segment so far, if long enough.
    fn end(&mut self, call: u64) -> Option<SpeechSegment> {
        if self.samples.len() < self.limits.min_samples {
            self.samples.clear();
            return None;
        }
        let ms = |s: u64| s * 1000 / PIPELINE_RATE as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let samples = std::mem::replace(
            &mut self.samples,
            Vec::with_capacity(self.limits.max_samples.min(PIPELINE_RATE as usize * 2)),
        );
        Some(SpeechSegment {
            call,
            seq,
            start_ms: ms(self.start),
            end_ms: ms(self.start + samples.len() as u64),
            samples,
        })
    }
}

/// Speech gate with hysteresis and hangover over 32 ms VAD frames, and a pre-gate that spares
/// the VAD the frames that cannot be speech.
#[derive(Debug, Clone)]
struct Gate {
    /// Mean square below which a frame is silence without asking the VAD.
    floor: f32,
    /// The call's noise level in dB (minimum tracking: down at once, up [`NOISE_RISE_DB`] a
    /// frame), and how far above it a frame must be for the VAD to be asked (0: always asked).
    noise_db: f32,
    margin_db: f32,
    start: f32,
    keep: f32,
    hangover_frames: u32,
    in_speech: bool,
    hangover_left: u32,
}

/// How fast the noise estimate climbs, per 32 ms frame (about 6 dB a second): a word cannot lift
/// it to the speech's level (and inside speech the VAD is always asked), and it reaches a noisy
/// line's level from the energy floor within seconds.
const NOISE_RISE_DB: f32 = 0.2;

impl Gate {
    fn new(c: &SpeechConfig) -> Self {
        Self {
            // -200 dBFS (the lowest allowed) turns the floor off, digital silence included.
            floor: if c.energy_floor_dbfs <= -200.0 {
                0.0
            } else {
                10f32.powf(c.energy_floor_dbfs / 10.0)
            },
            // From the floor (below any line's noise), so the call's first frames reach the VAD.
            noise_db: c.energy_floor_dbfs.max(-120.0),
            margin_db: c.noise_margin_db,
            start: c.start_threshold,
            keep: c.continue_threshold,
            hangover_frames: (c.hangover_ms as usize * PIPELINE_RATE as usize / 1000 / FRAME)
                as u32,
            in_speech: false,
            hangover_left: 0,
        }
    }

    /// Whether a frame is silence without asking the VAD: below the energy floor, or, outside
    /// speech and its hangover, less than `margin_db` above the call's noise level. Tracks the
    /// noise level, so every frame passes through here once, in order.
    fn quiet(&mut self, frame: &[f32]) -> bool {
        let power = frame.iter().map(|x| x * x).sum::<f32>() / frame.len().max(1) as f32;
        if self.margin_db > 0.0 {
            let db = 10.0 * power.max(1e-12).log10();
            self.noise_db = if db < self.noise_db {
                db
            } else {
                (self.noise_db + NOISE_RISE_DB).min(db)
            };
        }
        if power < self.floor {
            return true;
        }
        let listening = self.in_speech || self.hangover_left > 0;
        self.margin_db > 0.0 && !listening && 10.0 * power.log10() < self.noise_db + self.margin_db
    }

    /// Whether a frame with speech probability `p` is kept.
    fn keep(&mut self, p: f32) -> bool {
        if p >= self.start || (self.in_speech && p >= self.keep) {
            self.in_speech = true;
            self.hangover_left = self.hangover_frames;
            true
        } else if self.hangover_left > 0 {
            self.in_speech = false;
            self.hangover_left -= 1;
            true
        } else {
            self.in_speech = false;
            false
        }
    }
}

/// Window arithmetic over gated speech: which samples, and when they were said.
#[derive(Debug)]
struct Windower {
    window: usize,
    hop: usize,
    min_final: usize,
    /// Speech samples, at most `window + FRAME`.
    speech: VecDeque<f32>,
    /// Call time (in samples) at which each buffered speech frame started.
    frame_starts: VecDeque<u64>,
    since_last: usize,
    speech_total: u64,
    next_seq: u64,
    buffers: WindowBuffers,
}

impl Windower {
    fn new(window: usize, hop: usize, min_final: usize) -> Self {
        let frames = window.div_ceil(FRAME) + 2;
        Self {
            window,
            hop: hop.max(1),
            min_final,
            speech: VecDeque::with_capacity(frames * FRAME),
            frame_starts: VecDeque::with_capacity(frames),
            since_last: 0,
            speech_total: 0,
            next_seq: 0,
            buffers: WindowBuffers::default(),
        }
    }

    /// Adds one speech frame that started at call sample `start`; returns a window when due.
    fn push_frame(&mut self, frame: &[f32], start: u64, call: u64) -> Option<WindowJob> {
        self.speech.extend(frame);
        self.frame_starts.push_back(start);
        self.speech_total += frame.len() as u64;
        self.since_last += frame.len();
        while self.speech.len() >= self.window + FRAME {
            self.speech.drain(..FRAME);
            self.frame_starts.pop_front();
        }
        if self.speech.len() < self.window || (self.next_seq > 0 && self.since_last < self.hop) {
            return None;
        }
        self.since_last = 0;
        let skip = self.speech.len() - self.window;
        let mut samples = self.buffers.take(self.window);
        samples.extend(self.speech.iter().skip(skip));
        let start_sample = self.frame_starts.front().copied().unwrap_or(0) + skip as u64;
        Some(self.job(call, start_sample, start + frame.len() as u64, samples))
    }

    /// At the end of a call with no window yet: one window of the speech repeated, if enough.
    fn finish(&mut self, call: u64) -> Option<WindowJob> {
        if self.next_seq > 0 || self.speech.is_empty() || self.speech_total < self.min_final as u64
        {
            return None;
        }
        let mut samples = self.buffers.take(self.window);
        samples.extend(self.speech.iter().cycle().take(self.window));
        let start = self.frame_starts.front().copied().unwrap_or(0);
        let end = self.frame_starts.back().copied().unwrap_or(0) + FRAME as u64;
        Some(self.job(call, start, end, samples))
    }

    fn job(&mut self, call: u64, start: u64, end: u64, samples: Vec<f32>) -> WindowJob {
        let ms = |s: u64| s * 1000 / PIPELINE_RATE as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        WindowJob {
            call,
            seq,
            start_ms: ms(start),
            end_ms: ms(end),
            samples,
        }
    }
}

/// The per-call audio path from source samples to detector windows.
pub struct CallStream {
    key: u64,
    format: SourceFormat,
    pick: ChannelPick,
    resampler: Resampler,
    vad: VadState,
    gate: Gate,
    windower: Windower,
    segmenter: Option<Segmenter>,
    mono: Vec<f32>,
    /// 16 kHz samples taken in, oldest first; the first `gated` of them are done with (they are
    /// let go once per chunk taken in, not once per frame).
    pending: Vec<f32>,
    gated: usize,
    /// Call time, in 16 kHz samples, of `pending[gated]`.
    position: u64,
    /// An 8 kHz call's own samples, for the VAD's 8 kHz mode (`speech.narrowband_vad`).
    narrow: Option<NarrowFrames>,
    input_frames: u64,
    stats: StreamStats,
}

/// An 8 kHz call's samples as they came, kept beside the 16 kHz ones so the VAD can gate each
/// 32 ms frame from the call's own audio: frame k is `pending[256k..]` here and `[512k..]` at
/// 16 kHz (the resampler's delay is removed, so they line up).
struct NarrowFrames {
    pending: Vec<f32>,
    gated: usize,
}

/// The samples the VAD reads for the frame `frame` of `pending`: the 8 kHz ones of a narrowband
/// call's, the 16 kHz ones otherwise.
fn vad_input<'a>(
    narrow: &'a Option<NarrowFrames>,
    pending: &'a [f32],
    frame: std::ops::Range<usize>,
) -> &'a [f32] {
    match narrow {
        Some(n) => &n.pending[n.gated..n.gated + FRAME_8K],
        None => &pending[frame],
    }
}

impl CallStream {
    pub fn new(
        key: u64,
        format: SourceFormat,
        pick: ChannelPick,
        speech: &SpeechConfig,
        windows: &WindowConfig,
        window_samples: usize,
        segments: Option<SegmentLimits>,
    ) -> Result<Self, StreamError> {
        let format = format.validate()?;
        let pick = pick.check(format.channels)?;
        let narrow = speech.narrowband_vad && format.sample_rate == 8_000;
        let ms = |v: u32| v as usize * PIPELINE_RATE as usize / 1000;
        Ok(Self {
            key,
            format,
            pick,
            resampler: Resampler::new(format.sample_rate, PIPELINE_RATE)?,
            vad: if narrow {
                VadState::narrowband()
            } else {
                VadState::default()
            },
            gate: Gate::new(speech),
            windower: Windower::new(
                window_samples,
                ms(windows.hop_ms),
                ms(windows.min_final_speech_ms),
            ),
            segmenter: segments.map(Segmenter::new),
            mono: Vec::new(),
            pending: Vec::with_capacity(FRAME * 4),
            gated: 0,
            position: 0,
            narrow: narrow.then(|| NarrowFrames {
                pending: Vec::with_capacity(FRAME_8K * 4),
                gated: 0,
            }),
            input_frames: 0,
            stats: StreamStats::default(),
        })
    }

    /// Fills windows into buffers from (and handed back to) `buffers`, e.g. the detector
    /// pool's, instead of allocating one per window.
    pub fn with_window_buffers(mut self, buffers: WindowBuffers) -> Self {
        self.windower.buffers = buffers;
        self
    }

    pub fn key(&self) -> u64 {
        self.key
    }

    pub fn format(&self) -> SourceFormat {
        self.format
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Feeds interleaved source samples; `emit` receives each window as it becomes due.
    pub fn push(
        &mut self,
        vad: &mut SileroVad,
        interleaved: &[f32],
        emit: &mut dyn FnMut(StreamOutput),
    ) -> Result<(), StreamError> {
        self.take(interleaved)?;
        self.drain(vad, emit)
    }

    /// Takes interleaved source samples in (caller channel, resampled) without gating them:
    /// [`CallStream::stage`] and [`CallStream::gate_staged`] then gate them a frame at a time,
    /// so that one VAD run can serve many calls.
    pub fn take(&mut self, interleaved: &[f32]) -> Result<(), StreamError> {
        self.mono.clear();
        let bad = self
            .pick
            .extract(interleaved, self.format.channels, &mut self.mono);
        self.stats.non_finite_samples += bad as u64;
        self.input_frames += self.mono.len() as u64;
        self.stats.audio_ms = self.input_frames * 1000 / self.format.sample_rate as u64;
        self.let_go_of_gated();
        self.resampler.process(&self.mono, &mut self.pending)?;
        if let Some(n) = &mut self.narrow {
            n.pending.extend_from_slice(&self.mono);
        }
        Ok(())
    }

    fn let_go_of_gated(&mut self) {
        self.pending.drain(..self.gated);
        self.gated = 0;
        if let Some(n) = &mut self.narrow {
            n.pending.drain(..n.gated);
            n.gated = 0;
        }
    }

    /// The next whole frame not yet gated, as a range of `pending` (with an 8 kHz call, once
    /// both rates hold it).
    fn next_frame(&self) -> Option<std::ops::Range<usize>> {
        let narrow_ready = self
            .narrow
            .as_ref()
            .is_none_or(|n| n.pending.len() - n.gated >= FRAME_8K);
        (self.pending.len() - self.gated >= FRAME && narrow_ready)
            .then(|| self.gated..self.gated + FRAME)
    }

    /// Ends the call: drains the resampler and scores what is left.
    pub fn finish(
        &mut self,
        vad: &mut SileroVad,
        emit: &mut dyn FnMut(StreamOutput),
    ) -> Result<(), StreamError> {
        self.let_go_of_gated();
        self.resampler.flush(&mut self.pending)?;
        self.drain(vad, emit)?;
        if self.pending.len() > self.gated {
            // The last partial frame, padded with silence.
            self.pending.resize(self.gated + FRAME, 0.0);
            if let Some(n) = &mut self.narrow {
                n.pending.resize(n.gated + FRAME_8K, 0.0);
            }
            self.drain(vad, emit)?;
        }
        if let Some(job) = self.windower.finish(self.key) {
            self.stats.windows_emitted += 1;
            emit(StreamOutput::Window(job));
        }
        if let Some(segment) = self.segmenter.as_mut().and_then(|s| s.end(self.key)) {
            self.stats.segments_emitted += 1;
            emit(StreamOutput::Speech(segment));
        }
        Ok(())
    }

    /// Gates every whole frame taken in so far, one VAD run per frame.
    fn drain(
        &mut self,
        vad: &mut SileroVad,
        emit: &mut dyn FnMut(StreamOutput),
    ) -> Result<(), StreamError> {
        while let Some(state) = self.stage(emit) {
            let result = vad.run(&mut [state]);
            self.gate_staged(emit);
            result?;
        }
        Ok(())
    }

    /// Gates the frames that are too quiet to need the VAD, then stages the next whole frame
    /// that does and returns its VAD state (`None`: no whole frame is waiting).
    pub fn stage(&mut self, emit: &mut dyn FnMut(StreamOutput)) -> Option<&mut VadState> {
        while let Some(frame) = self.next_frame() {
            let input = vad_input(&self.narrow, &self.pending, frame.clone());
            if self.gate.quiet(&self.pending[frame]) {
                self.stats.quiet_ms += (FRAME as u64 * 1000) / PIPELINE_RATE as u64;
                self.vad.pass(input);
                self.gate_frame(0.0, emit);
            } else {
                self.vad.stage(input);
                return Some(&mut self.vad);
            }
        }
        None
    }

    /// Gates the frame [`CallStream::stage`] staged, with the probability the VAD gave it (a
    /// failed run counts as silence); does nothing if no frame is staged.
    pub fn gate_staged(&mut self, emit: &mut dyn FnMut(StreamOutput)) {
        if let Some(p) = self.vad.take() {
            self.gate_frame(p.unwrap_or(0.0), emit);
        }
    }

    /// Gates the next whole frame, whose speech probability is `p`.
    fn gate_frame(&mut self, p: f32, emit: &mut dyn FnMut(StreamOutput)) {
        let frame = &self.pending[self.gated..self.gated + FRAME];
        let kept = self.gate.keep(p);
        if kept {
            self.stats.speech_ms += (FRAME as u64 * 1000) / PIPELINE_RATE as u64;
            if let Some(job) = self.windower.push_frame(frame, self.position, self.key) {
                self.stats.windows_emitted += 1;
                emit(StreamOutput::Window(job));
            }
        }
        if let Some(seg) = &mut self.segmenter {
            let segment = if kept {
                seg.push(frame, self.position, self.key)
            } else {
                seg.end(self.key)
            };
            if let Some(segment) = segment {
                self.stats.segments_emitted += 1;
                emit(StreamOutput::Speech(segment));
            }
        }
        self.position += FRAME as u64;
        self.gated += FRAME;
        if let Some(n) = &mut self.narrow {
            n.gated += FRAME_8K;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(w: &mut Windower, n: usize) -> Vec<WindowJob> {
        (0..n)
            .filter_map(|i| w.push_frame(&[0.1; FRAME], (i * FRAME) as u64, 7))
            .collect()
    }

    #[test]
    fn windows_come_every_hop_once_the_first_is_full() {
        // 1 s windows, 0.5 s hop, 32 ms frames.
        let mut w = Windower::new(16_000, 8_000, 6_400);
        let jobs = frames(&mut w, 100);
        // First window once 16000 samples are in: frame 32 (0-based 31) ends at 32*512 samples.
        assert_eq!(jobs[0].end_ms, (32 * FRAME as u64) * 1000 / 16_000);
        assert_eq!(jobs[0].end_ms - jobs[0].start_ms, 1000);
        for pair in jobs.windows(2) {
            let gap = pair[1].end_ms - pair[0].end_ms;
            assert!((480..=544).contains(&gap), "gap {gap} ms");
            assert_eq!(pair[1].seq, pair[0].seq + 1);
        }
        assert!(
            jobs.iter()
                .all(|j| j.samples.len() == 16_000 && j.call == 7)
        );
    }

    #[test]
    fn short_speech_yields_one_padded_window_at_the_end() {
        let mut w = Windower::new(16_000, 8_000, 6_400);
        assert!(frames(&mut w, 15).is_empty());
        let job = w.finish(7).expect("7680 samples of speech is enough");
        assert_eq!(job.samples.len(), 16_000);
        assert_eq!(job.seq, 0);
        let mut w = Windower::new(16_000, 8_000, 6_400);
        frames(&mut w, 5);
        assert!(w.finish(7).is_none(), "160 ms is too little");
    }

    #[test]
    fn gate_keeps_hangover_frames_then_closes() {
        let mut g = Gate::new(&SpeechConfig {
            hangover_ms: 64,
            ..SpeechConfig::default()
        });
        let kept: Vec<bool> = [0.1, 0.9, 0.4, 0.1, 0.1, 0.1, 0.1]
            .into_iter()
            .map(|p| g.keep(p))
            .collect();
        assert_eq!(kept, [false, true, true, true, true, false, false]);
    }

    #[test]
    fn frames_below_the_energy_floor_are_quiet() {
        let mut g = Gate::new(&SpeechConfig {
            energy_floor_dbfs: -60.0,
            noise_margin_db: 0.0,
            ..SpeechConfig::default()
        });
        // A sine of amplitude a has an RMS of a / sqrt(2).
        let sine =
            |a: f32| -> Vec<f32> { (0..FRAME).map(|i| a * (i as f32 * 0.3).sin()).collect() };
        assert!(g.quiet(&[0.0; FRAME]));
        assert!(g.quiet(&sine(0.001)), "-63 dBFS");
        assert!(!g.quiet(&sine(0.002)), "-57 dBFS");
        assert!(!g.quiet(&sine(0.3)));
        let mut off = Gate::new(&SpeechConfig {
            energy_floor_dbfs: -200.0,
            noise_margin_db: 0.0,
            ..SpeechConfig::default()
        });
        assert!(!off.quiet(&sine(0.001)));
        assert!(!off.quiet(&[0.0; FRAME]));
    }

    #[test]
    fn steady_noise_stops_reaching_the_vad_but_louder_frames_and_speech_do() {
        let mut g = Gate::new(&SpeechConfig {
            energy_floor_dbfs: -60.0,
            noise_margin_db: 6.0,
            ..SpeechConfig::default()
        });
        let mut seed = 7u32;
        let mut noise = |rms: f32| -> Vec<f32> {
            (0..FRAME)
                .map(|_| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * rms * 12f32.sqrt()
                })
                .collect()
        };
        // -40 dBFS hiss: asked about at first, while the estimate climbs from the floor...
        let asked: Vec<bool> = (0..200).map(|_| !g.quiet(&noise(0.01))).collect();
        assert!(
            asked[..20].iter().all(|&a| a),
            "the first frames reach the VAD"
        );
        // ...then spared, once the estimate has reached it (20 dB at 6 dB a second).
        assert!(asked[150..].iter().all(|&a| !a), "steady noise is spared");
        // A frame 10 dB over the noise is asked about.
        assert!(!g.quiet(&noise(0.0316)));
        // Inside speech every frame is asked about, however quiet (above the floor).
        assert!(g.keep(0.9));
        assert!(!g.quiet(&noise(0.01)));
        // Digital silence is under the floor, in speech or not.
        assert!(g.quiet(&[0.0; FRAME]));
    }
}
