//! Sources from cloud contact centers: each platform's session becomes a call through the same
//! guard API as `StreamAudio` (`Guard::open_stream` -> `StreamCall`), so alerts, `ListCalls`,
//! `GetCall`, limits and counters are the same; the call's source and the platform's ids are in
//! its record and metadata.
//!
//! ```text
//! Twilio Media Streams (WebSocket) ─► ws.rs (axum task) ─► twilio.rs (sans-I/O session) ─┐
//! Genesys AudioHook (WebSocket) ────► hook_ws.rs (axum task) ─► audiohook.rs (sans-I/O) ──┤
//! Asterisk AudioSocket (TCP) ───────► tcp.rs (tokio task) ─► audiosocket.rs (sans-I/O) ──┤
//! SIPREC (SIP + RTP, from an SBC) ───► sip/ (SRS task) ─► rtp/ (media task per session) ──┴► StreamCall
//! ```
//!
//! Each protocol session is a plain state machine (`&mut self`; messages, bytes and time in;
//! outputs polled), unit-tested directly; the tasks only own sockets and timers.

pub mod audiohook;
pub mod audiosocket;
mod hook_ws;
pub mod rtp;
pub mod sip;
mod tcp;
pub mod twilio;
mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ConnectorsConfig, SiprecConfig, TwilioTrack, read_secret};
use crate::guard::{EndSignal, Guard, StreamCall};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connectors tenant {tenant}: secret {message}")]
    Secret { tenant: String, message: String },
    #[error("connectors.tls: {0}")]
    Tls(String),
    #[error("connectors listener: {0}")]
    Serve(std::io::Error),
}

/// What a Twilio session needs to know of its tenant.
pub(crate) struct TwilioTenant {
    pub auth_token: String,
    pub caller_track: TwilioTrack,
    pub inline_alerts: bool,
}

/// What an AudioHook session needs to know of its tenant.
pub(crate) struct AudioHookTenant {
    pub api_key: String,
    pub client_secret: Option<String>,
    pub organization_id: Option<String>,
    pub inline_alerts: bool,
}

/// The bound listeners, with the secrets and TLS they need, ready to serve.
pub struct Connectors {
    ws: Option<(TcpListener, Option<crate::tls::ServerTls>)>,
    audiosocket: Vec<(TcpListener, String)>,
    twilio: HashMap<String, TwilioTenant>,
    audiohook: HashMap<String, AudioHookTenant>,
    siprec: Option<sip::SiprecServer>,
    config: ConnectorsConfig,
}

impl Connectors {
    /// Reads the tenants' secrets and the TLS files and binds every configured listener, so
    /// a mistake stops the daemon at startup.
    pub async fn bind(
        config: &ConnectorsConfig,
        siprec: &SiprecConfig,
    ) -> Result<Self, ConnectError> {
        let mut twilio = HashMap::new();
        for t in &config.twilio {
            let auth_token = read_secret(t.auth_token_env.as_deref(), t.auth_token_file.as_deref())
                .map_err(|message| ConnectError::Secret {
                    tenant: t.tenant.clone(),
                    message,
                })?;
            twilio.insert(
                t.tenant.clone(),
                TwilioTenant {
                    auth_token,
                    caller_track: t.caller_track,
                    inline_alerts: t.inline_alerts,
                },
            );
        }
        let mut audiohook = HashMap::new();
        for h in &config.audiohook {
            let secret = |what: &str, env: Option<&str>, file: Option<&std::path::Path>| {
                read_secret(env, file).map_err(|message| ConnectError::Secret {
                    tenant: h.tenant.clone(),
                    message: format!("({what}) {message}"),
                })
            };
            let api_key = secret(
                "AudioHook API key",
                h.api_key_env.as_deref(),
                h.api_key_file.as_deref(),
            )?;
            let client_secret = if h.client_secret_env.is_some() || h.client_secret_file.is_some() {
                Some(secret(
                    "AudioHook client secret",
                    h.client_secret_env.as_deref(),
                    h.client_secret_file.as_deref(),
                )?)
            } else {
                None
            };
            audiohook.insert(
                h.tenant.clone(),
                AudioHookTenant {
                    api_key,
                    client_secret,
                    organization_id: h.organization_id.clone(),
                    inline_alerts: h.inline_alerts,
                },
            );
        }
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ConnectError::Bind { addr, source })
        };
        let ws = match config.listen {
            Some(addr) => {
                let tls = config
                    .tls
                    .as_ref()
                    .map(|t| crate::tls::ServerTls::load("connectors", t, &[b"http/1.1"]))
                    .transpose()
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                Some((bind(addr).await?, tls))
            }
            None => None,
        };
        let mut audiosocket = Vec::new();
        for a in &config.audiosocket {
            audiosocket.push((bind(a.listen).await?, a.tenant.clone()));
        }
        let siprec = if siprec.is_active() {
            Some(sip::SiprecServer::bind(siprec).await?)
        } else {
            None
        };
        Ok(Self {
            ws,
            audiosocket,
            siprec,
            twilio,
            audiohook,
            config: config.clone(),
        })
    }

    /// The WebSocket listener's address and whether it speaks TLS.
    pub fn ws_addr(&self) -> Option<(SocketAddr, bool)> {
        let (l, tls) = self.ws.as_ref()?;
        Some((l.local_addr().ok()?, tls.is_some()))
    }

    /// Each AudioSocket listener's address and tenant.
    pub fn audiosocket_addrs(&self) -> Vec<(SocketAddr, String)> {
        self.audiosocket
            .iter()
            .filter_map(|(l, t)| Some((l.local_addr().ok()?, t.clone())))
            .collect()
    }

    /// The SIPREC server's SIP addresses: (UDP and TCP, TLS).
    pub fn siprec_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        self.siprec.as_ref().map_or((None, None), |s| s.addrs())
    }

    /// Serves every listener until `shutdown` resolves; then live calls are ended (sessions
    /// close with their platform's goodbye after the summaries are written), and this returns
    /// once the sessions are done (at most 30 s).
    pub async fn serve(
        self,
        guard: Arc<Guard>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ConnectError> {
        let sessions = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some((listener, tls)) = self.ws {
            let state = Arc::new(ws::WsState {
                guard: guard.clone(),
                twilio: self.twilio,
                audiohook: self.audiohook,
                public_url: self.config.public_url.clone(),
                tls: tls.is_some(),
                max_text_bytes: self.config.max_text_bytes,
                idle_timeout: Duration::from_secs(self.config.idle_timeout_s.into()),
                outbound_queue: self.config.outbound_queue,
                sessions: sessions.clone(),
            });
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move { ws::serve(state, listener, tls, stop).await });
        }
        for (listener, tenant) in self.audiosocket {
            let state = Arc::new(tcp::AudioSocketState {
                guard: guard.clone(),
                tenant: tenant.into(),
                idle_timeout: Duration::from_secs(self.config.idle_timeout_s.into()),
                sessions: sessions.clone(),
            });
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move { tcp::serve(state, listener, stop).await });
        }
        if let Some(srs) = self.siprec {
            let stop = stopped(stop_rx.clone());
            let guard = guard.clone();
            tasks.spawn(async move {
                srs.serve(guard, stop).await;
                Ok(())
            });
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        guard.begin_shutdown();
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                result = Err(ConnectError::Serve(e));
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while sessions.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        result
    }
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Counts a live session for the shutdown to wait on.
pub(crate) struct SessionCount(Arc<AtomicUsize>);

impl SessionCount {
    pub fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) enum LinkEvent {
    Ended,
    Update(crate::guard::CallUpdate),
}

/// The call behind a session, once the platform has said enough to open it.
#[derive(Default)]
pub(crate) struct CallLink {
    call: Option<StreamCall>,
    end: Option<Arc<EndSignal>>,
    updates_done: bool,
}

impl CallLink {
    pub fn set(&mut self, call: StreamCall) {
        self.end = Some(call.end_signal());
        self.call = Some(call);
    }

    pub fn call(&mut self) -> Option<&mut StreamCall> {
        self.call.as_mut()
    }

    pub fn call_id(&self) -> &str {
        self.call.as_ref().map_or("", |c| c.call_id())
    }

    /// The next thing the call has to say: callguard asked it to end (`EndCall`, shutdown), or
    /// an update. Never resolves before the call opens.
    pub async fn next(&mut self) -> LinkEvent {
        let Some(end) = self.end.clone() else {
            return std::future::pending().await;
        };
        let call = self.call.as_mut().filter(|_| !self.updates_done);
        tokio::select! {
            biased;
            _ = end.wait() => LinkEvent::Ended,
            update = async {
                match call {
                    Some(c) => c.update().await,
                    None => std::future::pending().await,
                }
            } => match update {
                Some(u) => LinkEvent::Update(u),
                None => {
                    self.updates_done = true;
                    // The call is gone; only the end signal is left to wait for.
                    end.wait().await;
                    LinkEvent::Ended
                }
            },
        }
    }

    /// Ends the call (its last audio is scored and its summary written) and returns the
    /// updates that were still queued.
    pub async fn finish(&mut self) -> Vec<crate::guard::CallUpdate> {
        let mut rest = Vec::new();
        self.end = None;
        if let Some(mut call) = self.call.take() {
            call.finish().await;
            while let Some(u) = call.update().await {
                rest.push(u);
            }
        }
        rest
    }
}
