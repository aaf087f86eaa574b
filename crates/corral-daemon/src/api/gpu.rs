//! `GET /api/v1/gpu`: the GPUs (cached for a second by `crate::gpu`), each process on
//! them with the corral task and run it belongs to, and the container it runs in.

use super::Shared;
use crate::gpu::{self, RunPid};
use crate::supervisor::Supervisor;
use axum::extract::State;
use axum::Json;
use corral_client::wire::GpuSnapshot;

pub async fn gpu(State(st): State<Shared>) -> Json<GpuSnapshot> {
    let snap = st.gpus.snapshot().await;
    Json(attributed(&snap, &st.sup))
}

/// The snapshot with every process's task and run, from the supervisor's runs now.
pub fn attributed(snap: &GpuSnapshot, sup: &Supervisor) -> GpuSnapshot {
    let mut out = snap.clone();
    if out.gpus.iter().any(|g| !g.processes.is_empty()) {
        gpu::attribute(&mut out, &runs(sup), &gpu::proc_stat);
        gpu::attribute_containers(&mut out, &containers(sup), &gpu::proc_container);
    }
    out
}

fn containers(sup: &Supervisor) -> Vec<gpu::RunContainer> {
    sup.list()
        .into_iter()
        .filter_map(|t| {
            Some(gpu::RunContainer {
                container: t.container_id?,
                task: t.name,
                run_id: t.run_id,
            })
        })
        .collect()
}

fn runs(sup: &Supervisor) -> Vec<RunPid> {
    sup.list()
        .into_iter()
        .filter_map(|t| {
            Some(RunPid {
                pid: t.pid?,
                task: t.name,
                run_id: t.run_id,
            })
        })
        .collect()
}
