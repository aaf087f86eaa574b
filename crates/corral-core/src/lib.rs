//! corral's pure core.
//!
//! **Architecture invariant:** nothing in this crate spawns a process, opens a file or a
//! socket, or reads the clock. Time is passed in. Everything here is deterministic and
//! unit-tested without I/O.

pub mod duration;
pub mod event;
pub mod framer;
pub mod llama;
pub mod policy;
pub mod record;
pub mod sampling;
pub mod secrets;
pub mod term;
pub mod time;
