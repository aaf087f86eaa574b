//! A simulated llama.cpp fleet for `corral demo`: a `llama-server` coordinator and
//! `rpc-server` backends that need no model, no GPU and no llama.cpp build.
//!
//! The demo has to show everything corral does with a real fleet (supervision, readiness
//! probes, crash and restart, live logs, parsed events) on any laptop. So the simulators
//! are ordinary child processes (`corral sim-llama-server`, `corral sim-rpc-server`)
//! that behave, from the outside, like the real programs:
//!
//! - `llama-server` writes its log to stderr in the newest llama.cpp format
//!   (`M.SS.mmm.uuu L ` prefix, `srv`/`slot` tags, one-line `print_timing`), as in the
//!   real captures under `shared/fixtures/llama-server/`; it answers `GET /health` with
//!   503 while "loading the model" and 200 afterwards, serves `/v1/models` and the
//!   completion endpoints, connects to its `--rpc` backends and holds a connection to
//!   each while it lives, prints a request's lines every few seconds, and after a
//!   while dies the way llama.cpp dies: an unprefixed `file:line: GGML_ASSERT(..) failed`
//!   line, a backtrace, exit code 134.
//! - `rpc-server` prints its banner to stdout and one line per accepted and closed
//!   connection.
//!
//! Invariants: every number printed is derived from one set of model constants and
//! from a seeded xorshift generator, so a run is reproducible for a given `--seed`
//! (only wall-clock timestamps differ); each log line is written with one `write_all`
//! and flushed, so a line is never split across reads of the pipe. The line builders
//! are pure functions; only `SimLog`, the HTTP handlers and the two entry points do I/O.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Debug, Clone)]
pub struct SimLlamaArgs {
    /// address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// port to listen on
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// model path printed in the logs
    #[arg(long, default_value = "models/demo-7b-q4_k_m.gguf")]
    pub model: String,
    /// comma-separated rpc backends host:port: printed in the logs (buffer sizes per RPC
    /// device) and connected to, as the real coordinator does (unreachable ones are skipped)
    #[arg(long, default_value = "")]
    pub rpc: String,
    /// seconds spent "loading the model" (health answers 503 meanwhile)
    #[arg(long, default_value_t = 3.0)]
    pub load_secs: f64,
    /// mean seconds between simulated requests (timing lines)
    #[arg(long, default_value_t = 1.5)]
    pub request_interval: f64,
    /// crash (exit code 134 after printing a GGML_ASSERT line) after about this many seconds of serving; 0 = never
    #[arg(long, default_value_t = 45.0)]
    pub crash_after: f64,
    /// seed for the deterministic pseudo-random generator (default: the process id, so
    /// that each restart prints other numbers)
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimRpcArgs {
    /// address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// port to listen on
    #[arg(long, default_value_t = 50052)]
    pub port: u16,
    /// simulated device memory in MiB
    #[arg(long, default_value_t = 24576)]
    pub mem_mib: u64,
}

/// How a simulated llama-server run ended (when it did not end the process itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimExit {
    /// SIGTERM/SIGINT (or the caller's shutdown future): exit 0.
    Stopped,
    /// The simulated GGML_ASSERT fired; the process must exit with `code` (134, as
    /// a shell reports SIGABRT), after the crash lines have been written.
    Crashed { code: i32 },
}

/// The exit code of a process killed by SIGABRT, as shells and supervisors report it.
pub const CRASH_EXIT_CODE: i32 = 134;

// ---------------------------------------------------------------------------------
// The simulated model. Everything printed about it derives from these numbers, so the
// log, /v1/models and the buffer sizes agree with each other.

const N_SLOTS: usize = 4;
const N_CTX: u32 = 4096;
const N_CTX_TRAIN: u32 = 4096;
const N_EMBD: u32 = 4096;
const N_LAYER: u32 = 32;
const N_HEAD: u32 = 32;
const N_FF: u32 = 11008;
const N_VOCAB: u32 = 32000;
const N_PARAMS: u64 = 6_738_415_616;
const MODEL_SIZE: u64 = 4_368_438_272;
const N_TENSORS: u32 = 291;
/// The token embedding stays in host memory (mmap), as with a real offload.
const CPU_MAPPED_MIB: f64 = 70.31;
/// f16 K and V for every layer and every context cell.
const KV_MIB_PER_LAYER: f64 = (N_CTX as f64 * N_EMBD as f64 * 2.0 * 2.0) / (1024.0 * 1024.0);
const N_THREADS: u32 = 8;

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// GGUF key/values exactly as llama_model_loader dumps them for a llama-2 7B Q4_K_M.
const MODEL_KV: [(&str, &str, &str); 22] = [
    ("general.architecture", "str", "llama"),
    ("general.name", "str", "LLaMA v2"),
    ("llama.context_length", "u32", "4096"),
    ("llama.embedding_length", "u32", "4096"),
    ("llama.block_count", "u32", "32"),
    ("llama.feed_forward_length", "u32", "11008"),
    ("llama.rope.dimension_count", "u32", "128"),
    ("llama.attention.head_count", "u32", "32"),
    ("llama.attention.head_count_kv", "u32", "32"),
    ("llama.attention.layer_norm_rms_epsilon", "f32", "0.000010"),
    ("llama.rope.freq_base", "f32", "10000.000000"),
    ("general.file_type", "u32", "15"),
    ("tokenizer.ggml.model", "str", "llama"),
    (
        "tokenizer.ggml.tokens",
        "arr[str,32000]",
        "[\"<unk>\", \"<s>\", \"</s>\", \"<0x00>\", \"<0x01>\", \"<0x02>\", \"<0x03>\", \"<0x04>\", ...",
    ),
    (
        "tokenizer.ggml.scores",
        "arr[f32,32000]",
        "[0.000000, 0.000000, 0.000000, 0.000000, 0.000000, 0.000000, 0.000000, ...",
    ),
    (
        "tokenizer.ggml.token_type",
        "arr[i32,32000]",
        "[2, 3, 3, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, ...",
    ),
    ("tokenizer.ggml.bos_token_id", "u32", "1"),
    ("tokenizer.ggml.eos_token_id", "u32", "2"),
    ("tokenizer.ggml.unknown_token_id", "u32", "0"),
    ("tokenizer.ggml.add_bos_token", "bool", "true"),
    ("tokenizer.ggml.add_eos_token", "bool", "false"),
    ("general.quantization_version", "u32", "2"),
];

/// Tensor counts per type; they add up to `N_TENSORS`.
const TENSOR_TYPES: [(&str, u32); 3] = [("f32", 65), ("q4_K", 193), ("q6_K", 33)];

const ANSWERS: [&str; 4] = [
    " The capital of France is Paris.",
    " Sure! Here is a short poem about the sea: waves fold over waves, and the tide keeps time.",
    " A llama is a domesticated South American camelid, widely used as a pack animal.",
    " To restart a crashed server, a supervisor waits, backs off, and tries again.",
];

// ---------------------------------------------------------------------------------
// Deterministic randomness (no rand crate): xorshift64*.

#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 spreads small seeds (0, 1, 2...) over the state space; the state
        // must never be 0, which xorshift would never leave.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in [lo, hi] (inclusive).
    fn range_u32(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    /// `mean` scaled by a factor uniform in [1 - spread, 1 + spread].
    fn jitter(&mut self, mean: f64, spread: f64) -> f64 {
        mean * self.range_f64(1.0 - spread, 1.0 + spread)
    }
}

// ---------------------------------------------------------------------------------
// Log line formatting (pure).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn letter(self) -> char {
        match self {
            Level::Info => 'I',
            Level::Warn => 'W',
            Level::Error => 'E',
        }
    }
}

/// llama.cpp's `M.SS.mmm.uuu` timestamp: minutes, seconds, milliseconds and
/// microseconds since the logger started.
fn log_prefix(since_start: Duration) -> String {
    let us = since_start.as_micros();
    format!(
        "{}.{:02}.{:03}.{:03}",
        us / 60_000_000,
        us / 1_000_000 % 60,
        us / 1000 % 1000,
        us % 1000
    )
}

/// `SRV_INF`: `srv  %12.*s: ` (the function name right-aligned, cut at 12).
fn srv(func: &str, msg: &str) -> String {
    format!("srv  {func:>12.12}: {msg}")
}

/// `common` log tag, same layout as `srv`.
fn cmn(func: &str, msg: &str) -> String {
    format!("cmn  {func:>12.12}: {msg}")
}

/// `SLT_INF`: `slot %12.*s: id %2d | task %d | `.
fn slot_line(func: &str, slot: usize, task: i64, msg: &str) -> String {
    format!("slot {func:>12.12}: id {slot:2} | task {task} | {msg}")
}

/// One simulated request, from slot selection to release.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    slot: usize,
    task: i64,
    /// The slot's last-use time (µs since start) before this request; -1 if never used.
    t_last: i64,
    prompt_n: u32,
    prompt_ms: f64,
    eval_n: u32,
    eval_ms: f64,
    /// Cumulative count of reused compute graphs after this request.
    graphs_reused: u64,
    /// An occasional warning printed while the request is processed.
    warning: Option<String>,
    /// Index into `ANSWERS`.
    answer: usize,
}

impl Request {
    fn total_ms(&self) -> f64 {
        self.prompt_ms + self.eval_ms
    }
}

/// The four `print_timing` lines (tags included, level prefix not), in the exact layout
/// of llama-server's `print_timings`. Rates are computed from the counts and times
/// given, so tokens per second = tokens / ms * 1000.
fn timing_lines(r: &Request) -> [String; 4] {
    let rate = |n: u32, ms: f64| -> (f64, f64) {
        if n == 0 || ms <= 0.0 {
            (0.0, 0.0)
        } else {
            (ms / f64::from(n), 1000.0 * f64::from(n) / ms)
        }
    };
    let (p_per_tok, p_per_s) = rate(r.prompt_n, r.prompt_ms);
    let (e_per_tok, e_per_s) = rate(r.eval_n, r.eval_ms);
    let line = |msg: String| slot_line("print_timings", r.slot, r.task, &msg);
    [
        line(format!(
            "prompt eval time = {:10.2} ms / {:5} tokens ({:8.2} ms per token, {:8.2} tokens per second)",
            r.prompt_ms, r.prompt_n, p_per_tok, p_per_s
        )),
        line(format!(
            "       eval time = {:10.2} ms / {:5} tokens ({:8.2} ms per token, {:8.2} tokens per second)",
            r.eval_ms, r.eval_n, e_per_tok, e_per_s
        )),
        line(format!(
            "      total time = {:10.2} ms / {:5} tokens",
            r.total_ms(),
            r.prompt_n + r.eval_n
        )),
        line(format!("   graphs reused = {:10}", r.graphs_reused)),
    ]
}

/// Lines printed when a request is picked up: slot selection, launch, maybe a warning.
fn open_lines(r: &Request) -> Vec<(Level, String)> {
    let mut lines = vec![
        (
            Level::Info,
            slot_line(
                "get_available_slot",
                r.slot,
                -1,
                &format!("selected slot by LRU, t_last = {}", r.t_last),
            ),
        ),
        (
            Level::Info,
            slot_line(
                "launch_slot_with_task",
                r.slot,
                r.task,
                "processing task, is_child = 0",
            ),
        ),
    ];
    if let Some(w) = &r.warning {
        lines.push((Level::Warn, w.clone()));
    }
    lines
}

/// Lines printed when a request completes: timings, release, and the HTTP access line.
fn close_lines(r: &Request, method: &str, path: &str, remote: &str) -> Vec<(Level, String)> {
    let mut lines: Vec<(Level, String)> = timing_lines(r)
        .into_iter()
        .map(|l| (Level::Info, l))
        .collect();
    lines.push((
        Level::Info,
        slot_line(
            "release",
            r.slot,
            r.task,
            &format!(
                "stop processing: n_tokens = {}, truncated = 0",
                (r.prompt_n + r.eval_n).saturating_sub(1)
            ),
        ),
    ));
    lines.push((
        Level::Info,
        srv(
            "log_server_request",
            &format!("done request: {method} {path} {remote} 200"),
        ),
    ));
    lines
}

/// The slots of the simulated server: which is busy, when each was last used, what it
/// caches, and the counters llama-server prints (task ids, reused graphs).
#[derive(Debug, Clone)]
struct SlotBook {
    t_last: [i64; N_SLOTS],
    busy: [bool; N_SLOTS],
    cached: [u32; N_SLOTS],
    next_task: i64,
    graphs_reused: u64,
    rng: XorShift,
}

impl SlotBook {
    fn new(seed: u64) -> Self {
        SlotBook {
            t_last: [-1; N_SLOTS],
            busy: [false; N_SLOTS],
            cached: [0; N_SLOTS],
            next_task: 0,
            graphs_reused: 0,
            rng: XorShift::new(seed),
        }
    }

    /// Picks the least recently used idle slot (ties go to the highest id, as
    /// llama-server does on a fresh start) and invents the request's numbers.
    /// `max_eval` is the client's `n_predict`/`max_tokens`. None when every slot is busy.
    fn begin(&mut self, max_eval: Option<u32>) -> Option<Request> {
        let slot = (0..N_SLOTS)
            .rev()
            .filter(|&i| !self.busy[i])
            .min_by_key(|&i| self.t_last[i])?;
        let rng = &mut self.rng;
        let prompt_n = rng.range_u32(4, 320);
        let mut eval_n = rng.range_u32(16, 160);
        if let Some(max) = max_eval {
            eval_n = eval_n.min(max.max(1));
        }
        // A 7B Q4_K_M split over RPC hosts: prompt processing is fast, generation
        // is bound by the network round trips.
        let prompt_ms = 1000.0 * f64::from(prompt_n) / rng.range_f64(350.0, 1200.0);
        let eval_ms = 1000.0 * f64::from(eval_n) / rng.range_f64(35.0, 75.0);
        let answer = rng.range_u32(0, ANSWERS.len() as u32 - 1) as usize;
        let task = self.next_task;
        let warning = if self.rng.unit() < 1.0 / 8.0 {
            Some(self.warning(slot, task, prompt_n))
        } else {
            None
        };

        // llama-server hands out one task id per generated token.
        self.next_task += i64::from(eval_n) + 1;
        self.graphs_reused += u64::from(eval_n.saturating_sub(1));
        self.busy[slot] = true;
        Some(Request {
            slot,
            task,
            t_last: self.t_last[slot],
            prompt_n,
            prompt_ms,
            eval_n,
            eval_ms,
            graphs_reused: self.graphs_reused,
            warning,
            answer,
        })
    }

    /// A real llama-server warning that fits the moment: evicting another idle slot's
    /// cache, or re-evaluating a fully cached prompt.
    fn warning(&mut self, slot: usize, task: i64, prompt_n: u32) -> String {
        let evict = (0..N_SLOTS).find(|&i| i != slot && !self.busy[i] && self.cached[i] > 0);
        match evict {
            Some(other) if self.rng.unit() < 0.5 => {
                let n = self.cached[other];
                self.cached[other] = 0;
                slot_line(
                    "clear_slot",
                    other,
                    -1,
                    &format!("clearing slot with {n} tokens"),
                )
            }
            _ => slot_line(
                "update_slots",
                slot,
                task,
                &format!(
                    "need to evaluate at least 1 token for each active slot (n_past = {prompt_n}, task.n_tokens() = {prompt_n})"
                ),
            ),
        }
    }

    fn finish(&mut self, r: &Request, now_us: i64) {
        self.busy[r.slot] = false;
        self.t_last[r.slot] = now_us;
        self.cached[r.slot] = (r.prompt_n + r.eval_n).saturating_sub(1);
    }
}

/// `print_info` size: GiB and bits per weight, from the model constants.
fn file_size_line() -> String {
    format!(
        "print_info: file size   = {:.2} GiB ({:.2} BPW)",
        MODEL_SIZE as f64 / GIB,
        MODEL_SIZE as f64 * 8.0 / N_PARAMS as f64
    )
}

/// The `--rpc` list: comma-separated `host:port`, blanks ignored.
fn rpc_endpoints(rpc: &str) -> impl Iterator<Item = &str> {
    rpc.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Where the layers live: one device per RPC backend (`RPC[host:port]`), or the local
/// GPU when there is none. Returns (device name, repeating layers, holds output layer).
fn layer_split(rpc: &str) -> Vec<(String, u32, bool)> {
    let mut devices: Vec<String> = rpc_endpoints(rpc).map(|ep| format!("RPC[{ep}]")).collect();
    if devices.is_empty() {
        devices.push("CUDA0".to_string());
    }
    let n = devices.len() as u32;
    let last = devices.len() - 1;
    devices
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let layers = N_LAYER / n + u32::from((i as u32) < N_LAYER % n);
            (name, layers, i == last)
        })
        .collect()
}

/// The llama.cpp loader lines for the simulated model, in three phases separated by
/// the time spent loading: metadata, tensor placement, context creation.
fn loader_phases(model: &str, rpc: &str) -> [Vec<String>; 3] {
    let mut meta = vec![
        format!(
            "llama_model_loader: loaded meta data with {} key-value pairs and {} tensors from {} (version GGUF V3 (latest))",
            MODEL_KV.len(),
            N_TENSORS,
            model
        ),
        "llama_model_loader: Dumping metadata keys/values. Note: KV overrides do not apply in this output.".to_string(),
    ];
    for (i, (key, ty, value)) in MODEL_KV.iter().enumerate() {
        meta.push(format!(
            "llama_model_loader: - kv {i:3}: {key:>42} {ty:<16} = {value}"
        ));
    }
    for (ty, n) in TENSOR_TYPES {
        meta.push(format!("llama_model_loader: - type {ty:>4}: {n:4} tensors"));
    }
    meta.extend([
        "print_info: file format = GGUF V3 (latest)".to_string(),
        "print_info: file type   = Q4_K - Medium".to_string(),
        file_size_line(),
        "print_info: arch             = llama".to_string(),
        "print_info: vocab_only       = 0".to_string(),
        format!("print_info: n_ctx_train      = {N_CTX_TRAIN}"),
        format!("print_info: n_embd           = {N_EMBD}"),
        format!("print_info: n_layer          = {N_LAYER}"),
        format!("print_info: n_head           = {N_HEAD}"),
        format!("print_info: n_head_kv        = {N_HEAD}"),
        format!("print_info: n_ff             = {N_FF}"),
        "print_info: model type       = 7B".to_string(),
        format!(
            "print_info: model params     = {:.2} B",
            N_PARAMS as f64 / 1e9
        ),
        "print_info: general.name     = LLaMA v2".to_string(),
        "print_info: vocab type       = SPM".to_string(),
        format!("print_info: n_vocab          = {N_VOCAB}"),
    ]);

    let split = layer_split(rpc);
    let offloaded = MODEL_SIZE as f64 / MIB - CPU_MAPPED_MIB;
    let mut tensors = vec![
        "load_tensors: loading model tensors, this can take a while... (mmap = true)".to_string(),
        format!("load_tensors: offloading {N_LAYER} repeating layers to GPU"),
        "load_tensors: offloading output layer to GPU".to_string(),
        format!(
            "load_tensors: offloaded {}/{} layers to GPU",
            N_LAYER + 1,
            N_LAYER + 1
        ),
        format!(
            "load_tensors: {:>12} model buffer size = {:8.2} MiB",
            "CPU_Mapped", CPU_MAPPED_MIB
        ),
    ];
    for (name, layers, output) in &split {
        let share = f64::from(layers + u32::from(*output)) / f64::from(N_LAYER + 1);
        tensors.push(format!(
            "load_tensors: {:>12} model buffer size = {:8.2} MiB",
            name,
            offloaded * share
        ));
    }

    let mut context = vec![
        "llama_context: constructing llama_context".to_string(),
        format!("llama_context: n_seq_max     = {N_SLOTS}"),
        format!("llama_context: n_ctx         = {N_CTX}"),
        "llama_context: n_batch       = 2048".to_string(),
        "llama_context: n_ubatch      = 512".to_string(),
        "llama_context: causal_attn   = 1".to_string(),
        "llama_context: flash_attn    = auto".to_string(),
    ];
    for (name, layers, _) in &split {
        context.push(format!(
            "llama_kv_cache: {:>10} KV buffer size = {:8.2} MiB",
            name,
            KV_MIB_PER_LAYER * f64::from(*layers)
        ));
    }
    let kv_total = KV_MIB_PER_LAYER * f64::from(N_LAYER);
    context.push(format!(
        "llama_kv_cache: size = {:7.2} MiB ({:6} cells, {:3} layers, {}/1 seqs), K (f16): {:7.2} MiB, V (f16): {:7.2} MiB",
        kv_total,
        N_CTX,
        N_LAYER,
        N_SLOTS,
        kv_total / 2.0,
        kv_total / 2.0
    ));
    for (name, _, _) in &split {
        context.push(format!(
            "llama_context: {name:>10} compute buffer size = {:8.2} MiB",
            296.0
        ));
    }
    context.push(format!(
        "llama_context: {:>10} compute buffer size = {:8.2} MiB",
        "CPU", 16.01
    ));
    [meta, tensors, context]
}

/// The unprefixed lines ggml_abort writes straight to stderr (it bypasses the logger),
/// followed by the backtrace glibc's backtrace_symbols_fd prints.
fn crash_lines(rng: &mut XorShift) -> Vec<String> {
    const ASSERTS: [(&str, u32, &str); 2] = [
        (
            "ggml/src/ggml-backend.cpp",
            265,
            "buf != NULL && \"tensor buffer not set\"",
        ),
        ("ggml/src/ggml.c", 3010, "ggml_can_mul_mat(a, b)"),
    ];
    let (file, line, cond) = ASSERTS[(rng.next_u64() % ASSERTS.len() as u64) as usize];
    let base = 0x7f00_0000_0000u64 + (rng.next_u64() & 0xff_ffff) * 0x1000;
    let frames = [
        ("build/bin/libggml-base.so", "", 0x1749bu64),
        ("build/bin/libggml-base.so", "ggml_print_backtrace", 0x21f),
        ("build/bin/libggml-base.so", "ggml_abort", 0x152),
        ("build/bin/libggml-base.so", "", 0x2c8e1),
        ("build/bin/libllama.so", "", 0x9a3f6),
        ("build/bin/libllama.so", "llama_decode", 0x12),
        ("build/bin/llama-server", "", 0x1d8c4c),
    ];
    let mut lines = vec![format!(
        "/opt/llama.cpp/{file}:{line}: GGML_ASSERT({cond}) failed"
    )];
    for (i, (lib, func, off)) in frames.iter().enumerate() {
        let addr = base + (i as u64) * 0x10_0000 + off;
        lines.push(format!("/opt/llama.cpp/{lib}({func}+{off:#x})[{addr:#x}]"));
    }
    lines
}

// ---------------------------------------------------------------------------------
// Output sinks.

/// A line-oriented writer: each line goes out in one `write_all` and is flushed, so
/// concurrent tasks never interleave inside a line and a pipe reader sees whole lines.
struct LineOut {
    out: Mutex<Box<dyn Write + Send>>,
}

impl LineOut {
    fn new(out: impl Write + Send + 'static) -> Self {
        LineOut {
            out: Mutex::new(Box::new(out)),
        }
    }

    fn line(&self, text: &str) {
        let mut buf = String::with_capacity(text.len() + 1);
        buf.push_str(text);
        buf.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed pipe is the supervisor's business, not a reason to crash the demo.
        let _ = out.write_all(buf.as_bytes());
        let _ = out.flush();
    }
}

/// llama.cpp's common logger: `M.SS.mmm.uuu L message`, relative to its creation.
struct SimLog {
    start: Instant,
    out: LineOut,
}

impl SimLog {
    fn new(out: impl Write + Send + 'static) -> Self {
        SimLog {
            start: Instant::now(),
            out: LineOut::new(out),
        }
    }

    fn log(&self, level: Level, msg: &str) {
        let prefix = log_prefix(self.start.elapsed());
        self.out.line(&format!("{prefix} {} {msg}", level.letter()));
    }

    fn info(&self, msg: &str) {
        self.log(Level::Info, msg);
    }

    fn all(&self, lines: &[(Level, String)]) {
        for (level, msg) in lines {
            self.log(*level, msg);
        }
    }

    /// A line written without the logger's prefix (ggml_abort's output).
    fn raw(&self, text: &str) {
        self.out.line(text);
    }

    fn now_us(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX)
    }
}

fn print_preamble(log: &SimLog) {
    log.info(&srv("llama_server", "initializing ..."));
    log.info(&cmn(
        "common_params_print_info",
        "common_params_print_info: verbosity = 3 (adjust with the `-lv N` CLI arg)",
    ));
    log.log(
        Level::Warn,
        &srv(
            "llama_server",
            "security: no API key is set and CORS allows all origins (see https://github.com/ggml-org/llama.cpp/pull/25655)",
        ),
    );
}

// ---------------------------------------------------------------------------------
// The simulated llama-server.

struct Sim {
    args: SimLlamaArgs,
    model_name: String,
    created: u64,
    log: Arc<SimLog>,
    loaded: AtomicBool,
    book: Mutex<SlotBook>,
}

impl Sim {
    fn book(&self) -> MutexGuard<'_, SlotBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Picks a slot and prints the request's opening lines (under the book's lock, so
    /// the slot order in the log matches the order of selection).
    fn begin_request(&self, max_eval: Option<u32>) -> Option<Request> {
        let mut book = self.book();
        let r = book.begin(max_eval)?;
        self.log.all(&open_lines(&r));
        Some(r)
    }

    fn finish_request(&self, r: &Request, path: &str, remote: &str) {
        let mut book = self.book();
        book.finish(r, self.log.now_us());
        self.log.all(&close_lines(r, "POST", path, remote));
    }
}

/// The `/v1/models` (and `/models`) body, OpenAI style with llama.cpp's `meta`.
fn models_json(model_name: &str, created: u64) -> Value {
    json!({
        "object": "list",
        "data": [{
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 1,
                "n_vocab": N_VOCAB,
                "n_ctx_train": N_CTX_TRAIN,
                "n_embd": N_EMBD,
                "n_params": N_PARAMS,
                "size": MODEL_SIZE,
            }
        }]
    })
}

fn timings_json(r: &Request) -> Value {
    let per = |n: u32, ms: f64| if n == 0 { 0.0 } else { ms / f64::from(n) };
    let rate = |n: u32, ms: f64| {
        if ms <= 0.0 {
            0.0
        } else {
            1000.0 * f64::from(n) / ms
        }
    };
    json!({
        "prompt_n": r.prompt_n,
        "prompt_ms": r.prompt_ms,
        "prompt_per_token_ms": per(r.prompt_n, r.prompt_ms),
        "prompt_per_second": rate(r.prompt_n, r.prompt_ms),
        "predicted_n": r.eval_n,
        "predicted_ms": r.eval_ms,
        "predicted_per_token_ms": per(r.eval_n, r.eval_ms),
        "predicted_per_second": rate(r.eval_n, r.eval_ms),
    })
}

fn loading_response() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})),
    )
        .into_response()
}

fn busy_response() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": 503, "message": "no slot available", "type": "unavailable_error"}})),
    )
        .into_response()
}

async fn health(State(sim): State<Arc<Sim>>) -> Response {
    if !sim.is_loaded() {
        return loading_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn models(State(sim): State<Arc<Sim>>) -> Response {
    if !sim.is_loaded() {
        return loading_response();
    }
    Json(models_json(&sim.model_name, sim.created)).into_response()
}

/// The client's token limit, if the body is JSON and names one (`-1` means none).
fn requested_tokens(body: &[u8], keys: &[&str]) -> Option<u32> {
    let v: Value = serde_json::from_slice(body).ok()?;
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_i64))
        .filter(|n| *n >= 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Runs a request through the slots at once and logs it; None while loading or busy.
fn handle_now(sim: &Sim, path: &str, remote: SocketAddr, max_eval: Option<u32>) -> Option<Request> {
    let r = sim.begin_request(max_eval)?;
    sim.finish_request(&r, path, &remote.ip().to_string());
    Some(r)
}

async fn completion(
    State(sim): State<Arc<Sim>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if !sim.is_loaded() {
        return loading_response();
    }
    let max = requested_tokens(&body, &["n_predict", "max_tokens"]);
    let Some(r) = handle_now(&sim, "/completion", remote, max) else {
        return busy_response();
    };
    let limited = max.is_some_and(|m| r.eval_n >= m);
    Json(json!({
        "index": 0,
        "content": ANSWERS[r.answer],
        "tokens": [],
        "id_slot": r.slot,
        "stop": true,
        "model": sim.model_name,
        "tokens_predicted": r.eval_n,
        "tokens_evaluated": r.prompt_n,
        "has_new_line": false,
        "truncated": false,
        "stop_type": if limited { "limit" } else { "eos" },
        "stopping_word": "",
        "tokens_cached": (r.prompt_n + r.eval_n).saturating_sub(1),
        "timings": timings_json(&r),
    }))
    .into_response()
}

async fn chat_completions(
    State(sim): State<Arc<Sim>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if !sim.is_loaded() {
        return loading_response();
    }
    let max = requested_tokens(&body, &["max_completion_tokens", "max_tokens", "n_predict"]);
    let Some(r) = handle_now(&sim, "/v1/chat/completions", remote, max) else {
        return busy_response();
    };
    let id = {
        let mut book = sim.book();
        format!(
            "chatcmpl-{:016x}{:016x}",
            book.rng.next_u64(),
            book.rng.next_u64()
        )
    };
    let limited = max.is_some_and(|m| r.eval_n >= m);
    Json(json!({
        "choices": [{
            "finish_reason": if limited { "length" } else { "stop" },
            "index": 0,
            "message": {"role": "assistant", "content": ANSWERS[r.answer].trim_start()},
        }],
        "created": unix_now(),
        "model": sim.model_name,
        "system_fingerprint": "b0000-corral-sim",
        "object": "chat.completion",
        "usage": {
            "completion_tokens": r.eval_n,
            "prompt_tokens": r.prompt_n,
            "total_tokens": r.prompt_n + r.eval_n,
        },
        "id": id,
        "timings": timings_json(&r),
    }))
    .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}),
        ),
    )
        .into_response()
}

fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/models", get(models))
        .route("/v1/models", get(models))
        .route("/completion", post(completion))
        .route("/completions", post(completion))
        .route("/v1/completions", post(completion))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .fallback(not_found)
        .with_state(sim)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() && s > 0.0 { s } else { 0.0 })
}

/// Prints the model load over `load_secs`, then flips /health to 200.
async fn load_model(sim: &Sim, port: u16) {
    let log = &sim.log;
    let load = sim.args.load_secs;
    log.info(&srv(
        "load_model",
        &format!("loading model '{}'", sim.args.model),
    ));
    let [meta, tensors, context] = loader_phases(&sim.args.model, &sim.args.rpc);
    tokio::time::sleep(secs(load * 0.1)).await;
    meta.iter().for_each(|l| log.info(l));
    tokio::time::sleep(secs(load * 0.1)).await;
    tensors.iter().for_each(|l| log.info(l));
    // Reading the tensor data is where the time goes.
    tokio::time::sleep(secs(load * 0.6)).await;
    context.iter().for_each(|l| log.info(l));
    tokio::time::sleep(secs(load * 0.2)).await;
    log.info(&cmn(
        "init",
        &format!("llama threadpool init, n_threads = {N_THREADS}"),
    ));
    log.info(&srv(
        "load_model",
        &format!("initializing, n_slots = {N_SLOTS}, n_ctx_slot = {N_CTX}, kv_unified = 'true'"),
    ));
    log.info(&srv("llama_server", "model loaded"));
    log.info(&srv(
        "llama_server",
        &format!("listening on http://{}:{}", sim.args.host, port),
    ));
    sim.loaded.store(true, Ordering::Release);
}

/// Simulated clients: a request every `request_interval` seconds (±50%), each holding
/// its slot for as long as its printed timings say. Requests overlap, as they do on a
/// server with several slots; one that finds every slot busy is dropped.
async fn request_loop(sim: &Arc<Sim>) {
    let mean = sim.args.request_interval.max(0.05);
    // Dropped (and its tasks aborted) when the simulation ends.
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let (wait, chat) = {
            let mut book = sim.book();
            (book.rng.jitter(mean, 0.5), book.rng.unit() < 0.5)
        };
        tokio::time::sleep(secs(wait)).await;
        while in_flight.try_join_next().is_some() {}
        let Some(r) = sim.begin_request(None) else {
            continue;
        };
        let path = if chat {
            "/v1/chat/completions"
        } else {
            "/completion"
        };
        let sim = Arc::clone(sim);
        in_flight.spawn(async move {
            tokio::time::sleep(secs(r.total_ms() / 1000.0)).await;
            sim.finish_request(&r, path, "127.0.0.1");
        });
    }
}

/// The backends' side of the story, as with the real coordinator: a few short
/// connections to each RPC backend while setting up, then one held open while
/// serving, so a (simulated) rpc-server logs the connects and, when this process
/// stops or dies, the close. Unreachable backends are skipped without a word: the
/// demo must not depend on the order in which its processes start.
async fn hold_rpc_connections(rpc: String) {
    async fn connect(endpoint: &str) -> Option<TcpStream> {
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(endpoint))
            .await
            .ok()?
            .ok()
    }
    let mut held = Vec::new();
    for endpoint in rpc_endpoints(&rpc) {
        for _ in 0..2 {
            drop(connect(endpoint).await);
        }
        held.extend(connect(endpoint).await);
    }
    // Held until this task is aborted, or the process exits.
    let _held = held;
    std::future::pending::<()>().await;
}

/// Load, serve, and (unless `crash_after` is 0) crash after `crash_after` ±30% seconds.
async fn lifecycle(sim: &Arc<Sim>, port: u16) -> SimExit {
    let backends = tokio::spawn(hold_rpc_connections(sim.args.rpc.clone()));
    let _backends = AbortOnDrop(backends.abort_handle());
    load_model(sim, port).await;
    let requests = request_loop(sim);
    if sim.args.crash_after > 0.0 {
        let after = sim.book().rng.jitter(sim.args.crash_after, 0.3);
        tokio::select! {
            () = tokio::time::sleep(secs(after)) => {}
            () = requests => {}
        }
        let lines = crash_lines(&mut sim.book().rng);
        lines.iter().for_each(|l| sim.log.raw(l));
        SimExit::Crashed {
            code: CRASH_EXIT_CODE,
        }
    } else {
        requests.await;
        std::future::pending().await
    }
}

/// Aborts the HTTP server task when the simulation ends, so the port is released.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the simulated llama-server on an already bound listener, logging to `log`,
/// until it crashes or `shutdown` completes. Never exits the process: the caller maps
/// the returned `SimExit` to an exit code (tests bind port 0 and pass a buffer).
pub async fn serve_llama<W, F>(
    listener: TcpListener,
    args: SimLlamaArgs,
    log: W,
    shutdown: F,
) -> anyhow::Result<SimExit>
where
    W: Write + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let log = Arc::new(SimLog::new(log));
    print_preamble(&log);
    let port = listener.local_addr()?.port();
    let model_name = Path::new(&args.model)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.model.clone());
    let sim = Arc::new(Sim {
        model_name,
        created: unix_now(),
        log,
        loaded: AtomicBool::new(false),
        book: Mutex::new(SlotBook::new(
            args.seed.unwrap_or_else(|| u64::from(std::process::id())),
        )),
        args,
    });

    // Like the real server, answer HTTP (503) while the model loads.
    let app = router(sim.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let mut server = tokio::spawn(async move { axum::serve(listener, app).await });
    let _abort = AbortOnDrop(server.abort_handle());

    tokio::select! {
        biased;
        () = shutdown => {
            sim.log.info(&srv("operator()", "operator(): cleaning up before exit..."));
            Ok(SimExit::Stopped)
        }
        exit = lifecycle(&sim, port) => Ok(exit),
        res = &mut server => match res {
            Ok(Ok(())) => anyhow::bail!("HTTP server stopped unexpectedly"),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("HTTP server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("HTTP server task failed")),
        },
    }
}

/// Resolves on the first SIGTERM or SIGINT; the handlers are installed immediately.
fn termination_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// `corral sim-llama-server`: a simulated llama-server logging to stderr. Exits the
/// process with 1 if the port cannot be bound and with 134 when the simulated crash
/// fires; returns Ok(()) (exit 0) on SIGTERM/SIGINT.
pub async fn llama_server(args: SimLlamaArgs) -> anyhow::Result<()> {
    let shutdown = termination_signal()?;
    let listener = match TcpListener::bind((args.host.as_str(), args.port)).await {
        Ok(listener) => listener,
        Err(_) => {
            let log = SimLog::new(std::io::stderr());
            print_preamble(&log);
            log.log(
                Level::Error,
                &srv(
                    "start",
                    &format!(
                        "couldn't bind HTTP server socket, hostname: {}, port: {}",
                        args.host, args.port
                    ),
                ),
            );
            log.info(&srv("operator()", "operator(): cleaning up before exit..."));
            log.log(
                Level::Error,
                &srv("llama_server", "exiting due to HTTP server error"),
            );
            std::process::exit(1);
        }
    };
    match serve_llama(listener, args, std::io::stderr(), shutdown).await? {
        SimExit::Stopped => Ok(()),
        SimExit::Crashed { code } => {
            let _ = std::io::stderr().flush();
            std::process::exit(code);
        }
    }
}

// ---------------------------------------------------------------------------------
// The simulated rpc-server.

/// The banner rpc-server prints on start (stdout).
fn rpc_banner(endpoint: &str, mem_mib: u64) -> Vec<String> {
    vec![
        "Starting RPC server v7.0.0".to_string(),
        format!("  endpoint       : {endpoint}"),
        "  local cache    : n/a".to_string(),
        "Devices:".to_string(),
        format!("  CPU: corral simulated device ({mem_mib} MiB, {mem_mib} MiB free)"),
        "  transport      : TCP".to_string(),
    ]
}

/// Reads and discards everything the peer sends, until it closes or errors.
async fn drain(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Runs the simulated rpc-server on an already bound listener, writing its stdout
/// lines to `out`, until `shutdown` completes. Like the real rpc-server it serves one
/// client at a time, so every "Accepted" is followed by its "closed" before the next.
pub async fn serve_rpc<W, F>(
    listener: TcpListener,
    args: SimRpcArgs,
    out: W,
    shutdown: F,
) -> anyhow::Result<()>
where
    W: Write + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let out = LineOut::new(out);
    let port = listener.local_addr()?.port();
    for line in rpc_banner(&format!("{}:{}", args.host, port), args.mem_mib) {
        out.line(&line);
    }
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                // Out of file descriptors and the like: wait, then accept again.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        out.line("Accepted client connection");
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = drain(stream) => out.line("Client connection closed"),
        }
    }
    Ok(())
}

/// `corral sim-rpc-server`: a simulated rpc-server printing to stdout. Exits the
/// process with 1 if the port cannot be bound; returns Ok(()) on SIGTERM/SIGINT.
pub async fn rpc_server(args: SimRpcArgs) -> anyhow::Result<()> {
    let shutdown = termination_signal()?;
    let listener = match TcpListener::bind((args.host.as_str(), args.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "Failed to create server socket on {}:{}: {e}",
                args.host,
                args.port
            );
            std::process::exit(1);
        }
    };
    serve_rpc(listener, args, std::io::stdout(), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::oneshot;

    /// A `Write` the test can read back while the simulator still holds it.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        async fn wait_for(&self, needle: &str) {
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                while !self.text().contains(needle) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(waited.is_ok(), "no {needle:?} in output:\n{}", self.text());
        }
    }

    /// A raw HTTP/1.1 exchange; returns the status and the body.
    async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_string())
    }

    fn args(load_secs: f64) -> SimLlamaArgs {
        SimLlamaArgs {
            host: "127.0.0.1".into(),
            port: 0,
            model: "models/demo-7b-q4_k_m.gguf".into(),
            rpc: "10.0.0.2:50052,10.0.0.3:50052".into(),
            load_secs,
            request_interval: 3600.0,
            crash_after: 0.0,
            seed: Some(7),
        }
    }

    struct Running {
        addr: SocketAddr,
        log: Capture,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<anyhow::Result<SimExit>>,
    }

    async fn start(args: SimLlamaArgs) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Capture::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_llama(listener, args, log.clone(), async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            log,
            stop,
            task,
        }
    }

    async fn wait_ready(addr: SocketAddr) {
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if http(addr, "GET", "/health", "").await.0 == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "health never became 200");
    }

    const TIMING_RE: &str = r"^slot print_timing: id +\d+ \| task \d+ \| (prompt eval time|       eval time) = +(\d+\.\d{2}) ms / +(\d+) tokens \( +(\d+\.\d{2}) ms per token, +(\d+\.\d{2}) tokens per second\)$";
    const TOTAL_RE: &str = r"^slot print_timing: id +\d+ \| task \d+ \|       total time = +\d+\.\d{2} ms / +\d+ tokens$";

    #[test]
    fn log_prefix_is_minutes_seconds_millis_micros() {
        assert_eq!(log_prefix(Duration::from_micros(2_485)), "0.00.002.485");
        assert_eq!(log_prefix(Duration::from_micros(7_439_640)), "0.07.439.640");
        assert_eq!(
            log_prefix(Duration::from_micros(61_002_485)),
            "1.01.002.485"
        );
    }

    #[test]
    fn tags_match_the_fixture_layout() {
        assert_eq!(
            srv("load_model", "loading model 'tiny.gguf'"),
            "srv    load_model: loading model 'tiny.gguf'"
        );
        assert_eq!(
            cmn("init", "llama threadpool init, n_threads = 2"),
            "cmn          init: llama threadpool init, n_threads = 2"
        );
        assert_eq!(
            slot_line(
                "get_available_slot",
                3,
                -1,
                "selected slot by LRU, t_last = -1"
            ),
            "slot get_availabl: id  3 | task -1 | selected slot by LRU, t_last = -1"
        );
        assert_eq!(
            srv("operator()", "operator(): cleaning up before exit..."),
            "srv    operator(): operator(): cleaning up before exit..."
        );
    }

    fn fixture_request() -> Request {
        Request {
            slot: 3,
            task: 0,
            t_last: -1,
            prompt_n: 6,
            prompt_ms: 6000.0 / 4758.13,
            eval_n: 120,
            eval_ms: 120_000.0 / 3404.38,
            graphs_reused: 119,
            warning: None,
            answer: 0,
        }
    }

    #[test]
    fn timing_lines_match_the_fixture() {
        let lines = timing_lines(&fixture_request());
        // Copied from shared/fixtures/llama-server/startup-requests-stop.stderr.log.
        assert_eq!(
            lines[0],
            "slot print_timing: id  3 | task 0 | prompt eval time =       1.26 ms /     6 tokens (    0.21 ms per token,  4758.13 tokens per second)"
        );
        assert_eq!(
            lines[3],
            "slot print_timing: id  3 | task 0 |    graphs reused =        119"
        );
        let fixture = [
            "slot print_timing: id  3 | task 0 | prompt eval time =       1.26 ms /     6 tokens (    0.21 ms per token,  4758.13 tokens per second)",
            "slot print_timing: id  3 | task 0 |        eval time =      34.95 ms /   120 tokens (    0.29 ms per token,  3404.38 tokens per second)",
            "slot print_timing: id  2 | task 121 | prompt eval time =       1.26 ms /    29 tokens (    0.04 ms per token, 23052.46 tokens per second)",
        ];
        let re = Regex::new(TIMING_RE).unwrap();
        for line in fixture
            .iter()
            .copied()
            .chain(lines[0..2].iter().map(String::as_str))
        {
            assert!(re.is_match(line), "{line}");
        }
        assert!(
            Regex::new(TOTAL_RE).unwrap().is_match(&lines[2]),
            "{}",
            lines[2]
        );
        assert!(Regex::new(TOTAL_RE).unwrap().is_match(
            "slot print_timing: id  3 | task 0 |       total time =      36.22 ms /   126 tokens"
        ));
    }

    #[test]
    fn printed_rates_are_self_consistent() {
        let re = Regex::new(TIMING_RE).unwrap();
        let mut book = SlotBook::new(42);
        for _ in 0..200 {
            let r = book.begin(None).unwrap();
            book.finish(&r, 1);
            for line in &timing_lines(&r)[0..2] {
                let c = re.captures(line).unwrap_or_else(|| panic!("{line}"));
                let ms: f64 = c[2].parse().unwrap();
                let n: f64 = c[3].parse().unwrap();
                let per_tok: f64 = c[4].parse().unwrap();
                let per_s: f64 = c[5].parse().unwrap();
                assert!((per_s - n / ms * 1000.0).abs() / per_s < 0.01, "{line}");
                assert!((per_tok - ms / n).abs() <= 0.006, "{line}");
            }
        }
    }

    #[test]
    fn slots_are_chosen_like_llama_server() {
        let mut book = SlotBook::new(1);
        let a = book.begin(None).unwrap();
        assert_eq!((a.slot, a.task, a.t_last), (3, 0, -1));
        let b = book.begin(None).unwrap();
        assert_eq!((b.slot, b.task, b.t_last), (2, i64::from(a.eval_n) + 1, -1));
        book.finish(&a, 1000);
        book.finish(&b, 2000);
        let c = book.begin(None).unwrap();
        assert_eq!((c.slot, c.t_last), (1, -1));
        let d = book.begin(None).unwrap();
        let e = book.begin(None).unwrap();
        assert_eq!((d.slot, e.slot, e.t_last), (0, 3, 1000));
        let f = book.begin(None).unwrap();
        assert_eq!((f.slot, f.t_last), (2, 2000));
        assert!(book.begin(None).is_none(), "all four slots are busy");
        let close = close_lines(&a, "POST", "/completion", "127.0.0.1");
        assert_eq!(
            close[4].1,
            format!(
                "slot      release: id  3 | task 0 | stop processing: n_tokens = {}, truncated = 0",
                a.prompt_n + a.eval_n - 1
            )
        );
        assert_eq!(
            close[5].1,
            "srv  log_server_r: done request: POST /completion 127.0.0.1 200"
        );
    }

    #[test]
    fn warnings_come_about_one_request_in_eight() {
        let mut book = SlotBook::new(3);
        let mut warned = 0;
        for i in 0..800 {
            let r = book.begin(None).unwrap();
            book.finish(&r, i);
            warned += usize::from(r.warning.is_some());
        }
        assert!(
            (50..150).contains(&warned),
            "{warned} warnings in 800 requests"
        );
    }

    #[test]
    fn same_seed_same_numbers() {
        let run = |seed| {
            let mut book = SlotBook::new(seed);
            (0..20)
                .map(|i| {
                    let r = book.begin(None).unwrap();
                    book.finish(&r, i);
                    r
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn loader_lines_describe_the_rpc_split() {
        let [meta, tensors, _context] = loader_phases("m.gguf", "10.0.0.2:50052, 10.0.0.3:50052");
        assert_eq!(
            meta[0],
            "llama_model_loader: loaded meta data with 22 key-value pairs and 291 tensors from m.gguf (version GGUF V3 (latest))"
        );
        assert!(meta.contains(&"llama_model_loader: - kv   0:                       general.architecture str              = llama".to_string()));
        assert!(meta.contains(&"llama_model_loader: - type  f32:   65 tensors".to_string()));
        assert!(meta.contains(&"print_info: file size   = 4.07 GiB (5.19 BPW)".to_string()));
        assert!(tensors.contains(&"load_tensors: offloaded 33/33 layers to GPU".to_string()));
        assert!(tensors
            .contains(&"load_tensors:   CPU_Mapped model buffer size =    70.31 MiB".to_string()));
        let rpc: Vec<_> = tensors.iter().filter(|l| l.contains("RPC[")).collect();
        assert_eq!(rpc.len(), 2);
        assert!(rpc[0].starts_with("load_tensors: RPC[10.0.0.2:50052] model buffer size =  "));
        // The buffers add up to the model size.
        let re = Regex::new(r"model buffer size = +(\d+\.\d+) MiB").unwrap();
        let sum: f64 = tensors
            .iter()
            .filter_map(|l| re.captures(l).map(|c| c[1].parse::<f64>().unwrap()))
            .sum();
        assert!((sum - MODEL_SIZE as f64 / MIB).abs() < 0.05, "{sum}");
    }

    #[test]
    fn crash_line_has_ggml_abort_shape() {
        let lines = crash_lines(&mut XorShift::new(1));
        let re = Regex::new(r"^/\S+\.(c|cpp):\d+: GGML_ASSERT\(.+\) failed$").unwrap();
        assert!(re.is_match(&lines[0]), "{}", lines[0]);
    }

    #[tokio::test]
    async fn health_goes_from_503_to_200_after_loading() {
        let t0 = Instant::now();
        let sim = start(args(1.0)).await;
        let (status, body) = http(sim.addr, "GET", "/health", "").await;
        assert_eq!(status, 503);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
        );
        assert_eq!(http(sim.addr, "GET", "/v1/models", "").await.0, 503);

        wait_ready(sim.addr).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(950),
            "ready before its load time"
        );
        let (_, body) = http(sim.addr, "GET", "/health", "").await;
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"status": "ok"})
        );

        let log = sim.log.text();
        let port = sim.addr.port();
        let prefix = Regex::new(r"^\d+\.\d{2}\.\d{3}\.\d{3} [IWE] ").unwrap();
        assert!(log.lines().all(|l| prefix.is_match(l)), "{log}");
        let loaded = log
            .find("I srv  llama_server: model loaded")
            .expect("model loaded");
        let listening = log
            .find(&format!(
                "I srv  llama_server: listening on http://127.0.0.1:{port}"
            ))
            .expect("listening line");
        assert!(
            log.find("srv    load_model: loading model 'models/demo-7b-q4_k_m.gguf'")
                .unwrap()
                < loaded
        );
        assert!(loaded < listening);
        assert!(log.contains("load_tensors: RPC[10.0.0.3:50052] model buffer size ="));

        sim.stop.send(()).unwrap();
        assert_eq!(sim.task.await.unwrap().unwrap(), SimExit::Stopped);
        assert!(sim
            .log
            .text()
            .ends_with("I srv    operator(): operator(): cleaning up before exit...\n"));
    }

    #[tokio::test]
    async fn models_endpoint_has_openai_shape() {
        let sim = start(args(0.0)).await;
        wait_ready(sim.addr).await;
        for path in ["/v1/models", "/models"] {
            let (status, body) = http(sim.addr, "GET", path, "").await;
            assert_eq!(status, 200);
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["object"], "list");
            let m = &v["data"][0];
            assert_eq!(m["id"], "demo-7b-q4_k_m.gguf");
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "llamacpp");
            assert!(m["created"].as_u64().unwrap() > 1_600_000_000);
            assert_eq!(
                m["meta"],
                json!({"vocab_type": 1, "n_vocab": 32000, "n_ctx_train": 4096, "n_embd": 4096,
                       "n_params": 6738415616u64, "size": 4368438272u64})
            );
        }
        sim.stop.send(()).unwrap();
        sim.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn completion_answers_and_logs_its_timings() {
        let sim = start(args(0.0)).await;
        wait_ready(sim.addr).await;
        let (status, body) = http(
            sim.addr,
            "POST",
            "/completion",
            r#"{"prompt": "Hello", "n_predict": 8}"#,
        )
        .await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["content"].as_str().unwrap().len() > 5);
        assert_eq!(v["tokens_predicted"], 8);

        let (status, body) = http(
            sim.addr,
            "POST",
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        )
        .await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");

        let log = sim.log.text();
        let timing = Regex::new(TIMING_RE).unwrap();
        let bodies: Vec<&str> = log.lines().map(|l| &l[15..]).collect();
        assert_eq!(
            bodies.iter().filter(|l| timing.is_match(l)).count(),
            4,
            "{log}"
        );
        assert!(bodies
            .iter()
            .any(|l| l.contains("|        eval time = ") && l.contains("/     8 tokens")));
        assert!(log
            .contains("I slot get_availabl: id  3 | task -1 | selected slot by LRU, t_last = -1"));
        assert!(log.contains("I srv  log_server_r: done request: POST /completion 127.0.0.1 200"));
        assert!(log.contains(
            "I srv  log_server_r: done request: POST /v1/chat/completions 127.0.0.1 200"
        ));
        sim.stop.send(()).unwrap();
        sim.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn background_requests_print_timings() {
        let mut a = args(0.0);
        a.request_interval = 0.05;
        let sim = start(a).await;
        // Requests overlap, so a second slot gets used; then one completes.
        sim.log
            .wait_for("I slot get_availabl: id  2 | task -1 | selected slot by LRU")
            .await;
        sim.log.wait_for("I slot      release: id  ").await;
        let log = sim.log.text();
        let timing = Regex::new(TIMING_RE).unwrap();
        assert!(log.lines().any(|l| timing.is_match(&l[15..])), "{log}");
        sim.stop.send(()).unwrap();
        sim.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn crash_prints_ggml_assert_and_reports_134() {
        let mut a = args(0.05);
        a.crash_after = 0.1;
        let sim = start(a).await;
        let exit = tokio::time::timeout(Duration::from_secs(10), sim.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(exit, SimExit::Crashed { code: 134 });
        let log = sim.log.text();
        let assert_line = log
            .lines()
            .find(|l| l.contains("GGML_ASSERT("))
            .expect("assert line");
        assert!(
            assert_line.starts_with("/opt/llama.cpp/ggml/src/")
                && assert_line.ends_with(") failed")
        );
        // The port is released once the simulation ends.
        assert!(TcpStream::connect(sim.addr).await.is_err());
    }

    #[tokio::test]
    async fn coordinator_connects_to_rpc_backends_and_closes_on_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let out = Capture::default();
        let (stop_rpc, rpc_stopped) = oneshot::channel::<()>();
        let rpc_args = SimRpcArgs {
            host: "127.0.0.1".into(),
            port: 0,
            mem_mib: 1024,
        };
        let rpc = tokio::spawn(serve_rpc(listener, rpc_args, out.clone(), async {
            let _ = rpc_stopped.await;
        }));

        let mut a = args(0.0);
        a.rpc = format!("{backend}");
        let sim = start(a).await;
        wait_ready(sim.addr).await;
        let count = |needle: &str| out.text().matches(needle).count();
        let all_three = tokio::time::timeout(Duration::from_secs(10), async {
            while count("Accepted client connection") < 3 || count("Client connection closed") < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(all_three.is_ok(), "{}", out.text());
        assert!(sim
            .log
            .text()
            .contains(&format!("load_tensors: RPC[{backend}] model buffer size =")));

        sim.stop.send(()).unwrap();
        sim.task.await.unwrap().unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while count("Client connection closed") < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "{}", out.text());
        stop_rpc.send(()).unwrap();
        rpc.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn rpc_server_prints_banner_and_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let out = Capture::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let args = SimRpcArgs {
            host: "127.0.0.1".into(),
            port: 0,
            mem_mib: 24576,
        };
        let task = tokio::spawn(serve_rpc(listener, args, out.clone(), async {
            let _ = stopped.await;
        }));

        let mut client = TcpStream::connect(addr).await.unwrap();
        out.wait_for("Accepted client connection\n").await;
        client.write_all(&[14u8; 64]).await.unwrap();
        drop(client);
        out.wait_for("Client connection closed\n").await;

        let expected = format!(
            "Starting RPC server v7.0.0\n  endpoint       : 127.0.0.1:{}\n  local cache    : n/a\nDevices:\n  \
             CPU: corral simulated device (24576 MiB, 24576 MiB free)\n  transport      : TCP\n\
             Accepted client connection\nClient connection closed\n",
            addr.port()
        );
        assert_eq!(out.text(), expected);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
