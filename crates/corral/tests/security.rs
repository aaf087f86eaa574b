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

/// A task never inherits corral's secrets from the daemon: not the token, not any other
/// `CORRAL_*` setting, not the Redis password; what its spec sets is still passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_never_inherit_corrals_secrets() {
    let mut opts = DaemonOpts {
        token: Some("top-secret-token-value".into()),
        ..Default::default()
    };
    opts.env = vec![
        ("REDIS_PASSWORD".into(), "redis-secret".into()),
        ("CORRAL_RING_RECORDS".into(), "1000".into()),
        ("UNRELATED_SETTING".into(), "kept".into()),
    ];
    let d = Daemon::start_with(opts).await;
    let run = d
        .run_task("env", &["--env", "MINE=set-by-spec"], &["env"])
        .await;
    d.wait_run_end(&run).await;
    let log = String::from_utf8(d.raw_log(&run).await).unwrap();
    for secret in ["top-secret-token-value", "redis-secret", "CORRAL_"] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the task: {log}"
        );
    }
    assert!(log.contains("UNRELATED_SETTING=kept"), "{log}");
    assert!(log.contains("MINE=set-by-spec"), "{log}");
    let runs = d.cli(&["runs", "--json"]).await.ok().stdout();
    assert!(!runs.contains("top-secret-token-value"), "{runs}");
}

/// Runs the CLI under a real pseudo-terminal (through python's pty module); its output.
async fn on_a_terminal(d: &Daemon, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(python());
    cmd.args(["-c", "import pty, sys; pty.spawn(sys.argv[1:])", BIN])
        .args(args)
        .env("CORRAL_ADDR", &d.addr)
        .env("CORRAL_TOKEN", d.token.as_deref().unwrap_or(""))
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the CLI on a pty ended")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hostile bytes in a task's output, its command line and its error message reach no
/// terminal as control: every CLI writer shows them escaped; a pipe and `--raw` keep the
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_never_reach_a_terminal_as_control() {
    let d = Daemon::start().await;
    // Clipboard write (OSC 52), clear screen, carriage return, 8-bit CSI, a bidi override
    // and a zero-width space.
    let hostile = "\u{1b}]52;c;aGk=\u{7}\u{1b}[2J\rX\u{9b}31mY\u{202e}evil\u{200b}";
    let (status, body) = d
        .post(
            "/tasks",
            &json!({"name": "hostile", "command": ["sh", "-c", "printf '%s\\n' \"$0\"; printf '%s\\n' \"$0\" >&2; exit 3", hostile]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run = body["run_id"].as_str().unwrap().to_string();
    d.wait_run_end(&run).await;
    for args in [
        &["logs", "hostile"][..],
        &["logs", "hostile", "--tail", "5"],
        &["monitor", "hostile", "--since", "0"],
        &["ps"],
        &["runs", "hostile"],
        &["events", "--task", "hostile"],
    ] {
        let text = on_a_terminal(&d, args).await;
        for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}', '\u{200b}'] {
            assert!(
                !text.contains(bad),
                "{args:?} let {bad:?} through to the terminal: {text:?}"
            );
        }
        if args[0] != "events" {
            assert!(
                text.contains("\\e]52"),
                "{args:?} shows it escaped: {text:?}"
            );
        }
    }
    // A pipe, and --raw, keep the bytes exact.
    let piped = d.cli(&["logs", "hostile"]).await.ok().stdout();
    assert!(piped.contains(hostile), "{piped:?}");
    let raw = on_a_terminal(&d, &["logs", "hostile", "--raw"]).await;
    assert!(raw.contains('\u{1b}'), "--raw keeps the bytes: {raw:?}");
}
