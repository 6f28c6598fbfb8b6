//! Resampling to the pipeline rate with rubato. All buffers are allocated once per stream; the
//! resampler's own delay is removed so output time lines up with input time.

use rubato::{FftFixedIn, Resampler as _};

use super::AudioError;

/// Input chunk handed to the FFT resampler (about 20 ms at any common rate).
const CHUNK_MS: usize = 20;

pub struct Resampler {
    inner: Option<Fft>,
    input_rate: u32,
    output_rate: u32,
    frames_in: u64,
    frames_out: u64,
}

struct Fft {
    resampler: FftFixedIn<f32>,
    pending: Vec<f32>,
    output: Vec<Vec<f32>>,
    /// Leading output frames that are only the filter's delay.
    delay_left: usize,
}

impl Resampler {
    pub fn new(input_rate: u32, output_rate: u32) -> Result<Self, AudioError> {
        let inner = if input_rate == output_rate {
            None
        } else {
            let chunk = (input_rate as usize * CHUNK_MS / 1000).max(16);
            let resampler =
                FftFixedIn::<f32>::new(input_rate as usize, output_rate as usize, chunk, 1, 1)
                    .map_err(|e| AudioError::Resample(e.to_string()))?;
            let output = vec![vec![0.0; resampler.output_frames_max()]];
            Some(Fft {
                delay_left: resampler.output_delay(),
                pending: Vec::with_capacity(resampler.input_frames_max()),
                resampler,
                output,
            })
        };
        Ok(Self {
            inner,
            input_rate,
            output_rate,
            frames_in: 0,
            frames_out: 0,
        })
    }

    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// Appends the resampled form of `input` (mono) to `out`.
    pub fn process(&mut self, mut input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        self.frames_in += input.len() as u64;
        let Some(fft) = &mut self.inner else {
            out.extend_from_slice(input);
            self.frames_out += input.len() as u64;
            return Ok(());
        };
        while !input.is_empty() {
            let need = fft.resampler.input_frames_next() - fft.pending.len();
            let take = need.min(input.len());
            fft.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if fft.pending.len() == fft.resampler.input_frames_next() {
                let (_, produced) = fft
                    .resampler
                    .process_into_buffer(&[&fft.pending], &mut fft.output, None)
                    .map_err(|e| AudioError::Resample(e.to_string()))?;
                fft.pending.clear();
                self.frames_out += fft.emit(produced, out) as u64;
            }
        }
        Ok(())
    }

    /// Drains what is still inside the filter at the end of a stream, so the total output is
    /// the input duration at the new rate.
    pub fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let expected =
            (self.frames_in as u128 * self.output_rate as u128 / self.input_rate as u128) as u64;
        let Some(fft) = &mut self.inner else {
            return Ok(());
        };
        while self.frames_out < expected {
            let input: Option<&[&[f32]]> = if fft.pending.is_empty() {
                None
            } else {
                Some(&[&fft.pending])
            };
            let (_, produced) = fft
                .resampler
                .process_partial_into_buffer(input, &mut fft.output, None)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            fft.pending.clear();
            let room = (expected - self.frames_out) as usize;
            let start = out.len();
            fft.emit(produced, out);
            out.truncate(start + room.min(out.len() - start));
            self.frames_out += (out.len() - start) as u64;
        }
        fft.pending.clear();
        Ok(())
    }
}

impl Fft {
    /// Appends `produced` output frames, minus any remaining filter delay; returns how many.
    fn emit(&mut self, produced: usize, out: &mut Vec<f32>) -> usize {
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        out.extend_from_slice(&self.output[0][skip..produced]);
        produced - skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RATES: [u32; 7] = [8_000, 11_025, 16_000, 22_050, 44_100, 48_000, 96_000];

    fn sine(rate: u32, freq: f32, amp: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Frequency from zero crossings, level as RMS, over the middle of a signal.
    fn measure(x: &[f32], rate: u32) -> (f32, f32) {
        let mid = &x[x.len() / 4..x.len() * 3 / 4];
        let crossings = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        let freq = crossings as f32 * rate as f32 / mid.len() as f32;
        let rms = (mid.iter().map(|v| v * v).sum::<f32>() / mid.len() as f32).sqrt();
        (freq, rms)
    }

    fn resample_all(rate: u32, input: &[f32], piece: usize) -> Vec<f32> {
        let mut r = Resampler::new(rate, 16_000).unwrap();
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            r.process(chunk, &mut out).unwrap();
        }
        r.flush(&mut out).unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Output length is the input duration at 16 kHz, whatever the rate and chunking.
        #[test]
        fn output_length_matches_duration(
            rate_index in 0..RATES.len(),
            frames in 0usize..20_000,
            piece in 1usize..3_000,
        ) {
            let rate = RATES[rate_index];
            let input = sine(rate, 440.0, 0.5, frames);
            let out = resample_all(rate, &input, piece);
            let expected = frames as u64 * 16_000 / rate as u64;
            prop_assert_eq!(out.len() as u64, expected);
        }

        /// A tone keeps its frequency and level (within the 16 kHz band).
        #[test]
        fn sine_keeps_frequency_and_level(
            rate_index in 0..RATES.len(),
            freq in 200.0f32..3_400.0,
            amp in 0.05f32..0.9,
        ) {
            let rate = RATES[rate_index];
            let input = sine(rate, freq, amp, rate as usize);
            let out = resample_all(rate, &input, 1_000);
            let (f, rms) = measure(&out, 16_000);
            prop_assert!((f - freq).abs() <= freq * 0.01 + 4.0, "{rate} Hz: {freq} -> {f}");
            let want = amp / std::f32::consts::SQRT_2;
            prop_assert!((rms - want).abs() <= want * 0.02, "{rate} Hz: rms {want} -> {rms}");
        }
    }

    #[test]
    fn delay_is_removed() {
        // A click at 0.5 s must come out at 0.5 s.
        for rate in RATES {
            let mut input = vec![0.0; rate as usize];
            input[rate as usize / 2] = 1.0;
            let out = resample_all(rate, &input, 777);
            let peak = out
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0;
            assert!((peak as i64 - 8_000).abs() <= 2, "{rate}: peak at {peak}");
        }
    }
}
