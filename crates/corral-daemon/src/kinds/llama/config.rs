//! Daemon-wide settings of the llama kinds (the command line's `serve` flags and their
//! `SOLLOL_*` environment names fill them in).

use std::time::Duration;

/// Daemon-wide llama settings (heartbeats).
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub coordinator_heartbeat: Duration,
    pub backend_heartbeat: bool,
    pub backend_heartbeat_interval: Duration,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig {
            coordinator_heartbeat: Duration::from_secs(30),
            backend_heartbeat: true,
            backend_heartbeat_interval: Duration::from_secs(30),
        }
    }
}
