//! The task-kind seam: what a task *is* (a llama-server coordinator, an rpc-server
//! backend, a plain process). The supervisor runs every task the same way and asks its
//! kind, through [`TaskKind`], for what only the kind knows. Kinds are registered when the
//! daemon starts (`kinds::builtin`); the supervisor never names one.

use super::run::{BoxFuture, Launched, RunPlace};
use super::Supervisor;
use crate::logbook::RunLog;
use corral_client::wire::TaskSpec;
use std::collections::HashMap;
use std::sync::Arc;

/// A run as a kind sees it when it attaches its watchers.
pub struct RunContext<'a> {
    pub spec: &'a TaskSpec,
    pub run_id: &'a str,
    /// The run's log: a watcher follows it like any viewer (by seq, from the logbook), so
    /// parsing never slows the capture and never misses a record.
    pub log: Arc<RunLog>,
    /// Where the watcher's events go.
    pub bus: Arc<crate::bus::Bus>,
}

/// A watcher of one run: it ends after the run's end mark, with what it learnt of why the
/// run failed (a server's own error lines say more than an exit code).
pub type Watcher = tokio::task::JoinHandle<Option<String>>;

/// A watcher of every run, whatever its kind (the Redis publisher's raw lines): the
/// supervisor calls each one for every new or taken-back run, beside the kind's own
/// watcher. Like a kind's watcher it follows the run's log as a viewer does, in a task
/// of its own, so it never slows the capture; it ends by itself after the run's end.
pub trait RunWatcher: Send + Sync + 'static {
    fn watch(&self, run: &RunContext<'_>);
}

pub trait TaskKind: Send + Sync + 'static {
    /// The name in [`TaskSpec::kind`].
    fn name(&self) -> &'static str;

    /// Checks a spec before anything is saved or spawned, and fills in what the kind
    /// derives from its settings (the command line, the health check). The error says
    /// what to do.
    fn prepare(&self, spec: &mut TaskSpec) -> Result<(), String>;

    /// Starts a run of a task whose run is not its command run as a local process (a
    /// followed file): `None`, the default, leaves the launch to the daemon's launcher.
    /// The error is the message for the run and the user.
    fn launch(&self, _spec: &TaskSpec, _run: &RunPlace) -> Option<Result<Launched, String>> {
        None
    }

    /// [`TaskKind::launch`] for a kind whose start waits on answers from elsewhere (a
    /// container engine creates and starts a container): the task's actor awaits it. The
    /// default is [`TaskKind::launch`].
    fn launch_async<'a>(
        &'a self,
        spec: &'a TaskSpec,
        run: &'a RunPlace<'a>,
    ) -> BoxFuture<'a, Option<Result<Launched, String>>> {
        Box::pin(std::future::ready(self.launch(spec, run)))
    }

    /// Takes back a run an earlier daemon was writing when it died, with no holder to
    /// keep it: the run goes on from its log's checkpoint (the supervisor reopens the log
    /// there; the source reads its own position kept beside it). `None`, the default:
    /// the run cannot be taken back (it is `lost`).
    fn resume(&self, _spec: &TaskSpec, _run: &RunPlace) -> Option<Result<Launched, String>> {
        None
    }

    /// Attaches the kind's log watchers (parsers) to a new run.
    fn watch(&self, _run: RunContext<'_>) -> Option<Watcher> {
        None
    }

    /// Whether a failed run's error message should quote its last stderr lines (a server
    /// that logs everything to stderr says why through its watcher instead).
    fn quotes_stderr(&self) -> bool {
        true
    }

    /// Starts the kind's own work (status objects, heartbeats), once, when the daemon
    /// is ready.
    fn start(&self, _sup: &Arc<Supervisor>) {}

    /// Registers the kind's Prometheus series (metrics it updates, or a collector read
    /// at scrape time) in the daemon's registry, once, before the daemon serves.
    fn register_metrics(&self, _registry: &mut crate::metrics::Registry) {}

    /// The kind's status object of a task, if it has one.
    fn status(&self, _task: &str) -> Option<serde_json::Value> {
        None
    }
}

/// The kinds registered in this daemon, by name.
#[derive(Clone, Default)]
pub struct Kinds {
    by_name: HashMap<&'static str, Arc<dyn TaskKind>>,
}

impl Kinds {
    pub fn new(kinds: Vec<Arc<dyn TaskKind>>) -> Kinds {
        Kinds {
            by_name: kinds.into_iter().map(|k| (k.name(), k)).collect(),
        }
    }

    /// The kind of a spec: `None` for a plain task; an unknown name is an error.
    pub fn of(&self, spec: &TaskSpec) -> Result<Option<&Arc<dyn TaskKind>>, String> {
        match spec.kind.as_deref() {
            None => Ok(None),
            Some(name) => self.by_name.get(name).map(Some).ok_or_else(|| {
                let mut known: Vec<&str> = self.by_name.keys().copied().collect();
                known.sort();
                format!(
                    "unknown task kind `{name}`; this daemon knows: {}",
                    known.join(", ")
                )
            }),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn TaskKind>> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn TaskKind>> {
        self.by_name.values()
    }
}
