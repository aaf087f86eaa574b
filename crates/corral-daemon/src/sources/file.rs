//! A local file followed like `tail -F`: the run's `file` stream is what someone else
//! writes to a path.
//!
//! **Identity.** The file being read is known by its device and inode plus a fingerprint
//! of its first bytes (an FNV-1a hash of the first [`FP_MAX`] bytes, or of fewer while the
//! file is shorter), not by its path: a rotated file is neither read twice nor skipped,
//! and an inode the filesystem reused for another file is not taken for the old one.
//!
//! **Rotation.** Rename and re-create: once the path names another file, the old one is
//! read to its end through the descriptor still open on it, its incomplete last line
//! becomes a record, a `system` note says `file rotated: …`, and the new file is read from
//! its start. Truncation (and copytruncate): when the file is shorter than the read
//! position, or its first bytes changed, a `system` note says so and reading goes on from
//! its start; bytes written between a copy and the truncation are lost (said in the note;
//! seqs stay dense: no gap is invented). A path that does not exist yet is waited for
//! (one note), then read from its start.
//!
//! **Wake-ups.** inotify on the file's directory (names created, moved, deleted) and on
//! the open file itself (writes, truncation, its own move or deletion), read by one small
//! async task per followed file: an idle file costs a registered descriptor and no thread.
//! Timers: a check every [`NO_DIR_POLL`] while the file's directory does not exist
//! (inotify cannot watch what is not there), and, as a safety net, a look every
//! [`SAFETY_LOOK`] when no event came (a stat and a fingerprint; it catches a wake-up
//! lost in a fast rotation under load, seen once in a million-line test, and writes
//! inotify does not see, such as another machine writing over NFS).
//!
//! **Position.** The run keeps the ingest stage's checkpoint (`run_<id>.pos`, see
//! [`crate::logbook::checkpoint`]; its first stream counts the file bytes in records) and,
//! beside it, `run_<id>.file` ([`Place`]): the identity of the file being read and where
//! its bytes begin in that count. Both are written before the note that announces a new
//! file, so a daemon that dies resumes at exactly the byte after the last record (see
//! [`resume_point`]). A stop ends the reading at the next chunk: what is not read yet,
//! and an incomplete last line, are left in the file, and the task's next run reads them
//! (whole) from there.

use super::{Capture, Source};
use crate::logbook::{Channel, Ingest};
use corral_core::record::Stream;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// Largest read from the file.
const READ_SIZE: usize = 1 << 20;
/// Bytes of a file's start that make its fingerprint.
pub const FP_MAX: usize = 256;
/// How often a path whose directory does not exist is looked for.
const NO_DIR_POLL: Duration = Duration::from_secs(1);
/// How long a followed file goes without a look when no event comes.
const SAFETY_LOOK: Duration = Duration::from_secs(2);

thread_local! {
    /// The read buffer of the runtime worker that serves a followed file now.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which file: device, inode, and the fingerprint of its first `fp_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub fp_len: u64,
    pub fp: u64,
}

/// What a read says when the file's first bytes changed under it.
#[derive(Debug)]
struct Rewritten;

impl std::fmt::Display for Rewritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the file was rewritten while it was read")
    }
}

impl std::error::Error for Rewritten {}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fingerprint of a file's first `len` bytes; `None` when it has fewer.
fn fingerprint(file: &File, len: u64) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64)? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    Ok(Some(fnv1a(&buf)))
}

impl Identity {
    /// The identity of an open file as it is now.
    pub fn of(file: &File) -> std::io::Result<Identity> {
        let m = file.metadata()?;
        let fp_len = m.len().min(FP_MAX as u64);
        let fp = fingerprint(file, fp_len)?.unwrap_or(0);
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
            fp_len,
            fp,
        })
    }

    /// Whether `file` is this file: same device and inode, same first bytes.
    fn matches(&self, file: &File) -> bool {
        let Ok(m) = file.metadata() else { return false };
        m.dev() == self.dev
            && m.ino() == self.ino
            && fingerprint(file, self.fp_len).ok().flatten() == Some(self.fp)
    }
}

/// `run_<id>.file`: the file a run reads and where its bytes begin in the count of file
/// bytes in records (the checkpoint's first stream): byte `start` of the file is count
/// `base`. Written whole (a new file renamed over the old) when the run opens a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Place {
    pub path: PathBuf,
    /// The host of a remote file (`sources::remote`); none for a local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub ident: Identity,
    pub base: u64,
    pub start: u64,
}

impl Place {
    /// The place file of a run log.
    pub fn path_of(log_path: &Path) -> PathBuf {
        log_path.with_extension("file")
    }

    pub(crate) fn write(&self, log_path: &Path) -> std::io::Result<()> {
        let to = Place::path_of(log_path);
        let tmp = to.with_extension("file.tmp");
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &to)
    }

    fn read(log_path: &Path) -> Option<Place> {
        serde_json::from_slice(&std::fs::read(Place::path_of(log_path)).ok()?).ok()
    }
}

/// Where a run left off: the file it read and the byte after its last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The path that run followed.
    pub path: PathBuf,
    /// The host, for a remote file.
    pub host: Option<String>,
    pub ident: Identity,
    pub offset: u64,
}

/// Where the run `run_id` (its files in `dir`) left off in the file it followed, from its
/// checkpoint and place files; `None` when it kept none.
pub fn resume_point(dir: &Path, run_id: &str) -> Option<Resume> {
    let (log_path, _, _) = crate::logbook::run_paths(dir, run_id);
    let at = crate::logbook::Checkpoint::read(&log_path).ok()?;
    let place = Place::read(&log_path)?;
    Some(Resume {
        path: place.path,
        host: place.host,
        ident: place.ident,
        offset: at.streams[0].saturating_sub(place.base) + place.start,
    })
}

/// A followed file, not started yet.
pub struct FileSource {
    /// The absolute path followed.
    pub path: PathBuf,
    /// Where to go on from (a run taken back, or the task's previous run); `None` reads
    /// the file at the path from its start.
    pub resume: Option<Resume>,
    /// Why the file can no longer be followed (it cannot be read): the run's end.
    pub failed: oneshot::Sender<String>,
}

impl Source for FileSource {
    fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture> {
        ingest.keep_checkpoints()?;
        // SAFETY: a plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot watch files ({e}); raise fs.inotify.max_user_instances"),
            ));
        }
        // SAFETY: `fd` is a new descriptor of ours; the `OwnedFd` keeps it open, and the
        // same, for as long as the `AsyncFd` lives.
        let notify = unsafe {
            AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), tokio::io::Interest::READABLE)
        }
        .map_err(|e| std::io::Error::other(format!("cannot watch files: {e}")))?;
        let (done, drained) = oneshot::channel();
        let (stop_tx, stop) = oneshot::channel();
        let FileSource {
            path,
            resume,
            failed,
        } = *self;
        let follower = Follower {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            log_path: ingest.log().log_path.clone(),
            ch: Some(ingest.channel(Stream::File)),
            ingest,
            path,
            cur: None,
            notify,
            dir_wd: None,
            file_wd: None,
            waiting_noted: false,
            read_files: Vec::new(),
            rewritten: false,
            stopping: Default::default(),
        };
        let stopping = follower.stopping.clone();
        tokio::spawn(follower.run(resume, stop, failed, done));
        Ok(Capture::new(drained, move || {
            stopping.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = stop_tx.send(());
        }))
    }
}

/// The file being read.
struct Open {
    file: File,
    ident: Identity,
    /// The next byte to read.
    offset: u64,
}

struct Follower {
    path: PathBuf,
    dir: PathBuf,
    log_path: PathBuf,
    ingest: Ingest,
    ch: Option<Channel>,
    cur: Option<Open>,
    notify: AsyncFd<OwnedFd>,
    dir_wd: Option<i32>,
    file_wd: Option<i32>,
    waiting_noted: bool,
    /// Files this run read to their end (device, inode), newest last: never read again.
    read_files: Vec<(u64, u64)>,
    /// A read found the file rewritten in place: the next look follows the truncation
    /// at once (the write that did it may have woken us already).
    rewritten: bool,
    /// The run is being stopped: a long read ends at the next chunk (the next run goes
    /// on from there), and no new file is switched to.
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn cstr(p: &Path) -> Option<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).ok()
}

impl Follower {
    async fn run(
        mut self,
        resume: Option<Resume>,
        mut stop: oneshot::Receiver<()>,
        failed: oneshot::Sender<String>,
        done: oneshot::Sender<()>,
    ) {
        let mut fatal = match resume {
            Some(r) => self.resume(r).err(),
            None => None,
        };
        let mut look = true;
        let mut events = Vec::new();
        while fatal.is_none() {
            if look {
                if let Err(e) = self.check().await {
                    fatal = Some(e);
                    break;
                }
                look = false;
            }
            tokio::select! {
                biased;
                // Stopped: what is not read yet is left for the next run of the task.
                _ = &mut stop => break,
                r = self.notify.readable() => match r {
                    Ok(mut guard) => {
                        let mut buf = [0u8; 4096];
                        loop {
                            match guard.try_io(|fd| {
                                // SAFETY: reading into our own buffer.
                                let n = unsafe {
                                    libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                                };
                                if n < 0 {
                                    Err(std::io::Error::last_os_error())
                                } else {
                                    Ok(n as usize)
                                }
                            }) {
                                Ok(Ok(n)) if n > 0 => events.extend_from_slice(&buf[..n]),
                                _ => break,
                            }
                        }
                    }
                    Err(e) => fatal = Some(format!("watching {} failed: {e}", self.path.display())),
                },
                _ = tokio::time::sleep(NO_DIR_POLL), if self.dir_wd.is_none() => look = true,
                _ = tokio::time::sleep(SAFETY_LOOK) => look = true,
            }
            if !events.is_empty() {
                look = self.relevant(&events);
                events = Vec::new();
            }
        }
        if let Some(why) = fatal {
            self.ingest.system(&why);
            let _ = failed.send(why);
        }
        if let Some(ch) = self.ch.take() {
            let left = ch.pending();
            // Its incomplete last line stays in the file: the next run reads it whole.
            ch.abandon();
            if left > 0 {
                self.ingest.system(&format!(
                    "an incomplete last line ({left} bytes) is left for the next run of this task"
                ));
            }
        }
        let _ = done.send(());
    }

    /// Whether inotify events call for a look: anything of the open file's own watch,
    /// and of the directory's only what names the followed path (other files in a busy
    /// directory wake nothing). A watch the kernel dropped (its directory or file went
    /// away) is forgotten, so that it is made again.
    fn relevant(&mut self, mut buf: &[u8]) -> bool {
        const HEADER: usize = 16;
        let name = self
            .path
            .file_name()
            .map(|n| n.as_bytes())
            .unwrap_or_default();
        let mut look = false;
        while buf.len() >= HEADER {
            let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
            let Some(ev_name) = buf.get(HEADER..HEADER + len) else {
                return true;
            };
            let ev_name = ev_name.split(|&b| b == 0).next().unwrap_or_default();
            if mask & libc::IN_Q_OVERFLOW != 0 {
                look = true;
            }
            if mask & libc::IN_IGNORED != 0 {
                if self.dir_wd == Some(wd) {
                    self.dir_wd = None;
                }
                if self.file_wd == Some(wd) {
                    self.file_wd = None;
                }
                look = true;
            } else if Some(wd) == self.file_wd || ev_name == name || ev_name.is_empty() {
                look = true;
            }
            buf = &buf[HEADER + len..];
        }
        look
    }

    /// Goes on from where a run left off: the same file at the path, else the old file
    /// found renamed in the directory (read to its end first), else the new file from
    /// its start.
    fn resume(&mut self, r: Resume) -> Result<(), String> {
        if let Ok(file) = File::open(&self.path) {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if r.ident.matches(&file) && size >= r.offset {
                self.ingest.system(&format!(
                    "following {} from byte {}, where the last reading stopped",
                    self.path.display(),
                    r.offset
                ));
                self.set_current(file, r.ident, r.offset);
                return Ok(());
            }
            let m = file.metadata().ok();
            if m.is_some_and(|m| m.dev() == r.ident.dev && m.ino() == r.ident.ino) {
                self.ingest.system(&format!(
                    "file truncated: {} while no daemon read it (it is {size} bytes, the last reading stopped at byte {}); \
                     reading it from its start",
                    self.path.display(),
                    r.offset
                ));
                let ident = Identity::of(&file).map_err(|e| self.unreadable(&e))?;
                self.set_current(file, ident, 0);
                return Ok(());
            }
        }
        let found = std::fs::read_dir(&self.dir).ok().and_then(|entries| {
            entries.flatten().find_map(|e| {
                let m = e.metadata().ok()?;
                if m.dev() != r.ident.dev || m.ino() != r.ident.ino || m.len() < r.offset {
                    return None;
                }
                let file = File::open(e.path()).ok()?;
                r.ident.matches(&file).then(|| (e.path(), file))
            })
        });
        match found {
            Some((old, file)) => {
                self.ingest.system(&format!(
                    "{} was rotated while no daemon read it: reading the rest of the old file (now {}) from byte {} first",
                    self.path.display(),
                    old.display(),
                    r.offset
                ));
                self.set_current(file, r.ident, r.offset);
            }
            None => {
                self.ingest.system(&format!(
                    "{} is not the file the last reading stopped in (at byte {}), and that file is gone: \
                     what it got after that is lost; reading the file at the path from its start",
                    self.path.display(),
                    r.offset
                ));
            }
        }
        Ok(())
    }

    /// Makes `file` the one being read, from `offset`, and records where it begins.
    fn set_current(&mut self, file: File, ident: Identity, offset: u64) {
        self.watch_file(&file);
        let base = match self.ingest.checkpoint() {
            Ok(at) => at.streams[0],
            Err(e) => {
                tracing::error!(path = %self.path.display(), "writing the run's checkpoint: {e}");
                0
            }
        };
        self.cur = Some(Open {
            file,
            ident,
            offset,
        });
        self.write_place(base, offset);
    }

    fn write_place(&self, base: u64, start: u64) {
        let Some(cur) = &self.cur else { return };
        let place = Place {
            path: self.path.clone(),
            host: None,
            ident: cur.ident,
            base,
            start,
        };
        if let Err(e) = place.write(&self.log_path) {
            tracing::error!(path = %self.path.display(), "keeping the read position: {e}");
        }
    }

    fn add_watch(&self, path: &Path, mask: u32) -> Option<i32> {
        let c = cstr(path)?;
        // SAFETY: a valid C string and our inotify descriptor.
        let wd =
            unsafe { libc::inotify_add_watch(self.notify.get_ref().as_raw_fd(), c.as_ptr(), mask) };
        (wd >= 0).then_some(wd)
    }

    fn rm_watch(&self, wd: i32) {
        // SAFETY: removing a watch of ours; a stale one is refused harmlessly.
        unsafe { libc::inotify_rm_watch(self.notify.get_ref().as_raw_fd(), wd) };
    }

    /// Watches the open file itself (by its descriptor, so it is this inode whatever its
    /// name is now).
    fn watch_file(&mut self, file: &File) {
        if let Some(wd) = self.file_wd.take() {
            self.rm_watch(wd);
        }
        let proc = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        self.file_wd = self.add_watch(
            &proc,
            libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF,
        );
    }

    fn watch_dir(&mut self) {
        if self.dir_wd.is_none() {
            self.dir_wd = self.add_watch(
                &self.dir,
                libc::IN_CREATE
                    | libc::IN_MOVED_TO
                    | libc::IN_MOVED_FROM
                    | libc::IN_DELETE
                    | libc::IN_ATTRIB
                    | libc::IN_MODIFY
                    | libc::IN_DELETE_SELF
                    | libc::IN_MOVE_SELF,
            );
        }
    }

    /// Reads what is new, and follows truncation and rotation. An error is the end of the
    /// run: the file can no longer be read.
    async fn check(&mut self) -> Result<(), String> {
        self.watch_dir();
        loop {
            if self.cur.is_none() && !self.open_path()? {
                return Ok(());
            }
            self.follow_truncation()?;
            self.read_to_end().await?;
            if std::mem::take(&mut self.rewritten) {
                continue;
            }
            if self.stopping() {
                return Ok(());
            }
            let Some(cur) = &self.cur else { return Ok(()) };
            match std::fs::metadata(&self.path) {
                Ok(m) if m.dev() == cur.ident.dev && m.ino() == cur.ident.ino => return Ok(()),
                Ok(at_path) => {
                    // A new file at the path: the writer is done with the old one, which
                    // is read to its end once more before the switch.
                    self.read_to_end().await?;
                    if self.stopping() {
                        return Ok(());
                    }
                    let finished = self.cur.as_ref().map(|c| {
                        let mtime = c.file.metadata().and_then(|m| m.modified()).ok();
                        ((c.ident.dev, c.ident.ino), mtime)
                    });
                    self.rotated();
                    let Some((done, mtime)) = finished else {
                        continue;
                    };
                    self.read_files.push(done);
                    if self.read_files.len() > 64 {
                        self.read_files.remove(0);
                    }
                    // A reader that fell more than one rotation behind: the files rotated
                    // out after the one just finished come before the one at the path.
                    if let Some((name, file)) =
                        self.next_rotated((at_path.dev(), at_path.ino()), mtime)
                    {
                        let ident = Identity::of(&file).map_err(|e| self.unreadable(&e))?;
                        self.ingest.system(&format!(
                            "reading {} first: it was rotated out after the file just read and before the one now at {}",
                            name.display(),
                            self.path.display()
                        ));
                        self.set_current(file, ident, 0);
                    }
                }
                // Renamed away (or deleted) and not re-created yet: the old one may still
                // be written; it is read until a new file appears.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Opens the file at the path, from its start; false while there is none.
    fn open_path(&mut self) -> Result<bool, String> {
        match File::open(&self.path) {
            Ok(file) => {
                let ident = Identity::of(&file).map_err(|e| self.unreadable(&e))?;
                if self.waiting_noted {
                    self.ingest.system(&format!(
                        "{} appeared: reading it from its start",
                        self.path.display()
                    ));
                    self.waiting_noted = false;
                }
                self.set_current(file, ident, 0);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.waiting_noted {
                    self.waiting_noted = true;
                    self.ingest.system(&format!(
                        "waiting for {} to exist; it is read from its start once it does",
                        self.path.display()
                    ));
                }
                Ok(false)
            }
            Err(e) => Err(self.unreadable(&e)),
        }
    }

    fn unreadable(&self, e: &std::io::Error) -> String {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "; give the daemon's user read permission on it"
        } else {
            ""
        };
        format!("cannot read {}: {e}{hint}", self.path.display())
    }

    /// A file shorter than the read position, or whose first bytes changed, was truncated
    /// (and maybe written again): reading goes on from its start.
    fn follow_truncation(&mut self) -> Result<(), String> {
        let Some(cur) = &self.cur else { return Ok(()) };
        let size = cur.file.metadata().map_err(|e| self.unreadable(&e))?.len();
        let shrank = size < cur.offset;
        let changed = !shrank
            && fingerprint(&cur.file, cur.ident.fp_len).map_err(|e| self.unreadable(&e))?
                != Some(cur.ident.fp);
        if !shrank && !changed {
            self.grow_fingerprint();
            return Ok(());
        }
        let from = cur.offset;
        self.end_channel();
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        let ident = Identity::of(&cur.file).map_err(|e| self.unreadable(&e))?;
        let how = if shrank {
            format!("it shrank to {size} bytes, below the read position {from}")
        } else {
            format!("its first bytes changed (at {size} bytes; the read position was {from})")
        };
        self.set_current(cur.file, ident, 0);
        self.ingest.system(&format!(
            "file truncated: {} ({how}); reading goes on from its start. Lines written between a copy and the truncation (copytruncate) may be lost",
            self.path.display()
        ));
        Ok(())
    }

    /// A fingerprint taken while the file was short grows with it, up to [`FP_MAX`].
    fn grow_fingerprint(&mut self) {
        let Some(cur) = self.cur.as_mut() else { return };
        if cur.ident.fp_len >= FP_MAX as u64 || cur.offset <= cur.ident.fp_len {
            return;
        }
        let len = cur.offset.min(FP_MAX as u64);
        if let Ok(Some(fp)) = fingerprint(&cur.file, len) {
            cur.ident.fp_len = len;
            cur.ident.fp = fp;
            if let Some(place) = Place::read(&self.log_path) {
                let (base, start) = (place.base, place.start);
                self.write_place(base, start);
            }
        }
    }

    /// The current file is done with: its incomplete last line becomes a record, and a
    /// new channel takes the next file's bytes.
    fn end_channel(&mut self) {
        if let Some(mut ch) = self.ch.take() {
            ch.end(None);
        }
        self.ch = Some(self.ingest.channel(Stream::File));
    }

    /// The oldest file beside the followed one, named after it (`app.log.1`, `app.log-2026…`,
    /// not compressed), that this run has not read, is not the one at the path now, and was
    /// written to since `after` (the modification time of the file just finished).
    fn next_rotated(
        &self,
        at_path: (u64, u64),
        after: Option<std::time::SystemTime>,
    ) -> Option<(PathBuf, File)> {
        let base = self.path.file_name()?.as_bytes().to_vec();
        let after = after?;
        let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
        for e in std::fs::read_dir(&self.dir).ok()?.flatten() {
            let name = e.file_name();
            let name = name.as_bytes();
            if name.len() <= base.len() || !name.starts_with(&base) {
                continue;
            }
            if [".gz", ".zst", ".xz", ".bz2", ".zip", ".lz4"]
                .iter()
                .any(|z| name.ends_with(z.as_bytes()))
            {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let id = (m.dev(), m.ino());
            if !m.is_file() || id == at_path || self.read_files.contains(&id) {
                continue;
            }
            let Ok(mtime) = m.modified() else { continue };
            if mtime < after || best.as_ref().is_some_and(|(t, _)| *t <= mtime) {
                continue;
            }
            best = Some((mtime, e.path()));
        }
        let (_, path) = best?;
        let file = File::open(&path).ok()?;
        Some((path, file))
    }

    fn rotated(&mut self) {
        let Some(old) = self.cur.take() else { return };
        self.end_channel();
        self.ingest.system(&format!(
            "file rotated: {} is a new file; the old one was read to its end ({} bytes); reading the new one from its start",
            self.path.display(),
            old.offset
        ));
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the current file from the read position to its end, in large chunks,
    /// keeping the checkpoint after each; a stop ends it at the next chunk.
    async fn read_to_end(&mut self) -> Result<(), String> {
        loop {
            if self.stopping() {
                return Ok(());
            }
            let (Some(cur), Some(ch)) = (self.cur.as_mut(), self.ch.as_mut()) else {
                return Ok(());
            };
            let need = crate::logbook::ingest::scratch_len(READ_SIZE, self.ingest.max_record());
            let read = SCRATCH.with_borrow_mut(|buf| {
                buf.resize(need, 0);
                let file = &cur.file;
                let offset = cur.offset;
                let ident = cur.ident;
                ch.read_with(buf, |room| {
                    let len = READ_SIZE.min(room.len());
                    let room = &mut room[..len];
                    let n = file.read_at(room, offset)?;
                    // Rewritten in place (truncated and written again) between the look
                    // and this read, the bytes read may be the new content's: checked
                    // after the read, so that they are never taken for the old one's.
                    if n > 0 && fingerprint(file, ident.fp_len)? != Some(ident.fp) {
                        return Err(std::io::Error::other(Rewritten));
                    }
                    Ok(n)
                })
            });
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The next look follows the truncation.
                Err(e) if e.get_ref().is_some_and(|i| i.is::<Rewritten>()) => {
                    self.rewritten = true;
                    return Ok(());
                }
                Err(e) => return Err(self.unreadable(&e)),
            };
            if n == 0 {
                return Ok(());
            }
            cur.offset += n as u64;
            if let Err(e) = self.ingest.checkpoint() {
                tracing::error!(path = %self.path.display(), "writing the run's checkpoint: {e}");
            }
            // A long file is read without holding a runtime worker for all of it.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_inode_and_the_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        let f = File::open(&p).unwrap();
        let id = Identity::of(&f).unwrap();
        assert_eq!(id.fp_len, 6);
        assert!(id.matches(&f));
        // The same inode written with other first bytes is another file.
        std::fs::write(&p, b"HELLO\n").unwrap();
        assert!(!id.matches(&f));
        // Shorter than the fingerprint: not the same file.
        std::fs::write(&p, b"he").unwrap();
        assert!(!id.matches(&f));
    }

    #[test]
    fn a_resume_point_is_the_checkpoint_counted_from_the_file_start() {
        let dir = tempfile::tempdir().unwrap();
        let ingest =
            Ingest::create(dir.path(), "r", &crate::logbook::LogConfig::default()).unwrap();
        ingest.keep_checkpoints().unwrap();
        let mut ch = ingest.channel(Stream::File);
        ch.push(b"abc\n", None);
        let place = Place {
            path: "/x".into(),
            host: None,
            ident: Identity {
                dev: 1,
                ino: 2,
                fp_len: 3,
                fp: 4,
            },
            base: 0,
            start: 10,
        };
        place.write(&ingest.log().log_path).unwrap();
        ch.push(b"de", None);
        ingest.checkpoint().unwrap();
        let r = resume_point(dir.path(), "r").unwrap();
        // The incomplete line is not counted: it is read again.
        assert_eq!(r.offset, 14);
        assert_eq!(r.ident, place.ident);
        ch.abandon();
    }
}
