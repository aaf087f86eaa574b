//! The edges of the contract: bad input gets a clear error with the right HTTP status
//! (never a 500), the CLI exits non-zero saying why, and the token guards every request.

mod common;

use common::*;
use serde_json::{json, Value};

/// Asserts a JSON error `{"error":{"code":…,"message":…}}` with this status.
fn assert_error(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    let e = &body["error"];
    assert!(
        e["code"].as_str().is_some_and(|c| !c.is_empty())
            && e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: not a JSON error: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_is_404_json_and_a_cli_error() {
    let d = Daemon::start().await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let delete = reqwest::Method::DELETE;
    let cases = [
        (get.clone(), "/tasks/x"),
        (delete, "/tasks/x"),
        (post.clone(), "/tasks/x/stop"),
        (post, "/tasks/x/restart"),
        (get.clone(), "/tasks/x/logs"),
        (get.clone(), "/tasks/x/logs?since=0&follow=true"),
        (get.clone(), "/runs?task=x"),
        (get.clone(), "/runs/nope"),
        (get.clone(), "/runs/nope/log"),
        (get.clone(), "/nope"),
    ];
    for (method, path) in cases {
        let resp = d.request(method.clone(), path).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_error(status, &body, 404, &format!("{method} {path}"));
    }
    // SSE asked for, still a JSON 404.
    let resp = d
        .request(get.clone(), "/tasks/x/logs")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(
        status,
        &resp.json().await.unwrap_or(Value::Null),
        404,
        "SSE logs",
    );
    let (status, body) = d.get("/tasks/x").await;
    assert_error(status, &body, 404, "GET /tasks/x");
    assert_eq!(body["error"]["code"], "unknown_task");
    assert!(body["error"]["message"].as_str().unwrap().contains('x'));
    // WebSocket handshake to an unknown task: 404 as well.
    match tokio_tungstenite::connect_async(d.ws_request("/tasks/x/logs/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("WebSocket to an unknown task: {:?}", other.map(|_| ())),
    }

    // A known task with an unknown run.
    d.run_task("known", &[], &["true"]).await;
    let (status, body) = d.get("/tasks/known/logs?run=nope").await;
    assert_error(status, &body, 404, "unknown run of a known task");

    for args in [
        &["stop", "x"][..],
        &["restart", "x"],
        &["rm", "x"],
        &["logs", "x"],
        &["monitor", "x"],
        &["runs", "x"],
    ] {
        let out = d.cli(args).await;
        assert_ne!(out.code, Some(0), "corral {args:?} must fail");
        assert!(
            out.stderr.contains("no task named `x`"),
            "corral {args:?}: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_never_500() {
    let d = Daemon::start().await;
    let cases = [
        (
            json!({"name": "../x", "command": ["true"]}),
            400,
            "bad name",
        ),
        (json!({"name": "ok", "command": []}), 400, "empty command"),
        (json!({"name": "ok"}), 400, "no command"),
        (
            json!({"name": "ok", "command": ["true"], "max_retries": "many"}),
            400,
            "wrong type",
        ),
    ];
    for (body, want, what) in cases {
        let (status, v) = d.post("/tasks", &body).await;
        assert_error(status, &v, want, what);
    }
    let resp = d
        .request(reqwest::Method::POST, "/tasks")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 400, "invalid JSON");

    // A task that runs cannot be replaced: 409, and the CLI says what to do.
    d.run_task("busy", &[], &["sleep", "1000"]).await;

    // What the extractors reject is a JSON error too: bad bodies, query strings, methods.
    let raw = [
        (reqwest::Method::POST, "/tasks/busy/stop", Some("{bad"), 400),
        (
            reqwest::Method::POST,
            "/tasks/busy/stop",
            Some(r#"{"timeout_ms":"x"}"#),
            422,
        ),
        (reqwest::Method::GET, "/runs?limit=abc", None, 400),
        (
            reqwest::Method::GET,
            "/tasks/busy/logs?since=abc",
            None,
            400,
        ),
        (
            reqwest::Method::GET,
            "/tasks/busy/logs?follow=maybe",
            None,
            400,
        ),
        (reqwest::Method::GET, "/tasks/busy/logs/ws", None, 400),
        (reqwest::Method::DELETE, "/health", None, 405),
    ];
    for (method, path, body, want) in raw {
        let mut req = d.request(method.clone(), path);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_error(status, &v, want, &format!("{method} {path} ({text})"));
    }
    assert_eq!(
        d.task("busy").await["status"],
        "ready",
        "a rejected stop stops nothing"
    );
    let (status, v) = d
        .post("/tasks", &json!({"name": "busy", "command": ["true"]}))
        .await;
    assert_error(status, &v, 409, "busy task");
    let out = d.cli(&["run", "--name", "busy", "--", "true"]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("corral stop busy"), "{}", out.stderr);
    d.cli(&["stop", "busy"]).await.ok();
    // Once stopped it can be replaced.
    let run_id = d.run_task("busy", &[], &["true"]).await;
    d.wait_run_end(&run_id).await;
    // A cursor past every seq there can be is an empty stream, not an overflow.
    let max = u64::MAX.to_string();
    let items = d
        .read_to_end("busy", &format!("since={max}&follow=true"))
        .await;
    assert!(
        items.len() == 1 && items[0].get("end").is_some(),
        "{items:?}"
    );
    let resp = d
        .request(reqwest::Method::GET, "/tasks/busy/logs?follow=true")
        .header("accept", "text/event-stream")
        .header("last-event-id", &max)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("\"seq\"") && text.contains("\"end\""),
        "{text}"
    );
}

/// Sends a raw HTTP/1.1 request and reads one response (status, JSON body). Raw, so that
/// the test decides how much of an oversized body goes out: the server answers without
/// reading the rest, and a client still sending into a closed connection could see a
/// reset instead of the answer.
fn raw_http(port: u16, head: &str, body: &[u8]) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = &buf[end + 4..end + 4 + len];
                return (status, serde_json::from_slice(body).unwrap_or(Value::Null));
            }
        }
        let n = s.read(&mut chunk).expect("reading the response");
        assert!(
            n > 0,
            "connection closed before a whole response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_1_mib_are_413_json() {
    let d = Daemon::start().await;
    let port = d.port;
    let auth = d.auth_line();
    let head = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\n"
    );
    let (status, v) = tokio::task::spawn_blocking({
        let head = head.clone();
        move || {
            // A declared length over the limit is refused before any of the body is read.
            raw_http(port, &format!("{head}Content-Length: 2097152\r\n\r\n"), b"")
        }
    })
    .await
    .unwrap();
    assert_error(status, &v, 413, "declared length");
    assert_eq!(v["error"]["code"], "body_too_large");

    // Chunked, with no declared length: refused once past the limit, with the same answer.
    let (status, v) = tokio::task::spawn_blocking(move || {
        let head = format!("{head}Transfer-Encoding: chunked\r\n\r\n");
        let mut body = Vec::new();
        for _ in 0..17 {
            body.extend_from_slice(b"10000\r\n"); // 64 KiB
            body.extend_from_slice(&[b' '; 64 * 1024]);
            body.extend_from_slice(b"\r\n");
        }
        raw_http(port, &head, &body)
    })
    .await
    .unwrap();
    assert_error(status, &v, 413, "chunked body");
    assert_eq!(v["error"]["code"], "body_too_large");

    // A body just under the limit is read (and judged on its content).
    let pad = " ".repeat(1024 * 1024 - 100);
    let body = format!("{pad}{{\"name\": \"small\", \"command\": [\"true\"]}}");
    let resp = d
        .request(reqwest::Method::POST, "/tasks")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    // Nothing else was created.
    let tasks = d.get("/tasks").await.1;
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_durations_and_flags_are_refused_before_anything_runs() {
    let d = Daemon::start().await;
    for (args, needle) in [
        (
            &[
                "run",
                "--name",
                "j",
                "--backoff-initial",
                "5x",
                "--",
                "true",
            ][..],
            "5x",
        ),
        (
            &["run", "--name", "j", "--backoff-max", "s", "--", "true"],
            "backoff-max",
        ),
        (
            &["run", "--name", "j", "--stop-timeout", "10", "--", "true"],
            "stop-timeout",
        ),
        (
            &["run", "--name", "j", "--restart", "sometimes", "--", "true"],
            "sometimes",
        ),
        (
            &["run", "--name", "j", "--env", "NOEQUALS", "--", "true"],
            "K=V",
        ),
        (&["stop", "j", "--timeout", "1y"], "1y"),
    ] {
        let out = d.cli(args).await;
        assert_ne!(out.code, Some(0), "corral {args:?} must fail");
        assert!(
            out.stderr.contains(needle),
            "corral {args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let out = d
        .cli(&[
            "run",
            "--name",
            "j",
            "--backoff-initial",
            "5x",
            "--",
            "true",
        ])
        .await;
    assert!(
        out.stderr.contains("backoff-initial") && out.stderr.contains("unit"),
        "{}",
        out.stderr
    );
    // A probe setting from the environment is checked the same way, and named.
    let model = d.home.join("m.gguf");
    std::fs::write(&model, b"GGUF").unwrap();
    let out = d
        .cli_env(
            &[
                "llama",
                "--name",
                "c",
                "--model",
                model.to_str().unwrap(),
                "--bin",
                "/bin/true",
            ],
            &[("CORRAL_LLAMA_HEALTH_INTERVAL", "5x")],
        )
        .await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("CORRAL_LLAMA_HEALTH_INTERVAL") && out.stderr.contains("5x"),
        "{}",
        out.stderr
    );
    // Nothing was created.
    assert_eq!(d.get("/tasks").await.1, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_taken_port_and_an_open_listen_without_token() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let home = home.to_str().unwrap();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = cli(&["serve", "--listen", &addr, "--home", home], &[]).await;
    assert_ne!(out.code, Some(0), "serve on a taken port must fail");
    assert!(
        out.stderr.contains(&addr),
        "the error must name {addr}: {}",
        out.stderr
    );
    drop(taken);

    let out = cli(&["serve", "--listen", "0.0.0.0:0", "--home", home], &[]).await;
    assert_ne!(
        out.code,
        Some(0),
        "serve on 0.0.0.0 without a token must fail"
    );
    assert!(out.stderr.contains("token"), "{}", out.stderr);

    let out = cli(
        &[
            "serve",
            "--listen",
            "no-such-host.invalid:7",
            "--home",
            home,
        ],
        &[],
    )
    .await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("no-such-host.invalid:7"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_request() {
    let d = Daemon::start_with(DaemonOpts {
        token: Some("secret".into()),
        ..Default::default()
    })
    .await;
    let plain = reqwest::Client::new();
    for path in [
        "/api/v1/health",
        "/api/v1/tasks",
        "/api/v1/tasks/x/logs",
        "/metrics",
    ] {
        let url = format!("{}{path}", d.addr);
        let resp = plain.get(&url).send().await.unwrap();
        let status = resp.status().as_u16();
        assert_error(status, &resp.json().await.unwrap_or(Value::Null), 401, path);
        let resp = plain.get(&url).bearer_auth("secreT").send().await.unwrap();
        assert_eq!(resp.status(), 401, "wrong token on {path}");
        let resp = plain
            .get(&url)
            .bearer_auth("secret-and-more")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "longer token on {path}");
    }
    let (status, v) = d.get("/health").await; // with the token
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    // A token in a URL ends up in proxies' logs and shell history: never accepted.
    let resp = plain
        .get(format!("{}/api/v1/tasks?token=secret", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The CLI sends CORRAL_TOKEN (the helper sets it) ...
    d.run_task("guarded", &[], &["true"]).await;
    let ps = d.cli(&["ps", "--json"]).await.ok().json();
    assert_eq!(ps[0]["name"], "guarded");
    // ... or the token file; without either it fails and says why.
    let file = d.tmp.path().join("token");
    std::fs::write(&file, "secret\n").unwrap();
    let out = cli(
        &["ps", "--token-file", file.to_str().unwrap()],
        &[("CORRAL_ADDR", &d.addr)],
    )
    .await
    .ok();
    assert!(out.stdout().contains("guarded"));
    let out = cli(&["ps"], &[("CORRAL_ADDR", &d.addr)]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("token"), "{}", out.stderr);

    // With a token, a non-loopback listen is allowed.
    let open = Daemon::start_with(DaemonOpts {
        token: Some("secret".into()),
        listen: Some("0.0.0.0:0".into()),
        ..Default::default()
    })
    .await;
    let (status, _) = open.get("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_home_is_refused() {
    let first = Daemon::start().await;
    first.run_task("live", &[], &["sleep", "1000"]).await;
    let home = first.home.to_str().unwrap().to_string();
    let out = cli(&["serve", "--listen", "127.0.0.1:0", "--home", &home], &[]).await;
    assert_ne!(
        out.code,
        Some(0),
        "a second daemon on a live home must fail"
    );
    assert!(
        out.stderr.contains("another corral daemon") && out.stderr.contains(&home),
        "{}",
        out.stderr
    );
    // The first daemon's run is untouched.
    assert_eq!(first.runs("live").await[0]["status"], "running");
}
