//! Supervision: restart policy and the retry budget, stopping process trees, processes
//! that hold the pipes, commands that do not exist, and runs orphaned by a daemon crash.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Reads the records of one run, whole.
async fn run_records(
    d: &Daemon,
    task: &str,
    run_id: &str,
) -> (Vec<serde_json::Value>, serde_json::Value) {
    let items = d
        .read_to_end(task, &format!("run={run_id}&since=0&follow=true"))
        .await;
    check_dense(&items, 1)
}

/// Waits until the run printed `armed`: the script's SIGTERM trap is set from then on.
async fn wait_armed(d: &Daemon, run_id: &str) {
    wait_for("the script to set its SIGTERM trap", DEADLINE, || async {
        String::from_utf8_lossy(&d.raw_log(run_id).await)
            .contains("armed")
            .then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_reaches_error_after_the_retry_budget() {
    let d = Daemon::start().await;
    d.cli(&[
        "run",
        "--name",
        "crash",
        "--restart",
        "on-failure",
        "--max-retries",
        "3",
        "--backoff-initial",
        "100ms",
        "--backoff-max",
        "200ms",
        "--",
        "sh",
        "-c",
        "echo boom >&2; exit 7",
    ])
    .await
    .ok();
    let task = d.wait_task_status("crash", "error").await;
    assert_eq!(task["restarts"], 3, "{task}");
    assert_eq!(task["pid"], serde_json::Value::Null, "{task}");

    let ps = d.cli(&["ps", "--json"]).await.ok().json();
    let row = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "crash")
        .unwrap()
        .clone();
    assert_eq!(
        (row["status"].as_str(), row["restarts"].as_u64()),
        (Some("error"), Some(3)),
        "{row}"
    );

    let runs = d.cli(&["runs", "crash", "--json"]).await.ok().json();
    let mut runs = runs.as_array().unwrap().clone();
    assert_eq!(runs.len(), 4, "{runs:#?}");
    runs.reverse(); // oldest first
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["attempt"], i as u64 + 1, "{r}");
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["exit_code"], 7, "{r}");
        let msg = r["error_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error_message: {r}"));
        assert!(
            msg.contains("exit") && msg.contains('7') && msg.contains("boom"),
            "{msg}"
        );
    }
    // Backoff: each retry waited (at least) its delay, 100 ms then 200 ms, minus 10% jitter.
    for (i, pair) in runs.windows(2).enumerate() {
        let waited =
            pair[1]["started_at"].as_f64().unwrap() - pair[0]["ended_at"].as_f64().unwrap();
        let min = if i == 0 { 0.089 } else { 0.179 };
        assert!(
            waited >= min,
            "retry {} started {waited:.3}s after the failure",
            i + 1
        );
    }

    for (i, r) in runs.iter().enumerate() {
        let (records, end) = run_records(&d, "crash", r["run_id"].as_str().unwrap()).await;
        assert_eq!(end["exit_code"], 7);
        let notes = system_lines(&records);
        assert_eq!(notes[notes.len() - 2], "exited with code 7", "{notes:?}");
        let last = notes.last().unwrap();
        if i < 3 {
            assert!(
                last.starts_with("restarting in ")
                    && last.ends_with(&format!("(retry {}/3)", i + 1)),
                "run {i}: {notes:?}"
            );
        } else {
            assert!(
                last.starts_with("giving up after 4 consecutive failures"),
                "{notes:?}"
            );
        }
        let stderr: Vec<_> = of_stream(&records, "stderr")
            .iter()
            .map(|r| r["line"].clone())
            .collect();
        assert_eq!(stderr, ["boom"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_tree_whose_grandchildren_ignore_sigterm() {
    become_subreaper();
    let d = Daemon::start().await;
    let run_id = d
        .run_task(
            "tree",
            &[],
            &[
                "sh",
                "-c",
                r#"trap "" TERM; (trap "" TERM; sleep 1000) & (trap "" TERM; sleep 1000) & wait"#,
            ],
        )
        .await;
    let pgid = d.task("tree").await["pid"].as_u64().unwrap() as u32;
    let mut guard = KillOnDrop(vec![-(pgid as i32)]);
    // The shell and both sleeps (and maybe the subshells) are up.
    wait_until("the grandchildren to start", DEADLINE, || {
        group_members(pgid)
            .iter()
            .filter(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count()
            == 2
    })
    .await;

    let t0 = Instant::now();
    let out = d
        .cli(&["stop", "tree", "--timeout", "1s", "--json"])
        .await
        .ok();
    let took = t0.elapsed();
    // Far below the sleeps' 1000 s; the grace itself is checked by the note below.
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    assert_eq!(out.json()["status"], "stopped", "{}", out.stdout());

    // No process of the group survives (the test reaps the orphans it inherited).
    wait_until(
        "the process group to be gone",
        Duration::from_secs(10),
        || {
            reap_group(pgid);
            is_esrch(-(pgid as i32))
        },
    )
    .await;
    guard.0.clear();

    let row = d.run_row(&run_id).await;
    assert_eq!(row["status"], "killed", "{row}");
    assert_eq!(row["signal"], libc::SIGKILL, "{row}");
    let (records, end) = run_records(&d, "tree", &run_id).await;
    let notes = system_lines(&records);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("stop requested: SIGTERM to process group")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n
                == &format!("still running 1s after SIGTERM: SIGKILL to process group {pgid}")),
        "{notes:?}"
    );
    assert_eq!(end["status"], "killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_holding_the_pipes_does_not_hang_the_run() {
    become_subreaper();
    let d = Daemon::start().await;

    // In the task's process group: it goes with its parent.
    let run_id = d
        .run_task("bg", &[], &["sh", "-c", "sleep 1000 & echo parent done"])
        .await;
    let pgid = d.run_row(&run_id).await["pid"].as_u64().unwrap() as u32;
    let _guard = KillOnDrop(vec![-(pgid as i32)]);
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "succeeded", "{row}");
    wait_until(
        "the background sleep to be gone",
        Duration::from_secs(10),
        || {
            reap_group(pgid);
            is_esrch(-(pgid as i32))
        },
    )
    .await;

    // In a session of its own, out of reach of the group signals: the run still ends.
    let script = r#"
import os, subprocess
r, w = os.pipe()
p = subprocess.Popen(
    ["sh", "-c", "echo late words; echo >&%d; exec sleep 1000" % w],
    start_new_session=True, pass_fds=(w,),
)
os.close(w)
os.read(r, 1)  # the grandchild has written its line
print("grandchild", p.pid, flush=True)
"#;
    let run_id = d.run_task("escaped", &[], &[python(), "-c", script]).await;
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "succeeded", "{row}");
    let (records, end) = run_records(&d, "escaped", &run_id).await;
    assert_eq!(end["status"], "succeeded");
    let gc: i32 = of_stream(&records, "stdout")
        .iter()
        .find_map(|r| {
            r["line"]
                .as_str()?
                .strip_prefix("grandchild ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no grandchild pid in {records:?}"));
    let _gc = KillOnDrop(vec![gc]);
    assert_eq!(
        proc_state(gc as u32).map(|s| s != 'Z'),
        Some(true),
        "the escaped grandchild still runs"
    );
    assert_eq!(d.task("escaped").await["status"], "completed");
    // What it wrote within the grace is kept, and the log says why capture stopped.
    let out = of_stream(&records, "stdout");
    assert!(out.iter().any(|r| r["line"] == "late words"), "{records:?}");
    assert!(
        system_lines(&records)
            .iter()
            .any(|l| l.contains("stopped reading stdout and stderr")
                && l.contains("outside its process group")),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_exist_fails_the_run_with_a_message() {
    let d = Daemon::start().await;
    let out = d
        .cli(&[
            "run",
            "--name",
            "nocmd",
            "--",
            "/nonexistent/corral-test-cmd",
            "arg",
        ])
        .await;
    assert_eq!(out.code, Some(1), "a command that cannot start fails `run`");
    assert!(
        out.stderr
            .contains("failed to start `/nonexistent/corral-test-cmd`"),
        "{}",
        out.stderr
    );
    let run_id = out.stdout().trim().to_string();
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "failed", "{row}");
    let msg = row["error_message"].as_str().unwrap();
    assert!(
        msg.contains("/nonexistent/corral-test-cmd") && msg.contains("No such file"),
        "{msg}"
    );
    let task = d.wait_task_status("nocmd", "error").await;
    assert_eq!(task["last_error"], msg, "{task}");
    let (records, end) = run_records(&d, "nocmd", &run_id).await;
    assert_eq!(end["status"], "failed");
    assert!(
        system_lines(&records)[0].contains("failed to start"),
        "{records:?}"
    );

    // The API says so in its answer too.
    let (status, v) = d
        .post(
            "/tasks",
            &serde_json::json!({"name": "nocmd3", "command": ["/nonexistent/y"]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert!(
        v["spawn_error"]
            .as_str()
            .is_some_and(|e| e.contains("failed to start `/nonexistent/y`")),
        "{v}"
    );
    let ok = d
        .post(
            "/tasks",
            &serde_json::json!({"name": "fine", "command": ["true"]}),
        )
        .await;
    assert!(ok.1.get("spawn_error").is_none(), "{}", ok.1);

    // A restart policy does not loop on a command that cannot start.
    let out = d
        .cli(&[
            "run",
            "--name",
            "nocmd2",
            "--restart",
            "always",
            "--backoff-initial",
            "10ms",
            "--",
            "/nonexistent/x",
        ])
        .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let run_id = out.stdout().trim().to_string();
    d.wait_run_end(&run_id).await;
    d.wait_task_status("nocmd2", "error").await;
    assert_eq!(d.runs("nocmd2").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restart_marks_orphaned_runs_lost() {
    let mut d1 = Daemon::start().await;
    // Each prints three lines, then sleeps as the same pid.
    let cmd = ["sh", "-c", "echo a; echo b; echo c; exec sleep 1000"];
    let gone_run = d1.run_task("gone", &[], &cmd).await;
    let alive_run = d1.run_task("alive", &[], &cmd).await;
    let mut pids = Vec::new();
    for (task, run) in [("gone", &gone_run), ("alive", &alive_run)] {
        wait_for(&format!("{task} to print its lines"), DEADLINE, || async {
            (d1.run_row(run).await["lines"] == 3).then_some(())
        })
        .await;
        pids.push(d1.task(task).await["pid"].as_u64().unwrap() as u32);
    }
    let _guard = KillOnDrop(pids.iter().map(|&p| p as i32).collect());

    d1.kill9();
    // Their holders die too, so that nothing kept their output or exit: the runs cannot
    // be taken back. The first process dies as well. Nobody may reap it (its parent, the
    // holder, is gone): a zombie is a dead process all the same.
    for &pid in &pids {
        kill_holder(pid);
    }
    signal(pids[0] as i32, libc::SIGKILL);
    wait_until("the process to die", DEADLINE, || {
        proc_state(pids[0]).is_none_or(|s| s == 'Z')
    })
    .await;
    assert_eq!(proc_state(pids[1]).map(|s| s != 'Z'), Some(true));

    let d2 = d1.start_again(DaemonOpts::default()).await;
    let row = d2.run_row(&gone_run).await;
    assert_eq!(row["status"], "lost", "{row}");
    assert!(row["ended_at"].as_f64().is_some(), "{row}");
    let msg = row["error_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("process is gone") && !msg.contains("still runs"),
        "the process is dead, the message should say so: {msg}"
    );

    let row = d2.run_row(&alive_run).await;
    assert_eq!(row["status"], "lost", "{row}");
    let msg = row["error_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("not adopted") && msg.contains(&pids[1].to_string()),
        "{msg}"
    );

    // The tasks are known again, settled, and their logs readable to the end.
    for (task, run) in [("gone", &gone_run), ("alive", &alive_run)] {
        let t = d2.task(task).await;
        assert_eq!(t["status"], "initial", "{t}");
        assert_eq!(t["run_id"], run.as_str(), "{t}");
        let (records, end) = run_records(&d2, task, run).await;
        assert_eq!(end["status"], "lost");
        let lines: Vec<_> = of_stream(&records, "stdout")
            .iter()
            .map(|r| r["line"].clone())
            .collect();
        assert_eq!(lines, ["a", "b", "c"]);
    }
    let runs = d2.cli(&["runs", "--json"]).await.ok().json();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "lost"),
        "{runs}"
    );
}

/// `lines` counts what the process printed, not corral's `system` records, also for a
/// run that a daemon restart marked `lost` (its counts are rebuilt from the files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_lost_run_counts_only_process_lines() {
    let mut d1 = Daemon::start().await;
    let run_id = d1
        .run_task(
            "counted",
            &[],
            &["sh", "-c", "echo a; echo b; echo c; exec sleep 1000"],
        )
        .await;
    wait_for("the lines to be captured", DEADLINE, || async {
        (d1.run_row(&run_id).await["lines"] == 3).then_some(())
    })
    .await;
    let pid = d1.task("counted").await["pid"].as_u64().unwrap() as i32;
    let _guard = KillOnDrop(vec![pid]);
    d1.kill9();
    // Holder first, so that nothing records the process's end: the run is lost.
    kill_holder(pid as u32);
    signal(pid, libc::SIGKILL);
    let d2 = d1.start_again(DaemonOpts::default()).await;
    let row = d2.run_row(&run_id).await;
    assert_eq!(row["status"], "lost", "{row}");
    assert_eq!(row["bytes"], 6, "{row}");
    assert_eq!(
        row["lines"], 3,
        "lines must not count the `started pid` system record: {row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_stop_and_rm_drive_the_lifecycle() {
    let d = Daemon::start().await;

    // restart of a completed task starts a new run.
    let first = d.run_task("once", &[], &["true"]).await;
    d.wait_run_end(&first).await;
    d.wait_task_status("once", "completed").await;
    let second = d
        .cli(&["restart", "once"])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    assert_ne!(second, first);
    let row = d.wait_run_end(&second).await;
    assert_eq!(
        (row["attempt"].as_i64(), row["status"].as_str()),
        (Some(2), Some("succeeded")),
        "{row}"
    );

    // restart of a running task: the old run is killed, a new one runs.
    let old = d.run_task("svc", &[], &["sleep", "1000"]).await;
    let old_pid = d.task("svc").await["pid"].as_i64().unwrap() as i32;
    let new = d
        .cli(&["restart", "svc"])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    assert_ne!(new, old);
    assert_eq!(d.run_row(&old).await["status"], "killed");
    let t = d.wait_task_status("svc", "ready").await;
    assert_eq!(t["run_id"], new.as_str(), "{t}");
    assert_ne!(t["pid"], old_pid, "{t}");
    assert!(is_esrch(old_pid), "the old process is gone");

    // stop while waiting for a retry: no further run.
    let run = d
        .run_task(
            "waiting",
            &["--restart", "on-failure", "--backoff-initial", "10m"],
            &["sh", "-c", "exit 1"],
        )
        .await;
    d.wait_task_status("waiting", "crashed").await;
    assert_eq!(d.run_row(&run).await["status"], "failed");
    let out = d.cli(&["stop", "waiting", "--json"]).await.ok();
    assert_eq!(out.json()["status"], "stopped", "{}", out.stdout());
    assert_eq!(d.runs("waiting").await.len(), 1);
    // A stopped task starts again by hand.
    let again = d
        .cli(&["restart", "waiting"])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    assert_eq!(d.wait_run_end(&again).await["attempt"], 2);

    // rm stops and forgets the task; its runs stay.
    let pid = d.task("svc").await["pid"].as_i64().unwrap() as i32;
    let out = d.cli(&["rm", "svc"]).await.ok();
    assert_eq!(out.stdout().trim(), "removed svc");
    assert_eq!(d.get("/tasks/svc").await.0, 404);
    assert!(is_esrch(pid), "rm stops the process");
    let runs = d.runs("svc").await;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r["status"] == "killed"), "{runs:?}");
    // Its last log is still there by task name.
    let items = d.read_to_end("svc", "since=0&follow=true").await;
    assert_eq!(check_dense(&items, 1).1["status"], "killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_shutdown_stops_its_tasks_cleanly() {
    let mut d1 = Daemon::start().await;
    let run_id = d1.run_task("svc", &[], &["sleep", "1000"]).await;
    let pid = d1.task("svc").await["pid"].as_i64().unwrap() as i32;
    let _guard = KillOnDrop(vec![pid]);
    assert_eq!(
        d1.terminate(),
        Some(0),
        "SIGTERM: a clean exit\n{}",
        d1.stderr()
    );
    assert!(is_esrch(pid), "the task's process is gone");
    let d2 = d1.start_again(DaemonOpts::default()).await;
    let row = d2.run_row(&run_id).await;
    assert_eq!(row["status"], "killed", "stopped, not lost: {row}");
    assert_eq!(d2.task("svc").await["status"], "initial");
}

/// `stop --timeout` applies to that stop only; later stops use the task's own
/// `--stop-timeout` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_stop_timeout_applies_to_one_stop_only() {
    let d = Daemon::start().await;
    let cmd = [
        "sh",
        "-c",
        r#"trap "" TERM; echo armed; while :; do sleep 0.05; done"#,
    ];
    let first = d
        .run_task("stubborn", &["--stop-timeout", "2s"], &cmd)
        .await;
    wait_armed(&d, &first).await;
    d.cli(&["stop", "stubborn", "--timeout", "300ms"])
        .await
        .ok();
    let (records, _) = run_records(&d, "stubborn", &first).await;
    let notes = system_lines(&records);
    assert!(
        notes.iter().any(|n| n.ends_with("(SIGKILL after 300ms)")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("still running 300ms after SIGTERM")),
        "{notes:?}"
    );

    let second = d
        .cli(&["restart", "stubborn"])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    wait_armed(&d, &second).await;
    d.cli(&["stop", "stubborn"]).await.ok();
    let (records, _) = run_records(&d, "stubborn", &second).await;
    let notes = system_lines(&records);
    assert!(
        notes.iter().any(|n| n.ends_with("(SIGKILL after 2s)")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("still running 2s after SIGTERM")),
        "{notes:?}"
    );
}

/// A second daemon pointed at a live daemon's address and home fails to bind, and must
/// not touch the first one's runs on its way out (it used to mark them `lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_second_daemon_on_a_taken_port_leaves_the_runs_alone() {
    let d = Daemon::start().await;
    let run_id = d.run_task("svc", &[], &["sleep", "1000"]).await;
    let listen = format!("127.0.0.1:{}", d.port);
    let out = cli(
        &[
            "serve",
            "--listen",
            &listen,
            "--home",
            d.home.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains(&listen), "{}", out.stderr);
    let row = d.run_row(&run_id).await;
    assert_eq!(row["status"], "running", "{row}");
    assert_eq!(row["error_message"], serde_json::Value::Null, "{row}");
}

/// A run cut by the size cap keeps its gap when the daemon dies: the next daemon reports
/// the dropped range (registry and followers) and never serves the punched-out bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_lost_capped_run_keeps_its_gap() {
    let mut d1 = Daemon::start_with(DaemonOpts::args(&["--max-log-mb", "1"])).await;
    let script = "import sys\nfor i in range(40000):\n    sys.stdout.write('%074d\\n' % i)\nsys.stdout.flush()\nimport time\ntime.sleep(1000)\n";
    let run = d1.run_task("big", &[], &[python(), "-c", script]).await;
    wait_for("the lines to be captured", DEADLINE, || async {
        (d1.run_row(&run).await["lines"] == 40000).then_some(())
    })
    .await;
    let pid = d1.task("big").await["pid"].as_u64().unwrap() as i32;
    let _guard = KillOnDrop(vec![pid]);
    d1.kill9();
    // Holder first, so that nothing records the process's end: the run is lost.
    kill_holder(pid as u32);
    signal(pid, libc::SIGKILL);

    let d2 = d1.start_again(DaemonOpts::default()).await;
    let row = d2.run_row(&run).await;
    assert_eq!(row["status"], "lost", "{row}");
    assert_eq!(row["truncated"], true, "{row}");
    let gap = row["gap"]
        .as_array()
        .expect("the gap in the registry")
        .clone();
    let raw = d2.raw_log(&run).await;
    assert!(
        !raw.contains(&0),
        "the raw log must not contain punched-out zeros"
    );
    assert!(raw.len() < 2 * 1024 * 1024 + 200_000, "{} bytes", raw.len());
    let items = d2.read_to_end("big", &format!("run={run}&since=0")).await;
    let gaps: Vec<&serde_json::Value> = items.iter().filter(|v| v.get("gap").is_some()).collect();
    assert_eq!(gaps.len(), 1, "one gap record: {gaps:?}");
    assert_eq!(gaps[0]["gap"]["from"], gap[0]);
    assert_eq!(gaps[0]["gap"]["to"], gap[1]);
    assert!(items
        .iter()
        .filter_map(|v| v["line"].as_str())
        .all(|l| !l.contains('\0')));
}

/// A stop that comes while a restart waits for the old run to end wins: the task ends
/// stopped, and the restart is answered with an error rather than starting it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_stop_cancels_a_pending_restart() {
    let d = Daemon::start().await;
    let cmd = [
        "sh",
        "-c",
        "trap '' TERM; echo armed; while true; do sleep 0.1; done",
    ];
    // The stop must land while the restart waits out this timeout: room for a slow CLI.
    let run = d.run_task("t", &["--stop-timeout", "8s"], &cmd).await;
    wait_armed(&d, &run).await;
    let restart = d.cli(&["restart", "t"]);
    let stop = async {
        // The restart is under way once the run's stop began.
        d.wait_task_status("t", "stopping").await;
        d.cli(&["stop", "t"]).await
    };
    let (restart, stop) = tokio::join!(restart, stop);
    assert_eq!(stop.code, Some(0), "{}", stop.stderr);
    assert_ne!(
        restart.code,
        Some(0),
        "the restart must not succeed: {}",
        restart.stdout()
    );
    assert!(
        restart.stderr.contains("cancelled by a stop"),
        "{}",
        restart.stderr
    );
    let t = d.task("t").await;
    assert_eq!(t["status"], "stopped", "{t}");
    assert_eq!(d.runs("t").await.len(), 1, "no new run");
}
