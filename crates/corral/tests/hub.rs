//! The fleet against a real `redis-server` (one per test, on a free loopback port, no
//! persistence, killed at the end): two daemons with their own homes, ports and `--node`
//! names publish and register; a hub (`serve --hub`) shows their events (history and
//! live) with their node names, lists them with `corral nodes`, sees a killed node go
//! and come back, and never republishes what it read.
//!
//! `redis-server` must be installed (`apt-get install redis-server`; `scripts/test.sh`
//! does it): without it these tests fail, they are not skipped.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

const PREFIX: &str = "corral:fleet_test";
/// The nodes' heartbeat in these tests: their keys live three of them.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A redis-server of this test.
struct Server {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().unwrap().port()
}

impl Server {
    fn start() -> Server {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Server::spawn(port, dir.path());
        let mut s = Server { port, child, dir };
        s.wait_ready();
        s
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::fs::File::create(dir.join("redis.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it: apt-get install redis-server")
            })
    }

    /// Kills the server and starts a new, empty one on the same port.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Server::spawn(self.port, self.dir.path());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                panic!("redis-server ended ({st}): {log}");
            }
            if self.try_conn().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for redis-server"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn try_conn(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .ok()?
            .get_connection()
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    fn exists(&self, key: &str) -> bool {
        let mut c = self
            .try_conn()
            .expect("connecting to the test's redis-server");
        redis::cmd("EXISTS")
            .arg(key)
            .query::<u64>(&mut c)
            .expect("EXISTS")
            == 1
    }

    /// Every event in the stream, oldest first.
    fn stream(&self) -> Vec<Value> {
        let mut c = self
            .try_conn()
            .expect("connecting to the test's redis-server");
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(format!("{PREFIX}:stream"))
            .arg("-")
            .arg("+")
            .query(&mut c)
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(_, f)| serde_json::from_str(&f[1]).expect("event JSON"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon publishing to `s` as `node`, with the tests' heartbeat, and `args` more.
async fn node(s: &Server, node: &str, args: &[&str]) -> Daemon {
    let mut all = vec!["--node", node, "--node-heartbeat", "1s"];
    all.extend(args);
    Daemon::start_with(DaemonOpts {
        env: env(s),
        ..DaemonOpts::args(&all)
    })
    .await
}

fn env(s: &Server) -> Vec<(String, String)> {
    vec![
        ("CORRAL_REDIS_ENABLED".into(), "true".into()),
        ("REDIS_HOST".into(), "127.0.0.1".into()),
        ("REDIS_PORT".into(), s.port.to_string()),
        ("CORRAL_REDIS_CHANNEL_PREFIX".into(), PREFIX.into()),
    ]
}

/// `corral nodes --json` on the hub: node name → the node's object.
async fn nodes(hub: &Daemon) -> BTreeMap<String, Value> {
    let v = hub.cli(&["nodes", "--json"]).await.ok().json();
    v["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes array in {v}"))
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default().to_string(),
                n.clone(),
            )
        })
        .collect()
}

async fn wait_node_status(hub: &Daemon, name: &str, status: &str) -> Value {
    wait_for(
        &format!("node {name} {status} on the hub"),
        DEADLINE,
        || async {
            nodes(hub)
                .await
                .remove(name)
                .filter(|n| n["status"] == status)
        },
    )
    .await
}

/// Whether `events` hold `task`'s event of type `t` from `node`.
fn has(events: &[Value], node: &str, task: &str, t: &str) -> bool {
    events
        .iter()
        .any(|e| e["node"] == node && e["task"] == task && e["event_type"] == t)
}

/// Events that occur more than once: (node, timestamp, task, type, message).
fn duplicates(events: &[Value]) -> Vec<String> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        let key = format!(
            "{} {} {} {} {}",
            e["node"], e["timestamp"], e["task"], e["event_type"], e["message"]
        );
        *count.entry(key).or_default() += 1;
    }
    count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, n)| format!("{n}x {k}"))
        .collect()
}

#[tokio::test]
async fn a_hub_shows_the_fleets_events_and_nodes_and_sees_a_killed_node_go_and_come_back() {
    let server = Server::start();
    let mut alpha = node(&server, "alpha", &[]).await;
    let beta = node(&server, "beta", &[]).await;
    wait_until("beta's registration", DEADLINE, || {
        server.exists(&format!("{PREFIX}:nodes:beta"))
    })
    .await;
    // Before the hub starts: the hub must find these in the stream's history.
    let a1 = alpha
        .run_task("early-a", &[], &["sh", "-c", "echo a"])
        .await;
    let b1 = beta.run_task("early-b", &[], &["sh", "-c", "echo b"]).await;
    alpha.wait_run_end(&a1).await;
    beta.wait_run_end(&b1).await;
    wait_for("both nodes' exits in the stream", DEADLINE, || async {
        let s = server.stream();
        (has(&s, "alpha", "early-a", "exit") && has(&s, "beta", "early-b", "exit")).then_some(())
    })
    .await;

    // The hub publishes its own events too (its publisher is on), as node `hub`.
    let hub = node(&server, "hub", &["--hub"]).await;
    let evs = hub
        .wait_events("", "the history of both nodes on the hub", |e| {
            has(e, "alpha", "early-a", "exit") && has(e, "beta", "early-b", "exit")
        })
        .await;
    assert!(has(&evs, "alpha", "early-a", "start"), "{evs:?}");

    // Live: published after the hub started, also to a follower of the hub's events.
    let mut follower = hub.spawn_cli(&["events", "--follow", "--json"]);
    let mut lines =
        tokio::io::BufReader::new(follower.stdout.take().expect("the follower's stdout")).lines();
    let a2 = alpha
        .run_task("live-a", &[], &["sh", "-c", "echo a2"])
        .await;
    let b2 = beta.run_task("live-b", &[], &["sh", "-c", "echo b2"]).await;
    alpha.wait_run_end(&a2).await;
    beta.wait_run_end(&b2).await;
    let evs = hub
        .wait_events("", "both nodes' live events on the hub", |e| {
            has(e, "alpha", "live-a", "exit") && has(e, "beta", "live-b", "exit")
        })
        .await;
    let mut followed = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !(has(&followed, "alpha", "live-a", "exit")
            && has(&followed, "beta", "live-b", "exit"))
        {
            let line = lines.next_line().await.expect("reading the follower");
            let line = line.expect("corral events --follow ended early");
            followed.push(serde_json::from_str::<Value>(&line).expect("an event line"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("corral events --follow on the hub: {followed:?}"));
    drop(follower);
    // Each once: history and live overlap, and the hub's own events come back through
    // the channel; neither is shown twice.
    assert!(duplicates(&evs).is_empty(), "{:?}", duplicates(&evs));
    // `corral events` prints the node of each event, and `--node` picks one node's.
    let out = hub.cli(&["events", "--task", "live-b"]).await.ok().stdout();
    assert!(out.contains("beta"), "{out}");
    let only = hub
        .cli(&["events", "--node", "beta", "--json"])
        .await
        .ok()
        .ndjson();
    assert!(
        !only.is_empty() && only.iter().all(|e| e["node"] == "beta"),
        "{only:?}"
    );

    // Every node registered, with its version, API address and tasks by status.
    for n in ["alpha", "beta", "hub"] {
        wait_node_status(&hub, n, "up").await;
    }
    // The next heartbeat after the runs carries the tasks.
    let listed = wait_for(
        "alpha's two completed tasks on the hub",
        DEADLINE,
        || async {
            let l = nodes(&hub).await;
            (l["alpha"]["tasks"]["completed"] == 2).then_some(l)
        },
    )
    .await;
    assert_eq!(listed["alpha"]["api"], alpha.addr.as_str());
    let names: Vec<&str> = listed["alpha"]["task_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["early-a", "live-a"], "{listed:?}");
    assert!(listed["alpha"]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    let table = hub.cli(&["nodes"]).await.ok().stdout();
    assert!(table.contains("alpha") && table.contains("up"), "{table}");
    // Every node's tasks, from the registrations.
    let all = hub.cli(&["ps", "--all-nodes", "--json"]).await.ok().json();
    let rows: Vec<(String, String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["node"] != "hub")
        .map(|t| {
            (
                t["node"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = |n: &str, t: &str| (n.to_string(), t.to_string(), "completed".to_string());
    wait_for("beta's tasks in its registration", DEADLINE, || async {
        let l = nodes(&hub).await;
        (l["beta"]["tasks"]["completed"] == 2).then_some(())
    })
    .await;
    assert!(rows.contains(&want("alpha", "early-a")), "{rows:?}");
    assert!(rows.contains(&want("alpha", "live-a")), "{rows:?}");
    let text = hub.cli(&["ps", "--all-nodes"]).await.ok().stdout();
    assert!(text.contains("NODE") && text.contains("early-b"), "{text}");

    // Killed: its key expires within three heartbeats, and the hub says so.
    alpha.kill9();
    let killed = Instant::now();
    wait_node_status(&hub, "alpha", "gone").await;
    let took = killed.elapsed();
    // Three heartbeats of TTL, half a heartbeat until the next scan, and slack for a
    // loaded machine.
    assert!(
        took <= HEARTBEAT * 3 + HEARTBEAT / 2 + Duration::from_secs(2),
        "alpha took {took:?} to be seen gone"
    );
    assert_eq!(nodes(&hub).await["beta"]["status"], "up");
    let m = hub.metrics().await;
    for line in [
        "corral_hub_nodes{status=\"gone\"} 1",
        "corral_hub_nodes{status=\"up\"} 2",
        "corral_hub_connected 1",
    ] {
        assert!(m.lines().any(|l| l == line), "no `{line}` in\n{m}");
    }
    assert!(
        m.lines()
            .any(|l| l.starts_with("corral_hub_events_received_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    let gone = hub
        .wait_events(
            "component=system&type=status",
            "the hub's gone event",
            |e| {
                e.iter()
                    .any(|e| e["details"]["node"] == "alpha" && e["details"]["status"] == "gone")
            },
        )
        .await;
    let g = gone
        .iter()
        .find(|e| e["details"]["status"] == "gone")
        .unwrap();
    assert_eq!(
        (&g["node"], &g["level"]),
        (&Value::from("hub"), &Value::from("warning"))
    );

    // Back: up again, with an event.
    let alpha = alpha
        .start_again(DaemonOpts {
            env: env(&server),
            ..DaemonOpts::args(&["--node", "alpha", "--node-heartbeat", "1s"])
        })
        .await;
    wait_node_status(&hub, "alpha", "up").await;
    hub.wait_events(
        "component=system&type=status",
        "the hub's up-again event",
        |e| {
            e.iter().any(|e| {
                e["details"]["node"] == "alpha"
                    && e["details"]["status"] == "up"
                    && e["message"].as_str().is_some_and(|m| m.contains("again"))
            })
        },
    )
    .await;
    drop(alpha);

    // A daemon that stops removes its key at once (it would live up to three heartbeats).
    let mut beta = beta;
    assert_eq!(beta.terminate(), Some(0));
    assert!(
        !server.exists(&format!("{PREFIX}:nodes:beta")),
        "beta's registration outlived its daemon"
    );
    wait_node_status(&hub, "beta", "gone").await;

    // The hub never republished what it read: the stream holds each event once, and
    // every event of the hub's own node is the hub's.
    let stream = server.stream();
    assert!(duplicates(&stream).is_empty(), "{:?}", duplicates(&stream));
    assert!(
        stream.iter().any(|e| e["node"] == "hub"),
        "the hub's own events are published"
    );
    let hub_status: Value = hub.get("/publishers/redis").await.1;
    let published = hub_status["published"].as_u64().unwrap();
    let own = stream.iter().filter(|e| e["node"] == "hub").count() as u64;
    assert!(
        published <= own,
        "the hub published {published} events, the stream holds {own} of its node"
    );
}

#[tokio::test]
async fn a_hub_without_redis_says_so_and_a_plain_daemon_is_not_a_hub() {
    let closed = free_port();
    let hub = Daemon::start_with(DaemonOpts {
        env: vec![
            ("REDIS_HOST".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), closed.to_string()),
        ],
        ..DaemonOpts::args(&["--hub", "--node-heartbeat", "1s"])
    })
    .await;
    let v = wait_for("the hub's Redis error", DEADLINE, || async {
        let v = hub.cli(&["nodes", "--json"]).await.ok().json();
        v["last_error"].is_string().then_some(v)
    })
    .await;
    assert_eq!(v["connected"], false, "{v}");
    assert!(v["last_error"].as_str().unwrap().contains("refused"), "{v}");
    let text = hub.cli(&["nodes"]).await.ok().stdout();
    assert!(
        text.contains("not connected to Redis") && text.contains(&closed.to_string()),
        "{text}"
    );

    let plain = Daemon::start().await;
    let out = plain.cli(&["nodes"]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("not a hub"), "{}", out.stderr);
}

#[tokio::test]
async fn a_hub_reads_on_after_redis_restarts() {
    let mut server = Server::start();
    let alpha = node(&server, "alpha", &[]).await;
    let hub = node(&server, "hub", &["--hub"]).await;
    let r = alpha.run_task("before", &[], &["sh", "-c", "echo 1"]).await;
    alpha.wait_run_end(&r).await;
    hub.wait_events("task=before", "alpha's event before the restart", |e| {
        has(e, "alpha", "before", "exit")
    })
    .await;

    // A new, empty server on the same port: the hub reconnects and subscribes again, and
    // the node registers again at its next heartbeat.
    server.restart();
    wait_until("alpha's registration in the new server", DEADLINE, || {
        server.exists(&format!("{PREFIX}:nodes:alpha"))
    })
    .await;
    // The publisher finds out that its connection broke when a publish fails, and drops
    // what it could not send meanwhile: run the task until one run's events arrive.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = alpha.run_task("after", &[], &["sh", "-c", "echo 2"]).await;
        alpha.wait_run_end(&r).await;
        let got = tokio::time::timeout(HEARTBEAT * 2, async {
            hub.wait_events("task=after", "alpha's event after the restart", |e| {
                has(e, "alpha", "after", "exit")
            })
            .await
        })
        .await;
        if got.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub shows no event of alpha after Redis restarted: {:?}",
            hub.cli(&["nodes", "--json"]).await.stdout()
        );
    }
    wait_node_status(&hub, "alpha", "up").await;
    let evs = hub.events("").await;
    assert!(duplicates(&evs).is_empty(), "{:?}", duplicates(&evs));

    // Turning the publisher off leaves the fleet at once (the key would live up to three
    // heartbeats); on again, it registers again.
    alpha.cli(&["redis", "off"]).await.ok();
    wait_until("alpha's key removed", HEARTBEAT, || {
        !server.exists(&format!("{PREFIX}:nodes:alpha"))
    })
    .await;
    wait_node_status(&hub, "alpha", "gone").await;
    alpha.cli(&["redis", "on"]).await.ok();
    wait_node_status(&hub, "alpha", "up").await;
}

/// A hub stream of node `node`'s task (`query` without the `?`).
async fn remote_stream(hub: &Daemon, node: &str, task: &str, query: &str) -> NdjsonStream {
    let path = format!("/nodes/{node}/tasks/{task}/logs?{query}");
    let resp = hub
        .request(reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the hub: {e}"));
    assert_eq!(resp.status(), 200, "GET {path} on the hub");
    NdjsonStream::new(resp)
}

/// Reads records until one whose line is `want`; returns every record read.
async fn read_until_line(s: &mut NdjsonStream, want: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = tokio::time::timeout(DEADLINE, s.next())
            .await
            .unwrap_or_else(|_| panic!("no line {want:?} in time; read {out:?}"))
            .unwrap_or_else(|| panic!("the stream ended before {want:?}; read {out:?}"));
        if v.get("heartbeat").is_some() {
            continue;
        }
        let done = v["line"] == want;
        out.push(v);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn a_hub_follows_a_nodes_log_over_grpc_resumes_after_it_restarts_and_drives_another_node() {
    let server = Server::start();
    let secrets = tempfile::tempdir().unwrap();
    let fleet = secrets.path().join("fleet-token");
    std::fs::write(&fleet, "fleet-token-of-the-hub-tests-0123456789\n").unwrap();
    let fleet = fleet.to_str().unwrap();
    let alpha = node(&server, "alpha", &["--fleet-token-file", fleet]).await;
    let beta = node(&server, "beta", &["--fleet-token-file", fleet]).await;
    let hub_args = ["--hub", "--fleet-token-file", fleet];
    let mut hub = node(&server, "hub", &hub_args).await;
    wait_node_status(&hub, "alpha", "up").await;
    wait_node_status(&hub, "beta", "up").await;

    // On beta: 100 lines, then (once the gate exists) 100 more, then exit 3.
    let gate = beta.tmp.path().join("gate");
    let script = format!(
        "i=1; while [ $i -le 100 ]; do echo $i; i=$((i+1)); done; \
         while [ ! -e {g} ]; do sleep 0.05; done; \
         while [ $i -le 200 ]; do echo $i; i=$((i+1)); done; exit 3",
        g = gate.display()
    );
    let run = beta.run_task("ticker", &[], &["sh", "-c", &script]).await;

    // Through the hub, live: the first 100 lines, with the node's run id and seqs.
    let mut s = remote_stream(&hub, "beta", "ticker", "follow=true").await;
    assert_eq!(s.run_id.as_deref(), Some(run.as_str()));
    let first = read_until_line(&mut s, "100").await;
    let seqs: Vec<u64> = first.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=first.len() as u64).collect::<Vec<_>>(),
        "{first:?}"
    );
    assert!(first.iter().all(|r| r["run_id"] == run.as_str()));
    let last_seq = first.last().unwrap()["seq"].as_u64().unwrap();

    // The hub restarts (its viewers lose their stream); a viewer resumes from its seq.
    drop(s);
    assert_eq!(hub.terminate(), Some(0));
    let all: Vec<&str> = ["--node", "hub", "--node-heartbeat", "1s"]
        .into_iter()
        .chain(hub_args)
        .collect();
    hub = hub
        .start_again(DaemonOpts {
            env: env(&server),
            ..DaemonOpts::args(&all)
        })
        .await;
    wait_node_status(&hub, "beta", "up").await;
    let mut s = remote_stream(
        &hub,
        "beta",
        "ticker",
        &format!("follow=true&run={run}&since={last_seq}"),
    )
    .await;
    std::fs::write(&gate, "").unwrap();
    let rest = s.read_to_end().await;
    let (records, end) = check_dense(&rest, last_seq + 1);
    let lines: Vec<&str> = records
        .iter()
        .filter(|r| r["stream"] == "stdout")
        .map(|r| r["line"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (101..=200).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);
    assert_eq!(end["exit_code"], 3, "{end}");

    // The CLI with a NODE/TASK name: the run's log through the hub, and its exit status.
    let out = hub.cli(&["monitor", "beta/ticker", "--tail", "5"]).await;
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(out.stdout().contains("200"), "{}", out.stdout());
    let runs = hub
        .cli(&["runs", "beta/ticker", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(runs[0]["run_id"], run.as_str(), "{runs}");

    // Driving alpha through the hub: restart, then stop.
    let first_run = alpha.run_task("svc", &[], &["sleep", "600"]).await;
    alpha.wait_task_status("svc", "ready").await;
    let restarted = hub
        .cli(&["restart", "alpha/svc", "--json"])
        .await
        .ok()
        .json();
    let second_run = restarted["run_id"].as_str().unwrap().to_string();
    assert_ne!(second_run, first_run);
    let t = alpha.wait_task_status("svc", "ready").await;
    assert_eq!(t["run_id"], second_run.as_str());
    hub.cli(&["stop", "alpha/svc"]).await.ok();
    alpha.wait_task_status("svc", "stopped").await;
    let (status, tasks) = hub.get("/nodes/alpha/tasks").await;
    assert_eq!(status, 200, "{tasks}");
    let svc = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "svc")
        .unwrap_or_else(|| panic!("svc is not in alpha's tasks: {tasks}"));
    assert_eq!(svc["status"], "stopped");

    // What cannot be reached says so.
    let (status, body) = hub.get("/nodes/nowhere/tasks").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("corral nodes"));
    let (status, body) = alpha.get("/nodes/beta/tasks").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_a_hub");
}

#[tokio::test]
async fn a_hub_without_the_fleet_token_says_how_to_reach_the_nodes() {
    let server = Server::start();
    let _alpha = node(&server, "alpha", &[]).await;
    let hub = node(&server, "hub", &["--hub"]).await;
    wait_node_status(&hub, "alpha", "up").await;
    let (status, body) = hub.get("/nodes/alpha/tasks").await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--fleet-token-file"), "{msg}");
    let out = hub.cli(&["restart", "alpha/anything"]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("--fleet-token-file"), "{}", out.stderr);
}

#[tokio::test]
async fn a_hubs_alert_rules_hold_for_the_fleet() {
    let (port, got) = receiver().await;
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[alerts]]
name = "fleet-crash"
url = "http://127.0.0.1:{port}/fleet"
event_types = ["exit"]
level = "warning"
tasks = ["alpha/crashy"]
"#
        ),
    )
    .unwrap();
    let alpha = node(&server, "alpha", &[]).await;
    let beta = node(&server, "beta", &[]).await;
    let hub = node(
        &server,
        "hub",
        &["--hub", "--config", cfg.to_str().unwrap()],
    )
    .await;
    wait_node_status(&hub, "alpha", "up").await;
    wait_node_status(&hub, "beta", "up").await;
    // The same task name on beta matches nothing: the rule names alpha's.
    let b = beta.run_task("crashy", &[], &["sh", "-c", "exit 1"]).await;
    beta.wait_run_end(&b).await;
    let a = alpha.run_task("crashy", &[], &["sh", "-c", "exit 7"]).await;
    alpha.wait_run_end(&a).await;
    let alert = wait_for("the hub's alert on alpha's crash", DEADLINE, || async {
        at(&got, "/fleet").into_iter().next()
    })
    .await;
    let v: Value = serde_json::from_str(&alert.body).unwrap();
    assert_eq!(v["kind"], "alert", "{v}");
    assert_eq!(v["node"], "alpha", "{v}");
    assert_eq!(v["task"], "crashy", "{v}");
    assert_eq!(v["event"]["run_id"], a.as_str(), "{v}");
    assert!(
        v["title"].as_str().unwrap().contains("crashy on alpha"),
        "{v}"
    );
    // beta's exit reached the hub too, and sent nothing.
    hub.wait_events("node=beta&type=exit", "beta's exit on the hub", |e| {
        e.iter().any(|e| e["run_id"] == b.as_str())
    })
    .await;
    assert_eq!(at(&got, "/fleet").len(), 1, "{:?}", at(&got, "/fleet"));
    // The nodes hold no rules: they sent nothing themselves.
    let (_, rules) = alpha.get("/alerts").await;
    assert_eq!(rules, serde_json::json!([]), "{rules}");
}
