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
    /// The API token given by the user (`CORRAL_TOKEN`, `--token-file`); without one the
    /// daemon uses (and creates) `<home>/token`.
    pub token: Option<String>,
    /// Serve the API with no token at all (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// Names besides the listen address that clients may use in `Host` (`--allow-host`).
    pub allow_hosts: Vec<String>,
    pub log: LogConfig,
    pub observer: ObserverConfig,
    pub node: String,
    pub llama: crate::kinds::llama::LlamaConfig,
}

pub use crate::home::default_home;

pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
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
    let auth = api::Auth::new(&opts, bound_addr(&listener)?)?;
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
    // What should run runs again, as soon as the API answers.
    tokio::spawn({
        let sup = sup.clone();
        async move { sup.start_desired().await }
    });
    let state = Arc::new(AppState {
        sup: sup.clone(),
        bus,
        auth,
        started_at: crate::util::unix_now(),
        llama,
    });
    on_ready(bound);
    let app = api::router(state.clone());
    let (down_tx, mut down_rx) = tokio::sync::watch::channel(false);
    let stopper = sup.clone();
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
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

fn bound_addr(listener: &tokio::net::TcpListener) -> anyhow::Result<SocketAddr> {
    listener
        .local_addr()
        .context("reading the listener's address")
}
