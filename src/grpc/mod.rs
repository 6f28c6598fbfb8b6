//! The gRPC face: generated `callguard.v1` code, the service, authentication, TLS and the
//! server with health checking and reflection.

pub mod auth;
/// Between the wire and the engine (public for the fuzz targets).
pub mod convert;
mod service;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

pub use auth::{Authenticator, Tenant, token_sha256};
pub use service::CallGuardService;

use crate::guard::Guard;

#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto {
    tonic::include_proto!("callguard.v1");

    /// The encoded descriptor set of `callguard.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/callguard_descriptor.bin"));
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("server.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(tonic::transport::Error),
}

/// The service name health checks ask for.
const SERVICE_NAME: &str =
    <proto::call_guard_server::CallGuardServer<CallGuardService> as tonic::server::NamedService>::NAME;

async fn report_health(health: &tonic_health::server::HealthReporter, ready: bool) {
    let status = if ready {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Serves `callguard.v1.CallGuard`, `grpc.health.v1.Health` and reflection on `listener` until
/// `shutdown` resolves; then live calls are ended (their streams close with a summary) and
/// alert streams close, and the server returns once its RPCs are done. Health and reflection
/// need no token; everything else does.
pub async fn serve(
    guard: Arc<Guard>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let cfg = guard.config().server.clone();
    let guard_ready = guard.clone();
    let stopping = guard.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    let auth = Authenticator::new(&cfg.tenants).counting_in(guard.metrics().auth.clone());
    let service = proto::call_guard_server::CallGuardServer::new(CallGuardService::new(guard))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes.max(4 << 20));
    let service = InterceptedService::new(service, move |req| auth.intercept(req));
    let (health, health_service) = tonic_health::server::health_reporter();
    // The health service reports what `/readyz` does: SERVING only when ready; set before the
    // first request can come, then kept up to date.
    let mut ready = guard_ready.readiness().subscribe();
    let ok = ready.borrow_and_update().check().is_ok();
    report_health(&health, ok).await;
    tokio::spawn(async move {
        while ready.changed().await.is_ok() {
            let ok = ready.borrow_and_update().check().is_ok();
            report_health(&health, ok).await;
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // TLS is ours rather than tonic's so that SIGHUP can reload the certificates
    // (`crate::tls`); tonic serves the decrypted streams.
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| crate::tls::ServerTls::load("gRPC", t, &[b"h2"]))
        .transpose()?;
    let router = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service);
    let served = match tls {
        Some(tls) => {
            let incoming = crate::tls::TlsListener::new(listener, tls).into_incoming();
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    };
    served.map_err(ServeError::Transport)
}
