//! AudioSocket listeners: one task per TCP connection drives an [`AudioSocketSession`] and the
//! call behind it. Every connection of a listener is a call of the listener's tenant.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::audiosocket::{self, AudioSocketSession, Output};
use super::{CallLink, LinkEvent, SessionCount};
use crate::audio::push::Encoding;
use crate::guard::{CallSource, Guard, OpenSpec};

/// Bytes read from the socket at once (a 20 ms frame at 8 kHz is 323).
const READ_CHUNK: usize = 8 << 10;

pub(super) struct AudioSocketState {
    pub guard: Arc<Guard>,
    pub tenant: Arc<str>,
    pub idle_timeout: Duration,
    pub sessions: Arc<AtomicUsize>,
}

pub(super) async fn serve(
    state: Arc<AudioSocketState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot accept an AudioSocket connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        tracing::debug!(%peer, tenant = &*state.tenant, "AudioSocket connection.");
        tokio::spawn(session(state.clone(), socket));
    }
}

async fn session(state: Arc<AudioSocketState>, mut socket: TcpStream) {
    let _count = SessionCount::new(&state.sessions);
    let mut session = AudioSocketSession::new(Instant::now(), state.idle_timeout);
    let mut link = CallLink::default();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut reply: Option<Vec<u8>> = None;
    'session: loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Open { uuid, sample_rate } => {
                    let mut metadata = crate::alert::CallMeta::default();
                    metadata
                        .labels
                        .insert("audiosocket_uuid".into(), uuid.clone());
                    let spec = OpenSpec {
                        // The class follows from the codec and rate (PCMU: narrowband_g711).
                        channel_class: None,
                        call_id: uuid,
                        encoding: Encoding::Pcm16Le,
                        sample_rate,
                        channels: 1,
                        caller_channel: None,
                        metadata,
                        window_updates: false,
                        source: CallSource::AudioSocket,
                    };
                    match state.guard.open_stream(&state.tenant, spec) {
                        Ok(call) => {
                            tracing::info!(
                                tenant = &*state.tenant,
                                call_id = call.call_id(),
                                sample_rate,
                                "AudioSocket call started."
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
                        tracing::debug!(call_id = call.call_id(), sequence, error = %e, "AudioSocket frame rejected.");
                    }
                }
                Output::Hangup { error } => {
                    tracing::debug!(call_id = link.call_id(), ?error, "AudioSocket hangup.");
                    break 'session;
                }
                Output::Fail { code, reason } => {
                    state
                        .guard
                        .metrics()
                        .connector_error("audiosocket", "protocol");
                    tracing::info!(
                        tenant = &*state.tenant,
                        call_id = link.call_id(),
                        code,
                        reason,
                        "Closing an AudioSocket connection."
                    );
                    reply = Some(audiosocket::encode(audiosocket::kind::ERROR, &[code]));
                    break 'session;
                }
            }
        }
        let deadline = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            biased;
            // Asked to stop screening (EndCall, shutdown), the fork's socket closes; updates
            // are not for Asterisk (alerts go out by gRPC and the alert log).
            event = link.next() => if let LinkEvent::Ended = event {
                break;
            },
            read = socket.read(&mut buf) => match read {
                Ok(0) => session.handle_eof(),
                Ok(n) => session.handle_bytes(Instant::now(), &buf[..n]),
                Err(e) => {
                    tracing::info!(call_id = link.call_id(), error = %e, "AudioSocket connection dropped.");
                    session.handle_eof();
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
        }
    }
    let call_id = link.call_id().to_owned();
    link.finish().await;
    let refused = reply.is_some();
    if let Some(bytes) = reply {
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.write_all(&bytes)).await;
    }
    let _ = socket.shutdown().await;
    if refused {
        // Asterisk is still sending audio: read and drop it for a moment, so that closing does
        // not reset the connection before it has read the error message.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = socket.read(&mut buf).await
                && n > 0
            {}
        })
        .await;
    }
    if !call_id.is_empty() {
        let c = session.counters();
        tracing::info!(
            tenant = &*state.tenant,
            call_id,
            audio_frames = c.audio_frames,
            unknown_kinds = c.unknown_kinds,
            "AudioSocket call ended."
        );
    }
}
