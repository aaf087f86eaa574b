//! JSON errors at the HTTP edge: `{"error":{"code":"…","message":"…"}}`.

use crate::supervisor::SupError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<SupError> for ApiError {
    fn from(e: SupError) -> Self {
        let (status, code) = match &e {
            SupError::UnknownTask(_) => (StatusCode::NOT_FOUND, "unknown_task"),
            SupError::UnknownRun(_) => (StatusCode::NOT_FOUND, "unknown_run"),
            SupError::Busy(..) => (StatusCode::CONFLICT, "task_busy"),
            SupError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            // The files of a run are there but cannot be read: the server's fault.
            SupError::LogUnreadable { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "log_unreadable"),
            SupError::Gone(_) => (StatusCode::CONFLICT, "task_gone"),
            SupError::Registry(_) => (StatusCode::INTERNAL_SERVER_ERROR, "registry"),
            SupError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}
