//! The GPU state around a GPU task's run: a `status` event with a snapshot of every GPU
//! (each process with its task and run) when the run starts and when it ends, so the
//! timeline (and Redis, and the hub) shows what the GPUs looked like at both ends.
//!
//! A GPU task is one that says so: kind `llama` or `rpc`, a `gpu` label, or one of
//! `CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`, `HIP_VISIBLE_DEVICES` in its
//! environment. Nothing is published on a machine without GPUs.

use super::Gpus;
use crate::logbook::follow::{Follower, RawItem};
use crate::supervisor::kind::{RunContext, RunWatcher};
use crate::supervisor::{Supervisor, TaskSpec};
use corral_client::wire::GpuSnapshot;
use corral_core::event::{Component, EventKind, EventType, Level};
use std::sync::{Arc, Weak};

/// Whether a task says it uses a GPU (see the module documentation).
pub fn is_gpu_task(spec: &TaskSpec) -> bool {
    matches!(spec.kind.as_deref(), Some("llama" | "rpc"))
        || spec.labels.contains_key("gpu")
        || [
            "CUDA_VISIBLE_DEVICES",
            "NVIDIA_VISIBLE_DEVICES",
            "HIP_VISIBLE_DEVICES",
        ]
        .iter()
        .any(|k| spec.env.contains_key(*k))
}

pub struct GpuWatcher {
    pub gpus: Arc<Gpus>,
    pub sup: Weak<Supervisor>,
}

impl RunWatcher for GpuWatcher {
    fn watch(&self, run: &RunContext<'_>) {
        if !is_gpu_task(run.spec) {
            return;
        }
        let (gpus, sup, bus, log) = (
            self.gpus.clone(),
            self.sup.clone(),
            run.bus.clone(),
            run.log.clone(),
        );
        let (task, run_id) = (run.spec.name.clone(), run.run_id.to_string());
        tokio::spawn(async move {
            let start = *log.subscribe().borrow() + 1;
            // Whether there are GPUs to speak of (none: nothing is published, ever).
            let publish = |phase: &'static str, snap: Arc<GpuSnapshot>| {
                let Some(sup) = sup.upgrade() else {
                    return false;
                };
                if snap.available {
                    let snap = super::attributed(&snap, &sup);
                    bus.emit(snapshot_event(phase, &task, &run_id, &snap), &task, &run_id);
                }
                snap.available
            };
            if !publish("start", gpus.snapshot().await) {
                return;
            }
            // Wait for the run's end as a viewer does (the records pass by, unread).
            let mut f = Follower::new(log, start, crate::logbook::Format::Ndjson, true);
            while let Some(item) = f.next_raw().await {
                if matches!(item, RawItem::End(_)) {
                    publish("end", gpus.snapshot().await);
                    return;
                }
            }
        });
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The event: one line per GPU in the message, the whole snapshot in `details.gpus`.
pub fn snapshot_event(phase: &str, task: &str, run_id: &str, snap: &GpuSnapshot) -> EventKind {
    let gpus: Vec<String> = snap
        .gpus
        .iter()
        .map(|g| {
            let mem = match (g.memory_used_bytes, g.memory_total_bytes) {
                (Some(u), Some(t)) => format!("{:.1}/{:.1} GiB", u as f64 / GIB, t as f64 / GIB),
                _ => "memory ?".into(),
            };
            let busy = g
                .utilization_pct
                .map_or("? busy".into(), |u| format!("{u}% busy"));
            let mine: u64 = g
                .processes
                .iter()
                .filter(|p| p.run_id.as_deref() == Some(run_id))
                .filter_map(|p| p.used_memory_bytes)
                .sum();
            let mine = if mine > 0 {
                format!(", {:.1} GiB this run's", mine as f64 / GIB)
            } else {
                String::new()
            };
            format!(
                "GPU {} {}: {mem}, {busy}{mine}",
                g.index,
                g.name.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let when = if phase == "start" { "starts" } else { "ended" };
    EventKind::new(
        Component::Task,
        Level::Info,
        EventType::Status,
        format!("GPUs as {task}'s run {when}: {}", gpus.join("; ")),
    )
    .with("gpu_snapshot", phase)
    .with(
        "gpus",
        serde_json::to_value(&snap.gpus).unwrap_or(serde_json::Value::Null),
    )
    .with("source", snap.source.clone().unwrap_or_default())
    .with("taken_at", snap.taken_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_client::wire::{Gpu, GpuProcess};

    #[test]
    fn gpu_tasks_are_those_that_say_so() {
        let mut s = TaskSpec::new("t", vec!["x".into()]);
        assert!(!is_gpu_task(&s));
        s.env.insert("CUDA_VISIBLE_DEVICES".into(), "0".into());
        assert!(is_gpu_task(&s));
        let mut s = TaskSpec::new("t", vec!["x".into()]);
        s.labels.insert("gpu".into(), "1".into());
        assert!(is_gpu_task(&s));
        let mut s = TaskSpec::new("t", vec!["x".into()]);
        s.kind = Some("llama".into());
        assert!(is_gpu_task(&s));
    }

    #[test]
    fn the_event_says_each_gpus_state_and_this_runs_memory() {
        let snap = GpuSnapshot {
            available: true,
            reason: None,
            source: Some("nvml".into()),
            taken_at: 1.0,
            gpus: vec![Gpu {
                index: 0,
                name: Some("NVIDIA H100 80GB HBM3".into()),
                memory_used_bytes: Some(40 * 1024 * 1024 * 1024),
                memory_total_bytes: Some(80 * 1024 * 1024 * 1024),
                utilization_pct: Some(97),
                processes: vec![GpuProcess {
                    pid: 7,
                    used_memory_bytes: Some(30 * 1024 * 1024 * 1024),
                    task: Some("llm".into()),
                    run_id: Some("r1".into()),
                    container: None,
                    sm_utilization_pct: None,
                }],
                ..Default::default()
            }],
        };
        let e = snapshot_event("end", "llm", "r1", &snap);
        assert_eq!(
            e.message,
            "GPUs as llm's run ended: GPU 0 NVIDIA H100 80GB HBM3: 40.0/80.0 GiB, 97% busy, 30.0 GiB this run's"
        );
        assert_eq!(e.details["gpu_snapshot"], "end");
        assert_eq!(e.details["gpus"][0]["processes"][0]["task"], "llm");
    }
}
