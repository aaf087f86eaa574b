//! The SSH transport: the system `ssh`, one multiplexed connection per host.
//!
//! **Rules.**
//! - Only the system `ssh` program is run, so the user's `~/.ssh/config` (or the file of
//!   `--ssh-config`), agents, jump hosts and `known_hosts` work as they do for the user.
//! - Host keys are checked strictly: `StrictHostKeyChecking=yes` and `BatchMode=yes` are
//!   given on the command line (which wins over any config file), so an unknown or
//!   changed host key is an error ([`SshError::HostKey`]), never accepted and never asked.
//! - One connection per host: a master (`ssh -M -N`) that is the daemon's own child, with
//!   its control socket in `<home>/ssh/`; every session (a remote file's reader, a remote
//!   command's launch, a GPU query) goes through that socket (`ControlMaster=no`) and may
//!   never fall back to a connection of its own (`ProxyCommand=false` is what a fallback
//!   would run). A master that ended (its connection dropped) is started again by the
//!   next session that needs it.
//! - Nothing is left behind: masters and sessions are children of the daemon that die
//!   with it (`PR_SET_PDEATHSIG`); [`Ssh::close_all`] ends the masters at shutdown; the
//!   remote scripts ([`remote`]) end by themselves when their connection closes.
//! - Keepalives (`ServerAliveInterval=15`, three missed) find a dead connection on an
//!   idle host; they are the only bytes an idle connection sends.

pub mod remote;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a new connection (the master's authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest control socket directory: a Unix socket path holds at most 108 bytes, and the
/// socket's own name takes 17 of them.
const MAX_DIR_LEN: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("`{0}` is not an SSH destination; give user@host or a host name of your ssh config")]
    BadHost(String),
    #[error(
        "the host key of {host} is not known or does not match (ssh said: {said}). corral checks \
         host keys strictly and never accepts one by itself: check the key, then add it to \
         known_hosts (connect once with `ssh {host}`, or use ssh-keyscan)"
    )]
    HostKey { host: String, said: String },
    #[error("cannot connect to {host}: {said}")]
    Connect { host: String, said: String },
    #[error(
        "cannot run ssh: {0}; install the OpenSSH client (Debian: apt-get install openssh-client)"
    )]
    Spawn(std::io::Error),
    #[error("{host} did not answer within {}s", .secs)]
    Timeout { host: String, secs: u64 },
}

/// A host's master connection.
struct Master {
    /// The master process, waited for (so reaped at once) by a task of its own; `None`
    /// for one a previous daemon left (found live on its socket), ended through the socket.
    own: Option<Owned>,
}

struct Owned {
    ended: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    gone: tokio::sync::oneshot::Receiver<()>,
}

impl Owned {
    /// Watches `child` until it ends (or is told to end: SIGTERM, SIGKILL after 5 s).
    fn watch(mut child: Child) -> Owned {
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (gone_tx, gone) = tokio::sync::oneshot::channel();
        let flag = ended.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = child.wait() => {}
                _ = stop_rx => {
                    if let Some(pid) = child.id() {
                        // SAFETY: a signal to our own child, not reaped yet.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                }
            }
            flag.store(true, std::sync::atomic::Ordering::Release);
            let _ = gone_tx.send(());
        });
        Owned {
            ended,
            stop: Some(stop),
            gone,
        }
    }

    fn alive(&self) -> bool {
        !self.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn end(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.gone.await;
    }
}

/// The daemon's SSH transport. Cheap to clone.
#[derive(Clone)]
pub struct Ssh {
    inner: Arc<Inner>,
}

struct Inner {
    program: PathBuf,
    config: Option<PathBuf>,
    dir: PathBuf,
    /// One lock per host: connecting is done once even when many sessions ask at once.
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Master>>>>>,
}

/// Whether `host` may be given to ssh as a destination: `user@host` or a name, never an
/// option (`-oProxyCommand=…`), never with spaces or control bytes.
pub fn check_host(host: &str) -> Result<(), SshError> {
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-:[]%+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SshError::BadHost(host.to_string()))
    }
}

/// `s` quoted for a POSIX shell (the remote login shell reads the command line ssh sends).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Ends the child when the daemon dies, however it dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

impl Ssh {
    /// The transport of a daemon whose home is `home`; `config` is an ssh config file
    /// given to every ssh (`ssh -F`), else ssh reads the user's own.
    pub fn new(home: &Path, config: Option<PathBuf>) -> Ssh {
        let mut dir = home.join("ssh");
        if dir.as_os_str().len() > MAX_DIR_LEN {
            // A deep home leaves no room for the socket's name: a short directory of
            // this user's, named after the home.
            let uid = unsafe { libc::getuid() };
            dir = std::env::temp_dir().join(format!(
                "corral-ssh-{uid}-{:08x}",
                fnv1a(home.as_os_str().as_encoded_bytes()) as u32
            ));
        }
        Ssh {
            inner: Arc::new(Inner {
                program: "ssh".into(),
                config,
                dir,
                hosts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The control sockets' directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The control socket of `host`.
    fn socket(&self, host: &str) -> PathBuf {
        self.inner
            .dir
            .join(format!("{:016x}", fnv1a(host.as_bytes())))
    }

    /// ssh with the options every invocation has.
    fn base(&self, host: &str) -> Command {
        let mut cmd = Command::new(&self.inner.program);
        if let Some(f) = &self.inner.config {
            cmd.arg("-F").arg(f);
        }
        cmd.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
        ])
        .arg(format!("ControlPath={}", self.socket(host).display()));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CORRAL_") {
                cmd.env_remove(k);
            }
        }
        die_with_parent(&mut cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    fn host_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<Option<Master>>> {
        self.inner
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    /// Makes sure `host` has a live master connection: the one running, else a new one
    /// (authenticated, its socket ready).
    pub async fn connect(&self, host: &str) -> Result<(), SshError> {
        check_host(host)?;
        let lock = self.host_lock(host);
        let mut master = lock.lock().await;
        let socket = self.socket(host);
        if let Some(m) = master.take() {
            let alive = match &m.own {
                Some(o) => o.alive(),
                None => self.check(host).await,
            };
            if alive && socket.exists() {
                *master = Some(m);
                return Ok(());
            }
            if let Some(o) = m.own {
                o.end().await;
            }
        }
        std::fs::create_dir_all(&self.inner.dir)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.inner.dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| SshError::Connect {
                host: host.into(),
                said: format!("cannot make {}: {e}", self.inner.dir.display()),
            })?;
        if socket.exists() {
            // A master an earlier daemon left: used while it lives; a dead one's socket
            // (nothing answers on it) is removed.
            if self.check(host).await {
                *master = Some(Master { own: None });
                return Ok(());
            }
            let _ = std::fs::remove_file(&socket);
        }
        let mut cmd = self.base(host);
        cmd.args([
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=no",
            "-N",
            "-T",
            host,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(SshError::Spawn)?;
        let mut stderr = child.stderr.take();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        // The master makes its socket once it is authenticated: that is the sign.
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let mut said = String::new();
                if let Some(mut e) = stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut said).await;
                }
                return Err(connect_error(host, &said));
            }
            if socket.exists() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(SshError::Timeout {
                    host: host.into(),
                    secs: CONNECT_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(e) = stderr {
            // What the master says later (a dropped connection) goes to the daemon's log;
            // read, so that it never blocks on a full pipe.
            let host = host.to_string();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(e).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    tracing::info!(host = %host, "ssh: {}", corral_core::term::sanitize(&l));
                }
            });
        }
        tracing::info!(host = %host, "ssh: connected");
        *master = Some(Master {
            own: Some(Owned::watch(child)),
        });
        Ok(())
    }

    /// Whether a master answers on `host`'s socket.
    async fn check(&self, host: &str) -> bool {
        let mut cmd = self.base(host);
        cmd.args(["-O", "check", host])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        matches!(
            tokio::time::timeout(Duration::from_secs(5), cmd.status()).await,
            Ok(Ok(s)) if s.success()
        )
    }

    /// A session on `host`'s master running `remote` (a command line for the remote
    /// login shell), not spawned yet. Call [`Ssh::connect`] first.
    pub fn session(&self, host: &str, remote: &str) -> Command {
        let mut cmd = self.base(host);
        cmd.args([
            "-o",
            "ControlMaster=no",
            // Where the master is gone, ssh would open a connection of its own: it
            // fails instead, and the caller connects again.
            "-o",
            "ProxyCommand=false",
            "-T",
            host,
            remote,
        ]);
        cmd
    }

    /// Runs `remote` on `host` to its end (at most `timeout`): its output. A session
    /// that found its connection gone (the master had not noticed yet) is tried again,
    /// twice, on a new connection.
    pub async fn output(
        &self,
        host: &str,
        remote: &str,
        timeout: Duration,
    ) -> Result<std::process::Output, SshError> {
        let mut tries = 0;
        loop {
            tries += 1;
            self.connect(host).await?;
            let mut cmd = self.session(host, remote);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = cmd.spawn().map_err(SshError::Spawn)?;
            match tokio::time::timeout(timeout, child.wait_with_output()).await {
                Ok(Ok(out)) if out.status.code() == Some(255) => {
                    let e = connect_error(host, &String::from_utf8_lossy(&out.stderr));
                    if matches!(e, SshError::HostKey { .. }) || tries >= 3 {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Ok(out)) => return Ok(out),
                Ok(Err(e)) => return Err(SshError::Spawn(e)),
                Err(_) => {
                    return Err(SshError::Timeout {
                        host: host.into(),
                        secs: timeout.as_secs(),
                    })
                }
            }
        }
    }

    /// Ends every master connection (at shutdown, after the tasks stopped).
    pub async fn close_all(&self) {
        let hosts: Vec<(String, Arc<tokio::sync::Mutex<Option<Master>>>)> = self
            .inner
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (host, lock) in hosts {
            let Some(m) = lock.lock().await.take() else {
                continue;
            };
            match m.own {
                Some(o) => o.end().await,
                None => {
                    let mut cmd = self.base(&host);
                    cmd.args(["-O", "exit", &host])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    let _ = tokio::time::timeout(Duration::from_secs(5), cmd.status()).await;
                }
            }
        }
    }
}

/// What ssh's complaint means: a host key refused, or another failure to connect.
pub fn connect_error(host: &str, said: &str) -> SshError {
    let said = corral_core::term::sanitize(said.trim()).into_owned();
    let said = if said.is_empty() {
        "ssh ended without saying why".to_string()
    } else {
        said
    };
    if said.contains("Host key verification failed")
        || said.contains("No ED25519 host key is known")
        || said.contains("host key is known for")
        || said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        SshError::HostKey {
            host: host.into(),
            said,
        }
    } else {
        SshError::Connect {
            host: host.into(),
            said,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_never_options() {
        for ok in ["gpu@10.0.0.7", "box", "u@[::1]", "a.b-c_d"] {
            check_host(ok).unwrap();
        }
        for bad in ["-oProxyCommand=x", "", "a b", "a;b", "a\nb", "u@h$(x)"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf %s {}", quote("a 'b' $c `d`"))])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a 'b' $c `d`");
    }

    #[test]
    fn a_refused_host_key_is_told_apart() {
        let e = connect_error(
            "h",
            "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n",
        );
        assert!(matches!(e, SshError::HostKey { .. }), "{e}");
        assert!(e.to_string().contains("known_hosts"), "{e}");
        let e = connect_error("h", "ssh: connect to host h port 22: Connection refused");
        assert!(matches!(e, SshError::Connect { .. }), "{e}");
    }
}
