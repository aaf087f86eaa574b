//! `GET /metrics`: corral's own counters and every kind's series, in the Prometheus text
//! format.

use super::Shared;
use crate::metrics::{BYTES, FOLLOWERS, RECORDS};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use corral_core::policy::TaskStatus;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

pub async fn handler(State(st): State<Shared>) -> impl IntoResponse {
    let mut out = String::new();
    let tasks = st.sup.list();
    let _ = writeln!(
        out,
        "# HELP corral_tasks Supervised tasks by status.\n# TYPE corral_tasks gauge"
    );
    for status in [
        TaskStatus::Initial,
        TaskStatus::Starting,
        TaskStatus::Ready,
        TaskStatus::Crashed,
        TaskStatus::Error,
        TaskStatus::Stopping,
        TaskStatus::Stopped,
        TaskStatus::Completed,
    ] {
        let n = tasks.iter().filter(|t| t.status == status).count();
        let _ = writeln!(out, "corral_tasks{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP corral_task_restarts_total Restarts per task.\n# TYPE corral_task_restarts_total counter");
    for t in &tasks {
        let _ = writeln!(
            out,
            "corral_task_restarts_total{{task=\"{}\"}} {}",
            crate::metrics::label(&t.name),
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
    for kind in st.sup.kinds.all() {
        kind.write_metrics(&mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
