//! Followers: cursors over a run's records, live or historical.
//!
//! A follower holds `(run, next seq)` and nothing else between calls. Each call to
//! [`Follower::next`] returns encoded records starting at its cursor: from the ring when
//! they are still there, from the files (through the shared block cache) when the
//! follower fell behind, an explicit gap when a range no longer exists, and the run's end.
//! Subscribing and reading the snapshot cannot miss a record: the follower marks the
//! watch version seen *before* it looks at the ring, so any record published after the
//! look wakes it.

use super::{Batch, Format, Gap, Rec, RunEnd, RunLog, BLOCK};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::watch;

/// What a follower receives.
#[derive(Debug)]
pub enum Item {
    /// Encoded records `first..=last`.
    Records { data: Bytes, first: u64, last: u64 },
    /// Records `from..=to` no longer exist.
    Gap { from: u64, to: u64, reason: &'static str },
    /// The run ended; nothing follows.
    End(RunEnd),
}

/// What a follower receives, before encoding: the shared batch itself.
pub enum RawItem {
    /// Records `from..=to` of `batch`.
    Records { batch: Arc<Batch>, from: u64, to: u64 },
    Gap { from: u64, to: u64, reason: &'static str },
    End(RunEnd),
}

pub struct Follower {
    log: Arc<RunLog>,
    next: u64,
    rx: watch::Receiver<u64>,
    fmt: Format,
    /// Stop at the current end instead of waiting for new records.
    follow: bool,
    done: bool,
}

enum Step {
    Batch(Arc<Batch>),
    Gap(Gap),
    File(u64),
    Wait,
    End(RunEnd),
    Done,
}

impl Follower {
    /// A follower whose first record is `start` (1 for the whole run).
    pub fn new(log: Arc<RunLog>, start: u64, fmt: Format, follow: bool) -> Follower {
        let rx = log.subscribe();
        Follower {
            log,
            next: start.max(1),
            rx,
            fmt,
            follow,
            done: false,
        }
    }

    /// The seq the next item starts at.
    pub fn cursor(&self) -> u64 {
        self.next
    }

    pub fn log(&self) -> &Arc<RunLog> {
        &self.log
    }

    /// The next item, or `None` once the end was returned (or, without `follow`, once
    /// the records that existed have been returned).
    pub async fn next(&mut self) -> Option<Item> {
        Some(match self.next_raw().await? {
            RawItem::Records { batch, from, to } => Item::Records {
                data: batch.slice(self.fmt, &self.log.run_id, from, to),
                first: from,
                last: to,
            },
            RawItem::Gap { from, to, reason } => Item::Gap { from, to, reason },
            RawItem::End(end) => Item::End(end),
        })
    }

    /// Like [`Follower::next`], but hands out the batch for callers that read the raw
    /// lines (parsers) rather than send them.
    pub async fn next_raw(&mut self) -> Option<RawItem> {
        loop {
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            match self.step() {
                Step::Batch(batch) => {
                    let to = batch.last_seq();
                    let from = self.next;
                    self.next = to + 1;
                    return Some(RawItem::Records { batch, from, to });
                }
                Step::Gap(g) => {
                    let from = self.next;
                    self.next = g.to + 1;
                    return Some(RawItem::Gap {
                        from,
                        to: g.to,
                        reason: "dropped by the log size cap",
                    });
                }
                Step::File(last) => match self.load(last) {
                    Ok(item) => return Some(item),
                    Err(e) => {
                        // The files are unreadable (deleted run, disk error): say so as a
                        // gap up to what exists, rather than stalling the follower.
                        let from = self.next;
                        self.next = last + 1;
                        tracing_warn(&format!("reading run {}: {e}", self.log.run_id));
                        return Some(RawItem::Gap {
                            from,
                            to: last,
                            reason: "log file unreadable",
                        });
                    }
                },
                Step::End(end) => {
                    self.done = true;
                    return Some(RawItem::End(end));
                }
                Step::Done => {
                    self.done = true;
                    return None;
                }
                Step::Wait => {
                    if self.rx.changed().await.is_err() {
                        // The writer is gone without an end mark: nothing more will come.
                        self.done = true;
                        return None;
                    }
                }
            }
        }
    }

    fn step(&self) -> Step {
        let s = self.log.lock();
        if self.next > s.last_seq {
            return match (&s.end, self.follow) {
                (Some(end), _) => Step::End(end.clone()),
                (None, true) => Step::Wait,
                (None, false) => Step::Done,
            };
        }
        if let Some(g) = s.gap.filter(|g| self.next >= g.from && self.next <= g.to) {
            return Step::Gap(g);
        }
        let ring_first = s.ring.front().map_or(u64::MAX, |b| b.first_seq);
        if self.next >= ring_first {
            // Batches are consecutive: index straight to the one holding `next`.
            let i = s.ring.partition_point(|b| b.last_seq() < self.next);
            return Step::Batch(s.ring[i].clone());
        }
        // Behind the ring: read from the files, where everything up to `last_seq` is.
        Step::File(s.last_seq)
    }

    /// Serves records from the files, block by block, up to `last`.
    fn load(&mut self, last: u64) -> std::io::Result<RawItem> {
        let block = (self.next - 1) / BLOCK;
        let block_first = block * BLOCK + 1;
        let block_last = block_first + BLOCK - 1;
        let cached = self.log.cache.lock().unwrap_or_else(|e| e.into_inner()).get(block);
        let batch = match cached {
            Some(b) => b,
            None => {
                let to = block_last.min(last);
                let records = self.log.read_range(block_first, to)?;
                let from_next = &records[(self.next - block_first) as usize..];
                let present = from_next.iter().position(|r| r.is_some());
                if present != Some(0) {
                    // A hole in the index (punched, or never written): report it.
                    let from = self.next;
                    self.next = present.map_or(to + 1, |p| self.next + p as u64);
                    return Ok(RawItem::Gap {
                        from,
                        to: self.next - 1,
                        reason: "missing from the log index",
                    });
                }
                let run = from_next
                    .iter()
                    .position(|r| r.is_none())
                    .unwrap_or(from_next.len());
                if self.next == block_first && to == block_last && run == from_next.len() {
                    let batch = Arc::new(build_batch(block_first, &records));
                    self.log
                        .cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(block, batch.clone());
                    batch
                } else {
                    Arc::new(build_batch(self.next, &from_next[..run]))
                }
            }
        };
        let to = batch.last_seq().min(last);
        let from = self.next;
        self.next = to + 1;
        Ok(RawItem::Records { batch, from, to })
    }
}

fn build_batch(first_seq: u64, records: &[Option<(super::index::Entry, Vec<u8>)>]) -> Batch {
    let mut data = Vec::new();
    let mut recs = Vec::with_capacity(records.len());
    for (e, bytes) in records.iter().flatten() {
        recs.push(Rec {
            off: data.len() as u32,
            len: bytes.len() as u32,
            stream: e.stream,
            partial: e.partial,
            ts_micros: e.ts_micros,
        });
        data.extend_from_slice(bytes);
    }
    Batch::new(first_seq, Bytes::from(data), recs)
}

fn tracing_warn(msg: &str) {
    eprintln!("corral: warning: {msg}");
}
