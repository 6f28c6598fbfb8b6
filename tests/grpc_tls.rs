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
