//! Genesys Cloud AudioHook Monitor, protocol version 2, server side, as a sans-I/O session:
//! the WebSocket's JSON and binary messages and the time go in; the call to open, its audio,
//! lost audio, replies and an end come out. The socket is owned by `super::hook_ws`.
//!
//! The client opens with `open` (conversation, participant ANI/DNIS, offered media); callguard
//! answers `opened` choosing PCMU 8 kHz, stereo with the external party (the customer) as the
//! caller channel when offered, else the external channel alone. Binary messages are audio;
//! the audio position (samples received plus audio the client reports `discarded` or skipped
//! while `paused`) is checked against each message's declared `position`, and a gap counts as
//! lost audio. `ping` gets `pong`; `close` ends the call and gets `closed`. Every message the
//! server sends carries its own `seq` and the last `clientseq` seen; a client message out of
//! sequence, malformed, unknown, or audio before `opened` gets a `disconnect` with reason
//! `error` and the reason in `info`; after the client's `close`, `closed`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::alert::{CallMeta, LoggedAlert};

pub const PROTOCOL_VERSION: &str = "2";
const RATE: u32 = 8_000;
/// A declared position may run this far ahead of the audio received before it is a gap.
const POSITION_SLACK_NS: u64 = 20_000_000;

/// Settings for one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub max_text_bytes: usize,
    pub idle_timeout: Duration,
    /// Pings answered in a burst, and per second after it; a faster client is disconnected.
    pub ping_burst: f64,
    pub pings_per_s: f64,
}

/// What `open` said, for opening the call.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenInfo {
    pub session_id: String,
    pub conversation_id: String,
    pub organization_id: String,
    pub participant_id: String,
    pub ani: String,
    pub ani_name: String,
    pub dnis: String,
    pub language: String,
    pub channels: u16,
    pub caller_channel: u16,
}

impl OpenInfo {
    pub fn metadata(&self, correlation_id: &str) -> CallMeta {
        let mut m = CallMeta {
            ani: self.ani.clone(),
            dnis: self.dnis.clone(),
            ..CallMeta::default()
        };
        for (k, v) in [
            ("audiohook_conversation_id", &self.conversation_id),
            ("audiohook_session_id", &self.session_id),
            ("audiohook_organization_id", &self.organization_id),
            ("audiohook_correlation_id", &correlation_id.to_owned()),
            ("audiohook_participant_id", &self.participant_id),
            ("audiohook_ani_name", &self.ani_name),
            ("audiohook_language", &self.language),
        ] {
            if !v.is_empty() {
                m.labels.insert(k.into(), v.chars().take(256).collect());
            }
        }
        m
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open the call (`opened` is already queued as a [`Output::Send`]).
    Open(OpenInfo),
    /// Push one frame of interleaved PCMU.
    Audio { sequence: u64, payload: Vec<u8> },
    /// Audio the client did not send, in ms (a position gap or `discarded`).
    Lost { ms: u64 },
    /// A JSON message for the client.
    Send(String),
    /// End the call now (the client closed, or callguard disconnected it); then call
    /// [`AudioHookSession::handle_call_finished`].
    Finish,
    /// Close the WebSocket.
    Close { code: u16, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages: u64,
    pub audio_frames: u64,
    pub pings: u64,
    pub lost_ms: u64,
    /// Declared positions behind the audio received (the client sent more than it said).
    pub position_behind: u64,
    pub updates: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preparing,
    Active,
    Paused,
    /// The client sent `close`; `closed` goes out once the call has finished.
    Closing,
    /// callguard sent `disconnect`; waiting for the client's `close`.
    Disconnecting,
    /// `closed` sent: waiting for the client to close the WebSocket.
    Closed,
    Done,
}

pub struct AudioHookSession {
    config: SessionConfig,
    id: String,
    state: State,
    seq: u64,
    clientseq: u64,
    channels: u16,
    samples: u64,
    discarded_ns: u64,
    frames: u64,
    ping_tokens: f64,
    ping_refilled: Instant,
    last_received: Instant,
    finish_sent: bool,
    outputs: VecDeque<Output>,
    counters: Counters,
}

/// ISO 8601 durations as AudioHook writes them: `PT0S`, `PT1.25S`, `PT2M3.5S`, `PT1H`.
pub fn parse_duration_ns(s: &str) -> Option<u64> {
    let mut rest = s.strip_prefix("PT")?;
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    for (unit, scale) in [('H', 3600.0), ('M', 60.0), ('S', 1.0)] {
        if let Some(i) = rest.find(unit) {
            let v: f64 = rest[..i].parse().ok()?;
            if !(v >= 0.0 && v.is_finite()) {
                return None;
            }
            total += v * scale;
            rest = &rest[i + 1..];
        }
    }
    rest.is_empty().then(|| (total * 1e9).round() as u64)
}

pub fn format_duration(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    let text = format!("{s:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("PT{text}S")
}

impl AudioHookSession {
    /// `session_id` is the `Audiohook-Session-Id` of the upgrade request; messages carry it.
    pub fn new(config: SessionConfig, session_id: &str, now: Instant) -> Self {
        Self {
            ping_tokens: config.ping_burst,
            config,
            id: session_id.to_owned(),
            state: State::Preparing,
            seq: 0,
            clientseq: 0,
            channels: 0,
            samples: 0,
            discarded_ns: 0,
            frames: 0,
            ping_refilled: now,
            last_received: now,
            finish_sent: false,
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
        (self.state != State::Done).then(|| self.last_received + self.config.idle_timeout)
    }

    /// The audio position: what was received plus what the client skipped.
    pub fn position_ns(&self) -> u64 {
        let frames = self.samples / u64::from(self.channels.max(1));
        frames * 1_000_000_000 / u64::from(RATE) + self.discarded_ns
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done || now < self.last_received + self.config.idle_timeout {
            return;
        }
        match self.state {
            // The client did not answer our disconnect or closed: drop it.
            State::Disconnecting | State::Closed => self.close(1000, "closing".into()),
            _ => {
                self.finish();
                self.close(
                    1001,
                    format!(
                        "nothing received for {} s",
                        self.config.idle_timeout.as_secs()
                    ),
                );
            }
        }
    }

    pub fn handle_keepalive(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// The WebSocket closed or broke.
    pub fn handle_closed(&mut self) {
        if self.state != State::Done {
            self.finish();
            self.state = State::Done;
        }
    }

    /// The call could not be opened: tell the client why.
    pub fn handle_open_failed(&mut self, info: String) {
        self.disconnect("error", &info);
    }

    /// callguard ends the session (`EndCall`, shutdown): `disconnect` with reason `completed`.
    pub fn handle_end(&mut self) {
        if matches!(self.state, State::Preparing | State::Active | State::Paused) {
            self.disconnect("completed", "callguard ended the session");
        }
    }

    /// The call has ended: after the client's `close`, `closed` goes out now.
    pub fn handle_call_finished(&mut self) {
        if self.state == State::Closing {
            self.send("closed", json!({}));
            self.state = State::Closed;
        }
    }

    /// callguard asks the client to pause or resume the audio.
    pub fn request_pause(&mut self, pause: bool) {
        if matches!(self.state, State::Active | State::Paused) {
            self.send(if pause { "pause" } else { "resume" }, json!({}));
        }
    }

    /// The `event` message that carries an alert to the client, while the session runs.
    pub fn alert_event(&mut self, alert: &LoggedAlert) {
        if matches!(self.state, State::Active | State::Paused | State::Closing) {
            let data = json!({
                "id": alert.id, "callId": alert.call_id, "kind": alert.kind,
                "severity": alert.severity, "pSpoof": alert.p_spoof, "risk": alert.risk,
                "position": format_duration(alert.audio_ms * 1_000_000),
            });
            self.send(
                "event",
                json!({"entities": [{"type": "callguard.alert", "data": data}]}),
            );
        }
    }

    pub fn handle_binary(&mut self, now: Instant, data: &[u8]) {
        self.last_received = now;
        match self.state {
            State::Active => {}
            State::Closing | State::Disconnecting | State::Closed | State::Done => return,
            State::Preparing => return self.disconnect("error", "audio before opened"),
            State::Paused => return self.disconnect("error", "audio while paused"),
        }
        let channels = usize::from(self.channels);
        if data.is_empty() || !data.len().is_multiple_of(channels) {
            return self.disconnect(
                "error",
                &format!(
                    "audio frame of {} bytes is not whole {channels}-channel PCMU samples",
                    data.len()
                ),
            );
        }
        self.samples += data.len() as u64;
        self.counters.audio_frames += 1;
        let sequence = self.frames;
        self.frames += 1;
        self.outputs.push_back(Output::Audio {
            sequence,
            payload: data.to_vec(),
        });
    }

    pub fn handle_text(&mut self, now: Instant, text: &str) {
        self.last_received = now;
        if self.state == State::Done {
            return;
        }
        self.counters.messages += 1;
        if text.len() > self.config.max_text_bytes {
            return self.disconnect(
                "error",
                &format!(
                    "text message of {} bytes is over the {}-byte limit",
                    text.len(),
                    self.config.max_text_bytes
                ),
            );
        }
        let msg: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => return self.disconnect("error", "text message is not a JSON object"),
        };
        let ty = msg.get("type").and_then(Value::as_str).unwrap_or_default();
        if self.state == State::Disconnecting && ty == "close" {
            // The answer to our disconnect, whatever state its numbering is in.
            self.state = State::Closing;
            return self.handle_call_finished();
        }
        let seq = msg.get("seq").and_then(Value::as_u64);
        let serverseq = msg.get("serverseq").and_then(Value::as_u64);
        let (Some(seq), Some(serverseq)) = (seq, serverseq) else {
            return self.disconnect("error", "message without seq and serverseq");
        };
        if msg.get("version").and_then(Value::as_str) != Some(PROTOCOL_VERSION) {
            return self.disconnect("error", "version is not \"2\"");
        }
        if seq != self.clientseq + 1 {
            return self.disconnect(
                "error",
                &format!("seq {seq} out of order (expected {})", self.clientseq + 1),
            );
        }
        self.clientseq = seq;
        if serverseq > self.seq {
            return self.disconnect(
                "error",
                &format!(
                    "serverseq {serverseq} is beyond the last seq sent ({})",
                    self.seq
                ),
            );
        }
        if msg.get("id").and_then(Value::as_str) != Some(self.id.as_str()) {
            return self.disconnect("error", "id is not the Audiohook-Session-Id");
        }
        let params = msg.get("parameters").cloned().unwrap_or(json!({}));
        if let Some(pos) = msg.get("position").and_then(Value::as_str) {
            match parse_duration_ns(pos) {
                Some(ns) => self.check_position(ns),
                None => {
                    return self
                        .disconnect("error", &format!("position {pos:?} is not a duration"));
                }
            }
        }
        match (ty, self.state) {
            (_, State::Closed) => {}
            ("open", State::Preparing) => self.on_open(&params),
            ("open", _) => self.disconnect("error", "a second open"),
            ("ping", _) => self.on_ping(now),
            ("close", State::Closing) => {}
            ("close", _) => {
                self.state = State::Closing;
                if self.finish_sent {
                    // The call already ended (callguard disconnected first).
                    self.handle_call_finished();
                } else {
                    self.finish();
                }
            }
            (_, State::Disconnecting | State::Closing) => {}
            ("paused", State::Active) => self.state = State::Paused,
            ("resumed", State::Paused) => {
                self.state = State::Active;
                self.on_discarded(&params);
            }
            ("paused" | "resumed", _) => {}
            ("discarded", State::Active | State::Paused) => self.on_discarded(&params),
            ("update", State::Active | State::Paused) => self.counters.updates += 1,
            ("error", _) => {}
            ("discarded" | "update", State::Preparing) => {
                self.disconnect("error", &format!("{ty} before opened"))
            }
            (other, _) => self.disconnect(
                "error",
                &format!("{other:?} is not an AudioHook client message"),
            ),
        }
    }

    fn check_position(&mut self, declared: u64) {
        let have = self.position_ns();
        if declared > have + POSITION_SLACK_NS {
            let gap = declared - have;
            self.discarded_ns += gap;
            self.lost(gap);
        } else if declared + POSITION_SLACK_NS < have {
            self.counters.position_behind += 1;
        }
    }

    fn lost(&mut self, ns: u64) {
        let ms = ns.div_ceil(1_000_000);
        self.counters.lost_ms += ms;
        self.outputs.push_back(Output::Lost { ms });
    }

    fn on_discarded(&mut self, params: &Value) {
        let Some(ns) = params
            .get("discarded")
            .and_then(Value::as_str)
            .and_then(parse_duration_ns)
        else {
            return;
        };
        // Audio discarded after the position already accounted for (by a declared position).
        let start = params
            .get("start")
            .and_then(Value::as_str)
            .and_then(parse_duration_ns)
            .unwrap_or_else(|| self.position_ns());
        let end = start + ns;
        let have = self.position_ns();
        if end > have {
            self.discarded_ns += end - have;
            self.lost(end - have);
        }
    }

    fn on_ping(&mut self, now: Instant) {
        self.counters.pings += 1;
        let refill = now.duration_since(self.ping_refilled).as_secs_f64() * self.config.pings_per_s;
        self.ping_tokens = (self.ping_tokens + refill).min(self.config.ping_burst);
        self.ping_refilled = now;
        if self.ping_tokens < 1.0 {
            return self.disconnect(
                "error",
                &format!(
                    "ping storm: more than {} pings at once or {} a second",
                    self.config.ping_burst, self.config.pings_per_s
                ),
            );
        }
        self.ping_tokens -= 1.0;
        self.send("pong", json!({}));
    }

    fn on_open(&mut self, params: &Value) {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let offered = params
            .get("media")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let channels_of = |m: &Value| -> Vec<String> {
            m.get("channels")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).map(Into::into).collect())
                .unwrap_or_default()
        };
        let pcmu = |m: &&Value| {
            m.get("type").and_then(Value::as_str) == Some("audio")
                && m.get("format").and_then(Value::as_str) == Some("PCMU")
                && m.get("rate").and_then(Value::as_u64) == Some(u64::from(RATE))
                && channels_of(m).iter().any(|c| c == "external")
        };
        // Stereo with the customer first choice, else the customer alone.
        let chosen = offered
            .iter()
            .filter(pcmu)
            .max_by_key(|m| channels_of(m).len().min(2));
        let Some(chosen) = chosen else {
            return self.disconnect(
                "error",
                "no offered media is PCMU 8000 Hz with the external channel",
            );
        };
        let channels = channels_of(chosen);
        let caller = channels.iter().position(|c| c == "external").unwrap_or(0);
        if channels.len() > 2 {
            return self.disconnect("error", "media with more than two channels");
        }
        let participant = params.get("participant").cloned().unwrap_or(json!({}));
        let media = json!({"type": "audio", "format": "PCMU", "channels": channels, "rate": RATE});
        self.channels = channels.len() as u16;
        self.state = State::Active;
        self.send("opened", json!({"startPaused": false, "media": [media]}));
        self.outputs.push_back(Output::Open(OpenInfo {
            session_id: self.id.clone(),
            conversation_id: s(params.get("conversationId")),
            organization_id: s(params.get("organizationId")),
            participant_id: s(participant.get("id")),
            ani: s(participant.get("ani")),
            ani_name: s(participant.get("aniName")),
            dnis: s(participant.get("dnis")),
            language: s(params.get("language")),
            channels: self.channels,
            caller_channel: caller as u16,
        }));
    }

    fn send(&mut self, ty: &str, parameters: Value) {
        self.seq += 1;
        let msg = json!({
            "version": PROTOCOL_VERSION, "type": ty, "seq": self.seq,
            "clientseq": self.clientseq, "id": self.id, "parameters": parameters,
        });
        self.outputs.push_back(Output::Send(msg.to_string()));
    }

    fn finish(&mut self) {
        if !self.finish_sent {
            self.finish_sent = true;
            self.outputs.push_back(Output::Finish);
        }
    }

    /// `disconnect` with a reason (`completed`, `unauthorized`, `error`) and why; the client
    /// answers with `close`, which gets `closed`.
    fn disconnect(&mut self, reason: &str, info: &str) {
        if matches!(
            self.state,
            State::Disconnecting | State::Closing | State::Closed | State::Done
        ) {
            return;
        }
        self.send("disconnect", json!({"reason": reason, "info": info}));
        self.state = State::Disconnecting;
        self.finish();
    }

    fn close(&mut self, code: u16, reason: String) {
        self.state = State::Done;
        self.outputs.push_back(Output::Close { code, reason });
    }
}

/// Where the signature's covered components come from.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Header values by lowercase name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

/// Components the signature must cover, so a valid one cannot be replayed for another session
/// or key.
const REQUIRED_COMPONENTS: [&str; 3] = ["@request-target", "audiohook-session-id", "x-api-key"];
/// Clock skew allowed for `created`.
const MAX_SKEW_S: i64 = 300;

/// Verifies an HTTP Message Signature (RFC 9421; `Signature-Input` and `Signature`, the first
/// label) made with HMAC-SHA256 keyed with the client secret (base64, as Genesys shows it).
/// `now_unix` checks `created` and `expires`. Returns why it does not verify.
pub fn verify_signature(
    req: &SignedRequest,
    signature_input: &str,
    signature: &str,
    api_key: &str,
    client_secret: &str,
    now_unix: i64,
) -> Result<(), String> {
    let (label, rest) = signature_input
        .split_once('=')
        .ok_or("Signature-Input has no label")?;
    let label = label.trim();
    let params_raw = rest.split(',').next().unwrap_or(rest).trim();
    let inner = params_raw
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .ok_or("Signature-Input has no component list")?;
    let (list, params) = inner;
    let components: Vec<&str> = list
        .split_whitespace()
        .map(|c| c.trim_matches('"'))
        .collect();
    for required in REQUIRED_COMPONENTS {
        if !components.contains(&required) {
            return Err(format!("the signature does not cover {required}"));
        }
    }
    let mut created = None;
    let mut expires = None;
    for p in params.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let v = v.trim_matches('"');
        match k.trim() {
            "alg" if v != "hmac-sha256" => return Err(format!("alg {v} is not hmac-sha256")),
            "keyid" if v != api_key => return Err("keyid is not the X-API-KEY".into()),
            "created" => created = v.parse::<i64>().ok(),
            "expires" => expires = v.parse::<i64>().ok(),
            _ => {}
        }
    }
    if let Some(c) = created
        && c > now_unix + MAX_SKEW_S
    {
        return Err("the signature was created in the future".into());
    }
    if let Some(e) = expires
        && e < now_unix
    {
        return Err("the signature has expired".into());
    }
    let mut base = String::new();
    for c in &components {
        let value = match *c {
            "@request-target" => match req.query {
                Some(q) => format!("{}?{q}", req.path),
                None => req.path.to_owned(),
            },
            "@authority" => req.authority.to_ascii_lowercase(),
            "@method" => req.method.to_owned(),
            "@scheme" => req.scheme.to_owned(),
            "@path" => req.path.to_owned(),
            "@query" => format!("?{}", req.query.unwrap_or_default()),
            "@target-uri" => format!(
                "{}://{}{}{}",
                req.scheme,
                req.authority,
                req.path,
                req.query.map(|q| format!("?{q}")).unwrap_or_default()
            ),
            name if name.starts_with('@') => {
                return Err(format!("component {name} is not supported"));
            }
            name => (req.header)(name).ok_or_else(|| format!("header {name} is missing"))?,
        };
        base.push_str(&format!("\"{c}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params_raw}"));
    let given = signature
        .split(',')
        .find_map(|s| {
            let (l, v) = s.split_once('=')?;
            (l.trim() == label).then(|| v.trim().trim_matches(':').to_owned())
        })
        .ok_or_else(|| format!("Signature has no {label}"))?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(given)
        .map_err(|_| "Signature is not base64")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(client_secret)
        .unwrap_or_else(|_| client_secret.as_bytes().to_vec());
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(base.as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| "the signature does not match the client secret".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "30b0e395-84d3-4570-ac13-9a62d8f514c0";

    fn session() -> (AudioHookSession, Instant) {
        let now = Instant::now();
        let config = SessionConfig {
            max_text_bytes: 65_536,
            idle_timeout: Duration::from_secs(30),
            ping_burst: 5.0,
            pings_per_s: 1.0,
        };
        (AudioHookSession::new(config, SID, now), now)
    }

    fn outputs(s: &mut AudioHookSession) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn sent(out: &[Output]) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn msg(seq: u64, serverseq: u64, ty: &str, position: &str, parameters: Value) -> String {
        json!({"version": "2", "id": SID, "type": ty, "seq": seq, "serverseq": serverseq,
               "position": position, "parameters": parameters})
        .to_string()
    }

    fn open_params() -> Value {
        json!({
            "organizationId": "d7934305-0972-4844-938e-9060eef73d05",
            "conversationId": "090eaa2f-72fa-480a-83e0-8667ff89c0ec",
            "participant": {"id": "883efee8-3d6c-4537-b500-6d7ca4b92fa0", "ani": "+1-555-555-1234",
                            "aniName": "John Doe", "dnis": "+1-800-555-6789"},
            "media": [
                {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},
                {"type": "audio", "format": "PCMU", "channels": ["internal", "external"], "rate": 8000},
            ],
            "language": "en-US",
        })
    }

    #[test]
    fn open_chooses_stereo_with_the_customer_and_numbers_every_message() {
        let (mut s, now) = session();
        s.handle_text(now, &msg(1, 0, "open", "PT0S", open_params()));
        let out = outputs(&mut s);
        let opened = &sent(&out)[0];
        assert_eq!(opened["type"], "opened");
        assert_eq!(
            (opened["seq"].as_u64(), opened["clientseq"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(opened["id"], SID);
        assert_eq!(
            opened["parameters"]["media"][0]["channels"],
            json!(["internal", "external"])
        );
        let Some(Output::Open(info)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!((info.channels, info.caller_channel), (2, 1));
        let meta = info.metadata("corr");
        assert_eq!(meta.ani, "+1-555-555-1234");
        assert_eq!(
            meta.labels["audiohook_conversation_id"],
            "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
        );
        // 100 ms of stereo, then a ping that declares that position: no gap.
        s.handle_binary(now, &[0xff; 1_600]);
        s.handle_text(now, &msg(2, 1, "ping", "PT0.1S", json!({"rtt": "PT0.05S"})));
        let out = outputs(&mut s);
        assert!(matches!(out[0], Output::Audio { sequence: 0, .. }));
        let pong = &sent(&out)[0];
        assert_eq!(
            (
                pong["type"].as_str(),
                pong["seq"].as_u64(),
                pong["clientseq"].as_u64()
            ),
            (Some("pong"), Some(2), Some(2))
        );
        assert_eq!(s.counters().lost_ms, 0);
        // The client declares 1.1 s after 0.2 s of audio: 0.9 s were lost.
        s.handle_binary(now, &[0xff; 1_600]);
        s.handle_text(now, &msg(3, 2, "ping", "PT1.1S", json!({})));
        assert!(outputs(&mut s).contains(&Output::Lost { ms: 900 }));
        assert_eq!(s.position_ns(), 1_100_000_000);
    }

    #[test]
    fn pause_discard_resume_and_close() {
        let (mut s, now) = session();
        s.handle_text(now, &msg(1, 0, "open", "PT0S", open_params()));
        outputs(&mut s);
        s.request_pause(true);
        assert_eq!(sent(&outputs(&mut s))[0]["type"], "pause");
        s.handle_text(now, &msg(2, 2, "paused", "PT0S", json!({})));
        // Audio while paused is an error.
        s.handle_text(
            now,
            &msg(
                3,
                2,
                "resumed",
                "PT0S",
                json!({"start": "PT0S", "discarded": "PT2S"}),
            ),
        );
        assert!(outputs(&mut s).contains(&Output::Lost { ms: 2_000 }));
        s.handle_text(
            now,
            &msg(
                4,
                2,
                "discarded",
                "PT2S",
                json!({"start": "PT2S", "discarded": "PT0.5S"}),
            ),
        );
        assert!(outputs(&mut s).contains(&Output::Lost { ms: 500 }));
        s.handle_text(
            now,
            &msg(5, 2, "update", "PT2.5S", json!({"language": "fr-FR"})),
        );
        s.handle_text(now, &msg(6, 2, "close", "PT2.5S", json!({"reason": "end"})));
        assert_eq!(outputs(&mut s), [Output::Finish]);
        s.handle_call_finished();
        let closed = &sent(&outputs(&mut s))[0];
        assert_eq!(
            (closed["type"].as_str(), closed["seq"].as_u64()),
            (Some("closed"), Some(3))
        );
        assert_eq!(s.counters().updates, 1);
    }

    fn disconnects(s: &mut AudioHookSession) -> String {
        let out = outputs(s);
        let d = sent(&out)
            .into_iter()
            .find(|m| m["type"] == "disconnect")
            .unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!(d["parameters"]["reason"], "error");
        assert!(out.contains(&Output::Finish));
        d["parameters"]["info"].as_str().unwrap().to_owned()
    }

    #[test]
    fn protocol_errors_disconnect_with_the_reason() {
        let (mut s, now) = session();
        s.handle_binary(now, &[0; 160]);
        assert!(disconnects(&mut s).contains("before opened"));
        // After the disconnect the client's close still gets closed.
        s.handle_text(now, &msg(1, 1, "close", "PT0S", json!({"reason": "error"})));
        let closed = sent(&outputs(&mut s));
        assert_eq!(closed[0]["type"], "closed");
        assert_eq!(closed[0]["seq"], 2);

        let (mut s, now) = session();
        s.handle_text(now, &msg(2, 0, "open", "PT0S", open_params()));
        assert!(disconnects(&mut s).contains("seq 2 out of order"));

        let (mut s, now) = session();
        s.handle_text(now, &msg(1, 0, "open", "PT0S", open_params()));
        s.handle_text(now, &msg(2, 1, "shout", "PT0S", json!({})));
        assert!(disconnects(&mut s).contains("not an AudioHook client message"));

        let (mut s, now) = session();
        s.handle_text(now, "{{{");
        assert!(disconnects(&mut s).contains("JSON"));

        let (mut s, now) = session();
        let mut params = open_params();
        params["media"] =
            json!([{"type": "audio", "format": "L16", "channels": ["external"], "rate": 16000}]);
        s.handle_text(now, &msg(1, 0, "open", "PT0S", params));
        assert!(disconnects(&mut s).contains("PCMU"));

        let (mut s, now) = session();
        s.handle_text(now, &msg(1, 0, "open", "PT0S", open_params()));
        s.handle_binary(now, &[0; 161]);
        assert!(disconnects(&mut s).contains("161 bytes"));

        let (mut s, now) = session();
        s.handle_text(now, &" ".repeat(70_000));
        assert!(disconnects(&mut s).contains("limit"));
    }

    #[test]
    fn a_ping_storm_is_disconnected() {
        let (mut s, now) = session();
        s.handle_text(now, &msg(1, 0, "open", "PT0S", open_params()));
        outputs(&mut s);
        for seq in 2..=6 {
            s.handle_text(now, &msg(seq, 1, "ping", "PT0S", json!({})));
        }
        assert_eq!(
            sent(&outputs(&mut s))
                .iter()
                .filter(|m| m["type"] == "pong")
                .count(),
            5
        );
        s.handle_text(now, &msg(7, 1, "ping", "PT0S", json!({})));
        assert!(disconnects(&mut s).contains("ping storm"));
        // Paced pings are fine.
        let (mut s, now) = session();
        s.handle_text(now, &msg(1, 0, "open", "PT0S", open_params()));
        for seq in 2..=20 {
            s.handle_text(
                now + Duration::from_secs(seq),
                &msg(seq, 1, "ping", "PT0S", json!({})),
            );
        }
        assert_eq!(
            sent(&outputs(&mut s))
                .iter()
                .filter(|m| m["type"] == "pong")
                .count(),
            19
        );
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration_ns("PT0S"), Some(0));
        assert_eq!(parse_duration_ns("PT1.25S"), Some(1_250_000_000));
        assert_eq!(parse_duration_ns("PT2M3.5S"), Some(123_500_000_000));
        assert_eq!(parse_duration_ns("PT1H"), Some(3_600_000_000_000));
        for bad in ["", "PT", "1S", "PT-1S", "PTxS", "PT1S2"] {
            assert_eq!(parse_duration_ns(bad), None, "{bad}");
        }
        assert_eq!(format_duration(1_250_000_000), "PT1.25S");
        assert_eq!(format_duration(0), "PT0S");
    }

    /// The example in Genesys's AudioHook documentation (also the reference implementation's
    /// test), recomputed with Python's hmac module.
    #[test]
    fn the_documented_signature_verifies() {
        let headers = |name: &str| -> Option<String> {
            Some(
                match name {
                    "audiohook-organization-id" => "d7934305-0972-4844-938e-9060eef73d05",
                    "audiohook-session-id" => "30b0e395-84d3-4570-ac13-9a62d8f514c0",
                    "audiohook-correlation-id" => "e160e428-53e2-487c-977d-96989bf5c99d",
                    "x-api-key" => "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh",
                    _ => return None,
                }
                .into(),
            )
        };
        let req = SignedRequest {
            method: "GET",
            scheme: "wss",
            authority: "audiohook.example.com",
            path: "/api/v1/voicebiometrics/ws",
            query: None,
            header: &headers,
        };
        let input = r#"sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" "audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";created=1641013200;expires=3282026430"#;
        let sig = "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:";
        let key = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";
        let secret = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=";
        let now = 1_641_013_300;
        assert_eq!(verify_signature(&req, input, sig, key, secret, now), Ok(()));
        let wrong = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDX=";
        assert!(verify_signature(&req, input, sig, key, wrong, now).is_err());
        assert!(verify_signature(&req, input, sig, "another-key", secret, now).is_err());
        let moved = SignedRequest {
            path: "/elsewhere",
            ..req
        };
        assert!(verify_signature(&moved, input, sig, key, secret, now).is_err());
        let req = SignedRequest {
            path: "/api/v1/voicebiometrics/ws",
            ..moved
        };
        assert!(
            verify_signature(&req, input, sig, key, secret, 3_282_026_431)
                .unwrap_err()
                .contains("expired")
        );
        let narrow = input.replace(r#" "x-api-key""#, "");
        assert!(
            verify_signature(&req, &narrow, sig, key, secret, now)
                .unwrap_err()
                .contains("x-api-key")
        );
    }
}
