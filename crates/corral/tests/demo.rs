//! `corral demo` (the simulated llama.cpp fleet), the event stream, and `corral parse`.

mod common;

use common::{cli, proc_state, wait_for, Daemon, DaemonOpts, BIN};
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

    // The CLI views of the same state.
    let status = d
        .cli(&["llama", "status", "coordinator", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(status["status"], "ready", "{status}");
    assert_eq!(status["rpc_backends"].as_array().map(Vec::len), Some(2));
    let text = d
        .cli(&["llama", "status", "coordinator"])
        .await
        .ok()
        .stdout();
    assert!(text.contains("ready"), "{text}");
    let backends = d.cli(&["backends", "--json"]).await.ok().json();
    assert_eq!(backends.as_array().map(Vec::len), Some(2), "{backends}");
    let text = d.cli(&["backends"]).await.ok().stdout();
    assert_eq!(text.lines().count(), 3, "a header and two backends: {text}");
    let events = d
        .cli(&["events", "--component", "rpc_backend", "--json"])
        .await
        .ok()
        .ndjson();
    assert!(
        !events.is_empty() && events.iter().all(|e| e["component"] == "rpc_backend"),
        "{events:?}"
    );
    let text = d
        .cli(&["events", "--component", "coordinator", "--level", "info"])
        .await
        .ok()
        .stdout();
    assert!(text.contains("coordinator"), "{text}");
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
    // Each is a contract event, named after the file unless --task says otherwise.
    for e in &events {
        assert!(e["timestamp"].as_f64().is_some(), "{e}");
        assert!(e["node"].as_str().is_some_and(|n| !n.is_empty()), "{e}");
        assert_eq!(e["task"], "startup-requests-stop", "{e}");
        assert_eq!(e["run_id"], "", "{e}");
    }
    let named = cli(&["parse", "--task", "coord", fixture], &[]).await.ok();
    assert!(named.ndjson().iter().all(|e| e["task"] == "coord"));

    // `-` reads the log from standard input, with the same events.
    let piped = std::process::Command::new(BIN)
        .args(["parse", "-"])
        .stdin(std::fs::File::open(fixture).unwrap())
        .output()
        .unwrap();
    assert!(piped.status.success());
    let strip = |bytes: &[u8]| -> Vec<serde_json::Value> {
        common::parse_ndjson(bytes)
            .into_iter()
            .map(|mut e| {
                e["timestamp"] = serde_json::Value::Null;
                e["task"] = serde_json::Value::Null;
                e
            })
            .collect()
    };
    assert_eq!(
        strip(&piped.stdout),
        strip(&out.stdout),
        "parse - gives what parse FILE gives"
    );

    let missing = cli(&["parse", "/nonexistent.log"], &[]).await;
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("/nonexistent.log"),
        "{}",
        missing.stderr
    );
}

/// The README's first command as a user runs it: no daemon yet, so the demo starts its
/// own; the coordinator becomes ready, crashes now and then and is restarted; Ctrl-C stops the whole fleet and leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_its_own_daemon_restarts_crashes_and_stops_cleanly_on_ctrl_c() {
    let home = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut demo = tokio::process::Command::new(BIN)
        .args(["demo", "--listen", &addr, "--crash-after", "2"])
        .env("CORRAL_ADDR", format!("http://{addr}"))
        .env("CORRAL_HOME", home.path())
        .env_remove("CORRAL_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let api = |path: &str| format!("http://{addr}/api/v1{path}");
    // The demo's daemon makes its token in its home at start.
    let token_file = home.path().join("token");
    let get = |path: String| {
        let http = http.clone();
        let token = std::fs::read_to_string(&token_file).unwrap_or_default();
        async move {
            let r = http.get(path).bearer_auth(token.trim()).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        }
    };

    // Ready once its /health answers 200 (it answers 503 while "loading").
    let sim_port = wait_for(
        "the coordinator to be ready",
        Duration::from_secs(60),
        || async {
            let s = get(api("/llama/coordinator/status")).await?;
            (s["status"] == "ready").then_some(s)
        },
    )
    .await;
    let sim_port = sim_port["port"].as_u64().unwrap();
    let health = format!("http://127.0.0.1:{sim_port}/health");
    wait_for(
        "the simulated /health to answer 200",
        Duration::from_secs(60),
        || {
            let (http, health) = (http.clone(), health.clone());
            async move {
                let r = http.get(&health).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;

    // It crashes after 2 s of serving and the restart policy brings it back. It may crash
    // again at any moment, so the live pids are read in the same check as the status.
    let pids: Vec<u32> = wait_for(
        "the coordinator to crash and be restarted to ready, with all three tasks live",
        Duration::from_secs(60),
        || async {
            let s = get(api("/llama/coordinator/status")).await?;
            if s["status"] != "ready" || s["retries"].as_u64()? < 1 {
                return None;
            }
            let tasks = get(api("/tasks")).await?;
            let pids: Vec<u32> = tasks
                .as_array()?
                .iter()
                .filter_map(|t| t["pid"].as_u64().map(|p| p as u32))
                .collect();
            (pids.len() == 3).then_some(pids)
        },
    )
    .await;
    let events = get(api("/events?task=coordinator&type=restart&follow=false"))
        .await
        .unwrap();
    assert!(
        events.to_string().contains("restarting in"),
        "a restart event: {events}"
    );

    // Ctrl-C.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(demo.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo ends within 30 s of Ctrl-C")
        .unwrap();
    assert!(status.success(), "the demo exits cleanly: {status:?}");
    for pid in pids {
        assert!(
            proc_state(pid).is_none_or(|s| s == 'Z'),
            "pid {pid} outlived the demo"
        );
    }
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the demo's daemon is gone"
    );
}
