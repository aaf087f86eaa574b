//! Task and run endpoints.

use super::{ApiError, Shared};
use crate::registry::RunRow;
use crate::supervisor::{TaskInfo, TaskSpec};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub async fn list(State(st): State<Shared>) -> Json<Vec<TaskInfo>> {
    Json(st.sup.list())
}

pub async fn create(
    State(st): State<Shared>,
    body: Result<Json<TaskSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(spec) = body.map_err(|e| match e.status() {
        // A chunked body that grew past the limit is refused like a declared one.
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over {} bytes", super::MAX_BODY),
        ),
        _ => ApiError::bad_request(format!("bad task: {}", e.body_text())),
    })?;
    let name = spec.name.clone();
    let started = st.sup.run(spec).await?;
    Ok((StatusCode::CREATED, Json(started_json(&name, started))))
}

/// `{"task":…,"run_id":…}`, with `"spawn_error":"…"` when the command could not be
/// started (the run is recorded `failed` with the same message).
fn started_json(name: &str, s: crate::supervisor::Started) -> Value {
    let mut v = json!({"task": name, "run_id": s.run_id});
    if let Some(e) = s.spawn_error {
        v["spawn_error"] = e.into();
    }
    v
}

pub async fn get_task(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    Ok(Json(st.sup.get(&name)?))
}

pub async fn remove(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.sup.remove(&name).await?;
    Ok(Json(json!({"removed": name})))
}

#[derive(Deserialize, Default)]
pub struct StopBody {
    timeout_ms: Option<u64>,
}

pub async fn stop(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Option<Json<StopBody>>,
) -> Result<Json<TaskInfo>, ApiError> {
    let timeout = body.and_then(|b| b.0.timeout_ms).map(Duration::from_millis);
    Ok(Json(st.sup.stop(&name, timeout).await?))
}

pub async fn restart(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let started = st.sup.restart(&name).await?;
    Ok(Json(started_json(&name, started)))
}

#[derive(Deserialize)]
pub struct RunsQuery {
    task: Option<String>,
    limit: Option<usize>,
}

pub async fn runs(
    State(st): State<Shared>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Vec<RunRow>>, ApiError> {
    let mut rows = st
        .sup
        .registry
        .runs(q.task.as_deref(), q.limit.unwrap_or(1000))
        .map_err(crate::supervisor::SupError::from)?;
    if let Some(task) = &q.task {
        if rows.is_empty() && st.sup.get(task).is_err() {
            return Err(crate::supervisor::SupError::UnknownTask(task.clone()).into());
        }
    }
    let live = st.sup.live_stats();
    for r in rows.iter_mut().filter(|r| r.status == "running") {
        if let Some(s) = live.get(&r.run_id) {
            overlay_live(r, s);
        }
    }
    Ok(Json(rows))
}

pub async fn run(
    State(st): State<Shared>,
    Path(run_id): Path<String>,
) -> Result<Json<RunRow>, ApiError> {
    let mut row = st
        .sup
        .registry
        .run(&run_id)
        .map_err(crate::supervisor::SupError::from)?
        .ok_or_else(|| crate::supervisor::SupError::UnknownRun(run_id.clone()))?;
    if let Some(s) = st.sup.live_stats().get(&run_id) {
        overlay_live(&mut row, s);
    }
    Ok(Json(row))
}

/// A running run's row with the log's live counters, and whether the size cap has
/// already cut it.
fn overlay_live(row: &mut RunRow, s: &crate::logbook::LogStats) {
    row.lines = s.lines as i64;
    row.bytes = s.bytes as i64;
    row.truncated |= s.gap.is_some();
}
