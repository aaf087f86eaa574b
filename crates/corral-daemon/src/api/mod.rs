//! The HTTP API (`/api/v1`, JSON), log and event streaming (NDJSON, SSE, WebSocket; the
//! plumbing they share is in [`stream`]) and `/metrics`.
//!
//! **API boundary:** only this module knows about HTTP. Handlers translate requests into
//! calls on the supervisor, the registry and the logbook, and map errors to JSON
//! `{"error":{"code":…,"message":…}}` with the right status (an unknown task is 404).
//! Every request is checked against the token when one is configured, in constant time.

mod alerts;
mod auth;
mod containers;
mod dashboard;
mod diagnostics;
mod error;
mod events;
mod gpu;
pub mod grpc;
mod llama;
mod logs;
pub mod metrics;
mod nodes;
mod publishers;
pub mod remote;
pub mod stream;
mod tasks;

pub use auth::{Auth, LOGIN_LINK_TTL};
pub use error::ApiError;
pub use stream::HEARTBEAT;

use crate::bus::Bus;
use crate::supervisor::Supervisor;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// Request bodies above this are refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

pub struct AppState {
    pub sup: Arc<Supervisor>,
    pub bus: Arc<Bus>,
    pub auth: Auth,
    /// The observer store and the live stream, for `/events`.
    pub events: crate::sinks::Events,
    /// Everything `/metrics` shows.
    pub metrics: Arc<crate::metrics::Registry>,
    /// Ends open streams when the daemon shuts down.
    pub shutdown: stream::Shutdown,
    pub started_at: f64,
    /// The Redis publisher, for `/publishers/redis`.
    pub redis: crate::sinks::redis::Redis,
    /// The alert rules, for `/alerts`.
    pub alerts: crate::sinks::alerts::Alerts,
    /// The llama kinds' state, for `/backends`.
    pub llama: crate::kinds::llama::Llama,
    /// The GPUs, for `/gpu` and `/metrics`.
    pub gpus: Arc<crate::gpu::Gpus>,
    /// Asks the daemon to stop (`POST /shutdown`).
    pub stop: tokio::sync::mpsc::UnboundedSender<corral_client::wire::Shutdown>,
    /// The fleet, on a hub (`serve --hub`), for `/nodes`.
    pub hub: Option<crate::hub::Hub>,
    /// A hub's gRPC clients of the nodes, with the fleet token (`/nodes/{node}/…`).
    pub remote: remote::Remote,
    /// The SSH transport, for `/gpu?host=`.
    pub ssh: crate::ssh::Ssh,
    /// The container engine, for `/containers`.
    pub engine: crate::sources::container::engine::Engine,
}

pub type Shared = Arc<AppState>;

/// Serves the API on `listener` until `shutdown` is set and the open connections end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    mut shutdown: stream::Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/tasks", get(tasks::list).post(tasks::create))
        .route("/tasks/{name}", get(tasks::get_task).delete(tasks::remove))
        .route("/tasks/{name}/stop", post(tasks::stop))
        .route("/tasks/{name}/restart", post(tasks::restart))
        .route("/tasks/{name}/logs", get(logs::task_logs))
        .route("/tasks/{name}/logs/ws", get(logs::task_logs_ws))
        .route("/runs", get(tasks::runs))
        .route("/runs/{run_id}", get(tasks::run))
        .route("/runs/{run_id}/log", get(logs::raw_log))
        .route("/runs/{run_id}/diagnostics", get(diagnostics::summary))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{name}/test", post(alerts::test))
        .route(
            "/runs/{run_id}/diagnostics.tar.gz",
            get(diagnostics::tarball),
        )
        .route("/llama/{name}/status", get(llama::status))
        .route("/events", get(events::events))
        .route("/backends", get(llama::backends))
        .route("/gpu", get(gpu::gpu))
        .route("/containers", get(containers::list))
        .route("/nodes", get(nodes::nodes))
        .route("/nodes/{node}/tasks", get(nodes::tasks))
        .route("/nodes/{node}/runs", get(nodes::runs))
        .route("/nodes/{node}/tasks/{name}/logs", get(nodes::logs))
        .route("/nodes/{node}/tasks/{name}/stop", post(nodes::stop))
        .route("/nodes/{node}/tasks/{name}/restart", post(nodes::restart))
        .route(
            "/publishers/redis",
            get(publishers::redis_status).put(publishers::redis_update),
        )
        .route("/login-links", post(login_link))
        .route("/shutdown", post(shutdown));
    Router::new()
        .nest("/api/v1", api)
        .route("/login/{code}", get(login))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/metrics", get(metrics::handler))
        .route_service(grpc::PATH, grpc::service(state.clone()))
        .fallback(not_found)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(state, guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn health(State(st): State<Shared>) -> Json<corral_client::wire::Health> {
    Json(corral_client::wire::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: st.bus.node.clone(),
        uptime_s: (crate::util::unix_now() - st.started_at).round(),
        hub: st.hub.is_some(),
    })
}

/// Stops the daemon once the answer is sent: its tasks first, or, with
/// `leave_running`, not at all (they stay up under their holders for the next daemon).
async fn shutdown(
    State(st): State<Shared>,
    Json(req): Json<corral_client::wire::Shutdown>,
) -> Result<(StatusCode, Json<corral_client::wire::Shutdown>), ApiError> {
    st.stop.send(req.clone()).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the daemon is already stopping",
        )
    })?;
    Ok((StatusCode::ACCEPTED, Json(req)))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the API lives under /api/v1 (see the README)",
    )
}

/// Who may ask (see [`auth`]) and the body-size check, before any handler runs.
async fn guard(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    // HTTP/2 (gRPC) names the host in `:authority`, not in a `Host` header.
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let path = req.uri().path();
    let checked = if path.starts_with("/login/") || dashboard::is_dashboard_path(path) {
        // The one-time code in the path is the credential; the dashboard's files hold
        // nothing secret (the page asks the API, which wants the session).
        st.auth.check_host_and_origin(req.headers())
    } else {
        st.auth.check(req.method(), req.headers())
    };
    if let Err(e) = checked {
        if grpc::is_grpc(req.headers()) {
            return grpc::status(e).into_http();
        }
        return e.into_response();
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over {MAX_BODY} bytes"),
        )
        .into_response();
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // A chunked body that grew past the limit: same JSON error as above.
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over {MAX_BODY} bytes"),
        )
        .into_response();
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if resp.status().is_client_error() && !is_json {
        // An extractor's plain-text rejection (bad query string or body, wrong method):
        // the same JSON error shape as every other error.
        return json_rejection(resp).await;
    }
    resp
}

async fn json_rejection(resp: Response) -> Response {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, fallback) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take that method",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send JSON with `Content-Type: application/json`",
        ),
        _ => ("bad_request", "bad request"),
    };
    let message = if text.is_empty() {
        fallback.to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, code, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// `POST /api/v1/login-links`: a one-time link that logs a browser in (it sets an
/// HttpOnly, SameSite=Strict session cookie). The only credential ever put in a URL, and
/// it works once, for two minutes.
async fn login_link(State(st): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let url = st
        .auth
        .login_url()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(serde_json::json!({
        "url": url,
        "expires_in_s": auth::LOGIN_LINK_TTL.as_secs(),
    })))
}

/// `GET /login/{code}`: spends a login code, sets the session cookie, goes to `/`.
async fn login(
    State(st): State<Shared>,
    axum::extract::Path(code): axum::extract::Path<String>,
) -> Response {
    match st.auth.redeem(&code) {
        Some(session) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (
                    header::SET_COOKIE,
                    format!(
                        "{}={session}; HttpOnly; SameSite=Strict; Path=/",
                        auth::SESSION_COOKIE
                    ),
                ),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_login_link",
            "this login link was used already or has expired; ask for a new one with `corral login`",
        )
        .into_response(),
    }
}

/// Compares without leaking, through timing, how many leading bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        let long_a = vec![b'a'; 300];
        let long_b = vec![b'a'; 44]; // lengths differ by 256
        assert!(!constant_time_eq(&long_a, &long_b));
    }
}
