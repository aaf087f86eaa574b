//! `corral demo`: the daemon (or a running one) plus a simulated llama.cpp fleet, as
//! ordinary supervised tasks: one `llama-server` coordinator and two `rpc-server`
//! backends (see [`sim`]). It prints how to watch them and runs until Ctrl-C.
//!
//! **Invariant:** the demo leaves no process behind. Ctrl-C, SIGTERM and a closed terminal
//! (SIGHUP) all stop the fleet before the demo exits, whatever became of the program that
//! read its output (`corral demo | tee out`: Ctrl-C reaches `tee` too): the signals are
//! caught from the very start, and nothing the demo prints can fail it.

pub mod sim;

use crate::cli::say;
use anyhow::Context;
use clap::Args;
use corral_client::wire::{Health, LlamaSettings, RpcSettings, Started, TaskSpec};
use corral_client::{Client, ClientError};
use corral_core::policy::Restart;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where a daemon started by the demo listens (when none answers at --addr).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Home of a daemon started by the demo [default: the daemon's default home].
    #[arg(long, env = "CORRAL_HOME")]
    pub home: Option<PathBuf>,
    /// Port of the simulated llama-server (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Seconds of serving before the simulated coordinator crashes (0 = never). Above the
    /// 60 s that reset the retry budget, so the demo keeps restarting rather than ending in error.
    #[arg(long, default_value_t = 90.0)]
    pub crash_after: f64,
    /// Start the fleet and exit at once instead of running until Ctrl-C.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

pub async fn demo(client: &Client, a: DemoArgs, token: Option<String>) -> anyhow::Result<i32> {
    // Before anything is started: from here on, no signal ends the process by itself.
    let mut stop = StopSignals::install()?;
    let mut client = client.clone();
    let mut own_daemon: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    if client.get::<Health>("/health").await.is_err() {
        let (c, handle) = start_daemon(&a, token).await?;
        client = c;
        own_daemon = Some(handle);
    } else {
        say(&format!("using the corral daemon at {}", client.base));
    }

    let launched = tokio::select! {
        r = launch(&client, &a) => r,
        sig = stop.recv() => Err(anyhow::anyhow!("{sig} while starting the fleet")),
    };
    let (port, backends) = match launched {
        Ok(v) => v,
        Err(e) => {
            // A task may have been created just before: take them all down.
            stop_fleet(&client).await;
            if let Some(h) = own_daemon {
                stop_own_daemon(h).await;
            }
            return Err(e);
        }
    };
    print_howto(&client, port, &backends);
    if a.detach {
        return Ok(0);
    }
    say("Press Ctrl-C to stop the demo.");
    let daemon_ended = async {
        match own_daemon.as_mut() {
            Some(h) => {
                let _ = h.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        sig = stop.recv() => tracing::info!("{sig}: stopping the demo"),
        _ = daemon_ended => {
            say("the daemon stopped; the demo ends");
            return Ok(0);
        }
    }
    say("\nstopping the demo fleet…");
    match own_daemon {
        Some(h) => stop_own_daemon(h).await,
        None => stop_fleet(&client).await,
    }
    say("done");
    Ok(0)
}

/// Ctrl-C, SIGTERM and SIGHUP, caught for the demo's whole life.
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        let catch = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing a {name} handler"))
        };
        Ok(StopSignals {
            int: catch(SignalKind::interrupt(), "SIGINT")?,
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            hup: catch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Starts a daemon in this process; returns a client of it and its task.
async fn start_daemon(
    a: &DemoArgs,
    token: Option<String>,
) -> anyhow::Result<(Client, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let opts = crate::cli::serve::serve_opts(
        &crate::cli::ServeArgs {
            listen: a.listen.clone(),
            home: a.home.clone(),
            ring_records: 1000,
            ring_mb: 64,
            max_log_mb: 100,
            insecure_no_auth: false,
            allow_hosts: Vec::new(),
            config: None,
            node: None,
            node_heartbeat: "10s".into(),
            hub: false,
            fleet_token_file: None,
            ssh_config: None,
            docker_host: corral_daemon::sources::container::engine::DEFAULT_HOST.into(),
            llama: crate::cli::config::LlamaServeArgs::default(),
            redis: crate::cli::config::RedisServeArgs::default(),
            log: a.log.clone(),
        },
        token.clone(),
    )?;
    let home = opts.home.clone();
    crate::logging::keep_in(home.join("daemon.log"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(corral_daemon::serve(opts, move |addr| {
        let _ = tx.send(addr);
    }));
    let addr = match rx.await {
        Ok(addr) => addr,
        Err(_) => {
            return match handle.await {
                Ok(Err(e)) => Err(e.context("starting the daemon for the demo")),
                _ => Err(anyhow::anyhow!("the daemon for the demo did not start")),
            };
        }
    };
    tracing::info!(home = %home.display(), "the demo's daemon is listening on http://{addr}");
    say(&format!(
        "corral daemon started on http://{addr} (home {})",
        home.display()
    ));
    // The daemon made its token in its home if it had none.
    let token = match token {
        Some(t) => Some(t),
        None => corral_client::load_token(None, Some(&home))?,
    };
    Ok((Client::new(&format!("http://{addr}"), token), handle))
}

/// Stops the daemon this process runs, which stops every task first. The daemon ends on
/// SIGINT and SIGTERM (and not on SIGHUP): whatever signal stopped the demo, the daemon
/// is sent SIGTERM, again each second until it ends, in case the first one came before
/// it listened (one it has seen already changes nothing).
async fn stop_own_daemon(mut daemon: tokio::task::JoinHandle<anyhow::Result<()>>) {
    let ended = loop {
        // SAFETY: signalling this process; the handlers are tokio's.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), &mut daemon).await {
            break r;
        }
    };
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("the demo's daemon: {e:#}"),
        Err(e) => tracing::error!("the demo's daemon: {e}"),
    }
}

fn print_howto(client: &Client, port: u16, backends: &[String]) {
    let me = command_name();
    let addr_flag = if client.base == "http://127.0.0.1:7070" {
        String::new()
    } else {
        format!(" --addr {}", client.base)
    };
    say(&format!(
        "\nA simulated llama.cpp fleet is running: coordinator on 127.0.0.1:{port}, rpc backends on {}.\n\
         It crashes now and then so that the restart policy shows. Watch it from another terminal:\n\n\
         \x20 {me}{addr_flag} ps\n\
         \x20 {me}{addr_flag} monitor coordinator\n\
         \x20 {me}{addr_flag} events --follow\n\
         \x20 {me}{addr_flag} llama status coordinator\n\
         \x20 {me}{addr_flag} runs coordinator\n\
         \x20 curl {}/metrics\n",
        backends.join(", "),
        client.base
    ));
}

/// How the user can call this binary: `corral` when that is what PATH finds, else its
/// path (relative to the working directory when inside it, as after `cargo run`).
fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "corral".into();
    };
    let on_path = corral_daemon::kinds::llama::which("corral")
        .and_then(|p| std::fs::canonicalize(p).ok())
        .is_some_and(|p| std::fs::canonicalize(&exe).is_ok_and(|e| e == p));
    if on_path {
        return "corral".into();
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    exe.strip_prefix(&cwd).unwrap_or(&exe).display().to_string()
}

/// Starts the fleet; returns the coordinator's port and the backends' addresses.
async fn launch(client: &Client, a: &DemoArgs) -> anyhow::Result<(u16, Vec<String>)> {
    let exe = std::env::current_exe().context("locating the corral binary")?;
    let exe = exe.display().to_string();
    let rpc_ports = [free_port()?, free_port()?];
    let port = if a.port == 0 { free_port()? } else { a.port };
    for (i, p) in rpc_ports.iter().enumerate() {
        let settings = RpcSettings {
            host: "127.0.0.1".into(),
            port: *p,
            ..Default::default()
        };
        let spec = TaskSpec {
            restart: Restart::Always,
            kind: Some("rpc".into()),
            labels: [("demo", "true"), ("role", "rpc_backend")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            extra: serde_json::to_value(settings)?,
            ..TaskSpec::new(
                format!("rpc{i}"),
                [
                    &exe,
                    "sim-rpc-server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &p.to_string(),
                ]
                .map(str::to_string)
                .to_vec(),
            )
        };
        start(client, &spec).await?;
    }
    let backends: Vec<String> = rpc_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let settings = LlamaSettings {
        host: "127.0.0.1".into(),
        port,
        model_path: "models/demo-7b-q4_k_m.gguf".into(),
        rpc_backends: backends.clone(),
        n_gpu_layers: Some(99),
        ctx_size: Some(4096),
        ..Default::default()
    };
    let mut extra = serde_json::to_value(settings)?;
    // The simulated server has no model file to check.
    extra["check_files"] = false.into();
    let spec = TaskSpec {
        restart: Restart::Always,
        kind: Some("llama".into()),
        labels: [("demo".to_string(), "true".to_string())].into(),
        extra,
        ..TaskSpec::new(
            "coordinator",
            vec![
                exe.clone(),
                "sim-llama-server".into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--rpc".into(),
                backends.join(","),
                "--crash-after".into(),
                a.crash_after.to_string(),
            ],
        )
    };
    start(client, &spec).await?;
    Ok((port, backends))
}

const FLEET: [&str; 3] = ["coordinator", "rpc0", "rpc1"];

async fn stop_fleet(client: &Client) {
    for name in FLEET {
        match client
            .delete::<serde_json::Value>(&format!("/tasks/{name}"))
            .await
        {
            Err(ClientError::Api { status: 404, .. }) | Ok(_) => {}
            Err(e) => crate::cli::say_error(&format!("removing {name}: {e}")),
        }
    }
}

async fn start(client: &Client, spec: &TaskSpec) -> anyhow::Result<()> {
    let name = &spec.name;
    // A task left by an earlier demo on a running daemon is replaced.
    let _ = client
        .delete::<serde_json::Value>(&format!("/tasks/{name}"))
        .await;
    let v: Started = client
        .post("/tasks", spec)
        .await
        .with_context(|| format!("starting the demo task {name}"))?;
    say(&format!("started {name} (run {})", v.run_id));
    Ok(())
}
