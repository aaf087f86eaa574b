//! The task actor: one tokio task per supervised task. It alone spawns, signals and
//! reaps the task's processes; the API talks to it through [`Cmd`]s.

use super::probe::{self, ProbeMsg};
use super::process;
use super::{Cmd, StartReply, Started, SupError, Supervisor, TaskSpec, View};
use crate::logbook::{LogWriter, RunEnd, RunLog};
use crate::registry::{RunOutcome, RunRow};
use crate::sources::child::{self as capture, Capture, SharedCapture};
use corral_core::event::{Component, EventKind, EventType, Level};
use corral_core::policy::{Action, Exit, Lifecycle, RunStatus, TaskStatus};
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub(super) fn spawn_actor(
    sup: Arc<Supervisor>,
    spec: TaskSpec,
    view: Arc<Mutex<View>>,
    rx: mpsc::UnboundedReceiver<Cmd>,
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
    };
    tokio::spawn(actor.main(rx, probe_rx));
}

/// One live run.
struct LiveRun {
    run_id: String,
    /// `None` for an adopted server.
    child: Option<tokio::process::Child>,
    pid: u32,
    capture: SharedCapture,
    exited: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    log: Arc<RunLog>,
    kill_at: Option<Instant>,
    /// The grace between SIGTERM and SIGKILL of the stop in progress.
    grace_ms: u64,
    probe: Option<tokio::task::JoinHandle<()>>,
    /// Why corral is killing this run (a failed probe), so the exit counts as a failure.
    failing: Option<String>,
    watcher: Option<tokio::task::JoinHandle<Option<String>>>,
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
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_child(run: &mut Option<LiveRun>) -> std::io::Result<std::process::ExitStatus> {
    match run.as_mut().and_then(|r| r.child.as_mut()) {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
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

fn exit_text(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exited with code {c}"),
        Exit::Signal(s) => format!("killed by signal {s} ({})", process::signal_name(s)),
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
            self.publish_view();
            if self.run.is_none() && self.lc.status.is_settled() {
                for r in self.stop_replies.drain(..) {
                    let _ = r.send(());
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
                status = wait_child(&mut self.run) => {
                    let exit = match status {
                        Ok(s) => match (s.code(), s.signal()) {
                            (Some(c), _) => Exit::Code(c),
                            (None, Some(sig)) => Exit::Signal(sig),
                            _ => Exit::Code(-1),
                        },
                        Err(e) => {
                            tracing::error!(task = %self.spec.name, "waiting for the task's process: {e}");
                            Exit::Code(-1)
                        }
                    };
                    self.on_exit(exit).await;
                }
                _ = sleep_opt(self.retry_at) => {
                    self.retry_at = None;
                    let a = self.lc.retry_due();
                    self.act(a).await;
                }
                _ = sleep_opt(kill_at) => {
                    if let Some(run) = self.run.as_mut() {
                        run.kill_at = None;
                        let (pid, grace_ms) = (run.pid, run.grace_ms);
                        self.system(&format!(
                            "still running {} after SIGTERM: SIGKILL to process group {pid}",
                            human_ms(grace_ms)
                        ));
                        process::signal_group(pid, libc::SIGKILL);
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
        if let Some(run) = &self.run {
            v.pid = (run.pid != 0).then_some(run.pid);
            v.adopted = run.child.is_none();
        } else {
            v.pid = None;
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
        }
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

    /// SIGTERM to the run's process group now, SIGKILL after the stop timeout.
    async fn terminate(&mut self, why: &str) {
        let grace_ms = self
            .stop_timeout
            .map_or(self.spec.stop_timeout_ms, |t| t.as_millis() as u64);
        let timeout = human_ms(grace_ms);
        let Some(run) = self.run.as_mut() else { return };
        if run.child.is_none() {
            // An adopted server is not ours to kill: release it.
            self.system(&format!(
                "{why}: releasing the adopted server (left running)"
            ));
            Box::pin(self.on_exit_inner(Exit::Code(0), None)).await;
            return;
        }
        if run.kill_at.is_some() {
            return;
        }
        run.kill_at = Some(Instant::now() + Duration::from_millis(grace_ms));
        run.grace_ms = grace_ms;
        let pid = run.pid;
        let run_id = run.run_id.clone();
        self.system(&format!(
            "{why}: SIGTERM to process group {pid} (SIGKILL after {timeout})"
        ));
        process::signal_group(pid, libc::SIGTERM);
        // Viewers of the task's state (the llama status object) see `stopping` now,
        // not only when the exit comes.
        self.emit(
            Component::Task,
            Level::Info,
            EventType::Status,
            format!("task {} stopping: {why}", self.spec.name),
            &run_id,
        );
    }

    fn system(&self, text: &str) {
        if let Some(run) = &self.run {
            capture::lock(&run.capture)
                .writer
                .system(text, capture::now_micros());
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
        let kind = EventKind::new(component, level, t, msg);
        self.sup.bus.emit(kind.clone(), &self.spec.name, run_id);
        kind
    }

    async fn spawn_run(&mut self) {
        let sup = self.sup.clone();
        let run_id = crate::util::new_run_id();
        let dir = sup.log_dir(&self.spec.name);
        let started_at = crate::util::unix_now();
        let attempt = sup.registry.next_attempt(&self.spec.name).unwrap_or(1);
        let (writer, log) = match LogWriter::create(&dir, &run_id, &sup.settings.log) {
            Ok(w) => w,
            Err(e) => {
                let msg = format!("cannot create the run log in {}: {e}", dir.display());
                self.fail_start(msg);
                return;
            }
        };
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
        };
        if let Err(e) = sup.registry.insert_run(&row) {
            self.fail_start(format!("cannot record the run in the registry: {e}"));
            return;
        }
        {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            v.run_id = Some(run_id.clone());
            v.log = Some(log.clone());
            v.started_at = Some(started_at);
            v.adopted = false;
        }
        let capture: SharedCapture = Arc::new(Mutex::new(Capture {
            writer,
            stderr_tail: VecDeque::new(),
        }));
        let mut run = LiveRun {
            run_id: run_id.clone(),
            child: None,
            pid: 0,
            capture: capture.clone(),
            exited: Arc::new(AtomicBool::new(false)),
            thread: None,
            log: log.clone(),
            kill_at: None,
            grace_ms: 0,
            probe: None,
            failing: None,
            watcher: sup.kinds.of(&self.spec).ok().flatten().and_then(|k| {
                k.watch(super::kind::RunContext {
                    spec: &self.spec,
                    run_id: &run_id,
                    log: log.clone(),
                    bus: sup.bus.clone(),
                })
            }),
        };

        // Adopt a healthy server already answering on the configured address.
        if let Some(hc) = self.spec.health.clone().filter(|h| h.adopt) {
            let client = reqwest::Client::new();
            if probe::check(&client, &hc.url, Duration::from_millis(hc.timeout_ms))
                .await
                .is_ok()
            {
                self.run = Some(run);
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
                self.view.lock().unwrap_or_else(|e| e.into_inner()).adopted = true;
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
                return;
            }
        }

        let env: Vec<(String, String)> = self.spec.env.clone().into_iter().collect();
        let spawned = process::spawn(
            &self.spec.command,
            self.spec.cwd.as_deref().map(Path::new),
            &env,
        );
        let sp = match spawned {
            Ok(sp) => sp,
            Err(e) => {
                let prog = self.spec.command.first().cloned().unwrap_or_default();
                let hint = match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "; check that the command exists and is on PATH (or give its full path)"
                    }
                    std::io::ErrorKind::PermissionDenied => "; check that the file is executable",
                    _ => "",
                };
                let cwd_note = self
                    .spec
                    .cwd
                    .as_deref()
                    .filter(|d| !Path::new(d).is_dir())
                    .map(|d| format!(" (the working directory {d} does not exist)"))
                    .unwrap_or_default();
                let msg = format!("failed to start `{prog}`: {e}{cwd_note}{hint}");
                self.run = Some(run);
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
                return;
            }
        };
        run.pid = sp.pid;
        run.child = Some(sp.child);
        let _ = sup.registry.set_pid(
            &run_id,
            sp.pid as i64,
            process::start_time(sp.pid).map(|t| t as i64),
        );
        self.run = Some(run);
        self.system(&format!(
            "started pid {}: {}",
            sp.pid,
            super::shell_words(&self.spec.command)
        ));
        let thread = capture::start(
            capture,
            sp.stdout,
            sp.stderr,
            sup.settings.log.max_record,
            self.run
                .as_ref()
                .map(|r| r.exited.clone())
                .unwrap_or_default(),
        );
        match thread {
            Ok(t) => {
                if let Some(r) = self.run.as_mut() {
                    r.thread = Some(t);
                }
            }
            Err(e) => tracing::error!(task = %self.spec.name, "cannot start the capture: {e}"),
        }
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
            format!("task {} started pid {}", self.spec.name, sp.pid),
            &run_id,
        );
        self.reply_started(Ok(Started {
            run_id,
            spawn_error: None,
        }));
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
                let adopted = self.run.as_ref().is_some_and(|r| r.child.is_none());
                if adopted {
                    Box::pin(self.on_exit_inner(Exit::Code(1), Some(reason))).await;
                } else if let Some(r) = self.run.as_mut() {
                    r.failing = Some(reason.clone());
                    self.terminate("health check failed").await;
                }
            }
            _ => {} // a probe of an earlier run
        }
    }

    async fn on_exit(&mut self, exit: Exit) {
        let failing = self.run.as_mut().and_then(|r| r.failing.take());
        self.on_exit_inner(exit, failing).await;
    }

    async fn on_exit_inner(&mut self, exit: Exit, failing: Option<String>) {
        let Some(run) = self.run.as_mut() else { return };
        run.exited.store(true, Ordering::Release);
        if let Some(p) = run.probe.take() {
            p.abort();
        }
        if run.child.is_some() {
            // The group must not outlive its leader: stragglers would hold ports and pipes.
            process::signal_group(run.pid, libc::SIGKILL);
        }
        if let Some(t) = run.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let stopping = self.lc.stop_requested();
        let adopted = run.child.is_none();
        let jitter = (crate::util::random_u64() % 2001) as f64 / 1000.0 - 1.0;
        // A failed probe makes even a clean exit a failure.
        let policy_exit = if failing.is_some() && exit.success() {
            Exit::Code(1)
        } else {
            exit
        };
        let action = self.lc.exited(policy_exit, self.origin.elapsed(), jitter);
        let text = if adopted {
            match &failing {
                Some(_) => "the adopted server stopped answering".to_string(),
                None => "released the adopted server".to_string(),
            }
        } else {
            exit_text(exit)
        };
        self.system(&text);
        let status = if stopping {
            RunStatus::Killed
        } else if policy_exit.success() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        let quotes_stderr = match self.sup.kinds.of(&self.spec) {
            Ok(Some(kind)) => kind.quotes_stderr(),
            _ => true,
        };
        let message = match (status, &failing) {
            (RunStatus::Succeeded, _) => None,
            (RunStatus::Killed, _) => Some(format!("stopped by request ({text})")),
            (_, Some(reason)) => Some(format!("{reason} ({text})")),
            // A server that logs everything to stderr says why through its kind's
            // watcher instead (see `finish_with`).
            _ if !quotes_stderr => Some(text.clone()),
            _ => {
                let tail = {
                    let c = capture::lock(&self.run.as_ref().expect("live run").capture);
                    c.stderr_tail.iter().cloned().collect::<Vec<_>>()
                };
                Some(if tail.is_empty() {
                    text.clone()
                } else {
                    format!("{text}; last stderr: {}", tail.join(" | "))
                })
            }
        };
        let run_id = self
            .run
            .as_ref()
            .map(|r| r.run_id.clone())
            .unwrap_or_default();
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
        match &action {
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
                events.push((
                    Level::Warning,
                    EventType::Restart,
                    format!("task {} {note}", self.spec.name),
                ));
            }
            _ if self.lc.status == TaskStatus::Error => {
                let note = format!(
                    "giving up after {} consecutive failures; start it again with `corral restart {}`",
                    self.lc.failures, self.spec.name
                );
                self.system(&note);
                events.push((
                    Level::Error,
                    EventType::Error,
                    format!("task {} {note}", self.spec.name),
                ));
            }
            _ => {}
        }
        let (code, signal) = match exit {
            _ if adopted => (None, None),
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(s) => (None, Some(s)),
        };
        // The registry and the task's view are final before anyone hears of the exit.
        self.finish_with(code, signal, status, message).await;
        for (level, t, msg) in events {
            self.emit(Component::Task, level, t, msg, &run_id);
        }
        self.act(action).await;
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
        let (gap, io_error) = {
            let mut c = capture::lock(&run.capture);
            let io = c.writer.io_error.take().map(|e| e.to_string());
            (c.writer.gap(), io)
        };
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
        };
        if let Err(e) = self.sup.registry.finish_run(&run.run_id, &outcome) {
            tracing::error!(run_id = %run.run_id, "recording the end of the run: {e}");
        }
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        if status == RunStatus::Failed {
            v.last_error = message;
        }
        v.pid = None;
    }
}
