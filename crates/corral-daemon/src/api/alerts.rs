//! `GET /alerts` (the rules and their counters) and `POST /alerts/{name}/test` (a test
//! message through one rule).

use super::error::ApiError;
use super::Shared;
use crate::sinks::alerts::{RuleStats, TestError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

pub async fn list(State(st): State<Shared>) -> Json<Vec<RuleStats>> {
    Json(st.alerts.stats())
}

pub async fn test(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<RuleStats>, ApiError> {
    st.alerts.test(&name).await.map(Json).map_err(|e| match e {
        TestError::UnknownRule(m) => ApiError::new(StatusCode::NOT_FOUND, "unknown_rule", m),
        // The daemon is fine; the destination is not.
        TestError::NotDelivered(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "delivery_failed",
            format!("the test message of rule `{name}` was not delivered: {e}"),
        ),
    })
}
