//! Remote files and commands over SSH, and `corral gpu HOST`: a real `sshd` (Debian's
//! `openssh-server`) started by each test on a free loopback port, with a throwaway host
//! key and user key, running as the current user; the daemon reaches it through an ssh
//! config file the test writes (`CORRAL_SSH_CONFIG`), with a known_hosts file that holds
//! the host key (or, for the host-key test, does not). "Remote" files are files of this
//! machine read through that sshd. A dropped connection is the sshd child serving it,
//! killed. Waits are on the run's files, the API and /proc, never on time.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SSHD: &str = "/usr/sbin/sshd";

/// A real sshd on a free loopback port, with its keys in a temp dir.
struct Sshd {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: String,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "corral-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen is needed by the SSH tests: apt-get install -y openssh-client");
    assert!(st.success(), "ssh-keygen failed");
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The live (not zombie) processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if parent_pid(p) == Some(pid) && proc_state(p).is_some_and(|s| s != 'Z') {
            out.push(p);
        }
    }
    out
}

/// The processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && proc_state(p).is_some_and(|s| s != 'Z') {
            out.push((p, cmd));
        }
    }
    out
}

impl Sshd {
    /// Starts sshd; `extra` is more of its config (e.g. `SetEnv PATH=…`).
    fn start(extra: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: the SSH tests start a real sshd. Install it with \
             `apt-get install -y openssh-server` (scripts/test.sh does)"
        );
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } == 0 {
            // sshd run by root separates privileges and needs this directory.
            std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd for sshd");
        }
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("user_key"));
        std::fs::copy(
            dir.path().join("user_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(dir.path().join("host_key.pub")).unwrap();
        let mut s = Sshd {
            child: None,
            port: free_port(),
            dir,
            extra: extra.to_string(),
        };
        std::fs::write(
            s.path("known_hosts"),
            format!("[127.0.0.1]:{} {}", s.port, host_pub.trim()),
        )
        .unwrap();
        std::fs::write(s.path("no_known_hosts"), "").unwrap();
        s.run();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&mut self) {
        let d = self.dir.path().display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile none\nUsePAM no\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n{extra}\n",
            port = self.port,
            extra = self.extra
        );
        std::fs::write(self.path("sshd_config"), config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sshd.log"))
            .unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting sshd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd ended ({st}): {}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sshd never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The sshd processes serving a connection each (the listener's children).
    fn connections(&self) -> Vec<u32> {
        self.child.as_ref().map_or(Vec::new(), |c| children(c.id()))
    }

    /// Drops every connection: the sshd child serving each is killed. Returns how many.
    fn kill_connections(&self) -> usize {
        let c = self.connections();
        for &p in &c {
            signal(p as i32, libc::SIGKILL);
        }
        c.len()
    }

    /// Stops listening and drops every connection.
    fn stop(&mut self) {
        self.kill_connections();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An ssh config entry for `alias`, naming this sshd; `known`: its host key is in
    /// the known_hosts file the entry names.
    fn entry(&self, alias: &str, known: bool) -> String {
        let d = self.dir.path().display();
        let hosts = if known {
            "known_hosts"
        } else {
            "no_known_hosts"
        };
        format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {d}/user_key\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {d}/{hosts}\n  GlobalKnownHostsFile /dev/null\n",
            self.port,
            user()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A daemon whose ssh reads `config` (the text of an ssh config file).
async fn daemon(dir: &Path, config: &str) -> Daemon {
    let file = dir.join("ssh_config");
    std::fs::write(&file, config).unwrap();
    Daemon::start_with(DaemonOpts {
        env: vec![("CORRAL_SSH_CONFIG".into(), file.display().to_string())],
        ..Default::default()
    })
    .await
}

fn log_file(d: &Daemon, task: &str, run_id: &str, ext: &str) -> PathBuf {
    d.home
        .join("runs")
        .join(task)
        .join("logs")
        .join(format!("run_{run_id}.{ext}"))
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits until the run's `.log` (exactly the bytes in records) is `len` bytes long.
async fn wait_log_len(d: &Daemon, task: &str, run_id: &str, len: u64) {
    let path = log_file(d, task, run_id, "log");
    let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
    let deadline = std::time::Instant::now() + DEADLINE;
    while size() < len && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        size(),
        len,
        "{} should hold {len} bytes; the run's notes: {}; the daemon's stderr: {}",
        path.display(),
        read(&log_file(d, task, run_id, "sys")),
        d.stderr()
    );
}

fn lines(from: u32, to: u32) -> String {
    (from..to).map(|i| format!("remote line {i}\n")).collect()
}

fn stream_lines(records: &[serde_json::Value], stream: &str) -> String {
    of_stream(records, stream)
        .iter()
        .map(|r| format!("{}\n", r["line"].as_str().unwrap()))
        .collect()
}

/// The remote run directory of a command run (the sshd runs as this user).
fn remote_dir(run_id: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join(".corral/runs")
        .join(run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_file_is_read_once_in_order_across_killed_connections() {
    let sshd = Sshd::start("");
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), &sshd.entry("box", true)).await;
    let f = tmp.path().join("run.log");
    append(&f, &lines(0, 100));
    let target = format!("box:{}", f.display());
    let run = d
        .cli(&["tail", &target, "--name", "rf"])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    wait_log_len(&d, "rf", &run, lines(0, 100).len() as u64).await;

    // A writer goes on while the connection is killed three times under it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (f, stop) = (f.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 100;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append(&f, &lines(n, n + 10));
                n += 10;
                // Pacing the writer over the kills, not a synchronisation.
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let log = log_file(&d, "rf", &run, "log");
    let mut seen = std::fs::metadata(&log).unwrap().len();
    for _ in 0..3 {
        wait_until("the reading to go on", DEADLINE, || {
            std::fs::metadata(&log).unwrap().len() > seen && !sshd.connections().is_empty()
        })
        .await;
        assert!(sshd.kill_connections() >= 1);
        seen = std::fs::metadata(&log).unwrap().len();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = writer.join().unwrap();
    let want = lines(0, total);
    wait_log_len(&d, "rf", &run, want.len() as u64).await;

    d.cli(&["stop", "rf"]).await.ok();
    let items = d.read_to_end("rf", "since=0&follow=true").await;
    let (records, end) = check_dense(&items, 1);
    assert_eq!(
        stream_lines(&records, "file"),
        want,
        "every line once, in order"
    );
    let notes = system_lines(&records);
    assert!(
        notes.iter().any(|n| n.contains("dropped")),
        "a note says the connection dropped: {notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("again: reading")),
        "a note says it is back: {notes:?}"
    );
    assert_eq!(end["status"], "killed", "{end}");
    assert_eq!(d.task("rf").await["command"], target);
    // No remote reader is left once the task stopped.
    let needle = f.display().to_string();
    wait_until("the remote reader to end", DEADLINE, || {
        processes_with("corral-follow")
            .iter()
            .all(|(_, c)| !c.contains(&needle))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_file_goes_on_after_a_daemon_restart_without_repeating() {
    let sshd = Sshd::start("");
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), &sshd.entry("box", true)).await;
    let f = tmp.path().join("run.log");
    append(&f, &lines(0, 20));
    let target = format!("box:{}", f.display());
    let first = d
        .cli(&["tail", &target, "--name", "rr"])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    wait_log_len(&d, "rr", &first, lines(0, 20).len() as u64).await;
    let opts = DaemonOpts {
        env: vec![(
            "CORRAL_SSH_CONFIG".into(),
            tmp.path().join("ssh_config").display().to_string(),
        )],
        ..Default::default()
    };
    // The daemon dies; the file grows while none reads it; the next one takes the run
    // back at the byte after its last record.
    let mut d = d;
    d.kill9();
    append(&f, &lines(20, 30));
    let mut d2 = d.start_again(opts.clone()).await;
    wait_log_len(&d2, "rr", &first, lines(0, 30).len() as u64).await;
    assert_eq!(d2.task("rr").await["run_id"], first.as_str(), "taken back");
    assert_eq!(read(&log_file(&d2, "rr", &first, "log")), lines(0, 30));
    // Stopped with the daemon: the task's next run goes on from there.
    assert_eq!(d2.terminate(), Some(0), "{}", d2.stderr());
    append(&f, &lines(30, 40));
    let d3 = d2.start_again(opts).await;
    let second = wait_for("a new run", DEADLINE, || async {
        let t = d3.task("rr").await;
        let id = t["run_id"].as_str().unwrap_or_default().to_string();
        (id != first && t["status"] == "ready").then_some(id)
    })
    .await;
    wait_log_len(&d3, "rr", &second, lines(30, 40).len() as u64).await;
    assert_eq!(
        read(&log_file(&d3, "rr", &second, "log")),
        lines(30, 40),
        "the next run goes on at the byte after the last line read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_commands_status_is_recorded_after_its_connection_died() {
    let mut sshd = Sshd::start("");
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), &sshd.entry("box", true)).await;
    let go = tmp.path().join("go");
    let script = format!(
        "echo started; while [ ! -e {} ]; do sleep 0.05; done; echo finished; exit 3",
        go.display()
    );
    let run = d
        .cli(&[
            "run", "--remote", "box", "--name", "rc", "--", "sh", "-c", &script,
        ])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    let log = log_file(&d, "rc", &run, "log");
    wait_for_text(&log, "started\n").await;
    // The connection dies, and no sshd answers until the command has ended.
    sshd.stop();
    std::fs::write(&go, "").unwrap();
    let status = remote_dir(&run).join("status");
    wait_until("the remote command to end", DEADLINE, || status.exists()).await;
    assert_eq!(d.run_row(&run).await["status"], "running");
    sshd.run();
    let row = d.wait_run_end(&run).await;
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["exit_code"], 3, "{row}");
    assert!(
        row["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("exited with code 3"),
        "{row}"
    );
    let items = d.read_to_end("rc", "since=0&follow=true").await;
    let (records, _) = check_dense(&items, 1);
    assert_eq!(stream_lines(&records, "stdout"), "started\nfinished\n");
    let notes = system_lines(&records);
    assert!(notes.iter().any(|n| n.contains("dropped")), "{notes:?}");
    let _ = std::fs::remove_dir_all(remote_dir(&run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_reaches_the_remote_process_group() {
    let sshd = Sshd::start("");
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), &sshd.entry("box", true)).await;
    let pidfile = tmp.path().join("pid");
    let script = format!("sleep 300 & echo $! > {}; echo up; wait", pidfile.display());
    let run = d
        .cli(&[
            "run", "--remote", "box", "--name", "rs", "--", "sh", "-c", &script,
        ])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    wait_for_text(&log_file(&d, "rs", &run, "log"), "up\n").await;
    let sleeper: i32 = read(&pidfile).trim().parse().unwrap();
    assert!(!is_esrch(sleeper));
    d.cli(&["stop", "rs"]).await.ok();
    let row = d.wait_run_end(&run).await;
    assert_eq!(row["signal"], 15, "{row}");
    wait_until("the remote group to be gone", DEADLINE, || {
        is_esrch(sleeper) || proc_state(sleeper as u32) == Some('Z')
    })
    .await;
    let _ = std::fs::remove_dir_all(remote_dir(&run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_is_a_clear_error_never_accepted() {
    let sshd = Sshd::start("");
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), &sshd.entry("stranger", false)).await;
    let run = d
        .cli(&["tail", "stranger:/etc/hostname", "--name", "uk"])
        .await
        .ok()
        .stdout()
        .trim()
        .to_string();
    let row = d.wait_run_end(&run).await;
    assert_eq!(row["status"], "failed", "{row}");
    let msg = row["error_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("host key of stranger") && msg.contains("known_hosts"),
        "{msg}"
    );
    let out = d.cli(&["gpu", "stranger"]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("known_hosts"), "{}", out.stderr);
    // Nothing was written to the file that refused it, nothing was connected.
    assert_eq!(read(&sshd.path("no_known_hosts")), "");
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_of_a_host_reads_its_nvidia_smi_and_says_when_there_is_none() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvidia-smi");
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("nvidia-smi");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n*--query-gpu=*) cat {f}/query-gpu.csv ;;\n\
             *--query-compute-apps=*) cat {f}/query-compute-apps.csv ;;\n*) exit 2 ;;\nesac\n",
            f = fixtures.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_gpu = Sshd::start(&format!("SetEnv PATH={}:/usr/bin:/bin", bin.display()));
    let without = Sshd::start("");
    let d = daemon(
        tmp.path(),
        &(with_gpu.entry("gpubox", true) + &without.entry("cpubox", true)),
    )
    .await;

    let v = d.cli(&["gpu", "gpubox", "--json"]).await.ok().json();
    assert_eq!(v["available"], true, "{v}");
    assert_eq!(v["source"], "nvidia-smi on gpubox", "{v}");
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2, "{v}");
    assert_eq!(gpus[0]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(gpus[0]["utilization_pct"], 97);
    assert_eq!(gpus[0]["processes"][0]["pid"], 31337, "{v}");
    assert_eq!(gpus[1]["processes"], serde_json::json!([]), "{v}");
    let text = d.cli(&["gpu", "gpubox"]).await.ok().stdout();
    assert!(text.contains("GPU 1  NVIDIA H100 80GB HBM3"), "{text}");

    let out = d.cli(&["gpu", "cpubox"]).await.ok();
    assert_eq!(
        out.stdout().trim(),
        "no NVIDIA GPU or driver found on cpubox (nvidia-smi is not installed there)"
    );
    let (status, v) = d.get("/gpu?host=-oProxyCommand%3Dx").await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connects_and_disconnects_leave_no_ssh_process() {
    let sshd = Sshd::start("");
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path(), &sshd.entry("box", true)).await;
    let control = d.home.join("ssh").display().to_string();
    let ours = || processes_with(&control);
    for i in 0..100 {
        let (status, v) = d.get("/gpu?host=box").await;
        assert_eq!(status, 200, "cycle {i}: {v}; sshd: {}", sshd.log());
        assert_eq!(v["available"], false, "{v}");
        let procs = ours();
        assert_eq!(
            procs.len(),
            1,
            "cycle {i}: only the master is left: {procs:?}"
        );
        assert_eq!(sshd.connections().len(), 1, "cycle {i}: one connection");
        // The connection drops; its master ends with it.
        assert_eq!(sshd.kill_connections(), 1);
        wait_until("the master to end", DEADLINE, || ours().is_empty()).await;
    }
    let (status, _) = d.get("/gpu?host=box").await;
    assert_eq!(status, 200);
    let mut d = d;
    d.terminate();
    assert!(ours().is_empty(), "after shutdown: {:?}", ours());
    wait_until("every sshd session to end", DEADLINE, || {
        sshd.connections().is_empty()
    })
    .await;
    assert!(sshd.pid() > 0);
}
