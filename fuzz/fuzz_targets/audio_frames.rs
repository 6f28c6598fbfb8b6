//! A `StreamAudio` request as the ingest reads it off the wire: length-prefixed protobuf
//! `AudioFrame`s, the opening frame turned into a call spec (codec, rate, channels, class),
//! and each audio chunk decoded with that codec (PCM16, F32, G.711 mu-law and A-law). Whatever
//! the bytes: an error or samples, never a panic, and never more samples than bytes.
#![no_main]
use callguard::grpc::convert::open_spec;
use callguard::grpc::proto::{AudioFrame, audio_frame::Frame};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut spec = None;
    let mut out = Vec::new();
    while rest.len() >= 2 {
        let len = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let (msg, tail) = rest[2..].split_at(len);
        rest = tail;
        let Ok(frame) = AudioFrame::decode(msg) else { continue };
        match (frame.frame, &spec) {
            (Some(Frame::Open(open)), None) => spec = open_spec(open).ok(),
            (Some(Frame::Audio(chunk)), Some(s)) => {
                out.clear();
                if s.encoding.decode(&chunk.data, s.channels, &mut out).is_ok() {
                    assert!(out.len() <= chunk.data.len());
                }
            }
            _ => {}
        }
    }
});
