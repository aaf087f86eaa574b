//! `corral gpu` and `GET /api/v1/gpu` against a real daemon. On a machine without an
//! NVIDIA driver (where the suite runs) the answer is `available: false` with the reason,
//! the CLI says so and succeeds; on a machine with one, the GPUs are listed instead
//! (`scripts/gpu-check.sh` checks that side in full). Either way every assertion runs.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// What "well under a second" means for an answer from the cache or a missing driver.
const QUICK: Duration = Duration::from_millis(500);

#[tokio::test]
async fn gpu_answers_quickly_and_says_why_there_is_none() {
    let d = Daemon::start().await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        let (status, v) = d.get("/gpu").await;
        let took = t.elapsed();
        assert_eq!(status, 200, "{v}");
        assert!(took < QUICK, "GET /api/v1/gpu took {took:?}");
        answers.push(v);
    }
    let v = &answers[0];
    assert_eq!(v["available"], answers[1]["available"]);
    assert!(v["taken_at"].as_f64().unwrap() > 0.0, "{v}");

    let json = d.cli(&["gpu", "--json"]).await.ok().json();
    let text = d.cli(&["gpu"]).await.ok().stdout();
    let metrics = d.metrics().await;
    if v["available"] == false {
        let why = v["reason"].as_str().unwrap();
        assert!(why.starts_with("no NVIDIA GPU or driver found ("), "{why}");
        assert_eq!(v["gpus"], serde_json::json!([]), "{v}");
        assert_eq!(json["available"], false, "{json}");
        assert!(
            json["reason"]
                .as_str()
                .unwrap()
                .starts_with("no NVIDIA GPU or driver found ("),
            "{json}"
        );
        assert!(
            text.starts_with("no NVIDIA GPU or driver found ("),
            "{text}"
        );
        assert!(!metrics.contains("corral_gpu_"), "{metrics}");
    } else {
        let gpus = json["gpus"].as_array().unwrap();
        assert!(!gpus.is_empty(), "{json}");
        assert!(
            gpus[0]["memory_total_bytes"].as_u64().unwrap() > 0,
            "{json}"
        );
        assert!(text.contains("GPU 0"), "{text}");
        assert!(
            metrics.contains("corral_gpu_memory_total_bytes{gpu=\"0\"}"),
            "{metrics}"
        );
    }
}

fn gpu_posts(got: &std::sync::Arc<std::sync::Mutex<Vec<Got>>>) -> Vec<serde_json::Value> {
    at(got, "/gpu")
        .iter()
        .map(|g| serde_json::from_str(&g.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_tasks_run_publishes_the_gpu_state_and_gpu_memory_alerts_fire_and_resolve() {
    let (port, got) = receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_nvidia_smi(tmp.path(), 1024);
    let cfg = tmp.path().join("corral.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[alerts]]
name = "gpu-mem"
url = "http://127.0.0.1:{port}/gpu"
metric = "gpu_memory_share"
above = 0.9
for = "1s"
group = "1m"
"#
        ),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let d = Daemon::start_with(DaemonOpts {
        env: vec![
            ("PATH".into(), path),
            ("CORRAL_GPU_SOURCE".into(), "nvidia-smi".into()),
        ],
        ..DaemonOpts::args(&["--config", cfg.to_str().unwrap()])
    })
    .await;

    // A GPU task (it says so with a `gpu` label): its pid becomes the GPU's process.
    let pid_file = tmp.path().join("pid");
    let gate = tmp.path().join("gate");
    let script = format!(
        "echo $$ > {p}; while [ ! -e {g} ]; do sleep 0.05; done",
        p = pid_file.display(),
        g = gate.display()
    );
    let run = d
        .run_task("trainer", &["--label", "gpu=1"], &["sh", "-c", &script])
        .await;
    let evs = d
        .wait_events(
            "task=trainer&type=status",
            "the GPU state at the start",
            |e| e.iter().any(|e| e["details"]["gpu_snapshot"] == "start"),
        )
        .await;
    let start = evs
        .iter()
        .find(|e| e["details"]["gpu_snapshot"] == "start")
        .unwrap();
    assert_eq!(start["run_id"], run.as_str());
    assert!(
        start["message"].as_str().unwrap().starts_with(
            "GPUs as trainer's run starts: GPU 0 NVIDIA H100 80GB HBM3: 1.0/79.6 GiB, 37% busy"
        ),
        "{start}"
    );
    assert_eq!(start["details"]["source"], "nvidia-smi");
    assert_eq!(
        start["details"]["gpus"][0]["memory_total_bytes"],
        81559u64 * 1024 * 1024
    );

    // `GET /gpu` ties the process to the task and run.
    let pid: u32 = wait_for("the task's pid file", DEADLINE, || async {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    let v = wait_for("the process on the GPU", DEADLINE, || async {
        let (_, v) = d.get("/gpu").await;
        (v["gpus"][0]["processes"][0]["pid"] == pid).then_some(v)
    })
    .await;
    assert_eq!(v["gpus"][0]["processes"][0]["task"], "trainer", "{v}");
    assert_eq!(v["gpus"][0]["processes"][0]["run_id"], run.as_str(), "{v}");
    // `/metrics`: the task's GPU memory, labelled by task, run, model (none: not a
    // llama server) and GPU. nvidia-smi gives no per-process utilization: no series.
    let metrics = d.metrics().await;
    let want = format!(
        "corral_gpu_task_memory_bytes{{task=\"trainer\",run_id=\"{run}\",model=\"\",gpu=\"0\"}} {}",
        1024u64 * 1024 * 1024
    );
    assert!(
        metrics.lines().any(|l| l == want),
        "no `{want}` in\n{metrics}"
    );
    assert!(
        !metrics.contains("corral_gpu_task_utilization_percent{"),
        "{metrics}"
    );

    // Memory above 90% for a second: one alert naming the GPU and who is on it.
    std::fs::write(tmp.path().join("mem_used"), "78000\n").unwrap();
    let alert = wait_for("the GPU memory alert", DEADLINE, || async {
        gpu_posts(&got).into_iter().find(|m| m["kind"] == "alert")
    })
    .await;
    assert_eq!(alert["rule"], "gpu-mem");
    assert_eq!(alert["task"], "gpu:0");
    let text = alert["text"].as_str().unwrap();
    assert!(
        text.contains(
            "GPU 0 (NVIDIA H100 80GB HBM3) memory 96% used (76.2 of 79.6 GiB), above 90%"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("trainer (pid {pid}) 76.2 GiB")),
        "{text}"
    );
    // Back under the share: resolved, once.
    std::fs::write(tmp.path().join("mem_used"), "2048\n").unwrap();
    let resolved = wait_for("the resolution", DEADLINE, || async {
        gpu_posts(&got)
            .into_iter()
            .find(|m| m["kind"] == "resolved")
    })
    .await;
    assert!(
        resolved["text"].as_str().unwrap().contains("3% again"),
        "{resolved}"
    );
    let alerts = gpu_posts(&got)
        .iter()
        .filter(|m| m["kind"] == "alert")
        .count();
    assert_eq!(alerts, 1, "{:?}", gpu_posts(&got));

    // The run ends: the GPU state again.
    std::fs::write(&gate, "").unwrap();
    d.wait_run_end(&run).await;
    d.wait_events(
        "task=trainer&type=status",
        "the GPU state at the end",
        |e| e.iter().any(|e| e["details"]["gpu_snapshot"] == "end"),
    )
    .await;

    // A task that says nothing of GPUs publishes no GPU state.
    let plain = d.run_task("plain", &[], &["true"]).await;
    d.wait_run_end(&plain).await;
    let evs = d.events("task=plain").await;
    assert!(
        evs.iter()
            .all(|e| e["details"].get("gpu_snapshot").is_none()),
        "{evs:?}"
    );
}
