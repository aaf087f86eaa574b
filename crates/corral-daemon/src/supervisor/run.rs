//! What a run is, as the task actor drives it: a [`RunHandle`] says how the run is stopped
//! and how its end is known, whatever runs (a local child, an adopted server, and next a
//! followed file, a remote command, a container). A [`Launcher`] starts a run: it gives
//! the handle and the run's log [`Source`], which the actor starts once the run's first
//! note is in the log.
//!
//! Two handles live here: [`ChildRun`] (a process of ours, in its own process group:
//! SIGTERM to the group, SIGKILL after the grace, the rest of the group killed after the
//! leader's exit) and [`Adopted`] (a server corral found running: no process of ours,
//! released on stop, left running).

use super::process;
use crate::sources::child::Pipes;
use crate::sources::Source;
use corral_client::wire::TaskSpec;
use corral_core::policy::Exit;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a run came to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// What it ran ended, with this status.
    Exited(Exit),
    /// corral let go of it (an adopted server on stop, or when its probe failed); whatever
    /// it is keeps running.
    Released,
}

/// What a stop request did to a run.
pub enum Stopping {
    /// It was asked to end (`SIGTERM to process group 12 (SIGKILL after 5s)`); the end
    /// comes through [`RunHandle::wait`], or [`RunHandle::kill`] after the grace.
    Asked(String),
    /// Nothing of ours runs (`releasing the adopted server (left running)`): the run ends
    /// now, [`End::Released`].
    Released(String),
}

/// A live run, as the supervisor stops it and learns of its end.
pub trait RunHandle: Send {
    /// The process id shown for the run and recorded in the registry, when it is a local
    /// process of ours.
    fn pid(&self) -> Option<u32>;

    /// The container the run is, when it is one (its id, as the engine knows it): kept
    /// in the run's registry row.
    fn container(&self) -> Option<String> {
        None
    }

    /// Whether the run is a server corral found running rather than started.
    fn adopted(&self) -> bool {
        false
    }

    /// Starts a stop; `grace` is how long it may take before [`RunHandle::kill`].
    fn terminate(&mut self, grace: Duration) -> Stopping;

    /// The grace after [`RunHandle::terminate`] ran out: ends the run by force. The note
    /// for the log says what was done.
    fn kill(&mut self, grace: Duration) -> String;

    /// Resolves when what the run runs ended. Cancel-safe: the actor polls it again after
    /// every other event. A handle with nothing to wait for never resolves.
    fn wait(&mut self) -> BoxFuture<'_, Exit>;

    /// After the end: takes down what the run left behind (for a child, the rest of its
    /// process group, which would otherwise hold ports and pipes).
    fn cleanup(&mut self) {}

    /// The note for the log and the exit event: `exited with code 3`.
    fn end_text(&self, end: End, failing: bool) -> String;
}

/// A run started by a [`Launcher`].
pub struct Launched {
    pub handle: Box<dyn RunHandle>,
    /// Where the run's output comes from; started by the actor after the `started` note.
    pub source: Box<dyn Source>,
    /// What started, for the start event: `pid 123`.
    pub what: String,
    /// The note for the run's log: `started pid 123: sh -c …`.
    pub note: String,
}

/// Which run a launch is for.
pub struct RunPlace<'a> {
    pub run_id: &'a str,
    /// Where the run's holder keeps its socket and exit file (`<home>/holders`).
    pub holders: &'a Path,
    /// Where the task's run logs are (`<home>/runs/<task>/logs`).
    pub log_dir: &'a Path,
    /// The task's run before this one, if any: a source that keeps a position (a
    /// followed file) goes on from where it stopped.
    pub previous: Option<&'a str>,
}

/// Starts runs of a task.
pub trait Launcher: Send + Sync + 'static {
    /// Starts a run of `spec`. The error is the message for the run and the user: what
    /// failed and what to check.
    fn launch(&self, spec: &TaskSpec, run: &RunPlace) -> Result<Launched, String>;
}

/// Launches the task's command as a local child in its own process group, read by the
/// daemon itself: the run ends with the daemon. For embedding and tests; `serve` runs
/// every task through a holder ([`HeldLauncher`]).
pub struct ChildLauncher;

impl Launcher for ChildLauncher {
    fn launch(&self, spec: &TaskSpec, _run: &RunPlace) -> Result<Launched, String> {
        let env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
        let sp = process::spawn(&spec.command, spec.cwd.as_deref().map(Path::new), &env)
            .map_err(|e| spawn_error(spec, &e))?;
        Ok(Launched {
            what: format!("pid {}", sp.pid),
            note: format!(
                "started pid {}: {}",
                sp.pid,
                super::display_command(&spec.command)
            ),
            handle: Box::new(ChildRun {
                child: sp.child,
                pid: sp.pid,
            }),
            source: Box::new(Pipes {
                stdout: sp.stdout,
                stderr: sp.stderr,
            }),
        })
    }
}

/// Why a command could not start, and what to check.
fn spawn_error(spec: &TaskSpec, e: &std::io::Error) -> String {
    let prog = spec.command.first().cloned().unwrap_or_default();
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => {
            "; check that the command exists and is on PATH (or give its full path)"
        }
        std::io::ErrorKind::PermissionDenied => "; check that the file is executable",
        _ => "",
    };
    let cwd_note = spec
        .cwd
        .as_deref()
        .filter(|d| !Path::new(d).is_dir())
        .map(|d| format!(" (the working directory {d} does not exist)"))
        .unwrap_or_default();
    format!("failed to start `{prog}`: {e}{cwd_note}{hint}")
}

/// A child process of ours, leader of its own process group.
pub struct ChildRun {
    child: tokio::process::Child,
    pid: u32,
}

/// SIGTERM to a run's process group; the note says what comes after the grace.
fn terminate_group(pid: u32, grace: Duration) -> Stopping {
    process::signal_group(pid, libc::SIGTERM);
    Stopping::Asked(format!(
        "SIGTERM to process group {pid} (SIGKILL after {})",
        human_ms(grace)
    ))
}

/// SIGKILL to a run's process group after its grace ran out.
fn kill_group(pid: u32, grace: Duration) -> String {
    process::signal_group(pid, libc::SIGKILL);
    format!(
        "still running {} after SIGTERM: SIGKILL to process group {pid}",
        human_ms(grace)
    )
}

/// How a process of ours ended, for the log and the exit event.
pub(crate) fn process_end_text(end: End) -> String {
    match end {
        End::Exited(Exit::Code(c)) => format!("exited with code {c}"),
        End::Exited(Exit::Signal(s)) => {
            format!("killed by signal {s} ({})", process::signal_name(s))
        }
        End::Released => "released".to_string(),
    }
}

impl RunHandle for ChildRun {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn terminate(&mut self, grace: Duration) -> Stopping {
        terminate_group(self.pid, grace)
    }

    fn kill(&mut self, grace: Duration) -> String {
        kill_group(self.pid, grace)
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            match self.child.wait().await {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(sig)) => Exit::Signal(sig),
                    _ => Exit::Code(-1),
                },
                Err(e) => {
                    tracing::error!(pid = self.pid, "waiting for the task's process: {e}");
                    Exit::Code(-1)
                }
            }
        })
    }

    fn cleanup(&mut self) {
        process::signal_group(self.pid, libc::SIGKILL);
    }

    fn end_text(&self, end: End, _failing: bool) -> String {
        process_end_text(end)
    }
}

/// Launches the task's command under a holder process (`corral hold`, see
/// [`crate::holder`]): the holder is the child's parent and keeps its output and exit
/// status, so the run outlives this daemon and the next one takes it back.
pub struct HeldLauncher {
    /// The `corral` program that serves as the holder.
    pub program: std::path::PathBuf,
}

/// What the holder says first on its stdout: who it runs, or why it could not.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum HolderHello {
    Started(crate::holder::proto::Hello),
    Failed { error: String, errno: Option<i32> },
}

/// Longest path a Unix socket can be bound at (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where a run's holder keeps its socket and its exit file.
pub fn holder_paths(holders: &Path, run_id: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        holders.join(format!("{run_id}.sock")),
        holders.join(format!("{run_id}.exit")),
    )
}

impl Launcher for HeldLauncher {
    fn launch(&self, spec: &TaskSpec, run: &RunPlace) -> Result<Launched, String> {
        let (socket, exit_file) = holder_paths(run.holders, run.run_id);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "the holder socket {} is longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes): \
                 give the daemon a shorter --home",
                socket.display()
            ));
        }
        std::fs::create_dir_all(run.holders)
            .map_err(|e| format!("cannot create {}: {e}", run.holders.display()))?;
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg("hold")
            .arg("--run-id")
            .arg(run.run_id)
            .arg("--socket")
            .arg(&socket)
            .arg("--exit-file")
            .arg(&exit_file);
        if let Some(cwd) = &spec.cwd {
            cmd.arg("--cwd").arg(cwd);
        }
        cmd.arg("--").args(&spec.command);
        let env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
        process::hold(cmd, &env)
            // The holder is reaped whenever it ends (see `process::reap_holders`); a
            // daemon gone by then leaves that to init.
            .and_then(|(_pid, stdout)| process::first_line(stdout, Duration::from_secs(30)))
            .map_err(|e| {
                format!(
                    "cannot start the run's holder ({}): {e}",
                    self.program.display()
                )
            })
            .and_then(|line| match serde_json::from_str::<HolderHello>(&line) {
                Ok(HolderHello::Started(h)) => Ok(h),
                Ok(HolderHello::Failed { error, errno }) => Err(match errno {
                    Some(n) => spawn_error(spec, &std::io::Error::from_raw_os_error(n)),
                    None => format!(
                        "failed to start `{}`: {error}",
                        spec.command.first().cloned().unwrap_or_default()
                    ),
                }),
                Err(e) => Err(format!("the run's holder answered `{}` ({e})", line.trim())),
            })
            .map(|hello| {
                let mut launched = held(run.run_id, socket, exit_file, hello.pid, [0, 0]);
                launched.note = format!(
                    "started pid {}: {}",
                    hello.pid,
                    super::display_command(&spec.command)
                );
                launched
            })
    }
}

/// A run whose holder is at `socket`: its handle and its source, reading from `resume`
/// (the bytes of stdout and stderr the log already has).
pub fn held(
    run_id: &str,
    socket: std::path::PathBuf,
    exit_file: std::path::PathBuf,
    pid: u32,
    resume: [u64; 2],
) -> Launched {
    let (tx, rx) = tokio::sync::oneshot::channel();
    Launched {
        handle: Box::new(HeldRun {
            pid,
            exit: Some(rx),
        }),
        source: Box::new(crate::sources::held::Held {
            run_id: run_id.to_string(),
            socket,
            exit_file,
            resume,
            exit: tx,
        }),
        what: format!("pid {pid}"),
        note: format!("pid {pid}"),
    }
}

/// A child of a holder process, leader of its own process group. Signalled directly
/// (it is ours); its end comes from the holder, through the run's source.
pub struct HeldRun {
    pid: u32,
    exit: Option<tokio::sync::oneshot::Receiver<Exit>>,
}

impl RunHandle for HeldRun {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn terminate(&mut self, grace: Duration) -> Stopping {
        terminate_group(self.pid, grace)
    }

    fn kill(&mut self, grace: Duration) -> String {
        kill_group(self.pid, grace)
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let Some(rx) = self.exit.as_mut() else {
                return std::future::pending().await;
            };
            match rx.await {
                Ok(exit) => {
                    self.exit = None;
                    exit
                }
                // The source let go of the run (detached): no end to wait for.
                Err(_) => {
                    self.exit = None;
                    std::future::pending().await
                }
            }
        })
    }

    fn cleanup(&mut self) {
        process::signal_group(self.pid, libc::SIGKILL);
    }

    fn end_text(&self, end: End, _failing: bool) -> String {
        process_end_text(end)
    }
}

/// A healthy server found answering on the task's address: not ours to signal.
pub struct Adopted;

impl RunHandle for Adopted {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn adopted(&self) -> bool {
        true
    }

    fn terminate(&mut self, _grace: Duration) -> Stopping {
        Stopping::Released("releasing the adopted server (left running)".to_string())
    }

    fn kill(&mut self, _grace: Duration) -> String {
        "nothing to kill: the adopted server is not ours".to_string()
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(std::future::pending())
    }

    fn end_text(&self, _end: End, failing: bool) -> String {
        if failing {
            "the adopted server stopped answering".to_string()
        } else {
            "released the adopted server".to_string()
        }
    }
}

fn human_ms(d: Duration) -> String {
    super::task::human_ms(d.as_millis() as u64)
}

/// The seam, proved with a second source written for the tests: an in-memory "followed
/// file" whose bytes the test hands in. Its records go through the same ingest stage,
/// supervisor and logbook as a child's, and must come out the same way: dense seqs, the
/// `file` stream, the source's own timestamps, the end mark and the registry row.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, ObserverConfig};
    use crate::logbook::{Ingest, LogConfig, RunEnd};
    use crate::registry::Registry;
    use crate::sources::Capture;
    use crate::supervisor::kind::Kinds;
    use crate::supervisor::{Settings, Supervisor};
    use corral_core::policy::RunStatus;
    use corral_core::record::{Stream, WireRecord};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;

    /// What the test hands the in-memory file.
    enum Chunk {
        Bytes(&'static [u8], Option<u64>),
        /// The file ended (the source reads no more, and the run ends by itself).
        Eof,
        /// The run was stopped: the source stops reading.
        Stop,
    }

    /// Bytes from the test, on the `file` channel, read by a thread of its own.
    struct MemorySource {
        rx: mpsc::Receiver<Chunk>,
        stop: mpsc::Sender<Chunk>,
        eof: oneshot::Sender<Exit>,
    }

    impl Source for MemorySource {
        fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture> {
            let MemorySource { rx, stop, eof } = *self;
            let (done, drained) = oneshot::channel();
            std::thread::spawn(move || {
                let mut file = ingest.channel(Stream::File);
                let ended_by_itself = loop {
                    match rx.recv() {
                        Ok(Chunk::Bytes(b, ts)) => file.push(b, ts),
                        Ok(Chunk::Eof) => break true,
                        Ok(Chunk::Stop) | Err(_) => break false,
                    }
                };
                file.end(None);
                let _ = done.send(());
                if ended_by_itself {
                    let _ = eof.send(Exit::Code(0));
                }
            });
            Ok(Capture::new(drained, move || {
                let _ = stop.send(Chunk::Stop);
            }))
        }
    }

    /// A followed file's run: it ends when the file ends, and is released on stop.
    struct MemoryRun {
        eof: Option<oneshot::Receiver<Exit>>,
    }

    impl RunHandle for MemoryRun {
        fn pid(&self) -> Option<u32> {
            None
        }
        fn terminate(&mut self, _grace: Duration) -> Stopping {
            Stopping::Released("no longer following memory".into())
        }
        fn kill(&mut self, _grace: Duration) -> String {
            unreachable!("a released run is never killed")
        }
        fn wait(&mut self) -> BoxFuture<'_, Exit> {
            Box::pin(async move {
                match self.eof.as_mut() {
                    Some(rx) => match rx.await {
                        Ok(exit) => {
                            self.eof = None;
                            exit
                        }
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            })
        }
        fn end_text(&self, end: End, _failing: bool) -> String {
            match end {
                End::Exited(_) => "reached the end of memory".into(),
                End::Released => "stopped following memory".into(),
            }
        }
    }

    /// Hands each launch the receiving end the test feeds.
    struct MemoryLauncher {
        feeds: Mutex<Vec<mpsc::Receiver<Chunk>>>,
        stop: mpsc::Sender<Chunk>,
    }

    impl Launcher for MemoryLauncher {
        fn launch(&self, _spec: &TaskSpec, _run: &RunPlace) -> Result<Launched, String> {
            let rx = self.feeds.lock().unwrap().pop().ok_or("no more feeds")?;
            let (eof_tx, eof_rx) = oneshot::channel();
            Ok(Launched {
                handle: Box::new(MemoryRun { eof: Some(eof_rx) }),
                source: Box::new(MemorySource {
                    rx,
                    stop: self.stop.clone(),
                    eof: eof_tx,
                }),
                what: "following memory".into(),
                note: "following memory: a file made of the test's bytes".into(),
            })
        }
    }

    fn supervisor(home: &std::path::Path, launcher: Option<Arc<dyn Launcher>>) -> Arc<Supervisor> {
        let settings = Settings {
            holder: None,
            home: home.to_path_buf(),
            log: LogConfig {
                max_record: 16,
                ..LogConfig::default()
            },
        };
        let registry = Arc::new(Registry::open(&home.join("registry.db")).unwrap());
        let bus = Bus::new("test".into(), &ObserverConfig::default());
        let kinds = Kinds::new(Vec::new());
        match launcher {
            Some(l) => Supervisor::with_launcher(settings, registry, bus, kinds, l),
            None => Supervisor::new(settings, registry, bus, kinds),
        }
    }

    fn spec(name: &str, command: &[&str]) -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "command": command,
        }))
        .unwrap()
    }

    /// Follows a run from seq 1 to its end mark.
    async fn follow(log: Arc<crate::logbook::RunLog>) -> (Vec<WireRecord>, RunEnd) {
        crate::logbook::testing::read_to_end(log).await
    }

    /// Forwards the run ids of exit events: a sink written for these tests.
    struct Exits(tokio::sync::mpsc::UnboundedSender<String>);

    impl crate::bus::Sink for Exits {
        fn name(&self) -> &'static str {
            "test_exits"
        }

        async fn run(self, mut queue: crate::bus::Queue) {
            while let Some(batch) = queue.next().await {
                for s in batch.events {
                    if s.event.event_type == corral_core::event::EventType::Exit {
                        let _ = self.0.send(s.event.run_id.clone());
                    }
                }
            }
        }
    }

    /// Waits for the run's exit event, which comes once its registry row is final (the
    /// end mark reaches followers before that: a parser may still add to the message).
    async fn exit_announced(sup: &Supervisor, run_id: &str) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        sup.bus.register(Exits(tx));
        // Final before the sink was there: its event may have gone by.
        let row = sup.registry.run(run_id).unwrap().unwrap();
        if row.status != RunStatus::Running {
            return;
        }
        while let Some(id) = rx.recv().await {
            if id == run_id {
                return;
            }
        }
        panic!("the bus closed before the exit of {run_id}");
    }

    /// What both sources are given: lines across pushes, an over-long line (records
    /// hold 16 bytes here), invalid UTF-8, and a last line without a newline.
    const BYTES: [&[u8]; 4] = [
        b"first li",
        b"ne\nsecond\nthis line is longer than sixteen",
        b"\nbad \xff byte\n",
        b"no newline at the end",
    ];

    fn content(recs: &[WireRecord], stream: Stream) -> Vec<(String, bool, bool)> {
        recs.iter()
            .filter(|r| r.stream == stream)
            .map(|r| (r.line.clone(), r.partial, r.lossy))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_source_is_sequenced_stored_followed_and_ended_like_a_child() {
        let home = tempfile::tempdir().unwrap();
        let (feed, rx) = mpsc::channel();
        let launcher = Arc::new(MemoryLauncher {
            feeds: Mutex::new(vec![rx]),
            stop: feed.clone(),
        });
        let sup = supervisor(home.path(), Some(launcher));
        let started = sup.run(spec("mem", &["memory"])).await.unwrap();
        assert!(started.spawn_error.is_none());
        let log = sup.task_log("mem").unwrap();
        // Followed live: the follower is there before the first byte.
        let follower = tokio::spawn(follow(log.clone()));
        let stamp = 1_600_000_000_250_000;
        for (i, b) in BYTES.iter().enumerate() {
            feed.send(Chunk::Bytes(b, (i == 0 || i == 1).then_some(stamp)))
                .unwrap();
        }
        feed.send(Chunk::Eof).unwrap();
        let (recs, end) = follower.await.unwrap();

        // Dense seqs from 1; the notes around the file's records.
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=recs.len() as u64).collect::<Vec<_>>());
        assert_eq!(recs[0].stream, Stream::System);
        assert_eq!(
            recs[0].line,
            "following memory: a file made of the test's bytes"
        );
        let last = recs.last().unwrap();
        assert_eq!(
            (last.stream, last.line.as_str()),
            (Stream::System, "reached the end of memory")
        );
        let file = content(&recs, Stream::File);
        assert_eq!(file.len() + 2, recs.len(), "only the two notes are system");
        // The source's own timestamps stamp the records its pushes completed.
        assert_eq!(recs[1].ts, 1_600_000_000.25);
        assert_eq!(recs[2].ts, 1_600_000_000.25);
        // The end mark, the registry row and the task, as for a child.
        assert_eq!(
            end,
            RunEnd {
                status: RunStatus::Succeeded,
                exit_code: Some(0),
                signal: None
            }
        );
        exit_announced(&sup, &started.run_id).await;
        let row = sup.registry.run(&started.run_id).unwrap().unwrap();
        assert_eq!(row.status, RunStatus::Succeeded);
        assert_eq!(row.lines, file.len() as i64);
        assert_eq!(row.bytes, BYTES.concat().len() as i64);
        assert_eq!(row.error_message, None);
        assert_eq!(
            std::fs::read(&log.log_path).unwrap(),
            BYTES.concat(),
            "the .log holds exactly the file's bytes"
        );
        let task = sup.get("mem").unwrap();
        assert_eq!(task.status, corral_core::policy::TaskStatus::Completed);
        assert_eq!(task.pid, None);

        // The same bytes printed by a child come out as the same records, on stdout.
        let sup = supervisor(home.path(), None);
        let script = BYTES
            .iter()
            .map(|b| b.iter().map(|c| format!("\\{c:03o}")).collect::<String>())
            .collect::<String>();
        let child = sup.run(spec("child", &["printf", &script])).await.unwrap();
        let (child_recs, child_end) = follow(sup.task_log("child").unwrap()).await;
        assert_eq!(content(&child_recs, Stream::Stdout), file);
        assert_eq!(child_end, end);
        exit_announced(&sup, &child.run_id).await;
        let child_row = sup.registry.run(&child.run_id).unwrap().unwrap();
        assert_eq!((child_row.lines, child_row.bytes), (row.lines, row.bytes));
        let seqs: Vec<u64> = child_recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=child_recs.len() as u64).collect::<Vec<_>>());
    }

    /// Stopping a source that never ends by itself releases it: what it had handed in,
    /// its incomplete last line included, is kept, and the run ends `killed`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_a_followed_source_releases_it_and_keeps_its_last_line() {
        let home = tempfile::tempdir().unwrap();
        let (feed, rx) = mpsc::channel();
        let launcher = Arc::new(MemoryLauncher {
            feeds: Mutex::new(vec![rx]),
            stop: feed.clone(),
        });
        let sup = supervisor(home.path(), Some(launcher));
        let started = sup.run(spec("tail", &["memory"])).await.unwrap();
        let log = sup.task_log("tail").unwrap();
        let mut seen = log.subscribe();
        feed.send(Chunk::Bytes(b"one\ntwo, unfinished", None))
            .unwrap();
        seen.wait_for(|&seq| seq >= 2).await.unwrap();
        let task = sup.stop("tail", None).await.unwrap();
        assert_eq!(task.status, corral_core::policy::TaskStatus::Stopped);
        let (recs, end) = follow(log).await;
        let lines: Vec<(Stream, &str)> = recs.iter().map(|r| (r.stream, r.line.as_str())).collect();
        assert_eq!(
            lines,
            [
                (
                    Stream::System,
                    "following memory: a file made of the test's bytes"
                ),
                (Stream::File, "one"),
                (Stream::System, "stop requested: no longer following memory"),
                (Stream::File, "two, unfinished"),
                (Stream::System, "stopped following memory"),
            ]
        );
        assert_eq!(
            end,
            RunEnd {
                status: RunStatus::Killed,
                exit_code: None,
                signal: None
            }
        );
        let row = sup.registry.run(&started.run_id).unwrap().unwrap();
        assert_eq!(
            row.error_message.as_deref(),
            Some("stopped by request (stopped following memory)")
        );
        assert_eq!(row.lines, 2);
    }
}
