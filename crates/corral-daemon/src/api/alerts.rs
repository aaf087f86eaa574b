//! `GET /alerts` (the rules and their counters) and `POST /alerts/{name}/test` (a test
//! message through one rule).

use super::error::ApiError;
use super::Shared;
use crate::sinks::alerts::RuleStats;
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
    if !st.alerts.stats().iter().any(|r| r.name == name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_rule",
            st.alerts.test(&name).await.err().unwrap_or_default(),
        ));
    }
    st.alerts.test(&name).await.map(Json).map_err(|e| {
        // The daemon is fine; the destination is not.
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "delivery_failed",
            format!("the test message of rule `{name}` was not delivered: {e}"),
        )
    })
}
