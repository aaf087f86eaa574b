//! `corral serve`: wires the registry, the event bus and its sinks, the supervisor and
//! the API together, binds the listener, and shuts down on SIGINT/SIGTERM.
//!
//! Shutdown, in order: stop every task (their last events are published), or on
//! `POST /shutdown` with `leave_running` let go of them (they run on under their holders,
//! and the next daemon takes them back); close the
//! bus, so that every sink takes what was queued and flushes (bounded by
//! [`SINK_FLUSH`]), which also ends the live event streams after their last event; signal
//! the API's streams, which end once they have nothing ready; and return as soon as the
//! server has no connection left (bounded by [`STREAMS_END`]).

use crate::api::{self, AppState};
use crate::bus::{Bus, ObserverConfig};
use crate::logbook::LogConfig;
use crate::registry::Registry;
use crate::supervisor::{Settings, Supervisor};
use anyhow::{bail, Context};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long the sinks may take to flush at shutdown before the daemon exits without them.
pub const SINK_FLUSH: Duration = Duration::from_secs(5);
/// How long open streams may take to end at shutdown (a follower still reading a long
/// backlog from disk) before the daemon exits anyway.
pub const STREAMS_END: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServeOpts {
    pub listen: String,
    pub home: PathBuf,
    /// The API token given by the user (`CORRAL_TOKEN`, `--token-file`); without one the
    /// daemon uses (and creates) `<home>/token`.
    pub token: Option<String>,
    /// Serve the API with no token at all (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// The fleet's shared token (`--fleet-token-file`): this daemon accepts it besides its
    /// own, and as a hub sends it to the nodes' gRPC APIs to follow and drive their tasks.
    pub fleet_token: Option<String>,
    /// Names besides the listen address that clients may use in `Host` (`--allow-host`).
    pub allow_hosts: Vec<String>,
    pub log: LogConfig,
    pub observer: ObserverConfig,
    pub node: String,
    pub llama: crate::kinds::llama::LlamaConfig,
    /// The program that holds each run (`corral hold`), so tasks outlive the daemon;
    /// `None` makes runs the daemon's own children, ended with it.
    pub holder: Option<PathBuf>,
    /// The Redis publisher's settings from flags, environment and config file; what
    /// `corral redis` changed at run time (`<home>/redis.json`) is applied over them.
    pub redis: crate::sinks::redis::RedisConfig,
    /// Alert rules from the config file (`[[alerts]]`); none: nothing is ever sent.
    pub alerts: Vec<crate::sinks::alerts::Rule>,
    /// How often this node writes its registration in Redis while the publisher is on
    /// (`--node-heartbeat`); the key lives three of them. A hub scans the registrations
    /// as often.
    pub node_heartbeat: Duration,
    /// Also read the fleet from Redis (`--hub`): the nodes' events and registrations.
    pub hub: bool,
    /// The ssh config file every `ssh` of the daemon reads (`--ssh-config`,
    /// `CORRAL_SSH_CONFIG`); `None`: the user's own (`~/.ssh/config`).
    pub ssh_config: Option<PathBuf>,
    /// The container engine's address (`--docker-host`, `DOCKER_HOST`): where `container`
    /// tasks run; `None`: `unix:///var/run/docker.sock`.
    pub docker_host: Option<String>,
}

pub use crate::home::default_home;

/// The `tracing` target of what is for the terminal only (a credential such as the
/// dashboard's login link): the process's logging keeps it out of `daemon.log`.
pub const TERMINAL_ONLY: &str = "corral::terminal";

pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the daemon until SIGINT/SIGTERM. Calls `on_ready` with the bound address.
pub async fn serve(opts: ServeOpts, on_ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Both handlers exist before the address is printed: a script that signals the daemon
    // as soon as it read that line gets a graceful stop, never the default death.
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let signalled = async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    };
    serve_until(opts, on_ready, signalled).await
}

/// Raises the daemon's soft limit of open files to its hard limit (as service managers
/// and the Go runtime do: the soft limit of 1024 is for `select(2)`, which the daemon
/// never uses), and sizes the budget of run files to it (see `logbook::files`), so that
/// a daemon under a low limit still runs hundreds of tasks.
fn budget_descriptors() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    let limit = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        if rl.rlim_cur < rl.rlim_max {
            crate::supervisor::process::set_child_nofile(rl.rlim_cur);
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur
    };
    let sets = crate::logbook::files::budget_for_limit(limit);
    crate::logbook::files::set_budget(sets);
    tracing::debug!(
        limit,
        sets,
        "open files: the limit, and run file sets open at once"
    );
}

/// Runs the daemon until `stop` completes, then shuts it down (see the module's
/// documentation). Calls `on_ready` with the bound address.
pub async fn serve_until(
    opts: ServeOpts,
    on_ready: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = tokio::net::lookup_host(&opts.listen)
        .await
        .with_context(|| {
            format!(
                "bad --listen address `{}`; use HOST:PORT, e.g. 127.0.0.1:7070",
                opts.listen
            )
        })?
        .next()
        .with_context(|| format!("--listen `{}` resolves to no address", opts.listen))?;
    if !addr.ip().is_loopback() && opts.token.is_none() && !opts.insecure_no_auth {
        bail!(
            "refusing to listen on {addr} without a token: anything beyond loopback needs one \
             (set CORRAL_TOKEN or pass --token-file FILE), or listen on 127.0.0.1"
        );
    }
    // Bind before touching the registry: a second daemon started by mistake on a live
    // one's address must fail without marking that daemon's runs `lost`.
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another program (another corral daemon?) is using it: stop it or choose another with --listen"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}{hint}")
    })?;
    // One daemon per home: a second one would mark the first one's live runs `lost`.
    let _home_lock = crate::home::lock(&opts.home)?;
    budget_descriptors();
    crate::logbook::memory::set_budget(opts.log.ring_budget);
    let auth = api::Auth::new(&opts, bound_addr(&listener)?)?;
    let registry = Arc::new(Registry::open(&opts.home.join("registry.db"))?);
    let bus = Bus::new(opts.node.clone(), &opts.observer);
    let events = crate::sinks::builtin(&bus, &opts.observer);
    let (redis, redis_sink) = crate::sinks::redis::Redis::new(
        opts.redis.clone(),
        Some(opts.home.join(crate::sinks::redis::STATE_FILE)),
        &bus,
    );
    bus.register(redis_sink);
    let ssh = crate::ssh::Ssh::new(&opts.home, opts.ssh_config.clone());
    let engine = crate::sources::container::engine::Engine::new(opts.docker_host.clone());
    let (kinds, llama) =
        crate::kinds::builtin(opts.llama.clone(), ssh.clone(), engine.clone(), &opts.node);
    let sup = Supervisor::new(
        Settings {
            home: opts.home.clone(),
            log: opts.log.clone(),
            holder: opts.holder.clone(),
        },
        registry,
        bus.clone(),
        kinds,
    );
    bus.register(crate::sinks::diagnostics::Diagnostics::new(&sup));
    let rules = opts
        .alerts
        .iter()
        .map(|r| r.check())
        .collect::<Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
    let alerts = crate::sinks::alerts::Alerts::new(&opts.node, rules).for_fleet(opts.hub);
    if !alerts.is_empty() {
        bus.register(crate::sinks::alerts::AlertSink(alerts.clone()));
        sup.add_run_watcher(Arc::new(crate::sinks::alerts::LineWatcher(alerts.clone())));
        let sup = Arc::downgrade(&sup);
        tokio::spawn(
            alerts
                .clone()
                .watch_gpus(crate::gpu::Gpus::shared(), move |snap| {
                    match sup.upgrade() {
                        Some(sup) => crate::gpu::attributed(snap, &sup),
                        None => snap.clone(),
                    }
                }),
        );
    }
    // The runs' lines for `{prefix}:raw`: a watcher of every run, idle while off.
    sup.add_run_watcher(Arc::new(redis.raw_watcher()));
    // The GPUs' state as a GPU task's run starts and ends.
    sup.add_run_watcher(Arc::new(crate::gpu::watch::GpuWatcher {
        gpus: crate::gpu::Gpus::shared(),
        sup: Arc::downgrade(&sup),
    }));
    let bound = listener.local_addr()?;
    // This node's registration, written every heartbeat while the publisher is on.
    let registered = redis.register_node(crate::sinks::redis::Registration {
        node: opts.node.clone(),
        api: api_address(bound, &opts.node),
        interval: opts.node_heartbeat,
        tasks: Arc::new({
            let sup = Arc::downgrade(&sup);
            move || {
                sup.upgrade()
                    .map(|s| s.list().into_iter().map(node_task).collect())
                    .unwrap_or_default()
            }
        }),
    });
    let hub = if opts.hub {
        let hub = crate::hub::Hub::start(redis.config(), bus.clone(), opts.node_heartbeat)
            .map_err(|e| {
                anyhow::anyhow!(
                    "corral serve --hub reads the fleet from Redis with the publisher's \
                     settings, and they are not usable: {e}"
                )
            })?;
        tracing::info!(server = %redis.config().server(), "hub: reading the fleet from Redis");
        Some(hub)
    } else {
        None
    };
    let lost = sup.recover()?;
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel();
    if !lost.is_empty() {
        tracing::warn!(
            "marked {} run(s) left by an earlier daemon as lost",
            lost.len()
        );
    }
    for run_id in &lost {
        crate::sinks::diagnostics::collect_lost(&sup, run_id);
    }
    for kind in sup.kinds.all() {
        kind.start(&sup);
    }
    // What should run runs again, as soon as the API answers.
    tokio::spawn({
        let sup = sup.clone();
        async move { sup.start_desired().await }
    });
    let (down, shutdown) = api::stream::Shutdown::new();
    let gpus = crate::gpu::Gpus::shared();
    let mut metrics = api::metrics::registry(&sup, &events, &redis, &gpus, &llama);
    if let Some(hub) = &hub {
        hub.register_metrics(&mut metrics);
    }
    let state = Arc::new(AppState {
        sup: sup.clone(),
        bus: bus.clone(),
        metrics: Arc::new(metrics),
        gpus,
        remote: api::remote::Remote::new(opts.fleet_token.as_deref()),
        events,
        redis,
        alerts,
        shutdown: shutdown.clone(),
        auth,
        started_at: crate::util::unix_now(),
        llama,
        stop: stop_tx,
        hub: hub.clone(),
        ssh: ssh.clone(),
        engine,
    });
    on_ready(bound);
    // The dashboard is at `/`; this link (once, for two minutes) logs a browser in. It
    // is a credential: it goes to the terminal only, never to `daemon.log`.
    match state.auth.login_url() {
        Ok(url) => tracing::info!(
            target: "corral::terminal",
            "dashboard: open {url} (a one-time login link, valid for {} s; `corral login` prints another)",
            api::LOGIN_LINK_TTL.as_secs()
        ),
        Err(e) => tracing::warn!("no dashboard login link: {e:#}"),
    }
    let mut server = tokio::spawn(api::serve(listener, state, shutdown));
    let leave_running = tokio::select! {
        r = &mut server => return served(r),
        _ = stop => false,
        Some(req) = stop_rx.recv() => req.leave_running,
    };
    if leave_running {
        tracing::info!("shutting down, leaving every task running for the next daemon");
        sup.detach_all().await;
        registered.abandon();
    } else {
        tracing::info!("shutting down: stopping every task");
        // Stopping the tasks ends their runs, which ends the log streams following them.
        sup.stop_all().await;
        registered.leave().await;
    }
    // The remote runs are stopped or let go: their hosts' connections end.
    ssh.close_all().await;
    let late = bus.close(SINK_FLUSH).await;
    if !late.is_empty() {
        tracing::warn!(
            "shutting down without waiting longer for the event sinks {}",
            late.join(", ")
        );
    }
    if let Some(hub) = &hub {
        hub.stop();
    }
    let _ = down.send(true);
    match tokio::time::timeout(STREAMS_END, &mut server).await {
        Ok(r) => served(r),
        Err(_) => {
            tracing::warn!("shutting down with streams still open");
            server.abort();
            Ok(())
        }
    }
}

/// The API address other machines are told: the listen address, or with the node's name
/// in place of an address that means every interface (`0.0.0.0`, `::`).
fn api_address(bound: SocketAddr, node: &str) -> String {
    if bound.ip().is_unspecified() {
        format!("http://{node}:{}", bound.port())
    } else {
        format!("http://{bound}")
    }
}

/// A task as this node's registration lists it.
fn node_task(t: corral_client::wire::TaskInfo) -> corral_client::wire::NodeTask {
    corral_client::wire::NodeTask {
        name: t.name,
        status: t.status,
        kind: t.kind,
        pid: t.pid,
        restarts: t.restarts,
    }
}

fn served(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    r.context("the API server failed")?
        .context("serving the API")
}

fn bound_addr(listener: &tokio::net::TcpListener) -> anyhow::Result<SocketAddr> {
    listener
        .local_addr()
        .context("reading the listener's address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registered_api_address_names_the_node_for_every_interface() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            api_address(a("127.0.0.1:7070"), "n"),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            api_address(a("0.0.0.0:7070"), "gpu-01"),
            "http://gpu-01:7070"
        );
        assert_eq!(api_address(a("[::]:7070"), "gpu-01"), "http://gpu-01:7070");
        assert_eq!(api_address(a("[::1]:7070"), "n"), "http://[::1]:7070");
    }
}
