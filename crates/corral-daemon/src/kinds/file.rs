//! The `file` kind: a task whose run follows a local file someone else writes, like
//! `tail -F` (`corral tail PATH --name NAME`). The spec names the path in `extra.path`
//! (absolute); its command is the path, which is what `corral ps` shows. The run is read
//! by [`crate::sources::file`] and never ends by itself: a stop ends it (`killed`, as a
//! process stopped by hand), and a file that can no longer be read fails it.
//!
//! Every run goes on from where the task's last run stopped reading, when the file at the
//! path is still that file (or it was rotated and the old one is beside it): a file task
//! never hands a byte twice. A run an earlier daemon was writing when it died is taken
//! back, the same run with its seqs going on.

use crate::sources::file::{resume_point, FileSource, Resume};
use crate::supervisor::kind::TaskKind;
use crate::supervisor::run::{BoxFuture, End, Launched, RunHandle, RunPlace, Stopping};
use corral_client::wire::TaskSpec;
use corral_core::policy::{Exit, Restart};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

/// The `file` kind.
pub struct FileKind;

/// The path a file task follows.
fn path_of(spec: &TaskSpec) -> Result<PathBuf, String> {
    let path = spec.extra.get("path").and_then(|p| p.as_str()).ok_or(
        "a file task needs `extra.path`, the file to follow, e.g. {\"path\": \"/var/log/app.log\"}",
    )?;
    if !path.starts_with('/') {
        return Err(format!(
            "the path `{path}` is relative; give an absolute path (the daemon's own working \
             directory is no place to guess from)"
        ));
    }
    let p = PathBuf::from(path);
    if p.file_name().is_none() || path.ends_with('/') {
        return Err(format!("`{path}` names no file; give the path of a file"));
    }
    Ok(p)
}

impl TaskKind for FileKind {
    fn name(&self) -> &'static str {
        "file"
    }

    fn prepare(&self, spec: &mut TaskSpec) -> Result<(), String> {
        let path = path_of(spec)?;
        if spec.health.is_some() {
            return Err("a file task has no health check: there is no server to ask".into());
        }
        spec.command = vec![path.display().to_string()];
        // A followed file never ends by itself: what should be followed is followed again
        // after a daemon restart or a failed read.
        if spec.restart == Restart::No {
            spec.restart = Restart::Always;
        }
        Ok(())
    }

    fn launch(&self, spec: &TaskSpec, run: &RunPlace) -> Option<Result<Launched, String>> {
        Some(path_of(spec).map(|path| {
            // The previous run's position counts only if it followed this same path.
            let resume = run
                .previous
                .and_then(|prev| resume_point(run.log_dir, prev))
                .filter(|r| r.path == path && r.host.is_none());
            launched(path, resume, "following")
        }))
    }

    fn resume(&self, spec: &TaskSpec, run: &RunPlace) -> Option<Result<Launched, String>> {
        let resume = resume_point(run.log_dir, run.run_id)?;
        Some(path_of(spec).map(|path| {
            let offset = resume.offset;
            let mut l = launched(path, Some(resume), "following");
            l.note = format!("taken back by a new daemon: {}, from byte {offset}", l.note);
            l
        }))
    }

    fn quotes_stderr(&self) -> bool {
        false
    }
}

fn launched(path: PathBuf, resume: Option<Resume>, verb: &str) -> Launched {
    let (failed, rx) = oneshot::channel();
    Launched {
        what: format!("{verb} {}", path.display()),
        note: format!("{verb} {}", path.display()),
        handle: Box::new(FileRun {
            path: path.clone(),
            failed: Some(rx),
            why: None,
        }),
        source: Box::new(FileSource {
            path,
            resume,
            failed,
        }),
    }
}

/// A followed file's run: released on stop; it ends by itself only when the file can no
/// longer be read.
struct FileRun {
    path: PathBuf,
    failed: Option<oneshot::Receiver<String>>,
    why: Option<String>,
}

impl RunHandle for FileRun {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn terminate(&mut self, _grace: Duration) -> Stopping {
        Stopping::Released(format!("no longer following {}", self.path.display()))
    }

    fn kill(&mut self, _grace: Duration) -> String {
        // Never asked: a released run ends at once.
        format!("no longer following {}", self.path.display())
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let Some(rx) = self.failed.as_mut() else {
                return std::future::pending().await;
            };
            match rx.await {
                Ok(why) => {
                    self.failed = None;
                    self.why = Some(why);
                    Exit::Code(1)
                }
                Err(_) => {
                    self.failed = None;
                    std::future::pending().await
                }
            }
        })
    }

    fn end_text(&self, end: End, _failing: bool) -> String {
        match (end, &self.why) {
            (End::Exited(_), Some(why)) => format!("stopped following: {why}"),
            _ => format!("stopped following {}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> TaskSpec {
        serde_json::from_value(serde_json::json!({"name": "f", "kind": "file", "extra": extra}))
            .unwrap()
    }

    #[test]
    fn a_file_task_names_an_absolute_path_which_becomes_its_command() {
        let mut s = spec(serde_json::json!({"path": "/var/log/app.log"}));
        FileKind.prepare(&mut s).unwrap();
        assert_eq!(s.command, ["/var/log/app.log"]);
        assert_eq!(s.restart, Restart::Always);
        for (extra, says) in [
            (serde_json::json!({"path": "app.log"}), "relative"),
            (serde_json::json!({}), "extra.path"),
            (serde_json::json!({"path": "/var/log/"}), "names no file"),
        ] {
            let err = FileKind.prepare(&mut spec(extra)).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
