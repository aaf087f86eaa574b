//! The `container` kind: a task whose run is a container, through the container engine's
//! API (Docker, or Podman's compatible socket; see [`crate::sources::container`]).
//!
//! Two shapes, by `extra`:
//! - `{"image": IMAGE, "args": [...], "network": "host", "gpus": "all", "publish":
//!   ["8080:8080"]}` (`corral run --image`): every run creates and starts a new container (`corral-<task>-<run id>`)
//!   with the task's environment, working directory (inside the container) and labels,
//!   plus corral's (`corral.task`, `corral.run_id`, `corral.started_at`, `corral.node`).
//!   Stop is the engine's stop (the container's stop signal, SIGKILL after the task's
//!   stop timeout); the container's exit code is the run's; after the run the container
//!   is inspected (kept with the run) and removed. A run outlives the daemon: the next
//!   one takes it back (the container found by its name, its logs going on after the
//!   log's checkpoint). Before a run starts, a container of this daemon's task left
//!   behind (a run that could not be taken back) is removed: nothing runs twice. The task's command (what `corral ps` shows) is the image and its args.
//! - `{"container": NAME}` (`corral tail container:NAME`): an existing container's logs
//!   are followed; the run ends when the container does (with its exit code), and a stop
//!   lets go of it (left running). The first run reads the container's logs from its
//!   start; a later run of the task goes on after what the previous one read, when it is
//!   the same container (its full id is kept beside the run's log); a daemon restart
//!   takes the run back the same way.

use crate::sources::container::engine::{self, Create, Ended, Engine};
use crate::sources::container::{is_full_id, read_id, ContainerSource};
use crate::supervisor::kind::TaskKind;
use crate::supervisor::run::{BoxFuture, End, Launched, RunHandle, RunPlace, Stopping};
use corral_client::wire::TaskSpec;
use corral_core::policy::Exit;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// The `container` kind.
pub struct ContainerKind {
    engine: Engine,
    /// This node's name, for the `corral.node` label.
    node: String,
}

impl ContainerKind {
    pub fn new(engine: Engine, node: String) -> ContainerKind {
        ContainerKind { engine, node }
    }
}

/// What a container task runs, from its spec.
enum Shape {
    Image {
        image: String,
        args: Vec<String>,
        network: Option<String>,
        gpus: Option<String>,
        publish: Vec<engine::Publish>,
    },
    Follow(String),
}

fn opt_str(spec: &TaskSpec, key: &str) -> Result<Option<String>, String> {
    match spec.extra.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(v) => Err(format!("`extra.{key}` must be a non-empty string, not {v}")),
    }
}

fn shape(spec: &TaskSpec) -> Result<Shape, String> {
    let image = opt_str(spec, "image")?;
    let follow = opt_str(spec, "container")?;
    match (image, follow) {
        (Some(image), None) => {
            if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "the image `{}` has spaces or control characters; give a name such as ghcr.io/org/llama:latest",
                    corral_core::term::sanitize(&image)
                ));
            }
            let args = match spec.extra.get("args") {
                None | Some(serde_json::Value::Null) => spec.command.clone(),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| "`extra.args` must be a list of strings".to_string())?,
            };
            let publish: Vec<String> = match spec.extra.get("publish") {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| "`extra.publish` must be a list of strings".to_string())?,
            };
            Ok(Shape::Image {
                image,
                args,
                network: opt_str(spec, "network")?,
                gpus: opt_str(spec, "gpus")?,
                publish: publish
                    .iter()
                    .map(|p| engine::parse_publish(p))
                    .collect::<Result<_, _>>()?,
            })
        }
        (None, Some(name)) => Ok(Shape::Follow(name)),
        (Some(_), Some(_)) => Err(
            "a container task either runs an image (`extra.image`) or follows a container \
             (`extra.container`), not both"
                .into(),
        ),
        (None, None) => Err(
            "a container task needs `extra.image` (a container to run, e.g. {\"image\": \
             \"ghcr.io/org/llama:latest\"}) or `extra.container` (one to follow)"
                .into(),
        ),
    }
}

impl TaskKind for ContainerKind {
    fn name(&self) -> &'static str {
        "container"
    }

    fn prepare(&self, spec: &mut TaskSpec) -> Result<(), String> {
        match shape(spec)? {
            Shape::Image { image, args, .. } => {
                if let Some(cwd) = spec.cwd.as_deref().filter(|c| !c.starts_with('/')) {
                    return Err(format!(
                        "the working directory `{}` is relative; inside a container give an absolute path",
                        corral_core::term::sanitize(cwd)
                    ));
                }
                // The args live in `extra.args`; the command is what `corral ps` shows.
                if let serde_json::Value::Object(m) = &mut spec.extra {
                    m.insert("args".into(), serde_json::json!(args));
                }
                spec.command = std::iter::once(image).chain(args).collect();
            }
            Shape::Follow(name) => {
                if spec.health.is_some() {
                    return Err("a followed container has no health check of corral's".into());
                }
                spec.command = vec![format!("container:{name}")];
            }
        }
        Ok(())
    }

    fn launch_async<'a>(
        &'a self,
        spec: &'a TaskSpec,
        run: &'a RunPlace<'a>,
    ) -> BoxFuture<'a, Option<Result<Launched, String>>> {
        Box::pin(async move {
            let shape = match shape(spec) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            Some(match shape {
                Shape::Image {
                    image,
                    args,
                    network,
                    gpus,
                    publish,
                } => {
                    let create = Create {
                        image,
                        args,
                        network,
                        gpus,
                        publish,
                        ..Default::default()
                    };
                    self.start(spec, run, create).await
                }
                Shape::Follow(name) => self.follow(&name, run).await,
            })
        })
    }

    /// A run an earlier daemon left: its container (known by its name) goes on, and its
    /// logs are read again from the start, less what the log's checkpoint already has.
    fn resume(&self, spec: &TaskSpec, run: &RunPlace) -> Option<Result<Launched, String>> {
        let (log_path, _, _) = crate::logbook::run_paths(run.log_dir, run.run_id);
        let at = crate::logbook::Checkpoint::read(&log_path).ok()?;
        let note = |what: &str| {
            format!(
                "taken back by a new daemon: {what} ran on, and its logs go on after seq {}",
                at.last_seq
            )
        };
        let mut l = match shape(spec).ok()? {
            Shape::Image { image, .. } => {
                let name = container_name(spec, run.run_id);
                let mut l = launched(
                    &self.engine,
                    name.clone(),
                    name.clone(),
                    true,
                    format!("container {name} ({image})"),
                    note(&format!("container {name}")),
                );
                // Known by its name until the source learns its id.
                l.source.learn_id = Some(l.handle.full_id.clone());
                l
            }
            Shape::Follow(name) => {
                let id = read_id(&log_path)?;
                launched(
                    &self.engine,
                    id.clone(),
                    name.clone(),
                    false,
                    format!("following container {} ({name})", short_id(&id)),
                    note(&format!("container {name}")),
                )
            }
        };
        l.source.resume = Some(at.streams);
        Some(Ok(l.into()))
    }

    fn launch(&self, _spec: &TaskSpec, _run: &RunPlace) -> Option<Result<Launched, String>> {
        Some(Err(
            "a container task is started by the daemon's task actor, never by a plain launch"
                .into(),
        ))
    }
}

impl ContainerKind {
    /// Creates and starts a new container for the run.
    async fn start(
        &self,
        spec: &TaskSpec,
        run: &RunPlace<'_>,
        create: Create,
    ) -> Result<Launched, String> {
        let fail = |e: engine::EngineError| format!("cannot run the container: {e}");
        // Nothing runs twice: a container of this task left by a daemon that died.
        let left = self
            .engine
            .list(&[
                format!("{}={}", engine::LABEL_TASK, spec.name),
                format!("{}={}", engine::LABEL_NODE, self.node),
            ])
            .await
            .map_err(fail)?;
        for c in left {
            // Only a run of this daemon's (its log is here): another daemon on this
            // machine may have a task of the same name.
            let ours = c
                .labels
                .as_ref()
                .and_then(|l| l.get(engine::LABEL_RUN))
                .is_some_and(|r| crate::logbook::run_paths(run.log_dir, r).0.exists());
            if let (true, Some(id)) = (ours, c.id) {
                tracing::warn!(task = %spec.name, container = %id, "removing a container an earlier run left behind");
                let _ = self.engine.remove(&id).await;
            }
        }
        let mut labels: std::collections::HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(engine::LABEL_TASK.into(), spec.name.clone());
        labels.insert(engine::LABEL_RUN.into(), run.run_id.into());
        labels.insert(
            engine::LABEL_STARTED.into(),
            corral_core::time::rfc3339_utc(crate::util::unix_now()),
        );
        labels.insert(engine::LABEL_NODE.into(), self.node.clone());
        let name = container_name(spec, run.run_id);
        let image = create.image.clone();
        let create = Create {
            name: name.clone(),
            env: spec.env.clone().into_iter().collect(),
            labels,
            working_dir: spec.cwd.clone(),
            ..create
        };
        let started = self.engine.run(&create).await.map_err(fail)?;
        let short = short_id(&started.id);
        let mut note = format!(
            "started container {short} ({name}): {}",
            crate::supervisor::display_command(&spec.command)
        );
        for w in &started.warnings {
            note.push_str(&format!("; the engine warns: {w}"));
        }
        Ok(launched(
            &self.engine,
            started.id.clone(),
            name,
            true,
            format!("container {short} ({image})"),
            note,
        )
        .into())
    }

    /// Follows an existing container's logs.
    async fn follow(&self, name: &str, run: &RunPlace<'_>) -> Result<Launched, String> {
        let v = self.engine.inspect(name).await.map_err(|e| {
            if e.not_found() {
                format!(
                    "no container `{}` on the engine at {}; `docker ps -a` lists them",
                    corral_core::term::sanitize(name),
                    self.engine.host()
                )
            } else {
                format!("cannot follow the container: {e}")
            }
        })?;
        let id = v["Id"].as_str().unwrap_or(name).to_string();
        // The task's previous run read this same container up to its checkpoint: go on
        // from there, so that no line is read twice.
        let after = run.previous.and_then(|prev| {
            let (log, _, _) = crate::logbook::run_paths(run.log_dir, prev);
            (read_id(&log)? == id)
                .then(|| crate::logbook::Checkpoint::read(&log).ok())
                .flatten()
        });
        let short = short_id(&id).to_string();
        let mut note = format!("following container {short} ({name})");
        if after.is_some() {
            note.push_str(", after what the task's previous run read of it");
        }
        let mut l = launched(
            &self.engine,
            id,
            name.to_string(),
            false,
            format!("following container {short} ({name})"),
            note,
        );
        l.source.resume = after.map(|c| c.streams);
        Ok(l.into())
    }
}

/// The name of a run's container (a later daemon finds it by it).
fn container_name(spec: &TaskSpec, run_id: &str) -> String {
    format!("corral-{}-{}", spec.name, run_id)
}

/// The first 12 hex digits of a container id, as `docker ps` shows it.
fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A run's handle and source, before they become a [`Launched`].
struct Parts {
    handle: ContainerRun,
    source: ContainerSource,
    what: String,
    note: String,
}

impl From<Parts> for Launched {
    fn from(p: Parts) -> Launched {
        Launched {
            handle: Box::new(p.handle),
            source: Box::new(p.source),
            what: p.what,
            note: p.note,
        }
    }
}

fn launched(
    engine: &Engine,
    id: String,
    name: String,
    owned: bool,
    what: String,
    note: String,
) -> Parts {
    let (tx, rx) = oneshot::channel();
    let full_id = Arc::new(OnceLock::new());
    if is_full_id(&id) {
        let _ = full_id.set(id.clone());
    }
    Parts {
        handle: ContainerRun {
            engine: engine.clone(),
            id: id.clone(),
            full_id,
            name,
            owned,
            ended: Some(rx),
            end: None,
        },
        source: ContainerSource {
            engine: engine.clone(),
            id,
            owned,
            resume: None,
            learn_id: None,
            ended: tx,
        },
        what,
        note,
    }
}

/// A container's run: stopped through the engine (or let go of, when corral only
/// follows it); its end is the engine's.
struct ContainerRun {
    engine: Engine,
    id: String,
    name: String,
    owned: bool,
    /// The container's full id, once known (a run taken back knows its container by
    /// name first; its source learns the id).
    full_id: Arc<OnceLock<String>>,
    ended: Option<oneshot::Receiver<Ended>>,
    end: Option<Ended>,
}

impl RunHandle for ContainerRun {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn container(&self) -> Option<String> {
        self.full_id.get().cloned()
    }

    fn terminate(&mut self, grace: Duration) -> Stopping {
        if !self.owned {
            return Stopping::Released(format!(
                "no longer following container {} (left running)",
                self.name
            ));
        }
        let (engine, id) = (self.engine.clone(), self.id.clone());
        tokio::spawn(async move {
            if let Err(e) = engine.stop(&id, grace).await {
                tracing::warn!(container = %id, "stopping the container: {e}");
            }
        });
        Stopping::Asked(format!(
            "stop to container {} (its stop signal, SIGTERM by default; SIGKILL after {}s)",
            short_id(&self.id),
            grace.as_millis().div_ceil(1000)
        ))
    }

    fn kill(&mut self, grace: Duration) -> String {
        let (engine, id) = (self.engine.clone(), self.id.clone());
        tokio::spawn(async move {
            if let Err(e) = engine.kill(&id).await {
                tracing::warn!(container = %id, "killing the container: {e}");
            }
        });
        format!(
            "still running {}s after the stop signal: SIGKILL to container {}",
            grace.as_millis().div_ceil(1000),
            short_id(&self.id)
        )
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let Some(rx) = self.ended.as_mut() else {
                return std::future::pending().await;
            };
            match rx.await {
                Ok(end) => {
                    self.ended = None;
                    let code = end.code.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                    self.end = Some(end);
                    Exit::Code(code)
                }
                Err(_) => {
                    self.ended = None;
                    std::future::pending().await
                }
            }
        })
    }

    fn end_text(&self, end: End, _failing: bool) -> String {
        match (end, &self.end) {
            (End::Released, _) => format!("no longer following container {}", self.name),
            (End::Exited(_), Some(e)) => {
                let mut t = format!("container exited with code {}", e.code);
                if let Some(d) = &e.detail {
                    t.push_str(&format!(" ({d})"));
                }
                t
            }
            (End::Exited(Exit::Code(c)), None) => format!("container exited with code {c}"),
            (End::Exited(Exit::Signal(s)), None) => format!("container ended by signal {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value, command: &[&str]) -> TaskSpec {
        let mut s: TaskSpec = serde_json::from_value(
            serde_json::json!({"name": "c", "kind": "container", "extra": extra}),
        )
        .unwrap();
        s.command = command.iter().map(|s| s.to_string()).collect();
        s
    }

    fn kind() -> ContainerKind {
        ContainerKind::new(Engine::new(None), "n".into())
    }

    #[test]
    fn an_image_task_keeps_its_args_and_shows_the_image_as_its_command() {
        let mut s = spec(serde_json::json!({"image": "busybox"}), &["--port", "8080"]);
        kind().prepare(&mut s).unwrap();
        assert_eq!(s.command, ["busybox", "--port", "8080"]);
        assert_eq!(s.extra["args"], serde_json::json!(["--port", "8080"]));
        // Prepared again (a daemon restoring its tasks): the same.
        kind().prepare(&mut s).unwrap();
        assert_eq!(s.command, ["busybox", "--port", "8080"]);
    }

    #[test]
    fn bad_container_specs_say_what_to_give() {
        for (extra, says) in [
            (serde_json::json!({}), "extra.image"),
            (
                serde_json::json!({"image": "a", "container": "b"}),
                "not both",
            ),
            (serde_json::json!({"image": ""}), "non-empty"),
            (serde_json::json!({"image": "a b"}), "spaces"),
            (
                serde_json::json!({"image": "a", "args": "x"}),
                "list of strings",
            ),
            (
                serde_json::json!({"image": "a", "publish": ["x"]}),
                "not a port to publish",
            ),
        ] {
            let err = kind().prepare(&mut spec(extra, &[])).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        let mut s = spec(serde_json::json!({"image": "a"}), &[]);
        s.cwd = Some("work".into());
        assert!(kind().prepare(&mut s).unwrap_err().contains("absolute"));
        let mut s = spec(serde_json::json!({"container": "web"}), &[]);
        kind().prepare(&mut s).unwrap();
        assert_eq!(s.command, ["container:web"]);
    }
}
