//! What should run keeps running across daemon restarts, nothing runs twice, and faults
//! stay bounded: the parts of supervision that outlive one daemon.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// A graceful daemon stop, then a new daemon: tasks that should run are running again
/// (a new run, by their policy); a task stopped by hand stays stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_survives_a_graceful_daemon_restart() {
    let mut d1 = Daemon::start().await;
    let svc_run = d1
        .run_task("svc", &["--restart", "always"], &["sleep", "1000"])
        .await;
    d1.run_task("held", &["--restart", "always"], &["sleep", "1000"])
        .await;
    d1.cli(&["stop", "held"]).await.ok();
    let once = d1.run_task("once", &[], &["true"]).await;
    d1.wait_run_end(&once).await;
    let pid = d1.task("svc").await["pid"].as_i64().unwrap() as i32;
    assert_eq!(d1.terminate(), Some(0), "{}", d1.stderr());
    assert!(is_esrch(pid), "a graceful daemon stop stops the task");

    let d2 = d1.start_again(DaemonOpts::default()).await;
    let t = d2.wait_task_status("svc", "ready").await;
    assert_ne!(t["run_id"], svc_run.as_str(), "a new run: {t}");
    let _guard = KillOnDrop(vec![t["pid"].as_i64().unwrap() as i32]);
    assert_eq!(d2.task("held").await["status"], "initial");
    assert_eq!(
        d2.runs("held").await.len(),
        1,
        "a stopped task is not started"
    );
    assert_eq!(d2.task("once").await["status"], "initial");
    assert_eq!(
        d2.runs("once").await.len(),
        1,
        "a finished run-once task stays finished"
    );
}

/// After `kill -9` of the daemon, a task that should run is started again by the next
/// daemon, and the copy the dead daemon left behind is stopped first: never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_left_running_by_a_killed_daemon_never_runs_twice() {
    let mut d1 = Daemon::start().await;
    d1.run_task("svc", &["--restart", "always"], &["sleep", "1000"])
        .await;
    let old = d1.wait_task_status("svc", "ready").await["pid"]
        .as_i64()
        .unwrap() as i32;
    let mut guard = KillOnDrop(vec![old]);
    d1.kill9();
    assert!(!is_esrch(old), "the orphan runs on after the daemon died");

    let d2 = d1.start_again(DaemonOpts::default()).await;
    let t = wait_for("svc to run again", DEADLINE, || async {
        let t = d2.task("svc").await;
        (t["status"] == "ready" && t["pid"].as_i64() != Some(old as i64)).then_some(t)
    })
    .await;
    guard.0.push(t["pid"].as_i64().unwrap() as i32);
    wait_until("the orphan to be stopped", DEADLINE, || {
        proc_state(old as u32).is_none_or(|s| s == 'Z')
    })
    .await;
    // A restart by hand acts on the one live process.
    let again = d2.cli(&["restart", "svc"]).await.ok();
    assert!(!again.stdout().trim().is_empty());
    let t = d2.wait_task_status("svc", "ready").await;
    guard.0.push(t["pid"].as_i64().unwrap() as i32);
    let sleeping: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x001000\x00")
                && proc_state(*pid).is_some_and(|s| s != 'Z')
                && guard.0.contains(&(*pid as i32))
        })
        .collect();
    assert_eq!(sleeping.len(), 1, "one live copy: {sleeping:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_with_no_backoff_is_throttled() {
    let d = Daemon::start().await;
    d.run_task(
        "spin",
        &[
            "--restart",
            "always",
            "--backoff-initial",
            "0",
            "--backoff-max",
            "0",
        ],
        &["true"],
    )
    .await;
    // At the 100 ms floor: about 10 runs a second, never thousands.
    let t0 = std::time::Instant::now();
    wait_for("a few restarts", DEADLINE, || async {
        (d.runs("spin").await.len() >= 10).then_some(())
    })
    .await;
    let took = t0.elapsed();
    let n = d.runs("spin").await.len();
    assert!(
        (n as f64) < 20.0 * took.as_secs_f64().max(1.0),
        "{n} runs in {took:?}"
    );
    d.cli(&["stop", "spin"]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_cwd_and_a_bad_last_event_id_are_400() {
    let d = Daemon::start().await;
    let (status, body) = d
        .post(
            "/tasks",
            &json!({"name": "rel", "command": ["true"], "cwd": "some/dir"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("relative"),
        "{body}"
    );
    let run = d.run_task("ok", &[], &["echo", "hi"]).await;
    d.wait_run_end(&run).await;
    for path in ["/tasks/ok/logs", "/events"] {
        let resp = d
            .request(reqwest::Method::GET, path)
            .header("accept", "text/event-stream")
            .header("last-event-id", "abc")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Last-Event-ID"),
            "{body}"
        );
    }
}

/// `corral service install` writes a unit that starts this binary's daemon with the same
/// home at boot; here (no systemd) it says so and enables nothing; `uninstall` undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_install_writes_a_boot_unit_and_uninstall_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    let home = dir.path().join("home");
    let out = cli(
        &[
            "service",
            "install",
            "--unit-dir",
            units.to_str().unwrap(),
            "--home",
            home.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7171",
        ],
        &[],
    )
    .await
    .ok();
    let unit = std::fs::read_to_string(units.join("corral.service")).unwrap();
    let exe = std::fs::canonicalize(BIN).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={} serve --home {} --listen 127.0.0.1:7171",
            exe.display(),
            home.display()
        )),
        "{unit}"
    );
    assert!(unit.contains("[Install]"), "{unit}");
    assert!(
        out.stdout().contains("nothing was enabled"),
        "{}",
        out.stdout()
    );
    let out = cli(
        &[
            "service",
            "uninstall",
            "--unit-dir",
            units.to_str().unwrap(),
        ],
        &[],
    )
    .await
    .ok();
    assert!(out.stdout().contains("removed"), "{}", out.stdout());
    assert!(!units.join("corral.service").exists());
}

/// A finished run holds no open files: hundreds of tasks that ran once cost no
/// descriptors; a follower of an old run opens its files and lets them go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_hold_no_open_files() {
    let d = Daemon::start().await;
    let run = d.run_task("once", &[], &["echo", "done"]).await;
    d.wait_run_end(&run).await;
    wait_until("the run's files to be closed", DEADLINE, || {
        open_files_of(d.pid, &run) == 0
    })
    .await;
    // Read after its end, then closed again.
    let items = d.read_to_end("once", "since=0").await;
    assert!(items.iter().any(|v| v["line"] == "done"), "{items:?}");
    wait_until("the follower's files to be closed", DEADLINE, || {
        open_files_of(d.pid, &run) == 0
    })
    .await;
}
