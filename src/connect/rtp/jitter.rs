//! The jitter buffer of one RTP stream (sans-I/O): packets in, in any order; audio out in
//! sequence order with lost packets replaced by silence as long as the timestamps say they
//! lasted, so the call's time stays true. Late, lost and duplicate packets are counted, the
//! 16-bit sequence number is extended across wraps (RFC 3550 A.1), and a new SSRC starts a new
//! sequence space.
//!
//! Written here because the RTP crates parse packets but leave playout to the application.

use std::collections::{BTreeMap, VecDeque};

/// Largest gap of audio filled with silence (10 s at 8 kHz); a longer jump in timestamps is
/// a new talk spurt after a pause, not lost audio.
const MAX_FILL_SAMPLES: u32 = 80_000;
/// Sequence numbers emitted that are remembered to tell a duplicate from a late packet.
const RECENT: usize = 64;

/// What a packet carries, as the stream's payload map says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Audio of one sample per byte (PCMU, PCMA at 8 kHz).
    Audio,
    /// Not audio to score (RFC 4733 events, comfort noise): skipped, its time kept by the
    /// next audio packet's timestamp.
    Skip,
}

/// What the buffer hands on, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Audio {
        payload_type: u8,
        payload: Vec<u8>,
    },
    /// Audio that never arrived: `ticks` of the RTP clock of `payload_type` (the packet after
    /// the gap), whose clock and decoder say how many samples that is.
    Silence {
        ticks: u32,
        payload_type: u8,
    },
}

/// One packet's header fields that matter here, and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub kind: Payload,
    pub payload: &'a [u8],
    /// RTP clock ticks of audio the packet carries (its payload length for G.711 and G.722 at
    /// 64 kbit/s; the frame duration for Opus).
    pub ticks: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterCounters {
    pub received: u64,
    pub late: u64,
    pub lost: u64,
    pub duplicate: u64,
    pub skipped: u64,
    pub ssrc_changes: u64,
    pub silence_samples: u64,
}

struct Held {
    timestamp: u32,
    payload_type: u8,
    kind: Payload,
    payload: Vec<u8>,
    ticks: u32,
}

pub struct JitterBuffer {
    depth: usize,
    ssrc: Option<u32>,
    highest: Option<u64>,
    next: Option<u64>,
    /// The timestamp the next audio packet should carry if nothing was lost.
    next_timestamp: Option<u32>,
    held: BTreeMap<u64, Held>,
    recent: VecDeque<u64>,
    counters: JitterCounters,
}

impl JitterBuffer {
    /// A buffer that holds back up to `depth` packets to put them in order.
    pub fn new(depth: usize) -> Self {
        Self {
            depth: depth.max(1),
            ssrc: None,
            highest: None,
            next: None,
            next_timestamp: None,
            held: BTreeMap::new(),
            recent: VecDeque::with_capacity(RECENT),
            counters: JitterCounters::default(),
        }
    }

    pub fn counters(&self) -> JitterCounters {
        self.counters
    }

    /// Takes one packet; appends what is now due to `out`.
    pub fn push(&mut self, packet: Packet, out: &mut Vec<Out>) {
        let Packet {
            ssrc,
            sequence,
            timestamp,
            payload_type,
            kind,
            payload,
            ticks,
        } = packet;
        self.counters.received += 1;
        if self.ssrc.is_some_and(|s| s != ssrc) {
            // A new source (the SRC switched media): what is held plays out, then the new
            // sequence space starts; the audio timeline runs on.
            self.flush(out);
            self.counters.ssrc_changes += 1;
            self.restart();
        }
        self.ssrc = Some(ssrc);
        let ext = self.extend(sequence);
        if let Some(next) = self.next
            && ext < next
        {
            if self.recent.contains(&ext) {
                self.counters.duplicate += 1;
            } else {
                self.counters.late += 1;
            }
            return;
        }
        if self.held.contains_key(&ext) {
            self.counters.duplicate += 1;
            return;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.held.insert(
            ext,
            Held {
                timestamp,
                payload_type,
                kind,
                payload: payload.to_vec(),
                ticks,
            },
        );
        while self.held.len() > self.depth {
            self.emit_first(out);
        }
    }

    /// Plays out everything held (no packet came for a while, or the stream ends).
    pub fn flush(&mut self, out: &mut Vec<Out>) {
        while !self.held.is_empty() {
            self.emit_first(out);
        }
    }

    /// Forgets the sequence and timestamp state (after a pause: the next packet starts anew,
    /// and the paused time is not filled).
    pub fn restart(&mut self) {
        self.held.clear();
        self.highest = None;
        self.next = None;
        self.next_timestamp = None;
        self.recent.clear();
    }

    /// The 64-bit sequence number closest to the highest seen (starting one cycle up, so a
    /// packet from just before the first one does not underflow).
    fn extend(&self, sequence: u16) -> u64 {
        let Some(h) = self.highest else {
            return (1 << 16) + sequence as u64;
        };
        let base = (h & !0xFFFF) | sequence as u64;
        [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
            .into_iter()
            .min_by_key(|c| c.abs_diff(h))
            .unwrap_or(base)
    }

    fn emit_first(&mut self, out: &mut Vec<Out>) {
        let Some((ext, held)) = self.held.pop_first() else {
            return;
        };
        if let Some(next) = self.next
            && ext > next
        {
            self.counters.lost += ext - next;
        }
        self.next = Some(ext + 1);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(ext);
        if held.kind == Payload::Skip {
            self.counters.skipped += 1;
            return;
        }
        if let Some(expected) = self.next_timestamp {
            let gap = held.timestamp.wrapping_sub(expected);
            if gap > 0 && gap <= MAX_FILL_SAMPLES {
                self.counters.silence_samples += gap as u64;
                out.push(Out::Silence {
                    ticks: gap,
                    payload_type: held.payload_type,
                });
            }
        }
        self.next_timestamp = Some(held.timestamp.wrapping_add(held.ticks));
        out.push(Out::Audio {
            payload_type: held.payload_type,
            payload: held.payload,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        kind: Payload,
        payload: &[u8],
    ) -> Packet<'_> {
        Packet {
            ssrc,
            sequence,
            timestamp,
            payload_type: if kind == Payload::Audio { 0 } else { 101 },
            kind,
            payload,
            ticks: payload.len() as u32,
        }
    }

    fn feed(j: &mut JitterBuffer, packets: &[(u32, u16, u32)]) -> Vec<Out> {
        let mut out = Vec::new();
        for &(ssrc, seq, ts) in packets {
            j.push(
                packet(ssrc, seq, ts, Payload::Audio, &[seq as u8; 160]),
                &mut out,
            );
        }
        j.flush(&mut out);
        out
    }

    fn order(out: &[Out]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Out::Audio { payload, .. } => format!("a{}", payload[0]),
                Out::Silence { ticks, .. } => format!("s{ticks}"),
            })
            .collect()
    }

    #[test]
    fn reorders_within_its_depth() {
        let mut j = JitterBuffer::new(3);
        let out = feed(
            &mut j,
            &[(1, 1, 160), (1, 3, 480), (1, 2, 320), (1, 4, 640)],
        );
        assert_eq!(order(&out), ["a1", "a2", "a3", "a4"]);
        assert_eq!(j.counters().lost, 0);
    }

    #[test]
    fn a_lost_packet_becomes_its_length_of_silence() {
        let mut j = JitterBuffer::new(2);
        let out = feed(
            &mut j,
            &[(1, 1, 160), (1, 2, 320), (1, 4, 640), (1, 5, 800)],
        );
        assert_eq!(order(&out), ["a1", "a2", "s160", "a4", "a5"]);
        assert_eq!(j.counters().lost, 1);
        assert_eq!(j.counters().silence_samples, 160);
    }

    #[test]
    fn late_and_duplicate_packets_are_counted_and_dropped() {
        let mut j = JitterBuffer::new(1);
        let out = feed(
            &mut j,
            &[
                (1, 1, 160),
                (1, 2, 320),
                (1, 2, 320),
                (1, 4, 640),
                (1, 5, 800),
                (1, 3, 480),
            ],
        );
        assert_eq!(order(&out), ["a1", "a2", "s160", "a4", "a5"]);
        let c = j.counters();
        assert_eq!((c.duplicate, c.late, c.lost), (1, 1, 1));
    }

    #[test]
    fn the_sequence_number_wraps() {
        let mut j = JitterBuffer::new(2);
        let out = feed(
            &mut j,
            &[(1, 65_534, 0), (1, 0, 320), (1, 65_535, 160), (1, 1, 480)],
        );
        assert_eq!(order(&out), ["a254", "a255", "a0", "a1"]);
        assert_eq!(j.counters().lost, 0);
    }

    #[test]
    fn a_new_ssrc_starts_a_new_sequence_space() {
        let mut j = JitterBuffer::new(2);
        let out = feed(
            &mut j,
            &[(1, 100, 0), (1, 101, 160), (2, 7, 9_000), (2, 8, 9_160)],
        );
        assert_eq!(order(&out), ["a100", "a101", "a7", "a8"]);
        let c = j.counters();
        assert_eq!((c.ssrc_changes, c.lost, c.late), (1, 0, 0));
    }

    #[test]
    fn events_and_comfort_noise_are_skipped_and_their_time_filled() {
        let mut j = JitterBuffer::new(1);
        let mut out = Vec::new();
        j.push(packet(1, 1, 0, Payload::Audio, &[1; 160]), &mut out);
        j.push(packet(1, 2, 160, Payload::Skip, &[0; 4]), &mut out);
        j.push(packet(1, 3, 160, Payload::Skip, &[0; 4]), &mut out);
        j.push(packet(1, 4, 480, Payload::Audio, &[4; 160]), &mut out);
        j.flush(&mut out);
        assert_eq!(order(&out), ["a1", "s320", "a4"]);
        assert_eq!(j.counters().skipped, 2);
    }

    #[test]
    fn a_long_timestamp_jump_is_not_filled() {
        let mut j = JitterBuffer::new(1);
        let out = feed(&mut j, &[(1, 1, 0), (1, 2, 8_000_000)]);
        assert_eq!(order(&out), ["a1", "a2"]);
    }
}
