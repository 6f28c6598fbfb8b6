//! Audio pushed in by code (tests, benches, the network ingest): a bounded queue of frames in
//! a telephony or PCM encoding, read by the pipeline like any other source.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use super::g711::{self, Law};
use super::{AudioError, AudioSource, Read, SourceFormat};

/// How pushed bytes encode samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Pcm16Le,
    F32Le,
    MuLaw,
    ALaw,
}

impl Encoding {
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Self::Pcm16Le => 2,
            Self::F32Le => 4,
            Self::MuLaw | Self::ALaw => 1,
        }
    }

    /// Appends the samples that `bytes` encode to `out`; the bytes must hold whole
    /// `channels`-channel samples.
    pub fn decode(self, bytes: &[u8], channels: u16, out: &mut Vec<f32>) -> Result<(), PushError> {
        let unit = self.bytes_per_sample() * channels as usize;
        if unit == 0 || !bytes.len().is_multiple_of(unit) {
            return Err(PushError::Misaligned {
                len: bytes.len(),
                channels,
            });
        }
        match self {
            Self::Pcm16Le => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0),
            ),
            Self::F32Le => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Self::MuLaw => g711::decode_into(Law::MuLaw, bytes, out),
            Self::ALaw => g711::decode_into(Law::ALaw, bytes, out),
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("frame of {len} bytes is not a whole number of {channels}-channel samples")]
    Misaligned { len: usize, channels: u16 },
    #[error("the call's audio queue is full; the frame was dropped")]
    Full,
    #[error("the call has ended")]
    Closed,
}

/// The writing end: encodes frames and queues them without blocking.
pub struct PushHandle {
    tx: Sender<Vec<f32>>,
    encoding: Encoding,
    channels: u16,
    dropped: Arc<AtomicU64>,
}

/// The reading end, handed to the pipeline.
pub struct PushSource {
    rx: Receiver<Vec<f32>>,
    format: SourceFormat,
    poll: Duration,
}

/// A bounded push source holding at most `capacity_frames` frames.
pub fn channel(
    format: SourceFormat,
    encoding: Encoding,
    capacity_frames: usize,
) -> Result<(PushHandle, PushSource), AudioError> {
    let format = format.validate()?;
    let (tx, rx) = bounded(capacity_frames.max(1));
    Ok((
        PushHandle {
            tx,
            encoding,
            channels: format.channels,
            dropped: Arc::default(),
        },
        PushSource {
            rx,
            format,
            poll: Duration::from_millis(20),
        },
    ))
}

impl PushHandle {
    /// Queues one frame of encoded bytes; a full queue drops it (counted) rather than wait.
    pub fn push_bytes(&self, bytes: &[u8]) -> Result<(), PushError> {
        let mut samples = Vec::with_capacity(bytes.len() / self.encoding.bytes_per_sample());
        self.encoding.decode(bytes, self.channels, &mut samples)?;
        self.push_samples(samples)
    }

    /// Queues interleaved `f32` samples.
    pub fn push_samples(&self, samples: Vec<f32>) -> Result<(), PushError> {
        match self.tx.try_send(samples) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(PushError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(PushError::Closed),
        }
    }

    /// Frames dropped because the queue was full.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl AudioSource for PushSource {
    fn format(&self) -> SourceFormat {
        self.format
    }

    fn read(&mut self, out: &mut Vec<f32>) -> Result<Read, AudioError> {
        out.clear();
        match self.rx.recv_timeout(self.poll) {
            Ok(frame) => {
                out.extend_from_slice(&frame);
                // Drain what else is already waiting, without blocking.
                while let Ok(frame) = self.rx.try_recv() {
                    out.extend_from_slice(&frame);
                }
                Ok(Read::Samples)
            }
            Err(RecvTimeoutError::Timeout) => Ok(Read::Samples),
            Err(RecvTimeoutError::Disconnected) => Ok(Read::End),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_ends_when_the_handle_drops() {
        let format = SourceFormat {
            sample_rate: 8_000,
            channels: 1,
        };
        let (handle, mut source) = channel(format, Encoding::Pcm16Le, 4).unwrap();
        handle.push_bytes(&[0x00, 0x40, 0x00, 0xC0]).unwrap();
        assert_eq!(
            handle.push_bytes(&[0x00]),
            Err(PushError::Misaligned {
                len: 1,
                channels: 1
            })
        );
        drop(handle);
        let mut out = Vec::new();
        assert_eq!(source.read(&mut out).unwrap(), Read::Samples);
        assert_eq!(out, [0.5, -0.5]);
        assert_eq!(source.read(&mut out).unwrap(), Read::End);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let format = SourceFormat {
            sample_rate: 8_000,
            channels: 1,
        };
        let (handle, _source) = channel(format, Encoding::MuLaw, 2).unwrap();
        handle.push_bytes(&[0xFF; 160]).unwrap();
        handle.push_bytes(&[0xFF; 160]).unwrap();
        assert_eq!(handle.push_bytes(&[0xFF; 160]), Err(PushError::Full));
        assert_eq!(handle.dropped_frames(), 1);
    }
}
