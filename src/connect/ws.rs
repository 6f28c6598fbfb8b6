//! The connectors' HTTP/WebSocket listener (axum): Twilio Media Streams at `/twilio/TENANT`,
//! AudioHook at `/audiohook/TENANT` (`super::hook_ws`).
//! The upgrade request is checked (tenant, `X-Twilio-Signature`) before the WebSocket is
//! accepted; then one task per socket drives a [`TwilioSession`] and the call behind it, and a
//! writer task drains a bounded queue of outgoing messages.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::twilio::{self, Output, SessionConfig, TwilioSession, close};
use super::{CallLink, LinkEvent, SessionCount, TwilioTenant};
use crate::guard::{CallSource, CallUpdate, Guard, OpenError, OpenSpec};

/// Largest WebSocket message read off the socket at all. Messages up to this size are read
/// whole, so that one over `connectors.max_text_bytes` gets a clean close (1009) with a reason
/// instead of a torn connection; beyond it the socket is dropped.
pub(super) const WS_READ_LIMIT: usize = 16 << 20;
/// How long a closing session waits for the peer to answer its close frame.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A WebSocket close reason is at most 123 bytes (RFC 6455 5.5).
const MAX_CLOSE_REASON: usize = 123;

pub(super) struct WsState {
    pub guard: Arc<Guard>,
    pub twilio: HashMap<String, TwilioTenant>,
    pub audiohook: HashMap<String, super::AudioHookTenant>,
    pub public_url: Option<String>,
    pub tls: bool,
    pub max_text_bytes: usize,
    pub idle_timeout: Duration,
    pub outbound_queue: usize,
    pub sessions: Arc<AtomicUsize>,
}

impl WsState {
    /// The URL Twilio signed: the configured public origin (or `ws(s)://` + Host) and the
    /// request's path and query.
    /// The authority the platform connected to: `public_url`'s, else the Host header.
    pub(super) fn authority(&self, headers: &HeaderMap) -> String {
        match &self.public_url {
            Some(u) => u
                .split_once("://")
                .map_or(u.as_str(), |(_, a)| a)
                .trim_end_matches('/')
                .to_owned(),
            None => headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
    }

    fn signed_url(&self, headers: &HeaderMap, uri: &Uri) -> String {
        let origin = match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!(
                "{}://{}",
                if self.tls { "wss" } else { "ws" },
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
            ),
        };
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        format!("{origin}{path}")
    }
}

pub(super) async fn serve(
    state: Arc<WsState>,
    listener: TcpListener,
    tls: Option<crate::tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/twilio/{tenant}", get(twilio_upgrade))
        .route("/audiohook/{tenant}", get(super::hook_ws::upgrade))
        .with_state(state);
    match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

impl WsState {
    /// Refuses an upgrade request with a reason the platform's logs will show, and counts it.
    pub(super) fn reject(
        &self,
        connector: &'static str,
        status: StatusCode,
        reason: String,
    ) -> Response {
        let kind = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "unauthorized",
            StatusCode::NOT_FOUND => "unknown_tenant",
            _ => "bad_request",
        };
        self.guard.metrics().connector_error(connector, kind);
        tracing::info!(connector, %status, reason, "Connector request rejected.");
        (status, reason).into_response()
    }
}

async fn twilio_upgrade(
    State(state): State<Arc<WsState>>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(account) = state.twilio.get(&tenant) else {
        return state.reject(
            "twilio",
            StatusCode::NOT_FOUND,
            format!("no Twilio tenant {tenant:?} here"),
        );
    };
    let Some(signature) = headers
        .get("x-twilio-signature")
        .and_then(|s| s.to_str().ok())
    else {
        return state.reject(
            "twilio",
            StatusCode::FORBIDDEN,
            "missing X-Twilio-Signature: only Twilio may open a stream".into(),
        );
    };
    let url = state.signed_url(&headers, &uri);
    if !twilio::signature_valid(&account.auth_token, &url, signature) {
        return state.reject(
            "twilio",
            StatusCode::FORBIDDEN,
            format!(
                "X-Twilio-Signature is not the tenant's auth token's signature of {url} \
                 (check the token, and connectors.public_url behind a proxy)"
            ),
        );
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return state.reject(
                "twilio",
                e.status(),
                format!("not a WebSocket upgrade: {e}"),
            );
        }
    };
    let tenant: Arc<str> = tenant.into();
    ws.max_message_size(WS_READ_LIMIT)
        .max_frame_size(WS_READ_LIMIT)
        .on_upgrade(move |socket| twilio_session(state, tenant, socket))
}

pub(super) fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Sends queued messages until the queue closes or a close frame has gone out.
pub(super) async fn write_all(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
) {
    while let Some(msg) = queue.recv().await {
        let closing = matches!(msg, Message::Close(_));
        if sink.send(msg).await.is_err() || closing {
            break;
        }
    }
}

async fn twilio_session(state: Arc<WsState>, tenant: Arc<str>, socket: WebSocket) {
    let _count = SessionCount::new(&state.sessions);
    let Some(account) = state.twilio.get(&*tenant) else {
        return;
    };
    let mut session = TwilioSession::new(
        SessionConfig {
            caller_track: account.caller_track,
            max_text_bytes: state.max_text_bytes,
            idle_timeout: state.idle_timeout,
        },
        Instant::now(),
    );
    let (sink, mut stream) = socket.split();
    let (out, queue) = mpsc::channel(state.outbound_queue);
    let writer = tokio::spawn(write_all(sink, queue));
    let mut link = CallLink::default();
    let mut closing: Option<(u16, String)> = None;
    'session: loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Open(start) => {
                    let spec = OpenSpec {
                        // The class follows from the codec and rate (PCMU: narrowband_g711).
                        channel_class: None,
                        call_id: start.stream_sid.clone(),
                        encoding: crate::audio::push::Encoding::MuLaw,
                        sample_rate: twilio::SAMPLE_RATE,
                        channels: 1,
                        caller_channel: None,
                        metadata: start.metadata(account.caller_track),
                        window_updates: false,
                        source: CallSource::Twilio,
                    };
                    match state.guard.open_stream(&tenant, spec) {
                        Ok(call) => {
                            tracing::info!(
                                tenant = &*tenant,
                                call_id = call.call_id(),
                                call_sid = start.call_sid,
                                tracks = ?start.tracks,
                                "Twilio stream started."
                            );
                            link.set(call);
                        }
                        Err(e) => {
                            let code = match e {
                                OpenError::Invalid(_) => close::POLICY,
                                _ => close::TRY_AGAIN_LATER,
                            };
                            session.handle_open_failed(code, format!("cannot screen: {e}"));
                        }
                    }
                }
                Output::Audio { sequence, payload } => {
                    if let Some(call) = link.call()
                        && let Err(e) = call.push(sequence, &payload)
                    {
                        tracing::debug!(call_id = call.call_id(), sequence, error = %e, "Twilio frame rejected.");
                    }
                }
                Output::Rejected { reason } => {
                    if let Some(call) = link.call() {
                        call.count_rejected();
                    }
                    tracing::debug!(call_id = link.call_id(), reason, "Twilio frame rejected.");
                }
                Output::Stopped => {
                    closing = Some((close::NORMAL, "stream stopped".into()));
                    break 'session;
                }
                Output::Close { code, reason } => {
                    if code != close::NORMAL {
                        state.guard.metrics().connector_error("twilio", "protocol");
                    }
                    tracing::info!(
                        tenant = &*tenant,
                        call_id = link.call_id(),
                        code,
                        reason,
                        "Closing a Twilio stream."
                    );
                    closing = Some((code, reason));
                    break 'session;
                }
            }
        }
        let deadline = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            biased;
            event = link.next() => {
                let update = match event {
                    LinkEvent::Ended => {
                        closing = Some((close::GOING_AWAY, "the call was ended by callguard".into()));
                        break;
                    }
                    LinkEvent::Update(u) => u,
                };
                if let CallUpdate::Alert(alert) = update
                    && account.inline_alerts
                    && let Some(mark) = session.alert_mark(&alert)
                    && out.try_send(Message::Text(mark.into())).is_err()
                {
                    closing = Some((close::POLICY, "the platform does not read its messages".into()));
                    break;
                }
            }
            message = stream.next() => {
                let now = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => session.handle_text(now, text.as_str()),
                    Some(Ok(Message::Binary(data))) => session.handle_binary(now, data.len()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => session.handle_keepalive(now),
                    Some(Ok(Message::Close(_))) | None => {
                        session.handle_closed();
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::info!(tenant = &*tenant, call_id = link.call_id(), error = %e, "Twilio stream dropped.");
                        session.handle_closed();
                        break;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
        }
    }
    // The call ends first: its last audio is scored, its alerts (marks) sent, its summary written.
    let call_id = link.call_id().to_owned();
    for update in link.finish().await {
        if let CallUpdate::Alert(alert) = update
            && account.inline_alerts
            && let Some(mark) = session.alert_mark(&alert)
        {
            let _ = out.try_send(Message::Text(mark.into()));
        }
    }
    if !call_id.is_empty() {
        let c = session.counters();
        tracing::info!(
            tenant = &*tenant,
            call_id,
            caller_frames = c.caller_frames,
            other_frames = c.other_frames,
            rejected_frames = c.rejected_frames,
            unknown_events = c.unknown_events,
            sequence_gaps = c.sequence_gaps,
            "Twilio stream ended."
        );
    }
    if let Some((code, reason)) = closing {
        let _ = tokio::time::timeout(CLOSE_GRACE, out.send(close_frame(code, &reason))).await;
    }
    drop(out);
    let _ = writer.await;
    // Let the peer answer the close frame before the connection goes.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}
