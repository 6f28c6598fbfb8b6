//! Genesys AudioHook sessions on the connectors' listener: the upgrade request's headers,
//! API key and signature are checked before the WebSocket is accepted; then one task per
//! socket drives an [`AudioHookSession`] and the call behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::audiohook::{self, AudioHookSession, Output, SessionConfig};
use super::ws::{CLOSE_GRACE, WS_READ_LIMIT, WsState, close_frame, write_all};
use super::{CallLink, LinkEvent, SessionCount};
use crate::guard::{CallSource, CallUpdate, OpenSpec};

const ORGANIZATION: &str = "audiohook-organization-id";
const CORRELATION: &str = "audiohook-correlation-id";
const SESSION: &str = "audiohook-session-id";
const API_KEY: &str = "x-api-key";
/// Pings answered at once, and per second after that (Genesys pings every few seconds).
const PING_BURST: f64 = 10.0;
const PINGS_PER_S: f64 = 2.0;

pub(super) async fn upgrade(
    State(state): State<Arc<WsState>>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(account) = state.audiohook.get(&tenant) else {
        return state.reject(
            "audiohook",
            StatusCode::NOT_FOUND,
            format!("no AudioHook tenant {tenant:?} here"),
        );
    };
    let header = |name: &str| -> Option<String> {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    for name in [ORGANIZATION, CORRELATION, SESSION, API_KEY] {
        if header(name).is_none_or(|v| v.is_empty()) {
            return state.reject(
                "audiohook",
                StatusCode::BAD_REQUEST,
                format!("missing header {name}"),
            );
        }
    }
    let (organization, correlation, session_id, api_key) = (
        header(ORGANIZATION).unwrap_or_default(),
        header(CORRELATION).unwrap_or_default(),
        header(SESSION).unwrap_or_default(),
        header(API_KEY).unwrap_or_default(),
    );
    if !crate::grpc::auth::same(api_key.as_bytes(), account.api_key.as_bytes()) {
        return state.reject(
            "audiohook",
            StatusCode::UNAUTHORIZED,
            "X-API-KEY is not this tenant's AudioHook API key".into(),
        );
    }
    if let Some(org) = &account.organization_id
        && !org.eq_ignore_ascii_case(&organization)
    {
        return state.reject(
            "audiohook",
            StatusCode::FORBIDDEN,
            format!("organization {organization} is not the tenant's"),
        );
    }
    if let Some(secret) = &account.client_secret {
        let (Some(input), Some(signature)) = (header("signature-input"), header("signature"))
        else {
            return state.reject(
                "audiohook",
                StatusCode::UNAUTHORIZED,
                "Signature and Signature-Input are required (the tenant has a client secret)"
                    .into(),
            );
        };
        let authority = state.authority(&headers);
        let req = audiohook::SignedRequest {
            method: "GET",
            scheme: if state.tls { "wss" } else { "ws" },
            authority: &authority,
            path: uri.path(),
            query: uri.query(),
            header: &header,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Err(why) =
            audiohook::verify_signature(&req, &input, &signature, &api_key, secret, now)
        {
            return state.reject(
                "audiohook",
                StatusCode::UNAUTHORIZED,
                format!("the request signature does not verify: {why}"),
            );
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return state.reject(
                "audiohook",
                e.status(),
                format!("not a WebSocket upgrade: {e}"),
            );
        }
    };
    let tenant: Arc<str> = tenant.into();
    ws.max_message_size(WS_READ_LIMIT)
        .max_frame_size(WS_READ_LIMIT)
        .on_upgrade(move |socket| session(state, tenant, session_id, correlation, socket))
}

async fn session(
    state: Arc<WsState>,
    tenant: Arc<str>,
    session_id: String,
    correlation_id: String,
    socket: WebSocket,
) {
    let _count = SessionCount::new(&state.sessions);
    let Some(account) = state.audiohook.get(&*tenant) else {
        return;
    };
    let mut session = AudioHookSession::new(
        SessionConfig {
            max_text_bytes: state.max_text_bytes,
            idle_timeout: state.idle_timeout,
            ping_burst: PING_BURST,
            pings_per_s: PINGS_PER_S,
        },
        &session_id,
        Instant::now(),
    );
    let (sink, mut stream) = socket.split();
    let (out, queue) = mpsc::channel(state.outbound_queue);
    let writer = tokio::spawn(write_all(sink, queue));
    let mut link = CallLink::default();
    let mut closing: Option<(u16, String)> = None;
    let mut gone = false;
    'session: loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Open(info) => {
                    let spec = OpenSpec {
                        // The class follows from the codec and rate (PCMU: narrowband_g711).
                        channel_class: None,
                        call_id: info.session_id.clone(),
                        encoding: crate::audio::push::Encoding::MuLaw,
                        sample_rate: 8_000,
                        channels: info.channels,
                        caller_channel: Some(info.caller_channel),
                        metadata: info.metadata(&correlation_id),
                        window_updates: false,
                        source: CallSource::AudioHook,
                    };
                    match state.guard.open_stream(&tenant, spec) {
                        Ok(call) => {
                            tracing::info!(
                                tenant = &*tenant,
                                call_id = call.call_id(),
                                conversation_id = info.conversation_id,
                                channels = info.channels,
                                "AudioHook session opened."
                            );
                            link.set(call);
                        }
                        Err(e) => session.handle_open_failed(format!("cannot screen: {e}")),
                    }
                }
                Output::Audio { sequence, payload } => {
                    if let Some(call) = link.call()
                        && let Err(e) = call.push(sequence, &payload)
                    {
                        tracing::debug!(call_id = call.call_id(), sequence, error = %e, "AudioHook frame rejected.");
                    }
                }
                Output::Lost { ms } => {
                    if let Some(call) = link.call() {
                        // Frames lost, in 20 ms frames as the other sources count them.
                        call.count_lost(ms.div_ceil(20));
                    }
                }
                Output::Send(text) => {
                    if out.try_send(Message::Text(text.into())).is_err() {
                        closing = Some((1008, "the client does not read its messages".into()));
                        break 'session;
                    }
                }
                Output::Finish => {
                    let call_id = link.call_id().to_owned();
                    for update in link.finish().await {
                        if let CallUpdate::Alert(alert) = update
                            && account.inline_alerts
                        {
                            session.alert_event(&alert);
                        }
                    }
                    if !call_id.is_empty() {
                        let c = session.counters();
                        tracing::info!(
                            tenant = &*tenant,
                            call_id,
                            audio_frames = c.audio_frames,
                            lost_ms = c.lost_ms,
                            pings = c.pings,
                            "AudioHook call ended."
                        );
                    }
                    session.handle_call_finished();
                }
                Output::Close { code, reason } => {
                    if code != 1000 {
                        state
                            .guard
                            .metrics()
                            .connector_error("audiohook", "protocol");
                    }
                    closing = Some((code, reason));
                    break 'session;
                }
            }
        }
        if gone {
            break;
        }
        let deadline = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            biased;
            event = link.next() => match event {
                LinkEvent::Ended => session.handle_end(),
                LinkEvent::Update(CallUpdate::Alert(alert)) if account.inline_alerts => {
                    session.alert_event(&alert)
                }
                LinkEvent::Update(_) => {}
            },
            message = stream.next() => {
                let now = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => session.handle_text(now, text.as_str()),
                    Some(Ok(Message::Binary(data))) => session.handle_binary(now, &data),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => session.handle_keepalive(now),
                    Some(Ok(Message::Close(_))) | None => {
                        session.handle_closed();
                        gone = true;
                    }
                    Some(Err(e)) => {
                        tracing::info!(tenant = &*tenant, call_id = link.call_id(), error = %e, "AudioHook connection dropped.");
                        session.handle_closed();
                        gone = true;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
        }
    }
    // A session that ended without its Finish (a full outbound queue) still ends its call.
    link.finish().await;
    if let Some((code, reason)) = closing {
        let _ = tokio::time::timeout(CLOSE_GRACE, out.send(close_frame(code, &reason))).await;
    }
    drop(out);
    let _ = writer.await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}
