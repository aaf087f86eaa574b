//! The write side of a run log: appends framed records to the files and the ring, and
//! enforces the size cap by punching the middle out of the files.
//!
//! Size cap: the first half of `max_bytes` (the head: how the run started) is kept for
//! good; beyond it, only about the newest half is kept. The dropped middle is punched out
//! of the `.log` and `.idx` (`fallocate(PUNCH_HOLE)`: offsets stay valid, disk space is
//! freed) and recorded as one growing gap of seqs.

use super::checkpoint::Checkpoint;
use super::index::{Entry, ENTRY};
#[cfg(test)]
use super::RunEnd;
use super::{run_paths, Batch, Gap, Rec, RunLog};
use bytes::Bytes;
use corral_core::framer::Frame;
use corral_core::record::Stream;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// The writer uses the files of its [`RunLog`] (opened for reading and writing, and
/// again after the daemon's budget closed them): one set of descriptors per live run at
/// most, shared with its followers.
pub struct LogWriter {
    log: Arc<RunLog>,
    log_len: u64,
    sys_len: u64,
    next_seq: u64,
    max_bytes: u64,
    idx_buf: Vec<u8>,
    /// (first seq, offset) of each batch after the head, oldest first.
    checkpoints: VecDeque<(u64, u64)>,
    /// First seq and offset after the head, once the head is full.
    head_end: Option<(u64, u64)>,
    gap: Option<Gap>,
    /// First write error, kept for the run's error message; records still reach followers.
    pub io_error: Option<std::io::Error>,
}

impl LogWriter {
    /// Creates the files of a new run in `dir`.
    pub fn create(
        dir: &Path,
        run_id: &str,
        cfg: &super::LogConfig,
    ) -> std::io::Result<(LogWriter, Arc<RunLog>)> {
        std::fs::create_dir_all(dir)?;
        let (log_path, idx_path, sys_path) = run_paths(dir, run_id);
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(p)
        };
        let file = open(&log_path)?;
        let idx = open(&idx_path)?;
        let sys = open(&sys_path)?;
        LogWriter::with_files(run_id, log_path, [file, idx, sys], cfg, None)
    }

    /// Opens the files of a run an earlier daemon was writing, cut back to `at` (what
    /// lay beyond it is written again by the source), to go on appending after it.
    pub fn reopen(
        dir: &Path,
        run_id: &str,
        cfg: &super::LogConfig,
        at: &Checkpoint,
    ) -> std::io::Result<(LogWriter, Arc<RunLog>)> {
        let (log_path, idx_path, sys_path) = run_paths(dir, run_id);
        let open = |p: &Path, create: bool| {
            OpenOptions::new()
                .create(create)
                .read(true)
                .write(true)
                .open(p)
        };
        let file = open(&log_path, false)?;
        let idx = open(&idx_path, false)?;
        let sys = open(&sys_path, true)?;
        file.set_len(at.log_len)?;
        idx.set_len(at.last_seq * ENTRY as u64)?;
        sys.set_len(at.sys_len)?;
        LogWriter::with_files(run_id, log_path, [file, idx, sys], cfg, Some(at))
    }

    fn with_files(
        run_id: &str,
        log_path: std::path::PathBuf,
        [file, idx, sys]: [File; 3],
        cfg: &super::LogConfig,
        at: Option<&Checkpoint>,
    ) -> std::io::Result<(LogWriter, Arc<RunLog>)> {
        let at = at.copied().unwrap_or_default();
        let gap = Gap::load(&log_path).filter(|g| g.to < at.last_seq && at.last_seq > 0);
        let notes = if at.last_seq > 0 {
            super::count_newlines(&sys)?
        } else {
            0
        };
        let open = super::files::Open {
            log: file,
            idx,
            sys,
            pos: None,
        };
        let files = super::files::RunFiles::new(log_path.clone(), true, Some(open));
        let log = Arc::new(RunLog::with_files(
            run_id,
            log_path,
            files,
            cfg.ring_records,
        ));
        super::memory::register(&log);
        let mut checkpoints = VecDeque::new();
        if at.last_seq > 0 {
            log.resume_at(
                at.last_seq,
                at.last_seq.saturating_sub(notes),
                at.log_len,
                gap,
            );
            if gap.is_none() {
                // Where the reopened run goes on: the head may end here.
                checkpoints.push_back((at.last_seq + 1, at.log_len));
            }
        }
        Ok((
            LogWriter {
                log: log.clone(),
                log_len: at.log_len,
                sys_len: at.sys_len,
                next_seq: at.last_seq + 1,
                max_bytes: cfg.max_bytes.max(64 * 1024),
                idx_buf: Vec::new(),
                checkpoints,
                head_end: gap.map(|g| (g.from, g.off_from)),
                gap,
                io_error: None,
            },
            log,
        ))
    }

    /// Where the files stand, for a checkpoint: last seq, `.log` and `.sys` lengths.
    pub fn position(&self) -> (u64, u64, u64) {
        (self.next_seq - 1, self.log_len, self.sys_len)
    }

    pub fn log(&self) -> &Arc<RunLog> {
        &self.log
    }

    /// Appends the framed records of `buf` (the frames cover a prefix of it, in order).
    pub fn append(&mut self, stream: Stream, buf: &[u8], frames: &[Frame], ts_micros: u64) {
        let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
            return;
        };
        let data = &buf[first.start..last.end];
        let base = self.log_len;
        self.idx_buf.clear();
        let mut recs = Vec::with_capacity(frames.len());
        for f in frames {
            let off = (f.start - first.start) as u32;
            let len = (f.end - f.start) as u32;
            Entry {
                offset: base + off as u64,
                len,
                stream,
                partial: f.partial,
                ts_micros,
            }
            .encode(&mut self.idx_buf);
            recs.push(Rec {
                off,
                len,
                stream,
                partial: f.partial,
                ts_micros,
            });
        }
        let first_seq = self.next_seq;
        self.write(data, false, base, first_seq);
        self.log_len += data.len() as u64;
        self.next_seq += frames.len() as u64;
        self.checkpoints.push_back((first_seq, base));
        self.log.publish(
            Batch::new(first_seq, Bytes::copy_from_slice(data), recs),
            data.len() as u64,
        );
        self.enforce_cap();
    }

    /// Appends one of corral's own lifecycle notes as a `system` record.
    pub fn system(&mut self, text: &str, ts_micros: u64) -> u64 {
        let mut line = text.replace('\n', " ");
        line.push('\n');
        let entry = Entry {
            offset: self.sys_len,
            len: line.len() as u32,
            stream: Stream::System,
            partial: false,
            ts_micros,
        };
        self.idx_buf.clear();
        entry.encode(&mut self.idx_buf);
        self.write(line.as_bytes(), true, self.sys_len, self.next_seq);
        self.sys_len += line.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let rec = Rec {
            off: 0,
            len: line.len() as u32,
            stream: Stream::System,
            partial: false,
            ts_micros,
        };
        self.log
            .publish(Batch::new(seq, Bytes::from(line), vec![rec]), 0);
        seq
    }

    /// Writes the record bytes at `at`, then their index entries (in `idx_buf`) at the
    /// place of `first_seq`, so that an entry never points at bytes not yet written.
    /// Positions are explicit: after a failed write (a full disk) later records still
    /// land where their offsets say, and what failed reads back as a hole, which
    /// followers are told about as a gap.
    fn write(&mut self, data: &[u8], system: bool, at: u64, first_seq: u64) {
        let r = self.log.files.get().and_then(|f| {
            let target = if system { &f.sys } else { &f.log };
            target.write_all_at(data, at)?;
            f.idx
                .write_all_at(&self.idx_buf, (first_seq - 1) * ENTRY as u64)
        });
        if let Err(e) = r {
            self.note_io_error(e);
        }
    }

    /// Keeps the first write error for the run's message (and says it once).
    pub fn note_io_error(&mut self, e: std::io::Error) {
        self.log.write_failed(&e);
        if self.io_error.is_none() {
            tracing::error!(
                run_id = %self.log.run_id,
                "writing the run's log failed: {e}; records still reach followers"
            );
            self.io_error = Some(e);
        }
    }

    fn enforce_cap(&mut self) {
        let half = self.max_bytes / 2;
        if self.head_end.is_none() {
            // The head ends at the first batch that starts past half the cap.
            while let Some(&(seq, off)) = self.checkpoints.front() {
                if off >= half {
                    self.head_end = Some((seq, off));
                    break;
                }
                self.checkpoints.pop_front();
            }
        }
        let Some((head_seq, head_off)) = self.head_end else {
            return;
        };
        let tail_start = self.gap.map_or(head_off, |g| g.off_to);
        let tail_budget = self.max_bytes.saturating_sub(head_off);
        let slack = (self.max_bytes / 16).max(64 * 1024);
        if self.log_len - tail_start <= tail_budget + slack {
            return;
        }
        // Drop whole batches from the front of the tail until it fits the budget.
        let keep_from = self.log_len - tail_budget;
        let mut cut = None;
        while let Some(&(_, off)) = self.checkpoints.front() {
            if off >= keep_from {
                break;
            }
            self.checkpoints.pop_front();
            cut = Some(
                self.checkpoints
                    .front()
                    .copied()
                    .unwrap_or((self.next_seq, self.log_len)),
            );
        }
        let Some((cut_seq, cut_off)) = cut else {
            return;
        };
        if cut_seq <= head_seq {
            return;
        }
        let old_to = self.gap.map_or(head_seq, |g| g.to + 1);
        let gap = Gap {
            from: head_seq,
            to: cut_seq - 1,
            off_from: head_off,
            off_to: cut_off,
        };
        // The gap is announced before the bytes go: a follower that read them from the
        // file checks the gap afterwards, so it can never take punched-out zeros for records.
        self.gap = Some(gap);
        self.log.set_gap(gap);
        // Also on disk: if the daemon dies, the next one still knows the range is gone.
        if let Err(e) = gap.save(&self.log.log_path) {
            tracing::error!(
                run_id = %self.log.run_id,
                "recording the dropped range of the run: {e}"
            );
        }
        match self.log.files.get() {
            Ok(f) => {
                punch(&f.log, tail_start, cut_off - tail_start);
                punch(
                    &f.idx,
                    (old_to - 1) * ENTRY as u64,
                    (cut_seq - old_to) * ENTRY as u64,
                );
            }
            Err(e) => self.note_io_error(e),
        }
    }

    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// Flushes and marks the run ended; followers get the end record.
    #[cfg(test)]
    pub fn finish(self, end: RunEnd) -> Option<Gap> {
        self.log.finish(end);
        self.gap
    }
}

/// Frees a byte range of a file, keeping its size. Where the filesystem cannot punch
/// holes the bytes stay on disk but are still reported as a gap.
fn punch(f: &File, off: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: fallocate on an open descriptor with plain integer arguments.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "this filesystem cannot free the middle of capped logs ({}); \
                 the dropped range is still reported as a gap",
                std::io::Error::last_os_error()
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::follow::{Follower, Item};
    use super::super::{Format, LogConfig};
    use super::*;
    use corral_core::framer::frame;

    fn append_lines(w: &mut LogWriter, lines: &[String]) {
        let mut buf = Vec::new();
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        let mut frames = Vec::new();
        frame(&buf, 1 << 16, true, &mut frames);
        w.append(Stream::Stdout, &buf, &frames, 1_000_000);
    }

    async fn collect(f: &mut Follower) -> (Vec<u64>, Vec<(u64, u64)>) {
        let mut seqs = Vec::new();
        let mut gaps = Vec::new();
        while let Some(item) = f.next().await {
            match item {
                Item::Records { data, .. } => {
                    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                        seqs.push(v["seq"].as_u64().unwrap());
                    }
                }
                Item::Gap { from, to, .. } => gaps.push((from, to)),
                Item::End(_) => break,
            }
        }
        (seqs, gaps)
    }

    #[tokio::test]
    async fn ring_and_file_serve_the_same_dense_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            ring_records: 10,
            ..LogConfig::default()
        };
        let (mut w, log) = LogWriter::create(dir.path(), "r1", &cfg).unwrap();
        for i in 0..100 {
            let lines: Vec<String> = (0..7).map(|j| format!("line {i}-{j}")).collect();
            append_lines(&mut w, &lines);
        }
        w.system("exited with code 0", 2_000_000);
        w.finish(RunEnd {
            status: corral_core::policy::RunStatus::Succeeded,
            exit_code: Some(0),
            signal: None,
        });
        for start in [1, 5, 256, 257, 690, 701, 702] {
            let mut f = Follower::new(log.clone(), start, Format::Ndjson, true);
            let (seqs, gaps) = collect(&mut f).await;
            assert!(gaps.is_empty());
            assert_eq!(seqs, (start..=701).collect::<Vec<_>>(), "start {start}");
        }
        let bytes = std::fs::read(&log.log_path).unwrap();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 700);
    }

    /// The block cache serves followers behind the ring; once the last of them has left
    /// the files it is emptied, so a quiet run keeps nothing its followers once read.
    #[tokio::test]
    async fn the_block_cache_empties_when_no_follower_reads_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            ring_records: 10,
            ..LogConfig::default()
        };
        let (mut w, log) = LogWriter::create(dir.path(), "r3", &cfg).unwrap();
        for i in 0..100 {
            let lines: Vec<String> = (0..7).map(|j| format!("line {i}-{j}")).collect();
            append_lines(&mut w, &lines);
        }
        // Two followers from the start: both read blocks from the files, then the ring.
        let mut a = Follower::new(log.clone(), 1, Format::Ndjson, false);
        let mut b = Follower::new(log.clone(), 1, Format::Ndjson, false);
        let first = a.next().await.expect("a block from the files");
        assert!(matches!(
            first,
            crate::logbook::follow::Item::Records { .. }
        ));
        assert!(
            log.cached_blocks() > 0,
            "a follower behind the ring uses the cache"
        );
        let (seqs, _) = collect(&mut b).await;
        assert_eq!(seqs.len(), 700);
        assert!(
            log.cached_blocks() > 0,
            "still in use by the first follower"
        );
        drop(a);
        assert_eq!(log.cached_blocks(), 0, "nobody reads the files any more");
    }

    #[tokio::test]
    async fn size_cap_keeps_head_and_tail_and_reports_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            ring_records: 4,
            max_bytes: 256 * 1024,
            ..LogConfig::default()
        };
        let (mut w, log) = LogWriter::create(dir.path(), "r2", &cfg).unwrap();
        let mut seq = 0u64;
        for _ in 0..400 {
            let lines: Vec<String> = (0..10)
                .map(|_| {
                    seq += 1;
                    format!("{seq:0>120}")
                })
                .collect();
            append_lines(&mut w, &lines);
        }
        let gap = w.gap().expect("the cap must have dropped a range");
        w.finish(RunEnd {
            status: corral_core::policy::RunStatus::Succeeded,
            exit_code: Some(0),
            signal: None,
        });
        let mut f = Follower::new(log.clone(), 1, Format::Ndjson, true);
        let (seqs, gaps) = collect(&mut f).await;
        assert_eq!(gaps, [(gap.from, gap.to)]);
        let expect: Vec<u64> = (1..gap.from).chain(gap.to + 1..=4000).collect();
        assert_eq!(seqs, expect);
        // Head and tail together fit the cap (plus one batch of slack).
        let kept = (gap.off_from) + (log.stats().bytes - gap.off_to);
        assert!(kept <= 256 * 1024 + 64 * 1024 + 1300, "kept {kept}");
        // The raw ranges are exactly the kept records' bytes.
        let ranges = log.raw_ranges().unwrap();
        let mut raw = Vec::new();
        for (a, b) in ranges {
            let mut buf = vec![0u8; (b - a) as usize];
            log.read_raw(a, &mut buf).unwrap();
            raw.extend_from_slice(&buf);
        }
        let expect_raw: String = expect.iter().map(|s| format!("{s:0>120}\n")).collect();
        assert_eq!(String::from_utf8(raw).unwrap(), expect_raw);
    }

    #[tokio::test]
    async fn a_live_follower_wakes_for_new_records_and_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, log) = LogWriter::create(dir.path(), "r3", &LogConfig::default()).unwrap();
        let mut f = Follower::new(log.clone(), 1, Format::Sse, true);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = f.next().await {
                match item {
                    Item::Records { data, .. } => {
                        got.push(String::from_utf8(data.to_vec()).unwrap())
                    }
                    Item::End(end) => got.push(format!("end {}", end.status)),
                    Item::Gap { .. } => panic!("no gap expected"),
                }
            }
            got
        });
        append_lines(&mut w, &["a".to_string()]);
        append_lines(&mut w, &["b".to_string()]);
        w.finish(RunEnd {
            status: corral_core::policy::RunStatus::Failed,
            exit_code: Some(1),
            signal: None,
        });
        let got = reader.await.unwrap();
        let all = got.concat();
        assert!(all.starts_with("id: 1\ndata: {\"seq\":1,"), "{all}");
        assert!(all.contains("id: 2\ndata: {\"seq\":2,"), "{all}");
        assert!(all.ends_with("end failed"), "{all}");
    }

    /// Followers catching up from the files share the blocks they read: the second one
    /// gets the very batches (and so the encodings) the first one loaded.
    #[tokio::test]
    async fn followers_behind_the_ring_share_file_blocks() {
        use super::super::follow::RawItem;
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            ring_records: 10,
            ..LogConfig::default()
        };
        let (mut w, log) = LogWriter::create(dir.path(), "r4", &cfg).unwrap();
        for i in 0..20 {
            let lines: Vec<String> = (0..100).map(|j| format!("line {i}-{j}")).collect();
            append_lines(&mut w, &lines);
        }
        w.finish(RunEnd {
            status: corral_core::policy::RunStatus::Succeeded,
            exit_code: Some(0),
            signal: None,
        });
        let batches = |log: Arc<RunLog>| async move {
            let mut f = Follower::new(log, 1, Format::Ndjson, false);
            let mut out = Vec::new();
            while let Some(RawItem::Records { batch, from, to }) = f.next_raw().await {
                out.push((batch, from, to));
            }
            out
        };
        let a = batches(log.clone()).await;
        let b = batches(log.clone()).await;
        assert_eq!(a.last().map(|x| x.2), Some(2000));
        assert_eq!(a.len(), 8, "eight blocks of 256, the last one short");
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.1, x.2), (y.1, y.2));
            assert!(
                Arc::ptr_eq(&x.0, &y.0),
                "records {}..={} were read twice",
                x.1,
                x.2
            );
        }
    }

    /// `lines` counts what the process printed, also for a run read back from its files.
    #[test]
    fn a_finished_log_counts_only_process_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = LogWriter::create(dir.path(), "r5", &LogConfig::default()).unwrap();
        w.system("started pid 1", 1);
        append_lines(&mut w, &["a".to_string(), "b".to_string()]);
        w.system("exited with code 0", 2);
        let end = RunEnd {
            status: corral_core::policy::RunStatus::Succeeded,
            exit_code: Some(0),
            signal: None,
        };
        w.finish(end.clone());
        let log = RunLog::open_finished(dir.path(), "r5", None, end).unwrap();
        let st = log.stats();
        assert_eq!((st.last_seq, st.lines, st.bytes), (4, 2, 4));
    }
}
