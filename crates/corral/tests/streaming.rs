//! Live log streaming: followers attached at any time get every record once, a stalled
//! follower costs nothing, and NDJSON, SSE, WebSocket and `corral monitor` resume from a
//! cursor with no gap and no duplicate.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

/// Prints `n` numbered lines in two halves, after the file argv[1] exists and then after
/// argv[2] exists, so that the test decides when the run is "mid-run".
const TWO_HALVES: &str = r#"
import os, sys, time
def wait(p):
    while not os.path.exists(p):
        time.sleep(0.005)
n = int(sys.argv[3])
w = sys.stdout.write
wait(sys.argv[1])
for i in range(n):
    if i == n // 2:
        sys.stdout.flush()
        wait(sys.argv[2])
    w(f"line {i} {'z' * (i % 50)}\n")
    if i % 250 == 0:
        sys.stdout.flush()
        time.sleep(0.0005)
"#;

fn touch(path: &std::path::Path) {
    std::fs::File::create(path).unwrap();
}

/// Reads a stream on its own task, publishing how many items it has seen.
fn spawn_reader(
    mut s: NdjsonStream,
) -> (watch::Receiver<usize>, tokio::task::JoinHandle<Vec<Value>>) {
    let (tx, rx) = watch::channel(0);
    let task = tokio::spawn(async move {
        let mut items = Vec::new();
        while let Some(v) = s.next().await {
            if v.get("heartbeat").is_some() {
                continue;
            }
            let end = v.get("end").is_some();
            items.push(v);
            tx.send_replace(items.len());
            if end {
                assert!(s.next().await.is_none(), "items after the end record");
                return items;
            }
        }
        panic!(
            "the stream ended without an end record after {} items",
            items.len()
        );
    });
    (rx, task)
}

/// Checks a whole run of [`TWO_HALVES`]: `n` stdout lines in order between the
/// `started` and `exited` system records.
fn check_two_halves(items: &[Value], n: usize, who: &str) {
    let (records, end) = check_dense(items, 1);
    assert_eq!(records.len(), n + 2, "{who}: record count");
    assert_eq!(end["status"], "succeeded", "{who}");
    let out = of_stream(&records, "stdout");
    assert_eq!(out.len(), n, "{who}");
    for (i, r) in out.iter().enumerate() {
        let want = format!("line {i} {}", "z".repeat(i % 50));
        assert_eq!(r["line"].as_str(), Some(want.as_str()), "{who}: {r}");
    }
    assert_eq!(system_lines(&records).len(), 2, "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_followers_attached_at_different_times_get_every_record_once() {
    // A tiny ring, so that late followers catch up from the file.
    let d = Daemon::start_with(DaemonOpts::args(&["--ring-records", "100"])).await;
    let n = 50_000;
    let (go1, go2) = (go_file(d.tmp.path(), "1"), go_file(d.tmp.path(), "2"));
    let (g1, g2, ns) = (go1.to_str().unwrap(), go2.to_str().unwrap(), n.to_string());
    let run_id = d
        .run_task("multi", &[], &[python(), "-c", TWO_HALVES, g1, g2, &ns])
        .await;

    // Follower 1: from the start.
    let (mut seen1, f1) = spawn_reader(d.open_stream("multi", "since=0&follow=true").await);
    touch(&go1);
    wait_for("follower 1 to see 10,000 records", DEADLINE, || {
        let seen = *seen1.borrow_and_update();
        std::future::ready((seen >= 10_000).then_some(()))
    })
    .await;

    // Follower 2: mid-run (the child waits for go2 half way).
    assert_eq!(d.run_row(&run_id).await["status"], "running");
    let (mut seen2, f2) = spawn_reader(d.open_stream("multi", "since=0&follow=true").await);
    wait_for("follower 2 to start reading", DEADLINE, || {
        std::future::ready((*seen2.borrow_and_update() > 0).then_some(()))
    })
    .await;
    touch(&go2);

    let items1 = tokio::time::timeout(DEADLINE, f1)
        .await
        .expect("follower 1 never ended")
        .unwrap();
    let items2 = tokio::time::timeout(DEADLINE, f2)
        .await
        .expect("follower 2 never ended")
        .unwrap();
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["lines"], n as u64);

    // Follower 3: after the run ended.
    let items3 = d.read_to_end("multi", "since=0&follow=true").await;

    check_two_halves(&items1, n, "follower 1 (at start)");
    check_two_halves(&items2, n, "follower 2 (mid-run)");
    check_two_halves(&items3, n, "follower 3 (after the end)");
    // They all saw the same records, timestamps included.
    assert!(
        items1 == items2 && items2 == items3,
        "followers saw different records"
    );
}

/// A follower that opens the stream and then reads nothing at all.
fn stalled_follower(d: &Daemon, task: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    write!(
        s,
        "GET /api/v1/tasks/{task}/logs?since=0&follow=true HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{}\r\n",
        d.port,
        d.auth_line()
    )
    .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_slows_nothing_and_costs_no_memory() {
    // No size cap in the way: every record stays readable from the file.
    let d = Daemon::start_with(DaemonOpts::args(&["--max-log-mb", "1024"])).await;
    // ~200 MB: 200,000 lines of about 1 KB, after the go file exists.
    let script = r#"
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
w = sys.stdout.write
for b in range(200):
    w("".join(f"{b * 1000 + i:08d} " + "x" * (900 + i % 200) + "\n" for i in range(1000)))
"#;
    let go = go_file(d.tmp.path(), "big");
    let run_id = d
        .run_task("big", &[], &[python(), "-c", script, go.to_str().unwrap()])
        .await;

    let _stalled = stalled_follower(&d, "big");
    let mut reader = d.open_stream("big", "since=0&follow=true").await;
    let reading = tokio::spawn(async move { reader.count_to_end().await });
    // The stalled follower is registered (its request reached a handler) before the run starts.
    wait_for("both followers to be attached", DEADLINE, || async {
        let resp = d
            .http
            .get(format!("{}/metrics", d.addr))
            .bearer_auth(d.token.as_deref().unwrap_or(""))
            .send()
            .await
            .ok()?;
        let text = resp.text().await.ok()?;
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix("corral_followers "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        (n >= 2.0).then_some(())
    })
    .await;

    let rss_before = rss_kib(d.pid);
    let (stop_tx, stop_rx) = watch::channel(false);
    let pid = d.pid;
    let sampler = tokio::spawn(async move {
        let mut max = 0;
        while !*stop_rx.borrow() {
            max = max.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        max.max(rss_kib(pid))
    });

    touch(&go);
    // The child is never blocked by the stalled follower: its run ends.
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "succeeded", "{row}");
    assert_eq!(row["lines"], 200_000);
    let bytes = row["bytes"].as_u64().unwrap();
    assert!(bytes > 190_000_000, "{row}");

    // The follower that reads gets everything, while the other one is still stalled.
    let (records, end) = tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("the reading follower never finished")
        .unwrap();
    assert_eq!(records, 200_002);
    assert_eq!(end["status"], "succeeded");

    stop_tx.send_replace(true);
    let rss_max = sampler.await.unwrap();
    let grew_mib = rss_max.saturating_sub(rss_before) / 1024;
    eprintln!("daemon RSS {rss_before} KiB before, {rss_max} KiB at most, for {bytes} bytes");
    assert!(
        grew_mib < 200,
        "daemon RSS grew by {grew_mib} MiB ({rss_before} KiB -> {rss_max} KiB) for {bytes} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_and_sse_resume_from_a_cursor() {
    let d = Daemon::start_with(DaemonOpts::args(&["--ring-records", "50"])).await;
    let (go1, go2) = (go_file(d.tmp.path(), "1"), go_file(d.tmp.path(), "2"));
    touch(&go1);
    let (g1, g2) = (go1.to_str().unwrap(), go2.to_str().unwrap());
    let run_id = d
        .run_task("resume", &[], &[python(), "-c", TWO_HALVES, g1, g2, "1000"])
        .await;

    // Read up to seq 300 (the child is blocked half way, after seq 501), then drop.
    let mut s = d.open_stream("resume", "since=0&follow=true").await;
    assert_eq!(
        s.run_id.as_deref(),
        Some(run_id.as_str()),
        "X-Corral-Run-Id"
    );
    let mut first = Vec::new();
    while first.len() < 300 {
        let v = s.next().await.expect("stream ended early");
        if v.get("seq").is_some() {
            first.push(v);
        }
    }
    drop(s);
    check_dense(
        &[first.clone(), vec![serde_json::json!({"end": {}})]].concat(),
        1,
    );

    // NDJSON: since=300 resumes at 301, live.
    let mut s = d
        .open_stream("resume", &format!("run={run_id}&since=300&follow=true"))
        .await;
    let v = s.next().await.unwrap();
    assert_eq!(v["seq"], 301, "{v}");
    touch(&go2);
    let mut rest = vec![v];
    rest.extend(s.read_to_end().await);
    let (records, end) = check_dense(&rest, 301);
    assert_eq!(records.last().unwrap()["seq"], 1002);
    assert_eq!(end["status"], "succeeded");
    let mut all = first.clone();
    all.extend(records.iter().cloned());
    let lines: Vec<_> = of_stream(&all, "stdout")
        .iter()
        .map(|r| r["line"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lines.len(), 1000);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l.starts_with(&format!("line {i} "))));

    // SSE: Last-Event-ID resumes after that id; each event's id is its seq.
    let resp = d
        .request(reqwest::Method::GET, "/tasks/resume/logs?since=5")
        .header("accept", "text/event-stream")
        .header("last-event-id", "300")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = read_sse_to_end(resp).await;
    let (last, recs) = events.split_last().unwrap();
    assert_eq!(last.event.as_deref(), Some("end"), "{last:?}");
    assert_eq!(recs.len(), 1002 - 300);
    for (i, e) in recs.iter().enumerate() {
        let seq = 301 + i as u64;
        assert_eq!(e.id, Some(seq), "{e:?}");
        assert_eq!(e.data["seq"], seq, "{e:?}");
        assert_eq!(
            e.data,
            all[seq as usize - 1],
            "SSE and NDJSON differ at {seq}"
        );
    }
}

#[derive(Debug)]
struct SseEvent {
    id: Option<u64>,
    event: Option<String>,
    data: Value,
}

/// Reads an SSE body up to its `end` event, skipping comments (heartbeats).
async fn read_sse_to_end(resp: reqwest::Response) -> Vec<SseEvent> {
    use futures_util::StreamExt;
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    loop {
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..i + 2).collect();
            let text = String::from_utf8(block).unwrap();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            let Some(data) = data else { continue };
            let end = event.as_deref() == Some("end");
            events.push(SseEvent { id, event, data });
            if end {
                return events;
            }
        }
        let chunk = tokio::time::timeout(DEADLINE, body.next())
            .await
            .expect("the SSE stream sent nothing for 60 s")
            .expect("the SSE stream ended without an end event")
            .unwrap();
        buf.extend_from_slice(&chunk);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_delivers_the_same_records_and_the_end() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let d = Daemon::start_with(DaemonOpts::args(&["--ring-records", "100"])).await;
    let go = go_file(d.tmp.path(), "ws");
    let script = r#"
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
for i in range(3000):
    print(f"ws {i}", file=sys.stderr if i % 10 == 0 else sys.stdout)
sys.exit(2)
"#;
    let run_id = d
        .run_task("ws", &[], &[python(), "-c", script, go.to_str().unwrap()])
        .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(d.ws_request("/tasks/ws/logs/ws?since=0"))
        .await
        .expect("WebSocket handshake");
    touch(&go);
    let mut items = Vec::new();
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("the WebSocket sent nothing for 60 s")
            .expect("the WebSocket closed before the end record")
            .unwrap();
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v.get("heartbeat").is_some() {
                    continue;
                }
                let end = v.get("end").is_some();
                items.push(v);
                if end {
                    break;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
    // After the end record the server closes.
    let next = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("no close after the end");
    assert!(
        matches!(next, Some(Ok(Message::Close(_))) | None),
        "{next:?}"
    );
    let _ = ws.close(None).await;

    let (records, end) = check_dense(&items, 1);
    assert_eq!(records.len(), 3002);
    assert_eq!(of_stream(&records, "stderr").len(), 300);
    assert_eq!(
        (end["status"].as_str(), end["exit_code"].as_i64()),
        (Some("failed"), Some(2))
    );
    assert!(records.iter().all(|r| r["run_id"] == run_id.as_str()));
    // The NDJSON stream has exactly the same records.
    let ndjson = d.read_to_end("ws", "since=0&follow=true").await;
    assert!(ndjson == items, "WebSocket and NDJSON records differ");
}

/// Reads the monitor's NDJSON stdout line by line.
struct MonitorOut {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl MonitorOut {
    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("monitor printed nothing for 60 s")
            .unwrap()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("monitor printed non-JSON ({e}): {line}")),
        )
    }

    async fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next().await {
            out.push(v);
        }
        out
    }
}

async fn exit_code(child: &mut tokio::process::Child) -> Option<i32> {
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("monitor did not exit")
        .unwrap()
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_replays_and_follows_then_exits_with_the_runs_status() {
    let d = Daemon::start().await;

    // A finished run, replayed whole.
    let run_id = d
        .run_task(
            "done",
            &[],
            &[
                "sh",
                "-c",
                "for i in $(seq 1 500); do echo \"done $i\"; done; exit 3",
            ],
        )
        .await;
    d.wait_run_end(&run_id).await;
    let out = d.cli(&["monitor", "done", "--since", "0", "--json"]).await;
    assert_eq!(out.code, Some(3), "stderr: {}", out.stderr);
    let (records, end) = check_dense(&out.ndjson(), 1);
    assert_eq!(records.len(), 502);
    assert_eq!(end["exit_code"], 3);
    // `--tail` shows only the last records of history.
    let out = d.cli(&["monitor", "done", "--tail", "10", "--json"]).await;
    assert_eq!(out.code, Some(3));
    let (records, _) = check_dense(&out.ndjson(), 493);
    assert_eq!(records.len(), 10);
    // Plain output: the lines, corral's notes marked.
    let out = d.cli(&["monitor", "done", "--tail", "3"]).await;
    assert_eq!(
        out.stdout(),
        "done 499\ndone 500\n[corral] exited with code 3\n"
    );

    // A live run: history first, then live records, then the exit status.
    let go = go_file(d.tmp.path(), "live");
    let script = r#"
import os, sys, time
print("before", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
for i in range(2000):
    print(f"live {i}")
sys.exit(5)
"#;
    d.run_task("live", &[], &[python(), "-c", script, go.to_str().unwrap()])
        .await;
    let mut child = d.spawn_cli(&["monitor", "live", "--json"]);
    let mut out = MonitorOut {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
    };
    let mut items = Vec::new();
    while items.len() < 2 {
        items.push(out.next().await.expect("monitor ended early"));
    }
    assert_eq!(items[1]["line"], "before", "{items:?}");
    touch(&go);
    items.extend(out.rest().await);
    assert_eq!(exit_code(&mut child).await, Some(5));
    let (records, end) = check_dense(&items, 1);
    assert_eq!(records.len(), 2003);
    assert_eq!(end["exit_code"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_resumes_after_the_daemon_comes_back() {
    let mut d1 = Daemon::start().await;
    let run_id = d1
        .run_task(
            "mon",
            &[],
            &[
                "sh",
                "-c",
                "for i in $(seq 1 100); do echo \"m $i\"; done; exec sleep 1000",
            ],
        )
        .await;
    let pid = d1.task("mon").await["pid"].as_u64().unwrap() as i32;
    let _guard = KillOnDrop(vec![pid]);
    let mut child = d1.spawn_cli(&["monitor", "mon", "--json"]);
    let mut out = MonitorOut {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
    };
    let mut items = Vec::new();
    while items.last().is_none_or(|v: &Value| v["seq"] != 101) {
        items.push(out.next().await.expect("monitor ended early"));
    }

    // The daemon dies under the monitor, and comes back on the same address and home;
    // the task ran on under its holder, and the new daemon takes its run back.
    d1.kill9();
    let d2 = d1
        .start_again(DaemonOpts {
            listen: Some(format!("127.0.0.1:{}", d1.port)),
            ..Default::default()
        })
        .await;
    assert_eq!(d2.port, d1.port);
    while items.last().is_none_or(|v: &Value| v["seq"] != 102) {
        items.push(out.next().await.expect("monitor ended early"));
    }
    assert!(
        items[101]["line"]
            .as_str()
            .is_some_and(|l| l.starts_with("taken back by a new daemon")),
        "{}",
        items[101]
    );
    assert_eq!(d2.task("mon").await["pid"], pid, "the same process");
    signal(pid, libc::SIGKILL);

    items.extend(out.rest().await);
    // Killed by signal 9: the monitor exits as a shell would report it, 128 + 9.
    assert_eq!(exit_code(&mut child).await, Some(137));
    let (records, end) = check_dense(&items, 1);
    assert_eq!(
        records.len(),
        103,
        "no duplicate and no gap across the reconnect"
    );
    assert_eq!(records[102]["line"], "killed by signal 9 (SIGKILL)");
    assert_eq!(end["status"], "failed");
    assert_eq!(end["signal"], 9);
    assert!(records.iter().all(|r| r["run_id"] == run_id.as_str()));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("resuming after record 101"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_carries_heartbeats() {
    let d = Daemon::start().await;
    d.run_task("idle", &[], &["sleep", "1000"]).await;
    let mut s = d.open_stream("idle", "since=0&follow=true").await;
    let first = s.next().await.unwrap();
    assert_eq!(first["stream"], "system", "{first}");
    let t0 = Instant::now();
    let hb = s.next().await.unwrap();
    assert!(hb["heartbeat"].as_f64().is_some_and(|t| t > 1.6e9), "{hb}");
    // At least every 15 s (with room for a loaded machine).
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "first heartbeat after {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_attaching_while_the_ring_turns_over_miss_nothing() {
    // A ring of 10 records turns over thousands of times while followers attach.
    let d = Daemon::start_with(DaemonOpts::args(&["--ring-records", "10"])).await;
    let go = go_file(d.tmp.path(), "fast");
    let script = r#"
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
w = sys.stdout.write
for i in range(300000):
    w(f"{i}\n")
"#;
    let run_id = d
        .run_task("fast", &[], &[python(), "-c", script, go.to_str().unwrap()])
        .await;
    let total = 300_002u64;
    let mut readers = Vec::new();
    let first = d.open_stream("fast", "since=0&follow=true").await;
    let (tx, mut progress) = watch::channel(0u64);
    readers.push(tokio::spawn(async move {
        // The first follower reports how far it got, to time the others' attaching.
        let mut s = first;
        let mut want = 1u64;
        loop {
            let line = s.next_line().await.expect("stream ended early");
            let v: Value = serde_json::from_slice(&line).unwrap();
            if let Some(seq) = v["seq"].as_u64() {
                assert_eq!(seq, want);
                want += 1;
                if seq % 1000 == 0 {
                    tx.send_replace(seq);
                }
            } else if let Some(end) = v.get("end") {
                return (1, want - 1, end.clone());
            }
        }
    }));
    touch(&go);
    for k in 1..=8u64 {
        wait_for("the first follower to progress", DEADLINE, || {
            std::future::ready((*progress.borrow_and_update() >= k * 25_000).then_some(()))
        })
        .await;
        // Alternately from the start and from a cursor somewhere behind.
        let since = if k % 2 == 0 { 0 } else { k * 20_000 };
        let mut s = d
            .open_stream("fast", &format!("run={run_id}&since={since}&follow=true"))
            .await;
        readers.push(tokio::spawn(async move {
            let (n, end) = s.count_to_end_from(since + 1).await;
            (since + 1, n, end)
        }));
    }
    for r in readers {
        let (from, n, end) = tokio::time::timeout(DEADLINE, r)
            .await
            .expect("a follower never ended")
            .unwrap();
        assert_eq!(
            from + n - 1,
            total,
            "the follower from {from} got {n} records"
        );
        assert_eq!(end["status"], "succeeded");
    }
}

/// While the size cap drops the middle of a live run's log, a follower catching up from
/// the file gets either the right bytes or an explicit gap, never the zeros of a range
/// punched out under it. (A race: three runs make it show reliably while it exists.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_followers_catching_up_during_the_size_cap_never_get_punched_bytes() {
    let d = Daemon::start_with(DaemonOpts::args(&[
        "--max-log-mb",
        "1",
        "--ring-records",
        "50",
    ]))
    .await;
    // 30 MB of numbered 100-byte lines through a 1 MiB cap.
    let script = r#"
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
w = sys.stdout.write
for i in range(1, 300001):
    w(f"{i:09d} " + "c" * 90 + "\n")
"#;
    for round in 0..3 {
        let task = format!("cap{round}");
        let go = go_file(d.tmp.path(), &task);
        let run_id = d
            .run_task(&task, &[], &[python(), "-c", script, go.to_str().unwrap()])
            .await;
        let mut readers = Vec::new();
        for k in 0..4u64 {
            let mut s = d
                .open_stream(&task, &format!("run={run_id}&since=0&follow=true"))
                .await;
            readers.push(tokio::spawn(async move {
                let (mut want, mut gaps, mut n) = (1u64, 0, 0u64);
                loop {
                    let line = s.next_line().await.expect("the stream ended early");
                    let v: Value = serde_json::from_slice(&line).unwrap();
                    if let Some(seq) = v["seq"].as_u64() {
                        assert_eq!(seq, want, "follower {k}");
                        want += 1;
                        n += 1;
                        if v["stream"] == "stdout" {
                            let expect = format!("{:09} {}", seq - 1, "c".repeat(90));
                            let got = v["line"].as_str().unwrap();
                            assert!(got == expect, "follower {k}, seq {seq}: got {got:?}");
                        }
                        // The others lag behind now and then, to read from the file.
                        if k > 0 && n % (200 * k) == 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    } else if let Some(g) = v.get("gap") {
                        assert_eq!(g["from"], want, "follower {k}: {v}");
                        want = g["to"].as_u64().unwrap() + 1;
                        gaps += 1;
                    } else if let Some(end) = v.get("end") {
                        return (want - 1, gaps, end.clone());
                    }
                }
            }));
        }
        touch(&go);
        for r in readers {
            let (last, gaps, end) = tokio::time::timeout(DEADLINE, r)
                .await
                .expect("a follower never ended")
                .unwrap();
            assert_eq!(last, 300_002);
            assert!(gaps >= 1, "the cap dropped a range");
            assert_eq!(end["status"], "succeeded");
        }
        assert_eq!(d.run_row(&run_id).await["truncated"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_escapes_sequences_only_on_a_terminal() {
    let d = Daemon::start().await;
    let run_id = d
        .run_task(
            "colors",
            &[],
            &["printf", "\\033[31mred\\033[0m plain\\033]0;title\\007\\n"],
        )
        .await;
    d.wait_run_end(&run_id).await;
    // Piped: the bytes as printed.
    let out = d.cli(&["monitor", "colors", "--since", "0"]).await.ok();
    assert!(
        out.stdout().contains("\x1b[31mred\x1b[0m plain"),
        "{:?}",
        out.stdout()
    );
    // On a terminal (a pty, through python): no escape sequence reaches it.
    let mut cmd = tokio::process::Command::new(python());
    cmd.args([
        "-c",
        "import pty, sys; pty.spawn(sys.argv[1:])",
        BIN,
        "monitor",
        "colors",
        "--since",
        "0",
    ])
    .env("CORRAL_ADDR", &d.addr)
    .env("CORRAL_TOKEN", d.token.as_deref().unwrap_or(""))
    .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Shown, escaped, not executed.
    assert!(text.contains("\\e[31mred\\e[0m plain"), "{text:?}");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_an_old_run_share_one_open_log() {
    let d = Daemon::start().await;
    let old = d.run_task("hist", &[], &["seq", "1", "100000"]).await;
    d.wait_run_end(&old).await;
    // A newer run makes the first one history: it is served from disk.
    let new = d.run_task("hist", &[], &["true"]).await;
    d.wait_run_end(&new).await;

    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(
            d.open_stream("hist", &format!("run={old}&since=0&follow=true"))
                .await,
        );
    }
    // Twenty followers, none reading yet: one set of files, not twenty.
    let held = open_files_of(d.pid, &old);
    assert!(
        (1..=3).contains(&held),
        "20 followers of an old run hold {held} open files of it"
    );
    for mut s in streams {
        let (n, end) = s.count_to_end().await;
        assert_eq!(n, 100_000 + 2, "every record and corral's two notes");
        assert_eq!(end["status"], "succeeded", "{end}");
    }
}

/// The value of an unlabelled series in `/metrics`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")) as u64
}

/// The rings of all runs share one budget (`--ring-mb`): twenty runs that each printed
/// 3,000 lines hold no more than it, and a follower of any of them from seq 1 still gets
/// every record once, in order, from the files where the ring let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rings_of_all_runs_stay_within_one_budget_and_followers_lose_nothing() {
    const TASKS: usize = 20;
    const LINES: u64 = 3000;
    let d = Daemon::start_with(DaemonOpts::args(&[
        "--ring-mb",
        "1",
        "--ring-records",
        "1000",
    ]))
    .await;
    let script = format!(
        "i=1; while [ $i -le {LINES} ]; do \
         echo \"line $i of $0 .........................................................\"; \
         i=$((i+1)); done; exec sleep 600"
    );
    for i in 0..TASKS {
        d.run_task(
            &format!("r{i}"),
            &[],
            &["sh", "-c", &script, &format!("r{i}")],
        )
        .await;
    }
    for i in 0..TASKS {
        let name = format!("r{i}");
        wait_for("every line captured", DEADLINE, || async {
            let t = d.task(&name).await;
            let run = t["run_id"].as_str()?.to_string();
            let row = d.run_row(&run).await;
            (row["lines"].as_u64() == Some(LINES)).then_some(())
        })
        .await;
    }
    let m = d.metrics().await;
    let budget = metric(&m, "corral_ring_budget_bytes");
    assert_eq!(budget, 1 << 20);
    let held = metric(&m, "corral_ring_bytes");
    assert!(held <= budget, "the rings hold {held} bytes, over {budget}");
    assert!(held > 0, "the newest run's ring is not empty");
    for i in [0, TASKS / 2, TASKS - 1] {
        let name = format!("r{i}");
        let mut s = d.open_stream(&name, "since=0&follow=false").await;
        let mut items = Vec::new();
        while let Some(v) = s.next().await {
            items.push(v);
        }
        let lines: Vec<&Value> = items.iter().filter(|v| v["stream"] == "stdout").collect();
        assert_eq!(lines.len() as u64, LINES, "{name}: every line once");
        for (k, v) in lines.iter().enumerate() {
            let want = format!("line {} of {name} ", k + 1);
            assert!(
                v["line"].as_str().unwrap().starts_with(&want),
                "{name}: record {k} is {v}"
            );
        }
        let seqs: Vec<u64> = items.iter().filter_map(|v| v["seq"].as_u64()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{name}: dense seqs"
        );
    }
}
