//! corral's daemon: everything `corral serve` runs.
//!
//! - the engine and storage: [`supervisor`] (one actor per task), [`sources`] (where a
//!   run's bytes come from), [`logbook`] (ingest, ring, followers), [`registry`] (SQLite),
//!   [`bus`] (events to sinks), [`sinks`] (the observer store, the live stream), [`gpu`]
//!   (the GPUs, through NVML loaded at run time), [`hub`] (the fleet read from Redis,
//!   on a hub), [`ssh`] (the SSH transport: one multiplexed connection per host);
//! - [`kinds`]: what a task is (llama-server, rpc-server), plugged into the supervisor
//!   through [`supervisor::kind::TaskKind`];
//! - [`api`]: HTTP, SSE, WebSocket and `/metrics`;
//! - [`serve`]: the one entry point that wires them together.
//!
//! **Dependency rules** (ARCHITECTURE.md): the engine and storage never import `api` or
//! `kinds`; kinds never import `api`; only `api` knows HTTP; [`metrics`] is a leaf.

pub mod api;
pub mod bus;
pub mod clock;
pub mod gpu;
pub mod holder;
pub mod home;
pub mod hub;
pub mod kinds;
pub mod logbook;
pub mod metrics;
pub mod registry;
pub mod serve;
pub mod sinks;
pub mod sources;
pub mod ssh;
pub mod supervisor;
pub mod util;

pub use serve::{serve, ServeOpts};
