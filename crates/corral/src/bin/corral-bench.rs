//! corral-bench: the project's benchmark, in one run.
//!
//! It drives a real daemon (`corral serve`, a subprocess) through its HTTP API, with the
//! daemon's home and every other output file on the same tmpfs, and measures three parts
//! (each can be run alone: `--capture`, `--peers`, `--idle`; the default run does all):
//!
//! 1. `--capture` (issue 2): capture throughput of a child writing fixed-size lines
//!    block-buffered as fast as it can, through corral versus the same child piped to a file
//!    (`child | cat > file`), as a ratio, with 0, 10 and 100 followers attached over
//!    loopback; that every follower received every record (count, dense seq 1..N, the end
//!    mark), and the followers' aggregate bytes/s; latency from a line-buffered child's
//!    write to a loopback follower's receipt.
//! 2. `--peers`: the same block-buffered child (10,000,000 lines) through the plain pipe,
//!    corral, supervisord and pm2, interleaved, each to a file on the tmpfs: time from the
//!    child's start to the last byte in the file, and whether the file is byte-identical to
//!    what the child wrote (the child's output is deterministic, so the bench regenerates it
//!    and compares).
//! 3. `--idle`: 1,000 tasks that have each printed 1,000 lines and sleep, with one idle
//!    follower each; the daemon's RSS, threads and CPU over a quiet minute.
//! 4. `--redis` and 5. `--fleet` (issue 10): the Redis publisher against redis-benchmark
//!    and a plain client, and simulated nodes through one Redis to a hub (`redis_parts`,
//!    in `corral-bench/redis.rs`).
//!
//! The child and the followers are hidden modes of this binary (`corral-bench child`,
//! `corral-bench followers`), so that the followers run in another process than the
//! daemon, as real viewers would.
//!
//! Method, so that the figures mean what they say:
//! - The child waits for a "go" file before it writes, so that the followers are attached
//!   (each has received the run's first record) before the first line exists. It records
//!   its start time (CLOCK_REALTIME) at go and writes it to a report file at the end.
//! - Capture time through corral: from the child's start to the `ts` of the child's last
//!   record, which the capture thread stamps when it frames the pipe's last bytes (only that
//!   one batch's file write comes after). The run's `ended_at` is printed beside it: it
//!   also counts the supervisor noticing the exit and its bookkeeping, which waits for a
//!   turn on a runtime busy with followers. Baseline time: from the child's start to the
//!   moment `sh -c 'child | cat > file'` has exited (cat wrote everything). Both include
//!   draining what the pipe still held when the child finished writing.
//! - Followers' aggregate rate: all bytes received by the group, divided by the time from
//!   the child's start to the last follower's last byte (followers that fell behind the
//!   ring catch up from the files, so this includes catch-up after the child ended).
//! - Latency: the child writes each line with its own write(2) (what line buffering does)
//!   and embeds CLOCK_MONOTONIC in nanoseconds; the follower subtracts it from
//!   CLOCK_MONOTONIC when the chunk holding the line arrives. Both processes are on the same
//!   machine, so the clock is shared.
//! - Peers: one time for every tool, from the child's start to the moment the bench sees
//!   the tool's log file hold all the bytes the child wrote. For corral, supervisord and
//!   pm2 the bench polls the file's size with a 1 ms sleep (a measuring loop of the bench,
//!   not something corral does); for the pipe it is `sh` exiting, as above. The corral
//!   file is the run's `.log` (exactly the bytes the process wrote).
//! - Idle: RSS and threads from /proc/PID/status, CPU from utime + stime in /proc/PID/stat
//!   over the window, divided by the window's length, and beside it the scheduler's exact
//!   run time summed over the threads (utime + stime are sampled at clock ticks and miss
//!   threads that a timer wakes just after a tick); the window starts once every task has
//!   printed all its lines and every follower has received them.

#[path = "corral-bench/redis.rs"]
mod redis_parts;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "corral-bench",
    about = "Benchmark of corral: capture throughput versus a plain pipe, follower fan-out and \
             latency over loopback, the same capture under supervisord and pm2, and an idle \
             daemon with 1,000 tasks and followers, in one run.",
    long_about = "Benchmark of corral, in one run. Five parts; each can be run alone (--capture,\n\
--peers, --idle, --redis, --fleet, or several); with none of these flags the run does all.\n\
\n\
--capture (issue 2):\n\
  1. capture throughput of a child writing LINE_BYTES-byte lines block-buffered as fast as it\n\
     can, through corral versus the same child piped to a file (`child | cat > file`), as a\n\
     ratio, with 0, 10 and 100 followers (SSE, or NDJSON with --ndjson, over loopback, in\n\
     another process) attached;\n\
  2. that every follower received every record (count, dense seq 1..N, the end mark), and the\n\
     followers' aggregate bytes/s;\n\
  3. latency from a line-buffered child's write to a loopback follower's receipt (p50, p99).\n\
--peers: the same block-buffered child (--peer-lines, 10,000,000 lines) under `child | cat >\n\
  file`, corral, supervisord (PyPI `supervisor`) and pm2 (npm `pm2`), interleaved, --repeat\n\
  times; MiB/s per tool (median), ratios to the pipe and corral's to supervisord, and whether\n\
  each tool's log file is byte-identical to what the child wrote (lines lost otherwise).\n\
  supervisord and pm2 are installed on first use into --venv and --npm-prefix (cached).\n\
--idle: --idle-tasks (1,000) tasks each print --idle-lines (1,000) lines and sleep, one idle\n\
  follower each (another process); then the daemon's RSS, threads and CPU over --idle-seconds\n\
  (60) of quiet.\n\
\n\
Method: the daemon (`corral serve`, a subprocess) and every output file share one tmpfs\n\
(--dir). The child (a hidden mode of this binary) waits for a go file, so followers are attached\n\
before the first line. Capture time = child's start to the `ts` the capture thread gave the\n\
child's last record (the pipe drained); baseline time = child's start to `sh -c 'child | cat >\n\
file'` exiting. Aggregate rate = all bytes the followers received / (child's start to the last\n\
follower's last byte). Latency: each line carries CLOCK_MONOTONIC at its write(2); the follower\n\
subtracts it on receipt. The latency run goes first, on a quiet daemon.\n\
Peers: time = child's start (its own clock) to the last byte in the tool's log file: for the\n\
pipe, `sh` exiting; for corral (the run's .log), supervisord (stdout_logfile, never rotated)\n\
and pm2 (-o file, --merge-logs) the bench polls the file's size with a 1 ms sleep, a measuring\n\
loop of the benchmark only. Each file is then compared byte for byte with the child's output,\n\
regenerated from the same parameters. Targets: corral >= 0.95x the pipe, >= 1.2x supervisord.\n\
Idle: the window starts once every task has printed all its lines and every follower has\n\
received them; RSS (VmRSS) and threads from /proc/PID/status (sampled each second; the\n\
largest is reported), CPU = utime + stime from /proc/PID/stat over the window / its length,\n\
and beside it the scheduler's run time summed over the threads (/proc/PID/task/*/schedstat):\n\
tick-sampled utime + stime never charge a thread that a timer wakes just after a tick and that\n\
sleeps again before the next; the CPU verdict takes the larger of the two.\n\
Targets: RSS <= 200 MiB, <= 16 threads, <= 0.2% of one core. The bench raises its open-files\n\
limit (inherited by the daemon) as the task count needs, and says so if the hard limit is\n\
lower.\n\
--redis: events/s published through a daemon's Redis publisher (an rpc task printing\n\
  --redis-events connection lines, each an event) and through the publisher alone (a library\n\
  in another process), beside `redis-benchmark -P 64 PUBLISH` (the ceiling) and `XADD`, and a\n\
  client sending one synchronous PUBLISH per event; published + dropped + failed = emitted.\n\
--fleet: --fleet-nodes simulated nodes (the daemon's bus, publisher and registration as a\n\
  library, in another process) publish --fleet-rate events/s each for --fleet-seconds through\n\
  one redis-server to a hub (`corral serve --hub`); a viewer follows the hub's events.\n\
  Accounting (hub received vs the nodes' counters), latency node -> viewer (p50, p99), the\n\
  hub's CPU and RSS. Targets: every event accounted for, p99 < 1 s. Both need redis-server\n\
  and redis-benchmark (apt-get install redis-server redis-tools).\n\
Verdicts are reported, never the exit status: it fails only when a run cannot be measured.\n\
\n\
`cargo run --release --bin corral-bench` also builds the daemon; scripts/bench.sh does the same.\n\
Default run: about 7 minutes on 2 CPUs; --quick: under a minute (smaller sizes, fewer tasks,\n\
a 10 s idle window).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// The benchmark's child process (hidden).
    #[command(hide = true)]
    Child(ChildArgs),
    /// A crowd of loopback followers (hidden).
    #[command(hide = true)]
    Followers(FollowerArgs),
    /// An rpc-server's connection lines, as fast as it can (hidden).
    #[command(hide = true)]
    RpcChild(redis_parts::RpcChildArgs),
    /// The daemon's Redis publisher alone, as a library (hidden).
    #[command(hide = true)]
    PublisherAlone(redis_parts::PublisherArgs),
    /// Simulated nodes publishing to Redis like corral (hidden).
    #[command(hide = true)]
    FleetNodes(redis_parts::FleetNodesArgs),
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Run the capture part (throughput versus the pipe, followers, latency).
    #[arg(long)]
    capture: bool,
    /// Run the peers part (pipe, corral, supervisord, pm2 side by side).
    #[arg(long)]
    peers: bool,
    /// Run the idle part (many tasks and followers, a quiet window).
    #[arg(long)]
    idle: bool,
    /// Run the SSH part: a remote file read through a real sshd on loopback (latency of
    /// a new line, transfer while idle).
    #[arg(long)]
    ssh: bool,
    /// Lines of the SSH latency measure.
    #[arg(long, default_value_t = 50)]
    ssh_lines: u64,
    /// Length of the SSH part's idle window, in seconds.
    #[arg(long, default_value_t = 60)]
    ssh_idle_seconds: u64,
    /// Run the Redis publishing part (corral versus redis-benchmark and a plain client).
    #[arg(long)]
    redis: bool,
    /// Run the fleet part (simulated nodes through one Redis to one hub).
    #[arg(long)]
    fleet: bool,
    /// Events the daemon publishes in the Redis part.
    #[arg(long, default_value_t = 500_000)]
    redis_events: u64,
    /// Events of the plain one-PUBLISH-per-event client.
    #[arg(long, default_value_t = 30_000)]
    plain_events: u64,
    /// Requests of `redis-benchmark` for the ceiling.
    #[arg(long, default_value_t = 2_000_000)]
    ceiling_requests: u64,
    /// Simulated nodes of the fleet part.
    #[arg(long, default_value_t = 100)]
    fleet_nodes: usize,
    /// Events per second of each simulated node.
    #[arg(long, default_value_t = 100)]
    fleet_rate: u64,
    /// How long the simulated nodes publish, in seconds.
    #[arg(long, default_value_t = 30)]
    fleet_seconds: u64,
    /// Smaller sizes for a quick look: every size not given on the command line shrinks
    /// (lines 500,000, follower lines 300,000, followers 0,10, latency lines 1,000, peer
    /// lines 1,000,000, idle tasks 200, idle seconds 10).
    #[arg(long)]
    quick: bool,
    /// Lines the child writes in each capture run without followers.
    #[arg(long, default_value_t = 3_000_000)]
    lines: u64,
    /// Lines the child writes in each run with followers (every follower reads all of them).
    #[arg(long, default_value_t = 2_000_000)]
    follower_lines: u64,
    /// Follower counts to measure, comma-separated (0 = capture alone).
    #[arg(long, value_delimiter = ',', default_value = "0,10,100")]
    followers: Vec<usize>,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 120)]
    line_bytes: usize,
    /// The child's output buffer in bytes (one write(2) per full buffer).
    #[arg(long, default_value_t = 64 * 1024)]
    child_buf: usize,
    /// Runs of the baseline and of corral without followers, and of each peer; the median
    /// is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Lines of the latency run (0 skips it).
    #[arg(long, default_value_t = 5000)]
    latency_lines: u64,
    /// Lines per second of the latency run's child.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u64,
    /// Followers read NDJSON instead of SSE (`Accept: text/event-stream`, the default).
    #[arg(long)]
    ndjson: bool,
    /// Lines the child writes in each run of the peers part.
    #[arg(long, default_value_t = 10_000_000)]
    peer_lines: u64,
    /// Peers to run beside the pipe and corral, comma-separated (supervisord, pm2).
    #[arg(long, value_delimiter = ',', default_value = "supervisord,pm2")]
    peer_tools: Vec<String>,
    /// The Python virtual environment holding supervisord (created on first use)
    /// [default: ~/.cache/corral-test/bench-venv].
    #[arg(long)]
    venv: Option<PathBuf>,
    /// The npm prefix holding pm2 (installed on first use)
    /// [default: ~/.cache/corral-test/bench-npm].
    #[arg(long)]
    npm_prefix: Option<PathBuf>,
    /// Never install a missing peer; fail with the command that would.
    #[arg(long)]
    no_install: bool,
    /// Tasks of the idle part.
    #[arg(long, default_value_t = 1000)]
    idle_tasks: usize,
    /// Lines each idle task prints before it sleeps.
    #[arg(long, default_value_t = 1000)]
    idle_lines: u64,
    /// Length of the idle part's quiet window, in seconds.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Task creations in flight at once in the idle part.
    #[arg(long, default_value_t = 8)]
    idle_concurrency: usize,
    /// A tmpfs for the daemon's home and the baseline's file.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// The corral binary [default: `corral` next to this binary].
    #[arg(long)]
    corral: Option<PathBuf>,
    /// Passed to `corral serve --ring-records` (default: the daemon's own default).
    #[arg(long)]
    ring_records: Option<usize>,
    /// Keep the work directory (daemon home, logs) after the run.
    #[arg(long)]
    keep: bool,
    /// Give up on any one run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

impl BenchArgs {
    /// (capture, peers, idle, ssh, redis, fleet): the parts to run; none named means all.
    fn parts(&self) -> (bool, bool, bool, bool, bool, bool) {
        if self.capture || self.peers || self.idle || self.ssh || self.redis || self.fleet {
            (
                self.capture,
                self.peers,
                self.idle,
                self.ssh,
                self.redis,
                self.fleet,
            )
        } else {
            (true, true, true, true, true, true)
        }
    }

    /// `--quick`: shrinks every size the command line left at its default.
    fn apply_quick(&mut self, m: &clap::ArgMatches) {
        let default = |id: &str| m.value_source(id) != Some(clap::parser::ValueSource::CommandLine);
        if default("lines") {
            self.lines = 500_000;
        }
        if default("follower_lines") {
            self.follower_lines = 300_000;
        }
        if default("followers") {
            self.followers = vec![0, 10];
        }
        if default("latency_lines") {
            self.latency_lines = 1000;
        }
        if default("peer_lines") {
            self.peer_lines = 1_000_000;
        }
        if default("idle_tasks") {
            self.idle_tasks = 200;
        }
        if default("idle_seconds") {
            self.idle_seconds = 10;
        }
        if default("ssh_idle_seconds") {
            self.ssh_idle_seconds = 10;
        }
        if default("redis_events") {
            self.redis_events = 100_000;
        }
        if default("plain_events") {
            self.plain_events = 10_000;
        }
        if default("ceiling_requests") {
            self.ceiling_requests = 500_000;
        }
        if default("fleet_seconds") {
            self.fleet_seconds = 10;
        }
    }
}

#[derive(Args, Debug)]
struct ChildArgs {
    #[arg(long)]
    lines: u64,
    #[arg(long, default_value_t = 120)]
    line_bytes: usize,
    #[arg(long, default_value_t = 64 * 1024)]
    buf: usize,
    /// Wait until this file exists before writing.
    #[arg(long)]
    go: Option<PathBuf>,
    /// Write {start_real, end_real, lines, bytes} here at the end.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Line-buffered at this many lines per second, each line stamped with CLOCK_MONOTONIC.
    #[arg(long)]
    rate: Option<u64>,
    /// After writing, sleep this many seconds before exiting (an idle task; one sleep, no
    /// wake-ups, and it ends by itself even if nobody stops it).
    #[arg(long)]
    hold_secs: Option<u64>,
}

#[derive(Args, Debug)]
struct FollowerArgs {
    /// The stream's URL; `{i}` in it becomes the follower's index (0..n).
    #[arg(long)]
    url: String,
    #[arg(long)]
    n: usize,
    #[arg(long)]
    sse: bool,
    /// Measure each line's latency from its embedded CLOCK_MONOTONIC stamp.
    #[arg(long)]
    latency: bool,
    /// A follower counts as ready once it has received this many stdout lines (0: its
    /// first record).
    #[arg(long, default_value_t = 0)]
    expect_lines: u64,
    /// After "ready", keep every stream open until a line (or EOF) on stdin, then close
    /// them and report; a stream that ended before is reported as not held.
    #[arg(long)]
    hold: bool,
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// `Authorization: Bearer $CORRAL_TOKEN`, for every request to the daemons.
fn auth_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(v) = std::env::var("CORRAL_TOKEN")
        .ok()
        .and_then(|t| format!("Bearer {t}").parse().ok())
    {
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    h
}

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if cli.bench.quick {
        cli.bench.apply_quick(&matches);
    }
    if std::env::var_os("CORRAL_TOKEN").is_none() {
        // The daemons this run starts and the follower processes share one API token
        // (the daemon's API is authenticated even on loopback).
        let token = format!(
            "bench-{:x}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        // SAFETY: set before any thread of this process exists.
        std::env::set_var("CORRAL_TOKEN", token);
    }
    let r = match cli.mode {
        Some(Mode::Child(a)) => child(a),
        Some(Mode::Followers(a)) => followers(a),
        Some(Mode::RpcChild(a)) => redis_parts::rpc_child(a),
        Some(Mode::FleetNodes(a)) => redis_parts::fleet_nodes(a),
        Some(Mode::PublisherAlone(a)) => redis_parts::publisher_alone(a),
        None => bench(cli.bench),
    };
    if let Err(e) = r {
        eprintln!("corral-bench: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Clocks

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Seconds since the Unix epoch, the clock of the registry's `started_at`/`ended_at`.
fn real_s() -> f64 {
    clock_ns(libc::CLOCK_REALTIME) as f64 / 1e9
}

// ---------------------------------------------------------------------------------------
// The child

fn child(a: ChildArgs) -> Result<()> {
    if a.line_bytes < 40 {
        bail!("--line-bytes must be at least 40");
    }
    if let Some(go) = &a.go {
        while !go.exists() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let sched0 = schedstat();
    let start_real = real_s();
    // Raw fd 1: Rust's stdout is line-buffered, which would defeat the block buffering.
    let mut out = std::mem::ManuallyDrop::new(unsafe {
        use std::os::fd::FromRawFd;
        // SAFETY: fd 1 is open for the life of the process; ManuallyDrop never closes it.
        std::fs::File::from_raw_fd(1)
    });
    let l = a.line_bytes;
    match a.rate {
        None => {
            let cap = a.buf.max(l);
            let mut buf = Vec::with_capacity(cap);
            let mut lines = Lines::new(l);
            for _ in 0..a.lines {
                let line = lines.next_line();
                if buf.len() + l > cap {
                    out.write_all(&buf)?;
                    buf.clear();
                }
                buf.extend_from_slice(line);
            }
            out.write_all(&buf)?;
        }
        Some(rate) => {
            // "T<20-digit monotonic ns> <10-digit n> xxxx…\n", one write(2) per line.
            let mut line = vec![b'x'; l];
            line[l - 1] = b'\n';
            let period = 1_000_000_000 / rate.max(1);
            let t0 = mono_ns();
            for n in 1..=a.lines {
                let due = t0 + n * period;
                let ts = libc::timespec {
                    tv_sec: (due / 1_000_000_000) as libc::time_t,
                    tv_nsec: (due % 1_000_000_000) as libc::c_long,
                };
                // SAFETY: an absolute sleep on the monotonic clock with a valid timespec.
                unsafe {
                    libc::clock_nanosleep(
                        libc::CLOCK_MONOTONIC,
                        libc::TIMER_ABSTIME,
                        &ts,
                        std::ptr::null_mut(),
                    )
                };
                let head = format!("T{:020} {:010} ", mono_ns(), n);
                line[..head.len()].copy_from_slice(head.as_bytes());
                out.write_all(&line)?;
            }
        }
    }
    let end_real = real_s();
    let sched1 = schedstat();
    if let Some(r) = &a.report {
        // Where the child's writing time went: on a CPU, waiting for one, or blocked
        // (a full pipe: its reader was not draining it).
        let (cpu, wait) = (
            (sched1.0 - sched0.0) as f64 / 1e9,
            (sched1.1 - sched0.1) as f64 / 1e9,
        );
        let v = json!({"start_real": start_real, "end_real": end_real, "lines": a.lines,
                       "bytes": a.lines * l as u64, "cpu_s": cpu, "runqueue_s": wait,
                       "blocked_s": (end_real - start_real - cpu - wait).max(0.0)});
        // Written whole then renamed, so that a reader never sees half of it.
        let tmp = r.with_extension("tmp");
        std::fs::write(&tmp, v.to_string())?;
        std::fs::rename(&tmp, r)?;
    }
    if let Some(secs) = a.hold_secs {
        std::thread::sleep(Duration::from_secs(secs));
    }
    Ok(())
}

/// The block-buffered child's lines, "0000000001 xxxx…\n" numbered from 1, each
/// `line_bytes` long with its newline. The number is kept as ASCII and incremented in
/// place, so that making a line costs next to nothing; the bench uses the same generator to
/// regenerate what a child wrote and compare it with a log file.
struct Lines {
    line: Vec<u8>,
}

impl Lines {
    fn new(line_bytes: usize) -> Lines {
        let mut line = vec![b'x'; line_bytes.max(12)];
        let l = line.len();
        line[l - 1] = b'\n';
        line[..10].fill(b'0');
        line[10] = b' ';
        Lines { line }
    }

    fn next_line(&mut self) -> &[u8] {
        let line = &mut self.line;
        let mut i = 9;
        loop {
            if line[i] == b'9' {
                line[i] = b'0';
                if i == 0 {
                    break;
                }
                i -= 1;
            } else {
                line[i] += 1;
                break;
            }
        }
        line
    }
}

/// This thread's time on a CPU and waiting for one, in ns (/proc/thread-self/schedstat).
fn schedstat() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut f = s.split_whitespace().filter_map(|x| x.parse::<u64>().ok());
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------
// The followers

#[derive(Default, Debug, serde::Serialize, serde::Deserialize, Clone)]
struct FollowerStats {
    records: u64,
    stdout_lines: u64,
    last_seq: u64,
    /// Records whose seq was not the previous one plus one.
    seq_errors: u64,
    first_bad: Option<String>,
    gaps: u64,
    got_end: bool,
    bytes: u64,
    last_byte_real: f64,
    error: Option<String>,
    /// `--hold`: the stream was still open when the bench asked to close it.
    #[serde(default)]
    held: bool,
    #[serde(skip)]
    latencies_ns: Vec<u64>,
}

/// Parses the records of an NDJSON or SSE stream, one line at a time, cheaply: only the
/// `"seq":` prefix, the stream tag and (for latency) the line's leading stamp.
struct Checker {
    stats: FollowerStats,
    carry: Vec<u8>,
    latency: bool,
    now_mono: u64,
    stream_finder: memchr::memmem::Finder<'static>,
    line_finder: memchr::memmem::Finder<'static>,
    /// SSE framing (no length guessing).
    sse: bool,
    /// Length of the last line, newline included (0: none yet).
    guess: usize,
    /// Where `"stream":"` was in the last record, counted from the end of its seq.
    stream_at: usize,
}

/// The seq of a record line (`{"seq":N,…`), if it is one.
fn parse_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let mut seq = 0u64;
    let mut any = false;
    for &b in rest.iter().take_while(|b| b.is_ascii_digit()) {
        seq = seq * 10 + (b - b'0') as u64;
        any = true;
    }
    any.then_some(seq)
}

impl Checker {
    fn new(latency: bool, sse: bool) -> Checker {
        Checker {
            sse,
            guess: 0,
            stream_at: 0,
            stats: FollowerStats::default(),
            carry: Vec::new(),
            latency,
            now_mono: 0,
            stream_finder: memchr::memmem::Finder::new(b"\"stream\":\""),
            line_finder: memchr::memmem::Finder::new(b"\"line\":\"T"),
        }
    }

    fn chunk(&mut self, data: &[u8]) {
        self.stats.bytes += data.len() as u64;
        if self.latency {
            self.now_mono = mono_ns();
        }
        let mut rest = data;
        if !self.carry.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let mut line = std::mem::take(&mut self.carry);
                    line.extend_from_slice(&rest[..i]);
                    self.line(&line);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.carry.extend_from_slice(rest);
                    return;
                }
            }
        }
        let mut pos = 0;
        while pos < rest.len() {
            let end = match self.guess_end(rest, pos) {
                Some(end) => end,
                None => match memchr::memchr(b'\n', &rest[pos..]) {
                    Some(i) => pos + i,
                    None => break,
                },
            };
            self.line(&rest[pos..end]);
            self.guess = end + 1 - pos;
            pos = end + 1;
        }
        self.carry.extend_from_slice(&rest[pos..]);
    }

    /// NDJSON records of a run mostly have the length of the one before, so instead of
    /// scanning every byte for the newline, try that length first. The guess is taken only
    /// if it ends on a newline and the next line is the record with the next seq: two
    /// records cannot hide in the guessed line, since the seq after it would have jumped
    /// (only a heartbeat line could, and it carries nothing to check).
    fn guess_end(&self, buf: &[u8], pos: usize) -> Option<usize> {
        if self.sse || self.guess == 0 {
            return None;
        }
        let end = pos + self.guess - 1;
        if buf.get(end) != Some(&b'\n') {
            return None;
        }
        let this = parse_seq(&buf[pos..end])?;
        (parse_seq(&buf[end + 1..])? == this + 1).then_some(end)
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_prefix(b"data: ").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"{\"seq\":") {
            let mut seq = 0u64;
            let mut n = 0;
            for &b in rest.iter().take_while(|b| b.is_ascii_digit()) {
                seq = seq * 10 + (b - b'0') as u64;
                n += 1;
            }
            let s = &mut self.stats;
            s.records += 1;
            if seq != s.last_seq + 1 {
                s.seq_errors += 1;
                if s.first_bad.is_none() {
                    s.first_bad = Some(format!("seq {seq} after {}", s.last_seq));
                }
            }
            s.last_seq = seq;
            let after = &rest[n..];
            const STREAM: &[u8] = b"\"stream\":\"";
            let at = match after.get(self.stream_at..) {
                Some(t) if t.starts_with(STREAM) => Some(self.stream_at),
                _ => self.stream_finder.find(after),
            };
            if let Some(i) = at {
                self.stream_at = i;
                let tag = &after[i + STREAM.len()..];
                if tag.starts_with(b"stdout") {
                    self.stats.stdout_lines += 1;
                    if self.latency {
                        let tail = &tag[6..];
                        if let Some(j) = self.line_finder.find(tail) {
                            let digits = &tail[j + 9..];
                            let sent = digits
                                .iter()
                                .take(20)
                                .fold(0u64, |acc, &b| acc * 10 + (b.wrapping_sub(b'0')) as u64);
                            self.stats
                                .latencies_ns
                                .push(self.now_mono.saturating_sub(sent));
                        }
                    }
                }
            }
        } else if line.starts_with(b"{\"end\"") {
            self.stats.got_end = true;
        } else if line.starts_with(b"{\"gap\"") {
            self.stats.gaps += 1;
        }
        // Heartbeats, SSE `id:`/`event:` lines and blank lines carry nothing to check.
    }
}

fn followers(a: FollowerArgs) -> Result<()> {
    // A single (latency) follower gets a runtime on its own thread: no hand-off between
    // threads in the measured path.
    let rt = if a.n == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .default_headers(auth_headers())
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true)
            .build()?;
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let deadline = Duration::from_secs(a.timeout);
        // Held streams close when this turns true (the sender lives until every task is done).
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..a.n {
            let (client, ready, failed) = (client.clone(), ready.clone(), failed.clone());
            let url = a.url.replace("{i}", &i.to_string());
            let (sse, latency, hold, expect) = (a.sse, a.latency, a.hold, a.expect_lines);
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut ck = Checker::new(latency, sse);
                let r = tokio::time::timeout(deadline, async {
                    let mut req = client.get(&url);
                    if sse {
                        req = req.header("accept", "text/event-stream");
                    }
                    let resp = req.send().await?.error_for_status()?;
                    let mut body = resp.bytes_stream();
                    let mut attached = false;
                    loop {
                        let next = if hold {
                            tokio::select! {
                                c = body.next() => c,
                                r = stop.wait_for(|s| *s) => {
                                    ck.stats.held = r.is_ok();
                                    break;
                                }
                            }
                        } else {
                            body.next().await
                        };
                        let Some(chunk) = next else { break };
                        let chunk = chunk?;
                        ck.chunk(&chunk);
                        ck.stats.last_byte_real = real_s();
                        let done = if expect > 0 {
                            ck.stats.stdout_lines >= expect
                        } else {
                            ck.stats.records > 0
                        };
                        if !attached && done {
                            attached = true;
                            ready.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    anyhow::Ok(())
                })
                .await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => ck.stats.error = Some(format!("{e:#}")),
                    Err(_) => ck.stats.error = Some(format!("timed out after {deadline:?}")),
                }
                if ck.stats.error.is_some() || ck.stats.records == 0 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                ck.stats
            }));
        }
        // Tell the bench when every follower is attached (has its first record, or the
        // lines it expects).
        let t0 = Instant::now();
        let is_ready = loop {
            if ready.load(Ordering::SeqCst) == a.n {
                println!("ready");
                break true;
            }
            if failed.load(Ordering::SeqCst) > 0 || t0.elapsed() > deadline {
                println!(
                    "not-ready ({} of {} ready, {} failed)",
                    ready.load(Ordering::SeqCst),
                    a.n,
                    failed.load(Ordering::SeqCst)
                );
                break false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        std::io::stdout().flush()?;
        if a.hold {
            if is_ready {
                tokio::task::spawn_blocking(|| {
                    let mut s = String::new();
                    let _ = std::io::stdin().read_line(&mut s);
                })
                .await?;
            }
            let _ = stop_tx.send(true);
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await?);
        }
        drop(stop_tx);
        let mut lat: Vec<u64> = all
            .iter()
            .flat_map(|s| s.latencies_ns.iter().copied())
            .collect();
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1]
            }
        };
        let out = json!({
            "followers": all,
            "latency": {"n": lat.len(), "p50_ns": pct(0.50), "p99_ns": pct(0.99),
                        "max_ns": lat.last().copied().unwrap_or(0)},
        });
        println!("result {out}");
        std::io::stdout().flush()?;
        anyhow::Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The benchmark driver

struct Daemon {
    proc: Child,
    url: String,
    /// How long to wait for it to stop its tasks and exit after SIGTERM, before SIGKILL.
    stop_wait: Duration,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child we started.
        unsafe { libc::kill(self.proc.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < self.stop_wait {
            if let Ok(Some(_)) = self.proc.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

struct Ctx {
    a: BenchArgs,
    exe: PathBuf,
    work: PathBuf,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Default)]
struct CaptureRun {
    secs: f64,
    bytes: u64,
    /// The child's own time writing (until its last write returned).
    child_secs: f64,
    /// Until the run's `ended_at` in the registry (the supervisor's bookkeeping included).
    ended_secs: f64,
    /// Of the child's writing time: seconds blocked (a full pipe), waiting for a CPU.
    child_blocked: f64,
    child_runqueue: f64,
}

impl CaptureRun {
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.secs
    }
}

#[derive(Debug, Default)]
struct FollowRun {
    capture: CaptureRun,
    lines: u64,
    last_seq: u64,
    stats: Vec<FollowerStats>,
    agg_bytes: u64,
    agg_secs: f64,
    /// Followers that did not get every record.
    bad: Vec<String>,
    latency: Option<(u64, u64, u64, u64)>,
    /// The child's start (CLOCK_REALTIME seconds).
    start: f64,
    /// CPU seconds (user + system) of the daemon during the run, and of the followers.
    daemon_cpu: f64,
    followers_cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

fn mib(b: f64) -> f64 {
    b / (1u64 << 20) as f64
}

fn bench(a: BenchArgs) -> Result<()> {
    catch_signals();
    let exe = std::env::current_exe().context("locating corral-bench itself")?;
    let corral = a
        .corral
        .clone()
        .unwrap_or_else(|| exe.with_file_name("corral"));
    if cfg!(debug_assertions) {
        eprintln!(
            "corral-bench: WARNING: this is a debug build; run it with `cargo run --release`"
        );
    }
    // Run by `cargo run`: make sure the daemon is built from the same sources, with the
    // same profile (cargo builds only the binary it runs).
    if let (None, Ok(cargo), Some(dir)) = (
        &a.corral,
        std::env::var("CARGO"),
        option_env!("CARGO_MANIFEST_DIR"),
    ) {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "corral", "--manifest-path"])
            .arg(Path::new(dir).join("Cargo.toml"));
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd
            .output()
            .context("running cargo build for the corral binary")?;
        if !out.status.success() {
            bail!(
                "building the corral binary failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if !corral.is_file() {
        bail!(
            "no corral binary at {}: build it first (`cargo build --release`, or run scripts/bench.sh), \
             or pass --corral PATH",
            corral.display()
        );
    }
    let mut base = a.dir.clone();
    let tmpfs = is_tmpfs(&base);
    if !base.is_dir() || !tmpfs {
        let fallback = std::env::temp_dir();
        eprintln!(
            "corral-bench: WARNING: {} is {}; falling back to {} (disk cost may hide CPU cost)",
            base.display(),
            if base.is_dir() {
                "not a tmpfs"
            } else {
                "missing"
            },
            fallback.display()
        );
        if !base.is_dir() {
            base = fallback;
        }
    }
    let work = base.join(format!("corral-bench-{}", std::process::id()));
    std::fs::create_dir_all(work.join("home"))
        .with_context(|| format!("creating {}", work.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .default_headers(auth_headers())
        .build()?;
    let ctx = Ctx {
        a: a.clone(),
        exe,
        work: work.clone(),
        rt,
        http,
    };
    let r = run_all(&ctx, &corral, tmpfs);
    if !a.keep {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("corral-bench: kept {}", work.display());
    }
    r
}

fn is_tmpfs(p: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // The longest mount point that contains `p` decides.
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mp, fs) = (f.next()?, f.next()?, f.next()?);
            p.starts_with(mp).then(|| (mp.len(), fs == "tmpfs"))
        })
        .max_by_key(|(len, _)| *len)
        .is_some_and(|(_, t)| t)
}

/// Starts `corral serve` on a free loopback port with its home at `work/<home>`.
fn start_daemon(ctx: &Ctx, corral: &Path, home: &str, max_mb: u64) -> Result<Daemon> {
    start_daemon_with(ctx, corral, home, max_mb, &[], &[])
}

/// [`start_daemon`] with more environment and more `serve` arguments.
fn start_daemon_with(
    ctx: &Ctx,
    corral: &Path,
    home: &str,
    max_mb: u64,
    env: &[(String, String)],
    args: &[&str],
) -> Result<Daemon> {
    let mut cmd = Command::new(corral);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.arg("serve")
        .args(args)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--home")
        .arg(ctx.work.join(home))
        .arg("--max-log-mb")
        .arg(max_mb.to_string());
    if let Some(r) = ctx.a.ring_records {
        cmd.arg("--ring-records").arg(r.to_string());
    }
    let err_path = ctx.work.join(format!("{home}.daemon.stderr"));
    let err = std::fs::File::create(&err_path)?;
    let mut proc = cmd
        .stdout(Stdio::piped())
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} serve", corral.display()))?;
    let out = proc.stdout.take().context("daemon stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("corral listening on ")
        .map(str::to_string);
    let daemon = Daemon {
        proc,
        url: url.clone().unwrap_or_default(),
        stop_wait: Duration::from_secs(10),
    };
    if url.is_none() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!("the daemon did not start: {line:?} {err}");
    }
    Ok(daemon)
}

fn child_cmd(
    ctx: &Ctx,
    lines: u64,
    go: Option<&Path>,
    report: &Path,
    rate: Option<u64>,
) -> Vec<String> {
    let mut v = vec![
        ctx.exe.display().to_string(),
        "child".into(),
        "--lines".into(),
        lines.to_string(),
        "--line-bytes".into(),
        ctx.a.line_bytes.to_string(),
        "--buf".into(),
        ctx.a.child_buf.to_string(),
        "--report".into(),
        report.display().to_string(),
    ];
    if let Some(go) = go {
        v.push("--go".into());
        v.push(go.display().to_string());
    }
    if let Some(r) = rate {
        v.push("--rate".into());
        v.push(r.to_string());
    }
    v
}

fn read_report(p: &Path) -> Result<Value> {
    let s = std::fs::read_to_string(p)
        .with_context(|| format!("reading the child's report {}", p.display()))?;
    Ok(serde_json::from_str(&s)?)
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// `child | cat > file` on the same tmpfs.
fn baseline(ctx: &Ctx, i: usize) -> Result<CaptureRun> {
    let (run, out) = pipe_run(ctx, &format!("baseline-{i}"), ctx.a.lines)?;
    let _ = std::fs::remove_file(&out);
    if run.bytes != ctx.a.lines * ctx.a.line_bytes as u64 {
        bail!(
            "baseline file has {} bytes, expected {}",
            run.bytes,
            ctx.a.lines * ctx.a.line_bytes as u64
        );
    }
    Ok(run)
}

/// `sh -c 'child | cat > file'` with the file at `work/<name>.out`, which is kept.
fn pipe_run(ctx: &Ctx, name: &str, lines: u64) -> Result<(CaptureRun, PathBuf)> {
    let out = ctx.work.join(format!("{name}.out"));
    let report = ctx.work.join(format!("{name}.json"));
    let argv = child_cmd(ctx, lines, None, &report, None);
    let script = format!("{} | cat > \"$0\"", shell_quote(&argv));
    let st = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(&out)
        .status()?;
    let end = real_s();
    if !st.success() {
        bail!("the pipeline {name} failed: {st}");
    }
    let r = read_report(&report)?;
    let bytes = std::fs::metadata(&out)?.len();
    let run = CaptureRun {
        secs: end - f(&r, "start_real"),
        bytes,
        child_secs: f(&r, "end_real") - f(&r, "start_real"),
        child_blocked: f(&r, "blocked_s"),
        child_runqueue: f(&r, "runqueue_s"),
        ended_secs: end - f(&r, "start_real"),
    };
    Ok((run, out))
}

fn shell_quote(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One run of the child through corral with `n` followers attached.
fn corral_run(
    ctx: &Ctx,
    d: &Daemon,
    name: &str,
    lines: u64,
    n: usize,
    rate: Option<u64>,
) -> Result<FollowRun> {
    let go = ctx.work.join(format!("go-{name}"));
    let report = ctx.work.join(format!("report-{name}.json"));
    let argv = child_cmd(ctx, lines, Some(&go), &report, rate);
    let deadline = Duration::from_secs(ctx.a.timeout);
    ctx.rt.block_on(async {
        let r = ctx
            .http
            .post(format!("{}/api/v1/tasks", d.url))
            .json(&json!({"name": name, "command": argv}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "starting task {name}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        anyhow::Ok(())
    })?;
    let mut fol = None;
    if n > 0 {
        let url = format!("{}/api/v1/tasks/{name}/logs?since=0&follow=true", d.url);
        let mut cmd = Command::new(&ctx.exe);
        cmd.args(["followers", "--url", &url, "--n", &n.to_string()])
            .args(["--timeout", &ctx.a.timeout.to_string()]);
        if !ctx.a.ndjson {
            cmd.arg("--sse");
        }
        if rate.is_some() {
            cmd.arg("--latency");
        }
        let mut p = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn()?;
        let mut out = BufReader::new(p.stdout.take().context("followers stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = p.kill();
            bail!("the followers did not attach: {line:?}");
        }
        fol = Some((p, out));
    }
    let cpu0 = proc_cpu(d.proc.id());
    std::fs::write(&go, b"go")?;
    // Wait for the child's report (no load on the daemon meanwhile), then for the run's end.
    let t0 = Instant::now();
    while !report.exists() {
        if t0.elapsed() > deadline {
            bail!("the child of {name} did not finish within {deadline:?}");
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(2));
    }
    let rep = read_report(&report)?;
    let run = loop {
        let runs: Value = ctx.rt.block_on(async {
            let r = ctx
                .http
                .get(format!("{}/api/v1/runs?task={name}", d.url))
                .send()
                .await?;
            anyhow::Ok(r.json().await?)
        })?;
        let row = runs.get(0).cloned().context("no run in the registry")?;
        if row["status"] != "running" {
            break row;
        }
        if t0.elapsed() > deadline {
            bail!("run of {name} did not end within {deadline:?}");
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    };
    if run["status"] != "succeeded" {
        bail!(
            "run of {name} ended {}: {}",
            run["status"],
            run["error_message"]
        );
    }
    let start = f(&rep, "start_real");
    let bytes = run["bytes"].as_u64().unwrap_or(0);
    // The run's last seq, and when the capture thread appended the child's last line
    // (its `ts`): the moment the pipe was drained, whatever the supervisor did after.
    let (last_seq, last_ts) = ctx.rt.block_on(async {
        let body = ctx
            .http
            .get(format!(
                "{}/api/v1/tasks/{name}/logs?tail=3&follow=false",
                d.url
            ))
            .send()
            .await?
            .text()
            .await?;
        let recs: Vec<Value> = body
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let seq = recs
            .iter()
            .filter_map(|v| v["seq"].as_u64())
            .max()
            .unwrap_or(0);
        let ts = recs
            .iter()
            .filter(|v| v["stream"] == "stdout")
            .filter_map(|v| v["ts"].as_f64())
            .fold(0.0, f64::max);
        anyhow::Ok((seq, ts))
    })?;
    if last_ts == 0.0 {
        bail!("run of {name}: no stdout record among the last three");
    }
    let capture = CaptureRun {
        secs: last_ts - start,
        bytes,
        child_secs: f(&rep, "end_real") - start,
        child_blocked: f(&rep, "blocked_s"),
        child_runqueue: f(&rep, "runqueue_s"),
        ended_secs: f(&run, "ended_at") - start,
    };
    let mut res = FollowRun {
        capture,
        lines: run["lines"].as_u64().unwrap_or(0),
        last_seq,
        ..Default::default()
    };
    if res.lines != lines {
        bail!(
            "run of {name} captured {} lines, the child wrote {lines}",
            res.lines
        );
    }
    if bytes != lines * ctx.a.line_bytes as u64 {
        bail!(
            "run of {name} captured {bytes} bytes, the child wrote {}",
            lines * ctx.a.line_bytes as u64
        );
    }
    if let Some((mut p, mut out)) = fol {
        let mut line = String::new();
        let v: Value = loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                bail!("the followers exited without a result");
            }
            if let Some(j) = line.trim().strip_prefix("result ") {
                break serde_json::from_str(j)?;
            }
        };
        res.followers_cpu = wait_cpu(&mut p);
        res.daemon_cpu = proc_cpu(d.proc.id()) - cpu0;
        let stats: Vec<FollowerStats> = serde_json::from_value(v["followers"].clone())?;
        let last = stats.iter().map(|s| s.last_byte_real).fold(start, f64::max);
        res.agg_bytes = stats.iter().map(|s| s.bytes).sum();
        res.agg_secs = last - start;
        res.start = start;
        for (i, s) in stats.iter().enumerate() {
            let ok = s.error.is_none()
                && s.seq_errors == 0
                && s.gaps == 0
                && s.got_end
                && s.last_seq == last_seq
                && s.records == last_seq
                && s.stdout_lines == lines;
            if !ok {
                res.bad.push(format!(
                    "follower {i}: records {} (want {last_seq}), stdout lines {} (want {lines}), seq errors {} ({}), \
                     gaps {}, end {}, error {}",
                    s.records,
                    s.stdout_lines,
                    s.seq_errors,
                    s.first_bad.as_deref().unwrap_or("-"),
                    s.gaps,
                    s.got_end,
                    s.error.as_deref().unwrap_or("-")
                ));
            }
        }
        res.stats = stats;
        let l = &v["latency"];
        if rate.is_some() {
            res.latency = Some((
                l["n"].as_u64().unwrap_or(0),
                l["p50_ns"].as_u64().unwrap_or(0),
                l["p99_ns"].as_u64().unwrap_or(0),
                l["max_ns"].as_u64().unwrap_or(0),
            ));
        }
    }
    Ok(res)
}

/// Seconds of user + system time of all CPUs since boot (from /proc/stat).
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // user, nice, system (irq and softirq time is not charged to processes either).
    f.iter().take(3).sum::<f64>() / hz
}

/// CPU seconds of this process and of every descendant it has reaped.
fn own_tree_cpu() -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: getrusage fills the zeroed struct we own.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(who, &mut ru) };
            tv(ru.ru_utime) + tv(ru.ru_stime)
        })
        .sum()
}

/// User + system CPU seconds a process has used so far (0 if it cannot be read).
fn proc_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is field 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    // Every field keeps its place (the state letter, and -1 in tpgid, parse as 0 rather
    // than being left out, which would shift utime and stime).
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if f.len() < 13 {
        return 0.0;
    }
    (f[11] + f[12]) / hz
}

/// Waits for a child and returns the CPU seconds it used (user + system).
fn wait_cpu(p: &mut Child) -> f64 {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it in for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(p.id() as i32, &mut status, 0, &mut ru) };
    if r <= 0 {
        let _ = p.wait();
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn run_all(ctx: &Ctx, corral: &Path, tmpfs: bool) -> Result<()> {
    let a = &ctx.a;
    let (capture, peers, idle, ssh, redis, fleet) = a.parts();
    // Peers are found (or installed) before anything is measured: a missing one fails now.
    let tools = if peers { find_peers(ctx)? } else { Vec::new() };
    if redis || fleet {
        redis_parts::need("redis-server")?;
        redis_parts::need("redis-benchmark")?;
    }
    let t_all = Instant::now();
    let (busy0, ours0) = (machine_busy(), own_tree_cpu());
    let mut rows: Vec<Row> = Vec::new();
    if capture || peers {
        // The size cap must not drop anything the followers are asked to receive, nor any
        // of a peers run's lines.
        let mut biggest_lines = 0;
        if capture {
            biggest_lines = a.lines.max(a.follower_lines);
        }
        if peers {
            biggest_lines = biggest_lines.max(a.peer_lines);
        }
        let biggest = biggest_lines * a.line_bytes as u64;
        let max_mb = ((biggest * 2) >> 20) + 64;
        let d = start_daemon(ctx, corral, "home", max_mb)?;
        eprintln!(
            "corral-bench: daemon at {} (home {})",
            d.url,
            ctx.work.join("home").display()
        );
        if capture {
            rows.extend(capture_part(ctx, &d)?);
        }
        if peers {
            rows.extend(peers_part(ctx, &d, &tools)?);
        }
    }
    if idle {
        rows.extend(idle_part(ctx, corral)?);
    }
    if ssh {
        rows.extend(ssh_part(ctx, corral)?);
    }
    if redis {
        rows.extend(redis_parts::publish_part(ctx, corral)?);
    }
    if fleet {
        rows.extend(redis_parts::fleet_part(ctx, corral)?);
    }
    // CPU the rest of the machine used meanwhile: busy time (user + system, all CPUs)
    // minus what this process and everything it started and reaped used (pm2's daemon is
    // not our child: its CPU is counted when it is stopped).
    let others = (machine_busy() - busy0) - (own_tree_cpu() - ours0) - external_cpu();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let share = (others / (t_all.elapsed().as_secs_f64() * cpus)).max(0.0);
    if share > 0.05 {
        eprintln!(
            "corral-bench: WARNING: other processes used {:.0}% of the machine during the run; \
             the figures are lower than on a quiet machine",
            share * 100.0
        );
    }
    let peers_note: Vec<String> = tools
        .iter()
        .map(|t| format!("{} {}", t.name(), t.version))
        .collect();
    print_table(ctx, &rows, tmpfs, t_all.elapsed(), share, &peers_note);
    Ok(())
}

/// The capture part: latency, throughput versus the pipe, follower fan-out.
fn capture_part(ctx: &Ctx, d: &Daemon) -> Result<Vec<Row>> {
    let a = &ctx.a;
    // Latency first, on a quiet daemon and machine (its rows go last in the table).
    let mut latency_rows = Vec::new();
    if a.latency_lines > 0 {
        let res = corral_run(ctx, d, "latency", a.latency_lines, 1, Some(a.latency_rate))?;
        for b in res.bad.iter() {
            eprintln!("corral-bench:   {b}");
        }
        let (n, p50, p99, max) = res.latency.unwrap_or_default();
        let us = |ns: u64| ns as f64 / 1000.0;
        latency_rows.push(Row::target(
            &format!(
                "latency write -> follower, p50 ({} lines/s, {n} lines)",
                a.latency_rate
            ),
            format!("**{:.0} us**", us(p50)),
            "<= 150 us",
            p50 <= 150_000 && n == a.latency_lines && res.bad.is_empty(),
        ));
        latency_rows.push(Row::target(
            "latency write -> follower, p99",
            format!("**{:.0} us** (max {:.0} us)", us(p99), us(max)),
            "<= 1 ms",
            p99 <= 1_000_000 && n == a.latency_lines && res.bad.is_empty(),
        ));
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut base_runs = Vec::new();
    let mut cap0_runs = Vec::new();
    if a.followers.contains(&0) {
        for i in 0..a.repeat.max(1) {
            let b = baseline(ctx, i)?;
            eprintln!(
                "corral-bench: baseline {i}: {:.0} MiB/s ({:.3} s; child blocked {:.3} s, waited for a CPU {:.3} s)",
                mib(b.rate()),
                b.secs,
                b.child_blocked,
                b.child_runqueue
            );
            base_runs.push(b);
            let c = corral_run(ctx, d, &format!("cap0-{i}"), a.lines, 0, None)?;
            eprintln!(
                "corral-bench: corral   {i}: {:.0} MiB/s ({:.3} s; child wrote for {:.3} s, blocked {:.3} s, \
                 waited for a CPU {:.3} s; run ended_at after {:.3} s)",
                mib(c.capture.rate()),
                c.capture.secs,
                c.capture.child_secs,
                c.capture.child_blocked,
                c.capture.child_runqueue,
                c.capture.ended_secs
            );
            cap0_runs.push(c.capture);
        }
    } else {
        // A baseline is still needed for the ratios of the follower runs.
        base_runs.push(baseline(ctx, 0)?);
    }
    let base_rate = median(base_runs.iter().map(CaptureRun::rate).collect());
    let line_rate = |bps: f64| bps / a.line_bytes as f64 / 1e6;
    rows.push(Row::info(
        "baseline: `child \\| cat > file` (tmpfs)",
        format!(
            "{:.0} MiB/s, {:.2} M lines/s (median of {})",
            mib(base_rate),
            line_rate(base_rate),
            base_runs.len()
        ),
    ));
    if !cap0_runs.is_empty() {
        let r = median(cap0_runs.iter().map(CaptureRun::rate).collect());
        let ratio = r / base_rate;
        rows.push(Row::target(
            "capture through corral, 0 followers",
            format!(
                "{:.0} MiB/s, {:.2} M lines/s = **{ratio:.2}x** the pipe (median of {})",
                mib(r),
                line_rate(r),
                cap0_runs.len()
            ),
            ">= 1.0x the pipe",
            ratio >= 1.0,
        ));
    }
    let mut lost_total = 0usize;
    for &n in a.followers.iter().filter(|&&n| n > 0) {
        let name = format!("fan{n}");
        let res = corral_run(ctx, d, &name, a.follower_lines, n, None)?;
        eprintln!(
            "corral-bench: {n} followers: capture {:.0} MiB/s ({:.3} s; child wrote for {:.3} s, blocked {:.3} s, \
             waited for a CPU {:.3} s; run ended_at after {:.3} s); delivered {:.2} GiB in {:.2} s",
            mib(res.capture.rate()),
            res.capture.secs,
            res.capture.child_secs,
            res.capture.child_blocked,
            res.capture.child_runqueue,
            res.capture.ended_secs,
            gib(res.agg_bytes as f64),
            res.agg_secs
        );
        let mut done: Vec<f64> = res
            .stats
            .iter()
            .map(|s| s.last_byte_real - res.start)
            .collect();
        done.sort_by(|a, b| a.total_cmp(b));
        eprintln!(
            "corral-bench:   CPU: daemon {:.2} s, followers {:.2} s, over {:.2} s; followers done after {:.2} s (first), \
             {:.2} s (median), {:.2} s (last)",
            res.daemon_cpu,
            res.followers_cpu,
            res.agg_secs,
            done.first().copied().unwrap_or(0.0),
            done.get(done.len() / 2).copied().unwrap_or(0.0),
            done.last().copied().unwrap_or(0.0),
        );
        for b in res.bad.iter().take(5) {
            eprintln!("corral-bench:   {b}");
        }
        let ratio = res.capture.rate() / base_rate;
        rows.push(Row::info(
            &format!("capture through corral, {n} followers"),
            format!(
                "{:.0} MiB/s, {:.2} M lines/s = {ratio:.2}x the pipe ({} lines)",
                mib(res.capture.rate()),
                line_rate(res.capture.rate()),
                res.lines
            ),
        ));
        let agg = res.agg_bytes as f64 / res.agg_secs;
        rows.push(Row::target(
            &format!("{n} followers: aggregate delivered"),
            format!(
                "**{:.2} GiB/s** ({:.2} GiB in {:.2} s; {:.1} M records/s)",
                gib(agg),
                gib(res.agg_bytes as f64),
                res.agg_secs,
                (res.last_seq * n as u64) as f64 / res.agg_secs / 1e6
            ),
            ">= 1.8 GiB/s",
            agg >= 1.8 * (1u64 << 30) as f64,
        ));
        let complete = n - res.bad.len();
        lost_total += res.bad.len();
        rows.push(Row::target(
            &format!("{n} followers: every record, dense seq 1..{}", res.last_seq),
            format!("{complete}/{n} followers complete"),
            "0 lost",
            res.bad.is_empty(),
        ));
    }
    let _ = lost_total;
    rows.extend(latency_rows);
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Interruption, and CPU used outside our process tree

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// CPU microseconds of processes we started but cannot reap (pm2's daemon).
static EXTERNAL_CPU_US: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP make the bench's waits fail, so that everything it started
/// is stopped on the way out (the `Drop`s) instead of left behind.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn external_cpu() -> f64 {
    EXTERNAL_CPU_US.load(Ordering::SeqCst) as f64 / 1e6
}

/// User + system CPU seconds of a process and of the children it has reaped.
fn proc_cpu_with_children(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    // Every field keeps its place (the state letter, and -1 in tpgid, parse as 0 rather
    // than being left out, which would shift utime and stime).
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if f.len() < 15 {
        return 0.0;
    }
    // utime, stime, cutime, cstime: fields 14 to 17.
    (f[11] + f[12] + f[13] + f[14]) / hz
}

/// Waits for `p` up to `limit`; kills it past that. None: it had to be killed.
fn wait_bounded(p: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = p.try_wait() {
            return Some(st);
        }
        if t0.elapsed() > limit {
            let _ = p.kill();
            let _ = p.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its end within `limit`, its output captured; fails with that output.
fn run_captured(cmd: &mut Command, what: &str, limit: Duration) -> Result<String> {
    let out_path = std::env::temp_dir().join(format!(
        "corral-bench-{}-{}.out",
        std::process::id(),
        mono_ns()
    ));
    let out = std::fs::File::create(&out_path)?;
    let mut p = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let st = wait_bounded(&mut p, limit);
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match st {
        Some(st) if st.success() => Ok(text),
        Some(st) => bail!("{what} failed ({st}):\n{}", text.trim_end()),
        None => bail!(
            "{what} did not finish within {limit:?}:\n{}",
            text.trim_end()
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Log files compared with what the child wrote

/// A log file compared with the block-buffered child's output.
#[derive(Debug, Clone, Default)]
struct Verify {
    size: u64,
    newlines: u64,
    /// The first byte that differs from the child's output (or where one of the two ends
    /// early); None: byte-identical.
    first_diff: Option<u64>,
}

impl Verify {
    fn identical(&self) -> bool {
        self.first_diff.is_none()
    }

    /// Lines missing from the file (counted by newlines; 0 if it has as many or more).
    fn lost(&self, lines: u64) -> u64 {
        lines.saturating_sub(self.newlines)
    }

    fn describe(&self, lines: u64) -> String {
        match self.first_diff {
            None => "identical".into(),
            Some(at) => {
                let extra = self.newlines.saturating_sub(lines);
                format!(
                    "DIFFERS from byte {at} ({} bytes, {} lines lost{})",
                    self.size,
                    self.lost(lines),
                    if extra > 0 {
                        format!(", {extra} lines extra")
                    } else {
                        String::new()
                    }
                )
            }
        }
    }
}

/// Compares `path` with the `lines` lines of `line_bytes` the block-buffered child
/// writes, regenerated with the child's own generator, 1 MiB at a time.
fn verify_file(path: &Path, lines: u64, line_bytes: usize) -> Result<Verify> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut gen = Lines::new(line_bytes);
    let mut left = lines;
    let cap = ((1 << 20) / line_bytes).max(1) * line_bytes;
    let mut want: Vec<u8> = Vec::with_capacity(cap);
    let mut at = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut v = Verify::default();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let got = &buf[..n];
        v.newlines += memchr::memchr_iter(b'\n', got).count() as u64;
        let mut i = 0;
        while v.first_diff.is_none() && i < n {
            if at == want.len() {
                want.clear();
                at = 0;
                while left > 0 && want.len() + line_bytes <= cap {
                    want.extend_from_slice(gen.next_line());
                    left -= 1;
                }
                if want.is_empty() {
                    // The file goes on after the child's last line.
                    v.first_diff = Some(v.size + i as u64);
                    break;
                }
            }
            let k = (n - i).min(want.len() - at);
            if got[i..i + k] != want[at..at + k] {
                let j = got[i..i + k]
                    .iter()
                    .zip(&want[at..at + k])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                v.first_diff = Some(v.size + (i + j) as u64);
            }
            i += k;
            at += k;
        }
        v.size += n as u64;
    }
    if v.first_diff.is_none() && (at < want.len() || left > 0) {
        // The file ends before the child's output does.
        v.first_diff = Some(v.size);
    }
    Ok(v)
}

/// Polls `path`'s size (1 ms sleeps) until it holds `want` bytes, and returns when that was
/// seen (CLOCK_REALTIME seconds) and the size. If the child has finished (its `report`
/// exists) and the file stops growing for 2 s short of `want`, returns the time of its
/// last growth: the tool lost something, which the comparison then reports.
fn wait_for_file(path: &Path, want: u64, report: &Path, limit: Duration) -> Result<(f64, u64)> {
    let t0 = Instant::now();
    let mut last = (real_s(), Instant::now(), 0u64);
    loop {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if size >= want {
            return Ok((real_s(), size));
        }
        if size != last.2 {
            last = (real_s(), Instant::now(), size);
        } else if report.exists() && last.1.elapsed() > Duration::from_secs(2) {
            return Ok((last.0, size));
        }
        if t0.elapsed() > limit {
            bail!(
                "{} holds {size} of {want} bytes after {limit:?}",
                path.display()
            );
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `path` has stopped changing for `quiet` (bounded by `limit`).
fn wait_settled(path: &Path, quiet: Duration, limit: Duration) {
    let t0 = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    while t0.elapsed() < limit {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if size != last.0 {
            last = (size, Instant::now());
        } else if last.1.elapsed() >= quiet {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Peers: supervisord and pm2

#[derive(Debug, Clone, Copy, PartialEq)]
enum PeerKind {
    Supervisord,
    Pm2,
}

#[derive(Debug, Clone)]
struct PeerTool {
    kind: PeerKind,
    /// supervisord, or pm2.
    bin: PathBuf,
    /// supervisorctl (for pm2, the same `pm2`).
    ctl: PathBuf,
    version: String,
}

impl PeerTool {
    fn name(&self) -> &'static str {
        match self.kind {
            PeerKind::Supervisord => "supervisord",
            PeerKind::Pm2 => "pm2",
        }
    }
}

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set: pass --venv and --npm-prefix")?;
    Ok(PathBuf::from(home).join(".cache/corral-test"))
}

/// The peers asked for, installed first if missing (unless --no-install).
fn find_peers(ctx: &Ctx) -> Result<Vec<PeerTool>> {
    let a = &ctx.a;
    let mut tools = Vec::new();
    for t in a
        .peer_tools
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        match t {
            "supervisord" | "supervisor" => tools.push(find_supervisord(ctx)?),
            "pm2" => tools.push(find_pm2(ctx)?),
            _ => bail!("--peer-tools: unknown peer `{t}` (known: supervisord, pm2)"),
        }
    }
    Ok(tools)
}

fn install_limit(ctx: &Ctx) -> Duration {
    Duration::from_secs(ctx.a.timeout.max(60))
}

fn find_supervisord(ctx: &Ctx) -> Result<PeerTool> {
    let venv = match &ctx.a.venv {
        Some(v) => v.clone(),
        None => cache_dir()?.join("bench-venv"),
    };
    let (sd, sc) = (venv.join("bin/supervisord"), venv.join("bin/supervisorctl"));
    let install = format!(
        "python3 -m venv {v} && {v}/bin/pip install supervisor",
        v = venv.display()
    );
    if !sd.is_file() || !sc.is_file() {
        if ctx.a.no_install {
            bail!(
                "supervisord is not installed in {}; install it with\n  {install}\n\
                 or leave it out with --peer-tools pm2",
                venv.display()
            );
        }
        eprintln!("corral-bench: installing supervisord: {install}");
        let r = (|| {
            if !venv.join("bin/python").exists() {
                run_captured(
                    Command::new("python3").args(["-m", "venv"]).arg(&venv),
                    "python3 -m venv",
                    install_limit(ctx),
                )?;
            }
            run_captured(
                Command::new(venv.join("bin/pip")).args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "supervisor",
                ]),
                "pip install supervisor",
                install_limit(ctx),
            )
        })();
        if let Err(e) = r {
            bail!("installing supervisord failed: {e:#}\nInstall it with\n  {install}\nor leave it out with --peer-tools pm2");
        }
    }
    let version = run_captured(
        Command::new(&sd).arg("--version"),
        "supervisord --version",
        Duration::from_secs(30),
    )?
    .trim()
    .to_string();
    Ok(PeerTool {
        kind: PeerKind::Supervisord,
        bin: sd,
        ctl: sc,
        version,
    })
}

fn find_pm2(ctx: &Ctx) -> Result<PeerTool> {
    let prefix = match &ctx.a.npm_prefix {
        Some(p) => p.clone(),
        None => cache_dir()?.join("bench-npm"),
    };
    let pm2 = prefix.join("node_modules/.bin/pm2");
    let install = format!("npm install --prefix {} pm2", prefix.display());
    if !pm2.is_file() {
        if ctx.a.no_install {
            bail!(
                "pm2 is not installed in {}; install it with\n  {install}\n\
                 or leave it out with --peer-tools supervisord",
                prefix.display()
            );
        }
        eprintln!("corral-bench: installing pm2: {install}");
        let r = run_captured(
            Command::new("npm")
                .args(["install", "--prefix"])
                .arg(&prefix)
                .args(["pm2", "--no-audit", "--no-fund", "--loglevel=error"]),
            "npm install pm2",
            install_limit(ctx),
        );
        if let Err(e) = r {
            bail!("installing pm2 failed: {e:#}\nInstall it with\n  {install}\nor leave it out with --peer-tools supervisord");
        }
    }
    let pkg: Value = serde_json::from_str(
        &std::fs::read_to_string(prefix.join("node_modules/pm2/package.json"))
            .context("reading pm2's package.json")?,
    )?;
    let node = run_captured(
        Command::new("node").arg("--version"),
        "node --version",
        Duration::from_secs(30),
    )
    .map(|v| format!(", node {}", v.trim()))
    .unwrap_or_default();
    Ok(PeerTool {
        kind: PeerKind::Pm2,
        bin: pm2.clone(),
        ctl: pm2,
        version: format!("{}{node}", pkg["version"].as_str().unwrap_or("?")),
    })
}

/// One program of a peers run: its name, the child's argv, its stdout and stderr files
/// and the child's report.
struct PeerProgram {
    name: String,
    argv: Vec<String>,
    out: PathBuf,
    err: PathBuf,
    report: PathBuf,
}

/// `supervisord -n -c conf`, our child; SIGTERM (it stops its programs) on drop.
struct Supervisord {
    proc: Child,
    conf: PathBuf,
    ctl: PathBuf,
}

impl Supervisord {
    fn start(tool: &PeerTool, dir: &Path, programs: &[PeerProgram]) -> Result<Supervisord> {
        std::fs::create_dir_all(dir)?;
        // supervisord's config is an INI file with %(name)s expansion.
        let p = |p: &Path| p.display().to_string().replace('%', "%%");
        let mut conf = format!(
            "[unix_http_server]\nfile={sock}\nchmod=0700\n\n\
             [supervisord]\nlogfile={dir}/supervisord.log\nlogfile_maxbytes=0\n\
             pidfile={dir}/supervisord.pid\nchildlogdir={dir}\nnodaemon=true\n\
             loglevel=warn\n\n\
             [rpcinterface:supervisor]\n\
             supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{sock}\n",
            sock = p(&dir.join("supervisor.sock")),
            dir = p(dir),
        );
        for g in programs {
            conf.push_str(&format!(
                "\n[program:{name}]\ncommand={cmd}\nautostart=false\nautorestart=false\n\
                 startsecs=0\nstartretries=0\n\
                 stdout_logfile={out}\nstdout_logfile_maxbytes=0\nstdout_logfile_backups=0\n\
                 stderr_logfile={err}\nstderr_logfile_maxbytes=0\nstderr_logfile_backups=0\n\
                 redirect_stderr=false\n",
                name = g.name,
                cmd = shell_quote(&g.argv).replace('%', "%%"),
                out = p(&g.out),
                err = p(&g.err),
            ));
        }
        let conf_path = dir.join("supervisord.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.join("supervisord.stdout"))?;
        let proc = Command::new(&tool.bin)
            .arg("-n")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", tool.bin.display()))?;
        let mut sv = Supervisord {
            proc,
            conf: conf_path,
            ctl: tool.ctl.clone(),
        };
        // Up once supervisorctl can reach it.
        let t0 = Instant::now();
        loop {
            if let Ok(out) = sv.ctl(&["pid"]) {
                if out.trim().parse::<u32>().is_ok() {
                    break;
                }
            }
            if let Ok(Some(st)) = sv.proc.try_wait() {
                let log =
                    std::fs::read_to_string(dir.join("supervisord.stdout")).unwrap_or_default();
                bail!("supervisord exited ({st}) before it was up:\n{log}");
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("supervisord did not answer supervisorctl within 30 s");
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sv)
    }

    fn ctl(&self, args: &[&str]) -> Result<String> {
        run_captured(
            Command::new(&self.ctl).arg("-c").arg(&self.conf).args(args),
            &format!("supervisorctl {}", args.join(" ")),
            Duration::from_secs(60),
        )
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child we started.
        unsafe { libc::kill(self.proc.id() as i32, libc::SIGTERM) };
        wait_bounded(&mut self.proc, Duration::from_secs(15));
    }
}

/// A pm2 daemon of our own (`PM2_HOME` in the work directory); `pm2 kill` on drop.
struct Pm2 {
    bin: PathBuf,
    home: PathBuf,
}

impl Pm2 {
    fn start(tool: &PeerTool, home: &Path) -> Result<Pm2> {
        std::fs::create_dir_all(home)?;
        let pm2 = Pm2 {
            bin: tool.bin.clone(),
            home: home.to_path_buf(),
        };
        // Starts the daemon now, so that no run pays for it.
        pm2.run(&["ping"])?;
        Ok(pm2)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        run_captured(
            Command::new(&self.bin)
                .env("PM2_HOME", &self.home)
                .args(args),
            &format!("pm2 {}", args.first().unwrap_or(&"")),
            Duration::from_secs(60),
        )
    }

    fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home.join("pm2.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let pid = self.daemon_pid();
        if let Some(pid) = pid {
            let us = (proc_cpu_with_children(pid) * 1e6) as u64;
            EXTERNAL_CPU_US.fetch_add(us, Ordering::SeqCst);
        }
        if let Err(e) = self.run(&["kill"]) {
            eprintln!("corral-bench: pm2 kill: {e:#}");
        }
        // Whatever `pm2 kill` left (it should leave nothing): the daemon, by its pid, if
        // it still is pm2's.
        if let Some(pid) = pid {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if comm.contains("PM2") || comm.contains("pm2") {
                // SAFETY: kill(2) on the pid of the pm2 daemon we started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// One run of a tool in the peers part.
#[derive(Debug, Clone, Default)]
struct PeerRun {
    /// From the child's start to the last byte in the file.
    secs: f64,
    /// The child's own time writing.
    child_secs: f64,
    v: Verify,
}

impl PeerRun {
    fn rate(&self) -> f64 {
        self.v.size as f64 / self.secs
    }
}

/// A peers run's file, its report and the times, checked against the child's output.
fn finish_peer_run(
    ctx: &Ctx,
    file: &Path,
    report: &Path,
    end: f64,
    remove: bool,
) -> Result<PeerRun> {
    let deadline = Duration::from_secs(ctx.a.timeout);
    let t0 = Instant::now();
    while !report.exists() {
        if t0.elapsed() > deadline {
            bail!("no child report at {} after {deadline:?}", report.display());
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    }
    // Whatever the tool still writes after the child ended belongs in the comparison.
    wait_settled(file, Duration::from_millis(300), Duration::from_secs(10));
    let rep = read_report(report)?;
    let start = f(&rep, "start_real");
    let v = verify_file(file, ctx.a.peer_lines, ctx.a.line_bytes)?;
    if remove {
        let _ = std::fs::remove_file(file);
    }
    Ok(PeerRun {
        secs: end - start,
        child_secs: f(&rep, "end_real") - start,
        v,
    })
}

/// The peers part's run of corral: the child as a task, the run's `.log` polled.
fn peer_corral(ctx: &Ctx, d: &Daemon, i: usize) -> Result<PeerRun> {
    let name = format!("peer-corral-{i}");
    let go = ctx.work.join(format!("go-{name}"));
    let report = ctx.work.join(format!("report-{name}.json"));
    let argv = child_cmd(ctx, ctx.a.peer_lines, Some(&go), &report, None);
    let want = ctx.a.peer_lines * ctx.a.line_bytes as u64;
    let log_path = ctx.rt.block_on(async {
        let r = ctx
            .http
            .post(format!("{}/api/v1/tasks", d.url))
            .json(&json!({"name": name, "command": argv, "restart": "no"}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "starting task {name}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let started: Value = r.json().await?;
        let run_id = started["run_id"].as_str().context("no run_id")?.to_string();
        let row: Value = ctx
            .http
            .get(format!("{}/api/v1/runs/{run_id}", d.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let p = PathBuf::from(row["log_path"].as_str().context("no log_path")?);
        anyhow::Ok(if p.is_absolute() {
            p
        } else {
            ctx.work.join("home").join(p)
        })
    })?;
    std::fs::write(&go, b"go")?;
    let (end, _) = wait_for_file(&log_path, want, &report, Duration::from_secs(ctx.a.timeout))?;
    // Leave the daemon's bookkeeping of the run's end out of the next run.
    let t0 = Instant::now();
    loop {
        let runs: Value = ctx.rt.block_on(async {
            let r = ctx
                .http
                .get(format!("{}/api/v1/runs?task={name}", d.url))
                .send()
                .await?;
            anyhow::Ok(r.json().await?)
        })?;
        if runs.get(0).is_some_and(|r| r["status"] != "running") {
            break;
        }
        if t0.elapsed() > Duration::from_secs(ctx.a.timeout) {
            bail!("run of {name} did not end");
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    }
    finish_peer_run(ctx, &log_path, &report, end, !ctx.a.keep)
}

fn peers_part(ctx: &Ctx, d: &Daemon, tools: &[PeerTool]) -> Result<Vec<Row>> {
    let a = &ctx.a;
    let lines = a.peer_lines;
    let want = lines * a.line_bytes as u64;
    let repeat = a.repeat.max(1);
    let dir = ctx.work.join("peers");
    std::fs::create_dir_all(&dir)?;
    let program = |tool: &str, i: usize| {
        let name = format!("{tool}{i}");
        let report = dir.join(format!("{name}.json"));
        PeerProgram {
            argv: child_cmd(ctx, lines, None, &report, None),
            out: dir.join(format!("{name}.out")),
            err: dir.join(format!("{name}.err")),
            report,
            name,
        }
    };
    // The peers' daemons live for the whole part, like corral's.
    let sv_programs: Vec<PeerProgram> = (0..repeat).map(|i| program("sv", i)).collect();
    let mut sv = None;
    let mut pm2 = None;
    for t in tools {
        match t.kind {
            PeerKind::Supervisord => {
                sv = Some(Supervisord::start(
                    t,
                    &dir.join("supervisord"),
                    &sv_programs,
                )?)
            }
            PeerKind::Pm2 => pm2 = Some(Pm2::start(t, &dir.join("pm2home"))?),
        }
    }
    // runs[tool][i]: 0 = the pipe, 1 = corral, then the peers in `tools` order.
    let mut names = vec!["pipe".to_string(), "corral".to_string()];
    names.extend(tools.iter().map(|t| t.name().to_string()));
    let mut runs: Vec<Vec<PeerRun>> = vec![Vec::new(); names.len()];
    let show = |tool: &str, i: usize, r: &PeerRun| {
        eprintln!(
            "corral-bench: peers {i}: {tool:<11} {:>6.0} MiB/s ({:.3} s; child wrote for {:.3} s); {}",
            mib(r.rate()),
            r.secs,
            r.child_secs,
            r.v.describe(lines)
        );
    };
    for (i, sv_program) in sv_programs.iter().enumerate() {
        let (pr, out) = pipe_run(ctx, &format!("peer-pipe-{i}"), lines)?;
        let r = PeerRun {
            secs: pr.secs,
            child_secs: pr.child_secs,
            v: verify_file(&out, lines, a.line_bytes)?,
        };
        let _ = std::fs::remove_file(&out);
        show("pipe", i, &r);
        runs[0].push(r);
        let r = peer_corral(ctx, d, i)?;
        show("corral", i, &r);
        runs[1].push(r);
        for (k, t) in tools.iter().enumerate() {
            let r = match t.kind {
                PeerKind::Supervisord => {
                    let g = sv_program;
                    let sv = sv.as_ref().context("supervisord")?;
                    sv.ctl(&["start", &g.name])?;
                    let (end, _) =
                        wait_for_file(&g.out, want, &g.report, Duration::from_secs(a.timeout))?;
                    finish_peer_run(ctx, &g.out, &g.report, end, !a.keep)?
                }
                PeerKind::Pm2 => {
                    let g = program("pm2-", i);
                    let pm2 = pm2.as_ref().context("pm2")?;
                    let mut args: Vec<&str> =
                        vec!["start", &g.argv[0], "--name", &g.name, "--no-autorestart"];
                    let (out, err) = (g.out.display().to_string(), g.err.display().to_string());
                    args.extend([
                        "--interpreter",
                        "none",
                        "-o",
                        &out,
                        "-e",
                        &err,
                        "--merge-logs",
                        "--",
                    ]);
                    args.extend(g.argv[1..].iter().map(String::as_str));
                    pm2.run(&args)?;
                    let (end, _) =
                        wait_for_file(&g.out, want, &g.report, Duration::from_secs(a.timeout))?;
                    finish_peer_run(ctx, &g.out, &g.report, end, !a.keep)?
                }
            };
            show(t.name(), i, &r);
            runs[2 + k].push(r);
        }
    }
    drop(sv);
    drop(pm2);
    let med = |rs: &[PeerRun]| median(rs.iter().map(PeerRun::rate).collect());
    let pipe_rate = med(&runs[0]);
    let per_run = |rs: &[PeerRun]| {
        let rates: Vec<String> = rs.iter().map(|r| format!("{:.0}", mib(r.rate()))).collect();
        let ident: Vec<&str> = rs
            .iter()
            .map(|r| if r.v.identical() { "yes" } else { "NO" })
            .collect();
        let lost: Vec<String> = rs.iter().map(|r| r.v.lost(lines).to_string()).collect();
        format!(
            "runs {} MiB/s; byte-identical {}; lines lost {}",
            rates.join(", "),
            ident.join("/"),
            lost.join("/")
        )
    };
    let mut rows = Vec::new();
    let label = |n: &str| -> String {
        match n {
            "pipe" => "peers: `child \\| cat > file`".into(),
            "corral" => "peers: corral".into(),
            _ => {
                let v = tools
                    .iter()
                    .find(|t| t.name() == n)
                    .map(|t| t.version.clone())
                    .unwrap_or_default();
                format!("peers: {n} {v}")
            }
        }
    };
    rows.push(Row::info(
        &format!(
            "peers: {lines} lines of {} bytes, to a file on tmpfs",
            a.line_bytes
        ),
        format!(
            "{:.2} GiB per run; median of {repeat} interleaved runs each",
            gib(want as f64)
        ),
    ));
    for (k, n) in names.iter().enumerate() {
        let r = med(&runs[k]);
        let got = if k == 0 {
            format!("**{:.0} MiB/s** ({})", mib(r), per_run(&runs[k]))
        } else {
            format!(
                "**{:.0} MiB/s** = {:.2}x the pipe ({})",
                mib(r),
                r / pipe_rate,
                per_run(&runs[k])
            )
        };
        if n == "corral" {
            let ratio = r / pipe_rate;
            rows.push(Row::target(
                &label(n),
                got,
                ">= 0.95x the pipe",
                ratio >= 0.95,
            ));
        } else {
            rows.push(Row::info(&label(n), got));
        }
    }
    if let Some(k) = names.iter().position(|n| n == "supervisord") {
        let ratio = med(&runs[1]) / med(&runs[k]);
        rows.push(Row::target(
            "peers: corral versus supervisord",
            format!("**{ratio:.2}x**"),
            ">= 1.2x supervisord",
            ratio >= 1.2,
        ));
    }
    let all_identical = runs.iter().flatten().all(|r| r.v.identical());
    let bad: Vec<String> = names
        .iter()
        .zip(&runs)
        .filter(|(_, rs)| rs.iter().any(|r| !r.v.identical()))
        .map(|(n, _)| n.clone())
        .collect();
    rows.push(Row::info(
        "peers: logs byte-identical to the child's output",
        if all_identical {
            "every run of every tool".into()
        } else {
            format!("NOT for: {}", bad.join(", "))
        },
    ));
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Idle: many tasks, many followers, a quiet window

/// A child process killed (and reaped) on drop unless it was waited for.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.as_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Raises this process's soft open-files limit (inherited by what it starts) to `need`, up
/// to the hard limit. Returns a warning when the hard limit is lower.
fn raise_nofile(need: u64) -> Option<String> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Some("cannot read the open-files limit (getrlimit failed)".into());
    }
    let need = need as libc::rlim_t;
    if rl.rlim_cur >= need {
        return None;
    }
    let new = libc::rlimit {
        rlim_cur: need.min(rl.rlim_max),
        rlim_max: rl.rlim_max,
    };
    // SAFETY: setrlimit with a soft limit within the hard one.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0;
    if !ok || new.rlim_cur < need {
        return Some(format!(
            "the daemon may run out of file descriptors: it needs about {need}, the open-files \
             limit is {} (hard limit {}); raise the hard limit (e.g. `ulimit -Hn {need}` as root, \
             or LimitNOFILE= in a systemd unit) and run again",
            if ok { new.rlim_cur } else { rl.rlim_cur },
            rl.rlim_max
        ));
    }
    eprintln!(
        "corral-bench: raised the open-files limit from {} to {} for the daemon",
        rl.rlim_cur, new.rlim_cur
    );
    None
}

/// `VmRSS` in KiB and `Threads` of a process, from /proc/PID/status.
fn rss_threads(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

/// utime + stime of a process (all its threads, live and gone), in clock ticks.
fn proc_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    // Every field keeps its place (see `proc_cpu`).
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 13 {
        return 0;
    }
    f[11] + f[12]
}

/// Summed over a process's live threads: nanoseconds on a CPU (/proc/PID/task/TID/schedstat,
/// exact, where utime and stime are sampled at clock ticks and can miss short wake-ups) and
/// context switches (voluntary + involuntary).
fn thread_sums(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    dir.filter_map(|e| e.ok())
        .map(|e| {
            let run_ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let cs = s
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
            (run_ns, cs)
        })
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

fn idle_part(ctx: &Ctx, corral: &Path) -> Result<Vec<Row>> {
    let a = &ctx.a;
    let n = a.idle_tasks;
    let lines = a.idle_lines;
    let mut rows = Vec::new();
    // Per task: two pipes, the .log/.idx/.sys files, a follower's socket; and some spare.
    let nofile_warning = raise_nofile(n as u64 * 8 + 1024);
    if let Some(w) = &nofile_warning {
        eprintln!("corral-bench: WARNING: {w}");
    }
    let mut d = start_daemon(ctx, corral, "idle-home", 100)?;
    // Stopping a thousand tasks takes the daemon a while.
    d.stop_wait = Duration::from_secs(60 + n as u64 / 10);
    let pid = d.proc.id();
    eprintln!(
        "corral-bench: idle: daemon at {} (pid {pid}, home {}); creating {n} tasks of {lines} lines each",
        d.url,
        ctx.work.join("idle-home").display()
    );
    // The tasks sleep after printing, long enough for the whole part, then exit by
    // themselves even if nobody stops them.
    let hold = a.idle_seconds + 2 * a.timeout + 60;
    let argv = |_: usize| -> Vec<String> {
        vec![
            ctx.exe.display().to_string(),
            "child".into(),
            "--lines".into(),
            lines.to_string(),
            "--line-bytes".into(),
            a.line_bytes.to_string(),
            "--buf".into(),
            a.child_buf.to_string(),
            "--hold-secs".into(),
            hold.to_string(),
        ]
    };
    let deadline = Duration::from_secs(a.timeout);
    let t_create = Instant::now();
    ctx.rt.block_on(async {
        let mut results = futures_util::stream::iter(0..n)
            .map(|i| {
                let body = json!({"name": format!("idle-{i}"), "command": argv(i), "restart": "no"});
                let req = ctx.http.post(format!("{}/api/v1/tasks", d.url)).json(&body);
                async move {
                    let r = req.send().await?;
                    let status = r.status();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if !status.is_success() {
                        bail!("creating task idle-{i}: {status} {v}");
                    }
                    if let Some(e) = v.get("spawn_error") {
                        bail!("task idle-{i} could not start: {e} (out of file descriptors or processes?)");
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(a.idle_concurrency.max(1));
        let mut done = 0;
        while let Some(r) = results.next().await {
            r?;
            done += 1;
            if done % 100 == 0 || done == n {
                eprintln!(
                    "corral-bench: idle: {done}/{n} tasks created ({:.1} s)",
                    t_create.elapsed().as_secs_f64()
                );
            }
            check_interrupted()?;
            if t_create.elapsed() > deadline {
                bail!("creating {n} tasks took over {deadline:?}");
            }
        }
        anyhow::Ok(())
    })?;
    let create_secs = t_create.elapsed().as_secs_f64();
    // Every task has printed all its lines, seen through the registry's live counters.
    let mut last_note = Instant::now();
    loop {
        let runs: Vec<Value> = ctx.rt.block_on(async {
            let r = ctx
                .http
                .get(format!("{}/api/v1/runs?limit={}", d.url, n + 100))
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(r.json().await?)
        })?;
        let ours = || {
            runs.iter()
                .filter(|r| r["task"].as_str().is_some_and(|t| t.starts_with("idle-")))
        };
        if let Some(r) = ours().find(|r| r["status"] != "running") {
            bail!(
                "idle task {} ended ({}): {}",
                r["task"],
                r["status"],
                r["error_message"]
            );
        }
        let complete = ours()
            .filter(|r| r["lines"].as_u64().unwrap_or(0) >= lines)
            .count();
        if complete >= n {
            break;
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            eprintln!("corral-bench: idle: {complete}/{n} tasks have printed all their lines");
            last_note = Instant::now();
        }
        if t_create.elapsed() > deadline {
            bail!("after {deadline:?}, {complete} of {n} tasks had printed all their lines");
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(250));
    }
    let captured_secs = t_create.elapsed().as_secs_f64();
    eprintln!(
        "corral-bench: idle: every task printed its lines after {captured_secs:.1} s; attaching {n} followers"
    );
    // One follower per task, in another process, each reading its task's run from seq 1.
    let url = format!("{}/api/v1/tasks/idle-{{i}}/logs?since=0&follow=true", d.url);
    let mut cmd = Command::new(&ctx.exe);
    cmd.args(["followers", "--url", &url, "--n", &n.to_string()])
        .args(["--expect-lines", &lines.to_string(), "--hold"])
        .args(["--timeout", &(a.idle_seconds + 2 * a.timeout).to_string()]);
    if !a.ndjson {
        cmd.arg("--sse");
    }
    let t_follow = Instant::now();
    let mut fol = KillOnDrop(Some(
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .context("starting the followers")?,
    ));
    let p = fol.0.as_mut().context("followers")?;
    let mut out = BufReader::new(p.stdout.take().context("followers stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the idle followers did not attach: {}", line.trim());
    }
    let follow_secs = t_follow.elapsed().as_secs_f64();
    let metrics = ctx.rt.block_on(async {
        anyhow::Ok(
            ctx.http
                .get(format!("{}/metrics", d.url))
                .send()
                .await?
                .text()
                .await?,
        )
    })?;
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("corral_followers "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!(
        "corral-bench: idle: {n} followers caught up after {follow_secs:.1} s (the daemon counts {counted}); \
         quiet window of {} s",
        a.idle_seconds
    );
    // Let the catch-up's last writes and frees settle before the window opens.
    std::thread::sleep(Duration::from_secs(2));
    let (rss0, threads0) = rss_threads(pid);
    let (ticks0, (ns0, cs0), busy0) = (proc_ticks(pid), thread_sums(pid), machine_busy());
    let t0 = Instant::now();
    let window = Duration::from_secs(a.idle_seconds);
    let (mut rss_max, mut threads_max, mut samples) = (rss0, threads0, 1);
    loop {
        let left = window.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        check_interrupted()?;
        std::thread::sleep(left.min(Duration::from_secs(1)));
        let (rss, threads) = rss_threads(pid);
        rss_max = rss_max.max(rss);
        threads_max = threads_max.max(threads);
        samples += 1;
    }
    let (ticks1, wall) = (proc_ticks(pid), t0.elapsed().as_secs_f64());
    let busy = machine_busy() - busy0;
    let (ns1, cs1) = thread_sums(pid);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = ticks1.saturating_sub(ticks0) as f64 / hz;
    let share = cpu_s / wall;
    let sched_s = ns1.saturating_sub(ns0) as f64 / 1e9;
    let sched_share = sched_s / wall;
    // Close the followers and read what each saw.
    let p = fol.0.as_mut().context("followers")?;
    if let Some(mut stdin) = p.stdin.take() {
        let _ = stdin.write_all(b"stop\n");
    }
    let v: Value = loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            bail!("the idle followers exited without a result");
        }
        if let Some(j) = line.trim().strip_prefix("result ") {
            break serde_json::from_str(j)?;
        }
    };
    if let Some(mut p) = fol.0.take() {
        wait_cpu(&mut p);
    }
    let stats: Vec<FollowerStats> = serde_json::from_value(v["followers"].clone())?;
    let held = stats
        .iter()
        .filter(|s| s.held && s.error.is_none() && s.stdout_lines == lines && s.seq_errors == 0)
        .count();
    for (i, s) in stats
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.held || s.error.is_some())
        .take(5)
    {
        eprintln!(
            "corral-bench:   idle follower {i}: held {}, stdout lines {} (want {lines}), seq errors {}, end {}, error {}",
            s.held,
            s.stdout_lines,
            s.seq_errors,
            s.got_end,
            s.error.as_deref().unwrap_or("-")
        );
    }
    let t_stop = Instant::now();
    drop(d);
    eprintln!(
        "corral-bench: idle: the daemon stopped its {n} tasks and exited in {:.1} s",
        t_stop.elapsed().as_secs_f64()
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mib_k = |k: u64| k as f64 / 1024.0;
    rows.push(Row::info(
        &format!(
            "idle: {n} tasks x {lines} lines, {n} {} followers (one per task)",
            if a.ndjson { "NDJSON" } else { "SSE" }
        ),
        format!(
            "tasks created in {create_secs:.1} s, every line captured after {captured_secs:.1} s, \
             followers caught up in {follow_secs:.1} s; {held}/{n} followers complete and still \
             attached after the window{}",
            nofile_warning
                .as_ref()
                .map(|_| "; WARNING: open-files limit below need")
                .unwrap_or("")
        ),
    ));
    rows.push(Row::target(
        &format!("idle daemon RSS ({} s window)", a.idle_seconds),
        format!(
            "**{:.0} MiB** (largest of {samples} samples; {:.0} MiB at the start)",
            mib_k(rss_max),
            mib_k(rss0)
        ),
        "<= 200 MiB",
        mib_k(rss_max) <= 200.0,
    ));
    rows.push(Row::target(
        "idle daemon threads",
        format!("**{threads_max}** (largest; {threads0} at the start)"),
        "<= 16",
        threads_max <= 16,
    ));
    rows.push(Row::target(
        "idle daemon CPU",
        format!(
            "**{:.2}%** of one core by utime+stime ({cpu_s:.2} s in {wall:.0} s), **{:.2}%** by the \
             scheduler's run time ({sched_s:.3} s); {:.0} context switches/s; the machine was \
             {:.0}% busy meanwhile",
            share * 100.0,
            sched_share * 100.0,
            cs1.saturating_sub(cs0) as f64 / wall,
            busy / (wall * cpus) * 100.0
        ),
        "<= 0.2% of one core (both)",
        share.max(sched_share) <= 0.002,
    ));
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// The SSH part: a remote file through a real sshd on loopback

/// An sshd on a free loopback port, ended on drop.
struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes throwaway keys, starts sshd as this user, and writes the ssh config (host
/// `bench`) the daemon is given.
fn start_sshd(dir: &Path) -> Result<(Sshd, PathBuf)> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        bail!("the SSH part needs sshd: apt-get install -y openssh-server (or run without --ssh)");
    }
    std::fs::create_dir_all(dir)?;
    for key in ["host_key", "user_key"] {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(key))
            .stdin(Stdio::null())
            .status()
            .context("running ssh-keygen (apt-get install -y openssh-client)")?;
        if !st.success() {
            bail!("ssh-keygen failed");
        }
    }
    std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))?;
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        std::fs::create_dir_all("/run/sshd")?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let d = dir.display();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
        ),
    )?;
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log"))?)
        .spawn()
        .context("starting sshd")?;
    let sshd = Sshd(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "sshd did not listen: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let host_pub = std::fs::read_to_string(dir.join("host_key.pub"))?;
    std::fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{port} {}", host_pub.trim()),
    )?;
    let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?;
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host bench\n  HostName 127.0.0.1\n  Port {port}\n  User {}\n  IdentityFile {d}/user_key\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n",
            user.trim()
        ),
    )?;
    Ok((sshd, config))
}

/// Bytes read and written by every process whose command line holds `needle` (the
/// daemon's ssh processes: the master carries the connection).
fn io_bytes_of(needle: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd).contains(needle) {
            continue;
        }
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        for l in io.lines() {
            if let Some(v) = l
                .strip_prefix("rchar: ")
                .or_else(|| l.strip_prefix("wchar: "))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// A remote file (`corral tail bench:PATH`): how long a line written there takes to
/// reach a follower of the task, and what the connection carries while nothing is
/// written (all the daemon's ssh processes' reads and writes, from /proc/PID/io).
fn ssh_part(ctx: &Ctx, corral: &Path) -> Result<Vec<Row>> {
    let a = &ctx.a;
    let dir = ctx.work.join("ssh");
    let (_sshd, config) = start_sshd(&dir)?;
    let d = start_daemon_with(
        ctx,
        corral,
        "ssh-home",
        64,
        &[("CORRAL_SSH_CONFIG".into(), config.display().to_string())],
        &[],
    )?;
    let file = dir.join("remote.log");
    std::fs::write(&file, b"")?;
    let control = ctx.work.join("ssh-home").join("ssh").display().to_string();
    eprintln!(
        "corral-bench: ssh part: daemon at {}, sshd on loopback",
        d.url
    );
    let (median, worst) = ctx.rt.block_on(async {
        let body = json!({"name": "remote", "kind": "remote-file",
                          "extra": {"host": "bench", "path": file.display().to_string()}});
        let r = ctx
            .http
            .post(format!("{}/api/v1/tasks", d.url))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "creating the remote file task: {}",
                r.text().await.unwrap_or_default()
            );
        }
        let resp = ctx
            .http
            .get(format!(
                "{}/api/v1/tasks/remote/logs?since=0&follow=true",
                d.url
            ))
            .send()
            .await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut took = Vec::new();
        // Line 0 warms up (the connection and the remote reader start); not counted.
        for i in 0..=a.ssh_lines {
            // Pacing between samples (each line is written to an idle reader), uneven so
            // that the writes fall at every phase of the remote reader's 0.2 s look.
            tokio::time::sleep(Duration::from_millis(150 + (i * 61) % 250)).await;
            let want = format!("bench line {i}");
            let t0 = Instant::now();
            let mut f = std::fs::OpenOptions::new().append(true).open(&file)?;
            f.write_all(format!("{want}\n").as_bytes())?;
            drop(f);
            'wait: loop {
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
                    if v["line"] == want.as_str() {
                        if i > 0 {
                            took.push(t0.elapsed().as_secs_f64());
                        }
                        break 'wait;
                    }
                }
                let chunk = tokio::time::timeout(Duration::from_secs(a.timeout), stream.next())
                    .await
                    .context("no line came from the remote file")?
                    .context("the log stream ended")??;
                buf.extend_from_slice(&chunk);
            }
        }
        let worst = took.iter().cloned().fold(0.0, f64::max);
        Ok::<_, anyhow::Error>((median(took), worst))
    })?;
    // The idle window: the file is not written; the connection carries keepalives only.
    let b0 = io_bytes_of(&control);
    std::thread::sleep(Duration::from_secs(a.ssh_idle_seconds));
    let idle = io_bytes_of(&control).saturating_sub(b0) as f64;
    let per_min = idle / a.ssh_idle_seconds as f64 * 60.0;
    Ok(vec![
        Row::target(
            "remote file (SSH): a new line to a follower, median / worst",
            format!("{:.0} ms / {:.0} ms", median * 1e3, worst * 1e3),
            "< 1 s",
            worst < 1.0,
        ),
        Row::target(
            &format!(
                "remote file (SSH): transfer while idle ({} s window)",
                a.ssh_idle_seconds
            ),
            format!("{:.1} KB/min", per_min / 1e3),
            "<= 100 KB/min",
            per_min <= 100_000.0,
        ),
    ])
}

struct Row {
    what: String,
    got: String,
    target: String,
    verdict: String,
}

impl Row {
    fn info(what: &str, got: String) -> Row {
        Row {
            what: what.into(),
            got,
            target: "".into(),
            verdict: "".into(),
        }
    }
    fn target(what: &str, got: String, target: &str, pass: bool) -> Row {
        Row {
            what: what.into(),
            got,
            target: target.into(),
            verdict: if pass { "PASS" } else { "FAIL" }.into(),
        }
    }
}

fn print_table(
    ctx: &Ctx,
    rows: &[Row],
    tmpfs: bool,
    took: Duration,
    others: f64,
    peers: &[String],
) {
    let a = &ctx.a;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!();
    println!("## corral benchmark");
    println!();
    println!(
        "Command: `cargo run --release --bin corral-bench --{}{}` (or `scripts/bench.sh{}{}`)",
        if args.is_empty() { "" } else { " " },
        args.join(" "),
        if args.is_empty() { "" } else { " " },
        args.join(" ")
    );
    println!();
    println!(
        "Machine: {cpus} CPUs ({model}); home and baseline file on {} ({}); {}-byte lines, child buffer {} KiB; \
         followers: {} over loopback, in another process;{} took {:.0} s; other processes used {:.0}% of the CPUs meanwhile.",
        a.dir.display(),
        if tmpfs { "tmpfs" } else { "NOT tmpfs" },
        a.line_bytes,
        a.child_buf / 1024,
        if a.ndjson { "NDJSON" } else { "SSE" },
        if peers.is_empty() {
            String::new()
        } else {
            format!(" peers: {};", peers.join(", "))
        },
        took.as_secs_f64(),
        others * 100.0
    );
    println!();
    println!("| measure | result | target | |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.got, r.target, r.verdict);
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child_output(lines: u64, line_bytes: usize) -> Vec<u8> {
        let mut g = Lines::new(line_bytes);
        let mut v = Vec::new();
        for _ in 0..lines {
            v.extend_from_slice(g.next_line());
        }
        v
    }

    fn check(data: &[u8], lines: u64, line_bytes: usize) -> Verify {
        let p = std::env::temp_dir().join(format!(
            "corral-bench-test-{}-{}",
            std::process::id(),
            mono_ns()
        ));
        std::fs::write(&p, data).unwrap();
        let v = verify_file(&p, lines, line_bytes).unwrap();
        let _ = std::fs::remove_file(&p);
        v
    }

    #[test]
    fn lines_are_numbered_from_one() {
        let out = child_output(11, 40);
        assert_eq!(&out[..11], b"0000000001 ");
        assert_eq!(&out[10 * 40..10 * 40 + 11], b"0000000011 ");
        assert!(out.chunks(40).all(|l| l.len() == 40 && l[39] == b'\n'));
    }

    #[test]
    fn the_child_output_is_identical_to_itself() {
        // More than one comparison buffer's worth, with lines that straddle them.
        let (n, l) = (30_000, 120);
        let v = check(&child_output(n, l), n, l);
        assert!(v.identical(), "{v:?}");
        assert_eq!((v.size, v.newlines, v.lost(n)), (n * l as u64, n, 0));
    }

    #[test]
    fn a_changed_byte_a_lost_line_and_extra_bytes_are_found() {
        let (n, l) = (20_000, 120);
        let good = child_output(n, l);
        let mut bad = good.clone();
        bad[1_500_000] = b'y';
        assert_eq!(check(&bad, n, l).first_diff, Some(1_500_000));
        let mut short = good.clone();
        short.drain(5 * l..6 * l);
        let v = check(&short, n, l);
        // Line 6 is gone: line 7 differs from it in the number's last digit.
        assert_eq!((v.first_diff, v.lost(n)), (Some(5 * l as u64 + 9), 1));
        assert_eq!(
            check(&good[..good.len() - 1], n, l).first_diff,
            Some(good.len() as u64 - 1)
        );
        let mut long = good.clone();
        long.extend_from_slice(b"more\n");
        let v = check(&long, n, l);
        assert_eq!((v.first_diff, v.lost(n)), (Some(good.len() as u64), 0));
        assert!(v.describe(n).contains("1 lines extra"));
    }
}
