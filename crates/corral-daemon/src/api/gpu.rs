//! `GET /api/v1/gpu`: the GPUs (cached for a second by `crate::gpu`), each process on
//! them with the corral task and run it belongs to, and the container it runs in.
//! `?host=user@host`: another machine's GPUs, read over SSH (`crate::gpu::remote`), not
//! cached.

use super::error::ApiError;
use super::Shared;
use crate::ssh::SshError;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use corral_client::wire::GpuSnapshot;

#[derive(serde::Deserialize)]
pub struct GpuQuery {
    host: Option<String>,
}

pub async fn gpu(
    State(st): State<Shared>,
    Query(q): Query<GpuQuery>,
) -> Result<Json<GpuSnapshot>, ApiError> {
    if let Some(host) = q.host.filter(|h| !h.is_empty()) {
        return match crate::gpu::remote::read(&st.ssh, &host).await {
            Ok(snap) => Ok(Json(snap)),
            Err(e @ SshError::BadHost(_)) => Err(ApiError::bad_request(e.to_string())),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "remote_unreachable",
                e.to_string(),
            )),
        };
    }
    let snap = st.gpus.snapshot().await;
    Ok(Json(crate::gpu::attributed(&snap, &st.sup)))
}
