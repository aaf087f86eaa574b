//! The logbook: one per run. It owns the run's log files, its seq numbers, the in-memory
//! ring of recent records, and the followers' view of all three.
//!
//! Data flow: a source (see `crate::sources`) hands bytes to a channel of the run's
//! [`Ingest`] stage ([`ingest`]), which frames them into records and hands them to
//! [`LogWriter::append`], which writes the bytes to the `.log`, the entries to the `.idx`
//! (see [`index`]), pushes one shared [`Batch`] into the ring and bumps a watch channel.
//! Followers ([`follow::Follower`]) hold only a cursor: they serve themselves from the
//! ring, or from the files (through a small shared block cache) when they fell behind it.
//!
//! Invariants:
//! - seq numbers are dense from 1 per run; a record is on disk before it is announced;
//! - the writer never waits for a follower: it takes the ring lock only to push an `Arc`,
//!   and never holds it during I/O;
//! - memory is bounded: the ring by `ring_records`, the block cache by bytes, and each
//!   follower holds at most one batch;
//! - a range dropped by the size cap is reported to followers as an explicit gap.

pub mod checkpoint;
pub mod files;
pub mod follow;
pub mod index;
pub mod ingest;
pub mod memory;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

pub use checkpoint::Checkpoint;
pub use ingest::{Channel, Ingest};
pub use writer::LogWriter;

use bytes::Bytes;
use corral_core::record::{encode_middle, encode_with_middle, push_u64, Stream};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;

use index::{Entry, ENTRY};

/// Logbook limits.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Records kept in memory per run for new and slow followers.
    pub ring_records: usize,
    /// Bytes the rings of all runs together may hold (see [`memory`]); set for the whole
    /// daemon when it starts.
    pub ring_budget: usize,
    /// Largest log file; beyond it the head and the newest tail are kept.
    pub max_bytes: u64,
    /// Longest record; longer lines become `partial` chunks.
    pub max_record: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            ring_records: 1000,
            ring_budget: 64 * 1024 * 1024,
            max_bytes: 100 * 1024 * 1024,
            max_record: corral_core::framer::MAX_RECORD,
        }
    }
}

/// One record's place inside a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    pub off: u32,
    pub len: u32,
    pub stream: Stream,
    pub partial: bool,
    pub ts_micros: u64,
}

/// Wire formats a batch can be encoded to, once, for every follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON record per line.
    Ndjson,
    /// Server-sent events: `id: SEQ\ndata: JSON\n\n`.
    Sse,
}

/// Encoded records: `offs[i]..offs[i+1]` is record `i`.
pub struct Encoded {
    pub buf: Bytes,
    pub offs: Vec<u32>,
}

/// Consecutive records of one run, shared by the ring, the cache and followers.
pub struct Batch {
    pub first_seq: u64,
    pub data: Bytes,
    pub recs: Vec<Rec>,
    ndjson: OnceLock<Encoded>,
    sse: OnceLock<Encoded>,
}

impl Batch {
    pub fn new(first_seq: u64, data: Bytes, recs: Vec<Rec>) -> Batch {
        Batch {
            first_seq,
            data,
            recs,
            ndjson: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.recs.len() as u64 - 1
    }

    /// The content of record `i`, without its newline.
    pub fn content(&self, i: usize) -> &[u8] {
        let r = &self.recs[i];
        let b = &self.data[r.off as usize..(r.off + r.len) as usize];
        b.strip_suffix(b"\n").unwrap_or(b)
    }

    fn encoded(&self, fmt: Format, run_id: &str) -> &Encoded {
        let cell = match fmt {
            Format::Ndjson => &self.ndjson,
            Format::Sse => &self.sse,
        };
        cell.get_or_init(|| {
            let sse = fmt == Format::Sse;
            // Records of one append share their timestamp and stream: their JSON differs
            // only in seq and line, so the rest is encoded once per run of equal keys.
            let per_rec = 96 + run_id.len() + if sse { 32 } else { 0 };
            let mut buf = Vec::with_capacity(self.data.len() + self.recs.len() * per_rec);
            let mut offs = Vec::with_capacity(self.recs.len() + 1);
            let mut middle = Vec::with_capacity(64 + run_id.len());
            let mut key = None;
            for (i, r) in self.recs.iter().enumerate() {
                offs.push(buf.len() as u32);
                let seq = self.first_seq + i as u64;
                if key != Some((r.ts_micros, r.stream)) {
                    key = Some((r.ts_micros, r.stream));
                    middle.clear();
                    encode_middle(&mut middle, r.ts_micros, run_id, r.stream);
                }
                if sse {
                    buf.extend_from_slice(b"id: ");
                    push_u64(&mut buf, seq);
                    buf.extend_from_slice(b"\ndata: ");
                }
                encode_with_middle(&mut buf, seq, &middle, r.partial, self.content(i));
                buf.extend_from_slice(if sse { b"\n\n" } else { b"\n" });
            }
            offs.push(buf.len() as u32);
            Encoded {
                buf: Bytes::from(buf),
                offs,
            }
        })
    }

    /// Encoded records `from..=to` (clamped to this batch), sharing the batch's buffer.
    pub fn slice(&self, fmt: Format, run_id: &str, from: u64, to: u64) -> Bytes {
        let from = from.max(self.first_seq);
        let to = to.min(self.last_seq());
        let e = self.encoded(fmt, run_id);
        let a = e.offs[(from - self.first_seq) as usize] as usize;
        let b = e.offs[(to - self.first_seq + 1) as usize] as usize;
        e.buf.slice(a..b)
    }
}

/// A range of records that no longer exists (dropped by the size cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First and last seq dropped.
    pub from: u64,
    pub to: u64,
    /// The byte range `[off_from, off_to)` of the `.log` that was dropped.
    pub off_from: u64,
    pub off_to: u64,
}

impl Gap {
    /// The gap file beside a run's `.log`: `run_<id>.gap`, one line
    /// `FROM TO OFF_FROM OFF_TO` (seqs, then byte offsets), replaced atomically.
    fn path(log_path: &Path) -> PathBuf {
        log_path.with_extension("gap")
    }

    fn save(&self, log_path: &Path) -> std::io::Result<()> {
        let path = Gap::path(log_path);
        let tmp = path.with_extension("gap.tmp");
        let line = format!(
            "{} {} {} {}\n",
            self.from, self.to, self.off_from, self.off_to
        );
        std::fs::write(&tmp, line)?;
        std::fs::rename(&tmp, &path)
    }

    fn load(log_path: &Path) -> Option<Gap> {
        let text = std::fs::read_to_string(Gap::path(log_path)).ok()?;
        let v: Vec<u64> = text
            .split_whitespace()
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        match v[..] {
            [from, to, off_from, off_to] if from <= to && off_from <= off_to => Some(Gap {
                from,
                to,
                off_from,
                off_to,
            }),
            _ => None,
        }
    }
}

/// How a run ended, as followers are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    pub status: corral_core::policy::RunStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

struct Shared {
    ring: VecDeque<Arc<Batch>>,
    ring_len: usize,
    /// What the ring is charged against the daemon's ring budget (see [`memory`]).
    ring_cost: usize,

    last_seq: u64,
    gap: Option<Gap>,
    end: Option<RunEnd>,
    lines: u64,
    bytes: u64,
    write_errors: u64,
    write_error: Option<String>,
}

/// Read side of a run's log, shared by the writer and every follower.
pub struct RunLog {
    pub run_id: String,
    pub log_path: PathBuf,
    /// The run's files, opened when used and closed again when the daemon needs the
    /// descriptors (see [`files`]).
    pub(crate) files: files::RunFiles,
    ring_records: usize,
    /// This run's place in the ring budget, and when it last published (see [`memory`]).
    ring_id: u64,
    published: std::sync::atomic::AtomicU64,
    shared: Mutex<Shared>,
    seq_tx: watch::Sender<u64>,
    cache: Mutex<BlockCache>,
    /// Followers reading the files now. When the last one leaves them (it caught up with
    /// the ring, or went away) while the run goes on, the block cache is emptied: nobody is
    /// behind to share it, and a thousand quiet runs must not each keep what their
    /// followers once read.
    file_readers: std::sync::atomic::AtomicUsize,
}

/// File names of a run's log: `<dir>/run_<id>.log`, `.idx`, `.sys`.
pub fn run_paths(dir: &Path, run_id: &str) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join(format!("run_{run_id}"));
    (
        base.with_extension("log"),
        base.with_extension("idx"),
        base.with_extension("sys"),
    )
}

/// A snapshot of a run log's counters.
#[derive(Debug, Clone)]
pub struct LogStats {
    pub last_seq: u64,
    pub lines: u64,
    pub bytes: u64,
    pub gap: Option<Gap>,
    /// Failed writes of the files (a full disk), and the last one's error.
    pub write_errors: u64,
    pub write_error: Option<String>,
}

impl RunLog {
    fn with_files(
        run_id: &str,
        log_path: PathBuf,
        files: files::RunFiles,
        ring_records: usize,
    ) -> RunLog {
        RunLog {
            run_id: run_id.to_string(),
            log_path,
            files,
            ring_records: ring_records.max(1),
            ring_id: memory::new_id(),
            published: std::sync::atomic::AtomicU64::new(0),
            shared: Mutex::new(Shared {
                ring: VecDeque::new(),
                ring_len: 0,
                ring_cost: 0,
                last_seq: 0,
                gap: None,
                end: None,
                lines: 0,
                bytes: 0,
                write_errors: 0,
                write_error: None,
            }),
            seq_tx: watch::channel(0).0,
            cache: Mutex::new(BlockCache::default()),
            file_readers: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Opens the log of a run that is no longer being written (after it ended, or after
    /// a daemon restart). Records come from the files alone.
    pub fn open_finished(
        dir: &Path,
        run_id: &str,
        gap: Option<Gap>,
        end: RunEnd,
    ) -> std::io::Result<Arc<RunLog>> {
        let (log_path, idx_path, sys_path) = run_paths(dir, run_id);
        // The registry has the gap of runs that ended normally; the gap file also covers
        // runs whose daemon died.
        let gap = gap.or_else(|| Gap::load(&log_path));
        let idx = File::open(&idx_path)?;
        let log = File::open(&log_path)?;
        let sys = File::open(&sys_path).or_else(|_| File::open("/dev/null"))?;
        let entries = idx.metadata()?.len() / ENTRY as u64;
        let bytes = log.metadata()?.len();
        // `lines` counts what the process printed: every entry but corral's own notes,
        // which are the (newline-terminated, one-line) records of the `.sys` file.
        let notes = count_newlines(&sys)?;
        let open = files::Open {
            log,
            idx,
            sys,
            pos: None,
        };
        let files = files::RunFiles::new(log_path.clone(), false, Some(open));
        let rl = RunLog::with_files(run_id, log_path, files, 1);
        {
            let mut s = rl.lock();
            s.last_seq = entries;
            s.lines = entries.saturating_sub(notes);
            s.bytes = bytes;
            s.gap = gap;
            s.end = Some(end);
        }
        Ok(Arc::new(rl))
    }

    /// A reopened run's counters: what its files already hold.
    fn resume_at(&self, last_seq: u64, lines: u64, bytes: u64, gap: Option<Gap>) {
        {
            let mut s = self.lock();
            s.last_seq = last_seq;
            s.lines = lines;
            s.bytes = bytes;
            s.gap = gap;
        }
        self.seq_tx.send_replace(last_seq);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding this lock cannot leave the ring inconsistent (every
        // update is a push or pop), so a poisoned lock is still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> LogStats {
        let s = self.lock();
        LogStats {
            last_seq: s.last_seq,
            lines: s.lines,
            bytes: s.bytes,
            gap: s.gap,
            write_errors: s.write_errors,
            write_error: s.write_error.clone(),
        }
    }

    /// Counts a failed write of the files (each one: they are shown while the run goes on).
    pub(crate) fn write_failed(&self, e: &std::io::Error) {
        crate::metrics::LOG_WRITE_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = self.lock();
        s.write_errors += 1;
        s.write_error = Some(e.to_string());
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    /// Marks the run ended and wakes every follower.
    pub fn finish(&self, end: RunEnd) {
        self.lock().end = Some(end);
        self.seq_tx.send_modify(|_| {});
    }

    /// Blocks in the catch-up cache.
    #[cfg(test)]
    pub(crate) fn cached_blocks(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocks
            .len()
    }

    /// A follower starts reading the files.
    pub(crate) fn enter_files(&self) {
        self.file_readers
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A follower stops reading the files; the last one to stop empties the cache.
    pub(crate) fn leave_files(&self) {
        let before = self
            .file_readers
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        // An ended run's log lives only as long as its followers hold it, and its cache
        // with it; a live run's log lives as long as the run, so its cache is let go now.
        if before == 1 && self.lock().end.is_none() {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.blocks.clear();
            c.bytes = 0;
        }
    }

    fn publish(&self, batch: Batch, bytes: u64) {
        let n = batch.recs.len();
        // `lines` counts what the process printed, not corral's own notes.
        let batch_is_output = batch
            .recs
            .first()
            .is_some_and(|r| r.stream != Stream::System);
        let last = batch.last_seq();
        {
            let mut s = self.lock();
            let cost = memory::cost(batch.data.len(), n);
            s.ring.push_back(Arc::new(batch));
            s.ring_len += n;
            s.ring_cost += cost;
            memory::charge(cost);
            while let Some(front) = s.ring.front() {
                if s.ring_len - front.recs.len() < self.ring_records {
                    break;
                }
                Self::pop_front(&mut s);
            }
            s.last_seq = last;
            if batch_is_output {
                s.lines += n as u64;
            }
            s.bytes += bytes;
        }
        self.seq_tx.send_replace(last);
        self.published
            .store(memory::published(), std::sync::atomic::Ordering::Relaxed);
        memory::trim_if_over();
        crate::metrics::RECORDS.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::BYTES.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes the oldest batch out of the ring.
    fn pop_front(s: &mut Shared) {
        if let Some(front) = s.ring.pop_front() {
            let cost = memory::cost(front.data.len(), front.recs.len());
            s.ring_len -= front.recs.len();
            s.ring_cost -= cost;
            memory::release(cost);
        }
    }

    /// Lets go of the ring's oldest batches, all but `keep`, while `more` says so (the
    /// ring budget is exceeded); followers read what they need of them from the files.
    fn trim_ring(&self, keep: usize, more: impl Fn() -> bool) {
        let mut s = self.lock();
        while s.ring.len() > keep && more() {
            Self::pop_front(&mut s);
        }
    }

    fn set_gap(&self, gap: Gap) {
        self.lock().gap = Some(gap);
    }

    /// Reads the index entries of records `from..=to`. Holes (never written, or punched
    /// out) are `None`.
    fn read_entries(&self, from: u64, to: u64) -> std::io::Result<Vec<Option<Entry>>> {
        let n = (to - from + 1) as usize;
        let raw = read_vec_at(&self.files.get()?.idx, n * ENTRY, (from - 1) * ENTRY as u64)?;
        Ok(raw.chunks_exact(ENTRY).map(Entry::decode).collect())
    }

    /// Reads the records of `entries` (consecutive seqs from `first_seq`, all present)
    /// back from the files into one batch. Process records are contiguous in the `.log`,
    /// so their span is read with one `pread` and usually becomes the batch's data as is.
    fn read_batch(&self, first_seq: u64, entries: &[Option<Entry>]) -> std::io::Result<Batch> {
        let entries = || entries.iter().flatten();
        let mut span: Option<(u64, u64)> = None;
        let mut contiguous = true;
        for e in entries() {
            if e.stream == Stream::System {
                contiguous = false;
                continue;
            }
            let end = e.offset + e.len as u64;
            span = Some(match span {
                None => (e.offset, end),
                Some((a, b)) => {
                    contiguous &= e.offset == b;
                    (a.min(e.offset), b.max(end))
                }
            });
        }
        let files = self.files.get()?;
        let body = match span {
            Some((a, b)) => read_vec_at(&files.log, (b - a) as usize, a)?,
            None => Vec::new(),
        };
        let start = span.map_or(0, |s| s.0);
        let rec = |off: u64, e: &Entry| Rec {
            off: off as u32,
            len: e.len,
            stream: e.stream,
            partial: e.partial,
            ts_micros: e.ts_micros,
        };
        if contiguous {
            let recs = entries().map(|e| rec(e.offset - start, e)).collect();
            return Ok(Batch::new(first_seq, Bytes::from(body), recs));
        }
        let mut data = Vec::with_capacity(body.len());
        let mut recs = Vec::with_capacity(entries().count());
        for e in entries() {
            recs.push(rec(data.len() as u64, e));
            if e.stream == Stream::System {
                data.extend_from_slice(&read_vec_at(&files.sys, e.len as usize, e.offset)?);
            } else {
                let a = (e.offset - start) as usize;
                data.extend_from_slice(&body[a..a + e.len as usize]);
            }
        }
        Ok(Batch::new(first_seq, Bytes::from(data), recs))
    }

    /// The raw bytes of the `.log`, in pieces: the head, then (after a gap) the tail.
    pub fn raw_ranges(&self) -> std::io::Result<Vec<(u64, u64)>> {
        let len = self.files.get()?.log.metadata()?.len();
        let gap = self.lock().gap;
        let Some(gap) = gap else {
            return Ok(vec![(0, len)]);
        };
        Ok(vec![(0, gap.off_from), (gap.off_to, len)])
    }

    pub fn read_raw(&self, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.files.get()?.log.read_at(buf, off)
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        memory::unregister(self.ring_id);
        let s = self.shared.get_mut().unwrap_or_else(|e| e.into_inner());
        memory::release(s.ring_cost);
    }
}

fn count_newlines(f: &File) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut off, mut n) = (0u64, 0u64);
    loop {
        let got = f.read_at(&mut buf, off)?;
        if got == 0 {
            return Ok(n);
        }
        n += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
        off += got as u64;
    }
}

/// Reads exactly `len` bytes at `off` into a new vector, without zeroing it first (the
/// catch-up path reads a lot, and zeroing costs as much as the read).
fn read_vec_at(f: &File, len: usize, off: u64) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut v: Vec<u8> = Vec::with_capacity(len);
    let mut got = 0;
    while got < len {
        // SAFETY: pread writes at most `len - got` bytes into the vector's spare capacity.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                v.as_mut_ptr().add(got).cast(),
                len - got,
                (off + got as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n as usize;
    }
    // SAFETY: the first `len` bytes were written by pread above.
    unsafe { v.set_len(len) };
    Ok(v)
}

/// Records per block of the follower catch-up cache.
const BLOCK: u64 = 256;
/// Bytes of encoded and raw data the block cache may hold per run.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Recently read blocks of a run's log, shared by followers that catch up from disk, so
/// that a crowd of slow followers reads and encodes each block once.
///
/// Eviction is least-recently-used: a crowd of followers moving through the log keeps the
/// blocks between its last and its first member, and what all of them passed goes first.
#[derive(Default)]
struct BlockCache {
    blocks: HashMap<u64, (Arc<Batch>, u64)>,
    bytes: usize,
    tick: u64,
}

impl BlockCache {
    /// What a block is charged: its raw bytes and room for two encodings of them.
    fn cost(batch: &Batch) -> usize {
        batch.data.len() * 3 + batch.recs.len() * 64
    }

    fn get(&mut self, block: u64) -> Option<Arc<Batch>> {
        self.tick += 1;
        let tick = self.tick;
        self.blocks.get_mut(&block).map(|(batch, used)| {
            *used = tick;
            batch.clone()
        })
    }

    /// Caches `batch` as `block`, or returns the copy another follower cached meanwhile.
    fn put(&mut self, block: u64, batch: Arc<Batch>) -> Arc<Batch> {
        if let Some(b) = self.get(block) {
            return b;
        }
        self.tick += 1;
        self.bytes += Self::cost(&batch);
        self.blocks.insert(block, (batch.clone(), self.tick));
        while self.bytes > CACHE_BYTES && self.blocks.len() > 1 {
            let Some((&old, _)) = self.blocks.iter().min_by_key(|(_, (_, used))| *used) else {
                break;
            };
            if let Some((b, _)) = self.blocks.remove(&old) {
                self.bytes -= Self::cost(&b);
            }
        }
        batch
    }
}
