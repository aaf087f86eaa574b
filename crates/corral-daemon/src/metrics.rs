//! corral's own counters, a leaf every part may count into; `/metrics` (in the API)
//! renders them in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
pub static RECORDS: AtomicU64 = AtomicU64::new(0);
pub static BYTES: AtomicU64 = AtomicU64::new(0);
pub static FOLLOWERS: AtomicU64 = AtomicU64::new(0);

/// Counts a connected follower for as long as it lives.
pub struct FollowerGuard(());

impl FollowerGuard {
    pub fn new() -> FollowerGuard {
        FOLLOWERS.fetch_add(1, Ordering::Relaxed);
        FollowerGuard(())
    }
}

impl Default for FollowerGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        FOLLOWERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
