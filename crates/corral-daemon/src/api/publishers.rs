//! `/api/v1/publishers/redis`: the Redis publisher's status (`GET`), and turning it on or
//! off or changing its settings at run time (`PUT`, kept for the next daemon).

use super::{ApiError, Shared};
use crate::sinks::redis::RedisError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use corral_client::wire::{RedisStatus, RedisUpdate};

fn status(st: &Shared) -> RedisStatus {
    let stats = st.bus.stats();
    let queue = stats.sinks.iter().find(|s| s.name == "redis");
    st.redis.status(queue)
}

pub async fn redis_status(State(st): State<Shared>) -> Json<RedisStatus> {
    Json(status(&st))
}

pub async fn redis_update(
    State(st): State<Shared>,
    Json(update): Json<RedisUpdate>,
) -> Result<Json<RedisStatus>, ApiError> {
    st.redis.update(&update).map_err(|e| match e {
        RedisError::Invalid(m) => ApiError::bad_request(m),
        RedisError::Save { .. } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_file",
            e.to_string(),
        ),
    })?;
    let cfg = st.redis.config();
    tracing::info!(
        enabled = cfg.enabled,
        server = %cfg.server(),
        "Redis publisher settings changed"
    );
    Ok(Json(status(&st)))
}
