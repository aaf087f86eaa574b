//! A container's output, read through the container engine's API ([`engine`]): one logs
//! request per run, followed until the container stops, with the engine's timestamps;
//! stdout and stderr stay apart (the engine multiplexes them, the client splits them) and
//! become the run's `stdout` and `stderr` channels, so framing, seqs, the files,
//! followers, the stderr tail and every sink are the same as for a local process.
//!
//! **Read once.** Only the run's source reads the container's logs; every viewer follows
//! the run's log. The logs request starts after the container started, and asks for
//! everything from its start, so nothing it printed first is missed.
//!
//! **Timestamps.** Each entry's own timestamp stamps its records when it says more than
//! the daemon's clock would: Docker's have nanoseconds; Podman's compatible API gives
//! whole seconds, and an entry stamped with the second it arrives in is stamped on
//! arrival instead (a record's time should not go back up to a second).
//!
//! **Taken back.** A container outlives the daemon: the run keeps the ingest stage's
//! checkpoint (`run_<id>.pos`: the bytes of stdout and stderr in records, written after
//! each batch of entries) and the container's full id (`run_<id>.container`), and a later
//! daemon reads the logs again from the container's start, skipping that many bytes of
//! each stream: nothing is read twice or missed, even when the container ended while no
//! daemon ran (its exit code is still the run's). A daemon that stops with
//! `leave_running` detaches: it stops reading, and the incomplete last lines are read
//! whole by the next one. A followed container's next run goes on from its previous
//! run's checkpoint the same way, when it is the same container.
//!
//! **End.** The container's end comes from the engine's wait (its exit code), and the
//! logs end by themselves then; after the run ended the logs are read for
//! [`DRAIN_GRACE`] at most. A container corral started is then inspected (the inspect
//! output is kept beside the run's log as `run_<id>.container.json`, with the values of
//! secret-named variables hidden, for the diagnostics bundle) and removed, so restarts
//! leave no container behind. A container corral only follows is left alone.

pub mod engine;

use super::{Capture, Source};
use crate::logbook::{Channel, Ingest};
use corral_core::record::Stream;
use engine::{Ended, Engine, LogOutput};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the logs are read after the container's end was known, when they do not end
/// by themselves.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A container's logs, not read yet.
pub struct ContainerSource {
    pub engine: Engine,
    /// The container's id (or name).
    pub id: String,
    /// Whether corral started the container: it is inspected and removed after the run.
    pub owned: bool,
    /// A run taken back, or one that goes on from the task's previous run (a followed
    /// container): the bytes of stdout and stderr already in a log (a checkpoint's),
    /// skipped in the logs read again from the start.
    pub resume: Option<[u64; 2]>,
    /// Where to put the container's full id when the run knows it only by name (a run
    /// taken back): the source asks the engine once.
    pub learn_id: Option<Arc<OnceLock<String>>>,
    /// How the container ended (its exit code, and what the engine said beside it).
    pub ended: oneshot::Sender<Ended>,
}

/// Where a run keeps its container's inspect output.
pub fn inspect_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("container.json")
}

/// Where a run keeps the full id of the container it reads (`run_<id>.container`), so
/// that a later run knows whether its checkpoint counts the same container's bytes.
pub fn id_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("container")
}

/// The container the run whose log is `log_path` read, if it said.
pub fn read_id(log_path: &Path) -> Option<String> {
    let id = std::fs::read_to_string(id_path(log_path)).ok()?;
    is_full_id(id.trim()).then(|| id.trim().to_string())
}

/// Whether `id` is a container's full id (64 hex digits).
pub fn is_full_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn write_id(log_path: &Path, id: &str) {
    if let Err(e) = std::fs::write(id_path(log_path), id) {
        tracing::warn!(path = %id_path(log_path).display(), "cannot keep the container's id: {e}");
    }
}

/// Entries handed in between two checkpoints at most, when they keep coming.
const CHECKPOINT_EVERY: usize = 1024;

/// What ends the reading besides the logs' own end.
enum Stop {
    /// The run ended: read on for [`DRAIN_GRACE`] at most.
    RunEnded,
    /// The daemon lets go of the run: stop now and leave the rest to the next daemon.
    Detach,
}

impl Source for ContainerSource {
    fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture> {
        let (done, drained) = oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
        let ContainerSource {
            engine,
            id,
            owned,
            resume,
            learn_id,
            ended,
        } = *self;
        let log_path = ingest.log().log_path.clone();
        if is_full_id(&id) {
            write_id(&log_path, &id);
        }
        if let Some(cell) = learn_id {
            let (engine, id, log_path) = (engine.clone(), id.clone(), log_path.clone());
            tokio::spawn(async move {
                if let Ok(v) = engine.inspect(&id).await {
                    if let Some(full) = v["Id"].as_str().filter(|i| is_full_id(i)) {
                        write_id(&log_path, full);
                        let _ = cell.set(full.to_string());
                    }
                }
            });
        }
        // The logs can be read again from the start: the checkpoint says how far.
        ingest.keep_checkpoints()?;
        let logs = engine.logs(&id, 0);
        // The container's end, from the engine; the handle's wait resolves with it.
        let exited = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn({
            let (engine, id, exited) = (engine.clone(), id.clone(), exited.clone());
            async move {
                let end = match engine.wait(&id).await {
                    Ok(code) => match engine.ended(&id).await {
                        Ok(e) => Ended {
                            code,
                            detail: e.detail,
                        },
                        Err(_) => Ended { code, detail: None },
                    },
                    Err(e) if e.not_found() => Ended {
                        code: -1,
                        detail: Some("the container was removed by someone else".into()),
                    },
                    Err(e) => Ended {
                        code: -1,
                        detail: Some(format!("the engine lost track of the container: {e}")),
                    },
                };
                exited.store(true, Ordering::Release);
                let _ = ended.send(end);
            }
        });
        let reader = Reader {
            out: ingest.channel(Stream::Stdout),
            err: ingest.channel(Stream::Stderr),
            skip: resume.unwrap_or([0, 0]),
            // A followed container's run that was let go of while it runs: nothing to
            // drain, its output is not the run's any more.
            let_go: (!owned).then_some(exited),
            ingest,
        };
        tokio::spawn(async move {
            match reader.read(logs, stop_rx).await {
                // Left running, for the next daemon, or let go of (not ours).
                ReadEnd::Detached | ReadEnd::LetGo => waiter.abort(),
                // The container stopped: its exit code comes.
                ReadEnd::Read => {
                    let _ = waiter.await;
                    if owned {
                        keep_inspect_and_remove(&engine, &id, &log_path).await;
                    }
                }
            }
            let _ = done.send(());
        });
        let stop_detach = stop_tx.clone();
        Ok(Capture::detachable(
            drained,
            move || {
                let _ = stop_tx.send(Stop::RunEnded);
            },
            move || {
                let _ = stop_detach.send(Stop::Detach);
            },
        ))
    }
}

struct Reader {
    ingest: Ingest,
    out: Channel,
    err: Channel,
    /// Bytes of stdout and stderr still to skip (already in the log of a run taken back).
    skip: [u64; 2],
    /// For a followed container: whether it exited. A run that ended while it did not
    /// was let go of, and the reading stops at once.
    let_go: Option<Arc<AtomicBool>>,
}

/// How the reading of a container's logs ended.
enum ReadEnd {
    /// The logs ended (the container stopped), or the grace after the run's end did.
    Read,
    /// The daemon let go of the run, for the next daemon.
    Detached,
    /// The run of a followed container ended while the container runs on.
    LetGo,
}

impl Reader {
    /// Reads the logs until they end, or for [`DRAIN_GRACE`] after the run ended; then
    /// each channel's incomplete last line becomes a record. Detached, it stops at once
    /// and leaves incomplete lines to the next daemon (which reads them again).
    async fn read(
        mut self,
        logs: impl futures_util::Stream<Item = Result<LogOutput, engine::EngineError>>,
        mut stop: tokio::sync::mpsc::UnboundedReceiver<Stop>,
    ) -> ReadEnd {
        let mut logs = std::pin::pin!(logs);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let grace = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                entry = logs.next() => {
                    let Some(entry) = entry else { break };
                    if !self.take(entry) {
                        break;
                    }
                    // What is ready already goes in before the checkpoint.
                    let mut n = 1;
                    let mut ended = false;
                    while n < CHECKPOINT_EVERY {
                        match futures_util::FutureExt::now_or_never(logs.next()) {
                            Some(Some(entry)) => {
                                if !self.take(entry) {
                                    ended = true;
                                    break;
                                }
                                n += 1;
                            }
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    if let Err(e) = self.ingest.checkpoint() {
                        tracing::warn!("cannot write the checkpoint of a container's log: {e}");
                    }
                    if ended {
                        break;
                    }
                }
                why = stop.recv() => match why {
                    Some(Stop::Detach) => {
                        self.out.abandon();
                        self.err.abandon();
                        return ReadEnd::Detached;
                    }
                    Some(Stop::RunEnded) => {
                        if self.let_go.as_ref().is_some_and(|e| !e.load(Ordering::Acquire)) {
                            self.out.end(None);
                            self.err.end(None);
                            return ReadEnd::LetGo;
                        }
                        deadline.get_or_insert(tokio::time::Instant::now() + DRAIN_GRACE);
                    }
                    None => {}
                },
                _ = grace => {
                    self.ingest.system(&format!(
                        "the container's logs did not end within {}s of its end; stopped reading them",
                        DRAIN_GRACE.as_secs()
                    ));
                    break;
                }
            }
        }
        self.out.end(None);
        self.err.end(None);
        ReadEnd::Read
    }

    /// Hands in one entry; false when the logs cannot be read further.
    fn take(&mut self, entry: Result<LogOutput, engine::EngineError>) -> bool {
        match entry {
            Ok(LogOutput::StdOut { message }) => push(&mut self.out, &mut self.skip[0], &message),
            Ok(LogOutput::StdErr { message }) => push(&mut self.err, &mut self.skip[1], &message),
            // The engine sends these only with a terminal, which corral never asks for.
            Ok(LogOutput::Console { message }) => push(&mut self.out, &mut self.skip[0], &message),
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                self.ingest
                    .system(&format!("reading the container's logs failed: {e}"));
                return false;
            }
        }
        true
    }
}

/// Hands one log entry to its channel, stamped with the engine's timestamp where that
/// says more than the daemon's clock (see the module's notes); the first `skip` bytes
/// of the stream are already in the log.
fn push(ch: &mut Channel, skip: &mut u64, entry: &[u8]) {
    let (ts, mut text) = engine::split_timestamp(entry);
    if *skip > 0 {
        let n = (*skip).min(text.len() as u64);
        text = &text[n as usize..];
        *skip -= n;
    }
    let ts = ts.and_then(|(us, precise)| {
        let now = crate::clock::now_micros();
        // A whole second that is now: the arrival time is the better stamp.
        let this_second = !precise && now >= us && now < us + 2_000_000;
        (!this_second).then_some(us)
    });
    ch.push(text, ts);
}

/// Inspects a container corral started, keeps the inspect output beside the run's log
/// (the values of secret-named variables hidden), then removes it.
async fn keep_inspect_and_remove(engine: &Engine, id: &str, log_path: &Path) {
    match engine.inspect(id).await {
        Ok(mut v) => {
            hide_secrets(&mut v);
            let path = inspect_path(log_path);
            if let Ok(bytes) = serde_json::to_vec_pretty(&v) {
                if let Err(e) = std::fs::write(&path, bytes) {
                    tracing::warn!(path = %path.display(), "cannot keep the container's inspect output: {e}");
                }
            }
        }
        Err(e) => tracing::warn!(container = id, "cannot inspect the container: {e}"),
    }
    if let Err(e) = engine.remove(id).await {
        if !e.not_found() {
            tracing::warn!(container = id, "cannot remove the container: {e}");
        }
    }
}

/// Hides the values of secret-named variables in an inspect output's `Config.Env`.
pub fn hide_secrets(v: &mut serde_json::Value) {
    let Some(env) = v
        .get_mut("Config")
        .and_then(|c| c.get_mut("Env"))
        .and_then(|e| e.as_array_mut())
    else {
        return;
    };
    for item in env.iter_mut() {
        if let Some((k, _)) = item.as_str().and_then(|s| s.split_once('=')) {
            if corral_core::secrets::is_secret_name(k) {
                *item = serde_json::Value::String(format!("{k}=<hidden>"));
            }
        }
    }
}
