//! `GET /api/v1/nodes`: the fleet as a hub reads it from Redis (`crate::hub`): every
//! node seen, `up` or `gone`, with its version, API address, tasks and last heartbeat.
//! A daemon that is not a hub answers 404 and says how to start one.

use super::{ApiError, Shared};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use corral_client::wire::NodesAnswer;

pub async fn nodes(State(st): State<Shared>) -> Result<Json<NodesAnswer>, ApiError> {
    match &st.hub {
        Some(hub) => Ok(Json(hub.nodes())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_hub",
            "this daemon is not a hub: it lists no nodes; start one with `corral serve --hub` \
             (it reads the fleet from the Redis the nodes publish to)",
        )),
    }
}
