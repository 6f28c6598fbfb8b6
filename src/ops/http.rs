//! The operations HTTP listener (`[http] listen`): `/metrics` for Prometheus, `/healthz` (the
//! process answers) and `/readyz` (model loaded, alert log writable, listeners bound) for
//! Kubernetes probes and load balancers; `/cluster`, a node's view of its cluster. Plain HTTP/1.1 via axum, as the connectors use.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics::{CONTENT_TYPE, Exposition};
use crate::guard::Guard;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the operations HTTP listener failed: {0}")]
    Serve(#[from] std::io::Error),
}

struct Ops {
    guard: Arc<Guard>,
    exposition: Exposition,
}

/// The routes, for a listener or an in-process test.
pub fn router(guard: Arc<Guard>) -> Router {
    let ops = Arc::new(Ops {
        exposition: Exposition::new(guard.clone()),
        guard,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/cluster", get(cluster))
        .with_state(ops.clone())
        .merge(super::supervisor::router(ops.guard.clone()))
}

/// Serves the operations routes on `listener` until `shutdown` resolves.
pub async fn serve(
    guard: Arc<Guard>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    // The peer's address reaches the handlers (the supervisor's login counts failures by it).
    let app = router(guard).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    // Reading the counters takes short locks (the call registry), never the audio path's.
    let ops2 = ops.clone();
    match tokio::task::spawn_blocking(move || ops2.exposition.render()).await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// The node's view of the cluster (JSON): 200 when connected with the stream set up, 503 while
/// it is not (screening goes on; alerts wait in the local store), 404 on a single node.
async fn cluster(State(ops): State<Arc<Ops>>) -> Response {
    let Some(cluster) = ops.guard.cluster() else {
        return (StatusCode::NOT_FOUND, "not in a cluster\n").into_response();
    };
    let code = if cluster.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        cluster.status().to_string(),
    )
        .into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.guard.readiness().state().check() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
