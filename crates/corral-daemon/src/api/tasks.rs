//! Task and run endpoints.

use super::{ApiError, Shared};
use crate::logbook::LogStats;
use crate::supervisor::{SupError, TaskInfo, TaskSpec};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use corral_client::wire::{Removed, RunInfo, Started, StopRequest};
use corral_core::policy::RunStatus;
use serde::Deserialize;
use std::time::Duration;

pub async fn list(State(st): State<Shared>) -> Json<Vec<TaskInfo>> {
    Json(st.sup.list())
}

pub async fn create(
    State(st): State<Shared>,
    body: Result<Json<TaskSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(started_reply(name, started))))
}

/// The new run, with `spawn_error` when the command could not be started (the run is
/// recorded `failed` with the same message).
fn started_reply(task: String, s: crate::supervisor::Started) -> Started {
    Started {
        task,
        run_id: s.run_id,
        spawn_error: s.spawn_error,
    }
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
) -> Result<Json<Removed>, ApiError> {
    st.sup.remove(&name).await?;
    Ok(Json(Removed { removed: name }))
}

pub async fn stop(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Option<Json<StopRequest>>,
) -> Result<Json<TaskInfo>, ApiError> {
    let timeout = body.and_then(|b| b.0.timeout_ms).map(Duration::from_millis);
    Ok(Json(st.sup.stop(&name, timeout).await?))
}

pub async fn restart(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Started>, ApiError> {
    let started = st.sup.restart(&name).await?;
    Ok(Json(started_reply(name, started)))
}

#[derive(Deserialize)]
pub struct RunsQuery {
    task: Option<String>,
    limit: Option<usize>,
}

pub async fn runs(
    State(st): State<Shared>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Vec<RunInfo>>, ApiError> {
    Ok(Json(list_runs(&st, q.task.as_deref(), q.limit)?))
}

/// The newest `limit` runs (default 1000), of one task or all, with running runs' live
/// counters.
pub(super) fn list_runs(
    st: &Shared,
    task: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<RunInfo>, ApiError> {
    let rows = st
        .sup
        .registry
        .runs(task, limit.unwrap_or(1000))
        .map_err(SupError::from)?;
    if let Some(task) = task {
        if rows.is_empty() && st.sup.get(task).is_err() {
            return Err(SupError::UnknownTask(task.to_string()).into());
        }
    }
    let live = st.sup.live_stats();
    let mut out: Vec<RunInfo> = rows.into_iter().map(RunInfo::from).collect();
    for r in out.iter_mut().filter(|r| r.status == RunStatus::Running) {
        if let Some(s) = live.get(&r.run_id) {
            overlay_live(r, s);
        }
    }
    Ok(out)
}

pub async fn run(
    State(st): State<Shared>,
    Path(run_id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    let mut row: RunInfo = st
        .sup
        .registry
        .run(&run_id)
        .map_err(SupError::from)?
        .ok_or_else(|| SupError::UnknownRun(run_id.clone()))?
        .into();
    if let Some(s) = st.sup.live_stats().get(&run_id) {
        overlay_live(&mut row, s);
    }
    Ok(Json(row))
}

/// A running run's row with the log's live counters, and whether the size cap has
/// already cut it.
fn overlay_live(row: &mut RunInfo, s: &LogStats) {
    row.lines = s.lines as i64;
    row.bytes = s.bytes as i64;
    row.truncated |= s.gap.is_some() || s.write_errors > 0;
    row.write_errors = s.write_errors;
    row.write_error = s.write_error.clone();
}
