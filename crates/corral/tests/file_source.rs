//! Followed files (`corral tail`): a real daemon follows real files while they are
//! written, rotated and truncated, and across daemon restarts; every line reaches the log
//! exactly once, in order. Waits are on the run's log on disk reaching a known length,
//! never on time.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `corral tail PATH --name NAME`; returns the run id.
async fn tail(d: &Daemon, name: &str, path: &Path) -> String {
    let out = d
        .cli(&["tail", path.to_str().unwrap(), "--name", name])
        .await
        .ok();
    out.stdout().trim().to_string()
}

fn log_file(d: &Daemon, task: &str, run_id: &str, ext: &str) -> PathBuf {
    d.home
        .join("runs")
        .join(task)
        .join("logs")
        .join(format!("run_{run_id}.{ext}"))
}

/// Waits until the run's `.log` (exactly the file bytes in records) is `len` bytes long.
async fn wait_log_len(d: &Daemon, task: &str, run_id: &str, len: u64) {
    let path = log_file(d, task, run_id, "log");
    let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
    let deadline = std::time::Instant::now() + DEADLINE;
    while size() < len && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let read = |ext: &str| {
        String::from_utf8_lossy(&std::fs::read(log_file(d, task, run_id, ext)).unwrap_or_default())
            .into_owned()
    };
    assert_eq!(
        size(),
        len,
        "{} should hold {len} bytes: {:?}; the run's notes: {}; the daemon's stderr: {}",
        path.display(),
        read("log"),
        read("sys"),
        d.stderr()
    );
}

/// Waits until the run's `system` notes (its `.sys`) contain `text`.
async fn wait_note(d: &Daemon, task: &str, run_id: &str, text: &str) {
    let path = log_file(d, task, run_id, "sys");
    wait_until(&format!("the note `{text}`"), DEADLINE, || {
        String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).contains(text)
    })
    .await;
}

fn lines(from: u32, to: u32, tag: &str) -> String {
    (from..to).map(|i| format!("{tag} line {i}\n")).collect()
}

/// Stops the task and returns its run's records (seqs dense from 1) and end.
async fn stop_and_read(d: &Daemon, task: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    d.cli(&["stop", task]).await.ok();
    let items = d.read_to_end(task, "since=0&follow=true").await;
    check_dense(&items, 1)
}

fn file_lines(records: &[serde_json::Value]) -> String {
    of_stream(records, "file")
        .iter()
        .map(|r| format!("{}\n", r["line"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_reads_every_line_once_in_order_and_says_so() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.log");
    let mut old = std::fs::File::create(&f).unwrap();
    old.write_all(lines(0, 50, "a").as_bytes()).unwrap();
    let run = tail(&d, "app", &f).await;
    wait_log_len(&d, "app", &run, lines(0, 50, "a").len() as u64).await;
    // Renamed away; the writer still finishes its line in the old file, then re-creates.
    std::fs::rename(&f, dir.path().join("app.log.1")).unwrap();
    old.write_all(lines(50, 60, "a").as_bytes()).unwrap();
    drop(old);
    append(&f, &lines(0, 40, "b"));
    let want = lines(0, 60, "a") + &lines(0, 40, "b");
    wait_log_len(&d, "app", &run, want.len() as u64).await;

    let (records, end) = stop_and_read(&d, "app").await;
    assert_eq!(file_lines(&records), want);
    let notes = system_lines(&records);
    assert!(
        notes.iter().any(|n| n.starts_with("file rotated: ")),
        "{notes:?}"
    );
    assert_eq!(end["status"], "killed", "{end}");
    let t = d.task("app").await;
    assert_eq!(t["command"], f.to_str().unwrap(), "ps shows the path: {t}");
    assert_eq!(t["status"], "stopped", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_goes_on_from_the_start_with_a_note() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.log");
    append(&f, &lines(0, 30, "a"));
    let run = tail(&d, "ct", &f).await;
    wait_log_len(&d, "ct", &run, lines(0, 30, "a").len() as u64).await;
    std::fs::copy(&f, dir.path().join("app.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    wait_note(&d, "ct", &run, "file truncated").await;
    append(&f, &lines(0, 10, "b"));
    let want = lines(0, 30, "a") + &lines(0, 10, "b");
    wait_log_len(&d, "ct", &run, want.len() as u64).await;
    let (records, _) = stop_and_read(&d, "ct").await;
    assert_eq!(file_lines(&records), want);
    let notes = system_lines(&records);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("file truncated: ") && n.contains("copytruncate")),
        "{notes:?}"
    );
}

/// Truncated and written again before the follower looked: the file is no shorter than
/// the read position, but its first bytes changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_truncation_is_followed_even_when_the_file_grew_back() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.log");
    append(&f, &lines(0, 5, "a"));
    let run = tail(&d, "tr", &f).await;
    let first = lines(0, 5, "a");
    wait_log_len(&d, "tr", &run, first.len() as u64).await;
    // One write replaces the content with longer, different content.
    let second = lines(0, 20, "b");
    std::fs::write(&f, &second).unwrap();
    let want = first + &second;
    wait_log_len(&d, "tr", &run, want.len() as u64).await;
    let (records, _) = stop_and_read(&d, "tr").await;
    assert_eq!(file_lines(&records), want);
    assert!(system_lines(&records)
        .iter()
        .any(|n| n.starts_with("file truncated: ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_created_after_the_task_started_is_read_from_its_start() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Its directory does not exist yet either.
    let f = dir.path().join("later").join("app.log");
    let run = tail(&d, "later", &f).await;
    wait_note(&d, "later", &run, "waiting for").await;
    std::fs::create_dir(dir.path().join("later")).unwrap();
    append(&f, "first\nsecond\npartial");
    wait_log_len(&d, "later", &run, "first\nsecond\n".len() as u64).await;
    append(&f, " line\n");
    wait_log_len(
        &d,
        "later",
        &run,
        "first\nsecond\npartial line\n".len() as u64,
    )
    .await;
    let (records, _) = stop_and_read(&d, "later").await;
    assert_eq!(file_lines(&records), "first\nsecond\npartial line\n");
    let notes = system_lines(&records);
    assert!(notes.iter().any(|n| n.contains("appeared")), "{notes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_path_is_refused_with_a_clear_message() {
    let d = Daemon::start().await;
    let (status, v) = d
        .post(
            "/tasks",
            &serde_json::json!({"name": "rel", "kind": "file", "extra": {"path": "app.log"}}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("absolute path"), "{v}");
}

/// A daemon killed (`kill -9`) and one stopped gracefully, while the file is written and
/// rotated: lines written while no daemon ran arrive once, none twice. The killed daemon's
/// run is taken back (same run, seqs going on); after the graceful stop a new run goes on
/// where the stopped one left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restarts_lose_no_line_and_repeat_none() {
    let mut d1 = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.log");
    append(&f, &lines(0, 100, "a"));
    let run = tail(&d1, "svc", &f).await;
    wait_log_len(&d1, "svc", &run, lines(0, 100, "a").len() as u64).await;
    d1.kill9();
    // While no daemon runs: more lines, a rotation, lines in the new file.
    append(&f, &lines(100, 150, "a"));
    std::fs::rename(&f, dir.path().join("app.log.1")).unwrap();
    append(&f, &lines(0, 30, "b"));

    let mut d2 = d1.start_again(DaemonOpts::default()).await;
    let want1 = lines(0, 150, "a") + &lines(0, 30, "b");
    wait_log_len(&d2, "svc", &run, want1.len() as u64).await;
    assert_eq!(d2.task("svc").await["run_id"], run.as_str(), "taken back");
    append(&f, &lines(30, 40, "b"));
    let want1 = want1 + &lines(30, 40, "b");
    wait_log_len(&d2, "svc", &run, want1.len() as u64).await;
    assert_eq!(d2.terminate(), Some(0), "{}", d2.stderr());
    append(&f, &lines(40, 60, "b"));

    let d3 = d2.start_again(DaemonOpts::default()).await;
    let run2 = wait_for("a new run", DEADLINE, || async {
        let t = d3.task("svc").await;
        let id = t["run_id"].as_str().unwrap_or_default().to_string();
        (id != run && t["status"] == "ready").then_some(id)
    })
    .await;
    wait_log_len(&d3, "svc", &run2, lines(40, 60, "b").len() as u64).await;
    append(&f, &lines(60, 70, "b"));
    wait_log_len(&d3, "svc", &run2, lines(40, 70, "b").len() as u64).await;

    // The first run: seqs dense across the kill, every line once.
    let items = d3.read_to_end("svc", &format!("run={run}&since=0")).await;
    let (records, _) = check_dense(&items, 1);
    assert_eq!(file_lines(&records), want1);
    let notes = system_lines(&records);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("taken back by a new daemon")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("rotated while no daemon")),
        "{notes:?}"
    );
    let (records, _) = stop_and_read(&d3, "svc").await;
    assert_eq!(file_lines(&records), lines(40, 70, "b"));
}

/// A million numbered lines while the writer rotates the file three times (rename and
/// re-create): every line exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_lines_through_three_rotations_arrive_once_in_order() {
    const N: u64 = 1_000_000;
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.log");
    let run = tail(&d, "big", &f).await;
    let script = format!(
        "import os, sys\n\
         path = sys.argv[1]\n\
         out = open(path, 'w')\n\
         for i in range({N}):\n\
         \x20   if i and i % 250000 == 0:\n\
         \x20       out.close()\n\
         \x20       os.rename(path, path + '.%d' % (i // 250000))\n\
         \x20       out = open(path, 'w')\n\
         \x20   out.write('%07d\\n' % i)\n\
         out.close()\n"
    );
    let status = tokio::process::Command::new(python())
        .args(["-c", &script, f.to_str().unwrap()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    wait_log_len(&d, "big", &run, N * 8).await;
    let raw = std::fs::read(log_file(&d, "big", &run, "log")).unwrap();
    for (i, line) in raw.split(|&b| b == b'\n').take(N as usize).enumerate() {
        let n: u64 = std::str::from_utf8(line).unwrap().parse().unwrap();
        assert_eq!(n, i as u64, "line {i}");
    }
    let sys = String::from_utf8(std::fs::read(log_file(&d, "big", &run, "sys")).unwrap()).unwrap();
    assert_eq!(sys.matches("file rotated: ").count(), 3, "{sys}");
    let (n, end) = d
        .open_stream("big", "since=0&follow=true")
        .await
        .count_to_end_with_stop(&d, "big")
        .await;
    assert!(n >= N, "{n} records");
    assert_eq!(end["status"], "killed");
}

trait StopThenCount {
    async fn count_to_end_with_stop(self, d: &Daemon, task: &str) -> (u64, serde_json::Value);
}

impl StopThenCount for NdjsonStream {
    /// Stops the task, then counts the stream's records (checking their seqs are dense).
    async fn count_to_end_with_stop(mut self, d: &Daemon, task: &str) -> (u64, serde_json::Value) {
        d.cli(&["stop", task]).await.ok();
        self.count_to_end().await
    }
}

/// A stop leaves an incomplete last line in the file; the next run (a restart by hand)
/// goes on where the stopped one left off and reads that line whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_goes_on_where_the_last_stopped_and_reads_a_cut_line_whole() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.log");
    append(&f, "one\ntwo\npart");
    let run = tail(&d, "cut", &f).await;
    wait_log_len(&d, "cut", &run, 8).await;
    let (records, _) = stop_and_read(&d, "cut").await;
    assert_eq!(file_lines(&records), "one\ntwo\n");
    assert!(system_lines(&records)
        .iter()
        .any(|n| n.starts_with("an incomplete last line (4 bytes)")));
    append(&f, "ial\nthree\n");
    d.cli(&["restart", "cut"]).await.ok();
    let run2 = d.task("cut").await["run_id"].as_str().unwrap().to_string();
    assert_ne!(run2, run);
    wait_log_len(&d, "cut", &run2, "partial\nthree\n".len() as u64).await;
    let (records, _) = stop_and_read(&d, "cut").await;
    assert_eq!(file_lines(&records), "partial\nthree\n");
    assert!(system_lines(&records)
        .iter()
        .any(|n| n.contains("from byte 8, where the last reading stopped")));
}

/// Regression: a reader that fell two rotations behind (here, the daemon is stopped while
/// the file rotates twice) went from the first file straight to the one at the path, and
/// skipped the one between. It reads the one between first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_two_rotations_behind_skips_no_file() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.log");
    append(&f, &lines(0, 3, "a"));
    let run = tail(&d, "behind", &f).await;
    wait_log_len(&d, "behind", &run, lines(0, 3, "a").len() as u64).await;
    assert!(signal(d.pid as i32, libc::SIGSTOP));
    append(&f, &lines(3, 5, "a"));
    std::fs::rename(&f, dir.path().join("app.log.1")).unwrap();
    append(&f, &lines(0, 4, "b"));
    std::fs::rename(&f, dir.path().join("app.log.2")).unwrap();
    append(&f, &lines(0, 2, "c"));
    assert!(signal(d.pid as i32, libc::SIGCONT));
    let want = lines(0, 5, "a") + &lines(0, 4, "b") + &lines(0, 2, "c");
    wait_log_len(&d, "behind", &run, want.len() as u64).await;
    let (records, _) = stop_and_read(&d, "behind").await;
    assert_eq!(file_lines(&records), want);
    assert!(system_lines(&records)
        .iter()
        .any(|n| n.contains("app.log.2") && n.starts_with("reading ")));
}
