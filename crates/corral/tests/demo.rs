//! `corral demo` (the simulated llama.cpp fleet), the event stream, and `corral parse`.

mod common;

use common::{cli, wait_for, Daemon, DaemonOpts};
use futures_util::StreamExt;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_a_simulated_fleet_that_reports_events_and_metrics() {
    let d = Daemon::start_with(DaemonOpts::args(&["--heartbeat-interval", "0.5"])).await;
    let out = d.cli(&["demo", "--detach"]).await.ok();
    let text = out.stdout();
    assert!(
        text.contains("corral") && text.contains("monitor coordinator"),
        "{text}"
    );
    for name in ["rpc0", "rpc1"] {
        d.wait_task_status(name, "ready").await;
    }
    wait_for(
        "the simulated coordinator to be ready",
        Duration::from_secs(60),
        || async {
            let (_, s) = d.get("/llama/coordinator/status").await;
            (s["status"] == "ready" && s["models"].as_array().is_some_and(|m| !m.is_empty()))
                .then_some(())
        },
    )
    .await;

    // Live events over SSE: the simulated requests become metrics events.
    let resp = d
        .request(
            reqwest::Method::GET,
            "/events?type=metrics&task=coordinator",
        )
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("\"event_type\":\"metrics\"") && seen.contains("tokens_per_second") {
                break;
            }
        }
    })
    .await
    .expect("a metrics event within 60 s");
    assert!(seen.contains("id: "), "SSE events carry ids: {seen}");

    let metrics = d.metrics().await;
    assert!(
        metrics.contains("corral_tasks{status=\"ready\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_llama_requests_total{task=\"coordinator\""),
        "{metrics}"
    );
    // The coordinator's own heartbeat.
    d.wait_events(
        "component=coordinator&type=heartbeat",
        "a coordinator heartbeat",
        |evs| {
            evs.iter().any(|e| {
                let det = &e["details"];
                det["status"] == "ready"
                    && det["port"].as_u64().is_some()
                    && det["rpc_backends"].as_array().is_some_and(|b| b.len() == 2)
                    && det["model"].as_str().is_some()
            })
        },
    )
    .await;
    // The simulated coordinator connects to its backends, which log it.
    d.wait_events(
        "component=rpc_backend&type=connect",
        "rpc connect events",
        |evs| evs.iter().any(|e| e["task"] == "rpc0"),
    )
    .await;
}

#[tokio::test]
async fn parse_turns_a_saved_log_into_events() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../corral-core/tests/fixtures/llama/startup-requests-stop.stderr.log"
    );
    let out = cli(&["parse", fixture], &[]).await.ok();
    let events = out.ndjson();
    let metrics: Vec<_> = events
        .iter()
        .filter(|e| e["event_type"] == "metrics")
        .collect();
    assert_eq!(metrics.len(), 2, "{events:?}");
    assert_eq!(metrics[0]["details"]["eval_tokens"], 120);
    assert!(events
        .iter()
        .any(|e| e["event_type"] == "start" && e["details"]["port"] == 18134));
    assert!(events.iter().all(|e| e["line_no"].as_u64().is_some()));

    let missing = cli(&["parse", "/nonexistent.log"], &[]).await;
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("/nonexistent.log"),
        "{}",
        missing.stderr
    );
}
