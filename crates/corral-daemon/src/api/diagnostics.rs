//! `GET /runs/{run_id}/diagnostics` (the bundle's summary) and
//! `GET /runs/{run_id}/diagnostics.tar.gz` (the whole bundle, to share).

use super::error::ApiError;
use super::Shared;
use crate::sinks::diagnostics::{bundle_dir, read_summary, tar_gz, Summary};
use crate::supervisor::SupError;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

/// The bundle's directory, once its summary is written.
fn bundle(st: &Shared, run_id: &str) -> Result<(std::path::PathBuf, Summary), ApiError> {
    let row = st
        .sup
        .registry
        .run(run_id)
        .map_err(SupError::from)?
        .ok_or_else(|| SupError::UnknownRun(run_id.to_string()))?;
    let dir = bundle_dir(&st.sup.settings.home, &row.task, run_id);
    match read_summary(&dir) {
        Some(s) => Ok((dir, s)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_diagnostics",
            format!(
                "run {run_id} has no diagnostics bundle: one is written when a run fails \
                 (this one is {}), and only the newest {} of each task are kept",
                row.status.as_str(),
                crate::sinks::diagnostics::KEEP_PER_TASK
            ),
        )),
    }
}

pub async fn summary(
    State(st): State<Shared>,
    Path(run_id): Path<String>,
) -> Result<Json<Summary>, ApiError> {
    bundle(&st, &run_id).map(|(_, s)| Json(s))
}

pub async fn tarball(
    State(st): State<Shared>,
    Path(run_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (dir, _) = bundle(&st, &run_id)?;
    let id = run_id.clone();
    let bytes = tokio::task::spawn_blocking(move || tar_gz(&dir, &id))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bundle_unreadable",
                format!("packing the diagnostics of run {run_id}: {e}"),
            )
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"diagnostics-{run_id}.tar.gz\""),
            ),
        ],
        bytes,
    ))
}
