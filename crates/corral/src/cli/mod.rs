//! The command line: argument parsing and dispatch. Every command but `serve` and `demo`
//! is a thin client of the daemon's HTTP API, one file per command group: `tasks` (run,
//! ps, runs, stop, restart, rm), `tail`, `logs`, `monitor`, `events`, `llama`, `gpu`, `nodes`; `serve` wires the
//! daemon. Every listing has `--json`.
//!
//! Output: client commands print results on stdout and their errors as `corral: …` on
//! stderr; `serve` and `demo` print through [`say`] (which a reader that went away cannot
//! fail) and log their diagnostics through `tracing` (see `crate::logging`).

pub mod alerts;
pub mod config;
pub mod diag;
pub mod events;
pub mod gpu;
pub mod llama;
pub mod logs;
pub mod monitor;
pub mod nodes;
pub mod redis;
pub mod serve;
pub mod service;
pub mod stream;
pub mod table;
pub mod tail;
pub mod tasks;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use corral_client::wire::Started;
use corral_client::Client;
use corral_core::duration::parse_duration;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Examples:
  corral demo                                   # a simulated llama.cpp fleet, nothing else needed
  corral serve                                  # the daemon, on 127.0.0.1:7070
  corral run --name job --restart on-failure -- python3 train.py
  corral run --image ghcr.io/org/llama:latest --name srv --label prompt_id=p1 -- --port 8080
  corral ps
  corral monitor job                            # last 1000 lines, then live
  corral logs job --tail 50
  corral stop job

Client commands reach the daemon at --addr / CORRAL_ADDR (default http://127.0.0.1:7070).";

#[derive(Parser, Debug)]
#[command(name = "corral", version, about = "Keeps llama.cpp servers and GPU jobs running, and lets anyone watch them live.", after_help = AFTER_HELP)]
pub struct Cli {
    /// The daemon's address.
    #[arg(
        long,
        global = true,
        env = "CORRAL_ADDR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub addr: String,
    /// File holding the API token (else CORRAL_TOKEN).
    #[arg(long, global = true, env = "CORRAL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground.
    Serve(Box<ServeArgs>),
    /// Create (or replace a stopped) task and start it; prints the run id.
    Run(Box<RunArgs>),
    /// Follow a local file like `tail -F`, or a container's output (`container:NAME`): a
    /// task whose run is its lines.
    #[command(after_help = tail::AFTER_HELP)]
    Tail(tail::TailArgs),
    /// List the tasks (on a hub, with --all-nodes, every node's).
    Ps(PsArgs),
    /// List runs, newest first (of one task when NAME is given).
    Runs(RunsArgs),
    /// Show a task's recent records, then follow it live until the run ends.
    Monitor(MonitorArgs),
    /// Print a run's stored log.
    Logs(LogsArgs),
    /// Stop a task: SIGTERM to its process group, SIGKILL after the timeout.
    Stop(StopArgs),
    /// Stop (if running) and start a task again.
    Restart(NameArg),
    /// Stop (if running) and forget a task; its runs stay in the registry.
    Rm(NameArg),
    /// Stop the daemon: its tasks first, or with --leave-running not at all (for an
    /// upgrade: they run on, and the next daemon takes them back with nothing lost).
    Shutdown(ShutdownArgs),
    /// Start the daemon at boot (systemd), with this home and address, or stop doing so.
    Service(service::ServiceArgs),
    /// Print a one-time link that logs a browser in to the daemon (valid 2 minutes).
    Login(JsonArg),
    /// Start the daemon (or use a running one) with a simulated llama.cpp fleet.
    Demo(crate::demo::DemoArgs),
    #[command(flatten)]
    Llama(llama::LlamaCommand),
    /// Turn the Redis publisher on or off, or show its status.
    #[command(subcommand)]
    Redis(redis::RedisCommand),
    /// On a hub: the fleet's nodes, up or gone, with their tasks by status.
    #[command(after_help = nodes::AFTER_HELP)]
    Nodes(JsonArg),
    /// Show the GPUs, their processes and the tasks and runs those belong to.
    #[command(after_help = gpu::AFTER_HELP)]
    Gpu(gpu::GpuArgs),
    /// Show why a run failed: the diagnostics bundle written when it did (--tar to share it).
    Diag(diag::DiagArgs),
    /// List the alert rules and their counters, or send a test message through one.
    Alerts(alerts::AlertsArgs),
    /// The per-run holder process the daemon starts (not for people).
    #[command(hide = true)]
    Hold(HoldCmd),
    #[command(hide = true)]
    SimLlamaServer(crate::demo::sim::SimLlamaArgs),
    #[command(hide = true)]
    SimRpcServer(crate::demo::sim::SimRpcArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback requires a token.
    #[arg(long, env = "CORRAL_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Where the registry and the run logs live [default: $XDG_DATA_HOME/corral or ~/.local/share/corral].
    #[arg(long, env = "CORRAL_HOME")]
    pub home: Option<PathBuf>,
    /// Records of each run kept in memory for new and slow followers.
    #[arg(long, env = "CORRAL_RING_RECORDS", default_value_t = 1000)]
    pub ring_records: usize,
    /// MiB of memory the rings of all runs together may hold; beyond it the runs that
    /// printed least recently keep fewer records in memory (their followers read the files).
    #[arg(long, env = "CORRAL_RING_MB", default_value_t = 64)]
    pub ring_mb: usize,
    /// Largest log file per run, in MiB; beyond it the head and the newest tail are kept.
    #[arg(long, env = "CORRAL_MAX_LOG_MB", default_value_t = 100)]
    pub max_log_mb: u64,
    /// Serve the API with no token at all. Anyone who can reach the address can then run
    /// commands as this user: only for a machine you alone use, behind other protection.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// A name clients may use in `Host` besides the listen address, e.g. behind a reverse
    /// proxy (repeatable; also CORRAL_ALLOW_HOSTS, comma-separated).
    #[arg(
        long = "allow-host",
        value_name = "NAME",
        env = "CORRAL_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub allow_hosts: Vec<String>,
    /// The daemon's config file (TOML, or JSON for a .json file): the Redis keys
    /// (redis_logging_enabled, redis_host, …); flags and environment override it.
    #[arg(long, env = "CORRAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This machine's name in the fleet: the `node` of every event and of its Redis
    /// registration [default: the hostname].
    #[arg(long, env = "CORRAL_NODE", value_name = "NAME")]
    pub node: Option<String>,
    /// How often this node refreshes its registration in Redis while the publisher is
    /// on (the key lives three of them); a hub scans the registrations as often.
    #[arg(
        long,
        env = "CORRAL_NODE_HEARTBEAT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub node_heartbeat: String,
    /// Also be the fleet's hub: read every node's events and registrations from Redis
    /// (the publisher's settings), for `corral events` and `corral nodes`; with
    /// `--fleet-token-file`, follow and drive tasks on the nodes (`monitor NODE/TASK`).
    #[arg(long)]
    pub hub: bool,
    /// A file whose first line is the fleet's shared token: every daemon of the fleet
    /// accepts it besides its own token, and a hub uses it to reach the nodes' gRPC API.
    /// Give every node and the hub the same file.
    #[arg(long, env = "CORRAL_FLEET_TOKEN_FILE", value_name = "FILE")]
    pub fleet_token_file: Option<std::path::PathBuf>,
    /// The ssh config file for every `ssh` the daemon runs (remote files, remote commands,
    /// `corral gpu HOST`), as `ssh -F FILE`; by default ssh reads the user's own.
    #[arg(long, env = "CORRAL_SSH_CONFIG", value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// The container engine for `corral run --image` and `corral tail container:NAME`:
    /// Docker's socket, or Podman's (`podman system service`); `unix:///path`,
    /// `tcp://HOST:PORT` or `http://HOST:PORT`.
    #[arg(
        long,
        env = "DOCKER_HOST",
        value_name = "ADDR",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    #[command(flatten)]
    pub llama: config::LlamaServeArgs,
    #[command(flatten)]
    pub redis: config::RedisServeArgs,
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
}

#[derive(Args, Debug)]
pub struct HoldCmd {
    #[arg(long)]
    pub run_id: String,
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long)]
    pub exit_file: PathBuf,
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    #[arg(long, default_value_t = corral_daemon::holder::shim::DEFAULT_BUFFER)]
    pub buffer: usize,
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

#[derive(Args, Debug)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// On a hub: every node's tasks, from the nodes' registrations in Redis (as of their
    /// last heartbeat).
    #[arg(long)]
    pub all_nodes: bool,
    /// The containers that carry corral's labels (`corral.task`, `corral.run_id`, …),
    /// running or not, as the daemon's container engine lists them.
    #[arg(long, conflicts_with = "all_nodes")]
    pub containers: bool,
}

#[derive(Args, Debug)]
pub struct NameArg {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Task name (letters, digits, `.`, `_`, `-`).
    #[arg(long)]
    pub name: String,
    /// When to restart: no, on-failure, always.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Consecutive failed restarts before the task goes to `error`.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// First restart delay; it doubles up to --backoff-max (e.g. 250ms, 5s, 2m).
    #[arg(long, default_value = "1s")]
    pub backoff_initial: String,
    #[arg(long, default_value = "30s")]
    pub backoff_max: String,
    /// Grace between SIGTERM and SIGKILL on stop.
    #[arg(long, default_value = "5s")]
    pub stop_timeout: String,
    /// Working directory of the process (with --remote: on the remote host).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Run the command on another machine (user@host, or a host of the daemon's ssh
    /// config), over the daemon's SSH connection to it.
    #[arg(long, value_name = "USER@HOST")]
    pub remote: Option<String>,
    /// Environment variable for the process (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Label for filtering and display (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Follow the new run's output until it ends (exits with its status).
    #[arg(long)]
    pub follow: bool,
    #[arg(long)]
    pub json: bool,
    /// Run the task as a container of this image, through the daemon's container engine
    /// (Docker, or Podman's compatible socket: `corral serve --docker-host`); the words
    /// after `--` are its arguments (the image's own command when none). --env and
    /// --label go to the container, --cwd is a directory inside it.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// With --image: the container's network (`host`, `none`, `bridge` or a network's name).
    #[arg(long, requires = "image")]
    pub network: Option<String>,
    /// With --image: GPUs for the container, as `docker run --gpus` takes them (`all`, a
    /// count, or `device=0,1`).
    #[arg(long, requires = "image")]
    pub gpus: Option<String>,
    /// With --image: publish a port (repeatable): CONTAINER_PORT, HOST_PORT:CONTAINER_PORT
    /// or HOST_IP:HOST_PORT:CONTAINER_PORT, with /udp or /sctp after it where not TCP.
    /// Without a host address it is published on 127.0.0.1 only.
    #[arg(long, value_name = "PORTS", requires = "image")]
    pub publish: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required_unless_present = "image", value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    pub name: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// At most this many runs.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    pub name: String,
    /// Print the process's bytes exactly, even on a terminal (by default a terminal gets
    /// control characters and escape sequences shown escaped, never executed).
    #[arg(long)]
    pub raw: bool,
    /// Records of history to show first.
    #[arg(long, default_value_t = 1000)]
    pub tail: u64,
    /// Start after record SEQ (0 replays the whole run).
    #[arg(long)]
    pub since: Option<u64>,
    /// Show no history, only what comes next.
    #[arg(long)]
    pub no_history: bool,
    /// Follow this run instead of the task's current one.
    #[arg(long)]
    pub run: Option<String>,
    /// Print NDJSON records.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub name: String,
    /// Print the process's bytes exactly, even on a terminal (by default a terminal gets
    /// control characters and escape sequences shown escaped, never executed).
    #[arg(long)]
    pub raw: bool,
    /// A run id (default: the task's latest run).
    #[arg(long)]
    pub run: Option<String>,
    /// Only the last N records.
    #[arg(long)]
    pub tail: Option<u64>,
    /// Only records matching this regular expression.
    #[arg(long)]
    pub grep: Option<String>,
    /// Only records of this stream: stdout, stderr (or system).
    #[arg(long)]
    pub stream: Option<String>,
    /// Print NDJSON records.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShutdownArgs {
    /// Leave every task running under its holder; the next daemon on this home takes
    /// them back (same processes, logs going on where they were).
    #[arg(long)]
    pub leave_running: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    pub name: String,
    /// Grace between SIGTERM and SIGKILL (default: the task's --stop-timeout).
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn duration_arg(flag: &str, v: &str) -> anyhow::Result<Duration> {
    parse_duration(v).with_context(|| format!("--{flag}"))
}

impl Cli {
    /// For the commands that run a daemon (`serve`, and `demo`, which may start one): its
    /// diagnostics settings, and the file to keep them in when it is known already.
    pub fn daemon_logging(&self) -> Option<(&crate::logging::LogArgs, Option<PathBuf>)> {
        match &self.cmd {
            Command::Serve(a) => Some((&a.log, Some(serve::home(a).join("daemon.log")))),
            Command::Demo(a) => Some((&a.log, None)),
            _ => None,
        }
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    // The daemon takes only a token the user gives; a client also finds the daemon's own
    // `<home>/token` when its user may read it.
    let given = match &cli.token_file {
        Some(f) => corral_client::load_token(Some(f), None)?,
        None => std::env::var("CORRAL_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let token = match (&given, &cli.cmd) {
        (Some(_), _) | (None, Command::Serve(_)) => given.clone(),
        (None, Command::Demo(a)) => corral_client::load_token(None, a.home.as_deref())?,
        (None, _) => corral_client::load_token(None, None)?,
    };
    let c = Client::new(&cli.addr, token.clone());
    match cli.cmd {
        Command::Serve(a) => serve::serve(*a, given).await,
        Command::Login(a) => login(&c, a.json).await,
        Command::Service(a) => service::dispatch(a),
        Command::Shutdown(a) => tasks::shutdown(&c, a).await,
        Command::Run(a) => tasks::run(&c, *a).await,
        Command::Tail(a) => tail::tail(&c, a).await,
        Command::Ps(a) if a.all_nodes => nodes::ps_all(&c, a.json).await,
        Command::Ps(a) if a.containers => tasks::ps_containers(&c, a.json).await,
        Command::Ps(a) => tasks::ps(&c, a.json).await,
        Command::Runs(a) => tasks::runs(&c, a).await,
        Command::Monitor(a) => monitor::monitor(&c, monitor::MonitorOpts::from(a)).await,
        Command::Logs(a) => logs::logs(&c, a).await,
        Command::Stop(a) => tasks::stop(&c, a).await,
        Command::Restart(a) => tasks::restart(&c, a).await,
        Command::Rm(a) => tasks::rm(&c, a).await,
        Command::Demo(a) => crate::demo::demo(&c, a, token).await,
        Command::Llama(cmd) => llama::dispatch(&c, cmd).await,
        Command::Redis(cmd) => redis::dispatch(&c, cmd).await,
        Command::Diag(a) => diag::diag(&c, a).await,
        Command::Alerts(a) => alerts::alerts(&c, a).await,
        Command::Gpu(a) => gpu::gpu(&c, a).await,
        Command::Nodes(a) => nodes::nodes(&c, a.json).await,
        Command::Hold(a) => Ok(hold(a)),
        Command::SimLlamaServer(a) => crate::demo::sim::llama_server(a).await.map(|_| 0),
        Command::SimRpcServer(a) => crate::demo::sim::rpc_server(a).await.map(|_| 0),
    }
}

/// `corral hold`: the per-run holder process (see `corral_daemon::holder`).
pub fn hold(a: HoldCmd) -> i32 {
    corral_daemon::holder::shim::hold(corral_daemon::holder::shim::HoldArgs {
        run_id: a.run_id,
        socket: a.socket,
        exit_file: a.exit_file,
        cwd: a.cwd,
        argv: a.argv,
        buffer: a.buffer.max(1),
    })
}

async fn login(c: &Client, json_out: bool) -> anyhow::Result<i32> {
    let v: serde_json::Value = c.post("/login-links", &serde_json::json!({})).await?;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", v["url"].as_str().unwrap_or(""))?;
    }
    Ok(0)
}

/// A line on stdout that never fails: a reader that went away (`| head -1`, a closed
/// terminal) must not take the program down with it.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// An error line on stderr that never fails. Messages can quote hostile text (a task's
/// output, a command line): on a terminal they go through the sanitiser.
pub fn say_error(line: &str) {
    let err = std::io::stderr();
    let line = if std::io::IsTerminal::is_terminal(&err) {
        corral_core::term::sanitize(line)
    } else {
        line.into()
    };
    let _ = writeln!(err.lock(), "corral: {line}");
}

/// The exit code of a command that started a run (`run`, `restart`, `llama`, …): a
/// command that could not even be spawned is the caller's mistake, so say why and exit 1
/// (the run is still recorded `failed`, with the same message).
pub fn start_exit_code(started: &Started) -> i32 {
    match &started.spawn_error {
        Some(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                corral_core::term::sanitize(e)
            );
            1
        }
        None => 0,
    }
}
