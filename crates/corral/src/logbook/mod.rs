//! The logbook: one per run. It owns the run's log files, its seq numbers, the in-memory
//! ring of recent records, and the followers' view of all three.
//!
//! Data flow: the capture thread frames bytes into records and hands them to
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

pub mod follow;
pub mod index;
mod writer;

pub use writer::LogWriter;

use bytes::Bytes;
use corral_core::record::{encode_json, Stream};
use std::collections::VecDeque;
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
    /// Largest log file; beyond it the head and the newest tail are kept.
    pub max_bytes: u64,
    /// Longest record; longer lines become `partial` chunks.
    pub max_record: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            ring_records: 1000,
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
            let mut buf = Vec::with_capacity(self.data.len() + self.recs.len() * 100);
            let mut offs = Vec::with_capacity(self.recs.len() + 1);
            for (i, r) in self.recs.iter().enumerate() {
                offs.push(buf.len() as u32);
                let seq = self.first_seq + i as u64;
                if fmt == Format::Sse {
                    buf.extend_from_slice(b"id: ");
                    buf.extend_from_slice(seq.to_string().as_bytes());
                    buf.extend_from_slice(b"\ndata: ");
                }
                let ts = r.ts_micros as f64 / 1e6;
                encode_json(&mut buf, seq, ts, run_id, r.stream, r.partial, self.content(i));
                buf.extend_from_slice(if fmt == Format::Sse { b"\n\n" } else { b"\n" });
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

/// How a run ended, as followers are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    pub status: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

struct Shared {
    ring: VecDeque<Arc<Batch>>,
    ring_len: usize,
    last_seq: u64,
    gap: Option<Gap>,
    end: Option<RunEnd>,
    lines: u64,
    bytes: u64,
}

/// Read side of a run's log, shared by the writer and every follower.
pub struct RunLog {
    pub run_id: String,
    pub log_path: PathBuf,
    idx: File,
    log: File,
    sys: File,
    ring_records: usize,
    shared: Mutex<Shared>,
    seq_tx: watch::Sender<u64>,
    cache: Mutex<BlockCache>,
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
    pub end: Option<RunEnd>,
}

impl RunLog {
    fn with_files(
        run_id: &str,
        log_path: PathBuf,
        idx: File,
        log: File,
        sys: File,
        ring_records: usize,
    ) -> RunLog {
        RunLog {
            run_id: run_id.to_string(),
            log_path,
            idx,
            log,
            sys,
            ring_records: ring_records.max(1),
            shared: Mutex::new(Shared {
                ring: VecDeque::new(),
                ring_len: 0,
                last_seq: 0,
                gap: None,
                end: None,
                lines: 0,
                bytes: 0,
            }),
            seq_tx: watch::channel(0).0,
            cache: Mutex::new(BlockCache::default()),
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
        let idx = File::open(&idx_path)?;
        let log = File::open(&log_path)?;
        let sys = File::open(&sys_path).or_else(|_| File::open("/dev/null"))?;
        let entries = idx.metadata()?.len() / ENTRY as u64;
        let bytes = log.metadata()?.len();
        let rl = RunLog::with_files(run_id, log_path, idx, log, sys, 1);
        {
            let mut s = rl.lock();
            s.last_seq = entries;
            s.lines = entries;
            s.bytes = bytes;
            s.gap = gap;
            s.end = Some(end);
        }
        Ok(Arc::new(rl))
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
            end: s.end.clone(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    /// Marks the run ended and wakes every follower.
    pub fn finish(&self, end: RunEnd) {
        self.lock().end = Some(end);
        self.seq_tx.send_modify(|_| {});
    }

    fn publish(&self, batch: Batch, bytes: u64) {
        let n = batch.recs.len();
        // `lines` counts what the process printed, not corral's own notes.
        let batch_is_output = batch.recs.first().is_some_and(|r| r.stream != Stream::System);
        let last = batch.last_seq();
        {
            let mut s = self.lock();
            s.ring.push_back(Arc::new(batch));
            s.ring_len += n;
            while let Some(front) = s.ring.front() {
                if s.ring_len - front.recs.len() < self.ring_records {
                    break;
                }
                s.ring_len -= front.recs.len();
                s.ring.pop_front();
            }
            s.last_seq = last;
            if batch_is_output {
                s.lines += n as u64;
            }
            s.bytes += bytes;
        }
        self.seq_tx.send_replace(last);
        crate::metrics::RECORDS.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::BYTES.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_gap(&self, gap: Gap) {
        self.lock().gap = Some(gap);
    }

    /// Reads records `from..=to` back from the files. Holes (never written, or punched
    /// out) are returned as `None`.
    fn read_range(&self, from: u64, to: u64) -> std::io::Result<Vec<Option<(Entry, Vec<u8>)>>> {
        let n = (to - from + 1) as usize;
        let mut raw = vec![0u8; n * ENTRY];
        read_exact_at(&self.idx, &mut raw, (from - 1) * ENTRY as u64)?;
        let entries: Vec<Option<Entry>> = raw.chunks(ENTRY).map(Entry::decode).collect();
        // Process records are contiguous in the .log: read their span at once.
        let span = entries
            .iter()
            .flatten()
            .filter(|e| e.stream != Stream::System)
            .fold(None, |acc: Option<(u64, u64)>, e| {
                let end = e.offset + e.len as u64;
                Some(acc.map_or((e.offset, end), |(a, b)| (a.min(e.offset), b.max(end))))
            });
        let mut body = Vec::new();
        if let Some((a, b)) = span {
            body.resize((b - a) as usize, 0);
            read_exact_at(&self.log, &mut body, a)?;
        }
        entries
            .into_iter()
            .map(|e| {
                let Some(e) = e else { return Ok(None) };
                let bytes = if e.stream == Stream::System {
                    let mut b = vec![0u8; e.len as usize];
                    read_exact_at(&self.sys, &mut b, e.offset)?;
                    b
                } else {
                    let a = (e.offset - span.map_or(0, |s| s.0)) as usize;
                    body[a..a + e.len as usize].to_vec()
                };
                Ok(Some((e, bytes)))
            })
            .collect()
    }

    /// The raw bytes of the `.log`, in pieces: the head, then (after a gap) the tail.
    pub fn raw_ranges(&self) -> std::io::Result<Vec<(u64, u64)>> {
        let len = self.log.metadata()?.len();
        let gap = self.lock().gap;
        let Some(gap) = gap else {
            return Ok(vec![(0, len)]);
        };
        Ok(vec![(0, gap.off_from), (gap.off_to, len)])
    }

    pub fn read_raw(&self, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.log.read_at(buf, off)
    }
}

fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    f.read_exact_at(buf, off)
}

/// Records per block of the follower catch-up cache.
const BLOCK: u64 = 256;
/// Bytes of encoded and raw data the block cache may hold per run.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Recently read blocks of a run's log, shared by followers that catch up from disk, so
/// that a crowd of slow followers reads and encodes each block once.
#[derive(Default)]
struct BlockCache {
    blocks: VecDeque<(u64, Arc<Batch>)>,
    bytes: usize,
}

impl BlockCache {
    fn get(&self, block: u64) -> Option<Arc<Batch>> {
        self.blocks
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, batch)| batch.clone())
    }

    fn put(&mut self, block: u64, batch: Arc<Batch>) {
        if self.get(block).is_some() {
            return;
        }
        self.bytes += batch.data.len() * 3;
        self.blocks.push_back((block, batch));
        while self.bytes > CACHE_BYTES && self.blocks.len() > 1 {
            if let Some((_, old)) = self.blocks.pop_front() {
                self.bytes -= old.data.len() * 3;
            }
        }
    }
}
