//! `GET /api/v1/gpu`: the GPUs (cached for a second by `crate::gpu`), each process on
//! them with the corral task and run it belongs to.

use super::Shared;
use axum::extract::State;
use axum::Json;
use corral_client::wire::GpuSnapshot;

pub async fn gpu(State(st): State<Shared>) -> Json<GpuSnapshot> {
    let snap = st.gpus.snapshot().await;
    Json(crate::gpu::attributed(&snap, &st.sup))
}
