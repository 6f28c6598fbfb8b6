//! Where audio enters: sources behind one trait (files, live devices, frames pushed by code),
//! G.711 decoding, caller-channel selection and resampling to the pipeline rate.

pub mod capture;
pub mod channels;
pub mod file;
pub mod g711;
pub mod push;
pub mod resample;

use std::path::PathBuf;

pub use channels::ChannelPick;

/// Lowest and highest input sample rates accepted anywhere (telephony to studio).
pub const MIN_SAMPLE_RATE: u32 = 4_000;
pub const MAX_SAMPLE_RATE: u32 = 384_000;
/// Most channels accepted from any source.
pub const MAX_CHANNELS: u16 = 64;

/// Shape of the interleaved samples a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

impl SourceFormat {
    /// Checks the rate and channel count against what the pipeline accepts.
    pub fn validate(self) -> Result<Self, AudioError> {
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&self.sample_rate) {
            return Err(AudioError::UnsupportedRate(self.sample_rate));
        }
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            return Err(AudioError::UnsupportedChannels(self.channels));
        }
        Ok(self)
    }
}

/// What a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Samples were appended (possibly none yet, for live sources).
    Samples,
    /// The source has ended; nothing more will come.
    End,
}

/// A stream of interleaved `f32` samples in [-1, 1]: a file, a live device, or frames pushed by code.
pub trait AudioSource: Send {
    fn format(&self) -> SourceFormat;
    /// Clears `out` and fills it with the next interleaved samples.
    fn read(&mut self, out: &mut Vec<f32>) -> Result<Read, AudioError>;
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable audio file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: decoding failed: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("sample rate {0} Hz is outside {MIN_SAMPLE_RATE}..={MAX_SAMPLE_RATE} Hz")]
    UnsupportedRate(u32),
    #[error("{0} channels is outside 1..={MAX_CHANNELS}")]
    UnsupportedChannels(u16),
    #[error("caller channel {channel} does not exist in a {channels}-channel stream")]
    NoSuchChannel { channel: u16, channels: u16 },
    #[error("resampler: {0}")]
    Resample(String),
    #[error("audio device: {0}")]
    Device(String),
}
