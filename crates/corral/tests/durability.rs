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

/// Numbered lines, `n` of them, a few at a time: a task that is always mid-write.
fn chatty(n: u32) -> String {
    format!(
        "import sys, time\nfor i in range({n}):\n    sys.stdout.write('line %d\\n' % i)\n    sys.stdout.flush()\n    if i % 50 == 0: time.sleep(0.005)\n"
    )
}

/// The simulated llama-server on `port`, supervised with its health check: a quiet server
/// between requests.
async fn start_quiet_server(d: &Daemon, port: u16) {
    let spec = serde_json::json!({
        "name": "coord",
        "kind": "llama",
        "restart": "always",
        "command": [BIN, "sim-llama-server", "--port", port.to_string(), "--load-secs", "0.2",
                    "--crash-after", "0", "--request-interval", "100000"],
        "extra": {"host": "127.0.0.1", "port": port, "model_path": "m.gguf",
                  "check_files": false,
                  "probe": {"interval_ms": 100, "timeout_ms": 2000, "attempts": 600,
                            "liveness_interval_ms": 60000, "liveness_failures": 3}},
    });
    let (status, v) = d.post("/tasks", &spec).await;
    assert_eq!(status, 201, "{v}");
    d.wait_task_status("coord", "ready").await;
}

/// The stdout lines of a run, read back through the API, after checking that its seqs
/// are dense from 1.
async fn stdout_lines(d: &Daemon, task: &str, run: &str) -> (Vec<String>, serde_json::Value) {
    let items = d.read_to_end(task, &format!("run={run}&since=0")).await;
    let (records, end) = check_dense(&items, 1);
    let lines = of_stream(&records, "stdout")
        .iter()
        .map(|r| r["line"].as_str().unwrap_or_default().to_string())
        .collect();
    (lines, end)
}

/// `kill -9` of the daemon leaves its servers up: the next daemon takes back the same
/// processes (the quiet server `ready` again, the chatty task's log complete and dense
/// across the gap), learns their exits, and never starts a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_leaves_its_tasks_up_and_the_next_one_takes_them_back() {
    let mut d1 = Daemon::start().await;
    let port = free_port();
    start_quiet_server(&d1, port).await;
    let server = d1.task("coord").await["pid"].as_i64().unwrap() as i32;
    let n = 20_000;
    let run = d1
        .run_task("chatty", &[], &[python(), "-c", &chatty(n)])
        .await;
    let chatty_pid = d1.task("chatty").await["pid"].as_i64().unwrap() as i32;
    let _guard = KillOnDrop(vec![-server, -chatty_pid]);
    wait_for("the chatty task to be mid-write", DEADLINE, || async {
        (d1.run_row(&run).await["lines"].as_i64() > Some(1000)).then_some(())
    })
    .await;
    d1.kill9();
    assert!(
        !is_esrch(server) && !is_esrch(chatty_pid),
        "the tasks outlive the daemon"
    );

    let d2 = d1.start_again(DaemonOpts::default()).await;
    let t = d2.wait_task_status("coord", "ready").await;
    assert_eq!(t["pid"], server, "the same server, taken back: {t}");
    d2.wait_run_end(&run).await;
    let (lines, end) = stdout_lines(&d2, "chatty", &run).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let want: Vec<String> = (0..n).map(|i| format!("line {i}")).collect();
    assert!(
        lines == want,
        "{} lines, not the {n} printed, in order, once each",
        lines.len()
    );
    let row = d2.run_row(&run).await;
    assert_eq!(
        (row["status"].as_str(), row["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{row}"
    );
    assert_eq!(row["lines"], n as i64, "{row}");

    // A restart acts on the one live server; a kill of it is recorded with its signal.
    let server_run = d2.task("coord").await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    signal(server, libc::SIGKILL);
    let row = d2.wait_run_end(&server_run).await;
    assert_eq!(
        (row["status"].as_str(), row["signal"].as_i64()),
        (Some("failed"), Some(9)),
        "{row}"
    );
    let t = wait_for("the server to run again", DEADLINE, || async {
        let t = d2.task("coord").await;
        (t["status"] == "ready" && t["pid"] != server).then_some(t)
    })
    .await;
    let again = t["pid"].as_i64().unwrap() as i32;
    let mut guard = KillOnDrop(vec![-again]);
    let restarted = d2.cli(&["restart", "coord"]).await.ok();
    assert!(!restarted.stdout().trim().is_empty());
    let t = d2.wait_task_status("coord", "ready").await;
    guard.0.push(-(t["pid"].as_i64().unwrap() as i32));
    wait_until("the server before the restart to be gone", DEADLINE, || {
        proc_state(again as u32).is_none_or(|s| s == 'Z')
    })
    .await;
    assert_eq!(servers_on(port).len(), 1, "one live copy");
}

/// The live processes of the simulated server on `port` (not their holders, whose
/// command lines hold the server's).
fn servers_on(port: u16) -> Vec<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            words.get(1..4) == Some(&[&b"sim-llama-server"[..], b"--port", port.as_bytes()][..])
                && proc_state(*pid).is_some_and(|s| s != 'Z')
        })
        .collect()
}

/// Fifty `kill -9`s of the daemon in the middle of a task's writing: each time the next
/// daemon takes the run back, the registry passes `integrity_check`, and the index and the
/// log agree; at the end the log holds every line once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_daemon_kills_mid_write_lose_and_repeat_nothing() {
    let mut d = Daemon::start().await;
    let n = 200_000;
    let run = d
        .run_task("chatty", &[], &[python(), "-c", &chatty(n)])
        .await;
    let pid = d.task("chatty").await["pid"].as_i64().unwrap() as i32;
    let _guard = KillOnDrop(vec![-pid]);
    let home = d.home.clone();
    let mut last = 0;
    for round in 0..50 {
        // Some more output since the last kill, then the kill, mid-write.
        let seen = wait_for("more lines", DEADLINE, || async {
            let lines = d.run_row(&run).await["lines"].as_i64().unwrap_or(0);
            (lines > last || d.run_row(&run).await["status"] != "running").then_some(lines)
        })
        .await;
        last = seen;
        d.kill9();
        check_registry(&home.join("registry.db"));
        check_index(&home, "chatty", &run, round, Killed::MidWrite);
        d = d.start_again(DaemonOpts::default()).await;
    }
    d.wait_run_end(&run).await;
    let (lines, end) = stdout_lines(&d, "chatty", &run).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(lines.len(), n as usize, "every line once");
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")),
        "in order"
    );
    check_index(&home, "chatty", &run, 50, Killed::No);
}

fn check_registry(db: &std::path::Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let ok: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// Whether the daemon that wrote the files was killed while writing.
#[derive(PartialEq)]
enum Killed {
    MidWrite,
    No,
}

/// Every index entry points inside the log (or the notes) at a record that ends with a
/// newline, each one right after the last of its file: the index and the log agree.
/// A daemon killed mid-write may leave the last entry torn (SIGKILL can cut a write(2)
/// short between pages); the next daemon cuts the index back to its checkpoint, which
/// the final check, with no kill, proves: there, no entry may be torn.
fn check_index(home: &std::path::Path, task: &str, run: &str, round: usize, killed: Killed) {
    let dir = home.join("runs").join(task).join("logs");
    let mut idx = std::fs::read(dir.join(format!("run_{run}.idx"))).unwrap();
    let log = std::fs::read(dir.join(format!("run_{run}.log"))).unwrap();
    let sys = std::fs::read(dir.join(format!("run_{run}.sys"))).unwrap_or_default();
    if killed == Killed::No {
        assert_eq!(idx.len() % 24, 0, "round {round}: a torn index entry");
    }
    idx.truncate(idx.len() - idx.len() % 24);
    let (mut log_at, mut sys_at) = (0u64, 0u64);
    for (i, e) in idx.chunks(24).enumerate() {
        let off = u64::from_le_bytes(e[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64;
        let (file, at) = if e[12] == 2 {
            (&sys, &mut sys_at)
        } else {
            (&log, &mut log_at)
        };
        assert_eq!(
            off,
            *at,
            "round {round}: entry {} is not where the last one ended",
            i + 1
        );
        assert!(
            off + len <= file.len() as u64,
            "round {round}: entry {} past the end",
            i + 1
        );
        let partial = e[13] & 1 != 0;
        assert!(
            partial || file[(off + len - 1) as usize] == b'\n',
            "round {round}: entry {} does not end a line",
            i + 1
        );
        *at += len;
    }
    // The log may run ahead of the index only by records being written when the daemon
    // died (the next daemon cuts them back to its checkpoint and writes them again).
    assert!(log.len() as u64 >= log_at, "round {round}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_holder_died_with_the_daemon_never_runs_twice() {
    let mut d1 = Daemon::start().await;
    d1.run_task("svc", &["--restart", "always"], &["sleep", "1000"])
        .await;
    let old = d1.wait_task_status("svc", "ready").await["pid"]
        .as_i64()
        .unwrap() as i32;
    let mut guard = KillOnDrop(vec![old]);
    d1.kill9();
    // Nothing keeps its output or exit now: the run cannot be taken back.
    kill_holder(old as u32);
    assert!(!is_esrch(old), "the orphan runs on after the daemon died");

    let d2 = d1.start_again(DaemonOpts::default()).await;
    let t = wait_for("svc to run again", DEADLINE, || async {
        let t = d2.task("svc").await;
        (t["status"] == "ready" && t["pid"].as_i64() != Some(old as i64)).then_some(t)
    })
    .await;
    guard.0.push(t["pid"].as_i64().unwrap() as i32);
    // The run the dead holder had is over (lost, or failed when the new daemon still
    // reached the holder as it went): it gets a diagnostics bundle either way.
    let runs = d2.runs("svc").await;
    let over = runs
        .iter()
        .find(|r| r["attempt"] == 1)
        .unwrap_or_else(|| panic!("the first run: {runs:?}"));
    let over_id = over["run_id"].as_str().unwrap().to_string();
    let bundle = wait_for("the dead holder's run's bundle", DEADLINE, || async {
        let (status, v) = d2.get(&format!("/runs/{over_id}/diagnostics")).await;
        (status == 200).then_some(v)
    })
    .await;
    assert!(
        bundle["status"] == "lost" || bundle["status"] == "failed",
        "{bundle}"
    );
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

/// `corral shutdown --leave-running` stops the daemon and not its tasks; the next daemon
/// takes them back with their logs going on, and a plain shutdown stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leave_running_hands_the_tasks_to_the_next_daemon() {
    let mut d1 = Daemon::start().await;
    let go = d1.home.join("go");
    let script = format!(
        "echo before; while [ ! -e {} ]; do sleep 0.05; done; echo after; exec sleep 1000",
        go.display()
    );
    let run = d1
        .run_task("svc", &["--restart", "always"], &["sh", "-c", &script])
        .await;
    let pid = d1.wait_task_status("svc", "ready").await["pid"]
        .as_i64()
        .unwrap() as i32;
    let _guard = KillOnDrop(vec![-pid]);
    wait_for("the first line", DEADLINE, || async {
        (d1.run_row(&run).await["lines"] == 1).then_some(())
    })
    .await;
    let out = d1.cli(&["shutdown", "--leave-running"]).await.ok();
    assert_eq!(out.stdout().trim(), "stopped");
    assert_eq!(d1.terminate(), Some(0), "the daemon ended by itself");
    assert!(!is_esrch(pid), "the task runs on");
    std::fs::write(&go, "").unwrap();

    let mut d2 = d1.start_again(DaemonOpts::default()).await;
    let t = d2.wait_task_status("svc", "ready").await;
    assert_eq!(t["pid"], pid);
    assert_eq!(t["run_id"], run.as_str());
    wait_for("the line printed while no daemon ran", DEADLINE, || async {
        (d2.run_row(&run).await["lines"] == 2).then_some(())
    })
    .await;
    let out = d2.cli(&["shutdown"]).await.ok();
    assert_eq!(out.stdout().trim(), "stopped");
    assert_eq!(d2.terminate(), Some(0));
    wait_until("the task to be stopped", DEADLINE, || {
        proc_state(pid as u32).is_none_or(|s| s == 'Z')
    })
    .await;
    let d3 = d2.start_again(DaemonOpts::default()).await;
    let (lines, end) = stdout_lines(&d3, "svc", &run).await;
    assert_eq!(lines, ["before", "after"]);
    assert_eq!(end["status"], "killed", "{end}");
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

/// A disk that fills up under a run: the failed writes are counted in `/metrics` and shown
/// in `runs` and `ps` while the run goes on; its end is recorded (retried until the
/// registry can be written) with `truncated` and the reason; and once there is room again
/// the next run's log is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_counted_shown_and_the_run_still_gets_its_end() {
    let tmp = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let home = tmp.path().join("home");
    let _disk = Tmpfs::mount(&home, "6m");
    let d = Daemon::start_in(tmp.clone(), DaemonOpts::default()).await;
    // Room to give back later.
    let filler = home.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).unwrap();
    let go = tmp.path().join("go");
    let script = format!(
        "yes 0123456789012345678901234567890123456789 | head -c 12000000; \
         while [ ! -e {} ]; do sleep 0.05; done; echo done",
        go.display()
    );
    let run = d.run_task("fill", &[], &["sh", "-c", &script]).await;
    let row = wait_for("failed writes to show", DEADLINE, || async {
        let row = d.run_row(&run).await;
        (row["write_errors"].as_u64() > Some(0)).then_some(row)
    })
    .await;
    assert_eq!(row["status"], "running", "{row}");
    assert_eq!(row["truncated"], true, "{row}");
    let why = row["write_error"].as_str().unwrap_or_default();
    assert!(why.contains("No space left"), "{row}");
    let metrics = d.metrics().await;
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("corral_log_write_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("corral_log_write_errors_total in /metrics");
    assert!(failed > 0, "{metrics}");
    let ps = d.cli(&["ps"]).await.ok();
    assert!(ps.stdout().contains("failed writes"), "{}", ps.stdout());
    let runs = d.cli(&["runs", "fill"]).await.ok();
    assert!(
        runs.stdout().contains("log writes failing"),
        "{}",
        runs.stdout()
    );

    // The run ends while the disk is still full; once there is room its end is recorded.
    std::fs::write(&go, "").unwrap();
    d.wait_task_status("fill", "completed").await;
    wait_for("the registry write to fail", DEADLINE, || async {
        let m = d.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix("corral_registry_write_errors_total "))
            .is_some_and(|v| v.trim() != "0")
            .then_some(())
    })
    .await;
    assert_eq!(
        d.run_row(&run).await["status"],
        "running",
        "not recorded yet"
    );
    std::fs::remove_file(&filler).unwrap();
    let row = d.wait_run_end(&run).await;
    assert_eq!(row["status"], "succeeded", "{row}");
    assert_eq!(row["truncated"], true, "{row}");
    let msg = row["error_message"].as_str().unwrap_or_default();
    assert!(msg.contains("could not be fully written"), "{row}");

    // With room again (the full run's log removed with its task), a run's log is whole.
    d.cli(&["rm", "fill"]).await.ok();
    std::fs::remove_dir_all(home.join("runs").join("fill")).unwrap();
    let next = d
        .run_task("after", &[], &["sh", "-c", "echo one; echo two"])
        .await;
    d.wait_run_end(&next).await;
    let (lines, end) = stdout_lines(&d, "after", &next).await;
    assert_eq!(lines, ["one", "two"]);
    assert_eq!(end["status"], "succeeded");
    assert_eq!(d.run_row(&next).await["truncated"], false);
}

/// Resident anonymous memory of a process in KiB (what the allocator holds).
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status")
}

/// Memory comes back: after runs whose followers caught up from the files (the ring,
/// the block cache, the encodings) and the removal of their tasks, the daemon's memory is
/// within 20% of what it was before them (regression: 120 MB stayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_near_its_baseline_after_runs_and_rm() {
    let d = Daemon::start().await;
    let script = "import sys\nfor i in range(200000):\n    sys.stdout.write('%099d\\n' % i)\n";
    let cycle = |name: String| {
        let d = &d;
        async move {
            let run = d.run_task(&name, &[], &[python(), "-c", script]).await;
            d.wait_run_end(&run).await;
            // Two followers catch up from the files, through the block cache.
            let query = format!("run={run}&since=0");
            let (a, b) = tokio::join!(d.read_to_end(&name, &query), d.read_to_end(&name, &query));
            assert_eq!(a.len(), b.len());
            assert!(a.len() > 200_000, "{} items", a.len());
            d.cli(&["rm", &name]).await.ok();
        }
    };
    // Cycles first: what the daemon keeps for good (its runtime, the capture thread,
    // the registry's cache) is in the baseline.
    // Two of them, so that both runtime workers have served a run: each keeps a little
    // of its own for good (its allocator arena, its framing scratch), and which worker a
    // later cycle lands on must not count as growth.
    cycle("warmup".into()).await;
    cycle("warmup2".into()).await;
    let baseline = rss_anon_kib(d.pid);
    for i in 0..3 {
        cycle(format!("job{i}")).await;
    }
    let after = rss_anon_kib(d.pid);
    // Each run held 20 MB of log behind its followers (the regression this pins kept
    // 120 MB). Within 20% of the baseline, but never less than 4 MiB of slack: the
    // registry's page cache (at most 2 MiB) grows with its rows, and the allocator keeps
    // up to about 2 MiB in its per-thread arenas depending on which threads served the
    // runs (measured: 2.0 to 2.2 MiB in a run in ten); a baseline of a few MiB would
    // otherwise measure only that.
    let allowed = (baseline + baseline / 5).max(baseline + 4096);
    assert!(
        after <= allowed,
        "RssAnon {after} KiB after three runs and rm, baseline {baseline} KiB (allowed {allowed} KiB)"
    );
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Regression: every live run kept its log files open for good (and the daemon one
/// more descriptor per holder), so under `ulimit -n 256` the 78th task failed with "Too
/// many open files". Under `ulimit -n 1024` (soft and hard), 500 tasks all start, each
/// one's first line is in its log, the daemon stays under its limit, and the files the
/// budget closed open again for a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_tasks_start_under_a_limit_of_1024_open_files() {
    const TASKS: usize = 500;
    let d = Daemon::start_with(DaemonOpts {
        nofile: Some(1024),
        ..Default::default()
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid)).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "the daemon runs under a limit of 1024 open files:\n{limits}"
    );
    let mut runs = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let name = format!("t{i}");
        let (status, v) = d
            .post(
                "/tasks",
                &json!({
                    "name": name,
                    "command": ["sh", "-c", "echo up $0; exec sleep 600", name],
                }),
            )
            .await;
        assert_eq!(
            status,
            201,
            "task {i} of {TASKS} did not start ({} descriptors open): {v}",
            fd_count(d.pid)
        );
        runs.push(v["run_id"].as_str().unwrap().to_string());
    }
    let (_, tasks) = d.get("/tasks").await;
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), TASKS);
    for t in tasks {
        assert!(t["pid"].as_u64().is_some(), "every task has a process: {t}");
        assert!(
            t["last_error"].is_null(),
            "no task failed to start or write: {t}"
        );
    }
    // Every first line reached its log (written through a set of files that the budget
    // may have closed since).
    for (i, run) in runs.iter().enumerate().step_by(7) {
        let want = format!("up t{i}\n");
        let raw = wait_for("the task's first line in its log", DEADLINE, || async {
            let raw = d.raw_log(run).await;
            (raw == want.as_bytes()).then_some(raw)
        })
        .await;
        assert_eq!(raw, want.as_bytes());
    }
    let open = fd_count(d.pid);
    assert!(open < 1024, "{open} descriptors open under a limit of 1024");
    // A reader of the oldest task, whose files were closed long ago, gets its log.
    let mut stream = d.open_stream("t0", "since=0&follow=false").await;
    let mut items = Vec::new();
    while let Some(v) = stream.next().await {
        items.push(v);
    }
    assert!(items.iter().any(|v| v["line"] == "up t0"), "{items:?}");
}
