//! Helpers for the integration tests: a real daemon in a temp dir on `127.0.0.1:0`, the
//! CLI as a subprocess, the HTTP API, log-stream readers, and polling with a deadline.
//!
//! Nothing here sleeps to synchronise: the daemon's address is read from its first stdout
//! line, and every wait polls the API (or reads a stream) until a condition holds or a
//! generous deadline passes, so the tests stay correct on a loaded 2-core machine.

#![allow(dead_code)]

use serde_json::Value;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The corral binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_corral");
/// How long any single wait may take before the test fails: generous, since a loaded
/// 2-core machine running the debug build is slow, and a passing wait costs nothing.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The caller's variables that the daemon and the CLI read (`CORRAL_*`, `SOLLOL_*`, but
/// not the suite's own `CORRAL_TEST_*`); cleared so that they cannot change what a test sees.
fn corral_env() -> impl Iterator<Item = std::ffi::OsString> {
    std::env::vars_os().map(|(k, _)| k).filter(|k| {
        let k = k.to_string_lossy();
        (k.starts_with("CORRAL_") || k.starts_with("SOLLOL_")) && !k.starts_with("CORRAL_TEST_")
    })
}

/// The real python interpreter (not a version-manager shim, which is slow to start and
/// would put a shell between the supervisor and the process it starts).
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by the integration tests");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// How to start a daemon.
#[derive(Default, Clone)]
pub struct DaemonOpts {
    /// `--listen` (default `127.0.0.1:0`).
    pub listen: Option<String>,
    /// Extra arguments of `serve`.
    pub args: Vec<String>,
    /// `CORRAL_TOKEN` for the daemon (and for the CLI and HTTP helpers of this handle).
    pub token: Option<String>,
    /// More environment of the daemon (after the caller's `CORRAL_*` are cleared).
    pub env: Vec<(String, String)>,
    /// Its limit of open files, soft and hard (as `ulimit -n N` sets them).
    pub nofile: Option<u64>,
}

impl DaemonOpts {
    pub fn args(args: &[&str]) -> DaemonOpts {
        DaemonOpts {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// A running `corral serve`; dropping it stops the daemon (SIGTERM, then wait).
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    pub port: u16,
    pub home: PathBuf,
    pub tmp: Arc<tempfile::TempDir>,
    stderr_path: PathBuf,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

/// What a CLI invocation did.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with everything the command printed unless it exited 0.
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code,
            Some(0),
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout()))
    }

    /// Parses every non-empty stdout line as JSON.
    pub fn ndjson(&self) -> Vec<Value> {
        parse_ndjson(&self.stdout)
    }
}

impl Daemon {
    pub async fn start() -> Daemon {
        Daemon::start_with(DaemonOpts::default()).await
    }

    pub async fn start_with(opts: DaemonOpts) -> Daemon {
        let tmp = Arc::new(tempfile::tempdir().expect("creating a temp dir"));
        Daemon::start_in(tmp, opts).await
    }

    /// A new daemon on the same home (after this one was killed or stopped).
    pub async fn start_again(&self, opts: DaemonOpts) -> Daemon {
        Daemon::start_in(self.tmp.clone(), opts).await
    }

    /// A daemon whose home is `home` in `tmp` (which the caller may have prepared).
    pub async fn start_in(tmp: Arc<tempfile::TempDir>, opts: DaemonOpts) -> Daemon {
        let home = tmp.path().join("home");
        let n = std::fs::read_dir(tmp.path()).map_or(0, |d| d.count());
        let stderr_path = tmp.path().join(format!("daemon-{n}.stderr"));
        let listen = opts.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", &listen, "--home"])
            .arg(&home)
            .args(&opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for k in corral_env() {
            cmd.env_remove(k);
        }
        if let Some(t) = &opts.token {
            cmd.env("CORRAL_TOKEN", t);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("starting corral serve");
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<Option<String>>();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut first = String::new();
            let got = r
                .read_line(&mut first)
                .ok()
                .filter(|&n| n > 0)
                .map(|_| first);
            let _ = tx.send(got);
            // Keep draining, so that the daemon never writes into a full or closed pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let mut d = Daemon {
            child: Some(child),
            pid,
            addr: String::new(),
            port: 0,
            home,
            tmp,
            stderr_path,
            token: opts.token.clone(),
            http: reqwest::Client::new(),
        };
        let line = match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "the daemon printed no address ({other:?}); its stderr:\n{}",
                d.stderr()
            ),
        };
        let addr = line
            .trim()
            .strip_prefix("corral listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        d.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        // Wildcard listens are reached over loopback.
        d.addr = format!("http://127.0.0.1:{}", d.port);
        if d.token.is_none() && !opts.args.iter().any(|a| a == "--insecure-no-auth") {
            // The daemon made its own token before it printed its address.
            let file = d.home.join("token");
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("the daemon wrote no {}: {e}", file.display()));
            d.token = Some(text.trim().to_string());
        }
        d
    }

    /// What the daemon printed on stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The daemon's diagnostics file, `<home>/daemon.log`.
    pub fn daemon_log(&self) -> PathBuf {
        self.home.join("daemon.log")
    }

    /// SIGKILL: the daemon gets no chance to stop its tasks.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the daemon to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(c.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.addr)
    }

    /// A request to the API, with the token when this daemon has one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// A WebSocket handshake request for an API path, with the token.
    pub fn ws_request(
        &self,
        path: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://127.0.0.1:{}/api/v1{path}", self.port);
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    }

    /// The `Authorization` header line for hand-written HTTP requests (empty without a token).
    pub fn auth_line(&self) -> String {
        self.token
            .as_ref()
            .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"))
    }

    /// GET, returning the status and the JSON body (`Value::Null` when not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.stderr()));
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Runs the CLI against this daemon.
    pub async fn cli(&self, args: &[&str]) -> Out {
        self.cli_env(args, &[]).await
    }

    pub async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut all = vec![("CORRAL_ADDR", self.addr.as_str())];
        if let Some(t) = &self.token {
            all.push(("CORRAL_TOKEN", t.as_str()));
        }
        all.extend_from_slice(env);
        cli(args, &all).await
    }

    /// Starts the CLI against this daemon without waiting for it (stdout and stderr piped).
    pub fn spawn_cli(&self, args: &[&str]) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for k in corral_env() {
            cmd.env_remove(k);
        }
        cmd.env("CORRAL_ADDR", &self.addr);
        if let Some(t) = &self.token {
            cmd.env("CORRAL_TOKEN", t);
        }
        cmd.spawn().expect("starting the corral CLI")
    }

    /// `corral run --name NAME FLAGS... -- CMD...`; returns the run id.
    pub async fn run_task(&self, name: &str, flags: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "--name", name];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(cmd);
        let out = self.cli(&args).await.ok();
        let id = out.stdout().trim().to_string();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "run id: {id:?}"
        );
        id
    }

    pub async fn run_row(&self, run_id: &str) -> Value {
        let (status, v) = self.get(&format!("/runs/{run_id}")).await;
        assert_eq!(status, 200, "GET /runs/{run_id}: {v}");
        v
    }

    /// The task's runs, newest first.
    pub async fn runs(&self, task: &str) -> Vec<Value> {
        let (status, v) = self.get(&format!("/runs?task={task}")).await;
        assert_eq!(status, 200, "GET /runs?task={task}: {v}");
        v.as_array().unwrap().clone()
    }

    pub async fn task(&self, name: &str) -> Value {
        let (status, v) = self.get(&format!("/tasks/{name}")).await;
        assert_eq!(status, 200, "GET /tasks/{name}: {v}");
        v
    }

    /// Waits until the run is no longer `running`; returns its registry row.
    pub async fn wait_run_end(&self, run_id: &str) -> Value {
        wait_for(&format!("run {run_id} to end"), DEADLINE, || async {
            let row = self.run_row(run_id).await;
            (row["status"] != "running").then_some(row)
        })
        .await
    }

    /// Waits until the task's status is `status`; returns the task.
    pub async fn wait_task_status(&self, name: &str, status: &str) -> Value {
        wait_for(&format!("task {name} to be {status}"), DEADLINE, || async {
            let t = self.task(name).await;
            (t["status"] == status).then_some(t)
        })
        .await
    }

    /// Opens a log stream of a task (`query` without the `?`).
    pub async fn open_stream(&self, name: &str, query: &str) -> NdjsonStream {
        let resp = self
            .request(reqwest::Method::GET, &format!("/tasks/{name}/logs?{query}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("opening the log stream of {name}: {e}"));
        assert_eq!(resp.status(), 200, "log stream of {name}?{query}");
        NdjsonStream::new(resp)
    }

    /// Every item of `GET /tasks/{name}/logs?{query}` up to the end record (included).
    pub async fn read_to_end(&self, name: &str, query: &str) -> Vec<Value> {
        let mut s = self.open_stream(name, query).await;
        s.read_to_end().await
    }

    /// Stored events (`GET /events?follow=false&QUERY`).
    pub async fn events(&self, query: &str) -> Vec<Value> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/events?follow=false&{query}"),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /events?{query}: {e}"));
        assert_eq!(resp.status(), 200, "GET /events?{query}");
        parse_ndjson(&resp.bytes().await.unwrap())
    }

    /// Waits until the stored events matching `query` satisfy `f`; returns them.
    pub async fn wait_events(
        &self,
        query: &str,
        what: &str,
        f: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        wait_for(what, DEADLINE, || async {
            let evs = self.events(query).await;
            f(&evs).then_some(evs)
        })
        .await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let mut req = self.http.get(format!("{}/metrics", self.addr));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("GET /metrics");
        resp.text().await.unwrap()
    }

    /// The raw log of a run.
    pub async fn raw_log(&self, run_id: &str) -> Vec<u8> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/runs/{run_id}/log"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap().to_vec()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs the CLI with exactly these corral variables (others cleared).
pub async fn cli(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for k in corral_env() {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("corral {args:?} did not finish in 120 s"))
        .expect("running the corral CLI");
    Out {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `f` every 25 ms until it returns `Some`, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls a plain condition (see [`wait_for`]).
pub async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    wait_for(what, timeout, || std::future::ready(f().then_some(()))).await
}

pub fn parse_ndjson(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(l)))
        })
        .collect()
}

/// An NDJSON log stream being read item by item.
pub struct NdjsonStream {
    pub run_id: Option<String>,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    pos: usize,
}

impl NdjsonStream {
    pub fn new(resp: reqwest::Response) -> NdjsonStream {
        let run_id = resp
            .headers()
            .get("x-corral-run-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        NdjsonStream {
            run_id,
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The next raw line (without its newline), or `None` at the end of the body.
    pub async fn next_line(&mut self) -> Option<Vec<u8>> {
        use futures_util::StreamExt;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos..]) {
                let line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 1;
                return Some(line);
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("the log stream sent nothing for 60 s")?;
            self.buf
                .extend_from_slice(&chunk.expect("reading the log stream"));
        }
    }

    /// The next item, parsed; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let line = self.next_line().await?;
            if line.is_empty() {
                continue;
            }
            return Some(
                serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("not JSON ({e}): {}", String::from_utf8_lossy(&line))
                }),
            );
        }
    }

    /// Items up to the end record (included), skipping heartbeats; fails if the body ends
    /// first or anything follows the end record.
    pub async fn read_to_end(&mut self) -> Vec<Value> {
        let mut items = Vec::new();
        while let Some(v) = self.next().await {
            if v.get("heartbeat").is_some() {
                continue;
            }
            let end = v.get("end").is_some();
            items.push(v);
            if end {
                assert!(self.next().await.is_none(), "items after the end record");
                return items;
            }
        }
        panic!(
            "the stream ended without an end record after {} items",
            items.len()
        );
    }
}

impl NdjsonStream {
    /// Reads to the end record checking only that record seqs run `1..` densely, without
    /// parsing each record (cheap for hundreds of megabytes in a debug build). Returns the
    /// number of records and the end object.
    pub async fn count_to_end(&mut self) -> (u64, Value) {
        self.count_to_end_from(1).await
    }

    /// Like [`NdjsonStream::count_to_end`], for a stream whose first record is `first`.
    pub async fn count_to_end_from(&mut self, first: u64) -> (u64, Value) {
        let start = first;
        let mut want = first;
        loop {
            let line = self.next_line().await.unwrap_or_else(|| {
                panic!(
                    "the stream ended without an end record after seq {}",
                    want - 1
                )
            });
            if let Some(rest) = line.strip_prefix(b"{\"seq\":".as_slice()) {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                let seq: u64 = std::str::from_utf8(&rest[..digits])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(seq, want, "expected seq {want}");
                want += 1;
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_slice(&line).unwrap();
            if v.get("heartbeat").is_some() {
                continue;
            }
            let end = v
                .get("end")
                .unwrap_or_else(|| panic!("unexpected item after seq {}: {v}", want - 1));
            return (want - start, end.clone());
        }
    }
}

/// Checks that `items` are records with seqs `first..` dense (no gap record, no
/// duplicate, no hole) and end with an end record; returns (records, end).
pub fn check_dense(items: &[Value], first: u64) -> (Vec<Value>, Value) {
    let (last, records) = items.split_last().expect("no items at all");
    let end = last
        .get("end")
        .unwrap_or_else(|| panic!("last item is not the end: {last}"))
        .clone();
    for (want, r) in (first..).zip(records) {
        let seq = r["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a record: {r}"));
        assert_eq!(seq, want, "expected seq {want}, got {r}");
    }
    (records.to_vec(), end)
}

/// The records of one stream (`stdout`, `stderr`, `system`).
pub fn of_stream<'a>(records: &'a [Value], stream: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["stream"] == stream).collect()
}

pub fn system_lines(records: &[Value]) -> Vec<String> {
    of_stream(records, "system")
        .iter()
        .map(|r| r["line"].as_str().unwrap().to_string())
        .collect()
}

/// Sends `sig` to `pid` (negative: a process group); returns whether it was delivered.
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) with plain integer arguments.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether `kill(pid, 0)` fails with ESRCH (no such process or group at all).
pub fn is_esrch(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Field 3 of /proc/PID/stat (`R`, `S`, `Z`, ...), `None` when there is no such process.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// The parent of a process (field 4 of /proc/PID/stat): for a task's process, its holder.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// Kills a task's holder (SIGKILL), so that its run has no one left who keeps its output
/// or its exit: what a daemon restart then finds is a run it cannot take back. Returns the
/// holder's pid.
pub fn kill_holder(task_pid: u32) -> u32 {
    let holder = parent_pid(task_pid).expect("the task's process has a parent");
    let cmdline = std::fs::read(format!("/proc/{holder}/cmdline")).unwrap_or_default();
    assert!(
        cmdline.split(|&b| b == 0).any(|w| w == b"hold"),
        "the parent of pid {task_pid} is not a holder: {}",
        String::from_utf8_lossy(&cmdline)
    );
    signal(holder as i32, libc::SIGKILL);
    // SIGKILL is delivered asynchronously: until the holder is really gone, a daemon
    // started next could still reach it and take the run back.
    let deadline = Instant::now() + DEADLINE;
    while !process_gone(holder) {
        assert!(
            Instant::now() < deadline,
            "holder {holder} outlived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    holder
}

/// Whether a process has exited (it is absent, or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A small tmpfs mounted for a test (a disk that fills up), unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`6m`) at `dir`. Fails the test, saying what to do, where
    /// mounting is not allowed.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} for the full-disk test ({}): run the test suite \
             as root (as CI does), where mount(8) may mount a tmpfs",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Processes of group `pgid` with their state (zombies included).
pub fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.get(2).and_then(|f| f.parse::<u32>().ok()) == Some(pgid) {
            out.push((pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Makes this test process the reaper of orphaned descendants (the daemon's
/// grandchildren), so that a test can reap them and see their group really gone even
/// where PID 1 does not reap orphans.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Reaps whatever children of this process are in group `pgid` and have exited.
pub fn reap_group(pgid: u32) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a process group, without blocking.
        let rc = unsafe { libc::waitpid(-(pgid as i32), &mut status, libc::WNOHANG) };
        if rc <= 0 {
            return;
        }
    }
}

/// Kills the given pids (SIGKILL) when dropped: cleanup of processes a test left behind
/// on purpose (or that a failed assertion left behind). A negative pid is a process
/// group; 0 and -1 (this group, every process) are never signalled.
#[derive(Default)]
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if !(-1..=0).contains(&pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// A file whose appearance a test child waits for (a "go" signal from the test).
pub fn go_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("go-{name}"))
}

/// Removes the caller's `CORRAL_*`/`SOLLOL_*` variables from a command of the test's own
/// making (the helpers above do it for theirs).
pub fn clear_corral_env(cmd: &mut Command) {
    for k in corral_env() {
        cmd.env_remove(k);
    }
}

/// A port that was free a moment ago (for a process that must be told its address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Waits until the file at `path` contains `needle`; returns its text.
pub async fn wait_for_text(path: &Path, needle: &str) -> String {
    wait_for(
        &format!("{} to contain {needle:?}", path.display()),
        DEADLINE,
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            std::future::ready(text.contains(needle).then_some(text))
        },
    )
    .await
}

/// An HTTP client that sends the token a daemon made in `home` (read when first needed:
/// the daemon writes it before it prints its address).
pub fn home_client(home: &Path) -> reqwest::Client {
    let token = std::fs::read_to_string(home.join("token"))
        .unwrap_or_else(|e| panic!("no token in {}: {e}", home.display()));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Files of `run_id` the daemon holds open.
pub fn open_files_of(pid: u32, run_id: &str) -> usize {
    let needle = format!("run_{run_id}.");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|p| p.to_string_lossy().contains(&needle))
                .count()
        })
        .unwrap_or(0)
}

// ---- An HTTP receiver, for alerts and webhooks ----

/// What the receiver got: the path, the `Title` header, the body.
#[derive(Clone, Debug)]
pub struct Got {
    pub path: String,
    pub title: Option<String>,
    pub body: String,
}

/// An HTTP receiver on a free loopback port that records every POST.
pub async fn receiver() -> (u16, Arc<std::sync::Mutex<Vec<Got>>>) {
    let got: Arc<std::sync::Mutex<Vec<Got>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(Got {
                    path: uri.path().to_string(),
                    title: headers
                        .get("title")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                    body,
                });
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

pub fn at(got: &Arc<std::sync::Mutex<Vec<Got>>>, path: &str) -> Vec<Got> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|g| g.path == path)
        .cloned()
        .collect()
}

// ---- A stand-in nvidia-smi (no NVIDIA GPU where the tests run) ----

/// A stand-in `nvidia-smi` (this machine has no NVIDIA GPU): it answers the two queries
/// corral makes in the format the real program prints with `--format=csv,noheader,nounits`
/// (one H100; the used memory in MiB read from `mem_used`, which starts at
/// `mem_used_mib`, and the compute process from `pid` when that file exists, holding
/// all of it). Returns the directory to put first on `PATH`.
pub fn fake_nvidia_smi(dir: &Path, mem_used_mib: u64) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(dir.join("mem_used"), format!("{mem_used_mib}\n")).unwrap();
    let script = format!(
        r#"#!/bin/sh
d={d}
uuid=GPU-5a0c0d1e-3b1f-8c2d-6e4a-0123456789ab
case "$1" in
  --query-gpu=*) echo "0, NVIDIA H100 80GB HBM3, $uuid, 37, $(cat $d/mem_used), 81559, 41, 117.82" ;;
  --query-compute-apps=*) if [ -s $d/pid ]; then echo "$(cat $d/pid), $uuid, $(cat $d/mem_used)"; fi ;;
  *) echo "unexpected arguments: $*" >&2; exit 2 ;;
esac
"#,
        d = dir.display()
    );
    let path = bin.join("nvidia-smi");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Appends `text` to the file at `path` (created if missing), as a program that logs
/// to a file does.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
