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
