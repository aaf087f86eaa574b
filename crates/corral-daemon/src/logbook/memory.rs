//! The daemon-wide budget of ring memory.
//!
//! Each run keeps its newest `ring_records` records in memory for new and slow
//! followers; a thousand runs that each printed a thousand lines would keep them all, for
//! as long as they run. So the rings share one budget of bytes: when the rings together
//! hold more, the oldest batches of the runs that published least recently are let go
//! (down to three quarters of the budget, so that a busy daemon trims now and then, not
//! on every batch). What a ring lets go is still in the run's files, where a follower
//! that needs it reads it (see `follow`): the files are the source of truth, memory only
//! a window.
//!
//! The run that published last always keeps its newest batch, so the rings together
//! hold at most the budget plus that one batch.
//!
//! A batch is charged what the block cache charges it: its raw bytes and room for the
//! two encodings followers may ask of it.
//!
//! Invariants: a ring's lock is never held while the list of rings is locked; one trim
//! runs at a time, and a publish that finds one running goes on without waiting.

use super::RunLog;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What the rings hold now, in charged bytes.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// The budget; unlimited until [`set_budget`].
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Publishes, in order: the run that published least recently has the smallest tick.
static TICK: AtomicU64 = AtomicU64::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static RINGS: Mutex<BTreeMap<u64, Weak<RunLog>>> = Mutex::new(BTreeMap::new());
static TRIMMING: Mutex<()> = Mutex::new(());

/// Sets the bytes all rings together may hold (at least 1 MiB).
pub fn set_budget(bytes: usize) {
    BUDGET.store(bytes.max(1 << 20), Ordering::Relaxed);
}

/// The budget in bytes.
pub fn budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// Charged bytes the rings hold now.
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// What a batch of `data` bytes in `recs` records is charged.
pub(super) fn cost(data: usize, recs: usize) -> usize {
    data * 3 + recs * 64
}

pub(super) fn charge(bytes: usize) {
    HELD.fetch_add(bytes, Ordering::Relaxed);
}

pub(super) fn release(bytes: usize) {
    HELD.fetch_sub(bytes, Ordering::Relaxed);
}

/// A new id for a ring, and its place in the list of rings trimmed when over budget.
pub(super) fn register(log: &Arc<RunLog>) {
    RINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(log.ring_id, Arc::downgrade(log));
}

pub(super) fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub(super) fn unregister(id: u64) {
    RINGS.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

/// A run published: its tick (to be stored as the run's `published` before
/// [`trim_if_over`] orders the runs by it).
pub(super) fn published() -> u64 {
    TICK.fetch_add(1, Ordering::Relaxed) + 1
}

/// Trims when the rings are over budget.
pub(super) fn trim_if_over() {
    if held() > BUDGET.load(Ordering::Relaxed) {
        trim();
    }
}

/// Lets go of the oldest batches of the least recently published runs until the rings
/// hold at most three quarters of the budget.
fn trim() {
    let Ok(_one) = TRIMMING.try_lock() else {
        return;
    };
    let target = BUDGET.load(Ordering::Relaxed) / 4 * 3;
    let mut logs: Vec<Arc<RunLog>> = RINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    logs.sort_by_key(|l| l.published.load(Ordering::Relaxed));
    let newest = logs.len().saturating_sub(1);
    for (i, log) in logs.iter().enumerate() {
        if held() <= target {
            break;
        }
        // The run that published last keeps its newest batch, whatever its size: the
        // rings never all go empty while runs print (one batch can be most of a small
        // budget when a busy run's output arrives in one read).
        let keep = usize::from(i == newest);
        log.trim_ring(keep, || held() > target);
    }
    // The logs are dropped here, outside the list's lock (a last reference ends a run's
    // log, which takes it off the list).
    drop(logs);
    // Trimming runs on the thread that published, which may be capture's: the allocator
    // is asked to give the memory back on a blocking thread of the runtime, one request
    // at a time (requests made meanwhile are covered by the one in flight).
    if !GIVING_BACK.swap(true, Ordering::AcqRel) {
        let give_back = || {
            GIVING_BACK.store(false, Ordering::Release);
            crate::util::give_back_memory();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(give_back);
            }
            Err(_) => give_back(),
        }
    }
}

/// Whether a request to give memory back is in flight.
static GIVING_BACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
