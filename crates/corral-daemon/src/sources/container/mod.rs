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
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the logs are read after the container's end was known, when they do not end
/// by themselves.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A container's logs, not read yet.
pub struct ContainerSource {
    pub engine: Engine,
    /// The container's id.
    pub id: String,
    /// Whether corral started the container: its end is the run's end, and it is
    /// inspected and removed after it.
    pub owned: bool,
    /// Read the logs from this second on (seconds since the epoch; 0: from the start).
    pub since: i64,
    /// How the container ended (its exit code, and what the engine said beside it).
    pub ended: oneshot::Sender<Ended>,
}

/// Where a run keeps its container's inspect output.
pub fn inspect_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("container.json")
}

impl Source for ContainerSource {
    fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture> {
        let (done, drained) = oneshot::channel();
        let (end_tx, end_rx) = oneshot::channel();
        let ContainerSource {
            engine,
            id,
            owned,
            since,
            ended,
        } = *self;
        let logs = engine
            .logs(&id, since)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // The container's end, from the engine; the handle's wait resolves with it.
        let waiter = tokio::spawn({
            let (engine, id) = (engine.clone(), id.clone());
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
                let _ = ended.send(end);
            }
        });
        let mut reader = Reader {
            out: ingest.channel(Stream::Stdout),
            err: ingest.channel(Stream::Stderr),
            ingest,
        };
        tokio::spawn(async move {
            reader.read(logs, end_rx).await;
            let log_path = reader.ingest.log().log_path.clone();
            drop(reader);
            if owned {
                let _ = waiter.await;
                keep_inspect_and_remove(&engine, &id, &log_path).await;
            } else {
                waiter.abort();
            }
            let _ = done.send(());
        });
        Ok(Capture::new(drained, move || {
            let _ = end_tx.send(());
        }))
    }
}

struct Reader {
    ingest: Ingest,
    out: Channel,
    err: Channel,
}

impl Reader {
    /// Reads the logs until they end, or for [`DRAIN_GRACE`] after the run ended; then
    /// each channel's incomplete last line becomes a record.
    async fn read(
        &mut self,
        logs: impl futures_util::Stream<Item = Result<LogOutput, engine::EngineError>>,
        mut run_ended: oneshot::Receiver<()>,
    ) {
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
                entry = logs.next() => match entry {
                    Some(Ok(LogOutput::StdOut { message })) => push(&mut self.out, &message),
                    Some(Ok(LogOutput::StdErr { message })) => push(&mut self.err, &message),
                    // The engine sends these only with a terminal, which corral never asks for.
                    Some(Ok(LogOutput::Console { message })) => push(&mut self.out, &message),
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => {
                        self.ingest.system(&format!("reading the container's logs failed: {e}"));
                        break;
                    }
                    None => break,
                },
                _ = &mut run_ended, if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                }
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
    }
}

/// Hands one log entry to its channel, stamped with the engine's timestamp where that
/// says more than the daemon's clock (see the module's notes).
fn push(ch: &mut Channel, entry: &[u8]) {
    let (ts, text) = engine::split_timestamp(entry);
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
