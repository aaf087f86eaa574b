//! Capture and storage: what a process prints is kept byte for byte, framed into dense
//! records, and surrounded by corral's own `system` records.

mod common;

use common::*;
use serde_json::Value;

/// Writes 200,000 lines of varied length, with tabs, UTF-8, empty and space-ended lines.
const LINES_200K: &str = r#"
import sys
w = sys.stdout.write
words = ["alpha", "beta\tgamma", "", "δέλτα ünïcode", "x" * 300, "tab\there\tand\tthere", "trailing space "]
for i in range(200000):
    w(f"{i}\t{words[i % 7]} {'y' * (i * 7919 % 97)}\n")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_exact_log_of_200000_lines() {
    let d = Daemon::start().await;
    let expected = std::process::Command::new(python())
        .args(["-c", LINES_200K])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(expected.iter().filter(|&&b| b == b'\n').count(), 200_000);

    let run_id = d
        .run_task("lines", &[], &[python(), "-c", LINES_200K])
        .await;
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "succeeded", "{row}");

    // `corral logs NAME` with no filter: exactly what the process wrote.
    let out = d.cli(&["logs", "lines"]).await.ok();
    assert!(
        out.stdout == expected,
        "corral logs differs from what the process wrote"
    );
    // The raw download is the same bytes.
    assert!(
        d.raw_log(&run_id).await == expected,
        "GET /runs/{{id}}/log differs"
    );

    // The JSON records carry the same lines, in order, with no partial or lossy flag.
    let out = d.cli(&["logs", "lines", "--json"]).await.ok();
    let mut records = out.ndjson();
    // The stored log ends with the run's end record, like every stream.
    let end = records.pop().expect("an end record");
    assert_eq!(end["end"]["status"], "succeeded", "{end}");
    assert_eq!(records.len(), 200_000);
    let mut rebuilt = Vec::with_capacity(expected.len());
    for r in &records {
        assert_eq!(r["stream"], "stdout", "{r}");
        assert!(
            r.get("partial").is_none() && r.get("lossy").is_none(),
            "{r}"
        );
        rebuilt.extend_from_slice(r["line"].as_str().unwrap().as_bytes());
        rebuilt.push(b'\n');
    }
    assert!(
        rebuilt == expected,
        "the JSON lines do not rebuild the output"
    );

    // The registry counts the process's lines (not corral's notes) and bytes.
    let runs = d.cli(&["runs", "lines", "--json"]).await.ok().json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r["run_id"], run_id.as_str());
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["lines"], 200_000, "{r}");
    assert_eq!(r["bytes"], expected.len() as u64, "{r}");
    assert_eq!(r["error_message"], Value::Null);

    // The layout of the contract: the log, and an index of one entry per record.
    let log_path = d
        .home
        .join("runs/lines/logs")
        .join(format!("run_{run_id}.log"));
    assert_eq!(r["log_path"], log_path.display().to_string(), "{r}");
    assert!(std::fs::read(&log_path).unwrap() == expected);
    let idx = std::fs::metadata(log_path.with_extension("idx")).unwrap();
    assert_eq!(idx.len() % 24, 0, "the index holds fixed 24-byte entries");
    assert!(
        idx.len() / 24 >= 200_000,
        "one index entry per record: {}",
        idx.len()
    );
    // The registry is SQLite in WAL mode: its header's read and write versions are 2.
    let db = std::fs::read(d.home.join("registry.db")).unwrap();
    assert_eq!(&db[..16], b"SQLite format 3\0");
    assert_eq!((db[18], db[19]), (2, 2), "the registry is not in WAL mode");
}

/// 10 MiB of ASCII with no newline at all, in a pattern that does not repeat every 64 KiB.
fn ten_mib() -> Vec<u8> {
    let pattern = b"abcdefghijklmnopqrstuvwxyz0123456789A"; // 37 bytes
    (0..10 * 1024 * 1024)
        .map(|i| pattern[i % pattern.len()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_line_without_newline_becomes_160_partial_records() {
    let d = Daemon::start().await;
    let script = r#"
import sys
p = b"abcdefghijklmnopqrstuvwxyz0123456789A"
n = 10 * 1024 * 1024
sys.stdout.buffer.write((p * (n // len(p) + 1))[:n])
"#;
    let run_id = d.run_task("longline", &[], &[python(), "-c", script]).await;
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "succeeded", "{row}");
    let input = ten_mib();

    assert!(
        d.raw_log(&run_id).await == input,
        "the raw log differs from the input"
    );

    let items = d.read_to_end("longline", "since=0&follow=true").await;
    let (records, end) = check_dense(&items, 1);
    assert_eq!(end["status"], "succeeded");
    let chunks = of_stream(&records, "stdout");
    assert_eq!(chunks.len(), 160);
    let mut joined = Vec::with_capacity(input.len());
    for (i, c) in chunks.iter().enumerate() {
        let line = c["line"].as_str().unwrap();
        assert_eq!(line.len(), 64 * 1024, "chunk {i}");
        if i < 159 {
            assert_eq!(c["partial"], true, "chunk {i} must be partial");
        } else {
            assert!(
                c.get("partial").is_none(),
                "the last chunk ends the line: {}",
                c["seq"]
            );
        }
        joined.extend_from_slice(line.as_bytes());
    }
    assert!(
        joined == input,
        "the chunks do not concatenate to the input"
    );
    // `lines` counts records: the 160 chunks.
    assert_eq!(d.run_row(&run_id).await["lines"], 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_kept_raw_and_marked_lossy_in_json() {
    let d = Daemon::start().await;
    let script = r#"
import sys
sys.stdout.buffer.write(b"valid caf\xc3\xa9\nbad \xff\xfe here\nlast\xc3")
"#;
    let run_id = d.run_task("utf8", &[], &[python(), "-c", script]).await;
    d.wait_run_end(&run_id).await;
    let raw = d.raw_log(&run_id).await;
    assert_eq!(raw, b"valid caf\xc3\xa9\nbad \xff\xfe here\nlast\xc3");

    let items = d.read_to_end("utf8", "since=0&follow=true").await;
    let (records, _) = check_dense(&items, 1);
    let out = of_stream(&records, "stdout");
    assert_eq!(out.len(), 3, "{records:?}");
    assert_eq!(out[0]["line"], "valid café");
    assert!(out[0].get("lossy").is_none(), "{}", out[0]);
    assert_eq!(out[1]["line"], "bad \u{FFFD}\u{FFFD} here");
    assert_eq!(out[1]["lossy"], true, "{}", out[1]);
    assert_eq!(out[2]["line"], "last\u{FFFD}");
    assert_eq!(out[2]["lossy"], true, "{}", out[2]);

    // `corral logs` without a filter still prints the bytes, not the replacement.
    let cli = d.cli(&["logs", "utf8"]).await.ok();
    assert_eq!(cli.stdout, raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_records_frame_each_run() {
    let d = Daemon::start().await;

    // A run that exits on its own.
    let run_id = d
        .run_task("sys", &[], &["sh", "-c", "echo hi; exit 3"])
        .await;
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(
        (row["status"].as_str(), row["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    let pid = row["pid"].as_i64().expect("the run has a pid");
    let items = d.read_to_end("sys", "since=0&follow=true").await;
    let (records, end) = check_dense(&items, 1);
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[0]["stream"], "system");
    assert_eq!(
        records[0]["line"],
        format!("started pid {pid}: sh -c 'echo hi; exit 3'"),
        "{}",
        records[0]
    );
    assert_eq!(
        (records[1]["stream"].as_str(), records[1]["line"].as_str()),
        (Some("stdout"), Some("hi"))
    );
    assert_eq!(records[2]["stream"], "system");
    assert_eq!(records[2]["line"], "exited with code 3");
    assert_eq!(end["status"], "failed");
    assert_eq!(end["exit_code"], 3);
    for r in &records {
        assert_eq!(r["run_id"], run_id.as_str());
        assert!(r["ts"].as_f64().unwrap() > 1.6e9, "{r}");
    }
    assert_eq!(d.task("sys").await["status"], "completed");

    // A run stopped by request.
    let run_id = d.run_task("sleeper", &[], &["sleep", "1000"]).await;
    let pid = d.task("sleeper").await["pid"].as_u64().unwrap();
    let out = d.cli(&["stop", "sleeper"]).await.ok();
    assert_eq!(out.stdout().trim(), "sleeper: stopped");
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "killed", "{row}");
    assert_eq!(row["signal"], libc::SIGTERM);
    assert!(
        row["error_message"]
            .as_str()
            .unwrap()
            .contains("stopped by request"),
        "{row}"
    );
    let items = d.read_to_end("sleeper", "since=0&follow=true").await;
    let (records, end) = check_dense(&items, 1);
    let notes = system_lines(&records);
    assert!(
        notes[0].starts_with(&format!("started pid {pid}: sleep 1000")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("SIGTERM to process group {pid}"))),
        "{notes:?}"
    );
    assert_eq!(
        notes.last().unwrap(),
        "killed by signal 15 (SIGTERM)",
        "{notes:?}"
    );
    assert_eq!(end["status"], "killed");
    assert_eq!(end["signal"], libc::SIGTERM);
    assert_eq!(d.task("sleeper").await["status"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_filters_by_tail_grep_and_stream() {
    let d = Daemon::start().await;
    let script = r#"
import sys
for i in range(1, 101):
    print(f"out {i}", flush=True)
    if i % 10 == 0:
        print(f"err {i}", file=sys.stderr, flush=True)
"#;
    let run_id = d.run_task("mixed", &[], &[python(), "-c", script]).await;
    d.wait_run_end(&run_id).await;

    // Two pipes interleave in the order the capture read them; take that order as given.
    let mut all = d.cli(&["logs", "mixed", "--json"]).await.ok().ndjson();
    assert!(
        all.pop().is_some_and(|e| e.get("end").is_some()),
        "ends with the end record"
    );
    assert_eq!(all.len(), 110);
    let last: Vec<String> = all[107..]
        .iter()
        .map(|r| format!("{}\n", r["line"].as_str().unwrap()))
        .collect();

    // --tail counts the process's lines (corral's notes are not shown by `logs`).
    let out = d.cli(&["logs", "mixed", "--tail", "3"]).await.ok();
    assert_eq!(out.stdout(), last.concat());
    let out = d
        .cli(&["logs", "mixed", "--tail", "1", "--json"])
        .await
        .ok();
    let mut recs = out.ndjson();
    assert!(recs.pop().is_some_and(|e| e.get("end").is_some()));
    assert_eq!(recs, all[109..]);

    let out = d.cli(&["logs", "mixed", "--stream", "stderr"]).await.ok();
    let want: String = (1..=10).map(|i| format!("err {}\n", i * 10)).collect();
    assert_eq!(out.stdout(), want);
    let out = d
        .cli(&["logs", "mixed", "--grep", "^out 5[0-9]$", "--tail", "2"])
        .await
        .ok();
    assert_eq!(out.stdout(), "out 58\nout 59\n");
    let out = d
        .cli(&["logs", "mixed", "--stream", "system", "--json"])
        .await
        .ok();
    assert_eq!(out.ndjson().len(), 3, "two notes and the end record");
    let out = d.cli(&["logs", "mixed", "--grep", "("]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("--grep"), "{}", out.stderr);
    // By run id, from the CLI and through the query.
    let out = d
        .cli(&["logs", "mixed", "--run", &run_id, "--tail", "1"])
        .await
        .ok();
    assert_eq!(out.stdout(), last[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_env_cwd_labels_and_follow() {
    let d = Daemon::start().await;
    let dir = d.tmp.path().join("work dir");
    std::fs::create_dir_all(&dir).unwrap();
    let out = d
        .cli(&[
            "run",
            "--name",
            "envy",
            "--env",
            "FOO=bar=baz",
            "--cwd",
            dir.to_str().unwrap(),
            "--label",
            "team=ml",
            "--follow",
            "--",
            "sh",
            "-c",
            "echo \"$FOO\"; pwd; exit 4",
        ])
        .await;
    // --follow: the run id, then the output, and the run's exit status.
    assert_eq!(out.code, Some(4), "stderr: {}", out.stderr);
    let text = out.stdout();
    let lines: Vec<&str> = text.lines().collect();
    let canonical = std::fs::canonicalize(&dir).unwrap();
    assert_eq!(lines[1..4].len(), 3, "{text}");
    assert!(lines[1].starts_with("[corral] started pid "), "{text}");
    assert_eq!(lines[2], "bar=baz", "{text}");
    assert_eq!(lines[3], canonical.to_str().unwrap(), "{text}");
    assert_eq!(lines[4], "[corral] exited with code 4", "{text}");
    let runs = d.runs("envy").await;
    assert_eq!(runs[0]["run_id"], lines[0]);
    let t = d.task("envy").await;
    assert_eq!(t["labels"]["team"], "ml", "{t}");

    // --json prints the task and run id as one object.
    let out = d
        .cli(&["run", "--name", "j", "--json", "--", "true"])
        .await
        .ok();
    let v = out.json();
    assert_eq!(v["task"], "j");
    assert!(v["run_id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_cap_keeps_head_and_tail_and_reports_the_gap() {
    let d = Daemon::start_with(DaemonOpts::args(&[
        "--max-log-mb",
        "1",
        "--ring-records",
        "100",
    ]))
    .await;
    // 5 MB of numbered 100-byte lines, then a wait until the file argv[1] exists.
    let script = r#"
import os, sys, time
w = sys.stdout.write
for i in range(1, 50001):
    w(f"{i:09d} " + "c" * 90 + "\n")
sys.stdout.flush()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
"#;
    let go = d.home.join("capped-go");
    let go_arg = go.display().to_string();
    let run_id = d
        .run_task("capped", &[], &[python(), "-c", script, &go_arg])
        .await;
    // Cut already while it still runs: the registry row says so before the run ends.
    let live = wait_for("all lines captured", DEADLINE, || async {
        let row = d.run_row(&run_id).await;
        (row["lines"] == 50_000).then_some(row)
    })
    .await;
    assert_eq!(live["status"], "running", "{live}");
    assert_eq!(live["truncated"], true, "{live}");
    std::fs::write(&go, b"").unwrap();
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "succeeded", "{row}");
    assert_eq!(row["truncated"], true, "{row}");
    assert_eq!(row["lines"], 50_000, "{row}");

    let items = d.read_to_end("capped", "since=0&follow=true").await;
    let gaps: Vec<&Value> = items.iter().filter(|v| v.get("gap").is_some()).collect();
    assert_eq!(gaps.len(), 1, "one gap record");
    let (from, to) = (
        gaps[0]["gap"]["from"].as_u64().unwrap(),
        gaps[0]["gap"]["to"].as_u64().unwrap(),
    );
    assert!(from > 1 && to > from && to < 50_002, "{}", gaps[0]);
    // Every seq but the gap's, in order, and the lines kept are the right ones.
    let seqs: Vec<u64> = items.iter().filter_map(|v| v["seq"].as_u64()).collect();
    let want: Vec<u64> = (1..from).chain(to + 1..=50_002).collect();
    assert_eq!(seqs, want);
    for r in items.iter().filter(|v| v["stream"] == "stdout") {
        let n = r["seq"].as_u64().unwrap() - 1; // seq 1 is `started`
        assert!(
            r["line"].as_str().unwrap().starts_with(&format!("{n:09} ")),
            "{r}"
        );
    }
    assert!(items.last().unwrap().get("end").is_some());

    // The raw log leaves the dropped middle out and names it; the kept bytes fit the cap.
    let resp = d
        .request(reqwest::Method::GET, &format!("/runs/{run_id}/log"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-corral-gap"],
        format!("{from}-{to}").as_str()
    );
    let raw = resp.bytes().await.unwrap();
    assert!(raw.len() < 2 * 1024 * 1024, "{} bytes kept", raw.len());
    let kept: Vec<u64> = raw
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(&l[..9]).unwrap().parse().unwrap())
        .collect();
    let want: Vec<u64> = (1..from - 1).chain(to..=50_000).collect();
    assert_eq!(kept, want);
    let out = d.cli(&["logs", "capped"]).await.ok();
    assert_eq!(out.stdout.len(), raw.len());
    assert!(
        out.stderr.contains("dropped by the log size cap"),
        "{}",
        out.stderr
    );
}
