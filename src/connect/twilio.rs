//! Twilio Media Streams (`<Stream>`, `<Start><Stream>`, `<Connect><Stream>`) as a sans-I/O
//! session: the JSON messages of one WebSocket and the time go in, the call to open, its audio,
//! replies and a close come out. The socket is owned by `super::ws`.
//!
//! Twilio sends `connected`, then `start` (stream and call SIDs, tracks, custom parameters,
//! `audio/x-mulaw` 8 kHz mono), `media` (one track's 20 ms of mu-law, base64, with a per-track
//! `chunk` number and a `timestamp`), `dtmf`, `mark` and finally `stop`. Only the configured
//! caller track is screened; the other track of a two-track stream is counted and dropped.
//!
//! What is wrong with a single frame (bad base64, an out-of-order chunk) is rejected and
//! counted and the call goes on; what shows the peer is not speaking the protocol (not JSON,
//! binary messages, media before `start`, an encoding callguard does not take, a message over
//! the size limit) closes the WebSocket with a close code and reason, after the call is ended
//! and its summary written. Unknown event types are counted and ignored, since Twilio may add
//! events.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha1::Sha1;

use crate::alert::{CallMeta, LoggedAlert};
use crate::config::TwilioTrack;

/// WebSocket close codes (RFC 6455 section 7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The only media format Twilio streams, and the only one taken.
pub const ENCODING: &str = "audio/x-mulaw";
pub const SAMPLE_RATE: u32 = 8_000;

/// How the session is set up for one tenant.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub caller_track: TwilioTrack,
    pub max_text_bytes: usize,
    pub idle_timeout: Duration,
}

/// What Twilio's `start` message said, for opening the call.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStart {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub tracks: Vec<String>,
    pub custom_parameters: BTreeMap<String, String>,
}

impl StreamStart {
    /// The call's metadata: the SIDs as labels `twilio_*`, custom parameters as `param.NAME`
    /// (the first ones, within the guard's 16 labels of 256 bytes), and ANI/DNIS/agent from the
    /// custom parameters `From`/`ani`/`caller`, `To`/`dnis`/`called` and `agent`, which a
    /// TwiML `<Parameter name="From" value="{{From}}"/>` fills in.
    pub fn metadata(&self, caller_track: TwilioTrack) -> CallMeta {
        let mut m = CallMeta::default();
        for (k, v) in &self.custom_parameters {
            match k.to_ascii_lowercase().as_str() {
                "from" | "ani" | "caller" if m.ani.is_empty() => m.ani = clip(v),
                "to" | "dnis" | "called" if m.dnis.is_empty() => m.dnis = clip(v),
                "agent" if m.agent.is_empty() => m.agent = clip(v),
                _ => {}
            }
        }
        let track = match caller_track {
            TwilioTrack::Inbound => "inbound",
            TwilioTrack::Outbound => "outbound",
        };
        for (k, v) in [
            ("twilio_stream_sid", self.stream_sid.as_str()),
            ("twilio_call_sid", &self.call_sid),
            ("twilio_account_sid", &self.account_sid),
            ("twilio_tracks", &self.tracks.join(",")),
            ("twilio_caller_track", track),
        ] {
            m.labels.insert(k.into(), clip(v));
        }
        for (k, v) in &self.custom_parameters {
            if m.labels.len() >= MAX_LABELS {
                break;
            }
            m.labels.insert(clip(&format!("param.{k}")), clip(v));
        }
        m
    }
}

/// The guard takes at most 16 labels of 256 bytes (`guard::stream::check_spec`).
const MAX_LABELS: usize = 16;
const MAX_LABEL_BYTES: usize = 256;

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_LABEL_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What the session wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open the call (the stream has started).
    Open(StreamStart),
    /// Push one frame of the caller's mu-law audio.
    Audio { sequence: u64, payload: Vec<u8> },
    /// A media message that could not be taken: count it as a rejected frame.
    Rejected { reason: String },
    /// The stream stopped (`stop`): end the call, then close normally.
    Stopped,
    /// End the call (if open) and close the WebSocket with this code and reason.
    Close { code: u16, reason: String },
}

/// What happened on the stream, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages: u64,
    /// Media messages of the caller's track taken as audio.
    pub caller_frames: u64,
    /// Media messages of the other track (not screened).
    pub other_frames: u64,
    pub rejected_frames: u64,
    pub dtmf: u64,
    pub marks: u64,
    /// Messages of event types this session does not know.
    pub unknown_events: u64,
    /// Messages missing from, or repeated in, Twilio's `sequenceNumber` count.
    pub sequence_gaps: u64,
    pub sequence_repeats: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Before `start` (`connected` may or may not have come).
    Waiting,
    Streaming {
        stream_sid: String,
        /// Next expected caller `chunk` number minus one, i.e. the next sequence.
        next_sequence: u64,
    },
    /// After `stop` or a close: nothing more is taken.
    Done,
}

/// One Twilio Media Stream.
pub struct TwilioSession {
    config: SessionConfig,
    state: State,
    last_received: Instant,
    last_sequence_number: Option<u64>,
    outputs: VecDeque<Output>,
    counters: Counters,
}

/// Twilio writes numbers as strings ("chunk": "1"); take either.
fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn string(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_owned()
}

#[derive(Deserialize)]
struct MediaFormat {
    encoding: Option<String>,
    #[serde(rename = "sampleRate")]
    sample_rate: Option<u32>,
    channels: Option<u32>,
}

impl TwilioSession {
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        Self {
            config,
            state: State::Waiting,
            last_received: now,
            last_sequence_number: None,
            outputs: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The next thing to do; `None` when there is nothing (until more input).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called (the idle deadline); `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Done).then(|| self.last_received + self.config.idle_timeout)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Done && now >= self.last_received + self.config.idle_timeout {
            self.close(
                close::GOING_AWAY,
                format!(
                    "no message for {} s; the stream is taken as dropped",
                    self.config.idle_timeout.as_secs()
                ),
            );
        }
    }

    /// A WebSocket ping or pong: the peer is alive.
    pub fn handle_keepalive(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// The peer closed the socket (or it broke) without `stop`: the call ends.
    pub fn handle_closed(&mut self) {
        self.state = State::Done;
    }

    /// Opening the call failed (limits, a bad stream SID): close with the reason.
    pub fn handle_open_failed(&mut self, code: u16, reason: String) {
        self.close(code, reason);
    }

    pub fn handle_binary(&mut self, now: Instant, len: usize) {
        self.last_received = now;
        self.counters.messages += 1;
        self.close(
            close::UNSUPPORTED,
            format!("binary message of {len} bytes: Twilio Media Streams send JSON text only"),
        );
    }

    pub fn handle_text(&mut self, now: Instant, text: &str) {
        self.last_received = now;
        if self.state == State::Done {
            return;
        }
        self.counters.messages += 1;
        if text.len() > self.config.max_text_bytes {
            return self.close(
                close::TOO_BIG,
                format!(
                    "message of {} bytes is over the {}-byte limit",
                    text.len(),
                    self.config.max_text_bytes
                ),
            );
        }
        let msg: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return self.close(close::INVALID_PAYLOAD, "not a JSON object".into()),
            Err(e) => return self.close(close::INVALID_PAYLOAD, format!("invalid JSON: {e}")),
        };
        let Some(event) = msg.get("event").and_then(Value::as_str) else {
            return self.close(close::INVALID_PAYLOAD, "message without an event".into());
        };
        if let Some(n) = number(msg.get("sequenceNumber")) {
            self.count_sequence(n);
        }
        match event {
            "connected" => {}
            "start" => self.on_start(&msg),
            "media" => self.on_media(&msg),
            "dtmf" => self.counters.dtmf += 1,
            "mark" => self.counters.marks += 1,
            "stop" => {
                if matches!(self.state, State::Streaming { .. }) {
                    self.state = State::Done;
                    self.outputs.push_back(Output::Stopped);
                } else {
                    self.close(close::POLICY, "stop before start".into());
                }
            }
            _ => self.counters.unknown_events += 1,
        }
    }

    /// The `mark` message that carries an alert back on the stream, named
    /// `callguard:KIND:SEVERITY:P_SPOOF:ALERT_ID`; `None` when the stream is not running.
    pub fn alert_mark(&self, alert: &LoggedAlert) -> Option<String> {
        let State::Streaming { stream_sid, .. } = &self.state else {
            return None;
        };
        let name = format!(
            "callguard:{}:{}:{:.3}:{}",
            serde_variant(&alert.kind),
            serde_variant(&alert.severity),
            alert.p_spoof,
            alert.id
        );
        Some(
            serde_json::json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})
                .to_string(),
        )
    }

    fn close(&mut self, code: u16, reason: String) {
        if self.state != State::Done {
            self.state = State::Done;
            self.outputs.push_back(Output::Close { code, reason });
        }
    }

    fn count_sequence(&mut self, n: u64) {
        match self.last_sequence_number {
            Some(last) if n <= last => self.counters.sequence_repeats += 1,
            Some(last) => {
                self.counters.sequence_gaps += n - last - 1;
                self.last_sequence_number = Some(n);
            }
            None => self.last_sequence_number = Some(n),
        }
    }

    fn on_start(&mut self, msg: &Value) {
        if self.state != State::Waiting {
            return self.close(close::POLICY, "a second start on one stream".into());
        }
        let Some(start) = msg.get("start") else {
            return self.close(
                close::INVALID_PAYLOAD,
                "start without a start object".into(),
            );
        };
        let stream_sid = match string(start.get("streamSid")) {
            s if s.is_empty() => string(msg.get("streamSid")),
            s => s,
        };
        if stream_sid.is_empty() {
            return self.close(close::INVALID_PAYLOAD, "start without a streamSid".into());
        }
        let format: Option<MediaFormat> = start
            .get("mediaFormat")
            .and_then(|f| serde_json::from_value(f.clone()).ok());
        let Some(format) = format else {
            return self.close(close::INVALID_PAYLOAD, "start without a mediaFormat".into());
        };
        let (encoding, rate, channels) = (
            format.encoding.unwrap_or_default(),
            format.sample_rate.unwrap_or_default(),
            format.channels.unwrap_or(1),
        );
        if encoding != ENCODING || rate != SAMPLE_RATE || channels != 1 {
            return self.close(
                close::UNSUPPORTED,
                format!(
                    "mediaFormat {encoding} {rate} Hz {channels} channel(s) is not taken; \
                     callguard takes {ENCODING} {SAMPLE_RATE} Hz mono"
                ),
            );
        }
        let tracks: Vec<String> = match start.get("tracks").and_then(Value::as_array) {
            Some(t) => t.iter().filter_map(Value::as_str).map(Into::into).collect(),
            None => vec!["inbound".into()],
        };
        let caller = self.caller_track_name();
        if !tracks.iter().any(|t| t == caller) {
            return self.close(
                close::POLICY,
                format!(
                    "the stream has tracks {tracks:?} but the caller is on the {caller} track \
                     (set track=\"both_tracks\" or the tenant's caller_track)"
                ),
            );
        }
        let custom_parameters = start
            .get("customParameters")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.state = State::Streaming {
            stream_sid: stream_sid.clone(),
            next_sequence: 0,
        };
        self.outputs.push_back(Output::Open(StreamStart {
            stream_sid,
            call_sid: string(start.get("callSid")),
            account_sid: string(start.get("accountSid")),
            tracks,
            custom_parameters,
        }));
    }

    fn caller_track_name(&self) -> &'static str {
        match self.config.caller_track {
            TwilioTrack::Inbound => "inbound",
            TwilioTrack::Outbound => "outbound",
        }
    }

    fn on_media(&mut self, msg: &Value) {
        let caller = self.caller_track_name();
        let State::Streaming {
            stream_sid,
            next_sequence,
        } = &self.state
        else {
            return self.close(close::POLICY, "media before start".into());
        };
        let (stream_sid, next_sequence) = (stream_sid.clone(), *next_sequence);
        let Some(media) = msg.get("media") else {
            return self.reject("media message without a media object".into());
        };
        if let Some(sid) = msg.get("streamSid").and_then(Value::as_str)
            && sid != stream_sid
        {
            return self.reject(format!("media of stream {sid} on stream {stream_sid}"));
        }
        // One-track streams may leave the track out; then it is the one track streamed.
        let track = media.get("track").and_then(Value::as_str).unwrap_or(caller);
        if track != caller {
            self.counters.other_frames += 1;
            return;
        }
        // The guard numbers frames from 0; Twilio's chunks count from 1.
        let sequence = match number(media.get("chunk")) {
            Some(chunk) => chunk.saturating_sub(1),
            None => next_sequence,
        };
        let payload = match media.get("payload").and_then(Value::as_str) {
            Some(p) => base64::engine::general_purpose::STANDARD.decode(p),
            None => return self.reject(format!("media chunk {} has no payload", sequence + 1)),
        };
        match payload {
            Ok(payload) if !payload.is_empty() => {
                if let State::Streaming { next_sequence, .. } = &mut self.state {
                    *next_sequence = sequence + 1;
                }
                self.counters.caller_frames += 1;
                self.outputs.push_back(Output::Audio { sequence, payload });
            }
            Ok(_) => self.reject(format!("media chunk {} is empty", sequence + 1)),
            Err(e) => self.reject(format!(
                "media chunk {} payload is not base64: {e}",
                sequence + 1
            )),
        }
    }

    fn reject(&mut self, reason: String) {
        self.counters.rejected_frames += 1;
        self.outputs.push_back(Output::Rejected { reason });
    }
}

/// A unit enum variant's serde name (`suspected_clone`, `warning`).
fn serde_variant<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether `signature` (the `X-Twilio-Signature` header) is Twilio's signature of the URL it
/// connected to: base64 of HMAC-SHA1 keyed with the account's auth token over the full URL
/// (a WebSocket upgrade is a GET, so no POST parameters follow). As Twilio's helper libraries
/// do, the URL is also tried with its default port added or removed, and with its query
/// parameters sorted and appended as `nameValue` pairs instead of as a query string.
pub fn signature_valid(auth_token: &str, url: &str, signature: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut found = false;
    for candidate in signed_variants(url) {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(candidate.as_bytes());
        // Constant time; every candidate is tried so the time does not say which matched.
        found |= mac.verify_slice(&given).is_ok();
    }
    found
}

/// Base64 of HMAC-SHA1(auth_token, url): what Twilio would send for `url`.
pub fn sign(auth_token: &str, url: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn signed_variants(url: &str) -> Vec<String> {
    let mut urls = vec![url.to_owned()];
    if let Some(toggled) = toggle_default_port(url) {
        urls.push(toggled);
    }
    let mut out = urls.clone();
    for u in urls {
        if let Some((base, query)) = u.split_once('?') {
            let mut pairs: Vec<(String, String)> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect();
            pairs.sort();
            let mut s = base.to_owned();
            for (k, v) in pairs {
                s.push_str(&k);
                s.push_str(&v);
            }
            out.push(s);
        }
    }
    out
}

/// `wss://h/p` <-> `wss://h:443/p` (80 for `ws`).
fn toggle_default_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let port = match scheme {
        "wss" | "https" => "443",
        "ws" | "http" => "80",
        _ => return None,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let host = match authority.rsplit_once(':') {
        Some((host, p)) if p == port => return Some(format!("{scheme}://{host}{tail}")),
        Some(_) => return None,
        None => authority,
    };
    Some(format!("{scheme}://{host}:{port}{tail}"))
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (TwilioSession, Instant) {
        let now = Instant::now();
        let config = SessionConfig {
            caller_track: TwilioTrack::Inbound,
            max_text_bytes: 4_096,
            idle_timeout: Duration::from_secs(30),
        };
        (TwilioSession::new(config, now), now)
    }

    fn outputs(s: &mut TwilioSession) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    const START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",
        "start":{"accountSid":"AC123","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","callSid":"CA456",
        "tracks":["inbound","outbound"],"customParameters":{"From":"+15550100","To":"+15550199","queue":"fraud"},
        "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;

    fn media(seq: u64, track: &str, chunk: u64, payload: &str) -> String {
        format!(
            r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",
            "media":{{"track":"{track}","chunk":"{chunk}","timestamp":"{}","payload":"{payload}"}}}}"#,
            chunk * 20
        )
    }

    #[test]
    fn a_two_track_stream_opens_the_call_and_screens_the_inbound_track() {
        let (mut s, now) = session();
        s.handle_text(
            now,
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
        );
        s.handle_text(now, START);
        let out = outputs(&mut s);
        let Output::Open(start) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(start.call_sid, "CA456");
        assert_eq!(start.tracks, ["inbound", "outbound"]);
        let meta = start.metadata(TwilioTrack::Inbound);
        assert_eq!(
            (meta.ani.as_str(), meta.dnis.as_str()),
            ("+15550100", "+15550199")
        );
        assert_eq!(meta.labels["twilio_call_sid"], "CA456");
        assert_eq!(meta.labels["param.queue"], "fraud");
        let frame = base64::engine::general_purpose::STANDARD.encode([0xffu8; 160]);
        s.handle_text(now, &media(2, "inbound", 1, &frame));
        s.handle_text(now, &media(3, "outbound", 1, &frame));
        s.handle_text(now, &media(4, "inbound", 2, &frame));
        // Chunk 3 was lost: the guard counts the gap from the sequence.
        s.handle_text(now, &media(5, "inbound", 4, &frame));
        let seqs: Vec<u64> = outputs(&mut s)
            .into_iter()
            .map(|o| match o {
                Output::Audio { sequence, payload } => {
                    assert_eq!(payload.len(), 160);
                    sequence
                }
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(seqs, [0, 1, 3]);
        assert_eq!(s.counters().other_frames, 1);
        s.handle_text(
            now,
            r#"{"event":"dtmf","sequenceNumber":"6","dtmf":{"track":"inbound_track","digit":"5"}}"#,
        );
        s.handle_text(
            now,
            r#"{"event":"stop","sequenceNumber":"7","stop":{"callSid":"CA456"}}"#,
        );
        assert_eq!(outputs(&mut s), [Output::Stopped]);
        assert_eq!(s.counters().dtmf, 1);
        assert_eq!(s.counters().sequence_gaps, 0);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn sequence_numbers_count_gaps_and_repeats() {
        let (mut s, now) = session();
        s.handle_text(now, START);
        let frame = base64::engine::general_purpose::STANDARD.encode([0u8; 160]);
        s.handle_text(now, &media(2, "inbound", 1, &frame));
        s.handle_text(now, &media(5, "inbound", 2, &frame));
        s.handle_text(now, &media(5, "inbound", 3, &frame));
        assert_eq!(s.counters().sequence_gaps, 2);
        assert_eq!(s.counters().sequence_repeats, 1);
    }

    #[test]
    fn bad_frames_are_rejected_and_the_stream_goes_on() {
        let (mut s, now) = session();
        s.handle_text(now, START);
        outputs(&mut s);
        s.handle_text(now, &media(2, "inbound", 1, "not base64!"));
        s.handle_text(now, &media(3, "inbound", 2, ""));
        s.handle_text(
            now,
            r#"{"event":"media","media":{"track":"inbound","chunk":"3"}}"#,
        );
        s.handle_text(now, r#"{"event":"brand-new-event"}"#);
        let out = outputs(&mut s);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out.iter().all(|o| matches!(o, Output::Rejected { .. })));
        assert_eq!(s.counters().unknown_events, 1);
        let frame = base64::engine::general_purpose::STANDARD.encode([0u8; 160]);
        s.handle_text(now, &media(4, "inbound", 4, &frame));
        assert!(matches!(
            outputs(&mut s)[..],
            [Output::Audio { sequence: 3, .. }]
        ));
    }

    fn closes_with(s: &mut TwilioSession) -> u16 {
        match outputs(s).pop() {
            Some(Output::Close { code, .. }) => code,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn protocol_violations_close_the_stream_with_a_reason() {
        let frame = base64::engine::general_purpose::STANDARD.encode([0u8; 160]);
        let (mut s, now) = session();
        s.handle_text(now, &media(1, "inbound", 1, &frame));
        assert_eq!(closes_with(&mut s), close::POLICY);
        // Nothing after the close.
        s.handle_text(now, START);
        assert!(outputs(&mut s).is_empty());

        let (mut s, now) = session();
        s.handle_text(now, "{not json");
        assert_eq!(closes_with(&mut s), close::INVALID_PAYLOAD);

        let (mut s, now) = session();
        s.handle_text(now, &START.replace("audio/x-mulaw", "audio/x-l16"));
        assert_eq!(closes_with(&mut s), close::UNSUPPORTED);

        let (mut s, now) = session();
        s.handle_text(
            now,
            &START.replace(r#""inbound","outbound""#, r#""outbound""#),
        );
        assert_eq!(closes_with(&mut s), close::POLICY);

        let (mut s, now) = session();
        s.handle_text(now, &" ".repeat(5_000));
        assert_eq!(closes_with(&mut s), close::TOO_BIG);

        let (mut s, now) = session();
        s.handle_binary(now, 160);
        assert_eq!(closes_with(&mut s), close::UNSUPPORTED);

        let (mut s, now) = session();
        s.handle_text(now, START);
        s.handle_text(now, START);
        assert_eq!(closes_with(&mut s), close::POLICY);
    }

    #[test]
    fn a_silent_stream_times_out() {
        let (mut s, now) = session();
        s.handle_text(now, START);
        outputs(&mut s);
        let deadline = s.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(30));
        s.handle_timeout(now + Duration::from_secs(29));
        assert!(outputs(&mut s).is_empty());
        s.handle_keepalive(now + Duration::from_secs(29));
        s.handle_timeout(now + Duration::from_secs(58));
        assert!(outputs(&mut s).is_empty());
        s.handle_timeout(now + Duration::from_secs(59));
        assert_eq!(closes_with(&mut s), close::GOING_AWAY);
    }

    #[test]
    fn alerts_go_back_as_marks_while_streaming() {
        let (mut s, now) = session();
        let alert: LoggedAlert = serde_json::from_value(serde_json::json!({
            "sequence": 1, "id": "al_1", "tenant": "t", "call_id": "c", "kind": "suspected_clone",
            "severity": "warning", "p_spoof": 0.8512, "threshold": 0.7, "audio_ms": 3000,
            "wall_time_ms": 0, "evidence": [], "model": "m", "metadata": {"ani": "", "dnis": "",
            "agent": "", "labels": {}}
        }))
        .unwrap();
        assert_eq!(s.alert_mark(&alert), None);
        s.handle_text(now, START);
        let mark: Value = serde_json::from_str(&s.alert_mark(&alert).unwrap()).unwrap();
        assert_eq!(mark["event"], "mark");
        assert_eq!(mark["streamSid"], "MZ18ad3ab5a668481ce02b83e7395059f0");
        assert_eq!(
            mark["mark"]["name"],
            "callguard:suspected_clone:warning:0.851:al_1"
        );
    }

    // Signatures computed independently with Python's hmac module:
    //   base64.b64encode(hmac.new(b"12345", url.encode(), hashlib.sha1).digest())
    #[test]
    fn signatures_match_twilio_examples_computed_independently() {
        let token = "12345";
        let url = "wss://callguard.example.com/twilio/bank-a";
        assert_eq!(sign(token, url), "Ae1JncgVpiClid1eo787kf1JVQ0=");
        assert!(signature_valid(token, url, "Ae1JncgVpiClid1eo787kf1JVQ0="));
        // Twilio may have signed the URL with its default port.
        assert!(signature_valid(
            token,
            "wss://callguard.example.com:443/twilio/bank-a",
            "Ae1JncgVpiClid1eo787kf1JVQ0="
        ));
        assert!(!signature_valid(
            "54321",
            url,
            "Ae1JncgVpiClid1eo787kf1JVQ0="
        ));
        assert!(!signature_valid(
            token,
            &format!("{url}x"),
            "Ae1JncgVpiClid1eo787kf1JVQ0="
        ));
        assert!(!signature_valid(token, url, "not base64"));
        assert!(!signature_valid(token, url, ""));
        // A query string, signed as it stands or with its parameters sorted and appended.
        let q = "wss://h.example/twilio/t?b=2&a=1";
        assert_eq!(sign(token, q), "Xn0ZDOQvymVnLJRHr2r0cpaqf3s=");
        assert!(signature_valid(token, q, "Xn0ZDOQvymVnLJRHr2r0cpaqf3s="));
        assert!(signature_valid(token, q, "mYa8jWDw6DReuwhTitPSi4rf8K8="));
    }

    #[test]
    fn default_ports_toggle() {
        assert_eq!(
            toggle_default_port("wss://h/p?x").as_deref(),
            Some("wss://h:443/p?x")
        );
        assert_eq!(
            toggle_default_port("ws://h:80/p").as_deref(),
            Some("ws://h/p")
        );
        assert_eq!(toggle_default_port("ws://h:8080/p"), None);
    }
}
