//! A child process's stdout and stderr pipes: the first source.
//!
//! The pipes are read by the shared [`reactor`](super::reactor) thread, never by the
//! async runtime, so that no runtime scheduling and no viewer can delay the reads: the
//! child is never blocked by corral beyond the disk write of what it printed. The same
//! source serves any command whose output comes through pipes (a remote command run over
//! SSH is a local `ssh` child).

use super::{reactor, Capture, Source};
use crate::logbook::Ingest;
use corral_core::record::Stream;
use std::os::fd::OwnedFd;

/// The read ends of a child's stdout and stderr.
pub struct Pipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Source for Pipes {
    fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture> {
        reactor::global()?.capture(
            ingest,
            vec![(self.stdout, Stream::Stdout), (self.stderr, Stream::Stderr)],
        )
    }
}
