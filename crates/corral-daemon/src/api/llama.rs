//! llama.cpp endpoints: coordinator status, the backend registry.

use super::{ApiError, Shared};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

pub async fn status(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let spec = st.sup.spec(&name)?;
    if spec.kind.as_deref() != Some("llama") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_llama_task",
            format!(
                "task `{name}` is not a llama-server coordinator (start one with `corral llama`)"
            ),
        ));
    }
    st.sup
        .kinds
        .get("llama")
        .and_then(|k| k.status(&name))
        .map(Json)
        .ok_or_else(|| crate::supervisor::SupError::UnknownTask(name).into())
}

pub async fn backends(State(st): State<Shared>) -> Json<Vec<corral_client::wire::Backend>> {
    Json(st.llama.backends())
}
