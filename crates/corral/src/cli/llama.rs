//! `corral llama`, `corral rpc-server`, `corral parse`, `corral backends`, and the
//! arguments of `corral events` (in `events.rs`).

use super::config::{read_file, FileSettings};
use super::{duration_arg, table};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corral_client::wire::{
    Backend, LlamaSettings, LlamaStatus, ProbeSettings, RpcSettings, Started, TaskSpec,
};
use corral_client::{enc, Client};
use corral_core::llama::{LogParser, ParserKind};
use corral_core::policy::Restart;
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum LlamaCommand {
    /// Supervise a llama-server coordinator (or `llama status NAME`).
    Llama(Box<LlamaArgs>),
    /// Supervise a local rpc-server backend.
    RpcServer(RpcArgs),
    /// Show structured events (history, then live with --follow).
    Events(EventsArgs),
    /// Turn a saved llama-server or rpc-server log into events (NDJSON); `-` reads stdin.
    Parse(ParseArgs),
    /// Show the rpc backend registry and its last heartbeat.
    Backends(crate::cli::JsonArg),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LlamaArgs {
    #[command(subcommand)]
    pub sub: Option<LlamaSub>,
    /// Task name.
    #[arg(long, required = true)]
    pub name: Option<String>,
    /// Model file (GGUF) [config: llama_model_path].
    #[arg(long, env = "CORRAL_LLAMA_MODEL")]
    pub model: Option<String>,
    /// Address llama-server listens on [config: llama_server_host; default: 127.0.0.1].
    #[arg(long, env = "CORRAL_LLAMA_HOST")]
    pub host: Option<String>,
    /// Port llama-server listens on [config: llama_server_port; default: 8080].
    #[arg(long, env = "CORRAL_LLAMA_PORT")]
    pub port: Option<u16>,
    /// Comma-separated rpc backends HOST:PORT [config: rpc_backends].
    #[arg(long, env = "CORRAL_LLAMA_RPC_BACKENDS")]
    pub rpc: Option<String>,
    /// Layers to offload to GPUs [config: n_gpu_layers].
    #[arg(long, env = "CORRAL_LLAMA_N_GPU_LAYERS")]
    pub ngl: Option<i64>,
    /// Context size [config: ctx_size].
    #[arg(long, env = "CORRAL_LLAMA_CTX_SIZE")]
    pub ctx: Option<i64>,
    /// The llama-server binary [config: llama_server_bin; default: llama-server on PATH].
    #[arg(long, env = "CORRAL_LLAMA_BIN")]
    pub bin: Option<String>,
    /// Config file (TOML, or JSON when it ends in .json).
    #[arg(long, env = "CORRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Time between readiness checks of /health.
    #[arg(long, env = "CORRAL_LLAMA_HEALTH_INTERVAL", default_value = "1s")]
    pub health_interval: String,
    /// Timeout of one health check.
    #[arg(long, env = "CORRAL_LLAMA_HEALTH_TIMEOUT", default_value = "5s")]
    pub health_timeout: String,
    /// Readiness checks before the start counts as failed (the model-load budget).
    #[arg(long, env = "CORRAL_LLAMA_HEALTH_ATTEMPTS", default_value_t = 60)]
    pub health_attempts: u32,
    /// Time between liveness checks once ready.
    #[arg(long, env = "CORRAL_LLAMA_LIVENESS_INTERVAL", default_value = "60s")]
    pub liveness_interval: String,
    /// Failed liveness checks in a row that restart the server.
    #[arg(long, env = "CORRAL_LLAMA_LIVENESS_FAILURES", default_value_t = 3)]
    pub liveness_failures: u32,
    /// Consecutive failed restarts before `error`.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// First restart delay (doubles up to 30s).
    #[arg(long, default_value = "1s")]
    pub backoff_initial: String,
    #[arg(long)]
    pub json: bool,
    /// More llama-server arguments, after `--` [config: server_args; env: CORRAL_LLAMA_SERVER_ARGS].
    #[arg(last = true)]
    pub server_args: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum LlamaSub {
    /// The coordinator's status object.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct RpcArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 50052)]
    pub port: u16,
    /// The rpc-server binary [default: rpc-server, else ggml-rpc-server, on PATH].
    #[arg(long, env = "CORRAL_RPC_SERVER_BIN")]
    pub bin: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// More rpc-server arguments, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events.
    #[arg(long)]
    pub follow: bool,
    /// Only this component: coordinator, rpc_backend, model, system, task.
    #[arg(long)]
    pub component: Option<String>,
    /// Only this level and above: debug, info, warning, error, critical.
    #[arg(long)]
    pub level: Option<String>,
    /// Only events of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only events of this node (on a hub, which shows the whole fleet's).
    #[arg(long)]
    pub node: Option<String>,
    /// Only events after this id.
    #[arg(long)]
    pub since: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ParseArgs {
    /// The log file, or `-` for standard input.
    pub file: String,
    /// The `task` the events name [default: the file's name without its extension].
    #[arg(long)]
    pub task: Option<String>,
}

/// A `--bin` given as a path is made absolute here (the daemon may run elsewhere); a
/// bare name is looked up on PATH by the daemon's kind.
fn bin_arg(given: Option<&str>) -> anyhow::Result<Option<String>> {
    match given {
        Some(b) if b.contains('/') => {
            let p = std::fs::canonicalize(b).map_err(|_| {
                anyhow::anyhow!(
                    "--bin {b}: no such executable file; give the full path of the binary"
                )
            })?;
            Ok(Some(p.display().to_string()))
        }
        other => Ok(other.map(str::to_string)),
    }
}

fn cwd() -> Option<String> {
    std::env::current_dir()
        .ok()
        .map(|d| d.display().to_string())
}

pub async fn dispatch(c: &Client, cmd: LlamaCommand) -> anyhow::Result<i32> {
    match cmd {
        LlamaCommand::Llama(a) => match a.sub {
            Some(LlamaSub::Status { name, json }) => status(c, &name, json).await,
            None => start_llama(c, *a).await,
        },
        LlamaCommand::RpcServer(a) => {
            let settings = RpcSettings {
                host: a.host.clone(),
                port: a.port,
                bin: bin_arg(a.bin.as_deref())?,
                server_args: a.args.clone(),
            };
            let spec = TaskSpec {
                restart: Restart::Always,
                kind: Some("rpc".into()),
                cwd: cwd(),
                extra: serde_json::to_value(&settings)?,
                ..TaskSpec::new(a.name.clone(), Vec::new())
            };
            let v: Started = c.post("/tasks", &spec).await?;
            print_started(&v, a.json)?;
            Ok(super::start_exit_code(&v))
        }
        LlamaCommand::Events(a) => super::events::events(c, a).await,
        LlamaCommand::Parse(a) => parse(&a),
        LlamaCommand::Backends(a) => {
            let list: Vec<Backend> = c.get("/backends").await?;
            let mut out = std::io::stdout().lock();
            if a.json {
                writeln!(out, "{}", serde_json::to_string(&list)?)?;
                return Ok(0);
            }
            if list.is_empty() {
                writeln!(
                    out,
                    "no rpc backends configured; give them to `corral llama --rpc HOST:PORT,…`"
                )?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|b| {
                    vec![
                        corral_core::term::sanitize(&b.addr).into_owned(),
                        match b.healthy {
                            Some(true) => "up".into(),
                            Some(false) => "down".into(),
                            None => "unchecked".into(),
                        },
                        table::opt(b.latency_ms),
                        b.tasks.join(","),
                        corral_core::term::sanitize(b.last_error.as_deref().unwrap_or(""))
                            .into_owned(),
                    ]
                })
                .collect();
            table::print(
                &mut out,
                &["ADDR", "STATE", "LATENCY_MS", "TASKS", "LAST_ERROR"],
                &rows,
            )?;
            Ok(0)
        }
    }
}

fn print_started(v: &Started, json_out: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", json!({"task": v.task, "run_id": v.run_id}))
    } else {
        writeln!(out, "{}", v.run_id)
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|v| v.split_whitespace().map(str::to_string).collect())
}

/// The coordinator's spec: flag (which clap already merged with the environment) >
/// config file > default. The daemon's llama kind builds the command line from it.
pub fn coordinator_spec(a: &LlamaArgs) -> anyhow::Result<TaskSpec> {
    let file = match &a.config {
        Some(p) => read_file(p)?,
        None => FileSettings::default(),
    };
    let name = a.name.clone().context("--name is required")?;
    let model = a.model.clone().or(file.llama_model_path).context(
        "no model given: pass --model PATH (or set llama_model_path in the config file)",
    )?;
    let rpc: Vec<String> = match &a.rpc {
        Some(r) => r
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => file.rpc_backends.unwrap_or_default(),
    };
    for b in &rpc {
        if b.rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            bail!("rpc backend `{b}` is not HOST:PORT");
        }
    }
    let server_args = if !a.server_args.is_empty() {
        a.server_args.clone()
    } else {
        env_list("CORRAL_LLAMA_SERVER_ARGS")
            .or(file.server_args)
            .unwrap_or_default()
    };
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let settings = LlamaSettings {
        host: a
            .host
            .clone()
            .or(file.llama_server_host)
            .unwrap_or_else(|| "127.0.0.1".into()),
        port: a.port.or(file.llama_server_port).unwrap_or(8080),
        model_path: model,
        rpc_backends: rpc,
        n_gpu_layers: a.ngl.or(file.n_gpu_layers),
        ctx_size: a.ctx.or(file.ctx_size),
        bin: bin_arg(a.bin.as_deref().or(file.llama_server_bin.as_deref()))?,
        server_args,
        probe: Some(ProbeSettings {
            interval_ms: ms(probe_duration("health-interval", &a.health_interval)?),
            timeout_ms: ms(probe_duration("health-timeout", &a.health_timeout)?),
            attempts: a.health_attempts.max(1),
            liveness_interval_ms: ms(probe_duration("liveness-interval", &a.liveness_interval)?),
            liveness_failures: a.liveness_failures.max(1),
        }),
    };
    Ok(TaskSpec {
        restart: Restart::Always,
        max_retries: a.max_retries,
        backoff_initial_ms: ms(duration_arg("backoff-initial", &a.backoff_initial)?),
        kind: Some("llama".into()),
        cwd: cwd(),
        extra: serde_json::to_value(&settings)?,
        ..TaskSpec::new(name, Vec::new())
    })
}

fn probe_duration(flag: &str, v: &str) -> anyhow::Result<std::time::Duration> {
    let env = format!("CORRAL_LLAMA_{}", flag.to_uppercase().replace('-', "_"));
    duration_arg(&format!("{flag} (or {env})"), v)
}

async fn start_llama(c: &Client, a: LlamaArgs) -> anyhow::Result<i32> {
    let spec = coordinator_spec(&a)?;
    let v: Started = c.post("/tasks", &spec).await?;
    print_started(&v, a.json)?;
    Ok(super::start_exit_code(&v))
}

async fn status(c: &Client, name: &str, json_out: bool) -> anyhow::Result<i32> {
    let v: LlamaStatus = c.get(&format!("/llama/{}/status", enc(name))).await?;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
        return Ok(0);
    }
    let clean = |s: &str| corral_core::term::sanitize(s).into_owned();
    writeln!(out, "{}: {}", clean(name), v.status)?;
    writeln!(out, "  port        {}", v.port)?;
    if let Some(t) = &v.started_at {
        writeln!(
            out,
            "  started     {} (up {})",
            clean(t),
            v.uptime.map_or("-".into(), |u| table::age(u as f64))
        )?;
    }
    writeln!(out, "  retries     {}", v.retries)?;
    if v.adopted {
        writeln!(out, "  adopted     yes (corral did not start this server)")?;
    }
    for m in &v.models {
        writeln!(
            out,
            "  model       {} (n_params {}, n_ctx {}, size {})",
            clean(m["id"].as_str().unwrap_or("?")),
            m["n_params"],
            m["n_ctx"],
            m["size"]
        )?;
    }
    if !v.rpc_backends.is_empty() {
        writeln!(out, "  rpc         {}", clean(&v.rpc_backends.join(", ")))?;
    }
    if let Some(e) = &v.last_error {
        writeln!(out, "  last error  {}", clean(e))?;
    }
    Ok(0)
}

/// `corral parse FILE|-`: events of a saved log, one JSON object per line, with the
/// line number they came from.
/// Events in the contract's shape (DESIGN.md), plus the `line_no` they came from. A saved
/// log carries no clock, so `timestamp` is when it was parsed; `run_id` is empty.
fn parse(a: &ParseArgs) -> anyhow::Result<i32> {
    let file = a.file.as_str();
    let task = a.task.clone().unwrap_or_else(|| {
        let stem = std::path::Path::new(file).file_stem();
        stem.map_or("-".into(), |s| {
            s.to_string_lossy().trim_end_matches(".stderr").to_string()
        })
    });
    let node = corral_daemon::serve::node_name();
    let now = corral_daemon::util::unix_now();
    let reader: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?,
        ))
    };
    let mut parser = LogParser::new(ParserKind::Auto);
    let mut out = std::io::stdout().lock();
    let emit = |kinds: Vec<corral_core::event::EventKind>,
                line_no: usize,
                out: &mut dyn Write|
     -> anyhow::Result<()> {
        for k in kinds {
            let ev = corral_core::event::Event::from_kind(k, now, &node, &task, "");
            let mut v = serde_json::to_value(&ev)?;
            v["line_no"] = line_no.into();
            writeln!(out, "{v}")?;
        }
        Ok(())
    };
    let mut n = 0;
    for line in reader.split(b'\n') {
        let line = line.with_context(|| format!("reading {file}"))?;
        n += 1;
        let text = String::from_utf8_lossy(&line);
        let kinds = parser.feed(text.trim_end_matches('\r'));
        emit(kinds, n, &mut out)?;
    }
    let kinds = parser.finish();
    emit(kinds, n, &mut out)?;
    Ok(0)
}
