//! The HTTP API (`/api/v1`, JSON), log and event streaming (NDJSON, SSE, WebSocket; the
//! plumbing they share is in [`stream`]) and `/metrics`.
//!
//! **API boundary:** only this module knows about HTTP. Handlers translate requests into
//! calls on the supervisor, the registry and the logbook, and map errors to JSON
//! `{"error":{"code":…,"message":…}}` with the right status (an unknown task is 404).
//! Every request is checked against the token when one is configured, in constant time.

mod error;
mod events;
mod llama;
mod logs;
pub mod metrics;
pub mod stream;
mod tasks;

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
    /// The observer store and the live stream, for `/events`.
    pub events: crate::sinks::Events,
    /// Everything `/metrics` shows.
    pub metrics: Arc<crate::metrics::Registry>,
    /// Ends open streams when the daemon shuts down.
    pub shutdown: stream::Shutdown,
    pub token: Option<String>,
    pub started_at: f64,
    /// The llama kinds' state, for `/backends`.
    pub llama: crate::kinds::llama::Llama,
}

pub type Shared = Arc<AppState>;

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
        .route("/llama/{name}/status", get(llama::status))
        .route("/events", get(events::events))
        .route("/backends", get(llama::backends));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics::handler))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn health(State(st): State<Shared>) -> Json<corral_client::wire::Health> {
    Json(corral_client::wire::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: st.bus.node.clone(),
        uptime_s: (crate::util::unix_now() - st.started_at).round(),
    })
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the API lives under /api/v1 (see the README)",
    )
}

/// Token check and body-size check, before any handler runs.
async fn guard(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
            .or_else(|| query_token(req.uri()));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong token: send `Authorization: Bearer <token>` (the CLI reads CORRAL_TOKEN or --token-file)",
            )
            .into_response();
        }
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

/// `?token=` for clients that cannot set headers (a browser's EventSource), decoded
/// as a form value so that a token with `+`, `/` or `=` survives the trip.
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(uri)
        .ok()?
        .0
        .token
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

    #[test]
    fn token_in_query() {
        let token = |uri: &'static str| query_token(&axum::http::Uri::from_static(uri));
        assert_eq!(token("/x?a=1&token=xyz"), Some("xyz".into()));
        assert_eq!(token("/x?a=1"), None);
        assert_eq!(token("/x"), None);
        assert_eq!(
            token("/x?token=a%2Bb%2F%3D+c%zz"),
            Some("a+b/= c%zz".into())
        );
    }
}
