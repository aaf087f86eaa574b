//! The kinds whose runs are on another machine, reached over SSH ([`crate::ssh`]):
//!
//! - `remote-file` (`corral tail user@host:/path --name NAME`): a remote file followed by
//!   byte position (`extra.host`, `extra.path`; its command is `host:path`). Like the
//!   local `file` kind, a run never ends by itself, a stop releases it, and the next run
//!   (or a new daemon taking the run back) goes on at the byte after the last record.
//! - `remote` (`corral run --remote user@host --name NAME -- CMD…`): a command started
//!   under the remote runner ([`crate::ssh::remote::launch`]), which keeps its output and
//!   exit status in `~/.corral/runs/<run_id>/` on that host; the run reads the output by
//!   position and ends with the status, so a dropped connection loses nothing. A stop
//!   sends SIGTERM to the remote process group, SIGKILL after the grace. The daemon may
//!   leave it running (`shutdown --leave-running`) and the next one takes it back.
//!
//! A status the runner recorded above 128 is a signal's (`128 + n`, as the shell says).

use crate::sources::file::{resume_point, Resume};
use crate::sources::remote::{RemoteEnd, RemoteSource};
use crate::ssh::{check_host, remote, Ssh};
use crate::supervisor::kind::TaskKind;
use crate::supervisor::run::{BoxFuture, End, Launched, RunHandle, RunPlace, Stopping};
use corral_client::wire::TaskSpec;
use corral_core::policy::{Exit, Restart};
use corral_core::record::Stream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// How long a stop's signal may take to reach the remote host.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(15);

fn host_of(spec: &TaskSpec) -> Result<String, String> {
    let host = spec.extra.get("host").and_then(|p| p.as_str()).ok_or(
        "a remote task needs `extra.host`, the SSH destination, e.g. {\"host\": \"gpu@10.0.0.7\"}",
    )?;
    check_host(host).map_err(|e| e.to_string())?;
    Ok(host.to_string())
}

fn path_of(spec: &TaskSpec) -> Result<String, String> {
    let path = spec
        .extra
        .get("path")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty() && !p.ends_with('/'))
        .ok_or(
            "a remote file task needs `extra.path`, the remote file, e.g. {\"path\": \"/srv/run.log\"}",
        )?;
    if path.contains(['\n', '\0']) {
        return Err("the remote path has a newline or NUL in it".into());
    }
    Ok(path.to_string())
}

/// The `remote-file` kind.
pub struct RemoteFileKind(pub Ssh);

impl TaskKind for RemoteFileKind {
    fn name(&self) -> &'static str {
        "remote-file"
    }

    fn prepare(&self, spec: &mut TaskSpec) -> Result<(), String> {
        let host = host_of(spec)?;
        let path = path_of(spec)?;
        if spec.health.is_some() {
            return Err("a remote file task has no health check: there is no server to ask".into());
        }
        spec.command = vec![format!("{host}:{path}")];
        if spec.restart == Restart::No {
            spec.restart = Restart::Always;
        }
        Ok(())
    }

    fn launch(&self, spec: &TaskSpec, run: &RunPlace) -> Option<Result<Launched, String>> {
        Some(self.launch_file(spec, run))
    }

    fn resume(&self, spec: &TaskSpec, run: &RunPlace) -> Option<Result<Launched, String>> {
        let resume = resume_point(run.log_dir, run.run_id)?;
        Some(self.resume_file(spec, resume))
    }

    fn quotes_stderr(&self) -> bool {
        false
    }
}

impl RemoteFileKind {
    fn launch_file(&self, spec: &TaskSpec, run: &RunPlace) -> Result<Launched, String> {
        let (host, path) = (host_of(spec)?, path_of(spec)?);
        // The previous run's position counts only if it read this same file.
        let resume = run
            .previous
            .and_then(|prev| resume_point(run.log_dir, prev))
            .filter(|r| r.path.to_str() == Some(&path) && r.host.as_deref() == Some(&host));
        Ok(self.file_run(host, path, resume, "following"))
    }

    fn resume_file(&self, spec: &TaskSpec, resume: Resume) -> Result<Launched, String> {
        let (host, path) = (host_of(spec)?, path_of(spec)?);
        let offset = resume.offset;
        let mut l = self.file_run(host, path, Some(resume), "following");
        l.note = format!("taken back by a new daemon: {}, from byte {offset}", l.note);
        Ok(l)
    }

    fn file_run(&self, host: String, path: String, resume: Option<Resume>, verb: &str) -> Launched {
        let (ended, rx) = oneshot::channel();
        let what = format!("{verb} {host}:{path} over SSH");
        Launched {
            note: what.clone(),
            what,
            handle: Box::new(RemoteRun {
                ssh: self.0.clone(),
                host: host.clone(),
                what: format!("{host}:{path}"),
                dir: None,
                ended: Some(rx),
                gave_up: Arc::new(Notify::new()),
                why: None,
            }),
            source: Box::new(RemoteSource {
                ssh: self.0.clone(),
                host,
                path,
                stream: Stream::File,
                status: None,
                resume,
                ended,
                detachable: false,
                launch: None,
            }),
        }
    }
}

/// The `remote` kind: a command on another machine.
pub struct RemoteKind(pub Ssh);

impl TaskKind for RemoteKind {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn prepare(&self, spec: &mut TaskSpec) -> Result<(), String> {
        host_of(spec)?;
        if spec.command.is_empty() {
            return Err("a remote task needs a command to run on the host".into());
        }
        if spec.health.is_some() {
            return Err("a remote task has no health check (it would be asked from here)".into());
        }
        Ok(())
    }

    fn launch(&self, spec: &TaskSpec, run: &RunPlace) -> Option<Result<Launched, String>> {
        Some(host_of(spec).map(|host| self.command_run(spec, host, run.run_id, None)))
    }

    fn resume(&self, spec: &TaskSpec, run: &RunPlace) -> Option<Result<Launched, String>> {
        let resume = resume_point(run.log_dir, run.run_id)?;
        Some(host_of(spec).map(|host| {
            let offset = resume.offset;
            let mut l = self.command_run(spec, host, run.run_id, Some(resume));
            l.note = format!(
                "taken back by a new daemon: {}, reading its log from byte {offset}",
                l.note
            );
            l
        }))
    }
}

impl RemoteKind {
    fn command_run(
        &self,
        spec: &TaskSpec,
        host: String,
        run_id: &str,
        resume: Option<Resume>,
    ) -> Launched {
        let dir = remote::run_dir(run_id);
        let mut command: Vec<String> = Vec::new();
        if !spec.env.is_empty() {
            command.push("env".into());
            command.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        command.extend(spec.command.iter().cloned());
        let shown = crate::supervisor::display_command(&spec.command);
        let (ended, rx) = oneshot::channel();
        Launched {
            what: format!("on {host} over SSH"),
            note: format!("started on {host}: {shown} (output and status kept there in ~/{dir})"),
            handle: Box::new(RemoteRun {
                ssh: self.0.clone(),
                host: host.clone(),
                what: host.clone(),
                dir: Some(dir.clone()),
                ended: Some(rx),
                gave_up: Arc::new(Notify::new()),
                why: None,
            }),
            source: Box::new(RemoteSource {
                ssh: self.0.clone(),
                host,
                path: format!("{dir}/log"),
                stream: Stream::Stdout,
                status: Some(format!("{dir}/status")),
                resume,
                ended,
                detachable: true,
                launch: Some(remote::launch(&dir, spec.cwd.as_deref(), &command)),
            }),
        }
    }
}

/// A remote run: a followed file (released on stop) or a command (signalled on stop; it
/// ends with the status its runner recorded).
struct RemoteRun {
    ssh: Ssh,
    host: String,
    what: String,
    /// A command's remote directory; `None` for a followed file.
    dir: Option<String>,
    ended: Option<oneshot::Receiver<RemoteEnd>>,
    /// A stop found nothing to signal (the command never started): the run ends.
    gave_up: Arc<Notify>,
    why: Option<String>,
}

impl RemoteRun {
    /// Sends `sig` to the command's process group, in a task of its own.
    fn signal(&self, sig: &'static str) {
        let Some(dir) = self.dir.clone() else { return };
        let (ssh, host, gave_up) = (self.ssh.clone(), self.host.clone(), self.gave_up.clone());
        tokio::spawn(async move {
            let said = ssh
                .output(&host, &remote::signal(&dir, sig), SIGNAL_TIMEOUT)
                .await;
            match said {
                Ok(out) if String::from_utf8_lossy(&out.stdout).contains("corral-none") => {
                    gave_up.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(host = %host, "sending SIG{sig} to the remote run: {e}");
                    if sig == "KILL" {
                        gave_up.notify_one();
                    }
                }
            }
        });
    }
}

impl RunHandle for RemoteRun {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn terminate(&mut self, grace: Duration) -> Stopping {
        if self.dir.is_none() {
            return Stopping::Released(format!("no longer following {}", self.what));
        }
        self.signal("TERM");
        Stopping::Asked(format!(
            "SIGTERM to the remote process group on {} (SIGKILL after {}s)",
            self.host,
            grace.as_secs_f64()
        ))
    }

    fn kill(&mut self, grace: Duration) -> String {
        self.signal("KILL");
        format!(
            "still running {}s after SIGTERM: SIGKILL to the remote process group on {}",
            grace.as_secs_f64(),
            self.host
        )
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let Some(rx) = self.ended.as_mut() else {
                return std::future::pending().await;
            };
            let gave_up = self.gave_up.clone();
            let end = tokio::select! {
                r = rx => r,
                _ = gave_up.notified() => {
                    self.ended = None;
                    self.why = Some(format!("the command on {} never started", self.host));
                    return Exit::Signal(libc::SIGKILL);
                }
            };
            self.ended = None;
            match end {
                Ok(RemoteEnd::Exit(s)) if s > 128 && s <= 128 + 64 => Exit::Signal(s - 128),
                Ok(RemoteEnd::Exit(s)) => Exit::Code(s),
                Ok(RemoteEnd::Failed(why)) => {
                    self.why = Some(why);
                    Exit::Code(255)
                }
                Err(_) => std::future::pending().await,
            }
        })
    }

    fn end_text(&self, end: End, _failing: bool) -> String {
        match (&self.why, end, &self.dir) {
            (Some(why), End::Exited(_), _) => why.clone(),
            (None, End::Exited(exit), Some(_)) => format!(
                "{} on {}",
                crate::supervisor::run::process_end_text(End::Exited(exit)),
                self.host
            ),
            _ => format!("stopped following {}", self.what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, extra: serde_json::Value, cmd: &[&str]) -> TaskSpec {
        serde_json::from_value(
            serde_json::json!({"name": "r", "kind": kind, "extra": extra, "command": cmd}),
        )
        .unwrap()
    }

    #[test]
    fn remote_specs_name_a_host_that_is_not_an_option() {
        let ssh = Ssh::new(std::path::Path::new("/tmp/h"), None);
        let mut s = spec(
            "remote-file",
            serde_json::json!({"host": "gpu@box", "path": "/srv/run.log"}),
            &[],
        );
        RemoteFileKind(ssh.clone()).prepare(&mut s).unwrap();
        assert_eq!(s.command, ["gpu@box:/srv/run.log"]);
        let err = RemoteFileKind(ssh.clone())
            .prepare(&mut spec(
                "remote-file",
                serde_json::json!({"host": "-oProxyCommand=x", "path": "/a"}),
                &[],
            ))
            .unwrap_err();
        assert!(err.contains("not an SSH destination"), "{err}");
        let err = RemoteKind(ssh)
            .prepare(&mut spec("remote", serde_json::json!({"host": "box"}), &[]))
            .unwrap_err();
        assert!(err.contains("command"), "{err}");
    }
}
