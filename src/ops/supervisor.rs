//! The fraud supervisor's live page, on the operations listener under `/supervisor`: a login
//! form that takes a tenant's token and keeps a session in an `HttpOnly`, `SameSite=Strict`
//! cookie (the token is never in a URL and never stored), then that tenant's calls only: live
//! calls by risk, a call's risk timeline, evidence and redacted transcript, the alert feed with
//! an acknowledge action, and the day's ended calls, searchable by call id or ANI.
//!
//! Live updates are server-sent events fed by the same hub as `StreamAlerts` (alerts) plus a
//! snapshot of the tenant's live calls each second; a page left open all day holds one hub
//! subscription and one small timer. The page itself is plain HTML, CSS and JavaScript built
//! into the binary (`supervisor/`), charts drawn as SVG by that script: no CDN, no framework, it
//! works offline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};

use crate::alert::{AlertFilter, LoggedAlert, now_ms};
use crate::grpc::Authenticator;
use crate::grpc::auth::Refusal;
use crate::guard::{CallRecord, Guard};

const COOKIE: &str = "cg_session";
/// A session unused for this long must log in again.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
/// How often the live-call snapshot goes to an open page.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

const INDEX: &str = include_str!("supervisor/index.html");
const LOGIN: &str = include_str!("supervisor/login.html");
const APP_JS: &str = include_str!("supervisor/app.js");
const STYLE: &str = include_str!("supervisor/style.css");

struct Session {
    tenant: Arc<str>,
    used: Instant,
}

struct Supervisor {
    guard: Arc<Guard>,
    auth: Authenticator,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Supervisor {
    fn tenant(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let id = session_cookie(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let s = sessions.get_mut(id)?;
        if s.used.elapsed() > IDLE {
            sessions.remove(id);
            return None;
        }
        s.used = Instant::now();
        Some(s.tenant.clone())
    }
}

/// The session id from the `Cookie` header(s).
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn new_session_id() -> Option<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").ok()?, &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The page's security headers: nothing but its own files, never framed.
fn page(html: String) -> Response {
    let mut r = Html(html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The routes, to be merged into the operations router.
pub fn router(guard: Arc<Guard>) -> Router {
    let state = Arc::new(Supervisor {
        auth: Authenticator::new(&guard.config().server.tenants)
            .counting_in(guard.metrics().auth.clone()),
        guard,
        sessions: Mutex::default(),
    });
    Router::new()
        .route("/", get(|| async { Redirect::to("/supervisor") }))
        .route("/supervisor", get(index))
        .route("/supervisor/login", get(login_form).post(login))
        .route("/supervisor/logout", post(logout))
        .route(
            "/supervisor/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/supervisor/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/supervisor/api/state", get(api_state))
        .route("/supervisor/api/calls/{id}", get(api_call))
        .route("/supervisor/api/ended", get(api_ended))
        .route("/supervisor/api/alerts/{id}/ack", post(api_ack))
        .route("/supervisor/events", get(events))
        .with_state(state)
}

async fn index(State(s): State<Arc<Supervisor>>, headers: HeaderMap) -> Response {
    match s.tenant(&headers) {
        Some(_) => page(INDEX.to_owned()),
        None => Redirect::to("/supervisor/login").into_response(),
    }
}

fn login_page(message: &str) -> String {
    LOGIN.replace("{{message}}", message)
}

async fn login_form() -> Response {
    page(login_page(""))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(s): State<Arc<Supervisor>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let tenant = match s.auth.check(Some(&f.token), peer) {
        Ok(tenant) => tenant,
        Err(why) => {
            let (status, message) = match why {
                Refusal::Unknown => {
                    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                    tracing::info!(%peer, "Supervisor login with an unknown token refused.");
                    (
                        StatusCode::UNAUTHORIZED,
                        "That token is not a tenant's token.",
                    )
                }
                Refusal::Throttled => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed logins from this address: wait a minute, then try again.",
                ),
            };
            let mut r = page(login_page(&format!(
                "<p class=\"error\" role=\"alert\">{message}</p>"
            )));
            *r.status_mut() = status;
            return r;
        }
    };
    let Some(id) = new_session_id() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a session",
        )
            .into_response();
    };
    {
        let mut sessions = s.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, v| v.used.elapsed() <= IDLE);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, v)| v.used)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                tenant: tenant.clone(),
                used: Instant::now(),
            },
        );
    }
    tracing::info!(tenant = &*tenant, "Supervisor logged in.");
    let mut r = Redirect::to("/supervisor").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/supervisor; HttpOnly; SameSite=Strict; Max-Age={}",
        IDLE.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(s): State<Arc<Supervisor>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        s.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
    let mut r = Redirect::to("/supervisor/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "cg_session=; Path=/supervisor; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// A live call as the list shows it.
#[derive(Serialize)]
struct LiveCall {
    call_id: String,
    state: &'static str,
    p_spoof: Option<f32>,
    p_spoof_peak: Option<f32>,
    enter_threshold: Option<f32>,
    ani: String,
    agent: String,
    started_wall_time_ms: i64,
    audio_ms: u64,
    alerts: u32,
}

fn live_calls(guard: &Guard, tenant: &str) -> Vec<LiveCall> {
    let mut calls: Vec<LiveCall> = guard
        .list_calls(tenant)
        .into_iter()
        .map(|c| LiveCall {
            state: c.state.as_str(),
            p_spoof: c.p_spoof,
            p_spoof_peak: c.p_spoof_peak,
            enter_threshold: c.enter_threshold,
            ani: c.metadata.ani,
            agent: c.metadata.agent,
            started_wall_time_ms: c.started_wall_time_ms,
            audio_ms: c.audio_ms,
            alerts: c.alerts,
            call_id: c.call_id,
        })
        .collect();
    // Riskiest first: suspected calls, then by fused score.
    calls.sort_by(|a, b| {
        let key = |c: &LiveCall| (c.state == "suspected", c.p_spoof.unwrap_or(0.0));
        let (ka, kb) = (key(a), key(b));
        kb.0.cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then(a.call_id.cmp(&b.call_id))
    });
    calls
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "log in at /supervisor/login\n").into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

const DAY_MS: i64 = 86_400_000;

async fn api_state(State(s): State<Arc<Supervisor>>, headers: HeaderMap) -> Response {
    let Some(tenant) = s.tenant(&headers) else {
        return unauthorized();
    };
    let guard = s.guard.clone();
    let result = tokio::task::spawn_blocking(move || {
        let alerts = guard.log().recent(&tenant, 100)?;
        let ended: Vec<CallRecord> =
            guard
                .log()
                .ended_calls(&tenant, now_ms() - DAY_MS, "", 100)?;
        Ok::<_, crate::alert::StoreError>(serde_json::json!({
            "tenant": &*tenant,
            "model": guard.model(),
            "calls": live_calls(&guard, &tenant),
            "alerts": alerts,
            "ended": ended,
        }))
    })
    .await;
    match result {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn api_call(
    State(s): State<Arc<Supervisor>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(tenant) = s.tenant(&headers) else {
        return unauthorized();
    };
    let guard = s.guard.clone();
    let result = tokio::task::spawn_blocking(move || {
        let Some(call) = guard.get_call(&tenant, &id)? else {
            return Ok(None);
        };
        let filter = AlertFilter {
            call_id: Some(id),
            min_severity: None,
        };
        let alerts = guard.log().after(&tenant, &filter, 0, 200)?;
        Ok::<_, crate::alert::StoreError>(Some(serde_json::json!({
            "call": call,
            "alerts": alerts,
        })))
    })
    .await;
    match result {
        Ok(Ok(Some(v))) => axum::Json(v).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such call\n").into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn api_ended(
    State(s): State<Arc<Supervisor>>,
    Query(q): Query<Search>,
    headers: HeaderMap,
) -> Response {
    let Some(tenant) = s.tenant(&headers) else {
        return unauthorized();
    };
    let guard = s.guard.clone();
    let search: String = q.q.trim().chars().take(64).collect();
    let result = tokio::task::spawn_blocking(move || {
        guard
            .log()
            .ended_calls::<CallRecord>(&tenant, now_ms() - DAY_MS, &search, 100)
    })
    .await;
    match result {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct AckBody {
    by: String,
    #[serde(default)]
    note: String,
}

async fn api_ack(
    State(s): State<Arc<Supervisor>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<AckBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(tenant) = s.tenant(&headers) else {
        return unauthorized();
    };
    // A JSON body (and the SameSite=Strict cookie) keeps other sites from posting here.
    let axum::Json(body) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    if body.by.trim().is_empty() {
        return (StatusCode::BAD_REQUEST, "say who acknowledges\n").into_response();
    }
    let guard = s.guard.clone();
    let result = tokio::task::spawn_blocking(move || {
        guard
            .log()
            .acknowledge(&tenant, &id, body.by.trim(), &body.note, now_ms())
    })
    .await;
    match result {
        Ok(Ok(Some(ack))) => axum::Json(ack).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such alert\n").into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

enum Next {
    Alert(Arc<LoggedAlert>),
    Tick,
    Closed,
}

async fn events(State(s): State<Arc<Supervisor>>, headers: HeaderMap) -> Response {
    let Some(tenant) = s.tenant(&headers) else {
        return unauthorized();
    };
    let sub = match s.guard.hub().subscribe(&tenant, AlertFilter::default()) {
        Ok(sub) => sub,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let state = (s.clone(), tenant, sub, tick);
    let stream = futures_util::stream::unfold(Some(state), |state| async move {
        let (s, tenant, mut sub, mut tick) = state?;
        let next = tokio::select! {
            a = sub.recv() => a.map_or(Next::Closed, Next::Alert),
            _ = tick.tick() => Next::Tick,
        };
        let event = match next {
            Next::Closed => return None,
            Next::Alert(a) => Event::default()
                .event("alert")
                .json_data(&*a)
                .unwrap_or_else(|_| Event::default().comment("unencodable alert")),
            Next::Tick => {
                if sub.take_overflow() > 0 {
                    // Missed live alerts: the page reloads its state from the log.
                    Event::default().event("lag").data("reload")
                } else {
                    Event::default()
                        .event("calls")
                        .json_data(live_calls(&s.guard, &tenant))
                        .unwrap_or_else(|_| Event::default().comment("unencodable calls"))
                }
            }
        };
        Some((Ok::<_, Infallible>(event), Some((s, tenant, sub, tick))))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_from_any_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; cg_session=abc123; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc123"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
        let ids = (new_session_id().unwrap(), new_session_id().unwrap());
        assert_ne!(ids.0, ids.1);
        assert_eq!(ids.0.len(), 64);
    }
}
