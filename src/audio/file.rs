//! Audio files through symphonia: WAV (PCM 8/16/24/32-bit, float, mu-law, A-law) and FLAC at
//! any sample rate, decoded packet by packet so a 3-hour file needs no more memory than a short one.

use std::fs::File;
use std::path::{Path, PathBuf};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{
    CODEC_TYPE_NULL, CODEC_TYPE_PCM_ALAW, CODEC_TYPE_PCM_MULAW, Decoder, DecoderOptions,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{AudioError, AudioSource, Read, SourceFormat};

/// Most decode errors tolerated in a row before a file is declared corrupt.
const MAX_CONSECUTIVE_DECODE_ERRORS: u32 = 16;

pub struct FileSource {
    path: PathBuf,
    format: SourceFormat,
    g711: bool,
    reader: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    buffer: Option<SampleBuffer<f32>>,
    /// Packets that failed to decode and were skipped.
    pub skipped_packets: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<Self, AudioError> {
        let file = File::open(path).map_err(|source| AudioError::Open {
            path: path.to_owned(),
            source,
        })?;
        let format_err = |message: String| AudioError::Format {
            path: path.to_owned(),
            message,
        };
        let stream = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let probed = symphonia::default::get_probe()
            .format(
                &hint,
                stream,
                &FormatOptions::default(),
                &MetadataOptions::default(),
            )
            .map_err(|e| format_err(e.to_string()))?;
        let reader = probed.format;
        let track = reader
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| format_err("no audio track".into()))?;
        let params = &track.codec_params;
        let sample_rate = params
            .sample_rate
            .ok_or_else(|| format_err("no sample rate".into()))?;
        let channels = params
            .channels
            .map(|c| c.count() as u16)
            .ok_or_else(|| format_err("no channel layout".into()))?;
        let format = SourceFormat {
            sample_rate,
            channels,
        }
        .validate()
        .map_err(|e| format_err(e.to_string()))?;
        let decoder = symphonia::default::get_codecs()
            .make(params, &DecoderOptions::default())
            .map_err(|e| format_err(e.to_string()))?;
        let track_id = track.id;
        let g711 = [CODEC_TYPE_PCM_MULAW, CODEC_TYPE_PCM_ALAW].contains(&params.codec);
        Ok(Self {
            path: path.to_owned(),
            format,
            g711,
            reader,
            decoder,
            track_id,
            buffer: None,
            skipped_packets: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds G.711 (mu-law or A-law) samples.
    pub fn is_g711(&self) -> bool {
        self.g711
    }
}

impl AudioSource for FileSource {
    fn format(&self) -> SourceFormat {
        self.format
    }

    fn read(&mut self, out: &mut Vec<f32>) -> Result<Read, AudioError> {
        out.clear();
        let mut errors_in_row = 0;
        loop {
            let packet = match self.reader.next_packet() {
                Ok(p) => p,
                // A truncated file ends where its data ends.
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(Read::End);
                }
                Err(SymError::ResetRequired) => return Ok(Read::End),
                Err(e) => {
                    return Err(AudioError::Decode {
                        path: self.path.clone(),
                        message: e.to_string(),
                    });
                }
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            match self.decoder.decode(&packet) {
                Ok(decoded) => {
                    if decoded.frames() == 0 {
                        continue;
                    }
                    let spec = *decoded.spec();
                    if spec.channels.count() as u16 != self.format.channels {
                        return Err(AudioError::Decode {
                            path: self.path.clone(),
                            message: "channel count changed mid-stream".into(),
                        });
                    }
                    let needed = decoded.capacity() as u64;
                    let buffer = match &mut self.buffer {
                        Some(b) if b.capacity() as u64 >= needed * spec.channels.count() as u64 => {
                            b
                        }
                        slot => slot.insert(SampleBuffer::new(needed, spec)),
                    };
                    buffer.copy_interleaved_ref(decoded);
                    out.extend_from_slice(buffer.samples());
                    return Ok(Read::Samples);
                }
                Err(SymError::DecodeError(message)) => {
                    self.skipped_packets += 1;
                    errors_in_row += 1;
                    if errors_in_row >= MAX_CONSECUTIVE_DECODE_ERRORS {
                        return Err(AudioError::Decode {
                            path: self.path.clone(),
                            message: message.to_string(),
                        });
                    }
                }
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(Read::End);
                }
                Err(e) => {
                    return Err(AudioError::Decode {
                        path: self.path.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
    }
}
