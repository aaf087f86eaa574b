//! The daemon at its process boundary: output whose reader went away, a closed terminal,
//! Ctrl-C to a pipeline, and its own diagnostics (`tracing` to stderr and
//! `<home>/daemon.log`, text or JSON).
//!
//! Every wait is for a condition (a line in a file, an API answer, a process gone), never
//! for a length of time.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;

/// Waits for `child` to exit, at most `DEADLINE`.
async fn wait_exit(child: &mut tokio::process::Child, what: &str) -> std::process::ExitStatus {
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit"))
        .expect("waiting for a child")
}

/// `corral serve 2>&1 | head -1`: the reader takes the address and goes. The daemon goes
/// on serving, writing its diagnostics to daemon.log, and exits cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_serving_after_the_reader_of_its_output_goes_away() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut std_cmd = std::process::Command::new(BIN);
    clear_corral_env(&mut std_cmd);
    std_cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--home"])
        .arg(&home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().expect("starting corral serve");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, stdout.next_line())
        .await
        .expect("the daemon printed its address")
        .unwrap()
        .expect("a first line");
    let addr = first
        .strip_prefix("corral listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_string();
    // The reader goes away: both pipes are closed at their read end.
    drop(stdout);
    drop(child.stderr.take());

    let http = home_client(&home);
    let api = |p: &str| format!("{addr}/api/v1{p}");
    // A task that writes on both streams, then is stopped.
    let r = http
        .post(api("/tasks"))
        .json(&serde_json::json!({
            "name": "talker",
            "command": ["sh", "-c", "echo out; echo err >&2; exec sleep 1000"],
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let r = http
        .post(api("/tasks/talker/stop"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    // Bad requests.
    let r = http
        .post(api("/tasks"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http.get(api("/tasks/nobody")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // A diagnostic line after the pipes closed: stderr fails, the file takes it.
    assert!(signal(child.id().unwrap() as i32, libc::SIGHUP));
    let log = home.join("daemon.log");
    let text = wait_for_text(&log, "SIGHUP ignored").await;
    assert!(text.contains("listening on"), "{text}");

    let r = http.get(api("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the daemon still answers");
    assert!(child.try_wait().unwrap().is_none(), "the daemon is alive");

    assert!(signal(child.id().unwrap() as i32, libc::SIGTERM));
    let status = wait_exit(&mut child, "the daemon").await;
    assert_eq!(status.code(), Some(0), "a clean exit: {status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("shutting down") && text.contains("stopped"),
        "{text}"
    );
}

/// A closed terminal sends SIGHUP: `corral serve` ignores it, and its tasks go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_leaves_serve_and_its_tasks_running() {
    let d = Daemon::start().await;
    d.run_task("sleeper", &[], &["sleep", "1000"]).await;
    let before = d.wait_task_status("sleeper", "ready").await;
    let pid = before["pid"].as_u64().expect("a pid") as u32;

    assert!(signal(d.pid as i32, libc::SIGHUP));
    wait_for_text(&d.daemon_log(), "SIGHUP ignored").await;

    let (status, health) = d.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(
        proc_state(d.pid).is_some_and(|s| s != 'Z'),
        "the daemon is alive"
    );
    let after = d.task("sleeper").await;
    assert_eq!(after["status"], before["status"], "{after}");
    assert_eq!(after["pid"], pid, "{after}");
    assert!(
        proc_state(pid).is_some_and(|s| s != 'Z'),
        "the task is alive"
    );
}

/// Regression: the daemon listened for SIGTERM only once its server ran, a moment after
/// it printed its address, so a SIGTERM sent as soon as the address was read killed it
/// outright (no task stopped, exit by signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_the_address_line_stops_the_daemon_cleanly() {
    for _ in 0..3 {
        let mut d = Daemon::start().await;
        assert_eq!(d.terminate(), Some(0), "{}", d.stderr());
    }
}

/// Every non-empty line of `text` as a JSON object with the fields of a diagnostic.
fn json_lines(what: &str, text: &str) -> Vec<Value> {
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {l:?}"))
        })
        .collect();
    assert!(!lines.is_empty(), "{what}: no diagnostics");
    for l in &lines {
        for field in ["timestamp", "level", "message", "target"] {
            assert!(l.get(field).is_some(), "{what}: no {field} in {l}");
        }
    }
    lines
}

/// `--log-format json`: every diagnostic, the binary's and the daemon library's, is a JSON
/// line, on stderr and in daemon.log alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_makes_diagnostics_json_lines_on_stderr_and_in_daemon_log() {
    let mut d = Daemon::start_with(DaemonOpts::args(&["--log-format", "json"])).await;
    assert!(signal(d.pid as i32, libc::SIGHUP));
    wait_for_text(&d.daemon_log(), "SIGHUP ignored").await;
    assert_eq!(d.terminate(), Some(0));
    let file = std::fs::read_to_string(d.daemon_log()).unwrap();
    for (what, text) in [("stderr", d.stderr()), ("daemon.log", file)] {
        let lines = json_lines(what, &text);
        let has = |needle: &str, target: &str| {
            lines.iter().any(|l| {
                l["message"].as_str().is_some_and(|m| m.contains(needle))
                    && l["target"].as_str().is_some_and(|t| t.starts_with(target))
            })
        };
        assert!(has("listening on http://", "corral::"), "{what}: {text}");
        assert!(has("SIGHUP ignored", "corral::"), "{what}: {text}");
        assert!(has("shutting down", "corral_daemon"), "{what}: {text}");
        assert!(
            lines.iter().any(|l| l["home"].is_string()),
            "fields are kept: {text}"
        );
    }
}

/// The environment names the same settings: `CORRAL_LOG_FORMAT=json`, and `CORRAL_LOG`
/// keeps only what it asks for (here the daemon library's warning about runs an earlier
/// daemon left behind, not the info lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_log_and_corral_log_format_choose_what_is_logged_and_how() {
    let mut first = Daemon::start().await;
    first.run_task("left", &[], &["sleep", "1000"]).await;
    let pid = first.task("left").await["pid"].as_u64().unwrap() as i32;
    let _cleanup = KillOnDrop(vec![-pid]);
    first.kill9();
    // Its holder too: the run cannot be taken back, and its process is left behind.
    kill_holder(pid as u32);

    let mut second = first
        .start_again(DaemonOpts {
            env: vec![
                ("CORRAL_LOG_FORMAT".into(), "json".into()),
                ("CORRAL_LOG".into(), "warn".into()),
            ],
            ..Default::default()
        })
        .await;
    wait_for_text(&second.daemon_log(), "left by an earlier daemon").await;
    assert_eq!(second.terminate(), Some(0));
    let file = std::fs::read_to_string(second.daemon_log()).unwrap();
    // daemon.log holds the first daemon's lines (text) too: look at the second's.
    let ours: String = file
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    for (what, text) in [("stderr", second.stderr()), ("daemon.log", ours)] {
        let lines = json_lines(what, &text);
        assert!(
            lines
                .iter()
                .all(|l| l["level"] == "WARN" || l["level"] == "ERROR"),
            "{what}: only warnings and errors: {text}"
        );
        assert!(
            lines.iter().any(|l| l["level"] == "WARN"
                && l["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("corral_daemon"))),
            "{what}: {text}"
        );
    }
}

/// `corral demo 2>&1 | cat > out`, then Ctrl-C: the terminal sends SIGINT to the whole
/// pipeline, so `cat` is gone before the demo stops its fleet. The demo must still stop
/// every simulated server and exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_under_a_pipe_stops_every_child_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = tmp.path().join("out");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut std_cmd = std::process::Command::new("sh");
    clear_corral_env(&mut std_cmd);
    std_cmd
        .arg("-c")
        .arg(r#""$0" demo --listen "$1" --home "$2" --crash-after 0 2>&1 | cat > "$3""#)
        .arg(BIN)
        .arg(&addr)
        .arg(&home)
        .arg(&out)
        // The demo starts its own daemon: none answers here.
        .env("CORRAL_ADDR", format!("http://{addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // A foreground job of its own, as in a terminal.
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec. A shell that started
    // this test in the background may have left SIGINT ignored; in a terminal it is not.
    unsafe {
        std_cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut sh = tokio::process::Command::from(std_cmd);
    sh.kill_on_drop(true);
    let mut sh = sh.spawn().expect("starting sh");
    let pgid = sh.id().unwrap();
    let mut cleanup = KillOnDrop(vec![-(pgid as i32)]);

    // The fleet is up: three tasks ready, each with its process.
    let http = reqwest::Client::new();
    let tasks_url = format!("http://{addr}/api/v1/tasks");
    // The demo's daemon makes its token in its home when it starts.
    let token = || std::fs::read_to_string(home.join("token")).ok();
    let pids: Vec<u32> = wait_for("the demo fleet to be ready", DEADLINE, || {
        let (http, url, token) = (http.clone(), tasks_url.clone(), token());
        async move {
            let tasks: Vec<Value> = http
                .get(url)
                .bearer_auth(token?.trim())
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let ready: Vec<u32> = tasks
                .iter()
                .filter(|t| t["status"] == "ready")
                .filter_map(|t| t["pid"].as_u64().map(|p| p as u32))
                .collect();
            (tasks.len() == 3 && ready.len() == 3).then_some(ready)
        }
    })
    .await;
    cleanup.0.extend(pids.iter().map(|&p| -(p as i32)));
    wait_for_text(&out, "Press Ctrl-C").await;
    let demo_pid = group_members(pgid)
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"demo"))
        })
        .expect("the demo process in the pipeline's group");

    // Ctrl-C.
    assert!(signal(-(pgid as i32), libc::SIGINT));
    wait_exit(&mut sh, "the pipeline").await;
    wait_until("the demo to exit", DEADLINE, || {
        proc_state(demo_pid).is_none_or(|s| s == 'Z')
    })
    .await;
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| proc_state(p).is_some_and(|s| s != 'Z'))
        .collect();
    assert!(
        left.is_empty(),
        "simulated servers outlived the demo: {left:?}\ndaemon.log:\n{}",
        std::fs::read_to_string(home.join("daemon.log")).unwrap_or_default()
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the demo's daemon is gone"
    );
    let log = std::fs::read_to_string(home.join("daemon.log")).unwrap();
    assert!(log.contains("SIGINT: stopping the demo"), "{log}");
}
