//! Caller-channel selection: stereo call recordings often carry the caller on one channel and
//! the agent on the other; only the caller is screened.

use super::AudioError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelPick {
    /// Average all channels (mono feeds, or a mixed call).
    #[default]
    Mix,
    /// Keep one channel (0-based).
    Channel(u16),
}

impl ChannelPick {
    pub fn from_option(channel: Option<u16>) -> Self {
        channel.map_or(Self::Mix, Self::Channel)
    }

    /// Checks the pick against a stream's channel count.
    pub fn check(self, channels: u16) -> Result<Self, AudioError> {
        match self {
            Self::Channel(c) if c >= channels => Err(AudioError::NoSuchChannel {
                channel: c,
                channels,
            }),
            _ => Ok(self),
        }
    }

    /// Appends the caller's mono samples from `interleaved` to `out`. Non-finite samples become
    /// silence and values are clamped to [-1, 1]; returns how many samples were not finite.
    /// A trailing partial frame is ignored.
    pub fn extract(self, interleaved: &[f32], channels: u16, out: &mut Vec<f32>) -> usize {
        let n = channels.max(1) as usize;
        let mut non_finite = 0;
        let mut clean = |x: f32| {
            if x.is_finite() {
                x.clamp(-1.0, 1.0)
            } else {
                non_finite += 1;
                0.0
            }
        };
        match self {
            _ if n == 1 => out.extend(interleaved.iter().map(|&x| clean(x))),
            Self::Mix => {
                let scale = 1.0 / n as f32;
                out.extend(
                    interleaved
                        .chunks_exact(n)
                        .map(|frame| frame.iter().map(|&x| clean(x)).sum::<f32>() * scale),
                )
            }
            Self::Channel(c) => out.extend(
                interleaved
                    .chunks_exact(n)
                    .map(|frame| clean(frame[c as usize])),
            ),
        }
        non_finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_caller_channel() {
        let stereo = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7];
        let mut out = Vec::new();
        ChannelPick::Channel(1).extract(&stereo, 2, &mut out);
        assert_eq!(out, [0.9, 0.8, 0.7]);
        out.clear();
        ChannelPick::Mix.extract(&stereo, 2, &mut out);
        assert!(out.iter().all(|&x| (x - 0.5).abs() < 1e-6));
    }

    #[test]
    fn non_finite_samples_become_silence() {
        let mut out = Vec::new();
        let bad = ChannelPick::Mix.extract(&[f32::NAN, 2.0, f32::INFINITY, -0.5], 1, &mut out);
        assert_eq!(bad, 2);
        assert_eq!(out, [0.0, 1.0, 0.0, -0.5]);
    }

    #[test]
    fn missing_channel_is_an_error() {
        assert!(ChannelPick::Channel(2).check(2).is_err());
        assert!(ChannelPick::Channel(1).check(2).is_ok());
    }
}
