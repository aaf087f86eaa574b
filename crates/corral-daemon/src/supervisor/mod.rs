//! The supervisor: owns the tasks of this daemon. Each task is an actor (a tokio task,
//! see [`task`]) that spawns runs, reacts to exits with the pure restart policy of
//! `corral_core::policy`, stops process groups, and records every run in the registry.
//!
//! Invariants:
//! - one actor per task; all changes to a task go through its command channel, so two
//!   requests can never race on one process;
//! - a run is in the registry (status `running`) before its process starts, and gets its
//!   final status after its output is drained;
//! - every lifecycle transition is also a `system` record in the run's log and an event.

pub mod kind;
pub mod probe;
pub mod process;
pub mod run;
mod task;

use crate::bus::Bus;
use crate::logbook::{LogConfig, RunEnd, RunLog};
use crate::registry::{Desired, Registry, RegistryError, RunRow};
pub use corral_client::wire::{HealthCheck, TaskInfo, TaskSpec};
use corral_core::policy::{RunStatus, TaskStatus};
use kind::Kinds;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The live state of a task, written by its actor, read by the API.
#[derive(Clone)]
pub(crate) struct View {
    pub status: TaskStatus,
    pub pid: Option<u32>,
    pub run_id: Option<String>,
    pub restarts: u32,
    pub failures: u32,
    pub started_at: Option<f64>,
    pub log: Option<Arc<RunLog>>,
    pub adopted: bool,
    pub last_error: Option<String>,
    /// The container the live run is, if it is one.
    pub container_id: Option<String>,
}

/// A start's answer: the new run, and why its command could not be spawned (the run
/// is then already recorded `failed` with that message).
#[derive(Debug, Clone)]
pub struct Started {
    pub run_id: String,
    pub spawn_error: Option<String>,
}

pub(crate) type StartReply = Result<Started, SupError>;

pub(crate) enum Cmd {
    Start(oneshot::Sender<StartReply>),
    Stop(Option<Duration>, oneshot::Sender<()>),
    Restart(oneshot::Sender<StartReply>),
    Remove(oneshot::Sender<()>),
    /// Let go of the task's run without stopping it (the daemon leaves it running for the
    /// next one); a run that cannot outlive the daemon is stopped. The actor then ends.
    Detach(oneshot::Sender<()>),
}

struct Handle {
    spec: TaskSpec,
    view: Arc<Mutex<View>>,
    tx: mpsc::UnboundedSender<Cmd>,
}

#[derive(Debug, thiserror::Error)]
pub enum SupError {
    #[error("no task named `{0}`; `corral ps` lists the tasks")]
    UnknownTask(String),
    #[error("task `{0}` is {1}; stop it first (`corral stop {0}`) or choose another name")]
    Busy(String, String),
    #[error("no run `{0}`; `corral runs` lists the runs")]
    UnknownRun(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the log of run {run_id} cannot be read: {source}")]
    LogUnreadable {
        run_id: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the task `{0}` went away while the request was in flight")]
    Gone(String),
    /// The daemon could not do what was asked for a reason of its own (the run's log
    /// cannot be created, the disk is full): not the request's fault.
    #[error("{0}")]
    Internal(String),
}

/// Daemon-wide settings the supervisor needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub home: PathBuf,
    pub log: LogConfig,
    /// The program that holds runs (`corral hold`, see [`crate::holder`]): tasks then
    /// outlive the daemon. Without one, runs are the daemon's own children and end with it.
    pub holder: Option<PathBuf>,
}

/// A run an earlier daemon left live with its holder, to be taken back by its task.
pub(crate) struct Attach {
    pub row: RunRow,
    pub ingest: crate::logbook::Ingest,
    pub at: crate::logbook::Checkpoint,
    /// The run as its kind took it back (no holder: a followed file); `None` for a
    /// held run.
    pub launched: Option<run::Launched>,
}

pub struct Supervisor {
    pub settings: Settings,
    pub registry: Arc<Registry>,
    pub bus: Arc<Bus>,
    /// The task kinds registered at startup.
    pub kinds: Kinds,
    /// Watchers of every run, whatever its kind (see [`kind::RunWatcher`]).
    run_watchers: Mutex<Vec<Arc<dyn kind::RunWatcher>>>,
    /// What starts a run (the task's command as a local child).
    launcher: Arc<dyn run::Launcher>,
    tasks: Mutex<HashMap<String, Handle>>,
    /// Logs of runs that are no task's current one, opened for followers: shared while
    /// any follower holds one, so a crowd reading an old run shares one block cache and
    /// one set of file handles instead of each opening its own.
    finished_logs: Mutex<HashMap<String, std::sync::Weak<RunLog>>>,
    /// Processes of runs an earlier daemon left running (pid, start time), by task: a
    /// start of that task stops them first, so nothing ever runs twice.
    orphans: Mutex<HashMap<String, (u32, Option<u64>)>>,
    /// Tasks [`Self::recover`] found should run, for [`Self::start_desired`].
    resume: Mutex<Vec<String>>,
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        registry: Arc<Registry>,
        bus: Arc<Bus>,
        kinds: Kinds,
    ) -> Arc<Supervisor> {
        let launcher: Arc<dyn run::Launcher> = match &settings.holder {
            Some(program) => Arc::new(run::HeldLauncher {
                program: program.clone(),
            }),
            None => Arc::new(run::ChildLauncher),
        };
        Supervisor::with_launcher(settings, registry, bus, kinds, launcher)
    }

    /// A supervisor whose runs are started by `launcher` instead of as local children.
    pub fn with_launcher(
        settings: Settings,
        registry: Arc<Registry>,
        bus: Arc<Bus>,
        kinds: Kinds,
        launcher: Arc<dyn run::Launcher>,
    ) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            settings,
            registry,
            bus,
            kinds,
            run_watchers: Mutex::new(Vec::new()),
            launcher,
            tasks: Mutex::new(HashMap::new()),
            finished_logs: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            resume: Mutex::new(Vec::new()),
        })
    }

    /// Adds a watcher that every run from now on gets (beside its kind's).
    pub fn add_run_watcher(&self, w: Arc<dyn kind::RunWatcher>) {
        self.run_watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
    }

    /// Attaches the watchers of a new or taken-back run: the daemon-wide ones, then its
    /// kind's, whose handle (with what it learnt of a failure) the task keeps.
    pub(crate) fn watch_run(
        &self,
        spec: &corral_client::wire::TaskSpec,
        run_id: &str,
        log: &Arc<RunLog>,
    ) -> Option<kind::Watcher> {
        let ctx = || kind::RunContext {
            spec,
            run_id,
            log: log.clone(),
            bus: self.bus.clone(),
        };
        let watchers = self
            .run_watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for w in watchers {
            w.watch(&ctx());
        }
        self.kinds
            .of(spec)
            .ok()
            .flatten()
            .and_then(|k| k.watch(ctx()))
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory of a task's run logs.
    pub fn log_dir(&self, task: &str) -> PathBuf {
        self.settings.home.join("runs").join(task).join("logs")
    }

    /// Where the holders of runs keep their sockets and exit files.
    pub fn holders_dir(&self) -> PathBuf {
        self.settings.home.join("holders")
    }

    /// Takes back a run an earlier daemon left live: its holder answers on its socket,
    /// and its log reopens at its checkpoint. `None` when either is not so.
    fn attachable(&self, run: &RunRow) -> Option<Attach> {
        let (socket, _) = run::holder_paths(&self.holders_dir(), &run.run_id);
        std::os::unix::net::UnixStream::connect(&socket).ok()?;
        match crate::logbook::Ingest::reopen(
            &self.log_dir(&run.task),
            &run.run_id,
            &self.settings.log,
        ) {
            Ok((ingest, at)) => Some(Attach {
                row: run.clone(),
                ingest,
                at,
                launched: None,
            }),
            Err(e) => {
                tracing::error!(run_id = %run.run_id, "cannot reopen the log of a live held run: {e}");
                None
            }
        }
    }

    /// Takes back a run an earlier daemon was writing with no holder, when its task's
    /// kind can go on from the log's checkpoint (a followed file). `None` otherwise.
    fn resumable(&self, run: &RunRow, spec: Option<&TaskSpec>) -> Option<Attach> {
        let kind = self.kinds.of(spec?).ok().flatten()?;
        let log_dir = self.log_dir(&run.task);
        let (log_path, _, _) = crate::logbook::run_paths(&log_dir, &run.run_id);
        // Only a run that kept a checkpoint can go on without repeating anything.
        crate::logbook::Checkpoint::read(&log_path).ok()?;
        let holders = self.holders_dir();
        let place = run::RunPlace {
            run_id: &run.run_id,
            holders: &holders,
            log_dir: &log_dir,
            previous: None,
        };
        let launched = match kind.resume(spec?, &place)? {
            Ok(launched) => launched,
            Err(e) => {
                tracing::error!(run_id = %run.run_id, "cannot take back the run: {e}");
                return None;
            }
        };
        match crate::logbook::Ingest::reopen(&log_dir, &run.run_id, &self.settings.log) {
            Ok((ingest, at)) => Some(Attach {
                row: run.clone(),
                ingest,
                at,
                launched: Some(launched),
            }),
            Err(e) => {
                tracing::error!(run_id = %run.run_id, "cannot reopen the log of a live run: {e}");
                None
            }
        }
    }

    /// A run whose holder ended while no daemon ran, with the exit it recorded: the run
    /// is finished from its own files.
    fn finish_ended(&self, run: &RunRow, exit: corral_core::policy::Exit) -> Result<(), SupError> {
        use corral_core::policy::Exit;
        let (code, signal, text) = match exit {
            Exit::Code(c) => (Some(c), None, format!("exited with code {c}")),
            Exit::Signal(s) => (
                None,
                Some(s),
                format!("killed by signal {s} ({})", process::signal_name(s)),
            ),
        };
        let status = if exit.success() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        let note = format!("{text} while no daemon ran");
        let stats = match crate::logbook::Ingest::reopen(
            &self.log_dir(&run.task),
            &run.run_id,
            &self.settings.log,
        ) {
            Ok((ingest, _)) => {
                ingest.system(&note);
                Some(ingest.log().stats())
            }
            Err(_) => None,
        };
        self.registry.finish_run(
            &run.run_id,
            &crate::registry::RunOutcome {
                status,
                ended_at: crate::util::unix_now(),
                exit_code: code,
                signal,
                error_message: (status == RunStatus::Failed).then(|| note.clone()),
                lines: stats.as_ref().map_or(run.lines as u64, |s| s.lines),
                bytes: stats.as_ref().map_or(run.bytes as u64, |s| s.bytes),
                gap: stats
                    .as_ref()
                    .and_then(|s| s.gap)
                    .map(|g| [g.from, g.to, g.off_from, g.off_to]),
                write_failed: false,
            },
        )?;
        let (_, exit_file) = run::holder_paths(&self.holders_dir(), &run.run_id);
        let _ = std::fs::remove_file(exit_file);
        Ok(())
    }

    /// Marks runs left `running` by an earlier daemon as `lost` (remembering the ones
    /// whose process still runs), and loads the saved tasks, settled. [`Self::start_desired`]
    /// then starts the ones that should run.
    pub fn recover(self: &Arc<Self>) -> Result<Vec<String>, SupError> {
        let mut notes = Vec::new();
        let mut attach: HashMap<String, Attach> = HashMap::new();
        let specs: HashMap<String, TaskSpec> = self
            .registry
            .tasks()?
            .into_iter()
            .filter_map(|(name, spec, _)| Some((name, serde_json::from_str(&spec).ok()?)))
            .collect();
        for run in self.registry.running()? {
            if let Some(a) = self
                .attachable(&run)
                .or_else(|| self.resumable(&run, specs.get(&run.task)))
            {
                tracing::info!(task = %run.task, run_id = %run.run_id, "taking back a run its holder kept live");
                attach.insert(run.task.clone(), a);
                continue;
            }
            let (_, exit_file) = run::holder_paths(&self.holders_dir(), &run.run_id);
            if let Some(exit) = crate::sources::held::recorded_exit(&exit_file) {
                self.finish_ended(&run, exit)?;
                continue;
            }
            let pid = run.pid.unwrap_or(0) as u32;
            let alive = pid != 0 && process::is_same_process(pid, run.pid_start.map(|v| v as u64));
            if alive {
                self.orphans()
                    .insert(run.task.clone(), (pid, run.pid_start.map(|v| v as u64)));
            }
            let why = if alive {
                format!("the daemon restarted while this run was live; pid {pid} still runs but its output pipes are gone, so it was not adopted")
            } else {
                "the daemon restarted and the run's process is gone".to_string()
            };
            let log = RunLog::open_finished(
                &self.log_dir(&run.task),
                &run.run_id,
                None,
                RunEnd {
                    status: RunStatus::Lost,
                    exit_code: None,
                    signal: None,
                },
            )
            .ok();
            let stats = log.map(|l| l.stats());
            self.registry.finish_run(
                &run.run_id,
                &crate::registry::RunOutcome {
                    status: RunStatus::Lost,
                    ended_at: crate::util::unix_now(),
                    error_message: Some(why),
                    lines: stats.as_ref().map_or(0, |s| s.lines),
                    bytes: stats.as_ref().map_or(0, |s| s.bytes),
                    gap: stats
                        .as_ref()
                        .and_then(|s| s.gap)
                        .map(|g| [g.from, g.to, g.off_from, g.off_to]),
                    ..Default::default()
                },
            )?;
            notes.push(run.run_id);
        }
        for (name, spec, desired) in self.registry.tasks()? {
            match serde_json::from_str::<TaskSpec>(&spec) {
                Ok(spec) => {
                    let last = self.registry.runs(Some(&name), 1)?.into_iter().next();
                    let held = attach.remove(&name);
                    let wanted = held.is_none()
                        && desired == Desired::Run
                        && should_resume(&spec, last.as_ref());
                    let (handle, _) = self.new_handle(spec, false, last.as_ref(), held);
                    self.tasks().insert(name.clone(), handle);
                    if wanted {
                        self.resume
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(name);
                    }
                }
                Err(e) => {
                    tracing::error!(task = %name, "skipping a saved task: its spec is unreadable ({e})")
                }
            }
        }
        // Live runs of tasks no longer known: nothing would ever stop them.
        for (task, a) in attach {
            if let Some(pid) = a.row.pid {
                tracing::warn!(task = %task, "stopping pid {pid}: its task is gone");
                process::signal_group(pid as u32, libc::SIGTERM);
            }
        }
        Ok(notes)
    }

    /// Starts the tasks that should run (their desired state survived the daemon), as a
    /// user's start would. Called once the daemon is ready.
    pub async fn start_desired(self: &Arc<Self>) {
        let names = std::mem::take(&mut *self.resume.lock().unwrap_or_else(|e| e.into_inner()));
        for name in names {
            tracing::info!(task = %name, "starting again: it was running when the daemon stopped");
            match self.start(&name).await {
                Ok(s) if s.spawn_error.is_some() => {
                    tracing::error!(task = %name, "could not start again: {}", s.spawn_error.unwrap_or_default())
                }
                Ok(_) => {}
                Err(e) => tracing::error!(task = %name, "could not start again: {e}"),
            }
        }
    }

    fn orphans(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Option<u64>)>> {
        self.orphans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops what an earlier daemon left running for this task (SIGTERM to its process
    /// group, SIGKILL after the task's stop timeout), so a start never makes a second copy
    /// (for a llama-server: a second model load and a port clash).
    async fn stop_orphan(&self, spec: &TaskSpec) {
        let Some((pid, start)) = self.orphans().remove(&spec.name) else {
            return;
        };
        if !process::is_same_process(pid, start) {
            return;
        }
        tracing::warn!(task = %spec.name, "stopping pid {pid}, left running by an earlier daemon, before starting the task");
        process::signal_group(pid, libc::SIGTERM);
        let deadline =
            std::time::Instant::now() + Duration::from_millis(spec.stop_timeout_ms.max(100));
        while process::is_same_process(pid, start) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if process::is_same_process(pid, start) {
            process::signal_group(pid, libc::SIGKILL);
        }
    }

    /// Starts a settled task (the daemon's own start, at boot).
    async fn start(&self, name: &str) -> Result<Started, SupError> {
        let spec = self.spec(name)?;
        self.stop_orphan(&spec).await;
        let (tx, rx) = oneshot::channel();
        self.with_handle(name, |h| h.tx.send(Cmd::Start(tx)))?
            .map_err(|_| SupError::Gone(name.into()))?;
        rx.await.map_err(|_| SupError::Gone(name.into()))?
    }

    /// A new task actor (started, or not); the caller puts the handle in the map.
    fn new_handle(
        self: &Arc<Self>,
        spec: TaskSpec,
        start: bool,
        last: Option<&RunRow>,
        attach: Option<Attach>,
    ) -> (Handle, Option<oneshot::Receiver<StartReply>>) {
        let view = Arc::new(Mutex::new(View {
            status: TaskStatus::Initial,
            pid: None,
            run_id: last.map(|r| r.run_id.clone()),
            restarts: 0,
            failures: 0,
            started_at: None,
            log: None,
            adopted: false,
            last_error: last.and_then(|r| r.error_message.clone()),
            container_id: None,
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut reply = None;
        if start {
            let (rtx, rrx) = oneshot::channel();
            let _ = tx.send(Cmd::Start(rtx));
            reply = Some(rrx);
        }
        task::spawn_actor(self.clone(), spec.clone(), view.clone(), rx, attach);
        (Handle { spec, view, tx }, reply)
    }

    /// Creates a task (or replaces a settled one of the same name) and starts it.
    pub async fn run(self: &Arc<Self>, mut spec: TaskSpec) -> Result<Started, SupError> {
        crate::util::validate_task_name(&spec.name).map_err(SupError::BadRequest)?;
        if let Some(kind) = self.kinds.of(&spec).map_err(SupError::BadRequest)? {
            kind.prepare(&mut spec).map_err(SupError::BadRequest)?;
        }
        if let Some(cwd) = spec.cwd.as_deref().filter(|d| !d.starts_with('/')) {
            return Err(SupError::BadRequest(format!(
                "the working directory `{cwd}` is relative; give an absolute path (the daemon's own \
                 working directory is no place to guess from)"
            )));
        }
        if spec.command.is_empty() {
            return Err(SupError::BadRequest(
                "no command given: put it after `--`, e.g. `corral run --name job -- python3 train.py`".into(),
            ));
        }
        let json = serde_json::to_string(&spec).map_err(|e| SupError::BadRequest(e.to_string()))?;
        let name = spec.name.clone();
        self.stop_orphan(&spec).await;
        // Check, replace and insert under one lock: two `run`s of one name cannot both win.
        let (old, rx) = {
            let mut tasks = self.tasks();
            if let Some(h) = tasks.get(&name) {
                let status = h.view.lock().unwrap_or_else(|e| e.into_inner()).status;
                if !status.is_settled() {
                    return Err(SupError::Busy(name, status.as_str().into()));
                }
            }
            let old = tasks.remove(&name);
            let (handle, rx) = self.new_handle(spec, true, None, None);
            tasks.insert(name.clone(), handle);
            (old, rx.expect("start requested"))
        };
        if let Some(old) = old {
            // Settled: it has no process; it answers and ends.
            let (tx, _) = oneshot::channel();
            let _ = old.tx.send(Cmd::Remove(tx));
        }
        self.registry
            .save_task(&name, &json, crate::util::unix_now())?;
        self.registry.set_desired(&name, Desired::Run)?;
        rx.await.map_err(|_| SupError::Gone(name))?
    }

    fn with_handle<T>(&self, name: &str, f: impl FnOnce(&Handle) -> T) -> Result<T, SupError> {
        self.tasks()
            .get(name)
            .map(f)
            .ok_or_else(|| SupError::UnknownTask(name.to_string()))
    }

    pub fn list(&self) -> Vec<TaskInfo> {
        let mut out: Vec<TaskInfo> = self.tasks().values().map(info).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn get(&self, name: &str) -> Result<TaskInfo, SupError> {
        self.with_handle(name, info)
    }

    pub fn spec(&self, name: &str) -> Result<TaskSpec, SupError> {
        self.with_handle(name, |h| h.spec.clone())
    }

    /// Stops a task and waits until its process group is gone. It stays stopped across
    /// daemon restarts.
    pub async fn stop(&self, name: &str, timeout: Option<Duration>) -> Result<TaskInfo, SupError> {
        self.registry.set_desired(name, Desired::Stop)?;
        self.stop_now(name, timeout).await
    }

    /// Stops a task without changing whether it should run (the daemon's own shutdown).
    async fn stop_now(&self, name: &str, timeout: Option<Duration>) -> Result<TaskInfo, SupError> {
        let (tx, rx) = oneshot::channel();
        self.with_handle(name, |h| h.tx.send(Cmd::Stop(timeout, tx)))?
            .map_err(|_| SupError::Gone(name.into()))?;
        rx.await.map_err(|_| SupError::Gone(name.into()))?;
        self.get(name)
    }

    pub async fn restart(&self, name: &str) -> Result<Started, SupError> {
        let spec = self.spec(name)?;
        self.stop_orphan(&spec).await;
        self.registry.set_desired(name, Desired::Run)?;
        let (tx, rx) = oneshot::channel();
        self.with_handle(name, |h| h.tx.send(Cmd::Restart(tx)))?
            .map_err(|_| SupError::Gone(name.into()))?;
        rx.await.map_err(|_| SupError::Gone(name.into()))?
    }

    /// Stops (if needed) and forgets a task. Its runs stay in the registry.
    pub async fn remove(&self, name: &str) -> Result<(), SupError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.with_handle(name, |h| h.tx.clone())?;
        tx.send(Cmd::Remove(reply))
            .map_err(|_| SupError::Gone(name.into()))?;
        let _ = rx.await;
        // Forget it only if it is still this task: a `run` may have replaced it meanwhile.
        let removed = {
            let mut tasks = self.tasks();
            let same = tasks.get(name).is_some_and(|h| h.tx.same_channel(&tx));
            same && tasks.remove(name).is_some()
        };
        if removed {
            self.registry.remove_task(name)?;
            crate::util::give_back_memory();
        }
        Ok(())
    }

    /// Stops every task (daemon shutdown); what should run still should, and runs again
    /// when a daemon starts.
    pub async fn stop_all(&self) {
        let names: Vec<String> = self.tasks().keys().cloned().collect();
        let stops = names.iter().map(|n| self.stop_now(n, None));
        futures_util::future::join_all(stops).await;
    }

    /// Lets go of every task's run without stopping it (the daemon stops, its tasks stay
    /// up, and the next daemon takes them back); runs that cannot outlive the daemon are
    /// stopped. What should run still should.
    pub async fn detach_all(&self) {
        let txs: Vec<_> = self.tasks().values().map(|h| h.tx.clone()).collect();
        let detaches = txs.into_iter().map(|tx| async move {
            let (reply, rx) = oneshot::channel();
            if tx.send(Cmd::Detach(reply)).is_ok() {
                let _ = rx.await;
            }
        });
        futures_util::future::join_all(detaches).await;
    }

    /// The log of a task's current run, or of its last run when none is live.
    pub fn task_log(&self, name: &str) -> Result<Arc<RunLog>, SupError> {
        let live = self.with_handle(name, |h| {
            h.view.lock().unwrap_or_else(|e| e.into_inner()).log.clone()
        });
        match live {
            Ok(Some(log)) => Ok(log),
            Ok(None) | Err(SupError::UnknownTask(_)) => {
                let last = self.registry.runs(Some(name), 1)?.into_iter().next();
                match last {
                    Some(run) => self.run_log(&run.run_id),
                    None if live.is_ok() => Err(SupError::BadRequest(format!(
                        "task `{name}` has no run yet; start it with `corral restart {name}`"
                    ))),
                    None => Err(SupError::UnknownTask(name.into())),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The log of any run: live from its task when it is the current run, else from disk.
    pub fn run_log(&self, run_id: &str) -> Result<Arc<RunLog>, SupError> {
        for h in self.tasks().values() {
            let v = h.view.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(log) = v.log.as_ref().filter(|l| l.run_id == run_id) {
                return Ok(log.clone());
            }
        }
        let finished = || self.finished_logs.lock().unwrap_or_else(|e| e.into_inner());
        let shared = |open: &HashMap<String, std::sync::Weak<RunLog>>| {
            open.get(run_id).and_then(std::sync::Weak::upgrade)
        };
        if let Some(log) = shared(&finished()) {
            return Ok(log);
        }
        // The registry and the files are read with no lock held.
        let row = self
            .registry
            .run(run_id)?
            .ok_or_else(|| SupError::UnknownRun(run_id.into()))?;
        let log = self.open_from_row(run_id, &row)?;
        if row.status == RunStatus::Running {
            // Still being written by the task's live log (which the loop above missed
            // only if the run ended meanwhile): never share a half-read view of it.
            return Ok(log);
        }
        let mut open = finished();
        open.retain(|_, w| w.strong_count() > 0);
        // Another follower may have opened it meanwhile: everyone shares the first.
        if let Some(first) = shared(&open) {
            return Ok(first);
        }
        open.insert(run_id.to_string(), Arc::downgrade(&log));
        Ok(log)
    }

    fn open_from_row(
        &self,
        run_id: &str,
        row: &crate::registry::RunRow,
    ) -> Result<Arc<RunLog>, SupError> {
        let gap = row.gap.map(|g| crate::logbook::Gap {
            from: g[0] as u64,
            to: g[1] as u64,
            off_from: g[2] as u64,
            off_to: g[3] as u64,
        });
        let end = RunEnd {
            status: row.status,
            exit_code: row.exit_code.map(|c| c as i32),
            signal: row.signal.map(|s| s as i32),
        };
        RunLog::open_finished(&self.log_dir(&row.task), run_id, gap, end).map_err(|source| {
            SupError::LogUnreadable {
                run_id: run_id.into(),
                source,
            }
        })
    }

    /// The live counters of every task's current log, by run id: the registry row of a
    /// running run is only final when the run ends.
    pub fn live_stats(&self) -> HashMap<String, crate::logbook::LogStats> {
        self.tasks()
            .values()
            .filter_map(|h| {
                let v = h.view.lock().unwrap_or_else(|e| e.into_inner());
                v.log.as_ref().map(|l| (l.run_id.clone(), l.stats()))
            })
            .collect()
    }
}

/// Whether a task that should run is started again when a daemon starts: per its
/// restart policy, given how its last run ended (a run-once task that finished stays
/// finished; a run the daemon lost counts as a failure).
fn should_resume(spec: &TaskSpec, last: Option<&RunRow>) -> bool {
    use corral_core::policy::Restart;
    match (spec.restart, last.map(|r| r.status)) {
        (_, None) => true,
        (Restart::Always, _) => true,
        (Restart::OnFailure, Some(st)) => st != RunStatus::Succeeded,
        (Restart::No, Some(_)) => false,
    }
}

fn info(h: &Handle) -> TaskInfo {
    let v = h.view.lock().unwrap_or_else(|e| e.into_inner());
    let live = matches!(
        v.status,
        TaskStatus::Starting | TaskStatus::Ready | TaskStatus::Stopping
    );
    let uptime_s = v
        .started_at
        .filter(|_| live)
        .map(|s| ((crate::util::unix_now() - s) * 10.0).round() / 10.0);
    // The policy resets the count when a run that stayed up long enough ends; show it
    // reset as soon as the run has been up that long.
    let stable = uptime_s.is_some_and(|u| u >= h.spec.policy().reset_after.as_secs_f64());
    TaskInfo {
        name: h.spec.name.clone(),
        status: v.status,
        pid: v.pid.filter(|_| live),
        run_id: v.run_id.clone(),
        restarts: v.restarts,
        // Failures count the one that spent the budget too; retries are restarts made.
        retries: if stable {
            0
        } else {
            v.failures.min(h.spec.max_retries)
        },
        uptime_s,
        command: display_command(&h.spec.command),
        labels: h.spec.labels.clone(),
        adopted: v.adopted,
        last_error: v.last_error.clone(),
        started_at: v.started_at,
        kind: h.spec.kind.clone(),
        write_errors: v.log.as_ref().map_or(0, |l| l.stats().write_errors),
        container_id: v.container_id.clone().filter(|_| live),
    }
}

/// A command line as one string, quoting words that need it.
/// A task's command line as corral shows it (in notes, events and `ps`): shell words,
/// with the values of secret-looking options hidden.
pub fn display_command(argv: &[String]) -> String {
    shell_words(&corral_core::secrets::redact_argv(argv))
}

pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
