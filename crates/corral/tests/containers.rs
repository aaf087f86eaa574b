//! Containers (`corral run --image`, `corral tail container:NAME`, `corral ps
//! --containers`): a real daemon drives a real Podman serving the Docker Engine API
//! (`podman system service`) on a socket in a temp dir, with its own storage there. No
//! registry is reachable, so the test image is made here: a tarball holding Debian's
//! `busybox-static` as /bin/busybox (and its applets as links), `podman import`ed.
//!
//! Podman's settings for this machine (written to `CONTAINERS_CONF`): the `runc` runtime
//! (`crun` fails with "cgroups in hybrid mode not supported"), the `cgroupfs` cgroup
//! manager (no systemd), explicit `default_ulimits` (the defaults ask for more than the
//! hard limits allow, and runc fails with "error setting rlimit type 6"), the `file`
//! events logger and the `k8s-file` log driver (no journald).

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const IMAGE: &str = "localhost/corral-test:latest";
const INSTALL: &str = "apt-get install -y podman runc busybox-static";
const BUSYBOX: &str = "/bin/busybox";

/// A Podman service of the test's own: its storage, its settings and its socket in a
/// temp dir. Dropping it removes its containers and stops it.
struct Podman {
    dir: tempfile::TempDir,
    service: Child,
    socket: PathBuf,
}

impl Podman {
    fn start() -> Podman {
        for (prog, arg) in [("podman", "--version"), ("runc", "--version")] {
            let ok = Command::new(prog)
                .arg(arg)
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                ok,
                "`{prog}` is needed by the container tests; install it with: {INSTALL}"
            );
        }
        // A dynamic busybox (Debian's `busybox`) would find no libc in the image.
        let head = std::fs::read(BUSYBOX)
            .map(|b| b[..b.len().min(4096)].to_vec())
            .unwrap_or_default();
        assert!(
            head.starts_with(b"\x7fELF") && !head.windows(7).any(|w| w == b"ld-linu"),
            "a static {BUSYBOX} (Debian's busybox-static) makes the test image; install it with: {INSTALL}"
        );
        let dir = tempfile::Builder::new()
            .prefix("ctr")
            .tempdir()
            .expect("creating a temp dir");
        let d = dir.path();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
static_dir = "{d}/root/libpod"
volume_path = "{d}/root/volumes"
[network]
network_config_dir = "{d}/net"
"#,
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/run\"\ngraphroot = \"{d}/root\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        // The image: busybox and its applets.
        let rootfs = d.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "sleep", "printf", "seq", "true", "false",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = d.join("image.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tar of the test image failed");
        let socket = d.join("podman.sock");
        let mut p = Podman {
            service: Command::new("true").spawn().unwrap(),
            socket,
            dir,
        };
        let out = p.cmd(&["import", tar.to_str().unwrap(), IMAGE]);
        assert!(out.status.success(), "podman import: {}", stderr(&out));
        let log = std::fs::File::create(p.dir.path().join("service.log")).unwrap();
        p.service = p
            .command()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", p.socket.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting podman system service");
        let deadline = std::time::Instant::now() + DEADLINE;
        while p.try_get("/_ping").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "podman system service did not answer on {}: {}",
                p.socket.display(),
                p.service_log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        p
    }

    fn uri(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The podman CLI on this service's storage and settings.
    fn command(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("TMPDIR", d);
        c
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).output().expect("running podman")
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// `GET path` of the engine's API (HTTP/1.0 over its socket): the JSON body.
    fn try_get(&self, path: &str) -> Option<Value> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: d\r\n\r\n").ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        Some(serde_json::from_str(body).unwrap_or(Value::String(body.to_string())))
    }

    /// The containers carrying `label` (`key=value`), as the engine lists them.
    fn with_label(&self, label: &str) -> Vec<Value> {
        let filters = format!("{{\"label\":[\"{label}\"]}}");
        let q: String = filters
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self
            .try_get(&format!("/v1.41/containers/json?all=true&filters={q}"))
            .unwrap_or_else(|| {
                panic!("the engine did not list containers: {}", self.service_log())
            });
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-af", "-t", "0"]);
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A daemon whose container engine is `podman`.
async fn daemon(podman: &Podman) -> Daemon {
    Daemon::start_with(DaemonOpts::args(&["--docker-host", &podman.uri()])).await
}

/// Reads the task's log stream from its start until a record's line is `last`.
async fn read_until(d: &Daemon, task: &str, last: &str) -> Vec<Value> {
    let mut s = d.open_stream(task, "since=0&follow=true").await;
    let mut got = Vec::new();
    loop {
        let item = s
            .next()
            .await
            .unwrap_or_else(|| panic!("the log of {task} ended before `{last}`: {got:?}"));
        let done = item["line"] == last;
        got.push(item);
        if done {
            return got;
        }
    }
}

fn lines_of<'a>(records: &'a [Value], stream: &str) -> Vec<&'a str> {
    of_stream(records, stream)
        .into_iter()
        .map(|r| r["line"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_task_is_started_labelled_logged_once_and_stopped() {
    let podman = Podman::start();
    let d = daemon(&podman).await;
    let script = "echo out1; echo err1 >&2; for i in $(seq 1 200); do echo line $i; done; \
                  echo ready; exec sleep 1000";
    let run_id = d
        .run_task(
            "srv",
            &[
                "--image",
                IMAGE,
                "--label",
                "prompt_id=p1",
                "--stop-timeout",
                "1s",
                "--network",
                "none",
            ],
            &["sh", "-c", script],
        )
        .await;
    let records = read_until(&d, "srv", "ready").await;

    // Every line once, in order, stdout and stderr apart.
    let mut want = vec!["out1".to_string()];
    want.extend((1..=200).map(|i| format!("line {i}")));
    want.push("ready".into());
    assert_eq!(lines_of(&records, "stdout"), want);
    assert_eq!(lines_of(&records, "stderr"), ["err1"]);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());

    // The labels, as the engine shows them.
    let found = podman.with_label(&format!("corral.run_id={run_id}"));
    assert_eq!(found.len(), 1, "{found:?}");
    let labels = &found[0]["Labels"];
    assert_eq!(labels["corral.task"], "srv");
    assert_eq!(labels["prompt_id"], "p1");
    assert!(labels["corral.node"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));
    assert!(labels["corral.started_at"]
        .as_str()
        .is_some_and(|t| corral_core::time::parse_rfc3339_micros(t).is_some()));
    let id = found[0]["Id"].as_str().unwrap().to_string();

    // The run, the task and `ps --containers` know it.
    let row = d.run_row(&run_id).await;
    assert_eq!(row["container_id"], id.as_str());
    assert_eq!(d.task("srv").await["container_id"], id.as_str());
    // A process in it is known as the container's by its cgroup (how `corral gpu` maps
    // a GPU process in a container to its task).
    let inspect = podman
        .try_get(&format!("/v1.41/containers/{id}/json"))
        .unwrap();
    let pid = inspect["State"]["Pid"].as_u64().unwrap() as u32;
    assert_eq!(
        corral_daemon::gpu::proc_container(pid).as_deref(),
        Some(id.as_str()),
        "{:?}",
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
    );
    let listed = d.cli(&["ps", "--containers", "--json"]).await.ok().json();
    let mine: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["run_id"] == run_id.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["id"], id.as_str());
    assert_eq!(mine[0]["task"], "srv");
    assert_eq!(mine[0]["labels"]["prompt_id"], "p1");
    let table = d.cli(&["ps", "--containers"]).await.ok().stdout();
    assert!(
        table.contains(&id[..12]) && table.contains("srv"),
        "{table}"
    );
    let ps = d.cli(&["ps"]).await.ok().stdout();
    assert!(ps.contains("CONTAINER") && ps.contains(&id[..12]), "{ps}");
    let runs = d.cli(&["runs", "srv"]).await.ok().stdout();
    assert!(
        runs.contains("CONTAINER") && runs.contains(&id[..12]),
        "{runs}"
    );

    // Stop: the stop signal, then SIGKILL after the stop timeout (a shell as PID 1
    // ignores SIGTERM); the container's exit code is the run's.
    d.cli(&["stop", "srv"]).await.ok();
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "killed", "{row}");
    assert_eq!(row["exit_code"], 137, "{row}");
    assert!(
        row["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("container exited with code 137")),
        "{row}"
    );
    // Removed after its run, its inspect output kept with the run.
    assert!(podman
        .with_label(&format!("corral.run_id={run_id}"))
        .is_empty());
    let log = PathBuf::from(row["log_path"].as_str().unwrap());
    let inspect: Value =
        serde_json::from_slice(&std::fs::read(log.with_extension("container.json")).unwrap())
            .unwrap();
    assert_eq!(inspect["Id"], id.as_str());

    // The whole stored log: the same lines, each once, and the end.
    let items = d.read_to_end("srv", "since=0&follow=true").await;
    let (records, end) = check_dense(&items, 1);
    assert_eq!(lines_of(&records, "stdout"), want);
    assert_eq!(end["status"], "killed", "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_container_records_its_exit_code_and_error() {
    let podman = Podman::start();
    let d = daemon(&podman).await;
    let run_id = d
        .run_task(
            "bad",
            &[
                "--image",
                IMAGE,
                "--network",
                "none",
                "--env",
                "HF_TOKEN=hf_secret_value",
            ],
            &[
                "sh",
                "-c",
                "echo starting; echo no model at /models/x.gguf >&2; exit 3",
            ],
        )
        .await;
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["exit_code"], 3, "{row}");
    let msg = row["error_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("container exited with code 3") && msg.contains("no model at /models/x.gguf"),
        "{row}"
    );
    // Its diagnostics bundle has the container's inspect output, secrets hidden.
    let summary = wait_for("the run's diagnostics bundle", DEADLINE, || async {
        let (status, v) = d.get(&format!("/runs/{run_id}/diagnostics")).await;
        (status == 200).then_some(v)
    })
    .await;
    assert!(
        summary["files"]
            .as_array()
            .unwrap()
            .contains(&Value::from("container.json")),
        "{summary}"
    );
    let dir = PathBuf::from(summary["dir"].as_str().unwrap());
    let inspect: Value =
        serde_json::from_slice(&std::fs::read(dir.join("container.json")).unwrap()).unwrap();
    assert_eq!(inspect["State"]["ExitCode"], 3, "{inspect}");
    assert_eq!(inspect["Id"], row["container_id"], "{inspect}");
    let env = inspect["Config"]["Env"].to_string();
    assert!(
        env.contains("HF_TOKEN=<hidden>") && !env.contains("hf_secret_value"),
        "{env}"
    );

    // A command the image does not have: the run cannot start, and says why.
    let out = d
        .cli(&[
            "run",
            "--name",
            "nocmd",
            "--image",
            IMAGE,
            "--network",
            "none",
            "--",
            "/no/such",
        ])
        .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot run the container"), "{out:?}");
    let runs = d.runs("nocmd").await;
    assert_eq!(runs[0]["status"], "failed", "{runs:?}");
    assert!(podman.with_label("corral.task=nocmd").is_empty());

    // An image that is not here and cannot be pulled.
    let out = d
        .cli(&[
            "run",
            "--name",
            "noimage",
            "--image",
            "localhost/no-such-image:1",
            "--",
            "x",
        ])
        .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("cannot run the container") && out.stderr.contains("pulling"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replaces_the_container_and_leaves_none_behind() {
    let podman = Podman::start();
    let d = daemon(&podman).await;
    let first = d
        .run_task(
            "web",
            &[
                "--image",
                IMAGE,
                "--network",
                "none",
                "--stop-timeout",
                "1s",
            ],
            &["sh", "-c", "echo up; exec sleep 1000"],
        )
        .await;
    read_until(&d, "web", "up").await;
    let out = d.cli(&["restart", "web"]).await.ok();
    let second = out.stdout().trim().to_string();
    assert_ne!(first, second);
    let row = d.wait_run_end(&first).await;
    assert_eq!(row["status"], "killed", "{row}");
    d.wait_task_status("web", "ready").await;
    let live = podman.with_label("corral.task=web");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["Labels"]["corral.run_id"], second.as_str());
    let runs = d.runs("web").await;
    assert_ne!(runs[0]["container_id"], runs[1]["container_id"], "{runs:?}");
    d.cli(&["stop", "web"]).await.ok();
    d.wait_run_end(&second).await;
    assert!(podman.with_label("corral.task=web").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_container_is_followed_and_let_go_of() {
    let podman = Podman::start();
    let d = daemon(&podman).await;
    let out = podman.cmd(&[
        "run",
        "-d",
        "--name",
        "theirs",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "trap 'echo more' USR1; echo hello; echo oops >&2; while true; do sleep 0.1; done",
    ]);
    assert!(out.status.success(), "podman run: {}", stderr(&out));
    let out = d
        .cli(&["tail", "container:theirs", "--name", "theirs-logs"])
        .await
        .ok();
    let run_id = out.stdout().trim().to_string();
    let records = read_until(&d, "theirs-logs", "hello").await;
    assert_eq!(lines_of(&records, "stdout"), ["hello"]);
    let records = if lines_of(&records, "stderr").is_empty() {
        let mut s = d.open_stream("theirs-logs", "since=0&follow=true").await;
        let mut got = Vec::new();
        while !got.iter().any(|r: &Value| r["line"] == "oops") {
            got.push(s.next().await.expect("the stderr line"));
        }
        got
    } else {
        records
    };
    assert_eq!(lines_of(&records, "stderr"), ["oops"]);
    assert_eq!(d.task("theirs-logs").await["command"], "container:theirs");

    // A stop lets go of it: the container runs on.
    d.cli(&["stop", "theirs-logs"]).await.ok();
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "killed", "{row}");
    let state = podman.cmd(&["inspect", "-f", "{{.State.Running}}", "theirs"]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "true");

    // What it prints meanwhile is read by the task's next run, and nothing twice.
    let out = podman.cmd(&["kill", "-s", "USR1", "theirs"]);
    assert!(out.status.success(), "podman kill: {}", stderr(&out));
    let out = d.cli(&["restart", "theirs-logs"]).await.ok();
    let run_id = out.stdout().trim().to_string();
    let records = read_until(&d, "theirs-logs", "more").await;
    assert_eq!(lines_of(&records, "stdout"), ["more"]);
    assert!(lines_of(&records, "stderr").is_empty(), "{records:?}");

    // Its end is the run's end, with its exit code.
    let out = podman.cmd(&["kill", "theirs"]);
    assert!(out.status.success(), "podman kill: {}", stderr(&out));
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["exit_code"], 137, "{row}");
    let items = d.read_to_end("theirs-logs", "since=0&follow=true").await;
    let (records, _) = check_dense(&items, 1);
    assert_eq!(lines_of(&records, "stdout"), ["more"]);
    // Not ours: not removed.
    assert_eq!(podman.with_label("corral.task").len(), 0);
    let state = podman.cmd(&["inspect", "-f", "{{.State.Status}}", "theirs"]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "exited");

    // A container that does not exist.
    let out = d
        .cli(&["tail", "container:nobody", "--name", "nobody"])
        .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no container `nobody`"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_a_clear_error() {
    let d = Daemon::start_with(DaemonOpts::args(&[
        "--docker-host",
        "unix:///nonexistent/docker.sock",
    ]))
    .await;
    let out = d
        .cli(&["run", "--name", "c", "--image", IMAGE, "--", "true"])
        .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot reach the container engine at unix:///nonexistent/docker.sock")
            && out.stderr.contains("--docker-host"),
        "{out:?}"
    );
    let out = d.cli(&["ps", "--containers"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("cannot reach the container engine"),
        "{out:?}"
    );
}

/// The numbers of the `tick N` lines on stdout, which must be 1, 2, 3, … with none
/// twice and none missing.
fn ticks(records: &[Value]) -> Vec<u64> {
    let got: Vec<u64> = lines_of(records, "stdout")
        .iter()
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a tick: {l:?}"))
        })
        .collect();
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    got
}

/// Reads the task's log from its start until the line `tick N`, N at least `n`.
async fn read_ticks(d: &Daemon, task: &str, n: u64) -> Vec<Value> {
    let mut s = d.open_stream(task, "since=0&follow=true").await;
    let mut got = Vec::new();
    loop {
        let item = s.next().await.expect("the log ended");
        let past = item["line"]
            .as_str()
            .and_then(|l| l.strip_prefix("tick "))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|t| t >= n);
        got.push(item);
        if past {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_run_outlives_the_daemon_and_is_taken_back_without_repeats() {
    let podman = Podman::start();
    let opts = DaemonOpts::args(&["--docker-host", &podman.uri()]);
    let mut d1 = Daemon::start_with(opts.clone()).await;
    let run_id = d1
        .run_task(
            "ticker",
            &[
                "--image",
                IMAGE,
                "--network",
                "none",
                "--stop-timeout",
                "1s",
            ],
            &[
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.02; done",
            ],
        )
        .await;
    let seen = ticks(&read_ticks(&d1, "ticker", 20).await);

    // A daemon that dies: the container runs on, and the next daemon goes on from the
    // log's checkpoint.
    d1.kill9();
    let mut d2 = d1.start_again(opts.clone()).await;
    let t = d2.wait_task_status("ticker", "ready").await;
    assert_eq!(t["run_id"], run_id.as_str(), "{t}");
    let seen = ticks(&read_ticks(&d2, "ticker", seen.len() as u64 + 50).await);

    // A daemon that stops and leaves it running: the same.
    let out = d2.cli(&["shutdown", "--leave-running"]).await.ok();
    assert_eq!(out.stdout().trim(), "stopped");
    assert_eq!(d2.terminate(), Some(0));
    assert_eq!(podman.with_label("corral.task=ticker").len(), 1);
    let d3 = d2.start_again(opts).await;
    d3.wait_task_status("ticker", "ready").await;
    ticks(&read_ticks(&d3, "ticker", seen.len() as u64 + 50).await);

    d3.cli(&["stop", "ticker"]).await.ok();
    let row = d3.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "killed", "{row}");
    let items = d3.read_to_end("ticker", "since=0&follow=true").await;
    let (records, _) = check_dense(&items, 1);
    let all = ticks(&records);
    assert!(all.len() as u64 > seen.len() as u64 + 50, "{}", all.len());
    let notes = system_lines(&records);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("taken back by a new daemon")),
        "{notes:?}"
    );
    assert!(podman.with_label("corral.task=ticker").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containerised_server_is_published_on_loopback_and_probed() {
    let podman = Podman::start();
    let d = daemon(&podman).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/sh");
    let (status, v) = d
        .post(
            "/tasks",
            &serde_json::json!({
                "name": "httpd",
                "kind": "container",
                "extra": {
                    "image": IMAGE,
                    "args": ["busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/bin"],
                    "publish": [format!("{port}:8080")],
                },
                "health": {
                    "url": url, "interval_ms": 100, "timeout_ms": 1000, "attempts": 600,
                    "liveness_interval_ms": 1000, "liveness_failures": 3, "adopt": false,
                },
                "stop_timeout_ms": 1000,
            }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // Ready once the published port answers through the engine's forwarding.
    d.wait_task_status("httpd", "ready").await;
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    // Published on loopback only: the engine says so.
    let c = podman.with_label("corral.task=httpd");
    let ports = c[0]["Ports"].to_string();
    assert!(
        ports.contains("127.0.0.1") && ports.contains(&port.to_string()),
        "{ports}"
    );
    d.cli(&["stop", "httpd"]).await.ok();
    d.wait_task_status("httpd", "stopped").await;
}
