//! Where a run's bytes come from.
//!
//! A source only reads. It hands what it reads to the run's ingest stage
//! ([`crate::logbook::Ingest`]), one [`Channel`](crate::logbook::Channel) per stream, with
//! its own timestamps where it has them; framing, seq numbers, the files, followers and
//! the stderr tail are the ingest stage's, the same for every source. A source is started
//! with [`Source::start`] and answers with a [`Capture`]: the supervisor tells it through
//! the capture when the run ended, and learns from it when everything was handed in, so
//! that a run is finished only after its output is drained.
//!
//! Sources: [`child`], a child process's stdout and stderr pipes, read by the shared
//! [`reactor`] thread; [`held`], the same pipes kept by the run's holder process (see
//! [`crate::holder`]), read from its socket, which a later daemon can take over; [`file`],
//! a local file followed like `tail -F` (rotation, truncation, resumed at the byte after
//! its last record); [`container`], a container's logs through the Docker Engine API
//! (Docker, or Podman's compatible socket). Coming: remote files and commands over SSH;
//! each is one module here that implements [`Source`].
//!
//! **What a record's `stream` carries** (decided once, so that new sources need no format
//! change): the *channel within the source*: `stdout`, `stderr`, `file` (a followed file's
//! content) or `system` (corral's own notes, never a source's). *What* the source is (a
//! child's pid, a file's path, a host, a container id) belongs to the run, not to each
//! record. A remote command's pipes are `stdout`/`stderr` like a local child's; a
//! container's two log streams are too; a followed file, local or remote, is `file`.

pub mod child;
pub mod container;
pub mod file;
pub mod held;
pub mod reactor;
pub mod remote;

use crate::logbook::Ingest;
use tokio::sync::oneshot;

/// A source of a run's bytes, not started yet.
pub trait Source: Send {
    /// Starts handing bytes to `ingest`, until the source ends by itself (end-of-file on
    /// every stream) or, after [`Capture::run_ended`], when it decides nothing more will
    /// come (a grace for stragglers, said in a `system` note if it cut anything off).
    fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture>;
}

/// A source at work, as its run holds it.
pub struct Capture {
    drained: Option<oneshot::Receiver<()>>,
    on_end: Option<Box<dyn FnOnce() + Send>>,
    on_detach: Option<Box<dyn FnOnce() + Send>>,
}

impl Capture {
    /// A capture that reports being drained through `drained` (a dropped sender counts as
    /// drained too: a source that died has nothing more to hand in), and that is told
    /// the run ended by `on_end`.
    pub fn new(drained: oneshot::Receiver<()>, on_end: impl FnOnce() + Send + 'static) -> Capture {
        Capture {
            drained: Some(drained),
            on_end: Some(Box::new(on_end)),
            on_detach: None,
        }
    }

    /// A capture that can also be detached: told by `on_detach` to stop reading and
    /// leave what it has not read where it is (a holder keeps it for the next daemon).
    pub fn detachable(
        drained: oneshot::Receiver<()>,
        on_end: impl FnOnce() + Send + 'static,
        on_detach: impl FnOnce() + Send + 'static,
    ) -> Capture {
        Capture {
            on_detach: Some(Box::new(on_detach)),
            ..Capture::new(drained, on_end)
        }
    }

    /// Whether [`Capture::detach`] leaves the run's output to a later daemon.
    pub fn can_detach(&self) -> bool {
        self.on_detach.is_some()
    }

    /// Stops reading without ending the run's streams: what is not read yet stays with
    /// the source for a later daemon. Resolves once the reading stopped.
    pub async fn detach(&mut self) {
        if let Some(f) = self.on_detach.take() {
            self.on_end = None;
            f();
        }
        self.drained().await;
    }

    /// A run with nothing to capture (an adopted server): drained from the start.
    pub fn nothing() -> Capture {
        Capture {
            drained: None,
            on_end: None,
            on_detach: None,
        }
    }

    /// Tells the source that the run ended (its process exited): what is still in flight
    /// is taken, and the source stops at its end or after its grace. Idempotent.
    pub fn run_ended(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }

    /// Resolves once the source handed in everything it will.
    pub async fn drained(&mut self) {
        if let Some(rx) = self.drained.as_mut() {
            let _ = rx.await;
            self.drained = None;
        }
    }
}
