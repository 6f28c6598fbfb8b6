//! A SIPREC Session Recording Server (RFC 7866): an SBC or call manager (the SRC) forks each
//! call's media to us as a recording session, an INVITE with SDP and recording metadata; the
//! caller's stream becomes a call of the SRC's tenant, screened like a `StreamAudio` call.
//!
//! ```text
//! UDP / TCP / TLS ─► transport tasks ─► Srs (one task: dialogs, transactions, timers)
//!                                          │ opens calls, leases RTP ports, answers
//!                                          ▼
//!                  RTP sockets ─► rtp::MediaTask per session ─► jitter ─► G.711 ─► StreamCall
//! ```
//!
//! Crates: `rsip` parses SIP messages (start line, headers; the most used SIP message crate,
//! no transport or transaction layer of its own), `sdp` (webrtc-rs) reads offers and writes
//! answers, `mailparse` splits the `multipart/mixed` body, `roxmltree` reads the metadata,
//! `rtp-rs` reads RTP packets. The transaction handling an SRS needs (answer retransmission
//! over UDP until ACK, CANCEL, retransmitted requests answered from memory) is here: the Rust
//! SIP stacks that have it are whole user agents around their own I/O.

pub mod message;
pub mod metadata;
pub mod peers;
pub mod sdp;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use self::message::{ALLOW, Request, SipError};
use self::metadata::{Caller, CallerRule, Recording};
use self::peers::Peers;
use self::sdp::{Codec, Offer};
use super::ConnectError;
use super::rtp::{Lease, MediaCmd, MediaEvent, MediaTask, PortPool, StreamMedia};
use crate::audio::push::Encoding;
use crate::config::SiprecConfig;
use crate::guard::{CallSource, Guard, OpenSpec};
use crate::verdict::ChannelClass;

/// Messages queued from the transports to the SRS task; more are dropped (counted).
const INBOUND_QUEUE: usize = 4096;
/// Largest SIP message taken (UDP datagram or stream message).
const MAX_MESSAGE: usize = 64 << 10;
/// RFC 3261 timers T1 and T2, and the 64*T1 a transaction lasts.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TRANSACTION: Duration = Duration::from_secs(32);
/// Final responses to refused INVITEs kept to answer their retransmissions.
const REFUSED_MEMORY: usize = 256;

/// Where a message came from, and how to answer.
#[derive(Clone)]
enum Via {
    Udp(Arc<UdpSocket>, SocketAddr),
    Stream(mpsc::Sender<Vec<u8>>, SocketAddr, &'static str),
}

impl Via {
    fn peer(&self) -> SocketAddr {
        match self {
            Self::Udp(_, a) | Self::Stream(_, a, _) => *a,
        }
    }

    fn transport(&self) -> &'static str {
        match self {
            Self::Udp(..) => "UDP",
            Self::Stream(_, _, t) => t,
        }
    }

    async fn send(&self, bytes: Vec<u8>) {
        match self {
            Self::Udp(socket, to) => {
                let _ = socket.send_to(&bytes, to).await;
            }
            Self::Stream(tx, ..) => {
                let _ = tx.try_send(bytes);
            }
        }
    }
}

struct Inbound {
    bytes: Vec<u8>,
    via: Via,
    /// Our address the message arrived on.
    local: SocketAddr,
}

/// Counters of the SIP side, logged when the server stops and per session.
#[derive(Debug, Default)]
pub struct SipCounters {
    pub messages: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_peer: AtomicU64,
    pub sessions: AtomicU64,
    pub refused: AtomicU64,
}

/// The bound SIPREC listeners.
pub struct SiprecServer {
    udp: Option<Arc<UdpSocket>>,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, crate::tls::ServerTls)>,
    config: SiprecConfig,
    peers: Peers,
    rule: CallerRule,
}

impl SiprecServer {
    pub async fn bind(config: &SiprecConfig) -> Result<Self, ConnectError> {
        let bind_err = |addr, source| ConnectError::Bind { addr, source };
        let (udp, tcp) = match config.listen {
            Some(addr) => {
                let tcp = TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_err(addr, e))?;
                // UDP on the port TCP got (the same when one was asked for).
                let port = tcp.local_addr().map_err(|e| bind_err(addr, e))?.port();
                let addr = SocketAddr::new(addr.ip(), port);
                let udp = UdpSocket::bind(addr).await.map_err(|e| bind_err(addr, e))?;
                (Some(Arc::new(udp)), Some(tcp))
            }
            None => (None, None),
        };
        let tls = match (config.tls_listen, &config.tls) {
            (Some(addr), Some(tls)) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_err(addr, e))?,
                crate::tls::ServerTls::load("SIPREC", tls, &[])
                    .map_err(|e| ConnectError::Tls(e.to_string()))?,
            )),
            _ => None,
        };
        let peers = Peers::new(&config.peers).map_err(ConnectError::Tls)?;
        let regex = |r: &str| regex::Regex::new(r).map_err(|e| ConnectError::Tls(e.to_string()));
        let rule = match (&config.caller_label, &config.caller_aor, &config.agent_aor) {
            (Some(l), _, _) => CallerRule::Label(l.clone()),
            (_, Some(r), _) => CallerRule::Aor(regex(r)?),
            (_, _, Some(r)) => CallerRule::NotAgent(regex(r)?),
            _ => CallerRule::External {
                local_domains: config.local_domains.clone(),
            },
        };
        Ok(Self {
            udp,
            tcp,
            tls,
            config: config.clone(),
            peers,
            rule,
        })
    }

    /// Where SIP is served: (UDP+TCP address, TLS address).
    pub fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.udp.as_ref().and_then(|u| u.local_addr().ok()),
            self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        )
    }

    /// Serves until `stop` resolves; then every session is ended (BYE sent, summaries
    /// written).
    pub async fn serve(self, guard: Arc<Guard>, stop: impl std::future::Future<Output = ()>) {
        let counters = Arc::new(SipCounters::default());
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(udp) = self.udp.clone() {
            tasks.spawn(udp_reader(udp, tx.clone(), counters.clone()));
        }
        if let Some(tcp) = self.tcp {
            tasks.spawn(tcp_acceptor(tcp, None, tx.clone(), counters.clone()));
        }
        if let Some((tls, acceptor)) = self.tls {
            tasks.spawn(tcp_acceptor(
                tls,
                Some(acceptor),
                tx.clone(),
                counters.clone(),
            ));
        }
        drop(tx);
        let [lo, hi] = self.config.rtp_ports;
        let (events_tx, events) = mpsc::channel(1024);
        let srs = Srs {
            guard,
            config: self.config,
            peers: self.peers,
            rule: self.rule,
            ports: PortPool::new(lo, hi),
            dialogs: HashMap::new(),
            refused: VecDeque::new(),
            events_tx,
            counters: counters.clone(),
            next_tag: 0,
        };
        srs.run(rx, events, stop).await;
        tasks.abort_all();
        tracing::info!(
            messages = counters.messages.load(Ordering::Relaxed),
            dropped_queue_full = counters.dropped_queue_full.load(Ordering::Relaxed),
            malformed = counters.malformed.load(Ordering::Relaxed),
            unknown_peer = counters.unknown_peer.load(Ordering::Relaxed),
            sessions = counters.sessions.load(Ordering::Relaxed),
            refused = counters.refused.load(Ordering::Relaxed),
            "SIPREC server stopped."
        );
    }
}

async fn udp_reader(socket: Arc<UdpSocket>, tx: mpsc::Sender<Inbound>, counters: Arc<SipCounters>) {
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends surface here on some systems.
                tracing::debug!(error = %e, "SIP UDP receive failed.");
                continue;
            }
        };
        let bytes = &buf[..n];
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // keep-alive
        }
        let inbound = Inbound {
            bytes: bytes.to_vec(),
            via: Via::Udp(socket.clone(), peer),
            local,
        };
        if tx.try_send(inbound).is_err() {
            counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn tcp_acceptor(
    listener: TcpListener,
    tls: Option<crate::tls::ServerTls>,
    tx: mpsc::Sender<Inbound>,
    counters: Arc<SipCounters>,
) {
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let _ = socket.set_nodelay(true);
        let tx = tx.clone();
        let counters = counters.clone();
        match tls.as_ref().map(crate::tls::ServerTls::acceptor) {
            None => {
                tokio::spawn(stream_conn(socket, peer, local, "TCP", tx, counters));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket))
                            .await;
                    match accepted {
                        Ok(Ok(s)) => stream_conn(s, peer, local, "TLS", tx, counters).await,
                        _ => tracing::info!(%peer, "SIP TLS handshake failed."),
                    }
                });
            }
        }
    }
}

/// One TCP or TLS connection: messages framed by Content-Length in, responses out.
async fn stream_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    socket: S,
    peer: SocketAddr,
    local: SocketAddr,
    transport: &'static str,
    tx: mpsc::Sender<Inbound>,
    counters: Arc<SipCounters>,
) {
    let (mut read, mut write) = tokio::io::split(socket);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut buf = Vec::with_capacity(8 << 10);
    let mut chunk = vec![0u8; 16 << 10];
    'conn: loop {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            let skip = buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            buf.drain(..skip);
            match message::frame_len(&buf, MAX_MESSAGE) {
                Ok(Some(len)) => {
                    let bytes: Vec<u8> = buf.drain(..len).collect();
                    let inbound = Inbound {
                        bytes,
                        via: Via::Stream(out_tx.clone(), peer, transport),
                        local,
                    };
                    if tx.try_send(inbound).is_err() {
                        counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => break,
                Err(reason) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, reason, "SIP stream cannot be framed; closing it.");
                    break 'conn;
                }
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
}

enum Phase {
    /// 100 Trying sent; answered at `at` (the SRC may CANCEL until then).
    Pending {
        at: Instant,
    },
    /// 200 OK sent; over UDP repeated until ACK.
    Answered {
        next: Instant,
        interval: Duration,
        until: Instant,
    },
    Confirmed,
}

struct Dialog {
    call_id: String,
    engine_id: String,
    tenant: Arc<str>,
    via: Via,
    local: SocketAddr,
    invite: Request,
    local_tag: String,
    phase: Phase,
    /// The last INVITE's branch and our final response to it (for retransmissions).
    last_branch: String,
    last_response: Vec<u8>,
    offer: Offer,
    leases: Vec<Option<Arc<Lease>>>,
    recording: Option<Recording>,
    caller: Option<Caller>,
    media: mpsc::Sender<MediaCmd>,
    sdp_session: u64,
    sdp_version: u64,
    bye_cseq: u32,
}

struct Srs {
    guard: Arc<Guard>,
    config: SiprecConfig,
    peers: Peers,
    rule: CallerRule,
    ports: Arc<PortPool>,
    dialogs: HashMap<String, Dialog>,
    refused: VecDeque<(String, String, Vec<u8>)>,
    events_tx: mpsc::Sender<MediaEvent>,
    counters: Arc<SipCounters>,
    next_tag: u64,
}

/// Why an INVITE is refused: status, reason phrase, extra headers.
struct Refusal(u16, String, Vec<(&'static str, String)>);

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Self(status, reason.into(), Vec::new())
    }
}

/// The SDP and the metadata of a request body (`application/sdp`, or `multipart/mixed` with
/// both).
fn body_parts(req: &Request) -> Result<(Option<String>, Option<String>), String> {
    let ctype = req.content_type();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match ctype.as_str() {
        _ if req.body.is_empty() => Ok((None, None)),
        "application/sdp" => Ok((Some(text(&req.body)), None)),
        "application/rs-metadata+xml" => Ok((None, Some(text(&req.body)))),
        "multipart/mixed" => {
            let header = format!(
                "Content-Type: {}\r\n\r\n",
                req.header("content-type").unwrap_or_default()
            );
            let mut whole = header.into_bytes();
            whole.extend_from_slice(&req.body);
            let mail = mailparse::parse_mail(&whole).map_err(|e| format!("multipart body: {e}"))?;
            let (mut sdp, mut meta) = (None, None);
            for part in &mail.subparts {
                let body = part
                    .get_body_raw()
                    .map_err(|e| format!("multipart body: {e}"))?;
                match part.ctype.mimetype.as_str() {
                    "application/sdp" => sdp = Some(text(&body)),
                    "application/rs-metadata+xml" => meta = Some(text(&body)),
                    _ => {}
                }
            }
            if mail.subparts.is_empty() {
                return Err("multipart body has no parts (boundary?)".into());
            }
            Ok((sdp, meta))
        }
        other => Err(format!(
            "body of type {other:?} is neither SDP nor multipart/mixed"
        )),
    }
}

/// A call id the engine takes, from the SIP Call-ID (kept whole in the metadata).
fn engine_call_id(sip: &str) -> String {
    let clean: String = sip
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:@#".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    format!("sip-{clean}")
}

impl Srs {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut events: mpsc::Receiver<MediaEvent>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(msg) = inbound.recv() => self.handle(msg).await,
                Some(event) = events.recv() => self.media_event(event).await,
                _ = tick.tick() => self.timers().await,
            }
        }
        // Shutdown: every session ends with a BYE, then its media task finishes the call.
        let ids: Vec<String> = self.dialogs.keys().cloned().collect();
        for id in ids {
            self.end_here(&id, "callguard is shutting down").await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline.into(), events.recv()).await {
            if let MediaEvent::Finished(id, c) = event {
                log_finished(&id, &c);
            }
            if self.events_tx.strong_count() <= 1 && events.is_empty() {
                // Only our own sender is left: every media task is done.
                break;
            }
        }
    }

    fn tag(&mut self) -> String {
        use sha2::Digest;
        self.next_tag += 1;
        let seed = format!(
            "{:?}{}{:?}",
            Instant::now(),
            self.next_tag,
            std::thread::current().id()
        );
        let digest = sha2::Sha256::digest(seed.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    async fn handle(&mut self, msg: Inbound) {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let req = match Request::parse(&msg.bytes) {
            Ok(r) => r,
            Err(SipError::Response { status, call_id }) => {
                tracing::debug!(status, call_id, "SIP response (to our BYE) received.");
                return;
            }
            Err(SipError::Malformed {
                reason,
                status,
                reply,
            }) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                self.guard.metrics().connector_error("siprec", "malformed");
                tracing::info!(peer = %msg.via.peer(), reason, "Malformed SIP message.");
                if let Some(req) = reply
                    && req.method != "ACK"
                {
                    let what = if status == 505 {
                        "Version Not Supported"
                    } else {
                        "Bad Request"
                    };
                    let phrase =
                        format!("{what} ({})", reason.chars().take(80).collect::<String>());
                    msg.via
                        .send(req.response(status, Some(&phrase), None, &[], None))
                        .await;
                }
                return;
            }
        };
        let from = req.header("from").unwrap_or_default();
        let Some(tenant) = self.peers.tenant(msg.via.peer().ip(), from) else {
            let n = self.counters.unknown_peer.fetch_add(1, Ordering::Relaxed);
            self.guard
                .metrics()
                .connector_error("siprec", "unauthorized");
            if n.is_power_of_two() || n == 0 {
                tracing::warn!(peer = %msg.via.peer(), method = req.method, refused = n + 1, "SIP request from a peer (address, or From identity) not in siprec.peers: 403.");
            }
            if req.method != "ACK" {
                msg.via
                    .send(req.response(403, Some("Forbidden (unknown SRC)"), None, &[], None))
                    .await;
            }
            return;
        };
        match req.method.as_str() {
            "INVITE" | "UPDATE" if self.dialogs.contains_key(req.call_id()) => {
                self.reoffer(req, msg.via).await
            }
            "INVITE" => self.invite(req, msg.via, msg.local, tenant).await,
            "ACK" => {
                if let Some(d) = self.dialogs.get_mut(req.call_id())
                    && matches!(d.phase, Phase::Answered { .. })
                {
                    d.phase = Phase::Confirmed;
                }
            }
            "BYE" => match self.dialogs.remove(req.call_id()) {
                Some(d) => {
                    msg.via.send(req.response(200, None, None, &[], None)).await;
                    tracing::info!(
                        call_id = d.engine_id,
                        sip_call_id = d.call_id,
                        "SIPREC session ended by BYE."
                    );
                    let _ = d.media.send(MediaCmd::End).await;
                }
                None => {
                    msg.via.send(req.response(481, None, None, &[], None)).await;
                }
            },
            "CANCEL" => self.cancel(req, msg.via).await,
            "OPTIONS" => {
                let extra = [
                    ("Allow", ALLOW.to_owned()),
                    (
                        "Accept",
                        "application/sdp, application/rs-metadata+xml, multipart/mixed".to_owned(),
                    ),
                    ("Supported", "siprec".to_owned()),
                ];
                let tag = self.tag();
                msg.via
                    .send(req.response(200, None, Some(&tag), &extra, None))
                    .await;
            }
            _ => {
                msg.via
                    .send(req.response(405, None, None, &[("Allow", ALLOW.to_owned())], None))
                    .await;
            }
        }
    }

    async fn refuse(&mut self, req: &Request, via: &Via, r: Refusal) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        let kind = match r.0 {
            488 => "no_codec",
            503 => "over_limit",
            400 => "bad_request",
            _ => "refused",
        };
        self.guard.metrics().connector_error("siprec", kind);
        tracing::info!(peer = %via.peer(), sip_call_id = req.call_id(), status = r.0, reason = r.1, "SIPREC INVITE refused.");
        let tag = self.tag();
        let bytes = req.response(r.0, Some(&r.1), Some(&tag), &r.2, None);
        if self.refused.len() == REFUSED_MEMORY {
            self.refused.pop_front();
        }
        self.refused
            .push_back((req.call_id().to_owned(), req.branch(), bytes.clone()));
        via.send(bytes).await;
    }

    async fn invite(&mut self, req: Request, via: Via, local: SocketAddr, tenant: Arc<str>) {
        // A retransmission of an INVITE we refused gets the same answer.
        let branch = req.branch();
        if let Some((_, _, bytes)) = self
            .refused
            .iter()
            .find(|(c, b, _)| c == req.call_id() && *b == branch)
        {
            via.send(bytes.clone()).await;
            return;
        }
        if req.to_tag().is_some() {
            via.send(req.response(481, None, None, &[], None)).await;
            return;
        }
        let siprec = req.has_option("require", "siprec")
            || req
                .header_values("contact")
                .iter()
                .any(|c| c.contains("+sip.src"));
        if !siprec {
            let r = Refusal(
                421,
                "Extension Required (this is a SIPREC recording server)".into(),
                vec![("Require", "siprec".into())],
            );
            return self.refuse(&req, &via, r).await;
        }
        if self.dialogs.len() >= self.config.max_sessions {
            let mut r = Refusal::new(503, "Service Unavailable (at siprec.max_sessions)");
            r.2.push(("Retry-After", "5".into()));
            return self.refuse(&req, &via, r).await;
        }
        let (offer, recording) = match parse_body(&req) {
            Ok(v) => v,
            Err(r) => return self.refuse(&req, &via, r).await,
        };
        let Some(offer) = offer else {
            return self
                .refuse(&req, &via, Refusal::new(400, "No SDP offer"))
                .await;
        };
        if !offer.streams.iter().any(|s| s.usable()) {
            let mut r = Refusal::new(
                488,
                "Not Acceptable Here (no stream in PCMU, PCMA, G.722 or Opus)",
            );
            r.2.push((
                "Warning",
                "304 callguard \"media type not available\"".into(),
            ));
            return self.refuse(&req, &via, r).await;
        }
        let caller = match self.rule.pick(recording.as_ref(), &offer.labels()) {
            Ok(c) => Some(c),
            Err(_) if recording.is_none() => None, // metadata may come in a re-INVITE
            Err(why) => {
                let r = Refusal::new(488, format!("Not Acceptable Here ({why})"));
                return self.refuse(&req, &via, r).await;
            }
        };
        let media_ip = self.config.media_address.unwrap_or(local.ip());
        let leases = match self.lease(&offer, None, media_ip) {
            Some(l) => l,
            None => {
                let mut r = Refusal::new(503, "Service Unavailable (no RTP ports left)");
                r.2.push(("Retry-After", "5".into()));
                return self.refuse(&req, &via, r).await;
            }
        };
        via.send(req.response(100, None, None, &[], None)).await;
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let call_id = req.call_id().to_owned();
        let task = MediaTask {
            dialog: call_id.clone(),
            rtp_timeout: Duration::from_millis(self.config.rtp_timeout_ms.into()),
            jitter_packets: self.config.jitter_packets,
            commands: cmd_rx,
            events: self.events_tx.clone(),
        };
        tokio::spawn(task.run());
        let local_tag = self.tag();
        let dialog = Dialog {
            engine_id: engine_call_id(&call_id),
            call_id: call_id.clone(),
            tenant,
            via,
            local,
            local_tag,
            phase: Phase::Pending {
                at: Instant::now() + Duration::from_millis(self.config.answer_delay_ms.into()),
            },
            last_branch: branch,
            last_response: Vec::new(),
            offer,
            leases,
            recording,
            caller: None,
            media: cmd_tx,
            sdp_session: u64::from_str_radix(&self.tag()[..8], 16).unwrap_or(1),
            sdp_version: 1,
            bye_cseq: 1,
            invite: req,
        };
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        self.dialogs.insert(call_id.clone(), dialog);
        self.streams_to_media(&call_id).await;
        if let Some(c) = caller {
            self.screen(&call_id, c).await;
        }
        if self.config.answer_delay_ms == 0 {
            self.answer(&call_id).await;
        }
    }

    /// Leases a port pair for each usable stream, reusing `old` leases by index.
    fn lease(
        &self,
        offer: &Offer,
        old: Option<&[Option<Arc<Lease>>]>,
        ip: IpAddr,
    ) -> Option<Vec<Option<Arc<Lease>>>> {
        let mut out = Vec::new();
        for (i, s) in offer.streams.iter().enumerate() {
            if !s.usable() {
                out.push(None);
                continue;
            }
            match old.and_then(|o| o.get(i).cloned().flatten()) {
                Some(l) => out.push(Some(l)),
                None => out.push(Some(Arc::new(self.ports.lease(ip)?))),
            }
        }
        Some(out)
    }

    async fn streams_to_media(&mut self, id: &str) {
        let Some(d) = self.dialogs.get(id) else {
            return;
        };
        let peer_ip = d.via.peer().ip();
        let plan = d
            .offer
            .streams
            .iter()
            .zip(&d.leases)
            .map(|(s, l)| {
                l.clone().map(|l| {
                    (
                        l,
                        StreamMedia {
                            codecs: s.payload_map(),
                            source: Some(s.address.unwrap_or(peer_ip)),
                            sending: s.direction.sends(),
                        },
                    )
                })
            })
            .collect();
        let _ = d.media.send(MediaCmd::Streams(plan)).await;
    }

    /// Opens the engine call for the caller's stream and hands it to the media task.
    async fn screen(&mut self, id: &str, caller: Caller) {
        let Some(d) = self.dialogs.get_mut(id) else {
            return;
        };
        let Some((index, codec)) = d.offer.streams.iter().enumerate().find_map(|(i, s)| {
            (s.label.as_deref() == Some(caller.label.as_str()))
                .then(|| s.audio_codec().map(|c| (i, c)))
                .flatten()
        }) else {
            return;
        };
        // The call runs at its codec's rate: G.722 is wideband, G.711 narrowband. A later offer
        // that changes the codec is decoded to this rate (rtp::Decoder).
        let (sample_rate, class) = match codec {
            Codec::G722 => (16_000, ChannelClass::Wideband),
            Codec::Opus => (8_000, ChannelClass::NarrowbandLossy),
            _ => (8_000, ChannelClass::NarrowbandG711),
        };
        let mut metadata = crate::alert::CallMeta {
            ani: metadata::user_of(&caller.aor),
            dnis: metadata::user_of(&caller.other_aor),
            ..Default::default()
        };
        let rec = d.recording.clone().unwrap_or_default();
        for (k, v) in [
            ("sip_call_id", d.call_id.as_str()),
            ("siprec_session_id", rec.session_id.as_str()),
            ("siprec_participant_id", caller.participant_id.as_str()),
            ("siprec_stream_label", caller.label.as_str()),
        ] {
            if !v.is_empty() {
                metadata
                    .labels
                    .insert(k.into(), v.chars().take(256).collect());
            }
        }
        let spec = OpenSpec {
            call_id: d.engine_id.clone(),
            encoding: Encoding::Pcm16Le,
            sample_rate,
            channels: 1,
            caller_channel: None,
            metadata,
            window_updates: false,
            channel_class: Some(class),
            source: CallSource::Siprec,
        };
        match self.guard.open_stream(&d.tenant, spec) {
            Ok(call) => {
                tracing::info!(
                    tenant = &*d.tenant,
                    call_id = d.engine_id,
                    sip_call_id = d.call_id,
                    label = caller.label,
                    "SIPREC call started."
                );
                d.caller = Some(caller);
                let _ = d
                    .media
                    .send(MediaCmd::Screen {
                        index,
                        sample_rate,
                        call: Box::new(call),
                    })
                    .await;
            }
            Err(e) => {
                tracing::warn!(call_id = d.engine_id, error = %e, "SIPREC call cannot be screened.");
                if matches!(d.phase, Phase::Pending { .. }) {
                    let d = self.dialogs.remove(id).expect("present");
                    let _ = d.media.send(MediaCmd::End).await;
                    let mut r = Refusal::new(503, format!("Service Unavailable ({e})"));
                    r.2.push(("Retry-After", "5".into()));
                    self.refuse(&d.invite, &d.via, r).await;
                }
            }
        }
    }

    fn answer_sdp(d: &mut Dialog, media_ip: IpAddr) -> Vec<u8> {
        let ports: Vec<Option<u16>> = d
            .leases
            .iter()
            .map(|l| l.as_ref().map(|l| l.port))
            .collect();
        sdp::answer(&d.offer, &ports, media_ip, d.sdp_session, d.sdp_version).into_bytes()
    }

    fn contact(d: &Dialog) -> String {
        let t = d.via.transport().to_ascii_lowercase();
        let scheme = if t == "tls" { "sips" } else { "sip" };
        format!("<{scheme}:callguard@{};transport={t}>;+sip.srs", d.local)
    }

    async fn answer(&mut self, id: &str) {
        let media_ip = self.config.media_address;
        let Some(d) = self.dialogs.get_mut(id) else {
            return;
        };
        if !matches!(d.phase, Phase::Pending { .. }) {
            return;
        }
        let body = Self::answer_sdp(d, media_ip.unwrap_or(d.local.ip()));
        let extra = [
            ("Contact", Self::contact(d)),
            ("Allow", ALLOW.to_owned()),
            ("Supported", "siprec".to_owned()),
        ];
        let bytes = d.invite.response(
            200,
            None,
            Some(&d.local_tag),
            &extra,
            Some(("application/sdp", body)),
        );
        d.last_response = bytes.clone();
        let now = Instant::now();
        d.phase = match d.via {
            Via::Udp(..) => Phase::Answered {
                next: now + T1,
                interval: T1,
                until: now + TRANSACTION,
            },
            Via::Stream(..) => Phase::Confirmed,
        };
        d.via.send(bytes).await;
    }

    async fn reoffer(&mut self, req: Request, via: Via) {
        let id = req.call_id().to_owned();
        let media_ip = self.config.media_address;
        let Some(d) = self.dialogs.get_mut(&id) else {
            return;
        };
        let branch = req.branch();
        if req.method == "INVITE" && branch == d.last_branch {
            // A retransmission: the same answer again (none yet while pending).
            if !d.last_response.is_empty() {
                via.send(d.last_response.clone()).await;
            }
            return;
        }
        let (offer, recording) = match parse_body(&req) {
            Ok(v) => v,
            Err(Refusal(status, reason, extra)) => {
                via.send(req.response(status, Some(&reason), None, &extra, None))
                    .await;
                return;
            }
        };
        if let Some(newer) = recording {
            match &mut d.recording {
                Some(r) => r.merge(newer),
                None => d.recording = Some(newer),
            }
        }
        let ip = media_ip.unwrap_or(d.local.ip());
        let old = d.leases.clone();
        if let Some(offer) = offer {
            let Some(leases) = self.lease(&offer, Some(&old), ip) else {
                via.send(req.response(
                    503,
                    Some("Service Unavailable (no RTP ports left)"),
                    None,
                    &[],
                    None,
                ))
                .await;
                return;
            };
            let d = self.dialogs.get_mut(&id).expect("present");
            d.offer = offer;
            d.leases = leases;
            d.sdp_version += 1;
        }
        let d = self.dialogs.get_mut(&id).expect("present");
        let body = Self::answer_sdp(d, ip);
        let extra = [("Contact", Self::contact(d))];
        let bytes = req.response(
            200,
            None,
            Some(&d.local_tag),
            &extra,
            Some(("application/sdp", body)),
        );
        if req.method == "INVITE" {
            d.last_branch = branch;
            d.last_response = bytes.clone();
            if let Via::Udp(..) = via {
                let now = Instant::now();
                d.phase = Phase::Answered {
                    next: now + T1,
                    interval: T1,
                    until: now + TRANSACTION,
                };
            }
        }
        let paused = !d.offer.streams.iter().any(|s| s.direction.sends());
        tracing::info!(call_id = d.engine_id, paused, "SIPREC session re-offered.");
        via.send(bytes).await;
        self.streams_to_media(&id).await;
        let d = self.dialogs.get(&id).expect("present");
        if d.caller.is_none()
            && let Ok(c) = self.rule.pick(d.recording.as_ref(), &d.offer.labels())
        {
            self.screen(&id, c).await;
        }
    }

    async fn cancel(&mut self, req: Request, via: Via) {
        let id = req.call_id().to_owned();
        let pending = self.dialogs.get(&id).is_some_and(|d| {
            matches!(d.phase, Phase::Pending { .. }) && d.invite.branch() == req.branch()
        });
        if !self.dialogs.contains_key(&id) {
            via.send(req.response(481, None, None, &[], None)).await;
            return;
        }
        via.send(req.response(200, None, None, &[], None)).await;
        if pending {
            let d = self.dialogs.remove(&id).expect("present");
            let bytes = d.invite.response(487, None, Some(&d.local_tag), &[], None);
            d.via.send(bytes).await;
            tracing::info!(
                call_id = d.engine_id,
                "SIPREC session cancelled before the answer."
            );
            let _ = d.media.send(MediaCmd::End).await;
        }
    }

    async fn timers(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut expired = Vec::new();
        for (id, d) in &mut self.dialogs {
            match &mut d.phase {
                Phase::Pending { at } if *at <= now => due.push(id.clone()),
                Phase::Answered {
                    next,
                    interval,
                    until,
                } if *next <= now => {
                    if now >= *until {
                        expired.push(id.clone());
                    } else {
                        *interval = (*interval * 2).min(T2);
                        *next = now + *interval;
                        d.via.send(d.last_response.clone()).await;
                    }
                }
                _ => {}
            }
        }
        for id in due {
            self.answer(&id).await;
        }
        for id in expired {
            self.end_here(&id, "no ACK for the 200 OK").await;
        }
    }

    async fn media_event(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::TimedOut(id) => {
                self.end_here(&id, "no RTP for siprec.rtp_timeout_ms").await
            }
            MediaEvent::EndedHere(id) => {
                self.end_here(&id, "the call was ended by callguard").await
            }
            MediaEvent::Finished(id, c) => log_finished(&id, &c),
        }
    }

    /// Ends a session from our side: BYE to the SRC, and the call finished.
    async fn end_here(&mut self, id: &str, why: &str) {
        let Some(mut d) = self.dialogs.remove(id) else {
            return;
        };
        tracing::info!(
            call_id = d.engine_id,
            sip_call_id = d.call_id,
            why,
            "Ending a SIPREC session."
        );
        if !matches!(d.phase, Phase::Pending { .. }) {
            d.bye_cseq += 1;
            d.via.send(self.bye(&d)).await;
        } else {
            let bytes = d.invite.response(
                480,
                Some("Temporarily Unavailable"),
                Some(&d.local_tag),
                &[],
                None,
            );
            d.via.send(bytes).await;
        }
        let _ = d.media.send(MediaCmd::End).await;
    }

    fn bye(&self, d: &Dialog) -> Vec<u8> {
        let contact = d
            .invite
            .header_values("contact")
            .first()
            .cloned()
            .unwrap_or_else(|| d.invite.header("from").unwrap_or_default().to_owned());
        let target = contact
            .split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .map_or(contact.as_str(), |(u, _)| u)
            .to_owned();
        let mut to = d.invite.header("to").unwrap_or_default().to_owned();
        if message::param(&to, "tag").is_none() {
            to = format!("{to};tag={}", d.local_tag);
        }
        let branch = format!("z9hG4bK{}{}", d.local_tag, d.bye_cseq);
        format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: {to}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} BYE\r\nReason: SIP;cause=200;text=\"callguard ended the recording\"\r\n\
             Content-Length: 0\r\n\r\n",
            d.via.transport(),
            d.local,
            d.invite.header("from").unwrap_or_default(),
            d.call_id,
            d.bye_cseq,
        )
        .into_bytes()
    }
}

fn parse_body(req: &Request) -> Result<(Option<Offer>, Option<Recording>), Refusal> {
    let (sdp, meta) =
        body_parts(req).map_err(|e| Refusal::new(400, format!("Bad Request ({e})")))?;
    let offer = sdp
        .map(|s| Offer::parse(&s))
        .transpose()
        .map_err(|e| Refusal::new(400, format!("Bad Request ({e})")))?;
    let recording = meta
        .map(|m| Recording::parse(&m))
        .transpose()
        .map_err(|e| Refusal::new(400, format!("Bad Request ({e})")))?;
    Ok((offer, recording))
}

fn log_finished(id: &str, c: &super::rtp::MediaCounters) {
    tracing::info!(
        sip_call_id = id,
        packets = c.packets,
        caller_packets = c.caller.received,
        lost = c.caller.lost,
        late = c.caller.late,
        duplicate = c.caller.duplicate,
        skipped = c.caller.skipped,
        ssrc_changes = c.caller.ssrc_changes,
        rtcp = c.rtcp,
        foreign = c.foreign,
        malformed = c.malformed,
        unknown_payload = c.unknown_payload,
        queue_full = c.queue_full,
        frames_not_taken = c.frames_not_taken,
        "SIPREC session finished."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_call_ids_become_engine_call_ids() {
        assert_eq!(
            engine_call_id("a84b4c76e66710@192.0.2.10"),
            "sip-a84b4c76e66710@192.0.2.10"
        );
        assert_eq!(engine_call_id("x/y+z="), "sip-x_y_z_");
        assert!(crate::guard::valid_call_id(&engine_call_id(
            &"é".repeat(300)
        )));
    }

    #[test]
    fn a_multipart_body_gives_its_sdp_and_metadata() {
        let body = "--foobar\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n--foobar\r\n\
Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n<recording/>\r\n--foobar--\r\n";
        let req = Request {
            method: "INVITE".into(),
            uri: "sip:srs@x".into(),
            fields: vec![(
                "content-type".into(),
                "multipart/mixed;boundary=foobar".into(),
            )],
            body: body.as_bytes().to_vec(),
        };
        let (sdp, meta) = body_parts(&req).unwrap();
        assert_eq!(sdp.unwrap().trim(), "v=0");
        assert_eq!(meta.unwrap().trim(), "<recording/>");
    }
}
