//! Asterisk AudioSocket as a sans-I/O session: the bytes of one TCP connection and the time go
//! in; the call to open, its audio, and an end come out. The socket is owned by `super::tcp`.
//!
//! The framing is hand-written because it is three bytes and no crate implements it: each
//! message is a 1-byte kind, a 2-byte big-endian payload length, and the payload. Asterisk
//! sends the UUID (`0x01`, 16 bytes) first, then signed-linear 16-bit little-endian mono audio
//! (`0x10` at 8 kHz; Asterisk 22 also sends `0x11`-`0x18` for 12-192 kHz), DTMF (`0x03`, one
//! ASCII digit), and a hangup (`0x00`) or an error (`0xff`, an optional code) at the end.
//!
//! A broken stream (audio before the UUID, a UUID that is not 16 bytes, a second UUID, a rate
//! change, a connection that closes inside a message) is answered with an error message
//! (`0xff` and one of the [`error`] codes; Asterisk ends the socket on it) and the connection
//! is closed after the call is ended and its summary written. A bad audio frame (odd length)
//! is rejected and counted by the call; kinds this module does not know are skipped and counted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Message kinds.
pub mod kind {
    pub const HANGUP: u8 = 0x00;
    pub const UUID: u8 = 0x01;
    pub const DTMF: u8 = 0x03;
    pub const AUDIO: u8 = 0x10;
    pub const ERROR: u8 = 0xff;
}

/// Codes callguard sends in its `0xff` error message (application-specific, per the protocol).
pub mod error {
    pub const AUDIO_BEFORE_UUID: u8 = 0x10;
    pub const BAD_UUID: u8 = 0x11;
    pub const SECOND_UUID: u8 = 0x12;
    pub const RATE_CHANGED: u8 = 0x13;
    pub const TRUNCATED: u8 = 0x14;
    pub const CANNOT_SCREEN: u8 = 0x15;
    pub const IDLE: u8 = 0x16;
}

/// Header bytes before each payload.
pub const HEADER_BYTES: usize = 3;

/// The sample rate of an audio kind.
pub fn audio_rate(kind: u8) -> Option<u32> {
    Some(match kind {
        kind::AUDIO => 8_000,
        0x11 => 12_000,
        0x12 => 16_000,
        0x13 => 24_000,
        0x14 => 32_000,
        0x15 => 44_100,
        0x16 => 48_000,
        0x17 => 96_000,
        0x18 => 192_000,
        _ => return None,
    })
}

/// One message as it goes on the wire.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER_BYTES + len as usize);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
    out
}

/// What the session wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open the call: the UUID is known and audio at `sample_rate` has begun.
    Open { uuid: String, sample_rate: u32 },
    /// Push one frame of PCM16LE mono audio.
    Audio { sequence: u64, payload: Vec<u8> },
    /// Asterisk hung up (or reported an error of its own): end the call, close.
    Hangup { error: Option<u8> },
    /// Send this error message, end the call and close.
    Fail { code: u8, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages: u64,
    pub audio_frames: u64,
    pub dtmf: u64,
    pub unknown_kinds: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    AwaitingUuid,
    /// UUID known, no audio yet.
    Identified {
        uuid: String,
    },
    Streaming {
        sample_rate: u32,
        next_sequence: u64,
    },
    Done,
}

pub struct AudioSocketSession {
    state: State,
    buf: Vec<u8>,
    last_received: Instant,
    idle_timeout: Duration,
    outputs: VecDeque<Output>,
    counters: Counters,
}

/// The UUID's usual text form.
fn uuid_text(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl AudioSocketSession {
    pub fn new(now: Instant, idle_timeout: Duration) -> Self {
        Self {
            state: State::AwaitingUuid,
            buf: Vec::new(),
            last_received: now,
            idle_timeout,
            outputs: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Done).then(|| self.last_received + self.idle_timeout)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.last_received + self.idle_timeout {
            self.fail(
                error::IDLE,
                format!("nothing received for {} s", self.idle_timeout.as_secs()),
            );
        }
    }

    /// Opening the call failed (limits): tell Asterisk and close.
    pub fn handle_open_failed(&mut self, reason: String) {
        self.fail(error::CANNOT_SCREEN, reason);
    }

    /// The peer closed the connection: inside a message is an error, between them a hangup.
    pub fn handle_eof(&mut self) {
        if self.state == State::Done {
            return;
        }
        if self.buf.is_empty() {
            self.state = State::Done;
            self.outputs.push_back(Output::Hangup { error: None });
        } else {
            let reason = format!(
                "the connection closed inside a message ({} bytes of it)",
                self.buf.len()
            );
            self.fail(error::TRUNCATED, reason);
        }
    }

    pub fn handle_bytes(&mut self, now: Instant, mut bytes: &[u8]) {
        self.last_received = now;
        while self.state != State::Done && !bytes.is_empty() {
            // Complete the message in hand, without copying whole payloads twice.
            let need = match self.buf.get(..HEADER_BYTES) {
                Some(h) => HEADER_BYTES + u16::from_be_bytes([h[1], h[2]]) as usize,
                None => HEADER_BYTES,
            };
            let take = (need - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == need && need > HEADER_BYTES || self.header_done_empty() {
                let msg = std::mem::take(&mut self.buf);
                self.on_message(msg[0], &msg[HEADER_BYTES..]);
            }
        }
    }

    /// A header with length 0 is a whole message.
    fn header_done_empty(&self) -> bool {
        self.buf.len() == HEADER_BYTES && self.buf[1] == 0 && self.buf[2] == 0
    }

    fn fail(&mut self, code: u8, reason: String) {
        if self.state != State::Done {
            self.state = State::Done;
            self.outputs.push_back(Output::Fail { code, reason });
        }
    }

    fn on_message(&mut self, kind: u8, payload: &[u8]) {
        self.counters.messages += 1;
        match kind {
            kind::HANGUP => {
                self.state = State::Done;
                self.outputs.push_back(Output::Hangup { error: None });
            }
            kind::ERROR => {
                self.state = State::Done;
                self.outputs.push_back(Output::Hangup {
                    error: Some(payload.first().copied().unwrap_or_default()),
                });
            }
            kind::UUID => match (&self.state, payload.len()) {
                (State::AwaitingUuid, 16) => {
                    self.state = State::Identified {
                        uuid: uuid_text(payload),
                    }
                }
                (State::AwaitingUuid, n) => self.fail(
                    error::BAD_UUID,
                    format!("the UUID message has {n} bytes, not 16"),
                ),
                _ => self.fail(error::SECOND_UUID, "a second UUID on one connection".into()),
            },
            kind::DTMF => self.counters.dtmf += 1,
            k => match audio_rate(k) {
                Some(rate) => self.on_audio(rate, payload),
                None => self.counters.unknown_kinds += 1,
            },
        }
    }

    fn on_audio(&mut self, rate: u32, payload: &[u8]) {
        match &mut self.state {
            State::AwaitingUuid => self.fail(
                error::AUDIO_BEFORE_UUID,
                "audio before the UUID message".into(),
            ),
            State::Identified { uuid } => {
                let uuid = std::mem::take(uuid);
                self.outputs.push_back(Output::Open {
                    uuid,
                    sample_rate: rate,
                });
                self.state = State::Streaming {
                    sample_rate: rate,
                    next_sequence: 0,
                };
                self.on_audio(rate, payload);
            }
            State::Streaming {
                sample_rate,
                next_sequence,
            } => {
                if *sample_rate != rate {
                    let reason = format!("audio changed from {sample_rate} Hz to {rate} Hz");
                    return self.fail(error::RATE_CHANGED, reason);
                }
                let sequence = *next_sequence;
                *next_sequence += 1;
                self.counters.audio_frames += 1;
                self.outputs.push_back(Output::Audio {
                    sequence,
                    payload: payload.to_vec(),
                });
            }
            State::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = [
        0x40, 0x32, 0x5e, 0xc2, 0x5e, 0xfd, 0x4b, 0xd3, 0x80, 0x5f, 0x53, 0x57, 0x6e, 0x58, 0x1d,
        0x13,
    ];

    fn outputs(s: &mut AudioSocketSession) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn session() -> (AudioSocketSession, Instant) {
        let now = Instant::now();
        (AudioSocketSession::new(now, Duration::from_secs(10)), now)
    }

    #[test]
    fn frames_split_anywhere_make_the_same_call() {
        let mut wire = encode(kind::UUID, &UUID);
        for i in 0..3u8 {
            wire.extend(encode(kind::AUDIO, &[i; 320]));
        }
        wire.extend(encode(kind::DTMF, b"5"));
        wire.extend(encode(kind::HANGUP, &[]));
        for split in [1, 2, 3, 7, 19, 320, 1_000, wire.len()] {
            let (mut s, now) = session();
            for piece in wire.chunks(split) {
                s.handle_bytes(now, piece);
            }
            let out = outputs(&mut s);
            assert_eq!(
                out[0],
                Output::Open {
                    uuid: "40325ec2-5efd-4bd3-805f-53576e581d13".into(),
                    sample_rate: 8_000
                },
                "split {split}"
            );
            for (i, o) in out[1..4].iter().enumerate() {
                assert_eq!(
                    *o,
                    Output::Audio {
                        sequence: i as u64,
                        payload: vec![i as u8; 320]
                    }
                );
            }
            assert_eq!(out[4], Output::Hangup { error: None });
            assert_eq!(s.counters().dtmf, 1);
            assert_eq!(s.poll_timeout(), None);
        }
    }

    #[test]
    fn the_wire_format_is_kind_big_endian_length_payload() {
        assert_eq!(encode(kind::ERROR, &[0x14]), [0xff, 0x00, 0x01, 0x14]);
        assert_eq!(encode(kind::AUDIO, &[0; 320])[..3], [0x10, 0x01, 0x40]);
        assert_eq!(encode(kind::HANGUP, &[]), [0, 0, 0]);
    }

    fn fails_with(s: &mut AudioSocketSession) -> u8 {
        match outputs(s).pop() {
            Some(Output::Fail { code, .. }) => code,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn broken_streams_fail_with_a_code() {
        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::AUDIO, &[0; 320]));
        assert_eq!(fails_with(&mut s), error::AUDIO_BEFORE_UUID);

        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, b"short"));
        assert_eq!(fails_with(&mut s), error::BAD_UUID);

        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        assert_eq!(fails_with(&mut s), error::SECOND_UUID);

        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        s.handle_bytes(now, &encode(kind::AUDIO, &[0; 320]));
        s.handle_bytes(now, &encode(0x12, &[0; 640]));
        assert_eq!(fails_with(&mut s), error::RATE_CHANGED);

        // A close in the middle of a message.
        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        s.handle_bytes(now, &encode(kind::AUDIO, &[0; 320])[..100]);
        s.handle_eof();
        assert_eq!(fails_with(&mut s), error::TRUNCATED);

        // A close between messages is a hangup.
        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        s.handle_eof();
        assert_eq!(outputs(&mut s), [Output::Hangup { error: None }]);
    }

    #[test]
    fn asterisk_errors_end_the_call_and_unknown_kinds_are_skipped() {
        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        s.handle_bytes(now, &encode(0x42, &[1, 2, 3]));
        s.handle_bytes(now, &encode(kind::ERROR, &[0x01]));
        assert_eq!(outputs(&mut s), [Output::Hangup { error: Some(1) }]);
        assert_eq!(s.counters().unknown_kinds, 1);
    }

    #[test]
    fn wideband_audio_opens_at_its_rate() {
        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        s.handle_bytes(now, &encode(0x12, &[0; 640]));
        assert!(matches!(
            outputs(&mut s)[0],
            Output::Open {
                sample_rate: 16_000,
                ..
            }
        ));
    }

    #[test]
    fn a_silent_connection_times_out() {
        let (mut s, now) = session();
        s.handle_bytes(now, &encode(kind::UUID, &UUID));
        s.handle_timeout(now + Duration::from_secs(9));
        assert!(outputs(&mut s).is_empty());
        s.handle_timeout(now + Duration::from_secs(10));
        assert_eq!(fails_with(&mut s), error::IDLE);
    }
}
