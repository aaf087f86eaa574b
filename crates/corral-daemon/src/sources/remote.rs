//! A file on another machine, read over SSH by byte position: a remote file followed
//! like `tail -F` (stream `file`), or the log a remote command's runner keeps (stream
//! `stdout`; see [`crate::ssh::remote`]).
//!
//! **Reading.** One session on the host's master connection ([`crate::ssh`]) runs the
//! follow script from the byte after the last one received: its header says which file
//! (inode) and from which byte, then the file's bytes come as they are written. A session
//! that ends (the connection dropped, the file rotated or shrank) is started again from
//! the same byte after a short backoff (100 ms, doubling to 5 s), so what was received is
//! never received twice and nothing is skipped. An unknown host key ends the run: it is
//! never accepted. Other connection failures are retried for as long as the run lasts,
//! with one note when they start and one when the connection is back.
//!
//! **Position.** Like a local file ([`super::file`]): the ingest stage's checkpoint
//! (`run_<id>.pos`, bytes in records) and `run_<id>.file` ([`Place`], with the host and
//! the inode) are kept, so a daemon restart goes on at the byte after the last record
//! ([`super::file::resume_point`]). A stop leaves an incomplete last line to the next
//! run.
//!
//! **A command's end.** For a command's log, the follow script also watches the runner's
//! status file; once it exists and the log's last bytes were sent, the script says
//! `corral-exit <status>`, which this source hands to the run through [`RemoteEnd`].

use super::file::{Identity, Place, Resume};
use super::{Capture, Source};
use crate::logbook::{Channel, Ingest};
use crate::ssh::{Ssh, SshError};
use corral_core::record::Stream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

/// Largest read buffer of a session's output.
const READ_SIZE: usize = 256 * 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Lines of a session's stderr kept for a note.
const STDERR_KEEP: usize = 20;

/// How a remote source ended by itself.
#[derive(Debug)]
pub enum RemoteEnd {
    /// The remote command ended with this status (`$?` of its runner).
    Exit(i32),
    /// It cannot go on: why.
    Failed(String),
}

/// A remote file, not started yet.
pub struct RemoteSource {
    pub ssh: Ssh,
    pub host: String,
    /// The remote path (relative paths are in the remote user's home).
    pub path: String,
    /// `file` for a followed file, `stdout` for a command's log.
    pub stream: Stream,
    /// A command's status file: the source ends when it appears.
    pub status: Option<String>,
    /// Where to go on from.
    pub resume: Option<Resume>,
    /// How it ended by itself.
    pub ended: oneshot::Sender<RemoteEnd>,
    /// Whether a stop may leave the rest to a later daemon (a command, which runs on).
    pub detachable: bool,
    /// The command line that starts a remote command ([`crate::ssh::remote::launch`]),
    /// run once connected, before the reading; starting twice starts nothing more.
    pub launch: Option<String>,
}

impl Source for RemoteSource {
    fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture> {
        ingest.keep_checkpoints()?;
        let (done, drained) = oneshot::channel();
        let (stop_tx, stop) = oneshot::channel();
        let detachable = self.detachable;
        let reader = Reader {
            log_path: ingest.log().log_path.clone(),
            ch: Some(ingest.channel(self.stream)),
            ingest,
            offset: self.resume.as_ref().map_or(0, |r| r.offset),
            inode: self.resume.as_ref().map(|r| r.ident.ino),
            placed: false,
            src: *self,
        };
        tokio::spawn(reader.run(stop, done));
        let stop_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(stop_tx)));
        let stop = move || {
            if let Some(tx) = stop_tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(());
            }
        };
        Ok(if detachable {
            Capture::detachable(drained, stop.clone(), stop)
        } else {
            Capture::new(drained, stop)
        })
    }
}

struct Reader {
    src: RemoteSource,
    ingest: Ingest,
    log_path: PathBuf,
    ch: Option<Channel>,
    /// The next byte to ask for.
    offset: u64,
    /// The inode of the file being read, once a header named it.
    inode: Option<u64>,
    /// Whether the place file names the file being read.
    placed: bool,
}

/// How one session ended.
enum Session {
    /// Stopped by the run.
    Stopped,
    /// The remote command ended.
    Exit(i32),
    /// Read again from `offset` (the connection dropped, another file is at the path).
    Again { why: String, dropped: bool },
}

impl Reader {
    fn what(&self) -> String {
        format!("{}:{}", self.src.host, self.src.path)
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>, done: oneshot::Sender<()>) {
        let mut backoff = BACKOFF_FIRST;
        let mut down: Option<String> = None;
        let mut end = None;
        loop {
            let connected = tokio::select! {
                biased;
                _ = &mut stop => break,
                r = self.src.ssh.connect(&self.src.host) => r,
            };
            match connected {
                Ok(()) => {}
                Err(e @ (SshError::HostKey { .. } | SshError::BadHost(_) | SshError::Spawn(_))) => {
                    end = Some(RemoteEnd::Failed(e.to_string()));
                    break;
                }
                Err(e) => {
                    if down.is_none() {
                        self.ingest.system(&format!(
                            "{e}; trying again (every {}s at most) from byte {}",
                            BACKOFF_MAX.as_secs(),
                            self.offset
                        ));
                        down = Some(e.to_string());
                    }
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            if let Some(launch) = self.src.launch.clone() {
                let launched = tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    r = self.launch(&launch) => r,
                };
                match launched {
                    Ok(()) => self.src.launch = None,
                    Err(Some(why)) => {
                        end = Some(RemoteEnd::Failed(why));
                        break;
                    }
                    Err(None) => {
                        tokio::select! {
                            biased;
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            match self.session(&mut stop, &mut down).await {
                Ok(Session::Stopped) => break,
                Ok(Session::Exit(status)) => {
                    end = Some(RemoteEnd::Exit(status));
                    break;
                }
                Ok(Session::Again { why, dropped }) => {
                    if dropped {
                        if down.is_none() {
                            self.ingest.system(&format!(
                                "{why}; reading {} again from byte {} once it is back",
                                self.what(),
                                self.offset
                            ));
                            down = Some(why);
                        }
                        tokio::select! {
                            biased;
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    } else {
                        self.ingest.system(&why);
                        backoff = BACKOFF_FIRST;
                    }
                }
                Err(e) => {
                    end = Some(RemoteEnd::Failed(e));
                    break;
                }
            }
        }
        match end {
            Some(RemoteEnd::Exit(status)) => {
                if let Some(mut ch) = self.ch.take() {
                    ch.end(None);
                }
                let _ = self.ingest.checkpoint();
                let _ = self.src.ended.send(RemoteEnd::Exit(status));
            }
            Some(RemoteEnd::Failed(why)) => {
                self.ingest.system(&why);
                self.abandon();
                let _ = self.src.ended.send(RemoteEnd::Failed(why));
            }
            None => self.abandon(),
        }
        let _ = done.send(());
    }

    /// Starts the remote command. `Err(None)`: the connection failed, try again;
    /// `Err(Some(why))`: it cannot start.
    async fn launch(&mut self, launch: &str) -> Result<(), Option<String>> {
        let out = match self
            .src
            .ssh
            .output(&self.src.host, launch, Duration::from_secs(60))
            .await
        {
            Ok(out) => out,
            Err(e @ (SshError::HostKey { .. } | SshError::BadHost(_) | SshError::Spawn(_))) => {
                return Err(Some(e.to_string()))
            }
            Err(e) => {
                tracing::info!(host = %self.src.host, "starting the remote command: {e}");
                return Err(None);
            }
        };
        let said = String::from_utf8_lossy(&out.stdout);
        match said.lines().find_map(|l| l.strip_prefix("corral-started ")) {
            Some(pgid) => {
                tracing::debug!(host = %self.src.host, pgid = %pgid.trim(), "remote command started");
                Ok(())
            }
            None => Err(Some(format!(
                "cannot start the command on {}: {}",
                self.src.host,
                corral_core::term::sanitize(String::from_utf8_lossy(&out.stderr).trim())
            ))),
        }
    }

    /// Leaves an incomplete last line to the next reading, from the checkpoint.
    fn abandon(&mut self) {
        if let Some(ch) = self.ch.take() {
            let left = ch.pending();
            ch.abandon();
            if left > 0 {
                self.ingest.system(&format!(
                    "an incomplete last line ({left} bytes) is left for the next reading"
                ));
            }
        }
    }

    /// One session of the follow script, until it ends or the run stops.
    async fn session(
        &mut self,
        stop: &mut oneshot::Receiver<()>,
        down: &mut Option<String>,
    ) -> Result<Session, String> {
        let script = crate::ssh::remote::follow(
            &self.src.path,
            self.offset,
            self.inode,
            self.src.status.as_deref(),
        );
        let mut cmd = self.src.ssh.session(&self.src.host, &script);
        // The session's stdin stays open and silent: its end tells the remote script
        // that the connection closed.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
        let _stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let said = tokio::spawn(async move {
            let mut kept: Vec<String> = Vec::new();
            let Some(e) = stderr else { return kept };
            let mut lines = tokio::io::BufReader::new(e).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if kept.len() == STDERR_KEEP {
                    kept.remove(0);
                }
                kept.push(l);
            }
            kept
        });
        let Some(stdout) = child.stdout.take() else {
            return Err("ssh's stdout pipe is missing".into());
        };
        let mut out = tokio::io::BufReader::with_capacity(READ_SIZE, stdout);
        let mut started = false;
        let mut line = Vec::new();
        loop {
            if !started {
                line.clear();
                let n = tokio::select! {
                    biased;
                    _ = &mut *stop => return Ok(Session::Stopped),
                    r = out.read_until(b'\n', &mut line) => r.unwrap_or(0),
                };
                if n == 0 {
                    break;
                }
                // Anything a login script printed before the header is not the file's.
                if let Some(h) = line.strip_prefix(b"corral-follow ") {
                    self.header(h);
                    started = true;
                    if down.take().is_some() {
                        self.ingest.system(&format!(
                            "connected to {} again: reading {} from byte {}",
                            self.src.host, self.src.path, self.offset
                        ));
                    }
                }
                continue;
            }
            let n = tokio::select! {
                biased;
                _ = &mut *stop => return Ok(Session::Stopped),
                r = async {
                    let buf = out.fill_buf().await?;
                    if let Some(ch) = self.ch.as_mut() {
                        ch.push(buf, None);
                    }
                    Ok::<usize, std::io::Error>(buf.len())
                } => r.unwrap_or(0),
            };
            if n == 0 {
                break;
            }
            out.consume(n);
            self.offset += n as u64;
            if let Err(e) = self.ingest.checkpoint() {
                tracing::error!(what = %self.what(), "writing the run's checkpoint: {e}");
            }
        }
        drop(out);
        let status = child.wait().await.ok().and_then(|s| s.code());
        let said = said.await.unwrap_or_default();
        let mut other = Vec::new();
        for l in &said {
            if let Some(s) = l.strip_prefix("corral-exit ") {
                return Ok(Session::Exit(s.trim().parse().unwrap_or(-1)));
            }
            if l == "corral-rotated" {
                return Ok(self.restart(format!(
                    "file rotated: {} is another file now; the old one was read to byte {} \
                     (what it got after the last look is not read); reading the new one from its start",
                    self.what(),
                    self.offset
                )));
            }
            if let Some(s) = l.strip_prefix("corral-truncated ") {
                return Ok(self.restart(format!(
                    "file truncated: {} (it shrank to {} bytes, below the read position {}); reading goes on from its start",
                    self.what(),
                    s.trim(),
                    self.offset
                )));
            }
            if l == "corral-waiting" {
                self.ingest.system(&format!(
                    "waiting for {} to exist; it is read from its start once it does",
                    self.what()
                ));
                continue;
            }
            other.push(corral_core::term::sanitize(l).into_owned());
        }
        let why = match status {
            Some(255) | None => {
                let said = other.join(" ");
                if let SshError::HostKey { .. } = crate::ssh::connect_error(&self.src.host, &said) {
                    return Err(crate::ssh::connect_error(&self.src.host, &said).to_string());
                }
                format!(
                    "the connection to {} dropped{}",
                    self.src.host,
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(" ({said})")
                    }
                )
            }
            Some(code) => format!(
                "reading {} ended (status {code}){}",
                self.what(),
                if other.is_empty() {
                    String::new()
                } else {
                    format!(": {}", other.join(" "))
                }
            ),
        };
        Ok(Session::Again { why, dropped: true })
    }

    /// Another file is at the path: what the current one left incomplete becomes a
    /// record, and the next session reads the new file from its start.
    fn restart(&mut self, note: String) -> Session {
        if let Some(mut ch) = self.ch.take() {
            ch.end(None);
        }
        self.ch = Some(self.ingest.channel(self.src.stream));
        self.offset = 0;
        self.inode = None;
        self.placed = false;
        Session::Again {
            why: note,
            dropped: false,
        }
    }

    /// `<inode> <start>`: the file a session reads, and from which byte.
    fn header(&mut self, h: &[u8]) {
        let text = String::from_utf8_lossy(h);
        let mut words = text.split_whitespace();
        let ino: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let start: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let same = self.inode == Some(ino) && start == self.offset;
        if same && self.placed {
            return;
        }
        if !same && (self.inode.is_some() || self.offset > 0) {
            self.ingest.system(&format!(
                "{} is not the file the last reading stopped in (at byte {}): reading the file now at the path from its start",
                self.what(),
                self.offset
            ));
            if let Some(mut ch) = self.ch.take() {
                ch.end(None);
            }
            self.ch = Some(self.ingest.channel(self.src.stream));
        }
        self.inode = Some(ino);
        self.offset = start;
        let base = match self.ingest.checkpoint() {
            Ok(at) => at.streams[0],
            Err(e) => {
                tracing::error!(what = %self.what(), "writing the run's checkpoint: {e}");
                0
            }
        };
        let place = Place {
            path: PathBuf::from(&self.src.path),
            host: Some(self.src.host.clone()),
            ident: Identity {
                dev: 0,
                ino,
                fp_len: 0,
                fp: 0,
            },
            base,
            start,
        };
        if let Err(e) = place.write(&self.log_path) {
            tracing::error!(what = %self.what(), "keeping the read position: {e}");
        }
        self.placed = true;
    }
}
