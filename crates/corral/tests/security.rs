//! The API is a shell as the daemon's user: the attacks a web page or another local user
//! would try are each refused, with the daemon on its defaults (loopback, no token given).

mod common;

use common::*;
use serde_json::{json, Value};

/// A hand-written HTTP request (reqwest would fix up `Host`); the status and JSON body.
fn raw(port: u16, request: String) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_daemon_refuses_foreign_hosts_origins_and_anonymous_requests() {
    let d = Daemon::start().await;
    let port = d.port;
    let auth = d.auth_line();
    let host = format!("127.0.0.1:{port}");
    let body = r#"{"name":"pwn","command":["id"]}"#;
    let post = |host: &str, extra: &str, ctype: &str| {
        format!(
            "POST /api/v1/tasks HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: {ctype}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let cases = [
        // DNS rebinding: the page's own name in Host, even with a stolen token.
        (
            post("evil.example", &auth, "application/json"),
            403,
            "bad_host",
        ),
        (
            post("evil.example:80", "", "application/json"),
            403,
            "bad_host",
        ),
        // Another site's page: its Origin.
        (
            post(
                &host,
                &format!("{auth}Origin: http://evil.example\r\n"),
                "application/json",
            ),
            403,
            "bad_origin",
        ),
        // No token: a local user or a page that cannot read the token file.
        (post(&host, "", "application/json"), 401, "unauthorized"),
        (post(&host, "", "text/plain"), 401, "unauthorized"),
        (
            post(&host, "Authorization: Bearer wrong\r\n", "application/json"),
            401,
            "unauthorized",
        ),
    ];
    let n = cases.len();
    for (req, want, want_code) in cases {
        let (status, body) = tokio::task::spawn_blocking(move || raw(port, req))
            .await
            .unwrap();
        assert_eq!((status, code(&body)), (want, want_code), "{body}");
    }
    // A body-less POST (what a cross-site form can send) does nothing either.
    let req = format!(
        "POST /api/v1/tasks/pwn/stop HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = tokio::task::spawn_blocking(move || raw(port, req))
        .await
        .unwrap();
    assert_eq!(status, 401);
    // A token in the URL is no credential.
    let req = format!(
        "GET /api/v1/tasks?token={} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        d.token.clone().unwrap()
    );
    let (status, _) = tokio::task::spawn_blocking(move || raw(port, req))
        .await
        .unwrap();
    assert_eq!(status, 401);
    // WebSocket from another site's page: refused before the upgrade.
    d.run_task("victim", &[], &["echo", "private"]).await;
    let mut req = d.ws_request("/tasks/victim/logs/ws?since=0");
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!(
            "a foreign-origin WebSocket was accepted: {:?}",
            other.map(|_| ())
        ),
    }
    // The same-origin WebSocket (the daemon's own pages) works.
    let mut req = d.ws_request("/tasks/victim/logs/ws?since=0");
    req.headers_mut()
        .insert("origin", format!("http://{host}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // Nothing was created by the refused requests.
    let (_, tasks) = d.get("/tasks").await;
    let names: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["victim"], "after {n} refused attacks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_private_and_the_owners_cli_reads_it_by_itself() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start().await;
    let meta = std::fs::metadata(d.home.join("token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No CORRAL_TOKEN: the CLI finds <home>/token through CORRAL_HOME.
    d.run_task("mine", &[], &["true"]).await;
    let home = d.home.to_str().unwrap();
    let out = cli(
        &["ps", "--json"],
        &[("CORRAL_ADDR", &d.addr), ("CORRAL_HOME", home)],
    )
    .await
    .ok();
    assert_eq!(out.json()[0]["name"], "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_drive_the_daemon() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test switches to the user `nobody` with setpriv: run the suite as root (CI does)"
        );
    }
    let d = Daemon::start().await;
    // A copy of the binary that `nobody` may run, wherever the build lives.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("corral");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = d.home.to_str().unwrap().to_string();
    for args in [vec!["run", "--name", "pwn", "--", "id"], vec!["ps"]] {
        let out = tokio::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CORRAL_ADDR", &d.addr)
            .env("CORRAL_HOME", &home)
            .output()
            .await
            .expect("setpriv (util-linux) is needed: apt-get install util-linux");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?} as nobody: {stderr}");
        assert!(stderr.contains("token"), "{args:?}: {stderr}");
    }
    let (_, tasks) = d.get("/tasks").await;
    assert_eq!(tasks, json!([]), "nobody created a task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_still_refuses_simple_requests_and_foreign_hosts() {
    let d = Daemon::start_with(DaemonOpts::args(&["--insecure-no-auth"])).await;
    assert!(d.token.is_none());
    assert!(
        !d.home.join("token").exists(),
        "no token is made when none is used"
    );
    let port = d.port;
    let host = format!("127.0.0.1:{port}");
    let body = r#"{"name":"x","command":["true"]}"#;
    let simple = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, v) = tokio::task::spawn_blocking(move || raw(port, simple))
        .await
        .unwrap();
    assert_eq!((status, code(&v)), (403, "simple_request"), "{v}");
    let rebind = format!(
        "GET /api/v1/tasks HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = tokio::task::spawn_blocking(move || raw(port, rebind))
        .await
        .unwrap();
    assert_eq!(status, 403);
    // The CLI marks its requests as non-simple: it works with no token.
    d.run_task("ok", &[], &["true"]).await;
    assert!(d.stderr().contains("insecure-no-auth"), "{}", d.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_link_works_once_and_sets_a_strict_http_only_cookie() {
    let d = Daemon::start().await;
    let out = d.cli(&["login", "--json"]).await.ok().json();
    let url = out["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/login/", d.port)),
        "{url}"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    // The cookie reads the API ...
    let resp = http
        .get(d.url("/tasks"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // ... but cannot make a simple state-changing request.
    let resp = http
        .post(d.url("/tasks"))
        .header("cookie", &session)
        .header("content-type", "text/plain")
        .body(r#"{"name":"x","command":["true"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // The link works once.
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 403);
}
