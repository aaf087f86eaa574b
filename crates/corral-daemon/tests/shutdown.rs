//! The daemon's shutdown with streams open: every task is stopped, the open event and log
//! streams deliver their last events and end cleanly, and the daemon returns promptly,
//! with no fixed wait.

use corral_daemon::bus::ObserverConfig;
use corral_daemon::kinds::llama::LlamaConfig;
use corral_daemon::logbook::LogConfig;
use corral_daemon::serve::{serve_until, ServeOpts};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// A generous bound for each wait of this test, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// Reads a streaming body until `want` has appeared, then returns what was read.
async fn read_until(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    want: &str,
) {
    tokio::time::timeout(DEADLINE, async {
        while !seen.contains(want) {
            let chunk = body
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before {want:?}: {seen}"))
                .expect("the stream failed");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} in time: {seen}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_returns_promptly_after_the_tasks_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = ServeOpts {
        listen: "127.0.0.1:0".into(),
        home: tmp.path().join("home"),
        token: Some("shutdown-test-token".into()),
        insecure_no_auth: false,
        fleet_token: None,
        allow_hosts: Vec::new(),
        log: LogConfig::default(),
        observer: ObserverConfig::default(),
        node: "test".into(),
        llama: LlamaConfig::default(),
        holder: None,
        redis: Default::default(),
        alerts: Vec::new(),
        node_heartbeat: std::time::Duration::from_secs(10),
        hub: false,
        ssh_config: None,
        docker_host: None,
    };
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(serve_until(
        opts,
        move |addr| {
            let _ = addr_tx.send(addr);
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    let api = format!("http://{}/api/v1", addr_rx.await.unwrap());
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        "Bearer shutdown-test-token".parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .unwrap();

    let resp = http
        .get(format!("{api}/events?follow=true&task=sleeper"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = resp.bytes_stream();
    let resp = http
        .post(format!("{api}/tasks"))
        .json(&serde_json::json!({"name": "sleeper", "command": ["sleep", "600"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let mut seen = String::new();
    read_until(&mut events, &mut seen, "\"event_type\":\"start\"").await;
    let resp = http
        .get(format!("{api}/tasks/sleeper/logs?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut logs = resp.bytes_stream();

    stop_tx.send(()).unwrap();
    // The task's exit comes, then the stream ends cleanly.
    read_until(&mut events, &mut seen, "\"event_type\":\"exit\"").await;
    let stopped = Instant::now();
    let rest = tokio::time::timeout(DEADLINE, async {
        let mut rest = String::new();
        while let Some(chunk) = events.next().await {
            rest.push_str(&String::from_utf8_lossy(&chunk.expect("a clean end")));
        }
        rest
    })
    .await
    .expect("the event stream ends");
    for line in rest.lines().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a whole JSON line after the exit ({e}): {line}"));
    }
    let mut log = String::new();
    read_until(&mut logs, &mut log, "{\"end\":").await;
    assert!(
        logs.next().await.is_none(),
        "the log stream ends after its end record"
    );

    tokio::time::timeout(DEADLINE, daemon)
        .await
        .expect("the daemon returns")
        .unwrap()
        .unwrap();
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the daemon took {took:?} to return after its tasks stopped"
    );
}
