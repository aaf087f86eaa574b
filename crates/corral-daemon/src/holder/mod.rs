//! Runs that outlive the daemon: each run's child is started by a small holder process
//! (`corral hold`, see [`shim`]) that owns the child's pipes and exit status, as container
//! runtimes do with a per-run shim. The daemon talks to it over a Unix socket in the run's
//! log directory ([`proto`]); a daemon that dies, or is upgraded, leaves the holders
//! running, and the next one reconnects to each and continues the run's log where it was.

pub mod proto;
pub mod shim;
