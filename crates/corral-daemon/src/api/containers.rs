//! `GET /api/v1/containers`: the containers that carry corral's labels (`corral.task`),
//! running or not, as the container engine lists them (`corral ps --containers`). An
//! engine that cannot be reached is a 503 that says where corral looked.

use super::{ApiError, Shared};
use crate::sources::container::engine::{
    EngineError, LABEL_NODE, LABEL_RUN, LABEL_STARTED, LABEL_TASK,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use corral_client::wire::ContainerInfo;

pub async fn list(State(st): State<Shared>) -> Result<Json<Vec<ContainerInfo>>, ApiError> {
    let found = st
        .engine
        .list(&[LABEL_TASK.to_string()])
        .await
        .map_err(|e| match e {
            EngineError::Unreachable { .. } | EngineError::BadHost { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "container_engine_unreachable",
                e.to_string(),
            ),
            e => ApiError::new(StatusCode::BAD_GATEWAY, "container_engine", e.to_string()),
        })?;
    let mut out: Vec<ContainerInfo> = found
        .into_iter()
        .map(|c| {
            let labels: std::collections::BTreeMap<String, String> =
                c.labels.unwrap_or_default().into_iter().collect();
            let label = |k: &str| labels.get(k).cloned();
            ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                task: label(LABEL_TASK),
                run_id: label(LABEL_RUN),
                started_at: label(LABEL_STARTED),
                node: label(LABEL_NODE),
                labels,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.task, &a.started_at).cmp(&(&b.task, &b.started_at)));
    Ok(Json(out))
}
