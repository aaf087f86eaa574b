//! The task actor: one tokio task per supervised task. It alone starts, stops and ends
//! the task's runs; the API talks to it through [`Cmd`]s. What a run is (a child, an
//! adopted server, …) is behind [`RunHandle`]; where its output comes from is its
//! [`Source`](crate::sources::Source), feeding the run's ingest stage.

use super::probe::{self, ProbeMsg};
use super::run::{Adopted, End, Launched, RunHandle, Stopping};
use super::{Cmd, StartReply, Started, SupError, Supervisor, TaskSpec, View};
use crate::logbook::{Ingest, RunEnd, RunLog};
use crate::registry::{RunOutcome, RunRow};
use crate::sources::Capture;
use corral_core::event::{Component, EventKind, EventType, Level};
use corral_core::policy::{Action, Exit, Lifecycle, RunStatus, TaskStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub(super) fn spawn_actor(
    sup: Arc<Supervisor>,
    spec: TaskSpec,
    view: Arc<Mutex<View>>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    attach: Option<super::Attach>,
) {
    let (probe_tx, probe_rx) = mpsc::unbounded_channel();
    let actor = Actor {
        lc: Lifecycle::new(spec.policy()),
        sup,
        spec,
        view,
        run: None,
        retry_at: None,
        stop_timeout: None,
        origin: Instant::now(),
        start_replies: Vec::new(),
        stop_replies: Vec::new(),
        remove_reply: None,
        restart_pending: Vec::new(),
        probe_tx,
        detach_reply: None,
        detached: false,
    };
    tokio::spawn(async move {
        let mut actor = actor;
        if let Some(a) = attach {
            actor.reattach(a);
        }
        actor.main(rx, probe_rx).await
    });
}

/// One live run.
struct LiveRun {
    run_id: String,
    /// What runs; `None` until it is adopted or launched.
    handle: Option<Box<dyn RunHandle>>,
    ingest: Ingest,
    /// The run's source at work (nothing until one is started).
    capture: Capture,
    log: Arc<RunLog>,
    kill_at: Option<Instant>,
    /// The grace between the polite stop and the kill of the stop in progress.
    grace_ms: u64,
    probe: Option<tokio::task::JoinHandle<()>>,
    /// Why corral is stopping this run (a failed probe), so the end counts as a failure.
    failing: Option<String>,
    watcher: Option<tokio::task::JoinHandle<Option<String>>>,
}

impl LiveRun {
    /// A run with its log ready and nothing started yet.
    fn new(
        run_id: String,
        ingest: Ingest,
        log: Arc<RunLog>,
        watcher: Option<tokio::task::JoinHandle<Option<String>>>,
    ) -> LiveRun {
        LiveRun {
            run_id,
            handle: None,
            ingest,
            capture: Capture::nothing(),
            log,
            kill_at: None,
            grace_ms: 0,
            probe: None,
            failing: None,
            watcher,
        }
    }
}

struct Actor {
    sup: Arc<Supervisor>,
    spec: TaskSpec,
    view: Arc<Mutex<View>>,
    lc: Lifecycle,
    run: Option<LiveRun>,
    retry_at: Option<Instant>,
    /// The grace given by the stop request being handled (`stop --timeout`), if any.
    stop_timeout: Option<Duration>,
    origin: Instant,
    start_replies: Vec<oneshot::Sender<StartReply>>,
    stop_replies: Vec<oneshot::Sender<()>>,
    remove_reply: Option<oneshot::Sender<()>>,
    /// Restarts waiting for the current run to end (answered with the new run's id).
    restart_pending: Vec<oneshot::Sender<StartReply>>,
    probe_tx: mpsc::UnboundedSender<ProbeMsg>,
    /// A detach that had to stop its run (one that cannot outlive the daemon) first.
    detach_reply: Option<oneshot::Sender<()>>,
    /// The run was let go to its holder: the actor ends.
    detached: bool,
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_end(run: &mut Option<LiveRun>) -> Exit {
    match run.as_mut().and_then(|r| r.handle.as_mut()) {
        Some(handle) => handle.wait().await,
        None => std::future::pending().await,
    }
}

/// How often a run's final registry row is tried again while it cannot be written.
const RECORD_RETRY: Duration = Duration::from_secs(1);

/// Writes a run's final registry row, and once it is there lets go of the exit file its
/// holder left. While the registry cannot be written (a full disk), it is tried again
/// every [`RECORD_RETRY`] in the background; a daemon that dies meanwhile leaves the exit
/// file, from which the next one finishes the run.
fn record_end(sup: Arc<Supervisor>, run_id: String, outcome: RunOutcome) {
    let write = move |sup: &Supervisor, first: bool| -> bool {
        match sup.registry.finish_run(&run_id, &outcome) {
            Ok(()) => {
                let (_, exit_file) = super::run::holder_paths(&sup.holders_dir(), &run_id);
                let _ = std::fs::remove_file(exit_file);
                true
            }
            Err(e) => {
                crate::metrics::REGISTRY_WRITE_ERRORS
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Said once; the retries are counted in /metrics.
                if first {
                    tracing::error!(run_id = %run_id, "recording the end of the run: {e}; trying again every {}s", RECORD_RETRY.as_secs());
                }
                false
            }
        }
    };
    if write(&sup, true) {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RECORD_RETRY).await;
            if write(&sup, false) {
                tracing::info!("the end of the run is recorded after all");
                return;
            }
        }
    });
}

pub fn human_ms(ms: u64) -> String {
    corral_core::duration::format_duration(Duration::from_millis(ms))
}

/// A jittered delay for people: `250ms`, `2s`, `4.4s`.
fn human_delay(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let tenths = (d.as_secs_f64() * 10.0).round() / 10.0;
    if tenths.fract() == 0.0 {
        format!("{tenths:.0}s")
    } else {
        format!("{tenths:.1}s")
    }
}

impl Actor {
    async fn main(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Cmd>,
        mut probe_rx: mpsc::UnboundedReceiver<ProbeMsg>,
    ) {
        let mut closed = false;
        loop {
            if self.detached {
                return;
            }
            self.publish_view();
            if self.run.is_none() && self.lc.status.is_settled() {
                for r in self.stop_replies.drain(..) {
                    let _ = r.send(());
                }
                if let Some(r) = self.detach_reply.take() {
                    let _ = r.send(());
                    return;
                }
                if let Some(r) = self.remove_reply.take() {
                    let _ = r.send(());
                    return;
                }
                if !self.restart_pending.is_empty() {
                    self.start_replies.append(&mut self.restart_pending);
                    self.clear_last_error();
                    let a = self.lc.start();
                    self.act(a).await;
                    continue;
                }
            }
            let kill_at = self.run.as_ref().and_then(|r| r.kill_at);
            tokio::select! {
                cmd = rx.recv(), if !closed => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => {
                        // The supervisor dropped this task: stop what runs and end.
                        closed = true;
                        if self.run.is_some() {
                            let (tx, _rx) = oneshot::channel();
                            self.remove_reply = Some(tx);
                            let a = self.lc.stop();
                            self.act(a).await;
                        } else {
                            return;
                        }
                    }
                },
                exit = wait_end(&mut self.run) => self.on_exit(End::Exited(exit)).await,
                _ = sleep_opt(self.retry_at) => {
                    self.retry_at = None;
                    let a = self.lc.retry_due();
                    self.act(a).await;
                }
                _ = sleep_opt(kill_at) => {
                    if let Some(run) = self.run.as_mut() {
                        run.kill_at = None;
                        let grace = Duration::from_millis(run.grace_ms);
                        if let Some(handle) = run.handle.as_mut() {
                            let note = handle.kill(grace);
                            self.system(&note);
                        }
                    }
                }
                Some(msg) = probe_rx.recv() => self.on_probe(msg).await,
            }
        }
    }

    /// A stop (or remove) cancels any pending retry or restart: the last word wins.
    fn stop_wins(&mut self) {
        self.retry_at = None;
        for r in self.restart_pending.drain(..) {
            let _ = r.send(Err(SupError::BadRequest(format!(
                "the restart of `{}` was cancelled by a stop",
                self.spec.name
            ))));
        }
    }

    /// A start by hand begins a clean slate; automatic restarts keep showing why the
    /// last run failed.
    fn clear_last_error(&self) {
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = None;
    }

    fn publish_view(&self) {
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        v.status = self.lc.status;
        v.restarts = self.lc.restarts;
        v.failures = self.lc.failures;
        let handle = self.run.as_ref().and_then(|r| r.handle.as_ref());
        v.pid = handle.and_then(|h| h.pid());
        v.container_id = handle.and_then(|h| h.container());
        if let Some(h) = handle {
            v.adopted = h.adopted();
        }
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start(reply) => {
                if self.run.is_some() || !self.lc.status.is_settled() {
                    let _ = reply.send(Err(SupError::Busy(
                        self.spec.name.clone(),
                        self.lc.status.as_str().into(),
                    )));
                    return;
                }
                self.start_replies.push(reply);
                self.clear_last_error();
                let a = self.lc.start();
                self.act(a).await;
            }
            Cmd::Stop(timeout, reply) => {
                // `stop --timeout` is for this stop only, not for the task's later stops.
                self.stop_timeout = timeout;
                self.stop_replies.push(reply);
                self.stop_wins();
                let before = self.lc.status;
                let a = self.lc.stop();
                self.act(a).await;
                self.stop_timeout = None;
                if before == TaskStatus::Crashed && self.lc.status == TaskStatus::Stopped {
                    // Stopped while waiting for a retry: no exit will announce it.
                    let run_id = self
                        .view
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .run_id
                        .clone();
                    self.emit(
                        Component::Task,
                        Level::Info,
                        EventType::Stop,
                        format!("task {} stopped", self.spec.name),
                        run_id.as_deref().unwrap_or(""),
                    );
                }
            }
            Cmd::Restart(reply) => {
                self.retry_at = None;
                if self.run.is_some() || !self.lc.status.is_settled() {
                    self.restart_pending.push(reply);
                    let a = self.lc.stop();
                    self.act(a).await;
                } else {
                    self.start_replies.push(reply);
                    self.clear_last_error();
                    let a = self.lc.start();
                    self.act(a).await;
                }
            }
            Cmd::Remove(reply) => {
                self.remove_reply = Some(reply);
                self.stop_wins();
                let a = self.lc.stop();
                self.act(a).await;
            }
            Cmd::Detach(reply) => {
                self.retry_at = None;
                if self.detach().await {
                    let _ = reply.send(());
                    // The actor ends with its run let go: nothing more may touch it.
                    self.detached = true;
                } else {
                    self.detach_reply = Some(reply);
                    let a = self.lc.stop();
                    self.act(a).await;
                }
            }
        }
    }

    /// Lets go of the live run, leaving it to its holder; false when it cannot outlive
    /// the daemon (it must be stopped instead). With no live run there is nothing to do.
    async fn detach(&mut self) -> bool {
        let Some(run) = self.run.as_mut() else {
            return self.lc.status.is_settled();
        };
        if !run.capture.can_detach() {
            return false;
        }
        if let Some(p) = run.probe.take() {
            p.abort();
        }
        if let Some(w) = run.watcher.take() {
            w.abort();
        }
        run.ingest.system(
            "the daemon stopped, leaving this run to its holder; the next daemon takes it back",
        );
        run.capture.detach().await;
        self.run = None;
        true
    }

    /// Takes back a run an earlier daemon left with its holder: the same process, its
    /// log going on from its checkpoint, its probe started again.
    fn reattach(&mut self, a: super::Attach) {
        let super::Attach {
            row,
            ingest,
            at,
            launched,
        } = a;
        let launched = match launched {
            // The kind took its run back itself (a followed file, from its position).
            Some(launched) => launched,
            None => {
                let Some(pid) = row.pid.map(|p| p as u32) else {
                    return;
                };
                let (socket, exit_file) =
                    super::run::holder_paths(&self.sup.holders_dir(), &row.run_id);
                let mut launched =
                    super::run::held(&row.run_id, socket, exit_file, pid, at.streams);
                launched.note = format!(
                    "taken back by a new daemon: pid {pid} ran on under its holder, and the log goes on after seq {}",
                    at.last_seq
                );
                launched
            }
        };
        let log = ingest.log().clone();
        {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            v.run_id = Some(row.run_id.clone());
            v.log = Some(log.clone());
            v.started_at = Some(row.started_at);
            v.adopted = false;
        }
        let watcher = self.sup.watch_run(&self.spec, &row.run_id, &log);
        self.run = Some(LiveRun::new(row.run_id.clone(), ingest, log, watcher));
        let _ = self.lc.start();
        self.start_launched(launched, "took back");
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::None => {}
            Action::Spawn => {
                // `starting` is visible while the adoption probe or the spawn runs.
                self.publish_view();
                self.spawn_run().await
            }
            Action::RestartAfter { delay, .. } => self.retry_at = Some(Instant::now() + delay),
            Action::Terminate => Box::pin(self.terminate("stop requested")).await,
        }
    }

    /// Stops the run: asks it to end now (SIGTERM to a child's process group) and kills
    /// it after the stop timeout; a run with nothing of ours to stop is released at once.
    async fn terminate(&mut self, why: &str) {
        let grace_ms = self
            .stop_timeout
            .map_or(self.spec.stop_timeout_ms, |t| t.as_millis() as u64);
        let Some(run) = self.run.as_mut() else { return };
        if run.kill_at.is_some() {
            return;
        }
        let Some(handle) = run.handle.as_mut() else {
            return;
        };
        match handle.terminate(Duration::from_millis(grace_ms)) {
            Stopping::Released(note) => {
                // A failed probe already said why in the log.
                let failing = run.failing.take();
                if failing.is_none() {
                    self.system(&format!("{why}: {note}"));
                }
                Box::pin(self.end_run(End::Released, failing)).await;
            }
            Stopping::Asked(note) => {
                run.kill_at = Some(Instant::now() + Duration::from_millis(grace_ms));
                run.grace_ms = grace_ms;
                let run_id = run.run_id.clone();
                self.system(&format!("{why}: {note}"));
                // Viewers of the task's state (the llama status object) see `stopping`
                // now, not only when the exit comes.
                self.emit(
                    Component::Task,
                    Level::Info,
                    EventType::Status,
                    format!("task {} stopping: {why}", self.spec.name),
                    &run_id,
                );
            }
        }
    }

    fn system(&self, text: &str) {
        if let Some(run) = &self.run {
            run.ingest.system(text);
        }
    }

    fn emit(
        &self,
        component: Component,
        level: Level,
        t: EventType,
        msg: String,
        run_id: &str,
    ) -> EventKind {
        // Whoever reacts to the event reads the task's state: it must be current.
        self.publish_view();
        let mut kind = EventKind::new(component, level, t, msg);
        if t == EventType::Status && component == Component::Task {
            // What the task's state became: alerts resolve on `ready`.
            kind = kind.with("status", self.lc.status.as_str());
        }
        self.sup.bus.emit(kind.clone(), &self.spec.name, run_id);
        kind
    }

    /// Starts a run: its log and registry row, then adoption of a server already
    /// answering, else the launch of the command and the capture of its output.
    async fn spawn_run(&mut self) {
        let previous = self
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .run_id
            .clone();
        let Some(run) = self.prepare_run() else {
            return;
        };
        let run = match self.try_adopt(run).await {
            Ok(()) => return,
            Err(run) => run,
        };
        let holders = self.sup.holders_dir();
        let log_dir = self.sup.log_dir(&self.spec.name);
        let place = super::run::RunPlace {
            run_id: &run.run_id,
            holders: &holders,
            log_dir: &log_dir,
            previous: previous.as_deref(),
        };
        // A kind whose runs are not a local command (a followed file) starts them itself.
        let launched = match self.sup.kinds.of(&self.spec).ok().flatten() {
            Some(kind) => kind.launch_async(&self.spec, &place).await,
            None => None,
        }
        .unwrap_or_else(|| self.sup.launcher.launch(&self.spec, &place));
        self.run = Some(run);
        match launched {
            Ok(launched) => self.start_launched(launched, "started"),
            Err(msg) => self.launch_failed(msg).await,
        }
    }

    /// Creates the run's log and its registry row (`running`), and shows it as the
    /// task's current run. `None` (the start failed and was answered) when either fails.
    fn prepare_run(&mut self) -> Option<LiveRun> {
        let sup = self.sup.clone();
        let run_id = crate::util::new_run_id();
        let dir = sup.log_dir(&self.spec.name);
        let started_at = crate::util::unix_now();
        let attempt = sup.registry.next_attempt(&self.spec.name).unwrap_or(1);
        let ingest = match Ingest::create(&dir, &run_id, &sup.settings.log) {
            Ok(i) => i,
            Err(e) => {
                let msg = format!("cannot create the run log in {}: {e}", dir.display());
                self.fail_start(msg);
                return None;
            }
        };
        let log = ingest.log().clone();
        let row = RunRow {
            run_id: run_id.clone(),
            task: self.spec.name.clone(),
            attempt,
            status: RunStatus::Running,
            pid: None,
            started_at,
            ended_at: None,
            exit_code: None,
            signal: None,
            log_path: log.log_path.display().to_string(),
            error_message: None,
            lines: 0,
            bytes: 0,
            truncated: false,
            gap: None,
            pid_start: None,
            container_id: None,
        };
        if let Err(e) = sup.registry.insert_run(&row) {
            self.fail_start(format!("cannot record the run in the registry: {e}"));
            return None;
        }
        {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            v.run_id = Some(run_id.clone());
            v.log = Some(log.clone());
            v.started_at = Some(started_at);
            v.adopted = false;
        }
        let watcher = sup.watch_run(&self.spec, &run_id, &log);
        Some(LiveRun::new(run_id, ingest, log, watcher))
    }

    /// Adopts a healthy server already answering on the task's address, when the task
    /// allows it; gives the run back otherwise.
    async fn try_adopt(&mut self, run: LiveRun) -> Result<(), LiveRun> {
        let Some(hc) = self.spec.health.clone().filter(|h| h.adopt) else {
            return Err(run);
        };
        let client = reqwest::Client::new();
        let timeout = Duration::from_millis(hc.timeout_ms);
        if probe::check(&client, &hc.url, timeout).await.is_err() {
            return Err(run);
        }
        let run_id = run.run_id.clone();
        self.run = Some(LiveRun {
            handle: Some(Box::new(Adopted)),
            ..run
        });
        self.system(&format!(
            "adopted the server already answering GET {} with 200 (no child started)",
            hc.url
        ));
        self.lc.spawned(self.origin.elapsed(), true);
        if let Some(r) = self.run.as_mut() {
            r.probe = Some(probe::spawn(
                hc,
                run_id.clone(),
                true,
                self.probe_tx.clone(),
            ));
        }
        self.emit(
            Component::Task,
            Level::Info,
            EventType::Start,
            format!("task {} adopted a running server", self.spec.name),
            &run_id,
        );
        self.reply_started(Ok(Started {
            run_id,
            spawn_error: None,
        }));
        Ok(())
    }

    /// The command could not start: the run ends `failed` with the reason.
    async fn launch_failed(&mut self, msg: String) {
        let run_id = self.current_run_id();
        self.system(&msg);
        self.lc.spawn_failed();
        self.emit(
            Component::Task,
            Level::Error,
            EventType::Error,
            msg.clone(),
            &run_id,
        );
        self.finish_with(None, None, RunStatus::Failed, Some(msg.clone()))
            .await;
        self.reply_started(Ok(Started {
            run_id,
            spawn_error: Some(msg),
        }));
    }

    /// The run started: it is recorded, its output captured, its probe started, and the
    /// start announced.
    fn start_launched(&mut self, launched: Launched, verb: &str) {
        let Launched {
            handle,
            source,
            what,
            note,
        } = launched;
        let run_id = self.current_run_id();
        if let Some(pid) = handle.pid() {
            let start = super::process::start_time(pid).map(|t| t as i64);
            let _ = self.sup.registry.set_pid(&run_id, pid as i64, start);
        }
        if let Some(id) = handle.container() {
            let _ = self.sup.registry.set_container(&run_id, &id);
        }
        if let Some(r) = self.run.as_mut() {
            r.handle = Some(handle);
        }
        // The note comes first in the log, before anything the run printed.
        self.system(&note);
        self.attach_capture(source);
        let ready = self.spec.health.is_none();
        self.lc.spawned(self.origin.elapsed(), ready);
        if let Some(hc) = self.spec.health.clone() {
            if let Some(r) = self.run.as_mut() {
                r.probe = Some(probe::spawn(
                    hc,
                    run_id.clone(),
                    false,
                    self.probe_tx.clone(),
                ));
            }
        }
        self.emit(
            Component::Task,
            Level::Info,
            EventType::Start,
            format!("task {} {verb} {what}", self.spec.name),
            &run_id,
        );
        self.reply_started(Ok(Started {
            run_id,
            spawn_error: None,
        }));
    }

    /// Starts the run's source on its ingest stage.
    fn attach_capture(&mut self, source: Box<dyn crate::sources::Source>) {
        let Some(run) = self.run.as_mut() else { return };
        match source.start(run.ingest.clone()) {
            Ok(capture) => run.capture = capture,
            Err(e) => {
                tracing::error!(task = %self.spec.name, "cannot start the capture: {e}");
                self.system(&format!("the output of this run is not captured: {e}"));
            }
        }
    }

    fn current_run_id(&self) -> String {
        self.run
            .as_ref()
            .map(|r| r.run_id.clone())
            .unwrap_or_default()
    }

    fn reply_started(&mut self, r: StartReply) {
        for reply in self.start_replies.drain(..) {
            let _ = reply.send(match &r {
                Ok(started) => Ok(started.clone()),
                Err(SupError::Internal(m)) => Err(SupError::Internal(m.clone())),
                Err(e) => Err(SupError::BadRequest(e.to_string())),
            });
        }
    }

    /// The run could not even be set up (no log, no registry row).
    fn fail_start(&mut self, msg: String) {
        tracing::error!(task = %self.spec.name, "{msg}");
        self.lc.spawn_failed();
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = Some(msg.clone());
        // The daemon's own failure (no log, no registry row): a 5xx, not the request's fault.
        self.reply_started(Err(SupError::Internal(msg)));
    }

    async fn on_probe(&mut self, msg: ProbeMsg) {
        let current = self.run.as_ref().map(|r| r.run_id.clone());
        match msg {
            ProbeMsg::Ready { run_id } if Some(&run_id) == current.as_ref() => {
                self.lc.ready();
                let url = self
                    .spec
                    .health
                    .as_ref()
                    .map(|h| h.url.clone())
                    .unwrap_or_default();
                self.system(&format!("ready: GET {url} answered 200"));
                self.emit(
                    Component::Task,
                    Level::Info,
                    EventType::Status,
                    format!("task {} is ready", self.spec.name),
                    &run_id,
                );
            }
            ProbeMsg::NotReady { run_id, reason } | ProbeMsg::Dead { run_id, reason }
                if Some(&run_id) == current.as_ref() =>
            {
                self.system(&reason);
                self.emit(
                    Component::Task,
                    Level::Error,
                    EventType::Error,
                    reason.clone(),
                    &run_id,
                );
                // The run is asked to end (and its exit then counts as a failure), or,
                // with nothing of ours to stop (an adopted server), released at once.
                if let Some(r) = self.run.as_mut() {
                    r.failing = Some(reason.clone());
                    self.terminate("health check failed").await;
                }
            }
            _ => {} // a probe of an earlier run
        }
    }

    async fn on_exit(&mut self, end: End) {
        let failing = self.run.as_mut().and_then(|r| r.failing.take());
        self.end_run(end, failing).await;
    }

    /// After the run's end: its output drained, the policy's decision, the run's final
    /// message, the registry row, the events, then what the policy decided.
    async fn end_run(&mut self, end: End, failing: Option<String>) {
        if !self.drain_run().await {
            return;
        }
        let stopping = self.lc.stop_requested();
        let (policy_exit, action) = self.decide(end, failing.is_some());
        let text = self
            .run
            .as_ref()
            .and_then(|r| r.handle.as_ref())
            .map(|h| h.end_text(end, failing.is_some()))
            .unwrap_or_default();
        self.system(&text);
        let status = if stopping {
            RunStatus::Killed
        } else if policy_exit.success() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        let message = self.end_message(status, &text, failing.as_deref());
        let run_id = self.current_run_id();
        let level = if status == RunStatus::Failed {
            Level::Warning
        } else {
            Level::Info
        };
        let mut events = vec![(
            level,
            EventType::Exit,
            format!("task {} {text}", self.spec.name),
        )];
        events.extend(self.note_next_step(&action));
        let (code, signal) = match end {
            End::Released => (None, None),
            End::Exited(Exit::Code(c)) => (Some(c), None),
            End::Exited(Exit::Signal(s)) => (None, Some(s)),
        };
        // The registry and the task's view are final before anyone hears of the end.
        self.finish_with(code, signal, status, message).await;
        for (level, t, msg) in events {
            self.emit(Component::Task, level, t, msg, &run_id);
        }
        self.act(action).await;
    }

    /// Stops the probe, takes down what the run left behind, and waits until its source
    /// handed in everything (for a child: its pipes closed, or the grace after the exit
    /// ended). False when there is no live run.
    async fn drain_run(&mut self) -> bool {
        let Some(run) = self.run.as_mut() else {
            return false;
        };
        if let Some(p) = run.probe.take() {
            p.abort();
        }
        if let Some(h) = run.handle.as_mut() {
            h.cleanup();
        }
        run.capture.run_ended();
        run.capture.drained().await;
        true
    }

    /// The restart policy's decision on the end; a failed probe makes even a clean exit
    /// a failure. Returns the exit the policy judged, and its action.
    fn decide(&mut self, end: End, failing: bool) -> (Exit, Action) {
        let exit = match end {
            End::Exited(exit) => exit,
            End::Released => Exit::Code(0),
        };
        let policy_exit = if failing && exit.success() {
            Exit::Code(1)
        } else {
            exit
        };
        let jitter = (crate::util::random_u64() % 2001) as f64 / 1000.0 - 1.0;
        let action = self.lc.exited(policy_exit, self.origin.elapsed(), jitter);
        (policy_exit, action)
    }

    /// The run's error message: why it was stopped or failed, with its last stderr lines
    /// where the task's kind wants them quoted.
    fn end_message(&self, status: RunStatus, text: &str, failing: Option<&str>) -> Option<String> {
        let quotes_stderr = match self.sup.kinds.of(&self.spec) {
            Ok(Some(kind)) => kind.quotes_stderr(),
            _ => true,
        };
        match (status, failing) {
            (RunStatus::Succeeded, _) => None,
            (RunStatus::Killed, _) => Some(format!("stopped by request ({text})")),
            (_, Some(reason)) => Some(format!("{reason} ({text})")),
            // A server that logs everything to stderr says why through its kind's
            // watcher instead (see `finish_with`).
            _ if !quotes_stderr => Some(text.to_string()),
            _ => {
                let tail = self
                    .run
                    .as_ref()
                    .map(|r| r.ingest.stderr_tail())
                    .unwrap_or_default();
                Some(if tail.is_empty() {
                    text.to_string()
                } else {
                    format!("{text}; last stderr: {}", tail.join(" | "))
                })
            }
        }
    }

    /// Notes in the log what comes next (a restart, or giving up), and returns its event.
    fn note_next_step(&self, action: &Action) -> Option<(Level, EventType, String)> {
        match action {
            Action::RestartAfter { delay, retry, of } => {
                let note = if *retry == 0 {
                    format!(
                        "restarting in {} (clean exit, restart always)",
                        human_delay(*delay)
                    )
                } else {
                    format!("restarting in {} (retry {retry}/{of})", human_delay(*delay))
                };
                self.system(&note);
                Some((
                    Level::Warning,
                    EventType::Restart,
                    format!("task {} {note}", self.spec.name),
                ))
            }
            _ if self.lc.status == TaskStatus::Error => {
                let note = format!(
                    "giving up after {} consecutive failures; start it again with `corral restart {}`",
                    self.lc.failures, self.spec.name
                );
                self.system(&note);
                Some((
                    Level::Error,
                    EventType::Error,
                    format!("task {} {note}", self.spec.name),
                ))
            }
            _ => None,
        }
    }

    /// Ends the run: the log gets its end mark, the registry its final row.
    async fn finish_with(
        &mut self,
        code: Option<i32>,
        signal: Option<i32>,
        status: RunStatus,
        message: Option<String>,
    ) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        let end = RunEnd {
            status,
            exit_code: code,
            signal,
        };
        let io_error = run.ingest.take_io_error().map(|e| e.to_string());
        let gap = run.ingest.gap();
        run.log.finish(end);
        // The watcher (a log parser) ends once it has read the end mark; a parser may
        // know better why a server died (e.g. the model failed to load).
        let mut message = message;
        if let Some(w) = run.watcher.take() {
            let reason = tokio::time::timeout(Duration::from_secs(5), w).await;
            if let (Ok(Ok(Some(reason))), Some(m)) = (reason, message.as_mut()) {
                if status == RunStatus::Failed {
                    *m = format!("{reason} ({m})");
                }
            }
        }
        let stats = run.log.stats();
        let message = match (message, io_error) {
            (Some(m), Some(io)) => Some(format!("{m}; the log could not be fully written: {io}")),
            (None, Some(io)) => Some(format!("the log could not be fully written: {io}")),
            (m, None) => m,
        };
        let outcome = RunOutcome {
            status,
            ended_at: crate::util::unix_now(),
            exit_code: code,
            signal,
            error_message: message.clone(),
            lines: stats.lines,
            bytes: stats.bytes,
            gap: gap.map(|g| [g.from, g.to, g.off_from, g.off_to]),
            write_failed: stats.write_errors > 0,
        };
        record_end(self.sup.clone(), run.run_id.clone(), outcome);
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        if status == RunStatus::Failed {
            v.last_error = message;
        }
        v.pid = None;
        v.container_id = None;
        // A finished run holds no open files: a follower of it opens them (shared with
        // every other follower of that run) and lets go when it leaves.
        v.log = None;
    }
}
