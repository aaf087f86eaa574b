//! The task commands: `run`, `ps`, `runs`, `stop`, `restart`, `rm`, and `shutdown`.

use super::{duration_arg, monitor, start_exit_code, table};
use super::{NameArg, RunArgs, RunsArgs, ShutdownArgs, StopArgs};
use anyhow::{bail, Context};
use corral_client::wire::{
    ContainerInfo, Removed, RunInfo, Started, StopRequest, TaskInfo, TaskSpec,
};
use corral_client::{enc, Client};
use corral_core::term::sanitize;
use serde_json::json;
use std::io::Write;

fn kv(flag: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--{flag} `{s}` is not K=V; write e.g. --{flag} CUDA_VISIBLE_DEVICES=0"),
        })
        .collect()
}

/// The spec of `corral run`.
fn spec(a: &RunArgs) -> anyhow::Result<TaskSpec> {
    let restart: corral_core::policy::Restart = a
        .restart
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--restart: {e}"))?;
    if let Some(image) = &a.image {
        return Ok(TaskSpec {
            kind: Some("container".into()),
            extra: json!({
                "image": image,
                "args": a.command,
                "network": a.network,
                "gpus": a.gpus,
                "publish": a.publish,
            }),
            // A directory inside the container, as given.
            cwd: a.cwd.as_ref().map(|d| d.display().to_string()),
            ..common(a, restart)?
        });
    }
    let cwd = match &a.cwd {
        // A remote directory is the remote host's to find.
        Some(d) if a.remote.is_some() => Some(d.display().to_string()),
        None if a.remote.is_some() => None,
        Some(d) => Some(
            std::fs::canonicalize(d)
                .with_context(|| format!("--cwd {}: no such directory", d.display()))?
                .display()
                .to_string(),
        ),
        None => std::env::current_dir()
            .ok()
            .map(|d| d.display().to_string()),
    };
    Ok(TaskSpec {
        cwd,
        ..common(a, restart)?
    })
}

/// What every task of `corral run` has, whatever it runs.
fn common(a: &RunArgs, restart: corral_core::policy::Restart) -> anyhow::Result<TaskSpec> {
    Ok(TaskSpec {
        env: kv("env", &a.env)?.into_iter().collect(),
        labels: kv("label", &a.labels)?.into_iter().collect(),
        restart,
        max_retries: a.max_retries,
        backoff_initial_ms: duration_arg("backoff-initial", &a.backoff_initial)?.as_millis() as u64,
        backoff_max_ms: duration_arg("backoff-max", &a.backoff_max)?.as_millis() as u64,
        stop_timeout_ms: duration_arg("stop-timeout", &a.stop_timeout)?.as_millis() as u64,
        kind: a.remote.as_ref().map(|_| "remote".to_string()),
        extra: match &a.remote {
            Some(host) => json!({ "host": host }),
            None => serde_json::Value::Null,
        },
        ..TaskSpec::new(a.name.clone(), a.command.clone())
    })
}

pub async fn run(c: &Client, a: RunArgs) -> anyhow::Result<i32> {
    let v: Started = c.post("/tasks", &spec(&a)?).await?;
    let run_id = v.run_id.clone();
    {
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", json!({"task": v.task, "run_id": run_id}))?;
        } else {
            writeln!(out, "{run_id}")?;
        }
        out.flush()?;
    }
    let code = start_exit_code(&v);
    if code != 0 {
        return Ok(code);
    }
    if a.follow {
        return monitor::monitor(
            c,
            monitor::MonitorOpts {
                task: a.name,
                run: Some(run_id),
                tail: 0,
                since: Some(0),
                json: a.json,
                raw: false,
            },
        )
        .await;
    }
    Ok(0)
}

pub async fn stop(c: &Client, a: StopArgs) -> anyhow::Result<i32> {
    let body = StopRequest {
        timeout_ms: match &a.timeout {
            Some(t) => Some(duration_arg("timeout", t)?.as_millis() as u64),
            None => None,
        },
    };
    let info: TaskInfo = c
        .post(
            &format!("{}/stop", corral_client::task_path(&a.name)),
            &body,
        )
        .await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&info)?)?;
    } else {
        writeln!(out, "{}: {}", a.name, info.status)?;
    }
    Ok(0)
}

/// Asks the daemon to stop, then waits (at most a minute) until it no longer answers.
pub async fn shutdown(c: &Client, a: ShutdownArgs) -> anyhow::Result<i32> {
    let req = corral_client::wire::Shutdown {
        leave_running: a.leave_running,
    };
    let _: corral_client::wire::Shutdown = c.post("/shutdown", &req).await?;
    if !a.json {
        let what = if a.leave_running {
            "leaving every task running for the next daemon"
        } else {
            "stopping every task first"
        };
        eprintln!("corral: the daemon is shutting down, {what}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let gone = loop {
        if c.get::<corral_client::wire::Health>("/health")
            .await
            .is_err()
        {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(
            out,
            "{}",
            json!({"stopped": gone, "leave_running": a.leave_running})
        )?;
    } else if gone {
        writeln!(out, "stopped")?;
    }
    if !gone {
        bail!("the daemon still answers a minute after it was asked to stop; see its daemon.log");
    }
    Ok(0)
}

pub async fn restart(c: &Client, a: NameArg) -> anyhow::Result<i32> {
    let v: Started = c
        .post(
            &format!("{}/restart", corral_client::task_path(&a.name)),
            &json!({}),
        )
        .await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    } else {
        writeln!(out, "{}", v.run_id)?;
    }
    Ok(start_exit_code(&v))
}

pub async fn rm(c: &Client, a: NameArg) -> anyhow::Result<i32> {
    let v: Removed = c.delete(&format!("/tasks/{}", enc(&a.name))).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    } else {
        writeln!(out, "removed {}", a.name)?;
    }
    Ok(0)
}

pub async fn ps(c: &Client, json_out: bool) -> anyhow::Result<i32> {
    let tasks: Vec<TaskInfo> = c.get("/tasks").await?;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", serde_json::to_string(&tasks)?)?;
        return Ok(0);
    }
    if tasks.is_empty() {
        writeln!(
            out,
            "no tasks; start one with `corral run --name NAME -- CMD`"
        )?;
        return Ok(0);
    }
    // With GPUs, a GPU MEM column: what each task's processes hold on them.
    let gpu_mem = gpu_memory_by_task(c).await;
    let mut rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                match t.write_errors {
                    0 => t.status.to_string(),
                    n => format!("{} (log: {n} failed writes)", t.status),
                },
                table::opt(t.pid),
                table::opt(t.run_id.as_deref()),
                t.restarts.to_string(),
                t.uptime_s.map_or("-".into(), table::age),
                sanitize(&t.command).into_owned(),
            ]
        })
        .collect();
    let mut headers = vec![
        "NAME", "STATUS", "PID", "RUN_ID", "RESTARTS", "UPTIME", "COMMAND",
    ];
    // With container tasks running, a CONTAINER column (the short id, as `docker ps`).
    if tasks.iter().any(|t| t.container_id.is_some()) {
        headers.insert(3, "CONTAINER");
        for (row, t) in rows.iter_mut().zip(&tasks) {
            let id = t.container_id.as_deref().unwrap_or("-");
            row.insert(3, sanitize(&id[..id.len().min(12)]).into_owned());
        }
    }
    if let Some(mem) = &gpu_mem {
        let at = headers.len() - 1;
        headers.insert(at, "GPU MEM");
        for (row, t) in rows.iter_mut().zip(&tasks) {
            let cell = mem
                .get(&t.name)
                .map_or("-".to_string(), |b| format!("{} MiB", b / (1024 * 1024)));
            row.insert(at, cell);
        }
    }
    table::print(&mut out, &headers, &rows)?;
    Ok(0)
}

pub async fn runs(c: &Client, a: RunsArgs) -> anyhow::Result<i32> {
    let path = format!(
        "{}limit={}",
        corral_client::runs_path(a.name.as_deref()),
        a.limit
    );
    let rows: Vec<RunInfo> = c.get(&path).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
        return Ok(0);
    }
    if rows.is_empty() {
        writeln!(out, "no runs yet")?;
        return Ok(0);
    }
    let containers = rows.iter().any(|r| r.container_id.is_some());
    let mut table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let failing = r
                .write_error
                .as_ref()
                .map(|e| format!("log writes failing ({}x): {e}", r.write_errors));
            let err = sanitize(
                failing
                    .as_deref()
                    .or(r.error_message.as_deref())
                    .unwrap_or(""),
            );
            let short: String = err.chars().take(60).collect();
            vec![
                r.run_id.clone(),
                r.task.clone(),
                r.attempt.to_string(),
                r.status.to_string(),
                table::opt(r.pid),
                table::time(r.started_at),
                r.ended_at.map_or("-".into(), table::time),
                table::opt(r.exit_code),
                table::opt(r.signal),
                r.lines.to_string(),
                r.bytes.to_string(),
                sanitize(&r.log_path).into_owned(),
                short,
            ]
        })
        .collect();
    let mut headers = vec![
        "RUN_ID", "TASK", "ATTEMPT", "STATUS", "PID", "STARTED", "ENDED", "EXIT", "SIGNAL",
        "LINES", "BYTES", "LOG", "ERROR",
    ];
    // With container runs, a CONTAINER column (the short id, as `docker ps` shows it).
    if containers {
        headers.insert(5, "CONTAINER");
        for (row, r) in table_rows.iter_mut().zip(&rows) {
            let id = r.container_id.as_deref().unwrap_or("-");
            row.insert(5, sanitize(&id[..id.len().min(12)]).into_owned());
        }
    }
    table::print(&mut out, &headers, &table_rows)?;
    Ok(0)
}

/// `corral ps --containers`: the containers carrying corral's labels.
pub async fn ps_containers(c: &Client, json_out: bool) -> anyhow::Result<i32> {
    let list: Vec<ContainerInfo> = c.get("/containers").await?;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", serde_json::to_string(&list)?)?;
        return Ok(0);
    }
    if list.is_empty() {
        writeln!(
            out,
            "no containers with corral's labels; start one with `corral run --image IMAGE --name NAME`"
        )?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|k| {
            let cell = |v: &Option<String>| sanitize(v.as_deref().unwrap_or("-")).into_owned();
            vec![
                sanitize(&k.id[..k.id.len().min(12)]).into_owned(),
                sanitize(&k.name).into_owned(),
                cell(&k.task),
                cell(&k.run_id),
                sanitize(&k.image).into_owned(),
                sanitize(&k.status).into_owned(),
                cell(&k.node),
            ]
        })
        .collect();
    table::print(
        &mut out,
        &[
            "CONTAINER",
            "NAME",
            "TASK",
            "RUN_ID",
            "IMAGE",
            "STATUS",
            "NODE",
        ],
        &rows,
    )?;
    Ok(0)
}

/// GPU memory held by each task's processes, when the daemon's machine has GPUs (`None`
/// without, or when the daemon cannot say: `ps` then has no GPU column).
async fn gpu_memory_by_task(c: &Client) -> Option<std::collections::HashMap<String, u64>> {
    let snap = c.gpu().await.ok()?;
    if !snap.available || snap.gpus.is_empty() {
        return None;
    }
    let mut by_task = std::collections::HashMap::new();
    for p in snap.gpus.iter().flat_map(|g| g.processes.iter()) {
        if let (Some(task), Some(b)) = (&p.task, p.used_memory_bytes) {
            *by_task.entry(task.clone()).or_insert(0) += b;
        }
    }
    Some(by_task)
}
