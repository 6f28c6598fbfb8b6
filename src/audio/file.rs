//! Audio files through symphonia: WAV (PCM 8/16/24/32-bit, float, mu-law, A-law) and FLAC at
//! any sample rate, decoded packet by packet so a 3-hour file needs no more memory than a short one.

use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom};
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
        let mut file = File::open(path).map_err(|source| AudioError::Open {
            path: path.to_owned(),
            source,
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(AudioError::Open {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::IsADirectory, "it is a folder"),
            });
        }
        let format_err = |message: String| AudioError::Format {
            path: path.to_owned(),
            message,
        };
        check_flac_metadata(&mut file).map_err(format_err)?;
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

/// How far symphonia's probe looks for a format's marker (`Probe::PROBE_SEARCH_LIMIT`).
const PROBE_SEARCH_LIMIT: u64 = 1 << 20;
const FLAC_PICTURE: u8 = 6;
const FLAC_VORBIS_COMMENT: u8 = 4;

/// symphonia 0.5's FLAC demuxer allocates the lengths a PICTURE or VORBIS_COMMENT metadata block
/// declares before it reads them: a crafted file of a few hundred bytes makes it ask for 4 GiB
/// (found by `fuzz/audio_file`). Its probe takes a `fLaC` marker anywhere in the first MiB, even
/// in a `.wav`, so the metadata blocks after every such marker are checked here first: each
/// length inside a block must fit in the block. Written by hand because the check has to run
/// before the only FLAC parser we have.
fn check_flac_metadata(file: &mut File) -> Result<(), String> {
    let mut head = Vec::new();
    (&mut *file)
        .take(PROBE_SEARCH_LIMIT + 4)
        .read_to_end(&mut head)
        .map_err(|e| e.to_string())?;
    check_wave_format(&head)?;
    let markers = head.windows(4).enumerate().filter(|(_, w)| *w == b"fLaC");
    for (at, _) in markers {
        let mut pos = at as u64 + 4;
        for _ in 0..256 {
            let mut header = [0u8; 4];
            file.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
            if file.read_exact(&mut header).is_err() {
                break; // the file ends: symphonia reports that itself
            }
            let (last, kind) = (header[0] & 0x80 != 0, header[0] & 0x7f);
            let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            if kind == FLAC_PICTURE || kind == FLAC_VORBIS_COMMENT {
                let mut block = Vec::with_capacity(len);
                (&mut *file)
                    .take(len as u64)
                    .read_to_end(&mut block)
                    .map_err(|e| e.to_string())?;
                if let Err(what) = block_lengths_fit(kind, &block) {
                    return Err(format!(
                        "FLAC metadata at byte {pos}: {what} (a {len}-byte block)"
                    ));
                }
            }
            if last {
                break;
            }
            pos += 4 + len as u64;
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(())
}

/// symphonia 0.5's WAV reader panics on a `fmt ` chunk with a sample rate of 0 (`TimeBase::new`,
/// found by `fuzz/audio_file`); every RIFF/WAVE header its probe could take is checked first.
fn check_wave_format(head: &[u8]) -> Result<(), String> {
    let markers = head.windows(4).enumerate().filter(|(_, w)| *w == b"RIFF");
    for (at, _) in markers {
        let Some(riff) = head.get(at..) else { continue };
        if riff.get(8..12) != Some(b"WAVE") {
            continue;
        }
        let mut pos = 12;
        while let Some(chunk) = riff.get(pos..pos + 8) {
            let len = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]) as usize;
            if &chunk[..4] == b"fmt " {
                let Some(fmt) = riff
                    .get(pos + 8..pos + 8 + len.min(16))
                    .filter(|f| f.len() == 16)
                else {
                    break;
                };
                let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
                let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
                if channels == 0 || rate == 0 {
                    return Err(format!(
                        "WAV format chunk at byte {} says {channels} channels at {rate} Hz",
                        at + pos
                    ));
                }
                break;
            }
            pos += 8 + len + len % 2;
        }
    }
    Ok(())
}

/// Walks the length fields of a PICTURE (big-endian) or VORBIS_COMMENT (little-endian) block.
fn block_lengths_fit(kind: u8, block: &[u8]) -> Result<(), String> {
    let mut rest = block;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        if n > rest.len() {
            return Err(format!("{what} of {n} bytes does not fit"));
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    let u32_at = |b: &[u8], big: bool| {
        let a = [b[0], b[1], b[2], b[3]];
        if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    if kind == FLAC_PICTURE {
        take(4, "picture type")?;
        for what in ["picture media type", "picture description"] {
            let n = u32_at(take(4, what)?, true) as usize;
            take(n, what)?;
        }
        take(16, "picture dimensions")?;
        let n = u32_at(take(4, "picture data")?, true) as usize;
        take(n, "picture data")?;
    } else {
        let n = u32_at(take(4, "vendor string")?, false) as usize;
        take(n, "vendor string")?;
        let comments = u32_at(take(4, "comment count")?, false);
        for _ in 0..comments {
            let n = u32_at(take(4, "comment")?, false) as usize;
            take(n, "comment")?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// fuzz/audio_file's first find: a WAV whose bytes hold a `fLaC` marker and a PICTURE block
    /// declaring a 3 GiB media type. It must be a clear error, not a 3 GiB allocation.
    #[test]
    fn a_flac_block_declaring_more_than_it_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crafted.wav");
        std::fs::write(
            &path,
            include_bytes!("../../fuzz/corpus/audio_file/regress-flac-picture-4gib"),
        )
        .unwrap();
        match FileSource::open(&path) {
            Err(AudioError::Format { message, .. }) => {
                assert!(message.contains("does not fit"), "{message}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened"),
        }
    }

    /// Its second: a WAV whose format chunk says 0 Hz (symphonia panics on it).
    #[test]
    fn a_wav_at_zero_hertz_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zero.wav");
        std::fs::write(
            &path,
            include_bytes!("../../fuzz/corpus/audio_file/regress-wav-zero-rate"),
        )
        .unwrap();
        match FileSource::open(&path) {
            Err(AudioError::Format { message, .. }) => {
                assert!(message.contains("0 Hz"), "{message}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn well_formed_block_lengths_fit() {
        let mut pic = vec![0, 0, 0, 3];
        pic.extend(9u32.to_be_bytes());
        pic.extend(b"image/png");
        pic.extend(0u32.to_be_bytes());
        pic.extend([0; 16]);
        pic.extend(2u32.to_be_bytes());
        pic.extend([1, 2]);
        assert!(block_lengths_fit(FLAC_PICTURE, &pic).is_ok());
        assert!(block_lengths_fit(FLAC_PICTURE, &pic[..pic.len() - 1]).is_err());
        let mut vc = 3u32.to_le_bytes().to_vec();
        vc.extend(b"abc");
        vc.extend(1u32.to_le_bytes());
        vc.extend(5u32.to_le_bytes());
        vc.extend(b"A=bcd");
        assert!(block_lengths_fit(FLAC_VORBIS_COMMENT, &vc).is_ok());
        vc[7] = 0xff; // a comment count far beyond the block
        assert!(block_lengths_fit(FLAC_VORBIS_COMMENT, &vc).is_err());
    }
}
