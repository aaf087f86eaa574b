//! The ingest stage: where every source's bytes enter a run's log.
//!
//! A source (child pipes, a followed file, a remote command, a container) only reads: it
//! hands bytes, tagged with the channel they came on and, where it has them, its own
//! timestamps, to a [`Channel`] of the run's [`Ingest`]. Everything else happens here, the
//! same for every source: framing (lines; lines over `max_record` become `partial` chunks;
//! invalid UTF-8 is kept as is and flagged `lossy` when encoded), dense seq numbers,
//! the write to the files, the announcement to followers, and the tail of `stderr` that a
//! failed run's error message quotes.
//!
//! Invariants:
//! - each channel keeps its own incomplete line, so two channels never mix within a
//!   record, and a line split across any number of pushes is one record;
//! - a record gets its timestamp from the push that completes it: the source's own where
//!   it gave one, else the daemon's clock when the bytes arrived;
//! - a record is on disk before it is announced (the writer writes, then publishes);
//! - nothing here waits for a follower: the only lock shared with them is the ring's,
//!   taken by the writer to push one batch.

use super::{Checkpoint, Gap, LogConfig, LogWriter, RunLog};
use corral_core::framer::{frame, Frame};
use corral_core::record::Stream;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Lines of stderr kept for a failed run's error message.
pub const STDERR_TAIL: usize = 5;

thread_local! {
    /// The frames of the push in progress: one scratch per thread (a reactor serves
    /// thousands of channels), not one per channel.
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// What the ingest stage shares between a run's sources and its supervisor (which writes
/// lifecycle notes through the same writer, so that seq numbers stay dense).
struct Inner {
    writer: LogWriter,
    stderr_tail: VecDeque<String>,
    /// Bytes of the source's stdout and stderr that are in records (the rest of what it
    /// handed in is an incomplete line, still in its channel).
    consumed: [u64; 2],
    /// Whether the checkpoint file is kept, for a run whose source can hand its bytes
    /// again (a holder). It is one of the run's files (see [`super::files`]).
    keep_pos: bool,
}

impl Inner {
    fn checkpoint(&mut self) -> std::io::Result<Checkpoint> {
        let (last_seq, log_len, sys_len) = self.writer.position();
        let at = Checkpoint {
            last_seq,
            log_len,
            sys_len,
            streams: self.consumed,
        };
        if self.keep_pos {
            if let Some(f) = &self.writer.log().files.get()?.pos {
                at.write(f)?;
            }
        }
        Ok(at)
    }
}

fn stream_slot(stream: Stream) -> Option<usize> {
    match stream {
        Stream::Stdout | Stream::File => Some(0),
        Stream::Stderr => Some(1),
        Stream::System => None,
    }
}

/// A run's ingest stage. Cheap to clone: every clone feeds the same log.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Mutex<Inner>>,
    log: Arc<RunLog>,
    max_record: usize,
}

impl Ingest {
    /// Creates the files of a new run in `dir` and its ingest stage.
    pub fn create(dir: &Path, run_id: &str, cfg: &LogConfig) -> std::io::Result<Ingest> {
        let (writer, log) = LogWriter::create(dir, run_id, cfg)?;
        Ok(Ingest::with_writer(writer, log, cfg, [0, 0]))
    }

    /// Reopens the log of a run an earlier daemon was writing, cut back to its last
    /// checkpoint (see [`super::checkpoint`]). Returns the ingest stage, which goes on
    /// keeping checkpoints, and the checkpoint: from where the source must hand its
    /// streams again.
    pub fn reopen(
        dir: &Path,
        run_id: &str,
        cfg: &LogConfig,
    ) -> std::io::Result<(Ingest, Checkpoint)> {
        let (log_path, _, _) = super::run_paths(dir, run_id);
        let at = Checkpoint::read(&log_path)?;
        let (writer, log) = LogWriter::reopen(dir, run_id, cfg, &at)?;
        let ingest = Ingest::with_writer(writer, log, cfg, at.streams);
        ingest.keep_checkpoints()?;
        Ok((ingest, at))
    }

    fn with_writer(
        writer: LogWriter,
        log: Arc<RunLog>,
        cfg: &LogConfig,
        consumed: [u64; 2],
    ) -> Ingest {
        Ingest {
            inner: Arc::new(Mutex::new(Inner {
                writer,
                stderr_tail: VecDeque::new(),
                consumed,
                keep_pos: false,
            })),
            log,
            max_record: cfg.max_record.max(4),
        }
    }

    /// From now on, keeps the run's checkpoint file current (after every `system` note
    /// and every [`Ingest::checkpoint`]): for a source that can hand its bytes again from
    /// an offset, so that a daemon that dies loses nothing and repeats nothing.
    pub fn keep_checkpoints(&self) -> std::io::Result<()> {
        if self.lock().keep_pos {
            return Ok(());
        }
        self.log.files.keep_pos()?;
        let mut inner = self.lock();
        inner.keep_pos = true;
        inner.checkpoint().map(|_| ())
    }

    /// Writes the checkpoint (where one is kept) and returns it: the source's bytes of
    /// each stream now in records, which it may forget.
    pub fn checkpoint(&self) -> std::io::Result<Checkpoint> {
        self.lock().checkpoint()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update under this lock is an append that either happened or did not: a
        // panic elsewhere cannot leave it half done, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run's log, for followers.
    pub fn log(&self) -> &Arc<RunLog> {
        &self.log
    }

    /// The longest record; a reader carries at most this much between reads.
    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// A channel for a source's bytes of one stream. `system` is corral's own
    /// ([`Ingest::system`]); a source hands `stdout`, `stderr` or `file`.
    pub fn channel(&self, stream: Stream) -> Channel {
        assert!(
            stream != Stream::System,
            "sources hand stdout, stderr or file; system records are corral's notes"
        );
        Channel {
            ingest: self.clone(),
            stream,
            pending: Vec::new(),
            ended: false,
        }
    }

    /// Appends one of corral's own notes as a `system` record, stamped now; its seq.
    pub fn system(&self, text: &str) -> u64 {
        let mut inner = self.lock();
        let seq = inner.writer.system(text, crate::clock::now_micros());
        if inner.keep_pos {
            if let Err(e) = inner.checkpoint() {
                inner.writer.note_io_error(e);
            }
        }
        seq
    }

    /// The last lines the run printed on stderr, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.lock().stderr_tail.iter().cloned().collect()
    }

    /// The first error writing the log, once (records still reached followers).
    pub fn take_io_error(&self) -> Option<std::io::Error> {
        self.lock().writer.io_error.take()
    }

    /// The range the size cap dropped, if any.
    pub fn gap(&self) -> Option<Gap> {
        self.lock().writer.gap()
    }

    /// Frames `buf` (whose first `len` bytes are the channel's data), appends the
    /// complete records and returns how many bytes they used.
    fn append(&self, stream: Stream, buf: &[u8], eof: bool, ts: Option<u64>) -> usize {
        FRAMES.with_borrow_mut(|frames| {
            frames.clear();
            let used = frame(buf, self.max_record, eof, frames);
            if frames.is_empty() {
                return used;
            }
            let ts = ts.unwrap_or_else(crate::clock::now_micros);
            let mut inner = self.lock();
            inner.writer.append(stream, buf, frames, ts);
            if let Some(slot) = stream_slot(stream) {
                inner.consumed[slot] += used as u64;
            }
            if stream == Stream::Stderr {
                let tail = &mut inner.stderr_tail;
                for f in &frames[frames.len().saturating_sub(STDERR_TAIL)..] {
                    let text = String::from_utf8_lossy(f.content(buf));
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(text.trim_end().to_string());
                }
            }
            used
        })
    }
}

/// One stream of a source (a pipe, a file) feeding a run's [`Ingest`]. It keeps the
/// incomplete last line between pushes: at most `max_record` bytes.
pub struct Channel {
    ingest: Ingest,
    stream: Stream,
    pending: Vec<u8>,
    ended: bool,
}

/// Extra room a reader's scratch buffer needs beside what it reads: the incomplete line
/// a channel carries over (see [`Channel::read_with`]).
pub fn scratch_len(read_size: usize, max_record: usize) -> usize {
    read_size + max_record + 1
}

impl Channel {
    pub fn stream(&self) -> Stream {
        self.stream
    }

    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// Bytes held back as an incomplete line.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Hands bytes the source already holds. `ts` is the source's own timestamp
    /// (microseconds since the epoch) for the records this push completes; `None` stamps
    /// them with the daemon's clock.
    pub fn push(&mut self, bytes: &[u8], ts: Option<u64>) {
        if self.ended || bytes.is_empty() {
            return;
        }
        let mut bytes = bytes;
        if !self.pending.is_empty() {
            // Only the carried line is completed by copying: what follows its newline is
            // framed where it lies.
            let Some(nl) = memchr::memchr(b'\n', bytes) else {
                self.pending.extend_from_slice(bytes);
                let used = self.ingest.append(self.stream, &self.pending, false, ts);
                self.pending.drain(..used);
                self.trim();
                return;
            };
            self.pending.extend_from_slice(&bytes[..=nl]);
            let used = self.ingest.append(self.stream, &self.pending, false, ts);
            debug_assert_eq!(
                used,
                self.pending.len(),
                "a line ending in a newline is whole"
            );
            self.pending.clear();
            bytes = &bytes[nl + 1..];
        }
        let used = self.ingest.append(self.stream, bytes, false, ts);
        self.pending.extend_from_slice(&bytes[used..]);
        self.trim();
    }

    /// Reads straight into `scratch` with `read` (which gets the free room and returns
    /// how many bytes it wrote there), so a pipe's bytes are framed where the kernel put
    /// them. The incomplete line carried over is copied in front first; `scratch` must
    /// hold it and the read (see [`scratch_len`]). Returns what `read` returned; a read
    /// of 0 bytes changes nothing (end-of-file is [`Channel::end`]).
    pub fn read_with(
        &mut self,
        scratch: &mut [u8],
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        let carried = self.pending.len();
        if carried >= scratch.len() {
            return Err(std::io::Error::other("read buffer smaller than a record"));
        }
        scratch[..carried].copy_from_slice(&self.pending);
        let n = read(&mut scratch[carried..])?;
        let n = n.min(scratch.len() - carried);
        if n == 0 || self.ended {
            return Ok(n);
        }
        let total = carried + n;
        let used = self
            .ingest
            .append(self.stream, &scratch[..total], false, None);
        self.pending.clear();
        self.pending.extend_from_slice(&scratch[used..total]);
        self.trim();
        Ok(n)
    }

    /// The source's end (end-of-file, or it stopped reading): the incomplete last line
    /// becomes a record of its own. Later bytes are ignored.
    pub fn end(&mut self, ts: Option<u64>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if !self.pending.is_empty() {
            self.ingest.append(self.stream, &self.pending, true, ts);
        }
        self.pending = Vec::new();
    }

    /// Lets go of the channel without making its incomplete line a record: its source
    /// will hand those bytes again (to a later daemon, from the last checkpoint).
    pub fn abandon(mut self) {
        self.ended = true;
        self.pending = Vec::new();
    }

    /// A channel holds at most one incomplete record; after a big push its buffer shrinks
    /// back, so a thousand quiet channels cost little memory.
    fn trim(&mut self) {
        let keep = self.ingest.max_record + 1;
        if self.pending.capacity() > 2 * keep {
            self.pending.shrink_to(keep);
        }
    }
}

impl Drop for Channel {
    /// A channel dropped without [`Channel::end`] still keeps what it was given.
    fn drop(&mut self) {
        self.end(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::record::WireRecord;

    fn ingest(max_record: usize) -> (tempfile::TempDir, Ingest) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            max_record,
            ..LogConfig::default()
        };
        let ing = Ingest::create(dir.path(), "t", &cfg).unwrap();
        (dir, ing)
    }

    /// Ends the run and reads every record back through a follower.
    async fn records(ing: &Ingest) -> Vec<WireRecord> {
        crate::logbook::testing::finish_and_read(ing).await
    }

    fn lines(recs: &[WireRecord]) -> Vec<(&str, Stream, bool)> {
        recs.iter()
            .map(|r| (r.line.as_str(), r.stream, r.partial))
            .collect()
    }

    #[tokio::test]
    async fn lines_split_across_pushes_are_one_record_each() {
        let (_d, ing) = ingest(64);
        let mut ch = ing.channel(Stream::Stdout);
        ch.push(b"al", None);
        assert_eq!(ing.log().stats().last_seq, 0, "nothing complete yet");
        ch.push(b"pha\nbe", None);
        ch.push(b"", None);
        ch.push(b"ta\n\ngam", None);
        ch.push(b"ma", None);
        ch.end(None);
        let recs = records(&ing).await;
        assert_eq!(
            lines(&recs),
            [
                ("alpha", Stream::Stdout, false),
                ("beta", Stream::Stdout, false),
                ("", Stream::Stdout, false),
                ("gamma", Stream::Stdout, false),
            ]
        );
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(
            std::fs::read(&ing.log().log_path).unwrap(),
            b"alpha\nbeta\n\ngamma"
        );
    }

    #[tokio::test]
    async fn channels_keep_their_own_incomplete_lines() {
        let (_d, ing) = ingest(64);
        let mut out = ing.channel(Stream::Stdout);
        let mut err = ing.channel(Stream::Stderr);
        out.push(b"out-", None);
        err.push(b"err-", None);
        ing.system("a note between");
        err.push(b"line\n", None);
        out.push(b"line\n", None);
        let recs = records(&ing).await;
        assert_eq!(
            lines(&recs),
            [
                ("a note between", Stream::System, false),
                ("err-line", Stream::Stderr, false),
                ("out-line", Stream::Stdout, false),
            ]
        );
    }

    #[tokio::test]
    async fn over_long_lines_become_partial_chunks_whatever_the_pushes() {
        let (_d, ing) = ingest(8);
        let mut ch = ing.channel(Stream::File);
        // 20 bytes of one line in pushes of 3, then its end, then a short line.
        let long = [b'x'; 20];
        for piece in long.chunks(3) {
            ch.push(piece, None);
            assert!(ch.pending() <= 8);
        }
        ch.push(b"\nok\n", None);
        let recs = records(&ing).await;
        let got: Vec<(usize, bool)> = recs.iter().map(|r| (r.line.len(), r.partial)).collect();
        assert_eq!(got, [(8, true), (8, true), (4, false), (2, false)]);
        assert!(recs.iter().all(|r| r.stream == Stream::File));
    }

    #[tokio::test]
    async fn invalid_utf8_is_stored_raw_and_flagged_lossy() {
        let (_d, ing) = ingest(64);
        let mut ch = ing.channel(Stream::Stdout);
        ch.push(b"fine\nbad \xff\xfe here\n\xc3", None);
        ch.push(b"\xa9t\xc3\xa9\n", None); // an é split across two pushes stays whole
        let recs = records(&ing).await;
        assert_eq!(recs.len(), 3);
        assert!(!recs[0].lossy);
        assert!(recs[1].lossy);
        assert_eq!(recs[1].line, "bad \u{FFFD}\u{FFFD} here");
        assert_eq!(recs[2].line, "été");
        assert!(!recs[2].lossy);
        assert_eq!(
            std::fs::read(&ing.log().log_path).unwrap(),
            b"fine\nbad \xff\xfe here\n\xc3\xa9t\xc3\xa9\n",
            "the .log keeps the exact bytes"
        );
    }

    #[tokio::test]
    async fn the_stderr_tail_keeps_the_last_lines_of_stderr_only() {
        let (_d, ing) = ingest(64);
        let mut out = ing.channel(Stream::Stdout);
        let mut err = ing.channel(Stream::Stderr);
        for i in 0..8 {
            err.push(format!("err {i}  \n").as_bytes(), None);
            out.push(format!("out {i}\n").as_bytes(), None);
        }
        err.push(b"unfinished", None);
        assert_eq!(
            ing.stderr_tail(),
            ["err 3", "err 4", "err 5", "err 6", "err 7"]
        );
        err.end(None);
        assert_eq!(
            ing.stderr_tail().last().map(String::as_str),
            Some("unfinished")
        );
        // Many lines in one push: the tail is still the last five.
        let mut err = ing.channel(Stream::Stderr);
        err.push(b"a\nb\nc\nd\ne\nf\ng\n", None);
        assert_eq!(ing.stderr_tail(), ["c", "d", "e", "f", "g"]);
    }

    #[tokio::test]
    async fn a_sources_own_timestamps_stamp_the_records_it_completes() {
        let (_d, ing) = ingest(64);
        let mut ch = ing.channel(Stream::File);
        let t1 = 1_600_000_000_000_001;
        let t2 = 1_600_000_000_500_000;
        ch.push(b"first\nsec", Some(t1));
        ch.push(b"ond\n", Some(t2));
        ch.push(b"no stamp\n", None);
        let recs = records(&ing).await;
        let ts: Vec<f64> = recs.iter().map(|r| r.ts).collect();
        assert_eq!(ts[0], 1_600_000_000.000001);
        assert_eq!(ts[1], 1_600_000_000.5);
        assert!(ts[2] > 1_700_000_000.0, "stamped by the daemon's clock");
    }

    #[tokio::test]
    async fn reads_frame_in_place_and_carry_the_incomplete_line() {
        let (_d, ing) = ingest(8);
        let mut ch = ing.channel(Stream::Stdout);
        let mut scratch = vec![0u8; scratch_len(5, 8)];
        let mut input: &[u8] = b"one\ntwo-three-four\nfive";
        while !input.is_empty() {
            let n = ch
                .read_with(&mut scratch, |room| {
                    let n = room.len().min(5).min(input.len());
                    room[..n].copy_from_slice(&input[..n]);
                    Ok(n)
                })
                .unwrap();
            input = &input[n..];
        }
        assert_eq!(ch.read_with(&mut scratch, |_| Ok(0)).unwrap(), 0);
        ch.end(None);
        ch.push(b"after the end\n", None);
        let recs = records(&ing).await;
        assert_eq!(
            lines(&recs),
            [
                ("one", Stream::Stdout, false),
                ("two-thre", Stream::Stdout, true),
                ("e-four", Stream::Stdout, false),
                ("five", Stream::Stdout, false),
            ]
        );
    }

    #[tokio::test]
    async fn a_dropped_channel_keeps_its_last_line() {
        let (_d, ing) = ingest(64);
        let mut ch = ing.channel(Stream::Stderr);
        ch.push(b"last words", None);
        drop(ch);
        let recs = records(&ing).await;
        assert_eq!(lines(&recs), [("last words", Stream::Stderr, false)]);
    }
}
