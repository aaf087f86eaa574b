//! The raw lines of the runs on `{prefix}:raw` (DESIGN.md "Raw line event").
//!
//! [`RawWatcher`] is a [`RunWatcher`]: for each new run while the publisher is on and
//! `raw_lines` is not `none`, it follows the run's log like any viewer (from the first
//! record of a new run; from what comes next for a run taken back from an earlier
//! daemon, which published the rest), keeps the lines [`RawLines`] asks for, applies the
//! daemon-wide cap of `raw_lines_per_second` (what it holds back is counted), and hands
//! them to the sink through a bounded queue: a full queue drops the line and counts it,
//! so the follower never waits for Redis. It stops following once the publisher is
//! turned off or `raw_lines` set to `none`; runs started meanwhile are not followed.
//! `system` records (corral's own notes) are not the run's lines and are never sent.

use super::{RawLines, Redis};
use crate::logbook::follow::{Follower, RawItem};
use crate::logbook::Format;
use crate::supervisor::kind::{RunContext, RunWatcher};
use corral_core::record::Stream;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Raw lines that may wait for Redis before new ones are dropped.
pub const CAPACITY: usize = 10_000;

/// One line of a run, as published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawLine {
    /// The record's time, in seconds since the epoch.
    pub timestamp: f64,
    /// The task's name.
    #[serde(serialize_with = "shared_str")]
    pub source: Arc<str>,
    pub line: String,
    pub seq: u64,
    #[serde(serialize_with = "shared_str")]
    pub run_id: Arc<str>,
    #[serde(serialize_with = "shared_str")]
    pub node: Arc<str>,
}

/// `Arc<str>` as a JSON string (shared by every line of a run, not copied per line).
fn shared_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// Whether a line is one of the important ones that `raw_lines = "important"` publishes:
/// model loading, RPC distribution, warnings and errors. The rule, case-insensitive:
/// the line holds one of [`IMPORTANT_WORDS`], or it is a llama.cpp log line whose level
/// letter (after the timestamp, `0.00.003.882 W srv …`) is `W` or `E`.
pub fn important(line: &str) -> bool {
    let mut words = line.split_ascii_whitespace();
    if let (Some(ts), Some(level)) = (words.next(), words.next()) {
        let is_ts = !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if is_ts && (level == "W" || level == "E") {
            return true;
        }
    }
    let lower = line.to_ascii_lowercase();
    IMPORTANT_WORDS.iter().any(|w| lower.contains(w))
}

/// The words of an important line (lower case; `load` also covers `offload`).
pub const IMPORTANT_WORDS: &[&str] = &[
    "error", "warn", "fail", "fatal", "panic", "abort", "model", "load", "rpc", "backend",
];

/// A cap of `n` per second of a clock: each whole second admits at most `n`.
#[derive(Debug, Default)]
pub struct RateCap {
    second: u64,
    used: u64,
}

impl RateCap {
    /// Whether one more may go in second `now` (seconds of any monotonic clock).
    pub fn admit(&mut self, now: u64, per_second: u64) -> bool {
        if now != self.second {
            self.second = now;
            self.used = 0;
        }
        if self.used < per_second {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// The queue from the watchers to the sink.
pub(super) fn queue() -> (mpsc::Sender<RawLine>, mpsc::Receiver<RawLine>) {
    mpsc::channel(CAPACITY)
}

/// The [`RunWatcher`] of the raw lines; register it with
/// [`Supervisor::add_run_watcher`](crate::supervisor::Supervisor::add_run_watcher).
pub struct RawWatcher {
    pub(super) redis: Redis,
}

impl RunWatcher for RawWatcher {
    fn watch(&self, run: &RunContext<'_>) {
        let wanted = {
            let cfg = self.redis.inner.config.borrow();
            cfg.enabled && cfg.raw_lines != RawLines::None
        };
        if !wanted {
            return;
        }
        let redis = self.redis.clone();
        let log = run.log.clone();
        let source: Arc<str> = run.spec.name.as_str().into();
        let run_id: Arc<str> = run.run_id.into();
        let node: Arc<str> = run.bus.node.as_str().into();
        // A new run's log is empty; a taken-back run's holds what was published before.
        let start = *log.subscribe().borrow() + 1;
        tokio::spawn(async move {
            let mut follower = Follower::new(log, start, Format::Ndjson, true);
            while let Some(item) = follower.next_raw().await {
                let batch = match item {
                    RawItem::Records { batch, from, to } => (batch, from, to),
                    RawItem::Gap { .. } => continue,
                    RawItem::End(_) => return,
                };
                let (which, per_second) = {
                    let cfg = redis.inner.config.borrow();
                    (
                        cfg.enabled.then_some(cfg.raw_lines),
                        cfg.raw_lines_per_second,
                    )
                };
                let which = match which {
                    Some(RawLines::None) | None => return,
                    Some(w) => w,
                };
                let (batch, from, to) = batch;
                for seq in from..=to {
                    let i = (seq - batch.first_seq) as usize;
                    let rec = &batch.recs[i];
                    if rec.stream == Stream::System {
                        continue;
                    }
                    let line = String::from_utf8_lossy(batch.content(i));
                    if which == RawLines::Important && !important(&line) {
                        continue;
                    }
                    if !redis.admit_raw(per_second) {
                        redis.count_raw(RawCount::HeldBack, 1);
                        continue;
                    }
                    let raw = RawLine {
                        timestamp: rec.ts_micros as f64 / 1e6,
                        source: source.clone(),
                        line: line.into_owned(),
                        seq,
                        run_id: run_id.clone(),
                        node: node.clone(),
                    };
                    match redis.inner.raw_tx.try_send(raw) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            redis.count_raw(RawCount::Dropped, 1)
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        });
    }
}

/// The raw-line counters.
#[derive(Debug, Clone, Copy)]
pub enum RawCount {
    Published,
    HeldBack,
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines from real llama-server and rpc-server logs (the parser's fixtures in
    /// `corral-core/tests/fixtures/llama/`), and whether each is important.
    #[test]
    fn important_lines_are_model_loading_rpc_warnings_and_errors() {
        let cases = [
            ("0.00.010.243 I srv    load_model: loading model 'tiny.gguf'", true),
            ("0.00.284.911 I srv  llama_server: model loaded", true),
            (
                "0.00.003.882 W srv  llama_server: security: no API key is set and CORS allows all origins",
                true,
            ),
            ("0.00.002.485 I srv  llama_server: initializing ...", false),
            (
                "0.07.439.640 I slot get_availabl: id  3 | task -1 | selected slot by LRU, t_last = -1",
                false,
            ),
            (
                "0.07.476.181 I slot print_timing: id  3 | task 0 |        eval time =      34.95 ms /   120 tokens",
                false,
            ),
            (
                "0.00.006.088 E llama_model_load: error loading model: llama_model_loader: failed to load model from /nonexistent/model.gguf",
                true,
            ),
            ("0.00.512.332 I load_tensors: offloaded 65/65 layers to GPU", true),
            (
                "\x1b[34m0.00.061.502\x1b[0m \x1b[32mI \x1b[0mllama_model_load_from_file_impl: using device RPC[10.0.0.2:50052] (10.0.0.2:50052) - 24105 MiB free",
                true,
            ),
            ("         Never expose the RPC server to an open network!", true),
            ("Accepted client connection, free_mem=12396265472, total_mem=12622168064", false),
            ("0.00.012.000 E something odd", true),
            ("main: server is listening on http://127.0.0.1:8080 - starting the main loop", false),
            ("hello", false),
            ("ERROR: disk on fire", true),
            ("Warning: low memory", true),
            ("thread 'main' panicked at src/main.rs:1", true),
            ("", false),
        ];
        for (line, want) in cases {
            assert_eq!(important(line), want, "{line:?}");
        }
    }

    #[test]
    fn the_cap_admits_n_per_second_and_starts_again_each_second() {
        let mut cap = RateCap::default();
        let admitted = |cap: &mut RateCap, now| (0..25).filter(|_| cap.admit(now, 10)).count();
        assert_eq!(admitted(&mut cap, 0), 10);
        assert_eq!(admitted(&mut cap, 0), 0);
        assert_eq!(admitted(&mut cap, 1), 10);
        assert_eq!(admitted(&mut cap, 5), 10);
        assert!(RateCap::default().admit(7, 1));
    }
}
