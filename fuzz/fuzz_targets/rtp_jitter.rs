//! RTP packets in any order into the jitter buffer: a datagram per chunk (the first byte of
//! each chunk is its length), parsed with rtp-rs as the media task does. The buffer may never
//! hold more than its depth, nor fill more silence than the timestamps allow. What comes out
//! is decoded as the media task would (payload type 0 PCMU, 9 G.722, 111 Opus, into an 8 kHz
//! call): any bytes, never a panic.
#![no_main]
use callguard::connect::rtp::Decoder;
use callguard::connect::rtp::jitter::{JitterBuffer, Out, Packet, Payload};
use callguard::connect::sip::sdp::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut j = JitterBuffer::new(1 + data.first().copied().unwrap_or(0) as usize % 8);
    let mut out = Vec::new();
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        let (datagram, next) = tail.split_at(n);
        rest = next;
        let Ok(r) = rtp_rs::RtpReader::new(datagram) else { continue };
        let kind = if r.payload_type() == 101 { Payload::Skip } else { Payload::Audio };
        j.push(
            Packet {
                ssrc: r.ssrc(),
                sequence: r.sequence_number().into(),
                timestamp: r.timestamp(),
                payload_type: r.payload_type(),
                kind,
                payload: r.payload(),
                ticks: r.payload().len() as u32,
            },
            &mut out,
        );
    }
    j.flush(&mut out);
    let mut decoder = Decoder::new(8_000);
    for o in &out {
        match o {
            Out::Silence { ticks, .. } => assert!(*ticks <= 80_000),
            Out::Audio {
                payload_type,
                payload,
            } => {
                let codec = match payload_type {
                    9 => Codec::G722,
                    111 => Codec::Opus,
                    _ => Codec::Pcmu,
                };
                assert!(decoder.decode(codec, payload).len() <= 8_000 * 120 / 1000 + payload.len() * 2);
            }
        }
    }
});
