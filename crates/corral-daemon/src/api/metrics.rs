//! `GET /metrics`: the daemon's registry in the Prometheus text format. [`registry`]
//! builds it once at startup: corral's own series (tasks, capture, events, sinks) are
//! collected from their state at each scrape, and every kind registers its own.

use super::Shared;
use crate::bus::Bus;
use crate::metrics::{counter, gauge, Collector, DescriptorEncoder, Registry, NO_LABELS};
use crate::sinks::Events;
use crate::supervisor::Supervisor;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use corral_core::policy::TaskStatus;
use std::sync::Arc;

pub async fn handler(State(st): State<Shared>) -> impl IntoResponse {
    // The GPU series read the cached snapshot; make it at most a second old first.
    st.gpus.snapshot().await;
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&st.metrics),
    )
}

/// The registry `/metrics` renders.
pub fn registry(
    sup: &Arc<Supervisor>,
    events: &Events,
    redis: &crate::sinks::redis::Redis,
    gpus: &Arc<crate::gpu::Gpus>,
    llama: &crate::kinds::llama::Llama,
) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(crate::metrics::Capture));
    r.register_collector(Box::new(Daemon {
        sup: sup.clone(),
        bus: sup.bus.clone(),
        events: events.clone(),
        redis: redis.clone(),
    }));
    r.register_collector(Box::new(GpuSeries {
        sup: sup.clone(),
        gpus: gpus.clone(),
        llama: llama.clone(),
    }));
    for kind in sup.kinds.all() {
        kind.register_metrics(&mut r);
    }
    r
}

/// Tasks, events and sinks, read at scrape time.
struct Daemon {
    sup: Arc<Supervisor>,
    bus: Arc<Bus>,
    events: Events,
    redis: crate::sinks::redis::Redis,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Daemon")
    }
}

impl Collector for Daemon {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let tasks = self.sup.list();
        gauge(
            &mut enc,
            "corral_tasks",
            "Supervised tasks by status.",
            [
                TaskStatus::Initial,
                TaskStatus::Starting,
                TaskStatus::Ready,
                TaskStatus::Crashed,
                TaskStatus::Error,
                TaskStatus::Stopping,
                TaskStatus::Stopped,
                TaskStatus::Completed,
            ]
            .map(|status| {
                let n = tasks.iter().filter(|t| t.status == status).count();
                ([("status", status.as_str())], n as i64)
            }),
        )?;
        counter(
            &mut enc,
            "corral_task_restarts",
            "Restarts per task.",
            tasks
                .iter()
                .map(|t| ([("task", t.name.as_str())], u64::from(t.restarts))),
        )?;
        let stats = self.bus.stats();
        counter(
            &mut enc,
            "corral_events",
            "Events by type (before sampling).",
            stats.by_type.iter().map(|(t, n)| ([("type", *t)], *n)),
        )?;
        counter(
            &mut enc,
            "corral_events_sampled_out",
            "Events thinned by sampling.",
            [(NO_LABELS, stats.sampled_out)],
        )?;
        gauge(
            &mut enc,
            "corral_events_stored",
            "Events held by the observer store.",
            [(NO_LABELS, self.events.observer.len() as i64)],
        )?;
        let sinks = || stats.sinks.iter();
        counter(
            &mut enc,
            "corral_sink_events_delivered",
            "Events each sink took from its queue.",
            sinks().map(|s| ([("sink", s.name)], s.delivered)),
        )?;
        counter(
            &mut enc,
            "corral_sink_events_dropped",
            "Events each sink lost because its queue was full.",
            sinks().map(|s| ([("sink", s.name)], s.dropped)),
        )?;
        gauge(
            &mut enc,
            "corral_sink_events_queued",
            "Events waiting in each sink's queue.",
            sinks().map(|s| ([("sink", s.name)], s.queued as i64)),
        )?;
        gauge(
            &mut enc,
            "corral_sink_queue_capacity",
            "How many events each sink's queue holds before it drops the oldest.",
            sinks().map(|s| ([("sink", s.name)], s.capacity as i64)),
        )?;
        use crate::logbook::{files, memory};
        gauge(
            &mut enc,
            "corral_ring_bytes",
            "Memory the runs' rings of recent records are charged, all runs together.",
            [(NO_LABELS, memory::held() as i64)],
        )?;
        gauge(
            &mut enc,
            "corral_ring_budget_bytes",
            "What the rings together may hold before the least recently active runs keep fewer records in memory.",
            [(NO_LABELS, memory::budget().min(i64::MAX as usize) as i64)],
        )?;
        gauge(
            &mut enc,
            "corral_run_file_sets_open",
            "Runs whose log files are open now.",
            [(NO_LABELS, files::open_sets() as i64)],
        )?;
        gauge(
            &mut enc,
            "corral_run_file_sets_budget",
            "Most runs whose log files may be open at once (from the open-files limit).",
            [(NO_LABELS, files::budget_cap().min(i64::MAX as usize) as i64)],
        )?;
        let redis = self.redis.status(None);
        counter(
            &mut enc,
            "corral_redis_events_published",
            "Events the Redis publisher sent (channels and stream).",
            [(NO_LABELS, redis.published)],
        )?;
        counter(
            &mut enc,
            "corral_redis_events_failed",
            "Events whose Redis pipeline failed.",
            [(NO_LABELS, redis.failed)],
        )?;
        counter(
            &mut enc,
            "corral_redis_events_dropped",
            "Events the Redis publisher dropped (full queue, or Redis unreachable).",
            [(NO_LABELS, redis.dropped)],
        )?;
        counter(
            &mut enc,
            "corral_redis_raw_lines_published",
            "Raw lines of runs the Redis publisher sent to {prefix}:raw.",
            [(NO_LABELS, redis.raw_published)],
        )?;
        counter(
            &mut enc,
            "corral_redis_raw_lines_held_back",
            "Raw lines over raw_lines_per_second, not published.",
            [(NO_LABELS, redis.raw_held_back)],
        )?;
        counter(
            &mut enc,
            "corral_redis_raw_lines_dropped",
            "Raw lines lost (full queue, Redis unreachable, failed pipeline).",
            [(NO_LABELS, redis.raw_dropped)],
        )?;
        gauge(
            &mut enc,
            "corral_redis_connected",
            "1 while the Redis publisher is on and connected.",
            [(NO_LABELS, i64::from(redis.connected))],
        )
    }
}

/// The GPUs and each task's GPU memory, from the last snapshot (nothing without GPUs).
struct GpuSeries {
    sup: Arc<Supervisor>,
    gpus: Arc<crate::gpu::Gpus>,
    /// For the `model` label of a llama task's series.
    llama: crate::kinds::llama::Llama,
}

impl std::fmt::Debug for GpuSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GpuSeries")
    }
}

impl Collector for GpuSeries {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(snap) = self.gpus.latest().filter(|s| s.available) else {
            return Ok(());
        };
        let snap = crate::gpu::attributed(&snap, &self.sup);
        let idx: Vec<String> = snap.gpus.iter().map(|g| g.index.to_string()).collect();
        let per_gpu = |v: fn(&corral_client::wire::Gpu) -> Option<u64>| {
            snap.gpus.iter().zip(&idx).filter_map(move |(g, i)| {
                Some(([("gpu", i.as_str())], v(g)?.min(i64::MAX as u64) as i64))
            })
        };
        gauge(
            &mut enc,
            "corral_gpu_utilization_percent",
            "GPU utilization over the driver's last sample period.",
            per_gpu(|g| g.utilization_pct.map(u64::from)),
        )?;
        gauge(
            &mut enc,
            "corral_gpu_memory_used_bytes",
            "GPU memory in use.",
            per_gpu(|g| g.memory_used_bytes),
        )?;
        gauge(
            &mut enc,
            "corral_gpu_memory_total_bytes",
            "GPU memory in all.",
            per_gpu(|g| g.memory_total_bytes),
        )?;
        // Labels of one task's run on one GPU: task, run, model (empty but for a llama
        // server that named its model), GPU.
        let labels = |task: String, run: String, gpu: u32| {
            let model = self.llama.model_of(&task).unwrap_or_default();
            [task, run, model, gpu.to_string()]
        };
        let memory: Vec<([String; 4], i64)> = crate::gpu::task_memory(&snap)
            .into_iter()
            .map(|(t, r, g, b)| (labels(t, r, g), b.min(i64::MAX as u64) as i64))
            .collect();
        let utilization: Vec<([String; 4], i64)> = crate::gpu::task_utilization(&snap)
            .into_iter()
            .map(|(t, r, g, u)| (labels(t, r, g), i64::from(u)))
            .collect();
        gauge(
            &mut enc,
            "corral_gpu_task_memory_bytes",
            "GPU memory used by each task's run on each GPU.",
            named(&memory),
        )?;
        gauge(
            &mut enc,
            "corral_gpu_task_utilization_percent",
            "How busy each task's run keeps each GPU's SMs (its processes' newest samples; NVML only).",
            named(&utilization),
        )
    }
}

/// A task's GPU series with their label names: task, run_id, model, gpu.
fn named(rows: &[([String; 4], i64)]) -> Vec<([(&'static str, &str); 4], i64)> {
    rows.iter()
        .map(|([t, r, m, g], v)| {
            (
                [
                    ("task", t.as_str()),
                    ("run_id", r.as_str()),
                    ("model", m.as_str()),
                    ("gpu", g.as_str()),
                ],
                *v,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::bus::{Bus, ObserverConfig};
    use crate::supervisor::{Settings, Supervisor};
    use std::sync::Arc;

    /// Two GPUs, the second without a temperature or processes.
    struct TwoGpus;
    impl crate::gpu::Source for TwoGpus {
        fn read(&self) -> corral_client::wire::GpuSnapshot {
            use corral_client::wire::{Gpu, GpuSnapshot};
            GpuSnapshot {
                available: true,
                gpus: (0..2)
                    .map(|index| Gpu {
                        index,
                        utilization_pct: Some(37),
                        memory_used_bytes: Some(1 << 30),
                        memory_total_bytes: Some(80 << 30),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        }
    }

    #[tokio::test]
    async fn every_series_keeps_its_name_type_and_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        let events = crate::sinks::builtin(&bus, &ObserverConfig::default());
        let (kinds, llama) = crate::kinds::builtin(
            Default::default(),
            crate::ssh::Ssh::new(std::path::Path::new("/nonexistent"), None),
            crate::sources::container::engine::Engine::new(None),
            "test",
        );
        let sup = Supervisor::new(
            Settings {
                home: tmp.path().to_path_buf(),
                log: Default::default(),
                holder: None,
            },
            Arc::new(crate::registry::Registry::open(&tmp.path().join("r.db")).unwrap()),
            bus.clone(),
            kinds,
        );
        bus.emit(
            corral_core::event::EventKind::new(
                corral_core::event::Component::Task,
                corral_core::event::Level::Info,
                corral_core::event::EventType::Start,
                "m",
            ),
            "t",
            "r",
        );
        events.history(0, &Default::default()).await;
        let (redis, _) = crate::sinks::redis::Redis::new(Default::default(), None, &bus);
        let gpus = Arc::new(crate::gpu::Gpus::new(
            Arc::new(TwoGpus),
            std::time::Duration::ZERO,
        ));
        gpus.snapshot().await;
        let text = crate::metrics::render(&super::registry(&sup, &events, &redis, &gpus, &llama));
        for (name, ty) in [
            ("corral_tasks", "gauge"),
            ("corral_task_restarts_total", "counter"),
            ("corral_records_captured_total", "counter"),
            ("corral_bytes_captured_total", "counter"),
            ("corral_followers", "gauge"),
            ("corral_events_total", "counter"),
            ("corral_events_sampled_out_total", "counter"),
            ("corral_events_stored", "gauge"),
            ("corral_sink_events_delivered_total", "counter"),
            ("corral_sink_events_dropped_total", "counter"),
            ("corral_sink_events_queued", "gauge"),
            ("corral_sink_queue_capacity", "gauge"),
            ("corral_ring_bytes", "gauge"),
            ("corral_ring_budget_bytes", "gauge"),
            ("corral_run_file_sets_open", "gauge"),
            ("corral_run_file_sets_budget", "gauge"),
            ("corral_redis_events_published_total", "counter"),
            ("corral_redis_events_failed_total", "counter"),
            ("corral_redis_raw_lines_published_total", "counter"),
            ("corral_redis_raw_lines_held_back_total", "counter"),
            ("corral_redis_raw_lines_dropped_total", "counter"),
            ("corral_redis_connected", "gauge"),
            ("corral_gpu_utilization_percent", "gauge"),
            ("corral_gpu_memory_used_bytes", "gauge"),
            ("corral_gpu_memory_total_bytes", "gauge"),
            ("corral_gpu_task_memory_bytes", "gauge"),
            ("corral_gpu_task_utilization_percent", "gauge"),
        ] {
            let line = format!("# TYPE {name} {ty}");
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        for line in [
            "corral_tasks{status=\"ready\"} 0",
            "corral_events_total{type=\"start\"} 1",
            "corral_events_sampled_out_total 0",
            "corral_events_stored 1",
            "corral_sink_events_dropped_total{sink=\"observer\"} 0",
            "corral_sink_events_dropped_total{sink=\"live\"} 0",
            "corral_sink_queue_capacity{sink=\"live\"} 4096",
            "corral_gpu_utilization_percent{gpu=\"1\"} 37",
            "corral_gpu_memory_total_bytes{gpu=\"0\"} 85899345920",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
