//! Where diagnostics are written: a background thread per destination, fed through a
//! bounded queue, so that logging never blocks the daemon and never fails it.
//!
//! - A formatted line is handed over with `try_send`: when the queue is full (a terminal
//!   that stopped reading, a stalled disk) the line is dropped and counted, and the count
//!   is reported as a line of its own once the writer catches up.
//! - stderr that fails to take a line (its reader went away: `EPIPE`; a closed terminal:
//!   `EIO`) is given up for good; the other destinations go on.
//! - `daemon.log` is bounded: a line that would take it past `max_bytes` first moves it to
//!   `daemon.log.1` (replacing the older one), so the diagnostics use at most twice
//!   `max_bytes` of disk. A file that cannot be opened or written loses that line only; the
//!   file is tried again a second later.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;

/// A destination the writer thread owns.
pub trait Sink: Send + 'static {
    /// Writes one whole line (ending in `\n`); never fails, never panics.
    fn write_line(&mut self, line: &[u8]);
    /// Starts writing to `path` (for destinations that are files).
    fn open(&mut self, _path: PathBuf) {}
    fn flush(&mut self) {}
}

/// The process's stderr, until a write to it fails.
#[derive(Default)]
pub struct Stderr {
    broken: bool,
}

impl Sink for Stderr {
    fn write_line(&mut self, line: &[u8]) {
        if self.broken {
            return;
        }
        // Unbuffered: a line is written with one call or not at all.
        if std::io::stderr().lock().write_all(line).is_err() {
            self.broken = true;
        }
    }
}

/// A log file rotated by size.
pub struct RotatingFile {
    path: Option<PathBuf>,
    max_bytes: u64,
    file: Option<File>,
    /// Bytes in the current file (what was there when it was opened, plus what we wrote).
    len: u64,
    /// After a failed open, when to try again.
    retry_at: Option<Instant>,
}

impl RotatingFile {
    pub fn new(path: Option<PathBuf>, max_bytes: u64) -> RotatingFile {
        RotatingFile {
            path,
            max_bytes: max_bytes.max(1),
            file: None,
            len: 0,
            retry_at: None,
        }
    }

    /// `daemon.log` → `daemon.log.1`.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    fn open_file(path: &Path, truncate: bool) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut o = std::fs::OpenOptions::new();
        o.create(true).mode(0o600);
        if truncate {
            o.write(true).truncate(true);
        } else {
            o.append(true);
        }
        o.open(path)
    }

    /// The open file, opening it when needed (at most one try a second after a failure).
    fn file(&mut self) -> Option<&mut File> {
        if self.file.is_none() {
            let path = self.path.as_ref()?;
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            match Self::open_file(path, false) {
                Ok(f) => {
                    self.len = f.metadata().map_or(0, |m| m.len());
                    self.file = Some(f);
                    self.retry_at = None;
                }
                Err(_) => {
                    self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                    return None;
                }
            }
        }
        self.file.as_mut()
    }

    fn rotate(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.file = None;
        // Should the old file not move (permissions), start it again from empty rather
        // than let it grow past the bound.
        let moved = std::fs::rename(&path, Self::rotated_path(&path)).is_ok();
        match Self::open_file(&path, !moved) {
            Ok(f) => {
                self.file = Some(f);
                self.len = 0;
            }
            Err(_) => self.retry_at = Some(Instant::now() + Duration::from_secs(1)),
        }
    }
}

impl Sink for RotatingFile {
    fn write_line(&mut self, line: &[u8]) {
        let n = line.len() as u64;
        let max = self.max_bytes;
        let Some(_) = self.file() else {
            return;
        };
        if self.len > 0 && self.len + n > max {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(line) {
                Ok(()) => self.len += n,
                // A full disk or a file removed under us: reopen at the next line.
                Err(_) => self.file = None,
            }
        }
    }

    fn open(&mut self, path: PathBuf) {
        self.path = Some(path);
        self.file = None;
        self.retry_at = None;
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
        }
    }
}

enum Msg {
    Line(Vec<u8>),
    Open(PathBuf),
    Flush(SyncSender<()>),
}

/// The sending side of a writer thread; a [`MakeWriter`] for `tracing-subscriber`.
#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl NonBlocking {
    /// Starts the thread `name` that writes to `sink`, with room for `capacity` lines.
    pub fn spawn(name: &str, sink: impl Sink, capacity: usize) -> std::io::Result<NonBlocking> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || write_loop(rx, sink, counter))?;
        Ok(NonBlocking { tx, dropped })
    }

    fn send(&self, msg: Msg) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(msg) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes the sink write to `path` from now on (a file sink; others ignore it).
    pub fn open(&self, path: PathBuf) {
        // Rare and small: wait for room rather than lose it, but never for long.
        let _ = self.send_within(Msg::Open(path), Duration::from_secs(1));
    }

    /// Waits until every line queued before this call is written, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack, done) = sync_channel(1);
        if !self.send_within(Msg::Flush(ack), timeout) {
            return false;
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    fn send_within(&self, mut msg: Msg, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

fn write_loop(rx: Receiver<Msg>, mut sink: impl Sink, dropped: Arc<AtomicU64>) {
    for msg in rx {
        match msg {
            Msg::Line(line) => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    // Through tracing, so that the note has the format of the other lines
                    // (and reaches the other destinations too). Never waits: it is queued
                    // like any line, and dropped and counted again if there is no room.
                    tracing::warn!(
                        dropped = lost,
                        "{lost} diagnostic line(s) were dropped here: this destination fell behind"
                    );
                }
                sink.write_line(&line);
            }
            Msg::Open(path) => sink.open(path),
            Msg::Flush(ack) => {
                sink.flush();
                let _ = ack.send(());
            }
        }
    }
}

/// One formatted event, handed to the writer thread whole when dropped.
pub struct LineWriter<'a> {
    to: &'a NonBlocking,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.to.send(Msg::Line(std::mem::take(&mut self.buf)));
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            to: self,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn the_file_rotates_at_its_bound_keeping_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/daemon.log");
        let mut f = RotatingFile::new(Some(path.clone()), 20);
        f.write_line(b"first line 1\n"); // 13 bytes
        f.write_line(b"second 2\n"); // 22 > 20: rotates first
        assert_eq!(read(&path), "second 2\n");
        assert_eq!(read(&RotatingFile::rotated_path(&path)), "first line 1\n");
        f.write_line(b"third 3\n"); // 9 + 8 = 17
        f.write_line(b"fourth 4\n"); // 26: rotates, the oldest file goes
        assert_eq!(read(&path), "fourth 4\n");
        assert_eq!(
            read(&RotatingFile::rotated_path(&path)),
            "second 2\nthird 3\n"
        );
        // A line longer than the bound is still written, alone in its file.
        f.write_line(&[b'x'; 30]);
        assert_eq!(read(&path).len(), 30);
    }

    #[test]
    fn a_reopened_file_counts_what_it_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.log");
        std::fs::write(&path, "0123456789012345\n").unwrap(); // 17 bytes
        let mut f = RotatingFile::new(Some(path.clone()), 20);
        f.write_line(b"next\n");
        assert_eq!(read(&path), "next\n");
        assert_eq!(
            read(&RotatingFile::rotated_path(&path)),
            "0123456789012345\n"
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_loses_lines_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "").unwrap();
        let mut f = RotatingFile::new(Some(blocker.join("daemon.log")), 100);
        f.write_line(b"lost\n");
        f.flush();
        let mut none = RotatingFile::new(None, 100);
        none.write_line(b"nowhere\n");
        // Given a path later, it writes there.
        let path = dir.path().join("later.log");
        none.open(path.clone());
        none.write_line(b"kept\n");
        assert_eq!(read(&path), "kept\n");
    }

    /// A sink that blocks until told to go on, to fill the queue.
    struct Gate {
        go: Receiver<()>,
        out: std::sync::mpsc::Sender<Vec<u8>>,
    }

    impl Sink for Gate {
        fn write_line(&mut self, line: &[u8]) {
            let _ = self.go.recv();
            let _ = self.out.send(line.to_vec());
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (go_tx, go) = std::sync::mpsc::channel();
        let (out, got) = std::sync::mpsc::channel();
        let w = NonBlocking::spawn("test-writer", Gate { go, out }, 2).unwrap();
        let started = Instant::now();
        for i in 0..50 {
            let mut lw = w.make_writer();
            writeln!(lw, "line {i}").unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never blocks");
        // The writer holds at most one line and the queue two: the rest were counted.
        assert!(w.dropped.load(Ordering::Relaxed) >= 47);
        for _ in 0..3 {
            go_tx.send(()).unwrap();
        }
        let first = got.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, b"line 0\n");
        drop(go_tx); // the gate opens for good
        assert!(w.flush(Duration::from_secs(10)));
    }
}
