//! Diagnostics: when a run fails, everything needed to understand why, in one place.
//!
//! A sink: it keeps the recent events of each task, and when it sees a task's `exit`
//! event for a run whose registry row says `failed` (a non-zero exit, a signal, a failed
//! health check), or when a starting daemon finds a run `lost`, it writes a bundle to `<home>/runs/<task>/diagnostics/<run_id>/`:
//!
//! - `summary.json`: the run (status, exit code or signal, its message, times, counts),
//!   what was collected and what could not be;
//! - `records.ndjson`: the run's last [`LAST_RECORDS`] records (as the log API gives them);
//! - `command.json`: the command line, working directory, labels and environment, with
//!   secrets redacted (see [`redact`]);
//! - `events.ndjson`: the task's recent events;
//! - `system.json`: memory, load and the free space of the log volume;
//! - `gpu.json`: what `nvidia-smi` says of the GPUs, or why there is nothing;
//! - `container.json`, for a container's run: the engine's inspect output of the
//!   container (its state, exit code, OOM kill, image, labels, mounts), as the container
//!   source kept it before removing the container, secret-named variables hidden.
//!
//! Invariants: collecting runs in a task of its own and never touches the run or its
//! task (a failure while collecting is written into the bundle's summary and the daemon
//! log, nothing more); bundles are bounded: each file by [`FILE_CAP`], each task by its
//! newest [`KEEP_PER_TASK`] bundles.

mod collect;
pub mod system;

use crate::bus::{Queue, Sink};
use crate::supervisor::Supervisor;
use corral_core::event::{Component, Event, EventType};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

pub use collect::{bundle_dir, collect_lost, read_summary, tar_gz, Summary};
pub use corral_core::secrets::{is_secret_name, redact_argv as redact, redact_url};

/// Records of the run kept in its bundle.
pub const LAST_RECORDS: u64 = 500;
/// Events of the task kept in memory (and in a bundle).
pub const EVENTS_PER_TASK: usize = 200;
/// Bundles kept per task; older ones are removed when a new one is written.
pub const KEEP_PER_TASK: usize = 20;
/// Largest file of a bundle; what is beyond is cut, and the summary says so.
pub const FILE_CAP: usize = 4 << 20;

/// The diagnostics sink. Registered by `serve` once the supervisor exists.
pub struct Diagnostics {
    sup: Weak<Supervisor>,
    recent: HashMap<String, VecDeque<Arc<Event>>>,
}

impl Diagnostics {
    pub fn new(sup: &Arc<Supervisor>) -> Diagnostics {
        Diagnostics {
            sup: Arc::downgrade(sup),
            recent: HashMap::new(),
        }
    }

    fn remember(&mut self, e: &Arc<Event>) {
        if e.task.is_empty() {
            return;
        }
        let q = self.recent.entry(e.task.clone()).or_default();
        if q.len() == EVENTS_PER_TASK {
            q.pop_front();
        }
        q.push_back(e.clone());
    }

    fn on_exit(&mut self, e: &Event) {
        let Some(sup) = self.sup.upgrade() else {
            return;
        };
        let events: Vec<Arc<Event>> = self
            .recent
            .get(&e.task)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        let (task, run_id) = (e.task.clone(), e.run_id.clone());
        tokio::spawn(async move {
            collect::collect(sup, task, run_id, events).await;
        });
    }
}

impl Sink for Diagnostics {
    fn name(&self) -> &'static str {
        "diagnostics"
    }

    async fn run(mut self, mut queue: Queue) {
        while let Some(batch) = queue.next().await {
            for s in batch.events {
                let e = &s.event;
                self.remember(e);
                // Every run end is an `exit` event of the task; whether it failed is the
                // registry's word, read by the collector.
                if e.component == Component::Task
                    && e.event_type == EventType::Exit
                    && !e.run_id.is_empty()
                {
                    self.on_exit(e);
                }
            }
            // Tasks that are gone keep no memory here.
            if let Some(sup) = self.sup.upgrade() {
                if self.recent.len() > 64 {
                    let live: std::collections::HashSet<String> =
                        sup.list().into_iter().map(|t| t.name).collect();
                    self.recent.retain(|t, _| live.contains(t));
                }
            }
        }
    }
}

/// The bundles of a task, oldest first (by modification time).
fn bundles_of(task_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(task_dir)
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let t = e.metadata().ok()?.modified().ok()?;
                Some((t, e.path()))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}
