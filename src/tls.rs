//! Server TLS for every listener (gRPC, the connectors' WebSocket listener, SIP over TLS):
//! rustls with the ring provider, modern defaults (TLS 1.2 and 1.3, rustls's safe cipher
//! suites), optionally client certificates, and **reloadable**: `SIGHUP` makes every listener
//! read its certificate, key and client CA again ([`reload_all`]). Connections already up keep
//! the session they negotiated, so calls in progress are not dropped; each new handshake uses
//! the configuration current when it starts. A reload that fails (a half-written file, a key
//! that does not match) keeps the previous configuration and says why.
//!
//! Handshakes run in tasks of their own ([`TlsListener`]) so a slow client holds up no one;
//! finished ones queue (bounded) for the server to take.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// Handshakes done and waiting for the server to take them.
const READY_QUEUE: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A listener's TLS configuration, read from its files and reloadable.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the listener is, for logs ("gRPC", "connectors", "SIPREC").
    name: &'static str,
    files: TlsConfig,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
}

/// Every live [`ServerTls`], for [`reload_all`]. Weak, so a listener that stops is forgotten.
static LOADED: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

impl ServerTls {
    /// Reads `files`; `alpn` are the application protocols offered (`h2` for gRPC,
    /// `http/1.1` for WebSocket upgrades, none for SIP).
    pub fn load(name: &'static str, files: &TlsConfig, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = server_config(files, &alpn)?;
        let inner = Arc::new(Inner {
            name,
            files: files.clone(),
            alpn,
            current: RwLock::new(Arc::new(config)),
        });
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|w| w.strong_count() > 0);
        loaded.push(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.clone())
    }

    /// Reads the files again; on failure the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.inner.files, &self.inner.alpn)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        self.inner.name
    }
}

/// Reloads every listener's TLS files (on `SIGHUP`); returns each listener's outcome.
pub fn reload_all() -> Vec<(&'static str, Result<(), TlsError>)> {
    let live: Vec<ServerTls> = {
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|w| w.strong_count() > 0);
        loaded
            .iter()
            .filter_map(Weak::upgrade)
            .map(|inner| ServerTls { inner })
            .collect()
    };
    live.iter().map(|t| (t.name(), t.reload())).collect()
}

fn server_config(tls: &TlsConfig, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        TlsError(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err("certificate", &tls.cert, &e))?;
    if certs.is_empty() {
        return Err(err("certificate", &tls.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| err("key", &tls.key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| err("client CA", ca, &e))? {
                let cert = cert.map_err(|e| err("client CA", ca, &e))?;
                roots.add(cert).map_err(|e| err("client CA", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err("client CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| err("certificate and key", &tls.cert, &e))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// Accepted TLS connections: for `axum::serve` (it is a `Listener`) or a tonic server
/// ([`TlsListener::into_incoming`]).
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: ServerTls) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot accept a connection.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (tls.acceptor(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%addr, error = %e, "TLS handshake failed."),
                        Err(_) => tracing::info!(%addr, "TLS handshake timed out."),
                    }
                });
            }
        });
        Self {
            ready,
            local,
            accept_task,
        }
    }

    /// The connections as a stream, for `tonic`'s `serve_with_incoming`.
    pub fn into_incoming(
        self,
    ) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static
    {
        futures_util::stream::unfold(self, |mut listener| async move {
            let (conn, _) = listener.ready.recv().await?;
            Some((Ok(conn), listener))
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
