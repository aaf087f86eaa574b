//! The command line: a thin client of the daemon's HTTP API (`corral serve` runs the
//! daemon itself). Every listing has `--json`.

pub mod config;
pub mod llama;
pub mod monitor;
pub mod service;
pub mod table;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use corral_client::wire::{Removed, RunInfo, Started, StopRequest, TaskInfo, TaskSpec};
use corral_client::{enc, Client};
use corral_core::duration::parse_duration;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Examples:
  corral demo                                   # a simulated llama.cpp fleet, nothing else needed
  corral serve                                  # the daemon, on 127.0.0.1:7070
  corral run --name job --restart on-failure -- python3 train.py
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
    Serve(ServeArgs),
    /// Create (or replace a stopped) task and start it; prints the run id.
    Run(RunArgs),
    /// List the tasks.
    Ps(JsonArg),
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
    /// Start the daemon at boot (systemd), with this home and address, or stop doing so.
    Service(service::ServiceArgs),
    /// Print a one-time link that logs a browser in to the daemon (valid 2 minutes).
    Login(JsonArg),
    /// Start the daemon (or use a running one) with a simulated llama.cpp fleet.
    Demo(crate::demo::DemoArgs),
    #[command(flatten)]
    Llama(llama::LlamaCommand),
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
    #[command(flatten)]
    pub llama: config::LlamaServeArgs,
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
    /// Working directory of the process.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
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
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
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

fn kv(flag: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--{flag} `{s}` is not K=V; write e.g. --{flag} CUDA_VISIBLE_DEVICES=0"),
        })
        .collect()
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
        Command::Serve(a) => serve(a, given).await,
        Command::Login(a) => login(&c, a.json).await,
        Command::Service(a) => service::dispatch(a),
        Command::Run(a) => run(&c, a).await,
        Command::Ps(a) => ps(&c, a.json).await,
        Command::Runs(a) => runs(&c, a).await,
        Command::Monitor(a) => {
            let since = if a.no_history { None } else { a.since };
            let tail = if a.no_history { 0 } else { a.tail };
            monitor::monitor(
                &c,
                monitor::MonitorOpts {
                    task: a.name,
                    run: a.run,
                    tail,
                    since,
                    json: a.json,
                },
            )
            .await
        }
        Command::Logs(a) => logs(&c, a).await,
        Command::Stop(a) => {
            let body = StopRequest {
                timeout_ms: match &a.timeout {
                    Some(t) => Some(duration_arg("timeout", t)?.as_millis() as u64),
                    None => None,
                },
            };
            let info: TaskInfo = c
                .post(&format!("/tasks/{}/stop", enc(&a.name)), &body)
                .await?;
            if a.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("{}: {}", a.name, info.status);
            }
            Ok(0)
        }
        Command::Restart(a) => {
            let v: Started = c
                .post(&format!("/tasks/{}/restart", enc(&a.name)), &json!({}))
                .await?;
            if a.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("{}", v.run_id);
            }
            Ok(start_exit_code(&v))
        }
        Command::Rm(a) => {
            let v: Removed = c.delete(&format!("/tasks/{}", enc(&a.name))).await?;
            if a.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("removed {}", a.name);
            }
            Ok(0)
        }
        Command::Demo(a) => crate::demo::demo(&c, a, token).await,
        Command::Llama(cmd) => llama::dispatch(&c, cmd).await,
        Command::Hold(a) => Ok(hold(a)),
        Command::SimLlamaServer(a) => crate::demo::sim::llama_server(a).await.map(|_| 0),
        Command::SimRpcServer(a) => crate::demo::sim::rpc_server(a).await.map(|_| 0),
    }
}

pub fn serve_opts(
    a: &ServeArgs,
    token: Option<String>,
) -> anyhow::Result<corral_daemon::ServeOpts> {
    Ok(corral_daemon::ServeOpts {
        listen: a.listen.clone(),
        home: a
            .home
            .clone()
            .unwrap_or_else(corral_daemon::serve::default_home),
        token,
        insecure_no_auth: a.insecure_no_auth,
        allow_hosts: a.allow_hosts.clone(),
        log: corral_daemon::logbook::LogConfig {
            ring_records: a.ring_records.max(1),
            max_bytes: a.max_log_mb.max(1) * 1024 * 1024,
            ..Default::default()
        },
        observer: config::observer_config()?,
        node: corral_daemon::serve::node_name(),
        llama: a.llama.config()?,
    })
}

async fn serve(a: ServeArgs, token: Option<String>) -> anyhow::Result<i32> {
    let opts = serve_opts(&a, token)?;
    if opts.insecure_no_auth {
        say_error(&format!(
            "WARNING: --insecure-no-auth: the API takes no token; anyone who can reach {} can run \
             commands as this user",
            opts.listen
        ));
    }
    let home = opts.home.clone();
    corral_daemon::serve(opts, |addr| {
        // The first line on stdout is for scripts and tests: the bound address.
        say(&format!("corral listening on http://{addr}"));
        tracing::info!("home {}", home.display());
    })
    .await?;
    Ok(0)
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
    let v: Value = c.post("/login-links", &json!({})).await?;
    if json_out {
        println!("{v}");
    } else {
        println!("{}", v["url"].as_str().unwrap_or(""));
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

/// An error line on stderr that never fails.
pub fn say_error(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "corral: {line}");
}

async fn run(c: &Client, a: RunArgs) -> anyhow::Result<i32> {
    let restart: corral_core::policy::Restart = a
        .restart
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--restart: {e}"))?;
    let cwd = match &a.cwd {
        Some(d) => Some(
            std::fs::canonicalize(d)
                .with_context(|| format!("--cwd {}: no such directory", d.display()))?
                .display()
                .to_string(),
        ),
        None => std::env::current_dir()
            .ok()
            .map(|d| d.display().to_string()),
    };
    let spec = TaskSpec {
        cwd,
        env: kv("env", &a.env)?.into_iter().collect(),
        labels: kv("label", &a.labels)?.into_iter().collect(),
        restart,
        max_retries: a.max_retries,
        backoff_initial_ms: duration_arg("backoff-initial", &a.backoff_initial)?.as_millis() as u64,
        backoff_max_ms: duration_arg("backoff-max", &a.backoff_max)?.as_millis() as u64,
        stop_timeout_ms: duration_arg("stop-timeout", &a.stop_timeout)?.as_millis() as u64,
        ..TaskSpec::new(a.name.clone(), a.command.clone())
    };
    let v: Started = c.post("/tasks", &spec).await?;
    let run_id = v.run_id.clone();
    if a.json {
        println!("{}", json!({"task": v.task, "run_id": run_id}));
    } else {
        println!("{run_id}");
    }
    let code = start_exit_code(&v);
    if code != 0 {
        return Ok(code);
    }
    if a.follow {
        return monitor::monitor(
            c,
            monitor::MonitorOpts {
                task: a.name,
                run: Some(run_id),
                tail: 0,
                since: Some(0),
                json: a.json,
            },
        )
        .await;
    }
    Ok(0)
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
                corral_core::term::strip_escapes(e)
            );
            1
        }
        None => 0,
    }
}

async fn ps(c: &Client, json_out: bool) -> anyhow::Result<i32> {
    let tasks: Vec<TaskInfo> = c.get("/tasks").await?;
    if json_out {
        println!("{}", serde_json::to_string(&tasks)?);
        return Ok(0);
    }
    if tasks.is_empty() {
        println!("no tasks; start one with `corral run --name NAME -- CMD`");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.status.to_string(),
                table::opt(t.pid),
                table::opt(t.run_id.as_deref()),
                t.restarts.to_string(),
                t.uptime_s.map_or("-".into(), table::age),
                corral_core::term::strip_escapes(&t.command).into_owned(),
            ]
        })
        .collect();
    table::print(
        &[
            "NAME", "STATUS", "PID", "RUN_ID", "RESTARTS", "UPTIME", "COMMAND",
        ],
        &rows,
    );
    Ok(0)
}

async fn runs(c: &Client, a: RunsArgs) -> anyhow::Result<i32> {
    let mut path = format!("/runs?limit={}", a.limit);
    if let Some(n) = &a.name {
        path.push_str(&format!("&task={}", enc(n)));
    }
    let rows: Vec<RunInfo> = c.get(&path).await?;
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no runs yet");
        return Ok(0);
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let err = corral_core::term::strip_escapes(r.error_message.as_deref().unwrap_or(""));
            let short: String = err.chars().take(60).collect();
            vec![
                r.run_id.clone(),
                r.task.clone(),
                r.attempt.to_string(),
                r.status.to_string(),
                table::opt(r.pid),
                table::time(r.started_at),
                r.ended_at.map_or("-".into(), table::time),
                table::opt(r.exit_code),
                table::opt(r.signal),
                r.lines.to_string(),
                r.bytes.to_string(),
                corral_core::term::strip_escapes(&r.log_path).into_owned(),
                short,
            ]
        })
        .collect();
    table::print(
        &[
            "RUN_ID", "TASK", "ATTEMPT", "STATUS", "PID", "STARTED", "ENDED", "EXIT", "SIGNAL",
            "LINES", "BYTES", "LOG", "ERROR",
        ],
        &table_rows,
    );
    Ok(0)
}

/// The last records of a run, holding at least `tail` of the process's records: the
/// server's `tail` counts corral's own notes too, so the window widens until enough are
/// in it (or it reaches the start of the run).
async fn tail_records(c: &Client, base: &str, tail: u64) -> anyhow::Result<bytes::Bytes> {
    let mut n = tail.saturating_add(8);
    loop {
        let path = format!("{base}&tail={n}");
        let body = c
            .send(c.request(reqwest::Method::GET, &path))
            .await?
            .bytes()
            .await?;
        let (mut output, mut first) = (0u64, None);
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if let Some(seq) = v["seq"].as_u64() {
                first.get_or_insert(seq);
                if v["stream"] != "system" {
                    output += 1;
                }
            }
        }
        if output >= tail || first.is_none_or(|s| s <= 1) || n == u64::MAX {
            return Ok(body);
        }
        n = n.saturating_mul(4);
    }
}

async fn logs(c: &Client, a: LogsArgs) -> anyhow::Result<i32> {
    let run_id = match &a.run {
        Some(r) => r.clone(),
        None => {
            let rows: Vec<RunInfo> = c
                .get(&format!("/runs?task={}&limit=1", enc(&a.name)))
                .await?;
            match rows.first() {
                Some(r) => r.run_id.clone(),
                None => bail!("task `{}` has no runs yet", a.name),
            }
        }
    };
    let grep = a
        .grep
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("--grep is not a valid regular expression")?;
    let stream: Option<corral_core::record::Stream> = a
        .stream
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| anyhow::anyhow!("--stream: {e}"))?;
    let mut out = std::io::stdout().lock();
    if grep.is_none() && stream.is_none() && a.tail.is_none() && !a.json {
        // Byte-for-byte what the process wrote.
        let resp = c
            .send(c.request(reqwest::Method::GET, &format!("/runs/{}/log", enc(&run_id))))
            .await?;
        if let Some(g) = resp
            .headers()
            .get("x-corral-gap")
            .and_then(|v| v.to_str().ok())
        {
            say_error(&format!(
                "records {} were dropped by the log size cap; the rest follows",
                corral_core::term::strip_escapes(g)
            ));
        }
        use futures_util::StreamExt;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("reading the log")?)?;
        }
        out.flush()?;
        return Ok(0);
    }
    let base = format!(
        "/tasks/{}/logs?follow=false&run={}",
        enc(&a.name),
        enc(&run_id)
    );
    let body = match a.tail {
        Some(t) if grep.is_none() && stream.is_none() => tail_records(c, &base, t).await?,
        _ => {
            let path = format!("{base}&since=0");
            c.send(c.request(reqwest::Method::GET, &path))
                .await?
                .bytes()
                .await?
        }
    };
    let mut end: Option<&[u8]> = None;
    let mut kept: Vec<&[u8]> = Vec::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if v.get("seq").is_none() {
            if a.json && v.get("gap").is_some() {
                kept.push(line);
            }
            if v.get("end").is_some() {
                end = Some(line);
            }
            continue;
        }
        if let Some(s) = stream {
            if v["stream"] != s.as_str() {
                continue;
            }
        } else if v["stream"] == "system" {
            continue;
        }
        if let Some(re) = &grep {
            if !re.is_match(v["line"].as_str().unwrap_or("")) {
                continue;
            }
        }
        kept.push(line);
    }
    let start = match a.tail {
        Some(t) => kept.len().saturating_sub(t as usize),
        None => 0,
    };
    let strip = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for line in &kept[start..] {
        if a.json {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        } else {
            let v: Value = serde_json::from_slice(line)?;
            let text = v["line"].as_str().unwrap_or("");
            let text = if strip {
                corral_core::term::strip_escapes(text)
            } else {
                text.into()
            };
            if v["partial"] == true {
                write!(out, "{text}")?;
            } else {
                writeln!(out, "{text}")?;
            }
        }
    }
    if let (true, Some(end)) = (a.json, end) {
        out.write_all(end)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(0)
}
