//! The web dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `dashboard/test/e2e.mjs` through `playwright-core`, against real daemons. Each test runs
//! one scenario of that script (see its header) and fails with its output.
//!
//! Needs Node.js, `/usr/bin/chromium` and `dashboard/node_modules` (`scripts/test.sh`
//! installs them: `apt-get install nodejs npm chromium` and `npm ci --prefix dashboard`);
//! without them these tests fail and say so. Screenshots of every view are left in
//! `$CARGO_TARGET_DIR/dashboard-screenshots/` (or `CORRAL_SCREENSHOTS`).
//!
//! The dashboard's own files (served at `/`, CSP, cache headers, a browser without the
//! session refused by the API) are checked here without a browser too.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One browser at a time: the scenarios measure frame times and latencies.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn screenshots() -> PathBuf {
    std::env::var_os("CORRAL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target"));
            target.join("dashboard-screenshots")
        })
}

/// Fails with the command that installs what the browser tests need.
fn prerequisites() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "Node.js is needed by the dashboard's browser tests: apt-get install nodejs npm \
         (scripts/test.sh does it)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CORRAL_CHROMIUM").is_some(),
        "Chromium is needed by the dashboard's browser tests: apt-get install chromium \
         (scripts/test.sh does it)"
    );
    assert!(
        repo()
            .join("dashboard/node_modules/playwright-core")
            .exists(),
        "playwright-core is needed by the dashboard's browser tests: npm ci --prefix dashboard \
         (scripts/test.sh does it)"
    );
}

/// Runs `node dashboard/test/e2e.mjs scenario` and fails with its output unless it passes.
async fn scenario(name: &str, env: &[(&str, String)]) {
    prerequisites();
    let _one = BROWSER.lock().await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("dashboard/test/e2e.mjs"))
        .arg(name)
        .env("CORRAL_BIN", env!("CARGO_BIN_EXE_corral"))
        .env("CORRAL_SCREENSHOTS", screenshots())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(400), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the dashboard scenario `{name}` ran for more than 400 s"))
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("PASS"),
        "dashboard scenario `{name}` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_with_its_policy_and_the_api_wants_the_session() {
    let d = Daemon::start().await;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/", d.addr))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(
        h["content-encoding"], "gzip",
        "compressed for a client that takes gzip"
    );
    let mut html = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&resp.bytes().await.unwrap()[..]),
        &mut html,
    )
    .expect("a gzip body");
    assert!(!html.contains("<script>"), "no inline script: {html}");
    let js = html
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .expect("index.html names its script");
    let resp = http.get(format!("{}{js}", d.addr)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    // The files are public; the API is not, and a foreign Host gets neither.
    let resp = http
        .get(format!("{}/api/v1/tasks", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(format!("{}/", d.addr))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = http
        .get(format!("{}/assets/nope.js", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // The daemon printed a login link for the dashboard, on its terminal only: the link
    // is a credential, and never reaches daemon.log.
    wait_until("the login link on the daemon's stderr", DEADLINE, || {
        d.stderr().contains("/login/")
    })
    .await;
    let log = std::fs::read_to_string(d.daemon_log()).unwrap_or_default();
    assert!(
        !log.contains("/login/"),
        "a login link in daemon.log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_watches_drives_and_searches_a_daemons_tasks() {
    scenario("main", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_llama_card_through_a_crash_and_the_tokens_chart() {
    scenario("llama", &[]).await;
}

/// A redis-server of this test on a free loopback port, killed at the end.
struct Redis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it: apt-get install redis-server")
            });
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
        Redis {
            port,
            child,
            _dir: dir,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CORRAL_REDIS_ENABLED".into(), "true".into()),
            ("REDIS_HOST".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), self.port.to_string()),
            (
                "CORRAL_REDIS_CHANNEL_PREFIX".into(),
                "corral:dash_test".into(),
            ),
        ]
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_a_hubs_fleet_of_two_nodes() {
    prerequisites();
    let r = Redis::start();
    // The fleet token, so that the hub can follow the nodes' tasks (gRPC).
    let secrets = tempfile::tempdir().unwrap();
    let fleet = secrets.path().join("fleet-token");
    std::fs::write(&fleet, "fleet-token-of-the-dashboard-tests-0123\n").unwrap();
    let fleet = fleet.to_str().unwrap().to_string();
    let node = |name: &'static str| {
        let env = r.env();
        let fleet = fleet.clone();
        async move {
            Daemon::start_with(DaemonOpts {
                env,
                ..DaemonOpts::args(&[
                    "--node",
                    name,
                    "--node-heartbeat",
                    "1s",
                    "--fleet-token-file",
                    &fleet,
                ])
            })
            .await
        }
    };
    let a = node("gpu-a").await;
    let b = node("gpu-b").await;
    let hub = Daemon::start_with(DaemonOpts {
        env: r.env(),
        ..DaemonOpts::args(&[
            "--hub",
            "--node",
            "hub",
            "--node-heartbeat",
            "1s",
            "--fleet-token-file",
            &fleet,
        ])
    })
    .await;
    a.run_task("trainer", &[], &["sh", "-c", "echo epoch 1; sleep 600"])
        .await;
    b.run_task("upscaler", &[], &["sh", "-c", "echo frame 1; sleep 600"])
        .await;
    scenario(
        "fleet",
        &[
            ("CORRAL_ADDR", hub.addr.clone()),
            ("CORRAL_TOKEN", hub.token.clone().unwrap()),
            ("CORRAL_NODES", "gpu-a,gpu-b".into()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_tasks_card_shows_what_it_holds_on_the_gpu() {
    // No NVIDIA GPU here: a stand-in `nvidia-smi` answers corral's two queries in the
    // format the real one prints, with the task's pid (written by the task) on GPU 0.
    let tmp = tempfile::tempdir().unwrap();
    fake_nvidia_smi(tmp.path(), 3072);
    scenario(
        "gpu",
        &[(
            "CORRAL_FAKE_SMI_DIR",
            tmp.path().to_string_lossy().into_owned(),
        )],
    )
    .await;
}
