//! Followers: cursors over a run's records, live or historical.
//!
//! A follower holds `(run, next seq)` and nothing else between calls. Each call to
//! [`Follower::next`] returns encoded records starting at its cursor: from the ring when
//! they are still there, from the files (through the shared block cache) when the
//! follower fell behind, an explicit gap when a range no longer exists, and the run's end.
//! Subscribing and reading the snapshot cannot miss a record: the follower marks the
//! watch version seen *before* it looks at the ring, so any record published after the
//! look wakes it.

use super::{Batch, Format, Gap, RunEnd, RunLog, BLOCK};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::watch;

/// What a follower receives.
#[derive(Debug)]
pub enum Item {
    /// Encoded records.
    Records { data: Bytes },
    /// Records `from..=to` no longer exist.
    Gap {
        from: u64,
        to: u64,
        reason: &'static str,
    },
    /// The run ended; nothing follows.
    End(RunEnd),
}

/// What a follower receives, before encoding: the shared batch itself.
pub enum RawItem {
    /// Records `from..=to` of `batch`.
    Records {
        batch: Arc<Batch>,
        from: u64,
        to: u64,
    },
    Gap {
        from: u64,
        to: u64,
        reason: &'static str,
    },
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
    /// Whether this follower is behind the ring, reading the files (see
    /// [`RunLog::enter_files`]).
    in_files: bool,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.set_in_files(false);
    }
}

enum Step {
    Batch(Arc<Batch>),
    Gap(Gap),
    /// Read from the files up to this seq; `true` when the run ended (nothing follows it).
    File(u64, bool),
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
            in_files: false,
        }
    }

    fn set_in_files(&mut self, yes: bool) {
        if self.in_files != yes {
            self.in_files = yes;
            if yes {
                self.log.enter_files();
            } else {
                self.log.leave_files();
            }
        }
    }

    /// The next item, or `None` once the end was returned (or, without `follow`, once
    /// the records that existed have been returned).
    pub async fn next(&mut self) -> Option<Item> {
        Some(match self.next_raw().await? {
            RawItem::Records { batch, from, to } => Item::Records {
                data: batch.slice(self.fmt, &self.log.run_id, from, to),
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
            let step = self.step();
            self.set_in_files(matches!(step, Step::File(..)));
            match step {
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
                Step::File(last, ended) => match self.load(last, ended) {
                    Ok(Some(item)) => return Some(item),
                    Ok(None) => continue,
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
        Step::File(s.last_seq, s.end.is_some())
    }

    /// Serves records from the files, block by block, up to `last`. `None` when the size
    /// cap dropped the records at the cursor meanwhile: the next step reports the gap.
    fn load(&mut self, last: u64, ended: bool) -> std::io::Result<Option<RawItem>> {
        let block = (self.next - 1) / BLOCK;
        let block_first = block * BLOCK + 1;
        let block_last = block_first + BLOCK - 1;
        let cached = self
            .log
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(block);
        let mut limit = u64::MAX;
        let batch = match cached {
            Some(b) => b,
            None => {
                let to = block_last.min(last);
                let entries = self.log.read_entries(block_first, to)?;
                let from_next = &entries[(self.next - block_first) as usize..];
                // A whole block (or the last one of an ended run, which no longer grows)
                // is read whole, even from mid-block, so that every follower after this
                // one can share it.
                let whole = (to == block_last || ended) && entries.iter().all(Option::is_some);
                let run = from_next
                    .iter()
                    .position(Option::is_none)
                    .unwrap_or(from_next.len());
                let read = if whole {
                    Some(self.log.read_batch(block_first, &entries)?)
                } else if run > 0 {
                    Some(self.log.read_batch(self.next, &from_next[..run])?)
                } else {
                    None
                };
                // The size cap announces its gap before it punches the bytes out, so a
                // gap seen now covers anything that may have been read as zeros.
                let gap = self.log.lock().gap;
                let dropped = gap.filter(|g| g.from <= to && g.to >= block_first);
                if let Some(g) = dropped {
                    if (g.from..=g.to).contains(&self.next) {
                        return Ok(None);
                    }
                    if g.from > self.next {
                        limit = g.from - 1;
                    }
                }
                let Some(batch) = read else {
                    // A hole in the index (never written): report it.
                    let from = self.next;
                    let present = from_next.iter().position(|r| r.is_some());
                    self.next = present.map_or(to + 1, |p| self.next + p as u64);
                    return Ok(Some(RawItem::Gap {
                        from,
                        to: self.next - 1,
                        reason: "missing from the log index",
                    }));
                };
                let batch = Arc::new(batch);
                if whole && dropped.is_none() {
                    self.log
                        .cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(block, batch)
                } else {
                    batch
                }
            }
        };
        let to = batch.last_seq().min(last).min(limit);
        let from = self.next;
        self.next = to + 1;
        Ok(Some(RawItem::Records { batch, from, to }))
    }
}

fn tracing_warn(msg: &str) {
    tracing::warn!("{msg}");
}
