//! The SDP offer of a recording session and our answer (RFC 3264, RFC 7866 section 7), read
//! and written with the `sdp` crate (webrtc-rs). An SRS only receives: every audio stream we
//! take is answered `a=recvonly` on a port of ours with one codec we decode (PCMU, PCMA, G.722
//! or Opus: the first of them in the offer's order, so each stream has one sample rate), plus
//! `telephone-event` and comfort noise, which are skipped; anything else gets port 0.

use std::collections::HashMap;
use std::io::Cursor;
use std::net::IpAddr;

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::{MediaDescription, MediaName, RangedPort};
use sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};

use super::super::rtp::jitter::Payload;

/// How a payload type is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Pcmu,
    Pcma,
    /// G.722 (ITU-T), 16 kHz audio on an 8 kHz RTP clock (RFC 3551 section 4.5.2).
    G722,
    /// Opus (RFC 7587): a 48 kHz RTP clock, any frame length; decoded to 8 kHz and screened
    /// as narrowband audio through a lossy codec.
    Opus,
    TelephoneEvent,
    ComfortNoise,
}

impl Codec {
    /// Whether it carries the call's audio (not events or comfort noise).
    pub fn is_audio(self) -> bool {
        self.payload() == Payload::Audio
    }

    /// Samples per second of the decoded audio (the rate a call that opens with it runs at).
    pub fn sample_rate(self) -> u32 {
        if self == Self::G722 { 16_000 } else { 8_000 }
    }

    /// Ticks per second of its RTP timestamps.
    pub fn clock_rate(self) -> u32 {
        if self == Self::Opus { 48_000 } else { 8_000 }
    }

    pub fn payload(self) -> Payload {
        match self {
            Self::Pcmu | Self::Pcma | Self::G722 | Self::Opus => Payload::Audio,
            Self::TelephoneEvent | Self::ComfortNoise => Payload::Skip,
        }
    }

    fn rtpmap(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU/8000",
            Self::Pcma => "PCMA/8000",
            Self::G722 => "G722/8000",
            Self::Opus => "opus/48000/2",
            Self::TelephoneEvent => "telephone-event/8000",
            Self::ComfortNoise => "CN/8000",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Whether the SRC sends media on the stream.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OfferedStream {
    pub media: String,
    pub port: u16,
    /// Where the SRC's RTP comes from (its `c=` line); `None` for 0.0.0.0 or absent.
    pub address: Option<IpAddr>,
    pub label: Option<String>,
    pub direction: Direction,
    /// Payload types offered that we take, in the offer's order: one audio codec at most (the
    /// first we decode), and the events and comfort noise we skip.
    pub codecs: Vec<(u8, Codec)>,
    /// Payload types offered, all of them (for the log).
    pub formats: Vec<String>,
}

impl OfferedStream {
    /// An audio stream with a codec we decode.
    pub fn usable(&self) -> bool {
        self.media == "audio" && self.port != 0 && self.audio_codec().is_some()
    }

    /// The audio codec taken on this stream.
    pub fn audio_codec(&self) -> Option<Codec> {
        self.codecs.iter().map(|&(_, c)| c).find(|c| c.is_audio())
    }

    pub fn payload_map(&self) -> HashMap<u8, Codec> {
        self.codecs.iter().copied().collect()
    }
}

#[derive(Debug, Clone)]
pub struct Offer {
    pub streams: Vec<OfferedStream>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Parse(String),
    #[error("SDP offers no media")]
    NoMedia,
}

impl Offer {
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        // The crate wants every line ended; a body cut at its last line is common.
        let mut text = text.replace("\r\n", "\n").replace('\n', "\r\n");
        if !text.ends_with("\r\n") {
            text.push_str("\r\n");
        }
        let sd = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
            .map_err(|e| SdpError::Parse(e.to_string()))?;
        let session_addr = sd.connection_information.as_ref().and_then(address_of);
        let session_dir = direction_of(&sd.attributes);
        let mut streams = Vec::new();
        for md in &sd.media_descriptions {
            let rtpmaps: HashMap<u8, String> = md
                .attributes
                .iter()
                .filter(|a| a.key == "rtpmap")
                .filter_map(|a| {
                    let (pt, enc) = a.value.as_deref()?.split_once(' ')?;
                    Some((pt.trim().parse().ok()?, enc.trim().to_ascii_lowercase()))
                })
                .collect();
            let mut codecs = Vec::new();
            for f in &md.media_name.formats {
                let Ok(pt) = f.parse::<u8>() else { continue };
                let codec = match rtpmaps.get(&pt).map(String::as_str) {
                    Some(e) if e.starts_with("pcmu/8000") => Some(Codec::Pcmu),
                    Some(e) if e.starts_with("pcma/8000") => Some(Codec::Pcma),
                    Some(e) if e.starts_with("g722/8000") => Some(Codec::G722),
                    Some(e) if e.starts_with("opus/48000") => Some(Codec::Opus),
                    Some(e) if e.starts_with("telephone-event/8000") => Some(Codec::TelephoneEvent),
                    Some(e) if e.starts_with("cn/8000") => Some(Codec::ComfortNoise),
                    Some(_) => None,
                    None => match pt {
                        0 => Some(Codec::Pcmu),
                        8 => Some(Codec::Pcma),
                        9 => Some(Codec::G722),
                        13 => Some(Codec::ComfortNoise),
                        _ => None,
                    },
                };
                let second_audio = codec.is_some_and(Codec::is_audio)
                    && codecs.iter().any(|&(_, c): &(u8, Codec)| c.is_audio());
                if let Some(c) = codec.filter(|_| !second_audio) {
                    codecs.push((pt, c));
                }
            }
            streams.push(OfferedStream {
                media: md.media_name.media.clone(),
                port: u16::try_from(md.media_name.port.value).unwrap_or(0),
                address: md
                    .connection_information
                    .as_ref()
                    .and_then(address_of)
                    .or(session_addr),
                label: md
                    .attributes
                    .iter()
                    .find(|a| a.key == "label")
                    .and_then(|a| a.value.clone()),
                direction: direction_of(&md.attributes)
                    .or(session_dir)
                    .unwrap_or(Direction::SendRecv),
                codecs,
                formats: md.media_name.formats.clone(),
            });
        }
        if streams.is_empty() {
            return Err(SdpError::NoMedia);
        }
        Ok(Self { streams })
    }

    /// The labels of the usable streams.
    pub fn labels(&self) -> Vec<String> {
        self.streams
            .iter()
            .filter(|s| s.usable())
            .filter_map(|s| s.label.clone())
            .collect()
    }
}

fn address_of(c: &ConnectionInformation) -> Option<IpAddr> {
    let a: IpAddr = c
        .address
        .as_ref()?
        .address
        .split('/')
        .next()?
        .parse()
        .ok()?;
    (!a.is_unspecified()).then_some(a)
}

fn direction_of(attrs: &[Attribute]) -> Option<Direction> {
    attrs.iter().find_map(|a| match a.key.as_str() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

/// Our answer: `ports[i]` is the RTP port of offered stream `i` (`None`: refused, port 0).
pub fn answer(
    offer: &Offer,
    ports: &[Option<u16>],
    address: IpAddr,
    session_id: u64,
    version: u64,
) -> String {
    let ip = |a: IpAddr| if a.is_ipv4() { "IP4" } else { "IP6" };
    let connection = ConnectionInformation {
        network_type: "IN".into(),
        address_type: ip(address).into(),
        address: Some(Address {
            address: address.to_string(),
            ttl: None,
            range: None,
        }),
    };
    let attr = |key: &str, value: Option<String>| Attribute {
        key: key.into(),
        value,
    };
    let media = offer
        .streams
        .iter()
        .zip(ports)
        .map(|(s, port)| {
            let taken = port.filter(|_| s.usable());
            let mut attributes = Vec::new();
            let formats = match taken {
                Some(_) => {
                    for (pt, c) in &s.codecs {
                        attributes.push(attr("rtpmap", Some(format!("{pt} {}", c.rtpmap()))));
                    }
                    s.codecs.iter().map(|(pt, _)| pt.to_string()).collect()
                }
                None => s.formats.iter().take(1).cloned().collect(),
            };
            if let Some(l) = &s.label {
                attributes.push(attr("label", Some(l.clone())));
            }
            let dir = if taken.is_some() && s.direction.sends() {
                "recvonly"
            } else {
                "inactive"
            };
            attributes.push(attr(dir, None));
            MediaDescription {
                media_name: MediaName {
                    media: s.media.clone(),
                    port: RangedPort {
                        value: taken.unwrap_or(0) as isize,
                        range: None,
                    },
                    protos: vec!["RTP".into(), "AVP".into()],
                    formats,
                },
                media_title: None,
                connection_information: None,
                bandwidth: Vec::new(),
                encryption_key: None,
                attributes,
            }
        })
        .collect();
    SessionDescription {
        version: 0,
        origin: Origin {
            username: "callguard".into(),
            session_id,
            session_version: version,
            network_type: "IN".into(),
            address_type: ip(address).into(),
            unicast_address: address.to_string(),
        },
        session_name: "callguard SRS".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: Some(connection),
        bandwidth: Vec::new(),
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: Vec::new(),
        }],
        time_zones: Vec::new(),
        encryption_key: None,
        attributes: Vec::new(),
        media_descriptions: media,
    }
    .marshal()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const OFFER: &str = "v=0\r\no=SBC 1 1 IN IP4 192.0.2.10\r\ns=SIPREC\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=label:1\r\na=sendonly\r\n\
m=audio 20002 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\na=label:2\r\na=sendonly\r\n\
m=video 20004 RTP/AVP 96\r\na=label:3\r\n";

    #[test]
    fn streams_codecs_labels_and_directions_are_read() {
        let o = Offer::parse(OFFER).unwrap();
        assert_eq!(o.streams.len(), 3);
        let s = &o.streams[0];
        assert_eq!(s.port, 20000);
        assert_eq!(s.address, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(s.label.as_deref(), Some("1"));
        assert_eq!(s.direction, Direction::SendOnly);
        // One audio codec per stream: the first we decode, in the offer's order.
        assert_eq!(s.codecs, [(0, Codec::Pcmu), (101, Codec::TelephoneEvent)]);
        assert!(s.usable());
        assert!(!o.streams[1].usable(), "G.729 is not decoded");
        assert!(!o.streams[2].usable());
        assert_eq!(o.labels(), ["1"]);
    }

    #[test]
    fn the_answer_receives_what_it_takes_and_refuses_the_rest() {
        let o = Offer::parse(OFFER).unwrap();
        let a = answer(
            &o,
            &[Some(40000), Some(40002), Some(40004)],
            "198.51.100.5".parse().unwrap(),
            7,
            2,
        );
        let back = Offer::parse(&a).unwrap();
        assert_eq!(back.streams[0].port, 40000);
        assert_eq!(back.streams[0].direction, Direction::RecvOnly);
        assert_eq!(back.streams[0].codecs.len(), 2);
        assert!(!a.contains("PCMA"), "one audio codec is answered: {a}");
        assert_eq!(back.streams[1].port, 0);
        assert_eq!(back.streams[2].port, 0);
        assert!(a.contains("c=IN IP4 198.51.100.5"), "{a}");
        assert!(a.contains("a=label:1"), "{a}");
    }

    #[test]
    fn a_paused_stream_is_answered_inactive() {
        let o = Offer::parse(&OFFER.replace("a=sendonly", "a=inactive")).unwrap();
        assert!(!o.streams[0].direction.sends());
        let a = answer(
            &o,
            &[Some(40000), None, None],
            "127.0.0.1".parse().unwrap(),
            7,
            3,
        );
        assert!(a.contains("a=inactive"));
    }

    #[test]
    fn g722_is_taken_at_16_khz_when_offered_first() {
        let o = Offer::parse(
            &OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 9 0 101\r\na=rtpmap:9 G722/8000"),
        )
        .unwrap();
        let s = &o.streams[0];
        assert_eq!(s.audio_codec(), Some(Codec::G722));
        assert_eq!(s.audio_codec().unwrap().sample_rate(), 16_000);
        // Static payload type 9 without an rtpmap is G.722 too.
        let o = Offer::parse(&OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 9 101")).unwrap();
        assert_eq!(o.streams[0].audio_codec(), Some(Codec::G722));
        let a = answer(
            &o,
            &[Some(40000), None, None],
            "127.0.0.1".parse().unwrap(),
            7,
            1,
        );
        assert!(a.contains("a=rtpmap:9 G722/8000"), "{a}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Offer::parse("hello").is_err());
        assert_eq!(
            Offer::parse("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n").unwrap_err(),
            SdpError::NoMedia
        );
    }
}
