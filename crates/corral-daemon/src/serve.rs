//! `corral serve`: wires the registry, the event bus, the supervisor and the API
//! together, binds the listener, and stops every task on SIGINT/SIGTERM.

use crate::api::{self, AppState};
use crate::bus::{Bus, ObserverConfig};
use crate::logbook::LogConfig;
use crate::registry::Registry;
use crate::supervisor::{Settings, Supervisor};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ServeOpts {
    pub listen: String,
    pub home: PathBuf,
    pub token: Option<String>,
    pub log: LogConfig,
    pub observer: ObserverConfig,
    pub node: String,
    pub llama: crate::kinds::llama::LlamaConfig,
}

/// The default home: `$XDG_DATA_HOME/corral`, else `~/.local/share/corral`.
pub fn default_home() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("corral");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/corral"),
        None => PathBuf::from(".corral"),
    }
}

pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Takes `<home>/daemon.lock` (an advisory `flock`, released by the kernel when the
/// daemon exits, however it exits). Fails when another live daemon holds it.
fn lock_home(home: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = home.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another corral daemon is using the home {}; stop it first, or give this one another --home",
            home.display()
        );
    }
    Ok(file)
}

/// Runs the daemon until SIGINT/SIGTERM. Calls `on_ready` with the bound address.
pub async fn serve(opts: ServeOpts, on_ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
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
    if !addr.ip().is_loopback() && opts.token.is_none() {
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
    std::fs::create_dir_all(&opts.home)
        .with_context(|| format!("cannot create the home directory {}", opts.home.display()))?;
    // One daemon per home: a second one would mark the first one's live runs `lost`.
    let _home_lock = lock_home(&opts.home)?;
    let registry = Arc::new(Registry::open(&opts.home.join("registry.db"))?);
    let bus = Bus::new(opts.node.clone(), &opts.observer);
    let (kinds, llama) = crate::kinds::builtin(opts.llama.clone());
    let sup = Supervisor::new(
        Settings {
            home: opts.home.clone(),
            log: opts.log.clone(),
        },
        registry,
        bus.clone(),
        kinds,
    );
    let lost = sup.recover()?;
    if !lost.is_empty() {
        tracing::warn!(
            "marked {} run(s) left by an earlier daemon as lost",
            lost.len()
        );
    }
    let bound = listener.local_addr()?;
    for kind in sup.kinds.all() {
        kind.start(&sup);
    }
    let state = Arc::new(AppState {
        sup: sup.clone(),
        bus,
        token: opts.token.clone(),
        started_at: crate::util::unix_now(),
        llama,
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    on_ready(bound);
    let app = api::router(state.clone());
    let (down_tx, mut down_rx) = tokio::sync::watch::channel(false);
    let stopper = sup.clone();
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down: stopping every task");
        // Stopping the tasks ends their runs, which ends the log streams following them.
        stopper.stop_all().await;
        let _ = down_tx.send(true);
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    tokio::select! {
        r = server => r.context("serving the API")?,
        _ = async {
            let _ = down_rx.wait_for(|down| *down).await;
            // Event streams never end by themselves: give clients a moment, then go.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        } => {}
    }
    Ok(())
}
