//! The Redis parts of the benchmark (issue 10), each against a redis-server of its own on
//! a free loopback port, with no persistence, its directory on the same tmpfs:
//!
//! - `--redis`: events per second published through a real daemon's publisher (an `rpc`
//!   task whose child prints rpc-server connection lines, each one event: `PUBLISH` to
//!   `logs` and `rpc_backends`, `XADD` to the stream), side by side with
//!   `redis-benchmark -t publish -P 64` on the same server (the pipelined ceiling, and the
//!   same for corral's `XADD`) and a plain client that sends one synchronous `PUBLISH` per
//!   event (how such publishers are usually written). Every event is accounted for from
//!   the daemon's own counters: published + dropped + failed = emitted (`corral redis
//!   status`, `corral_events_total`), and the server's `INFO commandstats` agrees.
//! - `--fleet`: a hub (`corral serve --hub`) and N simulated nodes (a hidden mode of this
//!   binary, another process: each node is corral's own bus and publisher, registration
//!   included, in one process) publishing R events/s each through the same Redis; every
//!   event accounted for (received by the hub + counted drops = emitted), the latency from
//!   an event's timestamp on its node to its arrival at a viewer following the hub's
//!   `/api/v1/events`, and the hub's CPU and memory.

use super::{
    check_interrupted, mib, proc_cpu, rss_threads, start_daemon_with, Ctx, Daemon, KillOnDrop, Row,
};
use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The channel prefix of the benchmark's daemons.
const PREFIX: &str = "bench:llama_cpp";

/// A redis-server of the benchmark; killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

pub fn need(tool: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        bail!(
            "{tool} is not installed; the Redis parts of the benchmark need redis-server and \
             redis-benchmark: apt-get install redis-server redis-tools (or run without \
             --redis/--fleet: --capture --peers --idle)"
        );
    }
    Ok(())
}

/// Starts redis-server on a free port, its files under `work/<name>`.
pub fn start_redis(ctx: &Ctx, name: &str) -> Result<RedisServer> {
    need("redis-server")?;
    let dir = ctx.work.join(name);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::fs::File::create(dir.join("redis.log"))?)
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let mut s = RedisServer { child, port };
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = s.child.try_wait() {
            bail!(
                "redis-server ended ({st}): {}",
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
        }
        if s.conn()
            .is_ok_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
        {
            return Ok(s);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("redis-server on port {port} did not answer within 10 s");
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisServer {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url().as_str())?.get_connection()
    }

    /// Calls of each command the server executed, from `INFO commandstats`.
    fn calls(&self, cmd: &str) -> Result<u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn()?)?;
        let key = format!("cmdstat_{cmd}:calls=");
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

/// The daemon's environment for publishing to `r`.
fn publish_env(r: &RedisServer, on: bool) -> Vec<(String, String)> {
    let mut v = vec![
        ("REDIS_HOST".to_string(), "127.0.0.1".to_string()),
        ("REDIS_PORT".into(), r.port.to_string()),
        ("CORRAL_REDIS_CHANNEL_PREFIX".into(), PREFIX.into()),
        ("CORRAL_REDIS_RAW_LINES".into(), "none".into()),
    ];
    if on {
        v.push(("CORRAL_REDIS_ENABLED".into(), "true".into()));
    }
    v
}

async fn get_json(ctx: &Ctx, d: &Daemon, path: &str) -> Result<Value> {
    let r = ctx
        .http
        .get(format!("{}/api/v1{path}", d.url))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("GET {path}: {}", r.status());
    }
    Ok(r.json().await?)
}

/// Events this daemon emitted (the sum of `corral_events_total`).
async fn emitted(ctx: &Ctx, d: &Daemon) -> Result<u64> {
    let text = ctx
        .http
        .get(format!("{}/metrics", d.url))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("corral_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    published: u64,
    dropped: u64,
    failed: u64,
}

impl Counts {
    fn of(v: &Value) -> Counts {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Counts {
            published: n("published"),
            dropped: n("dropped"),
            failed: n("failed"),
        }
    }
    fn taken(&self) -> u64 {
        self.published + self.dropped + self.failed
    }
}

/// Runs `redis-benchmark` with `--csv`; the requests per second of its (only) test.
fn redis_benchmark(port: u16, requests: u64, extra: &[&str]) -> Result<f64> {
    need("redis-benchmark")?;
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-P", "64", "-n", &requests.to_string(), "--csv"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "redis-benchmark failed ({}): {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `"test","rps",` and six latencies, then one row per test; the test's name (the
    // command) may hold commas and quotes, so the rate is read from the row's end.
    text.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| l.rsplit(',').nth(6)?.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("no result in redis-benchmark's output: {text}"))
}

/// A representative event's JSON, as corral publishes it (an rpc-server connection).
fn sample_event_json(i: u64) -> String {
    use corral_core::event::{Component, Event, EventKind, EventType, Level};
    let kind = EventKind::new(
        Component::RpcBackend,
        Level::Info,
        EventType::Connect,
        "client connected",
    )
    .with("free_mem", 25_275_826_176u64)
    .with("seq", i);
    serde_json::to_string(&Event::from_kind(
        kind,
        super::real_s(),
        "bench-node",
        "rpc0",
        "r-0001",
    ))
    .unwrap_or_default()
}

/// The plain client: a loop of synchronous `PUBLISH` calls, one per event, each waiting
/// for its reply. Events/s.
fn one_per_event(r: &RedisServer, n: u64) -> Result<f64> {
    let mut c = r.conn()?;
    let channel = format!("{PREFIX}:logs");
    let bodies: Vec<String> = (0..n.min(1000)).map(sample_event_json).collect();
    let t0 = Instant::now();
    for i in 0..n {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&bodies[(i % bodies.len() as u64) as usize])
            .query(&mut c)?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// The same plain client sending what corral sends for an event (`PUBLISH` to `logs`
/// and `rpc_backends`, `XADD` to the stream), each command waiting for its reply.
/// Events/s.
fn one_per_event_same_commands(r: &RedisServer, n: u64) -> Result<f64> {
    let mut c = r.conn()?;
    let bodies: Vec<String> = (0..n.min(1000)).map(sample_event_json).collect();
    let stream = "bench:plain-stream";
    let t0 = Instant::now();
    for i in 0..n {
        let body = &bodies[(i % bodies.len() as u64) as usize];
        for ch in ["logs", "rpc_backends"] {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(format!("{PREFIX}:{ch}"))
                .arg(body)
                .query(&mut c)?;
        }
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("data")
            .arg(body)
            .query(&mut c)?;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL").arg(stream).query(&mut c)?;
    Ok(rate)
}

/// The `--redis` part.
pub fn publish_part(ctx: &Ctx, corral: &Path) -> Result<Vec<Row>> {
    let a = &ctx.a;
    let mut rows = Vec::new();
    let r = start_redis(ctx, "redis-publish")?;
    eprintln!("corral-bench: redis: server on port {}", r.port);

    // The ceilings on this server: PUBLISH as redis-benchmark sends it, and corral's
    // stream append with an event's JSON.
    // (Debian's redis-benchmark 7.0 has no `-t publish` test; the command given
    // explicitly is the same PUBLISH with a 3-byte payload.)
    let ceiling = redis_benchmark(
        r.port,
        a.ceiling_requests,
        &["PUBLISH", "bench:ceiling", "xxx"],
    )?;
    let body = sample_event_json(1);
    let xadd_ceiling = redis_benchmark(
        r.port,
        a.ceiling_requests / 4,
        &[
            "XADD",
            "bench:ceiling",
            "MAXLEN",
            "~",
            "100000",
            "*",
            "data",
            &body,
        ],
    )?;
    let _: () = redis::cmd("DEL")
        .arg("bench:ceiling")
        .query(&mut r.conn()?)?;
    let plain = one_per_event(&r, a.plain_events)?;
    let plain3 = one_per_event_same_commands(&r, a.plain_events / 3)?;

    // Corral: a daemon publishing to this server, an rpc task printing connection lines.
    let d = start_daemon_with(ctx, corral, "redis-home", 256, &publish_env(&r, true), &[])?;
    let (st, before, emitted0) = ctx.rt.block_on(async {
        let t0 = Instant::now();
        loop {
            let st = get_json(ctx, &d, "/publishers/redis").await?;
            if st["connected"] == true {
                let e = emitted(ctx, &d).await?;
                // Settled: every event so far taken by the publisher.
                if Counts::of(&st).taken() == e {
                    return anyhow::Ok((st.clone(), Counts::of(&st), e));
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the daemon's publisher did not connect within 30 s: {st}");
            }
            check_interrupted()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    let (xadd0, pub0) = (r.calls("xadd")?, r.calls("publish")?);
    let n = a.redis_events;
    let rpc_port = free_port()?;
    let argv = vec![
        ctx.exe.display().to_string(),
        "rpc-child".into(),
        "--events".into(),
        n.to_string(),
    ];
    let cpu0 = proc_cpu(d.proc.id());
    let redis_cpu0 = proc_cpu(r.child.id());
    let t_start = Instant::now();
    ctx.rt.block_on(async {
        let r = ctx
            .http
            .post(format!("{}/api/v1/tasks", d.url))
            .json(&json!({
                "name": "rpc0",
                "command": argv,
                "kind": "rpc",
                "extra": {"host": "127.0.0.1", "port": rpc_port},
            }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "starting the rpc task: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        anyhow::Ok(())
    })?;
    // Poll the counters: the first publish after the start, and the moment every event
    // the daemon emitted is accounted for (and the child's events are all in).
    let deadline = Duration::from_secs(a.timeout);
    let (t_first, t_done, after, emitted1) = ctx.rt.block_on(async {
        let mut t_first = None;
        let mut last = before;
        loop {
            let st = get_json(ctx, &d, "/publishers/redis").await?;
            let c = Counts::of(&st);
            let now = t_start.elapsed();
            if t_first.is_none() && c.published > before.published {
                t_first = Some(now);
            }
            if c.taken() != last.taken() || c.taken() - before.taken() >= n {
                let e = emitted(ctx, &d).await?;
                if e - emitted0 >= n && c.taken() == e {
                    return anyhow::Ok((t_first.unwrap_or(now), now, c, e));
                }
            }
            last = c;
            if now > deadline {
                let e = emitted(ctx, &d).await.unwrap_or(0);
                bail!(
                    "the publisher did not account for {n} events within {deadline:?}: \
                     emitted {} (of which {} before), status {st}",
                    e,
                    emitted0
                );
            }
            check_interrupted()?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })?;
    let cpu = proc_cpu(d.proc.id()) - cpu0;
    let redis_cpu = proc_cpu(r.child.id()) - redis_cpu0;
    let (xadd1, pub1) = (r.calls("xadd")?, r.calls("publish")?);
    let published = after.published - before.published;
    let dropped = after.dropped - before.dropped;
    let failed = after.failed - before.failed;
    let events = emitted1 - emitted0;
    let secs = (t_done - t_first).as_secs_f64().max(1e-6);
    let rate = published as f64 / secs;
    let xadds = xadd1 - xadd0;
    let cmds = (xadd1 - xadd0) + (pub1 - pub0);
    drop(d);
    let _ = st;

    // The publisher alone, in another process (no parsing, no capture beside it).
    let out = Command::new(&ctx.exe)
        .args(["publisher-alone", "--redis-url", &r.url()])
        .args(["--events", &a.redis_events.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the publisher alone")?;
    if !out.status.success() {
        bail!(
            "the publisher alone failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let alone: Value = serde_json::from_slice(&out.stdout).context("the publisher's report")?;
    let alone_n = alone["published"].as_u64().unwrap_or(0);
    let alone_rate = alone_n as f64 / alone["secs"].as_f64().unwrap_or(1.0);
    let alone_lost = alone["dropped"].as_u64().unwrap_or(0) + alone["failed"].as_u64().unwrap_or(0);

    rows.push(Row::info(
        "redis: ceiling, `redis-benchmark -P 64 PUBLISH bench:ceiling xxx` (= `-t publish`: 50 clients, 3-byte payload)",
        format!("**{:.0} k PUBLISH/s**", ceiling / 1e3),
    ));
    rows.push(Row::info(
        "redis: ceiling of corral's stream append, `redis-benchmark -P 64 XADD … MAXLEN ~ 100000 * data <event>`",
        format!("**{:.0} k XADD/s** ({} -byte event)", xadd_ceiling / 1e3, body.len()),
    ));
    rows.push(Row::info(
        "redis: one synchronous PUBLISH per event (a plain client)",
        format!(
            "**{:.1} k events/s** ({} events)",
            plain / 1e3,
            a.plain_events
        ),
    ));
    rows.push(Row::info(
        "redis: the same client sending corral's 3 commands per event (2 PUBLISH + XADD), one round trip each",
        format!("**{:.1} k events/s** ({} events)", plain3 / 1e3, a.plain_events / 3),
    ));
    rows.push(Row::info(
        "redis: through corral (an rpc task's connection lines, each an event: 2 PUBLISH + XADD)",
        format!(
            "**{:.1} k events/s** ({published} published in {secs:.2} s; {:.0} k Redis commands/s; \
             CPU: daemon {:.0}%, redis-server {:.0}% of a core)",
            rate / 1e3,
            cmds as f64 / secs / 1e3,
            cpu / t_done.as_secs_f64() * 100.0,
            redis_cpu / t_done.as_secs_f64() * 100.0
        ),
    ));
    rows.push(Row::info(
        "redis: corral's publisher alone (its bus and sink as a library; a producer that never fills its queue)",
        format!(
            "**{:.1} k events/s** ({alone_n} events, {alone_lost} dropped or failed)",
            alone_rate / 1e3
        ),
    ));
    rows.push(Row::target(
        "redis: corral versus the pipelined PUBLISH ceiling",
        format!(
            "**{:.2}x** (in Redis commands: {:.2}x; the publisher alone: {:.2}x)",
            rate / ceiling,
            cmds as f64 / secs / ceiling,
            alone_rate / ceiling
        ),
        ">= 0.5x",
        rate >= 0.5 * ceiling,
    ));
    rows.push(Row::target(
        "redis: corral versus one PUBLISH per event",
        format!(
            "**{:.1}x** (the publisher alone: {:.1}x)",
            rate / plain,
            alone_rate / plain
        ),
        ">= 5x",
        rate >= 5.0 * plain,
    ));
    let accounted = published + dropped + failed == events;
    rows.push(Row::target(
        "redis: every event accounted for (published + dropped + failed = emitted)",
        format!(
            "{published} + {dropped} + {failed} = {} of {events} emitted; the server ran {xadds} XADD",
            published + dropped + failed
        ),
        "equal; XADD = published",
        accounted && xadds == published,
    ));
    Ok(rows)
}

/// The child of the `--redis` part: an rpc-server's connection lines, `events` of them,
/// block-buffered, as fast as it can.
#[derive(Args, Debug)]
pub struct RpcChildArgs {
    #[arg(long)]
    events: u64,
}

pub fn rpc_child(a: RpcChildArgs) -> Result<()> {
    let out = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out.lock());
    writeln!(w, "Starting RPC server v7.0.0")?;
    for i in 0..a.events {
        if i % 2 == 0 {
            w.write_all(b"Accepted client connection\n")?;
        } else {
            w.write_all(b"Client connection closed\n")?;
        }
    }
    w.flush()?;
    Ok(())
}

/// The daemon's publisher alone (hidden mode): its bus and Redis sink as a library, fed
/// by a producer that keeps the sink's queue busy but never full (so nothing is dropped
/// and the rate is the publisher's, not the producer's).
#[derive(Args, Debug)]
pub struct PublisherArgs {
    #[arg(long)]
    redis_url: String,
    #[arg(long)]
    events: u64,
}

/// The publisher's settings when the bench runs the daemon's bus and Redis sink as a
/// library: publishing on, to `url` under the bench's prefix, and no sampling.
fn library_settings(
    url: &str,
) -> (
    corral_daemon::sinks::redis::RedisConfig,
    corral_daemon::bus::ObserverConfig,
) {
    let cfg = corral_daemon::sinks::redis::RedisConfig {
        enabled: true,
        url: Some(url.to_string()),
        channel_prefix: PREFIX.into(),
        ..Default::default()
    };
    let obs = corral_daemon::bus::ObserverConfig {
        sampling: false,
        ..Default::default()
    };
    (cfg, obs)
}

pub fn publisher_alone(a: PublisherArgs) -> Result<()> {
    use corral_core::event::{Component, EventKind, EventType, Level};
    use corral_daemon::bus::Bus;
    use corral_daemon::sinks::redis::Redis;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (cfg, obs) = library_settings(&a.redis_url);
        let bus = Bus::new("bench-node".into(), &obs);
        let (redis, sink) = Redis::new(cfg, None, &bus);
        bus.register(sink);
        let t0 = Instant::now();
        while !redis.status(None).connected {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the publisher did not connect within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let queued = |b: &Bus| b.stats().sinks.iter().map(|s| s.queued).sum::<usize>();
        let base = redis.status(None).published;
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < a.events {
            // Paced, not spinning: reading the bus's counters clones them, which would
            // take CPU from the publisher under test.
            if queued(&bus) > 4000 {
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            }
            for _ in 0..500.min(a.events - sent) {
                bus.emit(
                    EventKind::new(
                        Component::RpcBackend,
                        Level::Info,
                        EventType::Connect,
                        "client connected",
                    )
                    .with("free_mem", 25_275_826_176u64)
                    .with("seq", sent),
                    "rpc0",
                    "r-0001",
                );
                sent += 1;
            }
        }
        loop {
            let s = redis.status(None);
            if s.published + s.dropped + s.failed >= base + a.events {
                break;
            }
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("the publisher did not finish within 300 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let s = redis.status(None);
        println!(
            "{}",
            json!({"published": s.published - base, "dropped": s.dropped, "failed": s.failed, "secs": secs})
        );
        anyhow::Ok(())
    })
}

/// A crowd of simulated nodes (hidden mode): corral's own bus and Redis publisher per
/// node, with its registration, in one process.
#[derive(Args, Debug)]
pub struct FleetNodesArgs {
    #[arg(long)]
    redis_url: String,
    #[arg(long)]
    nodes: usize,
    /// Events per second of each node.
    #[arg(long)]
    rate: u64,
    #[arg(long)]
    seconds: u64,
    /// Write {emitted, published, dropped, failed} here at the end.
    #[arg(long)]
    report: PathBuf,
    /// Wait until this file exists before publishing (the hub's follower is attached).
    #[arg(long)]
    go: PathBuf,
}

pub fn fleet_nodes(a: FleetNodesArgs) -> Result<()> {
    use corral_core::event::{Component, EventKind, EventType, Level};
    use corral_daemon::bus::Bus;
    use corral_daemon::sinks::redis::{Redis, Registration};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (cfg, obs) = library_settings(&a.redis_url);
        let mut nodes = Vec::new();
        for i in 0..a.nodes {
            let name = format!("sim-{i:03}");
            let bus = Bus::new(name.clone(), &obs);
            let (redis, sink) = Redis::new(cfg.clone(), None, &bus);
            bus.register(sink);
            let reg = redis.register_node(Registration {
                node: name.clone(),
                api: "http://127.0.0.1:0".into(),
                interval: Duration::from_secs(2),
                tasks: Arc::new(Vec::<corral_client::wire::NodeTask>::new),
            });
            nodes.push((bus, redis, reg));
        }
        let t0 = Instant::now();
        while !nodes.iter().all(|(_, r, _)| r.status(None).connected) {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the simulated nodes did not all connect within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("ready");
        while !a.go.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let per = a.rate * a.seconds;
        let period = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
        let mut tickers = Vec::new();
        for (i, (bus, _, _)) in nodes.iter().enumerate() {
            let bus = bus.clone();
            // Spread the nodes over one period, as independent machines would be.
            let offset = period.mul_f64(i as f64 / a.nodes.max(1) as f64);
            tickers.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(period);
                for n in 0..per {
                    tick.tick().await;
                    bus.emit(
                        EventKind::new(
                            Component::Coordinator,
                            Level::Info,
                            EventType::Metrics,
                            format!("request {n} done"),
                        )
                        .with("tokens_per_second", 42.5)
                        .with("n_tokens", 128)
                        .with("request", n),
                        "coordinator",
                        "r-0001",
                    );
                }
            }));
        }
        for t in tickers {
            t.await?;
        }
        // Every node's publisher takes what its bus emitted (bounded).
        let emitted = |b: &Bus| b.stats().by_type.values().sum::<u64>();
        let t0 = Instant::now();
        loop {
            let done = nodes.iter().all(|(b, r, _)| {
                let s = r.status(None);
                s.published + s.dropped + s.failed == emitted(b)
            });
            if done || t0.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut e, mut p, mut d, mut f) = (0, 0, 0, 0);
        for (b, r, _) in &nodes {
            let s = r.status(None);
            e += emitted(b);
            p += s.published;
            d += s.dropped;
            f += s.failed;
        }
        std::fs::write(
            &a.report,
            json!({"emitted": e, "published": p, "dropped": d, "failed": f}).to_string(),
        )?;
        for (_, _, reg) in nodes {
            reg.leave().await;
        }
        anyhow::Ok(())
    })
}

/// The `--fleet` part.
pub fn fleet_part(ctx: &Ctx, corral: &Path) -> Result<Vec<Row>> {
    let a = &ctx.a;
    let r = start_redis(ctx, "redis-fleet")?;
    let hub = start_daemon_with(
        ctx,
        corral,
        "hub-home",
        64,
        &publish_env(&r, false),
        &["--hub", "--node", "hub", "--node-heartbeat", "2s"],
    )?;
    eprintln!(
        "corral-bench: fleet: hub at {}, redis on port {}",
        hub.url, r.port
    );
    ctx.rt.block_on(async {
        let t0 = Instant::now();
        while get_json(ctx, &hub, "/nodes").await?["connected"] != true {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the hub did not connect to Redis within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })?;
    let go = ctx.work.join("fleet-go");
    let report = ctx.work.join("fleet-report.json");
    let nodes = Command::new(&ctx.exe)
        .arg("fleet-nodes")
        .args(["--redis-url", &r.url()])
        .args(["--nodes", &a.fleet_nodes.to_string()])
        .args(["--rate", &a.fleet_rate.to_string()])
        .args(["--seconds", &a.fleet_seconds.to_string()])
        .arg("--report")
        .arg(&report)
        .arg("--go")
        .arg(&go)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting the simulated nodes")?;
    let mut nodes = KillOnDrop(Some(nodes));
    let mut line = String::new();
    let out = nodes.0.as_mut().and_then(|p| p.stdout.take());
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(out.context("nodes stdout")?),
        &mut line,
    )?;
    if line.trim() != "ready" {
        bail!("the simulated nodes did not start: {line:?}");
    }
    let hub_pid = hub.proc.id();
    let received0 = ctx.rt.block_on(get_json(ctx, &hub, "/nodes"))?["events_received"]
        .as_u64()
        .unwrap_or(0);
    let expected = a.fleet_nodes as u64 * a.fleet_rate * a.fleet_seconds;
    let follow = format!("{}/api/v1/events?follow=true&since=0", hub.url);
    let (lat, rss_peak, cpu, window, hub_answer) = ctx.rt.block_on(async {
        // A viewer of the hub's merged timeline, NDJSON, attached before the first event.
        let resp = ctx.http.get(&follow).send().await?;
        if !resp.status().is_success() {
            bail!("following the hub's events: {}", resp.status());
        }
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut lat: Vec<f64> = Vec::with_capacity(expected as usize);
        let cpu0 = proc_cpu(hub_pid);
        let t0 = Instant::now();
        std::fs::write(&go, b"go")?;
        let mut rss_peak = 0u64;
        let mut sample = tokio::time::interval(Duration::from_secs(1));
        let limit = Duration::from_secs(a.fleet_seconds + a.timeout.min(120));
        let mut nodes_done: Option<Instant> = None;
        loop {
            tokio::select! {
                chunk = body.next() => {
                    let Some(chunk) = chunk else { bail!("the hub's event stream ended") };
                    let chunk = chunk?;
                    let now = super::real_s();
                    buf.extend_from_slice(&chunk);
                    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                            if v["node"].as_str().is_some_and(|n| n.starts_with("sim-"))
                                && v["event_type"] == "metrics"
                            {
                                lat.push(now - v["timestamp"].as_f64().unwrap_or(now));
                            }
                        }
                    }
                }
                _ = sample.tick() => {
                    rss_peak = rss_peak.max(rss_threads(hub_pid).0);
                    check_interrupted()?;
                    if nodes_done.is_none() {
                        if let Some(Ok(Some(st))) = nodes.0.as_mut().map(|p| p.try_wait()) {
                            if !st.success() {
                                bail!("the simulated nodes failed ({st})");
                            }
                            nodes_done = Some(Instant::now());
                        }
                    }
                    if let Some(t) = nodes_done {
                        let ans = get_json(ctx, &hub, "/nodes").await?;
                        let got = ans["events_received"].as_u64().unwrap_or(0) - received0;
                        // The viewer may miss some (a follower that fell behind the
                        // hub's live stream), so it gets a short grace, not a wait.
                        let seen = lat.len() as u64 >= expected
                            || t.elapsed() > Duration::from_secs(2);
                        if got >= expected && seen || t.elapsed() > Duration::from_secs(10)
                        {
                            let cpu = proc_cpu(hub_pid) - cpu0;
                            return anyhow::Ok((lat, rss_peak, cpu, t0.elapsed(), ans));
                        }
                    }
                    if t0.elapsed() > limit {
                        bail!("the fleet run did not end within {limit:?}");
                    }
                }
            }
        }
    })?;
    if let Some(mut p) = nodes.0.take() {
        let _ = p.wait();
    }
    let rep: Value = serde_json::from_slice(&std::fs::read(&report).context("the nodes' report")?)?;
    let n = |k: &str| rep[k].as_u64().unwrap_or(0);
    let (emitted, published, dropped, failed) =
        (n("emitted"), n("published"), n("dropped"), n("failed"));
    let received = hub_answer["events_received"].as_u64().unwrap_or(0) - received0;
    let malformed = hub_answer["events_malformed"].as_u64().unwrap_or(0);
    let up = hub_answer["nodes"].as_array().map_or(0, |v| {
        v.iter()
            .filter(|x| x["node"].as_str().is_some_and(|s| s.starts_with("sim-")))
            .count()
    });
    let mut sorted = lat.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    };
    let (p50, p99, max) = (
        pct(0.5),
        pct(0.99),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    let secs = window.as_secs_f64();
    let mut rows = vec![Row::info(
        "fleet: nodes x events/s x seconds through one Redis to one hub",
        format!(
            "{} x {} x {} s = {expected} events; {up} nodes registered on the hub",
            a.fleet_nodes, a.fleet_rate, a.fleet_seconds
        ),
    )];
    // A pipeline whose reply did not come in time counts as failed on its node, though
    // Redis may have run it: the hub may have those too.
    let nodes_exact = published + dropped + failed == emitted;
    let hub_exact = published <= received && received <= published + failed;
    rows.push(Row::target(
        "fleet: every event accounted for (received by the hub + counted drops = emitted)",
        format!(
            "nodes: {emitted} emitted = {published} published + {dropped} dropped + {failed} failed \
             (no reply in time); the hub received {received} ({malformed} malformed)"
        ),
        "equal (failed: received or not)",
        nodes_exact && hub_exact,
    ));
    rows.push(Row::target(
        "fleet: latency node -> Redis -> hub -> viewer, p99",
        format!(
            "**{:.1} ms** (p50 {:.1} ms, max {:.1} ms; {} of the events seen by the viewer)",
            p99 * 1e3,
            p50 * 1e3,
            max * 1e3,
            lat.len()
        ),
        "< 1 s",
        p99 < 1.0 && !lat.is_empty(),
    ));
    rows.push(Row::info(
        "fleet: the hub's CPU and memory",
        format!(
            "CPU {cpu:.1} s in {secs:.0} s = **{:.0}%** of a core; RSS **{:.0} MiB** (largest, sampled each second)",
            cpu / secs * 100.0,
            mib(rss_peak as f64 * 1024.0)
        ),
    ));
    drop(hub);
    Ok(rows)
}
