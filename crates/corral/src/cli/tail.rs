//! `corral tail PATH --name NAME`: a task whose run follows a local file someone else
//! writes, like `tail -F`. The daemon reads it (the `file` task kind); this command only
//! makes the path absolute and creates the task. `corral tail container:NAME --name N`
//! follows an existing container's output instead (the `container` kind).

use super::start_exit_code;
use anyhow::Context;
use clap::Args;
use corral_client::wire::{Started, TaskSpec};
use corral_client::Client;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

pub const AFTER_HELP: &str = "\
The file's lines become the run's records (stream `file`), sequenced, stored and followed
like a process's output: `corral monitor NAME`, `corral logs NAME`, `corral runs NAME`.

  corral tail /var/log/nginx/access.log --name nginx-access
  corral monitor nginx-access          # recent lines, then live
  corral stop nginx-access             # stop following (the run ends `killed`)

The file need not exist yet: the run waits for it and reads it from its start. Rotation
(rename and re-create) is followed: the old file is read to its end, then the new one
from its start, with a `system` note \"file rotated: …\". A truncated file (copytruncate)
is read again from its start, with a note; lines written between the copy and the
truncation may be lost. Reading goes on after a daemon restart, and after a stop and
start, from the byte after the last line read: no line is read twice. A last line with no
newline yet waits for its newline.

  corral tail container:web --name web-logs   # an existing container's stdout and stderr

A followed container's output is read through the daemon's container engine (`corral serve
--docker-host`), from its start; the run ends when the container does, with its exit code,
and `corral stop` only stops following (the container keeps running).";

#[derive(Args, Debug)]
pub struct TailArgs {
    /// The file to follow (made absolute here; it need not exist yet), or
    /// `container:NAME` (a container's name or id).
    pub path: PathBuf,
    /// Task name (letters, digits, `.`, `_`, `-`).
    #[arg(long)]
    pub name: String,
    /// Print `{"task": …, "run_id": …}` instead of the run id.
    #[arg(long)]
    pub json: bool,
}

/// The spec of a file task following `path`, absolute.
fn spec(a: &TailArgs) -> anyhow::Result<TaskSpec> {
    if let Some(name) = a.path.to_str().and_then(|p| p.strip_prefix("container:")) {
        if name.is_empty() {
            anyhow::bail!("`container:` names no container; write e.g. container:web");
        }
        return Ok(TaskSpec {
            kind: Some("container".into()),
            extra: json!({ "container": name }),
            ..TaskSpec::new(a.name.clone(), Vec::new())
        });
    }
    let path = if a.path.is_absolute() {
        a.path.clone()
    } else {
        std::env::current_dir()
            .context("reading the current directory, to make the path absolute")?
            .join(&a.path)
    };
    let path = path
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8; give a UTF-8 path", path.display()))?
        .to_string();
    Ok(TaskSpec {
        kind: Some("file".into()),
        extra: json!({ "path": path }),
        ..TaskSpec::new(a.name.clone(), Vec::new())
    })
}

pub async fn tail(c: &Client, a: TailArgs) -> anyhow::Result<i32> {
    let v: Started = c.post("/tasks", &spec(&a)?).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", json!({"task": v.task, "run_id": v.run_id}))?;
    } else {
        writeln!(out, "{}", v.run_id)?;
    }
    out.flush()?;
    Ok(start_exit_code(&v))
}
