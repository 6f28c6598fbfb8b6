//! RTP for SIPREC: a pool of ports, and one media task per recording session that reads its
//! streams (RTP parsed with `rtp-rs`), puts the caller's packets through a jitter buffer,
//! decodes G.711, G.722 (`ezk-g722`, SpanDSP's decoder in Rust) or Opus (`opus`, libopus) and
//! pushes 20 ms frames into the session's call. The other streams (the
//! agent's) are read and counted, never scored. RTCP, on the odd port or muxed, is read and
//! ignored. Packets from anywhere but the SRC's media address cost a counter.

pub mod jitter;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use self::jitter::{JitterBuffer, JitterCounters, Out, Packet as RtpPacket};
use super::sip::sdp::Codec;
use super::{CallLink, LinkEvent};
use crate::audio::g711;
use crate::guard::StreamCall;

/// Packets queued from a stream's socket to its session's media task.
const PACKET_QUEUE: usize = 512;
/// Largest RTP datagram read.
const MAX_DATAGRAM: usize = 2048;
/// 20 ms: the frame pushed into the call.
const FRAME_MS: usize = 20;
/// With no packet for this long, the jitter buffer plays out what it holds.
const IDLE_FLUSH: Duration = Duration::from_millis(120);

/// Even RTP ports (and the odd RTCP port above each) handed out to streams.
pub struct PortPool {
    lo: u16,
    hi: u16,
    used: Mutex<BTreeSet<u16>>,
}

/// A stream's sockets; dropping it returns the ports.
pub struct Lease {
    pool: Arc<PortPool>,
    pub port: u16,
    pub rtp: std::net::UdpSocket,
    pub rtcp: std::net::UdpSocket,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut used) = self.pool.used.lock() {
            used.remove(&self.port);
        }
    }
}

impl PortPool {
    pub fn new(lo: u16, hi: u16) -> Arc<Self> {
        Arc::new(Self {
            lo: lo + lo % 2,
            hi,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// Binds a free even port and the one above it on `ip`; `None` when the range is used up.
    pub fn lease(self: &Arc<Self>, ip: IpAddr) -> Option<Lease> {
        let mut used = self.used.lock().ok()?;
        let mut port = self.lo;
        while port < self.hi {
            if !used.contains(&port)
                && let Ok(rtp) = std::net::UdpSocket::bind(SocketAddr::new(ip, port))
                && let Ok(rtcp) = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1))
                && rtp.set_nonblocking(true).is_ok()
                && rtcp.set_nonblocking(true).is_ok()
            {
                used.insert(port);
                return Some(Lease {
                    pool: self.clone(),
                    port,
                    rtp,
                    rtcp,
                });
            }
            port += 2;
        }
        None
    }
}

/// What the SIP side knows of one stream of the session.
#[derive(Debug, Clone)]
pub struct StreamMedia {
    pub codecs: HashMap<u8, Codec>,
    /// The SRC's media address; packets from elsewhere are dropped (counted).
    pub source: Option<IpAddr>,
    /// The SRC sends on it now (not paused with `a=inactive`).
    pub sending: bool,
}

pub enum MediaCmd {
    /// The session's streams after an offer (index = the SDP's m-line).
    Streams(Vec<Option<(Arc<Lease>, StreamMedia)>>),
    /// Screen stream `index` as the caller, into `call`.
    Screen {
        index: usize,
        /// The call's sample rate (8 or 16 kHz), which every codec is decoded to.
        sample_rate: u32,
        call: Box<StreamCall>,
    },
    End,
}

#[derive(Debug)]
pub enum MediaEvent {
    /// No RTP on the caller's stream for `rtp_timeout`.
    TimedOut(String),
    /// callguard ended the call (EndCall, shutdown).
    EndedHere(String),
    Finished(String, MediaCounters),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct MediaCounters {
    pub packets: u64,
    pub caller: JitterCounters,
    pub rtcp: u64,
    pub foreign: u64,
    pub malformed: u64,
    pub unknown_payload: u64,
    pub queue_full: u64,
    /// Frames the call did not take (the server overloaded or stopping).
    pub frames_not_taken: u64,
}

struct Packet {
    index: usize,
    from: SocketAddr,
    data: Vec<u8>,
}

/// Reads one socket into the session's queue until dropped.
struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reader(
    lease: &Arc<Lease>,
    index: usize,
    rtcp: bool,
    tx: mpsc::Sender<Packet>,
    counted: Arc<AtomicU64>,
) -> Option<Reader> {
    let socket = if rtcp { &lease.rtcp } else { &lease.rtp };
    let socket = UdpSocket::from_std(socket.try_clone().ok()?).ok()?;
    let keep = lease.clone();
    Some(Reader(tokio::spawn(async move {
        let _keep = keep;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if rtcp {
                // Read and ignored: receiver reports are not needed to screen.
                counted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let packet = Packet {
                index,
                from,
                data: buf[..n].to_vec(),
            };
            if tx.try_send(packet).is_err() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    })))
}

pub struct MediaTask {
    pub dialog: String,
    pub rtp_timeout: Duration,
    pub jitter_packets: usize,
    pub commands: mpsc::Receiver<MediaCmd>,
    pub events: mpsc::Sender<MediaEvent>,
}

struct Stream {
    media: StreamMedia,
    _lease: Arc<Lease>,
    _readers: [Reader; 2],
}

impl MediaTask {
    pub async fn run(mut self) {
        let (tx, mut rx) = mpsc::channel::<Packet>(PACKET_QUEUE);
        let queue_full = Arc::new(AtomicU64::new(0));
        let rtcp = Arc::new(AtomicU64::new(0));
        let mut streams: Vec<Option<Stream>> = Vec::new();
        let mut caller: Option<usize> = None;
        let mut decoder = Decoder::new(8_000);
        let mut link = CallLink::default();
        let mut jitter = JitterBuffer::new(self.jitter_packets);
        let mut counters = MediaCounters::default();
        let mut sequence = 0u64;
        let mut lost_reported = 0u64;
        let mut last_packet = Instant::now();
        let mut flushed = true;
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        let mut timed_out = false;
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(MediaCmd::Streams(next)) => {
                        let was_sending = caller.and_then(|c| streams.get(c)?.as_ref()).is_some_and(|s| s.media.sending);
                        let mut kept = Vec::with_capacity(next.len());
                        for (i, s) in next.into_iter().enumerate() {
                            kept.push(s.and_then(|(lease, media)| {
                                let same = streams.get_mut(i).and_then(Option::take).filter(|old| Arc::ptr_eq(&old._lease, &lease));
                                match same {
                                    Some(mut old) => { old.media = media; Some(old) }
                                    None => Some(Stream {
                                        _readers: [
                                            reader(&lease, i, false, tx.clone(), queue_full.clone())?,
                                            reader(&lease, i, true, tx.clone(), rtcp.clone())?,
                                        ],
                                        _lease: lease,
                                        media,
                                    }),
                                }
                            }));
                        }
                        streams = kept;
                        let sending = caller.and_then(|c| streams.get(c)?.as_ref()).is_some_and(|s| s.media.sending);
                        if sending != was_sending {
                            // Paused or resumed: the paused time is not audio of the call.
                            jitter.flush(&mut out);
                            jitter.restart();
                            last_packet = Instant::now();
                            timed_out = false;
                        }
                    }
                    Some(MediaCmd::Screen { index, sample_rate, call }) => {
                        caller = Some(index);
                        decoder = Decoder::new(sample_rate);
                        link.set(*call);
                        last_packet = Instant::now();
                    }
                    Some(MediaCmd::End) | None => break,
                },
                Some(p) = rx.recv() => {
                    counters.packets += 1;
                    let Some(Some(stream)) = streams.get(p.index) else { continue };
                    if stream.media.source.is_some_and(|ip| ip != p.from.ip()) {
                        counters.foreign += 1;
                        continue;
                    }
                    let Ok(r) = rtp_rs::RtpReader::new(&p.data) else {
                        counters.malformed += 1;
                        continue;
                    };
                    // RTCP muxed on the RTP port (RFC 5761): payload types 72-76 with the marker.
                    if (200..=204).contains(&p.data[1]) {
                        counters.rtcp += 1;
                        continue;
                    }
                    if Some(p.index) != caller || !stream.media.sending {
                        continue;
                    }
                    let pt = r.payload_type();
                    let Some(codec) = stream.media.codecs.get(&pt).copied() else {
                        counters.unknown_payload += 1;
                        continue;
                    };
                    last_packet = Instant::now();
                    timed_out = false;
                    flushed = false;
                    let seq: u16 = r.sequence_number().into();
                    let payload = r.payload();
                    let ticks = match codec {
                        // An Opus packet says how long it is; one that does not parse is lost.
                        Codec::Opus => match opus::packet::get_nb_samples(payload, 48_000) {
                            Ok(n) => n as u32,
                            Err(_) => {
                                counters.malformed += 1;
                                continue;
                            }
                        },
                        _ => payload.len() as u32,
                    };
                    let packet = RtpPacket {
                        ssrc: r.ssrc(),
                        sequence: seq,
                        timestamp: r.timestamp(),
                        payload_type: pt,
                        kind: codec.payload(),
                        payload,
                        ticks,
                    };
                    jitter.push(packet, &mut out);
                }
                event = link.next() => {
                    if let LinkEvent::Ended = event {
                        let _ = self.events.send(MediaEvent::EndedHere(self.dialog.clone())).await;
                        // The SIP side sends BYE and then End.
                        caller = None;
                    }
                }
                _ = tick.tick() => {
                    let idle = last_packet.elapsed();
                    if !flushed && idle >= IDLE_FLUSH {
                        jitter.flush(&mut out);
                        flushed = true;
                    }
                    let sending = caller.and_then(|c| streams.get(c)?.as_ref()).is_some_and(|s| s.media.sending);
                    let waiting = sending || (caller.is_none() && streams.iter().flatten().any(|s| s.media.sending));
                    if waiting && !timed_out && idle >= self.rtp_timeout {
                        timed_out = true;
                        let _ = self.events.send(MediaEvent::TimedOut(self.dialog.clone())).await;
                    }
                }
            }
            if !out.is_empty() {
                let codecs = caller
                    .and_then(|c| streams.get(c)?.as_ref())
                    .map(|s| s.media.codecs.clone())
                    .unwrap_or_default();
                if let Some(call) = link.call() {
                    for o in out.drain(..) {
                        counters.frames_not_taken +=
                            push(call, &codecs, &mut decoder, o, &mut sequence);
                    }
                    let lost = jitter.counters().lost;
                    if lost > lost_reported {
                        call.count_lost(lost - lost_reported);
                        lost_reported = lost;
                    }
                } else {
                    out.clear();
                }
            }
        }
        jitter.flush(&mut out);
        if let Some(call) = link.call() {
            let codecs = caller
                .and_then(|c| streams.get(c)?.as_ref())
                .map(|s| s.media.codecs.clone())
                .unwrap_or_default();
            for o in out.drain(..) {
                counters.frames_not_taken += push(call, &codecs, &mut decoder, o, &mut sequence);
            }
        }
        link.finish().await;
        counters.caller = jitter.counters();
        counters.rtcp += rtcp.load(Ordering::Relaxed);
        counters.queue_full = queue_full.load(Ordering::Relaxed);
        let _ = self
            .events
            .send(MediaEvent::Finished(self.dialog.clone(), counters))
            .await;
    }
}

/// The caller's audio decoded to the call's sample rate, whatever codec each packet has: a
/// re-offer may change the codec mid-call. G.722 into an 8 kHz call is decoded from its lower
/// sub-band only (the decoder's 8 kHz mode); G.711 into a 16 kHz call is interpolated to it (it
/// has nothing above 4 kHz to lose); libopus decodes to either rate itself. G.722's and Opus's
/// decoders keep state between packets.
pub struct Decoder {
    rate: u32,
    g722: Option<ezk_g722::libg722::decoder::Decoder>,
    opus: Option<opus::Decoder>,
    last: i16,
}

impl Decoder {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            g722: None,
            opus: None,
            last: 0,
        }
    }

    /// `payload` of `codec` as 16-bit samples at the call's rate (empty for a codec that is not
    /// audio).
    pub fn decode(&mut self, codec: Codec, payload: &[u8]) -> Vec<i16> {
        let narrow: Vec<i16> = match codec {
            Codec::Pcmu => payload.iter().map(|&b| g711::mulaw_to_linear(b)).collect(),
            Codec::Pcma => payload.iter().map(|&b| g711::alaw_to_linear(b)).collect(),
            Codec::G722 => {
                let eight_k = self.rate == 8_000;
                let g722 = self.g722.get_or_insert_with(|| {
                    use ezk_g722::libg722::{Bitrate, decoder::Decoder};
                    Decoder::new(Bitrate::Mode1_64000, false, eight_k)
                });
                return g722.decode(payload);
            }
            Codec::Opus => {
                let rate = self.rate;
                if self.opus.is_none() {
                    self.opus = opus::Decoder::new(rate, opus::Channels::Mono).ok();
                }
                let Some(dec) = self.opus.as_mut() else {
                    return Vec::new();
                };
                // At most 120 ms per packet (RFC 6716).
                let mut out = vec![0i16; rate as usize * 120 / 1000];
                let n = dec.decode(payload, &mut out, false).unwrap_or(0);
                out.truncate(n);
                return out;
            }
            Codec::TelephoneEvent | Codec::ComfortNoise => return Vec::new(),
        };
        if self.rate == 8_000 {
            return narrow;
        }
        // 8 -> 16 kHz: each sample and the midpoint after the one before it.
        let mut wide = Vec::with_capacity(narrow.len() * 2);
        for &x in &narrow {
            wide.push(((i32::from(self.last) + i32::from(x)) / 2) as i16);
            wide.push(x);
            self.last = x;
        }
        wide
    }

    /// Silence for `ticks` of `codec`'s RTP clock, at the call's rate.
    fn silence(&self, ticks: u32, codec: Codec) -> Vec<i16> {
        vec![0; (ticks as u64 * self.rate as u64 / codec.clock_rate() as u64) as usize]
    }
}

/// Decodes one jitter-buffer output to 16-bit PCM and pushes it in 20 ms frames; returns the
/// frames the call did not take.
fn push(
    call: &mut StreamCall,
    codecs: &HashMap<u8, Codec>,
    decoder: &mut Decoder,
    out: Out,
    sequence: &mut u64,
) -> u64 {
    let pcm: Vec<i16> = match out {
        Out::Audio {
            payload_type,
            payload,
        } => match codecs.get(&payload_type) {
            Some(&codec) => decoder.decode(codec, &payload),
            None => return 0,
        },
        Out::Silence {
            ticks,
            payload_type,
        } => match codecs.get(&payload_type) {
            Some(&codec) => decoder.silence(ticks, codec),
            None => return 0,
        },
    };
    let mut failed = 0;
    for chunk in pcm.chunks(decoder.rate as usize * FRAME_MS / 1000) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        if let Err(e) = call.push(*sequence, &bytes) {
            tracing::debug!(call_id = call.call_id(), error = %e, "SIPREC frame not taken.");
            failed += 1;
        }
        *sequence += 1;
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_hands_out_even_pairs_and_takes_them_back() {
        let pool = PortPool::new(47_001, 47_020);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = pool.lease(ip).unwrap();
        let b = pool.lease(ip).unwrap();
        assert_eq!(a.port % 2, 0);
        assert_ne!(a.port, b.port);
        let port = a.port;
        drop(a);
        let c = pool.lease(ip).unwrap();
        assert_eq!(c.port, port);
    }

    #[test]
    fn a_used_up_range_leases_nothing() {
        let pool = PortPool::new(47_100, 47_103);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let _a = pool.lease(ip).unwrap();
        let _b = pool.lease(ip).unwrap();
        assert!(pool.lease(ip).is_none());
    }

    fn tone(rate: u32, hz: f32, seconds: f32) -> Vec<i16> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| (8000.0 * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin()) as i16)
            .collect()
    }

    /// Normalised correlation of `a` and `b` at their best lag within 40 samples (a codec's delay).
    fn similarity(a: &[i16], b: &[i16]) -> f64 {
        (0..40)
            .map(|lag| {
                let (x, y) = (&a[..a.len() - 40], &b[lag..lag + a.len() - 40]);
                let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
                let e = |v: &[i16]| v.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
                dot / (e(x) * e(y) + 1e-9)
            })
            .fold(f64::MIN, f64::max)
    }

    #[test]
    fn g722_decodes_to_the_call_rate_and_keeps_its_state_across_packets() {
        use ezk_g722::libg722::{Bitrate, encoder::Encoder};
        let wide = tone(16_000, 1_000.0, 0.5);
        let mut enc = Encoder::new(Bitrate::Mode1_64000, false, false);
        // 20 ms packets: 320 samples at 16 kHz, 160 bytes, 160 ticks of the 8 kHz RTP clock.
        let packets: Vec<Vec<u8>> = wide.chunks(320).map(|c| enc.encode(c)).collect();
        assert!(packets.iter().all(|p| p.len() == 160));
        let mut d = Decoder::new(16_000);
        let out: Vec<i16> = packets
            .iter()
            .flat_map(|p| d.decode(Codec::G722, p))
            .collect();
        assert_eq!(out.len(), wide.len());
        assert!(similarity(&wide[400..], &out[400..]) > 0.95);
        // Into an 8 kHz call: the lower sub-band, half the samples, the same tone.
        let mut d8 = Decoder::new(8_000);
        let out8: Vec<i16> = packets
            .iter()
            .flat_map(|p| d8.decode(Codec::G722, p))
            .collect();
        assert_eq!(out8.len(), wide.len() / 2);
        let narrow = tone(8_000, 1_000.0, 0.5);
        assert!(similarity(&narrow[200..], &out8[200..]) > 0.9);
        assert_eq!(d8.silence(160, Codec::G722).len(), 160);
        assert_eq!(d.silence(160, Codec::G722).len(), 320);
    }

    #[test]
    fn g711_into_a_wideband_call_is_interpolated_to_16_khz() {
        let narrow = tone(8_000, 500.0, 0.2);
        let bytes: Vec<u8> = narrow.iter().map(|&x| g711::linear_to_mulaw(x)).collect();
        let mut d = Decoder::new(16_000);
        let out = d.decode(Codec::Pcmu, &bytes);
        assert_eq!(out.len(), narrow.len() * 2);
        assert!(similarity(&tone(16_000, 500.0, 0.2)[100..], &out[100..]) > 0.99);
        assert!(d.decode(Codec::TelephoneEvent, &[1, 2, 3, 4]).is_empty());
    }

    #[test]
    fn opus_decodes_to_the_call_rate_and_its_silence_runs_on_its_48_khz_clock() {
        let wide = tone(48_000, 700.0, 0.4);
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut d = Decoder::new(8_000);
        let mut out = Vec::new();
        for frame in wide.chunks(960) {
            let mut buf = vec![0u8; 1500];
            let n = enc.encode(frame, &mut buf).unwrap();
            assert_eq!(
                opus::packet::get_nb_samples(&buf[..n], 48_000).unwrap(),
                960
            );
            let pcm = d.decode(Codec::Opus, &buf[..n]);
            assert_eq!(pcm.len(), 160, "20 ms at 8 kHz");
            out.extend(pcm);
        }
        assert!(similarity(&tone(8_000, 700.0, 0.4)[800..], &out[800..]) > 0.9);
        assert_eq!(d.silence(960, Codec::Opus).len(), 160);
        // A packet libopus cannot read decodes to nothing, never a panic.
        assert!(d.decode(Codec::Opus, &[0xff; 3]).len() <= 960);
    }
}
