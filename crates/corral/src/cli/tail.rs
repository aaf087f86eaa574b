//! `corral tail PATH --name NAME`: a task whose run follows a local file someone else
//! writes, like `tail -F`. The daemon reads it (the `file` task kind); this command only
//! makes the path absolute and creates the task. `corral tail user@host:/path` (scp's
//! form) follows a file on another machine over SSH (the `remote-file` kind);
//! `corral tail container:NAME --name N` follows an existing container's output (the
//! `container` kind).

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

A remote file, user@host:/path (as scp writes it; a host of the daemon's ssh config works
too), is read by the daemon over its one SSH connection to that host, by byte position:
after a dropped connection, or a daemon restart, it goes on at the byte after the last
line read. Host keys are checked strictly: an unknown one is an error, never accepted.

  corral tail gpu@10.0.0.7:/srv/outputs/p1/run.log --name p1

  corral tail container:web --name web-logs   # an existing container's stdout and stderr

A followed container's output is read through the daemon's container engine (`corral serve
--docker-host`), from its start; the run ends when the container does, with its exit code,
and `corral stop` only stops following (the container keeps running).";

#[derive(Args, Debug)]
pub struct TailArgs {
    /// The file to follow (made absolute here; it need not exist yet), or
    /// `user@host:/path` on another machine, or `container:NAME` (a container's name or id).
    pub path: PathBuf,
    /// Task name (letters, digits, `.`, `_`, `-`).
    #[arg(long)]
    pub name: String,
    /// Print `{"task": …, "run_id": …}` instead of the run id.
    #[arg(long)]
    pub json: bool,
}

/// `host:path` as scp reads it: a colon before any slash (`./a:b` is a local file).
fn remote(arg: &std::path::Path) -> Option<(&str, &str)> {
    let s = arg.to_str()?;
    let (host, path) = s.split_once(':')?;
    (!host.is_empty() && !host.contains('/') && !path.is_empty()).then_some((host, path))
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
    if let Some((host, path)) = remote(&a.path) {
        return Ok(TaskSpec {
            kind: Some("remote-file".into()),
            extra: json!({ "host": host, "path": path }),
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

#[cfg(test)]
mod tests {
    use super::remote;
    use std::path::Path;

    #[test]
    fn a_remote_file_is_written_as_scp_writes_it() {
        assert_eq!(
            remote(Path::new("gpu@10.0.0.7:/srv/run.log")),
            Some(("gpu@10.0.0.7", "/srv/run.log"))
        );
        assert_eq!(
            remote(Path::new("box:logs/a.log")),
            Some(("box", "logs/a.log"))
        );
        for local in ["/var/log/a:b.log", "./a:b", "a.log", "box:"] {
            assert_eq!(remote(Path::new(local)), None, "{local}");
        }
    }
}
