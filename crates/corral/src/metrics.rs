//! Prometheus text at `GET /metrics`: corral's own counters and, per llama server, the
//! request metrics parsed from its log.

use crate::api::Shared;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub static RECORDS: AtomicU64 = AtomicU64::new(0);
pub static BYTES: AtomicU64 = AtomicU64::new(0);
pub static FOLLOWERS: AtomicU64 = AtomicU64::new(0);

/// Counts a connected follower for as long as it lives.
pub struct FollowerGuard(());

impl FollowerGuard {
    pub fn new() -> FollowerGuard {
        FOLLOWERS.fetch_add(1, Ordering::Relaxed);
        FollowerGuard(())
    }
}

impl Default for FollowerGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        FOLLOWERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn handler(State(st): State<Shared>) -> impl IntoResponse {
    let mut out = String::new();
    let tasks = st.sup.list();
    let _ = writeln!(
        out,
        "# HELP corral_tasks Supervised tasks by status.\n# TYPE corral_tasks gauge"
    );
    for status in [
        "initial",
        "starting",
        "ready",
        "crashed",
        "error",
        "stopping",
        "stopped",
        "completed",
    ] {
        let n = tasks.iter().filter(|t| t.status == status).count();
        let _ = writeln!(out, "corral_tasks{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP corral_task_restarts_total Restarts per task.\n# TYPE corral_task_restarts_total counter");
    for t in &tasks {
        let _ = writeln!(
            out,
            "corral_task_restarts_total{{task=\"{}\"}} {}",
            label(&t.name),
            t.restarts
        );
    }
    let _ = writeln!(out, "# HELP corral_records_captured_total Log records captured.\n# TYPE corral_records_captured_total counter");
    let _ = writeln!(
        out,
        "corral_records_captured_total {}",
        RECORDS.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP corral_bytes_captured_total Log bytes captured.\n# TYPE corral_bytes_captured_total counter");
    let _ = writeln!(
        out,
        "corral_bytes_captured_total {}",
        BYTES.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP corral_followers Connected log followers.\n# TYPE corral_followers gauge"
    );
    let _ = writeln!(
        out,
        "corral_followers {}",
        FOLLOWERS.load(Ordering::Relaxed)
    );
    let stats = st.bus.stats();
    let _ = writeln!(out, "# HELP corral_events_total Events by type (before sampling).\n# TYPE corral_events_total counter");
    for (t, n) in &stats.by_type {
        let _ = writeln!(out, "corral_events_total{{type=\"{t}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP corral_events_sampled_out_total Events thinned by sampling.\n# TYPE corral_events_sampled_out_total counter");
    let _ = writeln!(out, "corral_events_sampled_out_total {}", stats.sampled_out);
    let _ = writeln!(out, "# HELP corral_events_stored Events held by the observer store.\n# TYPE corral_events_stored gauge");
    let _ = writeln!(out, "corral_events_stored {}", stats.stored);
    st.extra.write_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
