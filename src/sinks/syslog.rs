//! Syslog delivery over TCP or TLS: each alert an RFC 5424 message carrying CEF
//! ([`super::cef`]), framed by octet counting (`LEN SP MSG`, RFC 6587 3.4.1, which RFC 5425
//! requires over TLS). The connection is kept open and rebuilt after any error; an alert counts
//! as delivered once written and flushed (syslog has no application acknowledgement).

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls;

use super::Deliver;
use crate::alert::{Acknowledgement, LoggedAlert};
use crate::config::SyslogSinkConfig;

enum Conn {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
            Conn::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }
}

pub struct SyslogSink {
    address: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    facility: u8,
    hostname: String,
    timeout: Duration,
    conn: Option<Conn>,
}

/// This machine's name for the HOSTNAME field.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}

impl SyslogSink {
    pub fn new(c: &SyslogSinkConfig) -> Result<Self, String> {
        let tls = if c.tls {
            let mut roots = rustls::RootCertStore::empty();
            match &c.ca {
                Some(ca) => {
                    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                        .map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
                    for cert in certs {
                        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("{}: {e}", ca.display()))?;
                    }
                    if roots.is_empty() {
                        return Err(format!("{} holds no PEM certificate", ca.display()));
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Self {
            address: c.address.clone(),
            tls,
            facility: c.facility,
            hostname: hostname(),
            timeout: Duration::from_millis(c.timeout_ms),
            conn: None,
        })
    }

    fn connect(&self) -> Result<Conn, String> {
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.address))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.address))?;
        let tcp = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
        let _ = tcp.set_write_timeout(Some(self.timeout));
        let _ = tcp.set_read_timeout(Some(self.timeout));
        let _ = tcp.set_nodelay(true);
        let Some(config) = &self.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(host).map_err(|e| format!("{}: {e}", self.address))?;
        let conn = rustls::ClientConnection::new(config.clone(), name)
            .map_err(|e| format!("TLS to {}: {e}", self.address))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake now, so a certificate problem is reported as such.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("TLS handshake with {}: {e}", self.address))?;
        }
        Ok(Conn::Tls(Box::new(stream)))
    }
}

impl SyslogSink {
    fn send(&mut self, message: String) -> Result<(), String> {
        let frame = format!("{} {message}", message.len());
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        if let Err(e) = conn.write_all(frame.as_bytes()) {
            self.conn = None;
            return Err(format!("writing to {}: {e}", self.address));
        }
        Ok(())
    }
}

impl Deliver for SyslogSink {
    fn deliver(&mut self, alert: &LoggedAlert) -> Result<(), String> {
        let message = super::cef::syslog_message(alert, self.facility, &self.hostname);
        self.send(message)
    }

    fn deliver_ack(&mut self, tenant: &str, ack: &Acknowledgement) -> Result<(), String> {
        let message = super::cef::ack_message(tenant, ack, self.facility, &self.hostname);
        self.send(message)
    }
}
