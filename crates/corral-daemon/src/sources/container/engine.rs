//! The container engine, through the Docker Engine API (the `bollard` client): Docker's
//! socket, or Podman's compatible one (`podman system service`). The one place that
//! talks to it: the container kind creates, starts, stops and removes its runs' containers
//! here, the container source reads their logs, and the API lists corral's containers.
//!
//! **Where.** `--docker-host` / `DOCKER_HOST` of `corral serve`: `unix:///path/to.sock`
//! (or a bare path), `tcp://host:port` or `http://host:port`; default
//! `unix:///var/run/docker.sock`. The client is made on first use (an engine started
//! after the daemon is found; one that is not there is asked again next time), and
//! speaks API version [`API_VERSION`] or the engine's own when that is older (asked once,
//! `/version`); no connection is kept between requests.
//!
//! **Labels** (what `docker ps --filter label=…` and `corral ps --containers` find):
//! `corral.task`, `corral.run_id`, `corral.started_at` (RFC 3339), `corral.node`, plus
//! the task's own labels.

use bollard::models::{ContainerCreateBody, ContainerSummary, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::time::Duration;

pub use bollard::container::LogOutput;

/// Where the engine is when neither `--docker-host` nor `DOCKER_HOST` says.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
pub const LABEL_TASK: &str = "corral.task";
pub const LABEL_RUN: &str = "corral.run_id";
pub const LABEL_STARTED: &str = "corral.started_at";
pub const LABEL_NODE: &str = "corral.node";

/// The API version asked for: Docker 20.10 and Podman 4 speak it, and it has everything
/// used here (device requests came in 1.40). An older engine's own version is used.
pub const API_VERSION: &bollard::ClientVersion = &bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// How long a plain request (create, start, inspect, …) may take before its answer.
const REQUEST_TIMEOUT: u64 = 60;
/// A pull may take long; its progress keeps coming.
const PULL_TIMEOUT: u64 = 3600;
/// For requests whose answer is a stream that lasts as long as the container (logs, wait):
/// the timeout applies to the answer's start only, and the engine may hold it back.
const STREAM_TIMEOUT: u64 = 10 * 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No engine answers at the address.
    #[error(
        "cannot reach the container engine at {host}: {reason}; start Docker (or `podman system \
         service --time=0 unix:///run/podman/podman.sock`) or point `corral serve --docker-host` \
         (DOCKER_HOST) at its socket"
    )]
    Unreachable { host: String, reason: String },
    #[error("the container engine at {host} is not usable: {reason}")]
    BadHost { host: String, reason: String },
    /// The engine answered, with an error.
    #[error("{what}: {message}")]
    Api {
        what: String,
        status: Option<u16>,
        message: String,
    },
}

impl EngineError {
    /// Whether the engine said the object does not exist (HTTP 404).
    pub fn not_found(&self) -> bool {
        matches!(
            self,
            EngineError::Api {
                status: Some(404),
                ..
            }
        )
    }
}

/// What a new container is.
#[derive(Debug, Clone, Default)]
pub struct Create {
    pub name: String,
    pub image: String,
    /// Arguments after the image (the image's own command when empty).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
    pub working_dir: Option<String>,
    /// `host`, `none`, `bridge` or a network's name; the engine's default when `None`.
    pub network: Option<String>,
    /// GPUs for the container (`all`, a count, or device ids `0,1`): an NVIDIA device
    /// request, as `docker run --gpus` makes.
    pub gpus: Option<String>,
    /// Published ports (see [`parse_publish`]).
    pub publish: Vec<Publish>,
}

/// A published port: the container's `port/proto` on the host's `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub container: String,
    pub host_ip: String,
    pub host_port: String,
}

/// `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]` or `CONTAINER_PORT[/PROTO]` (the same port
/// on the host). Unlike `docker run -p`, a port with no host address is published on
/// 127.0.0.1 only: a server reachable from other machines is asked for
/// (`0.0.0.0:8080:8080`), never a default.
pub fn parse_publish(spec: &str) -> Result<Publish, String> {
    let bad = || {
        format!(
            "`{}` is not a port to publish; write CONTAINER_PORT, HOST_PORT:CONTAINER_PORT or \
             HOST_IP:HOST_PORT:CONTAINER_PORT, e.g. 8080 or 0.0.0.0:8080:8080/tcp",
            corral_core::term::sanitize(spec)
        )
    };
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, proto)) if matches!(proto, "tcp" | "udp" | "sctp") => (p, proto),
        Some(_) => return Err(bad()),
        None => (spec, "tcp"),
    };
    let port = |p: &str| -> Result<String, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n.to_string()),
            _ => Err(bad()),
        }
    };
    // An IPv6 host address is written in brackets: `[::1]:8080:8080`.
    let (ip, rest) = match ports.strip_prefix('[') {
        Some(r) => {
            let (ip, rest) = r.split_once("]:").ok_or_else(bad)?;
            (Some(ip.to_string()), rest)
        }
        None => match ports.matches(':').count() {
            2 => {
                let (ip, rest) = ports.split_once(':').ok_or_else(bad)?;
                (Some(ip.to_string()), rest)
            }
            _ => (None, ports),
        },
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (port(h)?, port(c)?),
        None => {
            if ip.is_some() {
                return Err(bad());
            }
            let p = port(rest)?;
            (p.clone(), p)
        }
    };
    let host_ip = ip.unwrap_or_else(|| "127.0.0.1".into());
    if host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad());
    }
    Ok(Publish {
        container: format!("{container}/{proto}"),
        host_ip,
        host_port: host,
    })
}

/// A started container.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub warnings: Vec<String>,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub code: i64,
    /// What the engine said beside the code (`OOM killed`, a runtime error).
    pub detail: Option<String>,
}

/// The container engine at one address.
#[derive(Debug, Clone)]
pub struct Engine {
    host: String,
    /// The client, once made and its API version agreed.
    client: std::sync::Arc<tokio::sync::OnceCell<Docker>>,
}

impl Engine {
    /// The engine at `host` (`--docker-host` / `DOCKER_HOST`), else at [`DEFAULT_HOST`].
    pub fn new(host: Option<String>) -> Engine {
        Engine {
            host: host
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_HOST.to_string()),
            client: Default::default(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The client, with `timeout` (seconds) for the answer to start.
    async fn client(&self, timeout: u64) -> Result<Docker, EngineError> {
        let docker = self
            .client
            .get_or_try_init(|| async {
                self.connect()?
                    .negotiate_version()
                    .await
                    .map_err(|e| self.error("asking the engine for its API version", e))
            })
            .await?;
        Ok(docker.clone().with_timeout(Duration::from_secs(timeout)))
    }

    fn connect(&self) -> Result<Docker, EngineError> {
        let host = self.host.as_str();
        let timeout = REQUEST_TIMEOUT;
        let made = if let Some(path) = host.strip_prefix("unix://").or_else(|| {
            // A bare absolute path is a socket too.
            host.starts_with('/').then_some(host)
        }) {
            Docker::connect_with_unix(path, timeout, API_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, timeout, API_VERSION)
        } else {
            return Err(EngineError::BadHost {
                host: host.into(),
                reason: "give unix:///path/to/docker.sock, tcp://HOST:PORT or http://HOST:PORT"
                    .into(),
            });
        };
        made.map_err(|e| self.error("connecting", e))
    }

    /// An error of the client, as the user should read it.
    fn error(&self, what: &str, e: bollard::errors::Error) -> EngineError {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Api {
                what: what.into(),
                status: Some(status_code),
                message: message.trim().to_string(),
            },
            E::SocketNotFoundError(path) => EngineError::Unreachable {
                host: self.host.clone(),
                reason: format!("no socket at {path}"),
            },
            E::IOError { err } => EngineError::Unreachable {
                host: self.host.clone(),
                reason: err.to_string(),
            },
            E::HyperResponseError { err } => EngineError::Unreachable {
                host: self.host.clone(),
                reason: err.to_string(),
            },
            E::HyperLegacyError { err } => EngineError::Unreachable {
                host: self.host.clone(),
                reason: format!("{err:?}"),
            },
            E::RequestTimeoutError => EngineError::Unreachable {
                host: self.host.clone(),
                reason: "no answer in time".into(),
            },
            other => EngineError::Api {
                what: what.into(),
                status: None,
                message: other.to_string(),
            },
        }
    }

    /// Creates and starts a container; an image that is not here is pulled first. A
    /// container that cannot start (its command does not exist) is removed, and the
    /// error says why.
    pub async fn run(&self, c: &Create) -> Result<Started, EngineError> {
        let docker = self.client(REQUEST_TIMEOUT).await?;
        let body = ContainerCreateBody {
            image: Some(c.image.clone()),
            cmd: (!c.args.is_empty()).then(|| c.args.clone()),
            env: Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(c.labels.clone()),
            working_dir: c.working_dir.clone(),
            tty: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            exposed_ports: (!c.publish.is_empty())
                .then(|| c.publish.iter().map(|p| p.container.clone()).collect()),
            host_config: Some(HostConfig {
                network_mode: c.network.clone(),
                device_requests: c.gpus.as_deref().map(gpu_request),
                port_bindings: (!c.publish.is_empty()).then(|| port_map(&c.publish)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = || CreateContainerOptions {
            name: Some(c.name.clone()),
            ..Default::default()
        };
        let created = match docker.create_container(Some(opts()), body.clone()).await {
            Err(e) => match self.error("creating the container", e) {
                e if e.not_found() => {
                    self.pull(&c.image).await?;
                    docker
                        .create_container(Some(opts()), body)
                        .await
                        .map_err(|e| self.error("creating the container", e))?
                }
                e => return Err(e),
            },
            Ok(created) => created,
        };
        if let Err(e) = docker.start_container(&created.id, None).await {
            let e = self.error("starting the container", e);
            let _ = self.remove(&created.id).await;
            return Err(e);
        }
        Ok(Started {
            id: created.id,
            warnings: created.warnings,
        })
    }

    /// Pulls an image (`name[:tag]`, `latest` when no tag or digest is given).
    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        let docker = self.client(PULL_TIMEOUT).await?;
        let (from, tag) = split_tag(image);
        let opts = CreateImageOptions {
            from_image: Some(from.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        };
        docker
            .create_image(Some(opts), None, None)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(
                |e| match self.error(&format!("pulling the image {image}"), e) {
                    EngineError::Api {
                        what,
                        status,
                        message,
                    } => EngineError::Api {
                        what,
                        status,
                        message: format!(
                        "{message} (it is not on this machine, and the registry did not give it)"
                    ),
                    },
                    e => e,
                },
            )
    }

    /// Asks a container to stop: its stop signal (SIGTERM unless the image says
    /// otherwise), SIGKILL from the engine after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let docker = self.client(REQUEST_TIMEOUT + grace.as_secs()).await?;
        let t = grace.as_millis().div_ceil(1000).min(i32::MAX as u128) as i32;
        match docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // Already stopped (304 is success to the client).
            Err(e) => Err(self.error("stopping the container", e)),
        }
    }

    /// SIGKILL to a container.
    pub async fn kill(&self, id: &str) -> Result<(), EngineError> {
        self.client(REQUEST_TIMEOUT)
            .await?
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await
            .map_err(|e| self.error("killing the container", e))
    }

    /// Waits until a container is no longer running; its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        let docker = self.client(STREAM_TIMEOUT).await?;
        let mut answers = std::pin::pin!(docker.wait_container(
            id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        ));
        let mut code = None;
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(r) => code = Some(r.status_code),
                // The client calls a non-zero exit an error.
                Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => {
                    code = Some(c)
                }
                Err(e) => return Err(self.error("waiting for the container", e)),
            }
        }
        code.ok_or_else(|| EngineError::Api {
            what: "waiting for the container".into(),
            status: None,
            message: "the engine ended the answer without an exit code".into(),
        })
    }

    /// The engine's inspect output of a container, as JSON.
    pub async fn inspect(&self, id: &str) -> Result<serde_json::Value, EngineError> {
        let r = self
            .client(REQUEST_TIMEOUT)
            .await?
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.error("inspecting the container", e))?;
        serde_json::to_value(r).map_err(|e| EngineError::Api {
            what: "inspecting the container".into(),
            status: None,
            message: e.to_string(),
        })
    }

    /// How a container that is no longer running ended, from its inspect output.
    pub async fn ended(&self, id: &str) -> Result<Ended, EngineError> {
        let v = self.inspect(id).await?;
        Ok(ended_from(&v))
    }

    /// Removes a container (with its anonymous volumes), running or not.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.client(REQUEST_TIMEOUT)
            .await?
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.error("removing the container", e))
    }

    /// Containers carrying `label` (`key` or `key=value`), running or not.
    pub async fn list(&self, labels: &[String]) -> Result<Vec<ContainerSummary>, EngineError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), labels.to_vec());
        self.client(REQUEST_TIMEOUT)
            .await?
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.error("listing containers", e))
    }

    /// A container's output, stdout and stderr apart, each entry with the engine's
    /// timestamp in front; followed until the container stops. `since`: whole seconds
    /// since the epoch (0: from the start).
    pub fn logs(
        &self,
        id: &str,
        since: i64,
    ) -> impl Stream<Item = Result<LogOutput, EngineError>> + Send + 'static {
        let this = self.clone();
        let opts = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            since: since.clamp(0, i32::MAX as i64) as i32,
            ..Default::default()
        };
        let id = id.to_string();
        // The stream holds its client: first made (or found), then asked.
        futures_util::stream::once(async move {
            match this.client(STREAM_TIMEOUT).await {
                Ok(docker) => {
                    let err = this.clone();
                    futures_util::stream::once(async move { docker.logs(&id, Some(opts)) })
                        .flatten()
                        .map(move |r| r.map_err(|e| err.error("reading the container's logs", e)))
                        .left_stream()
                }
                Err(e) => futures_util::stream::once(async move { Err(e) }).right_stream(),
            }
        })
        .flatten()
    }
}

/// How a container ended, from its inspect output.
pub fn ended_from(v: &serde_json::Value) -> Ended {
    let state = &v["State"];
    let code = state["ExitCode"].as_i64().unwrap_or(-1);
    let mut detail = Vec::new();
    if state["OOMKilled"].as_bool() == Some(true) {
        detail.push("OOM killed".to_string());
    }
    if let Some(e) = state["Error"].as_str().filter(|e| !e.trim().is_empty()) {
        detail.push(e.trim().to_string());
    }
    Ended {
        code,
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
    }
}

/// The engine's port bindings of the published ports.
fn port_map(publish: &[Publish]) -> bollard::models::PortMap {
    let mut map: bollard::models::PortMap = HashMap::new();
    for p in publish {
        map.entry(p.container.clone())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(bollard::models::PortBinding {
                host_ip: Some(p.host_ip.clone()),
                host_port: Some(p.host_port.clone()),
            });
    }
    map
}

/// `docker run --gpus`: `all`, a count, or device ids (`0,1` or `device=0,1`).
fn gpu_request(gpus: &str) -> Vec<DeviceRequest> {
    let g = gpus.trim();
    let (count, ids) = if g == "all" {
        (Some(-1), None)
    } else if let Ok(n) = g.parse::<i64>() {
        (Some(n), None)
    } else {
        let ids = g.strip_prefix("device=").unwrap_or(g);
        (
            None,
            Some(ids.split(',').map(|s| s.trim().to_string()).collect()),
        )
    };
    vec![DeviceRequest {
        driver: Some("nvidia".into()),
        count,
        device_ids: ids,
        capabilities: Some(vec![vec!["gpu".into()]]),
        ..Default::default()
    }]
}

/// `name[:tag]` or `name@digest` to what a pull asks for (`latest` without either).
fn split_tag(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        // The digest goes in the tag field, as the engine's own client sends it.
        return (name, digest);
    }
    // A colon after the last slash is a tag; one before it is a registry's port.
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

/// Splits an engine log entry (`2026-12-07T22:41:23.123456789Z text…`) into its timestamp
/// (microseconds since the epoch, and whether it had sub-second precision) and its text.
pub fn split_timestamp(entry: &[u8]) -> (Option<(u64, bool)>, &[u8]) {
    let Some(sp) = entry.iter().take(40).position(|&b| b == b' ') else {
        return (None, entry);
    };
    match std::str::from_utf8(&entry[..sp])
        .ok()
        .and_then(corral_core::time::parse_rfc3339_micros)
    {
        Some(ts) => (Some(ts), &entry[sp + 1..]),
        None => (None, entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_what_a_pull_asks_for() {
        assert_eq!(split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_tag("ghcr.io/org/llama:b1"),
            ("ghcr.io/org/llama", "b1")
        );
        assert_eq!(
            split_tag("localhost:5000/llama"),
            ("localhost:5000/llama", "latest")
        );
        assert_eq!(split_tag("a@sha256:00"), ("a", "sha256:00"));
    }

    #[test]
    fn log_entries_lose_their_timestamp_and_keep_their_bytes() {
        let (ts, text) = split_timestamp(b"2026-11-23T03:51:33.5Z hello world\n");
        assert_eq!(ts, Some((1_795_405_893_500_000, true)));
        assert_eq!(text, b"hello world\n");
        let (ts, text) = split_timestamp(b"2026-11-23T03:51:33Z \n");
        assert_eq!(ts, Some((1_795_405_893_000_000, false)));
        assert_eq!(text, b"\n");
        // Not a timestamp: kept whole.
        assert_eq!(
            split_timestamp(b"plain line\n"),
            (None, &b"plain line\n"[..])
        );
    }

    #[test]
    fn an_exit_says_what_the_engine_knows_beside_the_code() {
        let v = serde_json::json!({"State": {"ExitCode": 137, "OOMKilled": true, "Error": ""}});
        assert_eq!(
            ended_from(&v),
            Ended {
                code: 137,
                detail: Some("OOM killed".into())
            }
        );
        let v = serde_json::json!({"State": {"ExitCode": 3}});
        assert_eq!(
            ended_from(&v),
            Ended {
                code: 3,
                detail: None
            }
        );
    }

    #[test]
    fn published_ports_default_to_loopback() {
        let p = |s: &str| parse_publish(s).map(|p| (p.host_ip, p.host_port, p.container));
        let ok = |ip: &str, h: &str, c: &str| Ok((ip.to_string(), h.to_string(), c.to_string()));
        assert_eq!(p("8080"), ok("127.0.0.1", "8080", "8080/tcp"));
        assert_eq!(p("18080:8080"), ok("127.0.0.1", "18080", "8080/tcp"));
        assert_eq!(p("0.0.0.0:80:8080/udp"), ok("0.0.0.0", "80", "8080/udp"));
        assert_eq!(p("[::1]:80:8080"), ok("::1", "80", "8080/tcp"));
        for bad in [
            "",
            "x",
            "0",
            "70000",
            "80:",
            "1.2.3.4:80",
            "host:80:80",
            "80/xyz",
            "a:b:c:d",
        ] {
            let e = parse_publish(bad).unwrap_err();
            assert!(e.contains("not a port to publish"), "{bad}: {e}");
        }
    }

    #[test]
    fn gpus_become_an_nvidia_device_request() {
        assert_eq!(gpu_request("all")[0].count, Some(-1));
        assert_eq!(gpu_request("2")[0].count, Some(2));
        assert_eq!(
            gpu_request("device=0,1")[0].device_ids,
            Some(vec!["0".to_string(), "1".to_string()])
        );
    }

    #[test]
    fn an_unknown_address_scheme_is_a_clear_error() {
        let e = Engine::new(Some("ssh://gpu".into())).connect().unwrap_err();
        assert!(e.to_string().contains("unix:///"), "{e}");
        let e = Engine::new(Some("unix:///nonexistent/docker.sock".into()))
            .connect()
            .unwrap_err();
        assert!(
            matches!(e, EngineError::Unreachable { .. }) && e.to_string().contains("--docker-host"),
            "{e}"
        );
    }
}
