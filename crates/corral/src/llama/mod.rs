//! llama.cpp awareness in the daemon: coordinator (`llama-server`) and `rpc-server`
//! task specs, the log watcher that turns their records into events and metrics, the
//! status object of each coordinator, models, RPC backend heartbeats, and their API.
//!
//! Invariants:
//! - a watcher follows a run's log like any viewer (from the logbook, by seq), so parsing
//!   never slows the capture and never misses a record;
//! - backends are checked with a bare TCP connect that sends nothing (rpc-server serves
//!   one client at a time);
//! - a coordinator's status object is re-derived from the supervisor's view and pushed as
//!   a `status` event only when it changed.

pub mod cli;
mod config;
pub mod state;

pub use config::{observer_config, LlamaConfig, LlamaServeArgs};
pub use state::{watch_run, LlamaState};

use crate::supervisor::{HealthCheck, TaskSpec};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Readiness and liveness settings of a coordinator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub attempts: u32,
    pub liveness_interval: Duration,
    pub liveness_failures: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            attempts: 60,
            liveness_interval: Duration::from_secs(60),
            liveness_failures: 3,
        }
    }
}

/// Everything needed to supervise one `llama-server`.
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    pub name: String,
    /// The full command line (binary first).
    pub command: Vec<String>,
    pub host: String,
    pub port: u16,
    pub model_path: String,
    pub rpc_backends: Vec<String>,
    pub n_gpu_layers: Option<i64>,
    pub ctx_size: Option<i64>,
    pub health: HealthSettings,
    pub labels: BTreeMap<String, String>,
}

/// The host a local client uses to reach a server listening on `host`.
pub fn probe_host(host: &str) -> &str {
    match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        h => h,
    }
}

/// The task spec of a coordinator: restart always with the core's backoff, readiness
/// and liveness on `/health`, adoption of a server already answering there.
pub fn coordinator_spec(s: &CoordinatorSettings) -> TaskSpec {
    let ms = |d: Duration| d.as_millis() as u64;
    TaskSpec {
        name: s.name.clone(),
        command: s.command.clone(),
        cwd: std::env::current_dir()
            .ok()
            .map(|d| d.display().to_string()),
        env: BTreeMap::new(),
        labels: s.labels.clone(),
        restart: corral_core::policy::Restart::Always,
        max_retries: 5,
        backoff_initial_ms: 1000,
        backoff_max_ms: 30_000,
        stop_timeout_ms: 5000,
        health: Some(HealthCheck {
            url: format!("http://{}:{}/health", probe_host(&s.host), s.port),
            interval_ms: ms(s.health.interval),
            timeout_ms: ms(s.health.timeout),
            attempts: s.health.attempts,
            liveness_interval_ms: ms(s.health.liveness_interval),
            liveness_failures: s.health.liveness_failures,
            adopt: true,
        }),
        kind: Some("llama".into()),
        extra: json!({
            "host": s.host,
            "port": s.port,
            "model_path": s.model_path,
            "rpc_backends": s.rpc_backends,
            "n_gpu_layers": s.n_gpu_layers,
            "ctx_size": s.ctx_size,
        }),
    }
}

/// Checks a llama or rpc task before anything is spawned: the binary and the model file
/// must exist. Returns a message that says what to do.
pub fn validate(spec: &TaskSpec) -> Result<(), String> {
    let Some(kind) = spec.kind.as_deref() else {
        return Ok(());
    };
    if kind != "llama" && kind != "rpc" {
        return Ok(());
    }
    if spec.extra.get("check_files") == Some(&serde_json::Value::Bool(false)) {
        return Ok(());
    }
    // The server binary: the first word, or the first after `stdbuf` and its options
    // (rpc-server runs line-buffered under it); a bare name is looked up on PATH.
    let mut words = spec.command.iter().map(String::as_str);
    let mut bin = words.next().unwrap_or("");
    if std::path::Path::new(bin).file_name() == Some(std::ffi::OsStr::new("stdbuf")) {
        bin = words.find(|w| !w.starts_with('-')).unwrap_or("");
    }
    if cli::find_program(bin).is_none() {
        return Err(format!(
            "the {} binary `{bin}` does not exist or is not executable; pass --bin PATH or put it on PATH",
            if kind == "llama" { "llama-server" } else { "rpc-server" }
        ));
    }
    if kind == "llama" {
        let model = spec.extra["model_path"].as_str().unwrap_or("");
        let path = match &spec.cwd {
            Some(cwd) if !model.starts_with('/') => std::path::Path::new(cwd).join(model),
            _ => std::path::PathBuf::from(model),
        };
        if model.is_empty() {
            return Err(
                "no model given: pass --model PATH (or llama_model_path in the config file)".into(),
            );
        }
        if !path.is_file() {
            return Err(format!(
                "the model file {} does not exist; check --model (or llama_model_path)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A regular file with an execute bit.
pub fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, command: &[&str], model: &str) -> TaskSpec {
        serde_json::from_value(json!({
            "name": "t",
            "command": command,
            "kind": kind,
            "extra": {"model_path": model},
        }))
        .unwrap()
    }

    #[test]
    fn validate_finds_the_server_binary_on_path_and_behind_stdbuf() {
        let model = std::env::current_exe().unwrap().display().to_string();
        // A bare name is looked up on PATH, like the spawn does.
        assert_eq!(validate(&spec("llama", &["sh"], &model)), Ok(()));
        let err = validate(&spec("llama", &["no-such-llama-server-x"], &model)).unwrap_err();
        assert!(
            err.contains("`no-such-llama-server-x`") && err.contains("--bin"),
            "{err}"
        );
        // rpc-server runs under stdbuf: the binary checked is the one after its options.
        assert_eq!(
            validate(&spec("rpc", &["stdbuf", "-oL", "-eL", "sh"], "")),
            Ok(())
        );
        let err = validate(&spec(
            "rpc",
            &["stdbuf", "-oL", "/nonexistent/rpc-server"],
            "",
        ))
        .unwrap_err();
        assert!(err.contains("/nonexistent/rpc-server"), "{err}");
        // A file that is not executable is not a binary.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("rpc-server");
        std::fs::write(&plain, "not a program").unwrap();
        let plain = plain.display().to_string();
        let err = validate(&spec("rpc", &[&plain], "")).unwrap_err();
        assert!(err.contains("not executable"), "{err}");
        // The model must exist for a coordinator.
        let err = validate(&spec("llama", &["sh"], "/nonexistent/m.gguf")).unwrap_err();
        assert!(err.contains("/nonexistent/m.gguf"), "{err}");
    }
}
