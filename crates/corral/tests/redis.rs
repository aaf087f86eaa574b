//! The Redis publisher against a real `redis-server` (one per test, on a free loopback
//! port, no persistence, killed at the end): channels and stream, turning it off and on
//! (kept across restarts), Redis going away while a task crash-loops, a wrong password;
//! TLS (`rediss://`) with a test CA made by `openssl`, and its errors.
//!
//! `redis-server` (built with TLS, as Debian's is) and `openssl` must be installed
//! (`apt-get install redis-server openssl`; `scripts/test.sh` does it): without them
//! these tests fail, they are not skipped.

mod common;

use common::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PREFIX: &str = "synapticllamas:llama_cpp";

/// A redis-server of this test.
struct Server {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    password: Option<String>,
    /// TLS only (no plaintext port) with this certificate when set.
    tls: Option<Certs>,
}

/// A test CA, a server certificate it signed for 127.0.0.1, and a second, unrelated CA.
struct Certs {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    other_ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it: apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for name in ["ca", "other-ca"] {
            let (key, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN=corral test {name}"),
            );
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            openssl(&a, d);
        }
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", "server.key", "-out", "server.csr"]);
        a.extend(["-subj", "/CN=127.0.0.1"]);
        openssl(&a, d);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
            d,
        );
        Certs {
            ca: d.join("ca.crt"),
            other_ca: d.join("other-ca.crt"),
            cert: d.join("server.crt"),
            key: d.join("server.key"),
            _dir: dir,
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().unwrap().port()
}

impl Server {
    fn start(password: Option<&str>) -> Server {
        let mut s = Server {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            password: password.map(str::to_string),
            tls: None,
        };
        s.restart();
        s
    }

    /// A server that speaks only TLS, with a certificate signed by `certs.ca`.
    fn start_tls(certs: Certs) -> Server {
        let mut s = Server {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            password: None,
            tls: Some(certs),
        };
        s.restart();
        s
    }

    /// Starts (again) on the same port.
    fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(c) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&c.cert)
                .arg("--tls-key-file")
                .arg(&c.key)
                .arg("--tls-ca-cert-file")
                .arg(&c.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // Fine-grained trimming, so that `MAXLEN ~ N` stays close to N.
            .args(["--stream-node-max-entries", "10"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::fs::File::create(self.dir.path().join("redis.log")).unwrap())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it: apt-get install redis-server")
        });
        self.child = Some(child);
        wait_for_blocking("redis-server to answer", || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let out =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                panic!(
                    "redis-server ended ({status}){}: {out}",
                    if self.tls.is_some() {
                        "; is it built with TLS support (--tls-port)? Debian's is"
                    } else {
                        ""
                    }
                );
            }
            self.client()
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// A client of this server (over TLS, trusting the test CA, for a TLS server).
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            None => redis::Client::open(self.url().as_str()),
            Some(c) => redis::Client::build_with_tls(
                self.url().as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&c.ca).expect("the test CA")),
                },
            ),
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}/", self.port),
            None => format!("{scheme}://127.0.0.1:{}/", self.port),
        }
    }

    fn conn(&self) -> redis::Connection {
        self.client()
            .and_then(|c| c.get_connection())
            .expect("connecting to the test's redis-server")
    }

    /// The stream's entries after `after` (exclusive; `-` for all): `(id, event)`.
    fn stream(&self, after: &str) -> Vec<(String, Value)> {
        let start = if after == "-" {
            "-".to_string()
        } else {
            format!("({after}")
        };
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(format!("{PREFIX}:stream"))
            .arg(start)
            .arg("+")
            .query(&mut self.conn())
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(id, fields)| {
                assert_eq!(fields.len(), 2, "{fields:?}");
                assert_eq!(fields[0], "data");
                (id, serde_json::from_str(&fields[1]).expect("event JSON"))
            })
            .collect()
    }

    fn xlen(&self) -> u64 {
        redis::cmd("XLEN")
            .arg(format!("{PREFIX}:stream"))
            .query(&mut self.conn())
            .expect("XLEN")
    }

    /// `PSUBSCRIBE {PREFIX}:*` in a thread: `(channel, event)` for each message.
    fn subscribe(&self) -> mpsc::Receiver<(String, Value)> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut conn = self.conn();
        std::thread::spawn(move || {
            let mut ps = conn.as_pubsub();
            ps.psubscribe(format!("{PREFIX}:*")).expect("PSUBSCRIBE");
            let _ = ready_tx.send(());
            while let Ok(msg) = ps.get_message() {
                let payload: String = msg.get_payload().unwrap_or_default();
                let v = serde_json::from_str(&payload).unwrap_or(Value::Null);
                if tx.send((msg.get_channel_name().to_string(), v)).is_err() {
                    return;
                }
            }
        });
        ready_rx.recv().expect("the subscriber started");
        rx
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_blocking(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The daemon's environment for publishing to `s`.
fn env(s: &Server, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v = vec![
        ("CORRAL_REDIS_ENABLED".to_string(), "true".to_string()),
        ("REDIS_HOST".into(), "127.0.0.1".into()),
        ("REDIS_PORT".into(), s.port.to_string()),
        ("CORRAL_REDIS_CHANNEL_PREFIX".into(), PREFIX.into()),
    ];
    if let Some(p) = &s.password {
        v.push(("REDIS_PASSWORD".into(), p.clone()));
    }
    v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    v
}

async fn status(d: &Daemon) -> Value {
    let (code, v) = d.get("/publishers/redis").await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn wait_connected(d: &Daemon, connected: bool) -> Value {
    wait_for(
        &format!("redis connected={connected}"),
        DEADLINE,
        || async {
            let s = status(d).await;
            (s["connected"] == connected).then_some(s)
        },
    )
    .await
}

/// Waits until the publisher has taken every event the bus published.
async fn wait_redis_caught_up(d: &Daemon) {
    wait_for("the redis sink to take every event", DEADLINE, || async {
        let m = d.metrics().await;
        let sum = |prefix: &str| -> u64 {
            m.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        let emitted = sum("corral_events_total{");
        let taken = sum("corral_sink_events_delivered_total{sink=\"redis\"}")
            + sum("corral_sink_events_dropped_total{sink=\"redis\"}");
        (emitted > 0 && emitted == taken).then_some(())
    })
    .await
}

fn of_task<'a>(events: &'a [(String, Value)], task: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|(_, e)| e["task"] == task)
        .map(|(_, e)| e)
        .collect()
}

#[tokio::test]
async fn lifecycle_events_reach_the_channels_and_the_stream_and_a_consumer_resumes_from_an_id() {
    let server = Server::start(None);
    let d = Daemon::start_with(DaemonOpts {
        env: env(&server, &[("CORRAL_REDIS_STREAM_MAXLEN", "20")]),
        ..Default::default()
    })
    .await;
    let st = wait_connected(&d, true).await;
    assert_eq!(st["server"], format!("127.0.0.1:{}", server.port));
    assert!(st["channels"]
        .as_array()
        .unwrap()
        .contains(&Value::from(format!("{PREFIX}:logs"))));
    let sub = server.subscribe();

    let run = d.run_task("one", &[], &["sh", "-c", "echo hi"]).await;
    d.wait_run_end(&run).await;
    // The subscriber gets the run's lifecycle on `{prefix}:logs`, with the contract fields.
    let mut got = Vec::new();
    while !got.iter().any(|e: &Value| e["event_type"] == "exit") {
        let (channel, e) = sub
            .recv_timeout(DEADLINE)
            .expect("an event on the channels");
        if channel == format!("{PREFIX}:logs") && e["task"] == "one" {
            got.push(e);
        }
    }
    assert!(got.iter().any(|e| e["event_type"] == "start"), "{got:?}");
    for e in &got {
        for k in [
            "timestamp",
            "component",
            "level",
            "message",
            "event_type",
            "details",
            "node",
            "task",
            "run_id",
        ] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
        assert_eq!(e["run_id"], run.as_str());
    }

    // The stream has them; a consumer that resumes from an id gets only what came later.
    wait_redis_caught_up(&d).await;
    let all = server.stream("-");
    assert!(of_task(&all, "one").len() >= got.len(), "{all:?}");
    let (last, _) = all.last().unwrap().clone();
    let run2 = d.run_task("two", &[], &["sh", "-c", "echo again"]).await;
    d.wait_run_end(&run2).await;
    wait_redis_caught_up(&d).await;
    let later = server.stream(&last);
    assert!(
        !later.is_empty() && of_task(&later, "one").is_empty(),
        "{later:?}"
    );
    assert!(!of_task(&later, "two").is_empty(), "{later:?}");

    // `MAXLEN ~ 20` keeps the stream near 20 entries while a crash loop publishes many.
    d.run_task(
        "loop",
        &[
            "--restart",
            "always",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "100ms",
            "--max-retries",
            "1000",
        ],
        &["sh", "-c", "exit 1"],
    )
    .await;
    wait_for("many published events", DEADLINE, || async {
        (status(&d).await["published"].as_u64().unwrap_or(0) > 100).then_some(())
    })
    .await;
    let n = server.xlen();
    assert!(n <= 20 + 10, "XLEN {n} with MAXLEN ~ 20");
    d.cli(&["stop", "loop"]).await.ok();
}

#[tokio::test]
async fn off_stops_publishing_on_resumes_and_the_choice_survives_a_restart() {
    let server = Server::start(Some("right-horse-battery"));
    let opts = DaemonOpts {
        env: env(&server, &[]),
        ..Default::default()
    };
    let mut d = Daemon::start_with(opts.clone()).await;
    wait_connected(&d, true).await;

    let off = d.cli(&["redis", "off", "--json"]).await.ok().json();
    assert_eq!(off["enabled"], false);
    let run = d.run_task("quiet", &[], &["sh", "-c", "echo shh"]).await;
    d.wait_run_end(&run).await;
    wait_redis_caught_up(&d).await;
    let on = d.cli(&["redis", "on", "--json"]).await.ok().json();
    assert_eq!(on["enabled"], true);
    wait_connected(&d, true).await;
    let run = d.run_task("loud", &[], &["sh", "-c", "echo hey"]).await;
    d.wait_run_end(&run).await;
    wait_redis_caught_up(&d).await;
    let all = server.stream("-");
    assert!(!of_task(&all, "loud").is_empty(), "{all:?}");
    assert!(
        of_task(&all, "quiet").is_empty(),
        "published while off: {all:?}"
    );

    // The status shows counters and never the password, as JSON and as a table.
    let st = d.cli(&["redis", "status", "--json"]).await.ok();
    let v = st.json();
    assert!(v["published"].as_u64().unwrap() > 0, "{v}");
    for k in ["failed", "dropped", "queued"] {
        assert!(v[k].is_u64(), "{k} in {v}");
    }
    let table = d.cli(&["redis", "status"]).await.ok();
    assert!(
        table.stdout().contains("on, connected"),
        "{}",
        table.stdout()
    );
    for text in [
        st.stdout(),
        table.stdout(),
        std::fs::read_to_string(d.daemon_log()).unwrap_or_default(),
        d.stderr(),
    ] {
        assert!(
            !text.contains("right-horse-battery"),
            "the password shows in {text}"
        );
    }

    // Off is kept across a restart, even though the environment says on.
    d.cli(&["redis", "off"]).await.ok();
    d.terminate();
    let mut d = d.start_again(opts.clone()).await;
    let st = status(&d).await;
    assert_eq!(
        (st["enabled"].clone(), st["connected"].clone()),
        (Value::from(false), Value::from(false))
    );
    d.cli(&["redis", "on"]).await.ok();
    d.terminate();
    let d = d.start_again(opts).await;
    wait_connected(&d, true).await;
    let mode = std::fs::metadata(d.home.join("redis.json")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

/// How long Redis stays away in the outage test (the issue's scenario).
const OUTAGE: Duration = Duration::from_secs(30);

/// `(published, dropped, failed)` of the status, once every event the daemon emitted
/// (`corral_events_total`) is one of them.
async fn wait_accounted(d: &Daemon) -> (u64, u64, u64) {
    wait_for("every emitted event counted once", DEADLINE, || async {
        let emitted: u64 = d
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("corral_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        let st = status(d).await;
        let n = |k: &str| st[k].as_u64().unwrap_or(0);
        let (p, dr, f) = (n("published"), n("dropped"), n("failed"));
        (emitted > 0 && p + dr + f == emitted).then_some((p, dr, f))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_for_30_s_never_stops_supervision_and_every_drop_is_counted_and_reported() {
    let mut server = Server::start(None);
    let d = Daemon::start_with(DaemonOpts {
        env: env(&server, &[]),
        ..Default::default()
    })
    .await;
    wait_connected(&d, true).await;
    d.run_task(
        "crashy",
        &[
            "--restart",
            "always",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "200ms",
            "--max-retries",
            "100000",
        ],
        &["sh", "-c", "echo x; exit 1"],
    )
    .await;
    wait_for("restarts published", DEADLINE, || async {
        (status(&d).await["published"].as_u64().unwrap_or(0) > 10).then_some(())
    })
    .await;
    server.stop();
    let away = std::time::Instant::now();
    let before = d.task("crashy").await["restarts"].as_u64().unwrap_or(0);
    let st = wait_for("counted drops while Redis is away", DEADLINE, || async {
        let s = status(&d).await;
        (s["connected"] == false && s["dropped"].as_u64().unwrap_or(0) > 0).then_some(s)
    })
    .await;
    assert!(st["last_error"].is_string(), "{st}");
    // The outage lasts its length: a scenario, not a wait for something to happen.
    tokio::time::sleep_until((away + OUTAGE).into()).await;

    // Supervision went on: a restart every 100-200 ms, so well over 30 in 30 s; and
    // capture too: every run of the outage has its line in its log.
    let restarts = d.task("crashy").await["restarts"].as_u64().unwrap_or(0);
    assert!(
        restarts > before + 30,
        "{before} -> {restarts} restarts in 30 s"
    );
    let runs = d.runs("crashy").await;
    let ended: Vec<&Value> = runs
        .iter()
        .filter(|r| r["status"] != "running")
        .take(20)
        .collect();
    assert_eq!(ended.len(), 20);
    for r in ended {
        let log = d.raw_log(r["run_id"].as_str().unwrap()).await;
        assert_eq!(log, b"x\n", "the log of {r}");
    }

    server.restart();
    wait_connected(&d, true).await;
    d.cli(&["stop", "crashy"]).await.ok();
    d.wait_task_status("crashy", "stopped").await;
    wait_redis_caught_up(&d).await;

    // Exactly: every event emitted is published, dropped or failed, once.
    let (p, dr, f) = wait_accounted(&d).await;
    assert!(p > 0 && dr > 0, "published {p}, dropped {dr}, failed {f}");
    // Each reconnection reported what was lost since the last connection (at the first
    // connection: the events emitted before it); together, every drop and failure.
    let reports = d
        .events("type=status&component=system")
        .await
        .into_iter()
        .filter(|e| e["details"]["publisher"] == "redis")
        .collect::<Vec<_>>();
    let reported: u64 = reports
        .iter()
        .map(|e| e["details"]["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(reported, dr + f, "{reports:?}");
    // The report of the outage reached the restarted Redis.
    let last = reports.last().expect("a drop report").clone();
    let in_redis = wait_for("the drop report in the stream", DEADLINE, || async {
        server
            .stream("-")
            .into_iter()
            .map(|(_, e)| e)
            .find(|e| e["event_type"] == "status" && e["details"]["publisher"] == "redis")
    })
    .await;
    assert_eq!(in_redis["details"]["dropped"], last["details"]["dropped"]);
    assert!(last["details"]["dropped"].as_u64().unwrap() > 30, "{last}");
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_that_never_shows_the_password() {
    let server = Server::start(Some("the-right-one"));
    let secret = "wrong-secret-8d1f";
    let d = Daemon::start_with(DaemonOpts {
        env: env(&server, &[("REDIS_PASSWORD", secret)]),
        ..Default::default()
    })
    .await;
    let st = wait_for("an authentication error", DEADLINE, || async {
        let s = status(&d).await;
        s["last_error"]
            .as_str()
            .filter(|e| e.contains("authentication failed"))
            .map(|_| s.clone())
    })
    .await;
    assert_eq!(st["connected"], false);
    let out = d.cli(&["redis", "status"]).await.ok();
    assert!(
        out.stdout().contains("authentication failed"),
        "{}",
        out.stdout()
    );
    // The third failed try is logged.
    wait_until("the failure in the daemon log", DEADLINE, || {
        std::fs::read_to_string(d.daemon_log())
            .unwrap_or_default()
            .contains("authentication failed")
    })
    .await;
    let json = d.cli(&["redis", "status", "--json"]).await.ok();
    for text in [
        out.stdout(),
        out.stderr.clone(),
        json.stdout(),
        json.stderr.clone(),
        std::fs::read_to_string(d.daemon_log()).unwrap_or_default(),
        d.stderr(),
    ] {
        assert!(!text.contains(secret), "the password shows in {text}");
    }
}

/// `PUT /publishers/redis`: a change at run time; the new status.
async fn put_redis(d: &Daemon, body: Value) -> Value {
    let resp = d
        .request(reqwest::Method::PUT, "/publishers/redis")
        .json(&body)
        .send()
        .await
        .expect("PUT /publishers/redis");
    let code = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(code, 200, "{v}");
    v
}

/// The daemon's environment for publishing to `url` (a TLS test server's, or not).
fn env_url(url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v = vec![
        ("CORRAL_REDIS_ENABLED".to_string(), "true".to_string()),
        ("CORRAL_REDIS_URL".into(), url.into()),
        ("CORRAL_REDIS_CHANNEL_PREFIX".into(), PREFIX.into()),
    ];
    v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    v
}

/// Waits for a `last_error` holding every one of `parts`; the publisher is not connected.
async fn wait_error(d: &Daemon, parts: &[&str]) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let st = status(d).await;
        let e = st["last_error"].as_str().unwrap_or_default();
        if parts.iter().all(|p| e.contains(p)) {
            assert_eq!(st["connected"], false, "{st}");
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for an error saying {parts:?}; the status: {st}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn tls_with_the_test_ca_publishes_events_to_the_stream() {
    let server = Server::start_tls(Certs::make());
    let ca = server.tls.as_ref().unwrap().ca.display().to_string();
    let d = Daemon::start_with(DaemonOpts {
        env: env_url(&server.url(), &[("CORRAL_REDIS_TLS_CA", &ca)]),
        ..Default::default()
    })
    .await;
    let st = wait_connected(&d, true).await;
    assert_eq!(st["tls"], true, "{st}");
    assert_eq!(st["server"], format!("127.0.0.1:{}", server.port));
    let run = d.run_task("secure", &[], &["sh", "-c", "echo hi"]).await;
    d.wait_run_end(&run).await;
    wait_redis_caught_up(&d).await;
    let all = server.stream("-");
    let mine = of_task(&all, "secure");
    assert!(
        mine.iter().any(|e| e["event_type"] == "exit"),
        "no exit event over TLS: {all:?}"
    );
    let table = d.cli(&["redis", "status"]).await.ok();
    assert!(table.stdout().contains("(TLS)"), "{}", table.stdout());
}

#[tokio::test]
async fn tls_with_a_ca_that_did_not_sign_the_certificate_is_a_clear_error_and_nothing_is_published()
{
    let server = Server::start_tls(Certs::make());
    let other = server.tls.as_ref().unwrap().other_ca.display().to_string();
    let d = Daemon::start_with(DaemonOpts {
        env: env_url(&server.url(), &[("CORRAL_REDIS_TLS_CA", &other)]),
        ..Default::default()
    })
    .await;
    let run = d.run_task("unsent", &[], &["sh", "-c", "echo hi"]).await;
    d.wait_run_end(&run).await;
    let st = wait_error(&d, &["TLS handshake failed", "redis_tls_ca"]).await;
    assert_eq!(st["published"], 0, "{st}");
    let table = d.cli(&["redis", "status"]).await.ok();
    assert!(
        table.stdout().contains("TLS handshake failed"),
        "{}",
        table.stdout()
    );
    wait_until("the TLS failure in the daemon log", DEADLINE, || {
        std::fs::read_to_string(d.daemon_log())
            .unwrap_or_default()
            .contains("TLS handshake failed")
    })
    .await;
    assert_eq!(
        server.xlen(),
        0,
        "something was published without TLS trust"
    );

    // The system's roots do not know the test CA either: still TLS, still refused.
    put_redis(&d, serde_json::json!({"tls_ca": ""})).await;
    let st = wait_error(&d, &["TLS handshake failed"]).await;
    assert_eq!(
        (st["published"].clone(), st["tls"].clone()),
        (0.into(), true.into())
    );
    assert_eq!(server.xlen(), 0);

    // With the right CA, set at run time, it connects and publishes over TLS.
    let ca = server.tls.as_ref().unwrap().ca.display().to_string();
    put_redis(&d, serde_json::json!({"tls_ca": ca})).await;
    wait_connected(&d, true).await;
    let run = d.run_task("sent", &[], &["sh", "-c", "echo hi"]).await;
    d.wait_run_end(&run).await;
    wait_redis_caught_up(&d).await;
    assert!(!of_task(&server.stream("-"), "sent").is_empty());
}

#[tokio::test]
async fn a_redis_url_against_a_tls_port_says_the_server_closed_the_connection() {
    let server = Server::start_tls(Certs::make());
    let plain = server.url().replacen("rediss://", "redis://", 1);
    let d = Daemon::start_with(DaemonOpts {
        env: env_url(&plain, &[]),
        ..Default::default()
    })
    .await;
    let st = wait_error(&d, &["the server closed the connection", "rediss://"]).await;
    assert_eq!(st["tls"], false, "{st}");
    assert_eq!(server.xlen(), 0);
}

#[tokio::test]
async fn a_rediss_url_against_a_plaintext_server_is_a_tls_error_never_plaintext() {
    let server = Server::start(None);
    let certs = Certs::make();
    let ca = certs.ca.display().to_string();
    let url = format!("rediss://127.0.0.1:{}/", server.port);
    let d = Daemon::start_with(DaemonOpts {
        env: env_url(&url, &[("CORRAL_REDIS_TLS_CA", &ca)]),
        ..Default::default()
    })
    .await;
    let run = d.run_task("clear", &[], &["sh", "-c", "echo hi"]).await;
    d.wait_run_end(&run).await;
    let st = wait_error(&d, &["over TLS", "if the server is plaintext"]).await;
    assert_eq!(st["published"], 0, "{st}");
    assert_eq!(
        server.xlen(),
        0,
        "published in plaintext on a rediss:// URL"
    );
}

/// The messages of `{PREFIX}:raw` from task `task`, until `n` arrived.
fn raw_lines(sub: &mpsc::Receiver<(String, Value)>, task: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let (channel, v) = sub
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("timed out waiting for raw lines; got {got:?}"));
        if channel == format!("{PREFIX}:raw") && v["source"] == task {
            got.push(v);
        }
    }
    got
}

#[tokio::test]
async fn raw_lines_all_publishes_every_line_with_the_contract_fields_and_dense_seqs() {
    let server = Server::start(None);
    let d = Daemon::start_with(DaemonOpts {
        env: env(&server, &[("CORRAL_REDIS_RAW_LINES", "all")]),
        ..Default::default()
    })
    .await;
    let st = wait_connected(&d, true).await;
    assert_eq!(st["raw_lines"], "all", "{st}");
    let sub = server.subscribe();
    let run = d
        .run_task(
            "three",
            &[],
            &["sh", "-c", "echo one; echo two; echo three"],
        )
        .await;
    let got = raw_lines(&sub, "three", 3);
    let lines: Vec<&str> = got.iter().map(|v| v["line"].as_str().unwrap()).collect();
    assert_eq!(lines, ["one", "two", "three"], "{got:?}");
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seqs not dense: {seqs:?}"
    );
    for v in &got {
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 6, "exactly the contract fields expected in {v}");
        assert!(v["timestamp"].as_f64().unwrap() > 1.6e9, "{v}");
        assert_eq!(v["run_id"], run.as_str());
        assert!(v["node"].as_str().is_some_and(|n| !n.is_empty()), "{v}");
    }
    // Raw lines go to the channel only, not to the events' stream.
    d.wait_run_end(&run).await;
    wait_redis_caught_up(&d).await;
    assert!(server
        .stream("-")
        .iter()
        .all(|(_, e)| e.get("line").is_none() && e.get("source").is_none()));

    // `none`, set at run time: a run started then is not followed at all.
    let st = put_redis(&d, serde_json::json!({"raw_lines": "none"})).await;
    assert_eq!(st["raw_lines"], "none");
    let silent = d
        .run_task("silent", &[], &["sh", "-c", "echo error one"])
        .await;
    d.wait_run_end(&silent).await;
    put_redis(&d, serde_json::json!({"raw_lines": "all"})).await;
    let marker = d.run_task("marker", &[], &["sh", "-c", "echo done"]).await;
    raw_lines(&sub, "marker", 1);
    d.wait_run_end(&marker).await;
    assert_eq!(status(&d).await["raw_published"], 4);
}

#[tokio::test]
async fn raw_lines_by_default_publish_only_the_important_ones() {
    let server = Server::start(None);
    let d = Daemon::start_with(DaemonOpts {
        env: env(&server, &[]),
        ..Default::default()
    })
    .await;
    let st = wait_connected(&d, true).await;
    assert_eq!(st["raw_lines"], "important", "{st}");
    let sub = server.subscribe();
    d.run_task(
        "fire",
        &[],
        &["sh", "-c", "echo hello; echo 'error: disk on fire'"],
    )
    .await;
    // Lines of a run arrive in order: had `hello` been published, it would come first.
    let got = raw_lines(&sub, "fire", 1);
    assert_eq!(got[0]["line"], "error: disk on fire", "{got:?}");
    let st = status(&d).await;
    assert_eq!(st["raw_published"], 1, "{st}");
}

#[tokio::test]
async fn the_raw_rate_cap_holds_back_lines_and_counts_them() {
    let server = Server::start(None);
    let d = Daemon::start_with(DaemonOpts {
        env: env(
            &server,
            &[
                ("CORRAL_REDIS_RAW_LINES", "all"),
                ("CORRAL_REDIS_RAW_LINES_PER_SECOND", "10"),
            ],
        ),
        ..Default::default()
    })
    .await;
    wait_connected(&d, true).await;
    let run = d.run_task("chatty", &[], &["seq", "1", "200"]).await;
    d.wait_run_end(&run).await;
    let st = wait_for("every raw line counted", DEADLINE, || async {
        let v = d.cli(&["redis", "status", "--json"]).await.ok().json();
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        (n("raw_published") + n("raw_held_back") + n("raw_dropped") >= 200).then_some(v)
    })
    .await;
    let n = |k: &str| st[k].as_u64().unwrap();
    assert_eq!(n("raw_dropped"), 0, "{st}");
    assert_eq!(n("raw_published") + n("raw_held_back"), 200, "{st}");
    assert!(n("raw_held_back") > 0 && n("raw_published") >= 10, "{st}");
    assert_eq!(st["raw_lines_per_second"], 10);
    let table = d.cli(&["redis", "status"]).await.ok();
    assert!(
        table.stdout().contains("raw held back"),
        "{}",
        table.stdout()
    );
    let held = format!(
        "corral_redis_raw_lines_held_back_total {}",
        n("raw_held_back")
    );
    let m = d.metrics().await;
    assert!(m.lines().any(|l| l == held), "no `{held}` in\n{m}");
}

/// The Python interpreter with redis-py that `scripts/llama-deps.sh` prepares
/// (`CORRAL_TEST_PYTHON`); fails with how to get it.
fn python_with_redis() -> String {
    let py = std::env::var("CORRAL_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "CORRAL_TEST_PYTHON is not set: run scripts/test.sh, or \
             eval \"$(scripts/llama-deps.sh)\" before cargo test"
        )
    });
    let ok = Command::new(&py)
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} has no redis-py: {py} -m pip install redis (scripts/llama-deps.sh does it)"
    );
    py
}

/// A consumer written the way consumers of the `synapticllamas:llama_cpp` channels are
/// documented: redis-py, `pubsub.listen()`, `json.loads`, reading the contract fields.
/// It prints `ready` once subscribed, then one line per message:
/// `channel<TAB>timestamp<TAB>component<TAB>level<TAB>message<TAB>details as JSON`.
const PY_CONSUMER: &str = r#"
import json, sys, redis

r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
pubsub = r.pubsub()
channels = [sys.argv[2] + ":" + c for c in ("logs", "coordinator", "rpc_backends", "metrics")]
pubsub.subscribe(*channels)
subscribed = 0
for message in pubsub.listen():
    if message["type"] == "subscribe":
        subscribed += 1
        if subscribed == len(channels):
            print("ready", flush=True)
        continue
    if message["type"] != "message":
        continue
    data = json.loads(message["data"])
    timestamp = data["timestamp"]
    component = data["component"]
    level = data["level"]
    msg = data["message"]
    details = data.get("details", {})
    assert isinstance(timestamp, float) and isinstance(details, dict), data
    channel = message["channel"].decode()
    print("\t".join([channel, str(timestamp), component, level, msg.replace("\t", " ").replace("\n", " "), json.dumps(details)]), flush=True)
"#;

/// Reads a child's stdout lines in a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Kills a consumer process at the end of the test, whatever happens.
struct Consumer(Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_psubscribe_and_a_python_consumer_receive_the_simulated_fleet_on_every_channel() {
    let py = python_with_redis();
    let server = Server::start(None);
    let d = Daemon::start_with(DaemonOpts {
        env: env(&server, &[("CORRAL_REDIS_RAW_LINES", "all")]),
        args: vec!["--heartbeat-interval".into(), "0.5".into()],
        ..Default::default()
    })
    .await;
    wait_connected(&d, true).await;

    // `redis-cli psubscribe 'synapticllamas:llama_cpp:*'`, as an operator types it.
    let mut cli = Consumer(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
            .args(["psubscribe", &format!("{PREFIX}:*")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-cli (apt-get install redis-tools)"),
    );
    let cli_lines = lines_of(&mut cli.0);
    // Its confirmation (`psubscribe`, the pattern, 1) says it is subscribed.
    let mut confirm = Vec::new();
    while confirm.len() < 3 {
        confirm.push(
            cli_lines
                .recv_timeout(DEADLINE)
                .expect("redis-cli subscribed"),
        );
    }
    assert_eq!(confirm[0], "psubscribe", "{confirm:?}");
    let mut pyc = Consumer(
        Command::new(&py)
            .args(["-u", "-c", PY_CONSUMER, &server.port.to_string(), PREFIX])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("the Python consumer"),
    );
    let py_lines = lines_of(&mut pyc.0);
    assert_eq!(
        py_lines
            .recv_timeout(DEADLINE)
            .expect("the Python consumer's ready"),
        "ready"
    );

    // The simulated fleet: a coordinator, two rpc backends, requests (metrics), lines.
    d.cli(&["demo", "--detach"]).await.ok();

    // redis-cli prints each message as `pmessage`, the pattern, the channel, the payload.
    let want: Vec<String> = ["logs", "coordinator", "rpc_backends", "metrics", "raw"]
        .iter()
        .map(|c| format!("{PREFIX}:{c}"))
        .collect();
    let mut seen = std::collections::BTreeMap::<String, Value>::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut buf: Vec<String> = Vec::new();
    while want.iter().any(|c| !seen.contains_key(c)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = cli_lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "redis-cli saw only {:?} of {want:?}",
                seen.keys().collect::<Vec<_>>()
            )
        });
        buf.push(line);
        if buf.len() == 4 {
            assert_eq!(buf[0], "pmessage", "{buf:?}");
            assert_eq!(buf[1], format!("{PREFIX}:*"));
            let v: Value = serde_json::from_str(&buf[3])
                .unwrap_or_else(|e| panic!("not JSON on {}: {e}: {}", buf[2], buf[3]));
            seen.entry(buf[2].clone()).or_insert(v);
            buf.clear();
        }
    }
    assert!(seen.keys().all(|c| want.contains(c)), "{seen:?}");
    let coord = &seen[&format!("{PREFIX}:coordinator")];
    assert_eq!(coord["component"], "coordinator", "{coord}");
    assert_eq!(
        seen[&format!("{PREFIX}:rpc_backends")]["component"],
        "rpc_backend"
    );
    assert_eq!(seen[&format!("{PREFIX}:metrics")]["event_type"], "metrics");
    let raw = &seen[&format!("{PREFIX}:raw")];
    for k in ["timestamp", "source", "line", "seq", "run_id", "node"] {
        assert!(raw.get(k).is_some(), "{k} missing in the raw line {raw}");
    }

    // The Python consumer read coordinator, rpc backend and metrics events through
    // json.loads with the fields it expects.
    let mut got = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while !["coordinator", "rpc_backends", "metrics"]
        .iter()
        .all(|c| got.contains(&format!("{PREFIX}:{c}")))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = py_lines.recv_timeout(left).unwrap_or_else(|_| {
            let _ = pyc.0.kill();
            panic!("the Python consumer received only {got:?}")
        });
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 6, "{line}");
        assert!(f[1].parse::<f64>().is_ok_and(|t| t > 1.6e9), "{line}");
        assert!(
            ["debug", "info", "warning", "error", "critical"].contains(&f[3]),
            "{line}"
        );
        serde_json::from_str::<serde_json::Map<String, Value>>(f[5]).expect("details");
        if f[0].ends_with(":rpc_backends") {
            assert_eq!(f[2], "rpc_backend", "{line}");
        }
        got.insert(f[0].to_string());
    }
}

/// A user of the server's ACL with everything but one command.
fn acl_user(server: &Server, name: &str, without: &str) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(name)
        .arg("on")
        .arg(">acl-secret-1")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg(format!("-{without}"))
        .query(&mut server.conn())
        .expect("ACL SETUSER");
}

/// Calls of `cmd` the server executed (`INFO commandstats`; a command refused by the
/// ACL is not a call).
fn calls(server: &Server, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_acl_user_without_publish_or_xadd_is_a_clear_error_and_nothing_is_sent() {
    let server = Server::start(None);
    acl_user(&server, "nopublish", "publish");
    acl_user(&server, "noxadd", "xadd");
    let d = Daemon::start_with(DaemonOpts {
        env: env(
            &server,
            &[
                ("CORRAL_REDIS_USERNAME", "nopublish"),
                ("REDIS_PASSWORD", "acl-secret-1"),
            ],
        ),
        ..Default::default()
    })
    .await;
    let run = d.run_task("quiet", &[], &["sh", "-c", "echo hi"]).await;
    d.wait_run_end(&run).await;
    let st = wait_error(&d, &["permission denied", "'publish'"]).await;
    assert!(st["last_error"].as_str().unwrap().contains("ACL"), "{st}");
    let out = d.cli(&["redis", "status"]).await.ok();
    assert!(
        out.stdout().contains("permission denied"),
        "{}",
        out.stdout()
    );
    wait_until("the ACL error in the daemon log", DEADLINE, || {
        std::fs::read_to_string(d.daemon_log())
            .unwrap_or_default()
            .contains("permission denied")
    })
    .await;

    // Another user, at run time: this one may publish but not append to the stream.
    put_redis(&d, serde_json::json!({"username": "noxadd"})).await;
    let st = wait_error(&d, &["permission denied", "'xadd'"]).await;
    assert_eq!(st["published"], 0, "{st}");
    // The permission check published nothing: no PUBLISH nor XADD ran on the server.
    assert_eq!((calls(&server, "publish"), calls(&server, "xadd")), (0, 0));
    assert_eq!(server.xlen(), 0);
    for text in [
        out.stdout(),
        std::fs::read_to_string(d.daemon_log()).unwrap_or_default(),
    ] {
        assert!(
            !text.contains("acl-secret-1"),
            "the password shows in {text}"
        );
    }
}
