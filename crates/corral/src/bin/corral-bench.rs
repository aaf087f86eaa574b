//! corral-bench: the benchmark of issue 2 ("Tests and benchmark"), in one run.
//!
//! It drives a real daemon (`corral serve`, a subprocess) through its HTTP API, with the
//! daemon's home and the baseline's output file on the same tmpfs, and measures:
//!
//! 1. capture throughput of a child writing fixed-size lines block-buffered as fast as it
//!    can, through corral versus the same child piped to a file (`child | cat > file`), as
//!    a ratio, with 0, 10 and 100 followers attached over loopback;
//! 2. that every follower received every record (count, dense seq 1..N, the end mark), and
//!    the followers' aggregate bytes/s;
//! 3. latency from a line-buffered child's write to a loopback follower's receipt.
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

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "corral-bench",
    about = "Benchmark of corral's hot path: capture throughput versus a plain pipe, follower \
             fan-out over loopback, and write-to-receipt latency, in one run.",
    long_about = "Benchmark of corral's hot path (issue 2), in one run:\n\
  1. capture throughput of a child writing LINE_BYTES-byte lines block-buffered as fast as it\n\
     can, through corral versus the same child piped to a file (`child | cat > file`), as a\n\
     ratio, with 0, 10 and 100 followers (NDJSON over loopback, in another process) attached;\n\
  2. that every follower received every record (count, dense seq 1..N, the end mark), and the\n\
     followers' aggregate bytes/s;\n\
  3. latency from a line-buffered child's write to a loopback follower's receipt (p50, p99).\n\
\n\
Method: the daemon (`corral serve`, a subprocess) and the baseline's file share one tmpfs\n\
(--dir). The child (a hidden mode of this binary) waits for a go file, so followers are attached\n\
before the first line. Capture time = child's start to the `ts` the capture thread gave the\n\
child's last record (the pipe drained); baseline time = child's start to `sh -c 'child | cat >\n\
file'` exiting. Aggregate rate = all bytes the followers received / (child's start to the last\n\
follower's last byte). Latency: each line carries CLOCK_MONOTONIC at its write(2); the follower\n\
subtracts it on receipt. The latency run goes first, on a quiet daemon.\n\
\n\
`cargo run --release --bin corral-bench` also builds the daemon; scripts/bench.sh does the same.\n\
Default run: under a minute on 2 CPUs.",
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
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
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
    /// Runs of the baseline and of corral without followers; the median is reported.
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
}

#[derive(Args, Debug)]
struct FollowerArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    n: usize,
    #[arg(long)]
    sse: bool,
    /// Measure each line's latency from its embedded CLOCK_MONOTONIC stamp.
    #[arg(long)]
    latency: bool,
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.mode {
        Some(Mode::Child(a)) => child(a),
        Some(Mode::Followers(a)) => followers(a),
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
    let mut line = vec![b'x'; l];
    line[l - 1] = b'\n';
    match a.rate {
        None => {
            // "0000000001 xxxx…\n": the number is kept as ASCII and incremented in place.
            line[..10].fill(b'0');
            line[10] = b' ';
            let cap = a.buf.max(l);
            let mut buf = Vec::with_capacity(cap);
            for _ in 0..a.lines {
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
                if buf.len() + l > cap {
                    out.write_all(&buf)?;
                    buf.clear();
                }
                buf.extend_from_slice(&line);
            }
            out.write_all(&buf)?;
        }
        Some(rate) => {
            // "T<20-digit monotonic ns> <10-digit n> xxxx…\n", one write(2) per line.
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
    Ok(())
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
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true)
            .build()?;
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let deadline = Duration::from_secs(a.timeout);
        let mut tasks = Vec::new();
        for _ in 0..a.n {
            let (client, url, ready, failed) =
                (client.clone(), a.url.clone(), ready.clone(), failed.clone());
            let (sse, latency) = (a.sse, a.latency);
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
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk?;
                        ck.chunk(&chunk);
                        ck.stats.last_byte_real = real_s();
                        if !attached && ck.stats.records > 0 {
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
        // Tell the bench when every follower is attached (has its first record).
        let t0 = Instant::now();
        loop {
            if ready.load(Ordering::SeqCst) == a.n {
                println!("ready");
                break;
            }
            if failed.load(Ordering::SeqCst) > 0 || t0.elapsed() > deadline {
                println!("not-ready");
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        std::io::stdout().flush()?;
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await?);
        }
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child we started.
        unsafe { libc::kill(self.proc.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
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
    let http = reqwest::Client::builder().build()?;
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

fn start_daemon(ctx: &Ctx, corral: &Path, max_mb: u64) -> Result<Daemon> {
    let mut cmd = Command::new(corral);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--home")
        .arg(ctx.work.join("home"))
        .arg("--max-log-mb")
        .arg(max_mb.to_string());
    if let Some(r) = ctx.a.ring_records {
        cmd.arg("--ring-records").arg(r.to_string());
    }
    let err = std::fs::File::create(ctx.work.join("daemon.stderr"))?;
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
    };
    if url.is_none() {
        let err = std::fs::read_to_string(ctx.work.join("daemon.stderr")).unwrap_or_default();
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
    let out = ctx.work.join(format!("baseline-{i}.out"));
    let report = ctx.work.join(format!("baseline-{i}.json"));
    let argv = child_cmd(ctx, ctx.a.lines, None, &report, None);
    let script = format!("{} | cat > \"$0\"", shell_quote(&argv));
    let st = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(&out)
        .status()?;
    let end = real_s();
    if !st.success() {
        bail!("baseline pipeline failed: {st}");
    }
    let r = read_report(&report)?;
    let bytes = std::fs::metadata(&out)?.len();
    let _ = std::fs::remove_file(&out);
    if bytes != ctx.a.lines * ctx.a.line_bytes as u64 {
        bail!(
            "baseline file has {bytes} bytes, expected {}",
            ctx.a.lines * ctx.a.line_bytes as u64
        );
    }
    Ok(CaptureRun {
        secs: end - f(&r, "start_real"),
        bytes,
        child_secs: f(&r, "end_real") - f(&r, "start_real"),
        child_blocked: f(&r, "blocked_s"),
        child_runqueue: f(&r, "runqueue_s"),
        ended_secs: end - f(&r, "start_real"),
    })
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
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
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
    let t_all = Instant::now();
    let (busy0, ours0) = (machine_busy(), own_tree_cpu());
    // The size cap must not drop anything the followers are asked to receive.
    let biggest = a.lines.max(a.follower_lines) * a.line_bytes as u64;
    let max_mb = ((biggest * 2) >> 20) + 64;
    let d = start_daemon(ctx, corral, max_mb)?;
    eprintln!(
        "corral-bench: daemon at {} (home {})",
        d.url,
        ctx.work.join("home").display()
    );
    // Latency first, on a quiet daemon and machine (its rows go last in the table).
    let mut latency_rows = Vec::new();
    if a.latency_lines > 0 {
        let res = corral_run(ctx, &d, "latency", a.latency_lines, 1, Some(a.latency_rate))?;
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
            "< 200 us",
            p50 < 200_000 && n == a.latency_lines && res.bad.is_empty(),
        ));
        latency_rows.push(Row::target(
            "latency write -> follower, p99",
            format!("**{:.0} us** (max {:.0} us)", us(p99), us(max)),
            "< 5 ms",
            p99 < 5_000_000 && n == a.latency_lines && res.bad.is_empty(),
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
            let c = corral_run(ctx, &d, &format!("cap0-{i}"), a.lines, 0, None)?;
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
            ">= 0.5x the pipe",
            ratio >= 0.5,
        ));
    }
    let mut lost_total = 0usize;
    for &n in a.followers.iter().filter(|&&n| n > 0) {
        let name = format!("fan{n}");
        let res = corral_run(ctx, &d, &name, a.follower_lines, n, None)?;
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
            ">= 1 GiB/s",
            agg >= (1u64 << 30) as f64,
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
    drop(d);
    // CPU the rest of the machine used meanwhile: busy time (user + system, all CPUs)
    // minus what this process and everything it started and reaped used.
    let others = (machine_busy() - busy0) - (own_tree_cpu() - ours0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let share = (others / (t_all.elapsed().as_secs_f64() * cpus)).max(0.0);
    if share > 0.05 {
        eprintln!(
            "corral-bench: WARNING: other processes used {:.0}% of the machine during the run; \
             the figures are lower than on a quiet machine",
            share * 100.0
        );
    }
    print_table(ctx, &rows, tmpfs, t_all.elapsed(), share);
    Ok(())
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
            verdict: if pass { "PASS" } else { "MISS" }.into(),
        }
    }
}

fn print_table(ctx: &Ctx, rows: &[Row], tmpfs: bool, took: Duration, others: f64) {
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
         followers: {} over loopback, in another process; took {:.0} s; other processes used {:.0}% of the CPUs meanwhile.",
        a.dir.display(),
        if tmpfs { "tmpfs" } else { "NOT tmpfs" },
        a.line_bytes,
        a.child_buf / 1024,
        if a.ndjson { "NDJSON" } else { "SSE" },
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
