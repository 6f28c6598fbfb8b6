//! TLS (rustls) and mutual TLS on the gRPC face, with certificates made for the test.

mod common;

use callguard::config::TlsConfig;
use callguard::grpc::proto as pb;
use common::grpc::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn new_ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ca = new_ca();
    let other_ca = new_ca();
    Pki {
        ca: ca.pem(),
        server: leaf(&ca, "localhost"),
        client: leaf(&ca, "agent-desktop"),
        stranger: leaf(&other_ca, "agent-desktop"),
    }
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Client, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(with_token(channel, TOKEN_A))
}

async fn start(dir: &std::path::Path, pki: &Pki, mutual: bool) -> TestServer {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut config = server_config(dir, common::loudness_config());
    config.server.tls = Some(TlsConfig {
        cert: write("server.pem", &pki.server.0),
        key: write("server.key", &pki.server.1),
        client_ca: mutual.then(|| write("ca.pem", &pki.ca)),
    });
    config.validate().unwrap();
    TestServer::start(config).await
}

async fn works(client: Result<Client, tonic::transport::Error>) -> bool {
    match client {
        Ok(mut c) => c.list_calls(pb::ListCallsRequest {}).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let server = start(dir.path(), &pki, false).await;
    assert!(works(tls_client(server.addr, &pki.ca, None).await).await);
    // Plaintext against a TLS port fails.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Ok(ch) => with_token(ch, TOKEN_A)
            .list_calls(pb::ListCallsRequest {})
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let server = start(dir.path(), &pki, true).await;
    assert!(works(tls_client(server.addr, &pki.ca, Some(&pki.client)).await).await);
    assert!(!works(tls_client(server.addr, &pki.ca, None).await).await);
    assert!(!works(tls_client(server.addr, &pki.ca, Some(&pki.stranger)).await).await);
    server.stop().await;
}

/// SHA-256 (hex) of the certificate `addr` presents, as an outside client sees it (Python's ssl).
fn served_certificate(addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = std::process::Command::new(common::root().join(".deps/venv/bin/python"))
        .args([
            "-c",
            "import hashlib, ssl, sys\n\
             pem = ssl.get_server_certificate((sys.argv[1], int(sys.argv[2])))\n\
             print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())",
            host,
            port,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn pem_sha256(pem: &str) -> String {
    use sha2::Digest;
    let der = pem_der(pem);
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The DER inside a one-certificate PEM.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Rotating the certificate: new files, then SIGHUP. New connections get the new certificate,
/// a call streaming over the old session goes on to its summary, and a broken file on the next
/// SIGHUP is reported and leaves the certificate in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca();
    let ca_pem = ca.pem();
    let (old, new) = (leaf(&ca, "localhost"), leaf(&ca, "localhost"));
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, &old.0).unwrap();
    std::fs::write(&key, &old.1).unwrap();
    let config = common::daemon::write_config(
        dir.path(),
        1.0,
        false,
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let daemon = common::daemon::Daemon::start(&config, &[], &["gRPC"]);
    let addr = daemon.addr("gRPC").to_owned();
    assert_eq!(served_certificate(&addr), pem_sha256(&old.0));

    // A call opens over the old certificate's session and keeps streaming across the reload.
    let mut caller = tls_client(addr.parse().unwrap(), &ca_pem, None)
        .await
        .unwrap();
    let (rate, frames) = {
        let (samples, rate) = decode("genuine_1.wav");
        (rate, common::pcm16_frames(&samples, rate))
    };
    let (tx, rx) = tokio::sync::mpsc::channel(frames.len() + 2);
    tx.send(open_frame("rotating", pb::Codec::Pcm16le, rate, 1))
        .await
        .unwrap();
    let half = frames.len() / 2;
    let mut numbered = numbered(frames).into_iter();
    for f in numbered.by_ref().take(half) {
        tx.send(f).await.unwrap();
    }
    let mut updates = caller
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let reloads = |daemon: &common::daemon::Daemon, what: &str| {
        daemon
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    let hup = |daemon: &common::daemon::Daemon, what: &str| {
        let before = reloads(daemon, what);
        std::process::Command::new("kill")
            .args(["-HUP", &daemon.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..200 {
            if reloads(daemon, what) > before {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("no {what:?} in the log after SIGHUP");
    };
    std::fs::write(&cert, &new.0).unwrap();
    std::fs::write(&key, &new.1).unwrap();
    hup(&daemon, "TLS certificates reloaded");
    assert_eq!(served_certificate(&addr), pem_sha256(&new.0));

    for f in numbered {
        tx.send(f).await.unwrap();
    }
    drop(tx);
    let mut last = None;
    while let Some(u) = updates.message().await.unwrap() {
        last = Some(u);
    }
    let summary = summary_of(&[last.unwrap()]);
    assert_eq!(summary.frames_lost, 0);
    assert!(summary.audio_ms > 1_000, "{summary:?}");

    // A half-written certificate is refused; the new one stays in force.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    hup(&daemon, "TLS certificates not reloaded");
    assert_eq!(served_certificate(&addr), pem_sha256(&new.0));
    assert!(works(tls_client(addr.parse().unwrap(), &ca_pem, None).await).await);
}
