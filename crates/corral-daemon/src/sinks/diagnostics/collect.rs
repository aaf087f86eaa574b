//! Writing one run's diagnostics bundle, reading its summary back, and packing it.

use super::{is_secret_name, redact, redact_url, system, FILE_CAP, KEEP_PER_TASK, LAST_RECORDS};
use crate::logbook::follow::{Follower, Item};
use crate::logbook::Format;
use crate::supervisor::Supervisor;
use corral_core::event::{Component, Event, EventKind, EventType, Level};
use corral_core::policy::RunStatus;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `summary.json` of a bundle: the wire type, shared with the API and the CLI.
pub use corral_client::wire::Diagnostics as Summary;

/// Where the bundle of a run of `task` is.
pub fn bundle_dir(home: &Path, task: &str, run_id: &str) -> PathBuf {
    home.join("runs")
        .join(task)
        .join("diagnostics")
        .join(run_id)
}

/// The summary of a run's bundle, if it has one.
pub fn read_summary(dir: &Path) -> Option<Summary> {
    let text = std::fs::read(dir.join("summary.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The bundle as a `.tar.gz`, every file under `diagnostics-<run_id>/`.
pub fn tar_gz(dir: &Path, run_id: &str) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(format!("diagnostics-{run_id}"), dir)?;
    tar.into_inner()?.finish()
}

/// Collects the bundle of a run an earlier daemon left that is now `lost` (its events
/// went with that daemon; the rest is collected as for a failed run).
pub fn collect_lost(sup: &Arc<Supervisor>, run_id: &str) {
    let task = match sup.registry.run(run_id) {
        Ok(Some(row)) => row.task,
        _ => return,
    };
    tokio::spawn(collect(sup.clone(), task, run_id.to_string(), Vec::new()));
}

/// Collects the bundle of `run_id` if that run failed (or was lost); see the module
/// documentation.
pub(super) async fn collect(
    sup: Arc<Supervisor>,
    task: String,
    run_id: String,
    events: Vec<Arc<Event>>,
) {
    let row = match sup.registry.run(&run_id) {
        Ok(Some(row)) if matches!(row.status, RunStatus::Failed | RunStatus::Lost) => row,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(%run_id, "diagnostics: reading the run's registry row: {e}");
            return;
        }
    };
    let dir = bundle_dir(&sup.settings.home, &task, &run_id);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(%run_id, "diagnostics: cannot create {}: {e}", dir.display());
        return;
    }
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut put = |name: &str, body: Result<Vec<u8>, String>, problems: &mut Vec<String>| match body
    {
        Ok(mut b) => {
            if b.len() > FILE_CAP {
                b.truncate(FILE_CAP);
                problems.push(format!("{name}: cut at {FILE_CAP} bytes"));
            }
            match std::fs::write(dir.join(name), &b) {
                Ok(()) => files.push(name.to_string()),
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        Err(e) => problems.push(format!("{name}: {e}")),
    };

    put(
        "records.ndjson",
        last_records(&sup, &run_id).await,
        &mut problems,
    );
    put("command.json", command(&sup, &task), &mut problems);
    let mut ev = Vec::new();
    for e in &events {
        if serde_json::to_writer(&mut ev, e.as_ref()).is_ok() {
            ev.push(b'\n');
        }
    }
    put("events.ndjson", Ok(ev), &mut problems);
    let log_dir = sup.log_dir(&task);
    let sys = tokio::task::spawn_blocking(move || system::snapshot(&log_dir)).await;
    put(
        "system.json",
        sys.map_err(|e| e.to_string())
            .and_then(|v| serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())),
        &mut problems,
    );
    let gpu = crate::gpu::Gpus::shared().snapshot().await;
    put(
        "gpu.json",
        gpu_json(&gpu).map_err(|e| e.to_string()),
        &mut problems,
    );

    if row.container_id.is_some() {
        // Kept beside the log by the container source before it removed the container.
        let path = crate::sources::container::inspect_path(Path::new(&row.log_path));
        put(
            "container.json",
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display())),
            &mut problems,
        );
    }

    files.push("summary.json".into());
    let summary = Summary {
        run_id: run_id.clone(),
        task: task.clone(),
        node: sup.bus.node.clone(),
        status: row.status,
        exit_code: row.exit_code,
        signal: row.signal,
        signal_name: row
            .signal
            .map(|s| crate::supervisor::process::signal_name(s as i32).to_string()),
        error_message: row.error_message.clone(),
        started_at: row.started_at,
        ended_at: row.ended_at,
        lines: row.lines,
        bytes: row.bytes,
        collected_at: crate::util::unix_now(),
        dir: dir.display().to_string(),
        files,
        problems,
    };
    // The summary comes last: its presence says the bundle is complete.
    let written = serde_json::to_vec_pretty(&summary)
        .map_err(std::io::Error::other)
        .and_then(|b| {
            let tmp = dir.join("summary.json.tmp");
            std::fs::write(&tmp, b)?;
            std::fs::rename(&tmp, dir.join("summary.json"))
        });
    if let Err(e) = written {
        tracing::warn!(%run_id, "diagnostics: writing the summary: {e}");
        return;
    }
    if let Some(parent) = dir.parent() {
        prune(parent);
    }
    let kind = EventKind::new(
        Component::Task,
        Level::Info,
        EventType::Status,
        format!("diagnostics of the failed run {run_id} of task {task}: `corral diag {run_id}`"),
    )
    .with("diagnostics", dir.display().to_string());
    sup.bus.emit(kind, &task, &run_id);
}

/// The run's last records, encoded as the log API gives them.
async fn last_records(sup: &Supervisor, run_id: &str) -> Result<Vec<u8>, String> {
    let log = sup.run_log(run_id).map_err(|e| e.to_string())?;
    let last = log.stats().last_seq;
    let from = last.saturating_sub(LAST_RECORDS - 1).max(1);
    let mut f = Follower::new(log, from, Format::Ndjson, false);
    let mut out = Vec::new();
    while let Some(item) = f.next().await {
        match item {
            Item::Records { data } => out.extend_from_slice(&data),
            Item::Gap { from, to, reason } => out.extend_from_slice(
                format!("{{\"gap\":{{\"from\":{from},\"to\":{to},\"reason\":\"{reason}\"}}}}\n")
                    .as_bytes(),
            ),
            Item::End(_) => break,
        }
        if out.len() > super::FILE_CAP {
            break;
        }
    }
    Ok(out)
}

/// The task's command line, working directory, labels and environment (the daemon's,
/// less corral's own variables, plus the spec's), secrets redacted.
fn command(sup: &Supervisor, task: &str) -> Result<Vec<u8>, String> {
    let spec = sup.spec(task).map_err(|e| e.to_string())?;
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in std::env::vars() {
        if !crate::supervisor::process::is_corral_secret(&k) {
            env.insert(k, v);
        }
    }
    env.extend(spec.env.clone());
    let env: std::collections::BTreeMap<String, String> = env
        .into_iter()
        .map(|(k, v)| {
            let v = if is_secret_name(&k) {
                "[redacted]".to_string()
            } else {
                redact_url(&v)
            };
            (k, v)
        })
        .collect();
    let v = serde_json::json!({
        "command": redact(&spec.command),
        "cwd": spec.cwd,
        "kind": spec.kind,
        "labels": spec.labels,
        "restart": spec.restart,
        "env": env,
    });
    serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())
}

/// Removes the oldest bundles of a task beyond [`KEEP_PER_TASK`].
fn prune(task_dir: &Path) {
    let all = super::bundles_of(task_dir);
    if all.len() > KEEP_PER_TASK {
        for old in &all[..all.len() - KEEP_PER_TASK] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

/// The GPUs as `/api/v1/gpu` shows them; an unavailable answer also says why under
/// `error`, the key bundles have always used.
fn gpu_json(snap: &corral_client::wire::GpuSnapshot) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(snap)?;
    if let (Some(reason), Some(o)) = (&snap.reason, v.as_object_mut()) {
        o.insert("error".into(), reason.clone().into());
    }
    serde_json::to_vec_pretty(&v)
}
