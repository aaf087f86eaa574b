//! Small helpers shared by the daemon and the CLI.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::clock::unix_now;

/// A pseudo-random u64 for jitter and ids; not for secrets.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(crate::clock::now_nanos());
    h.finish()
}

/// A new run id: milliseconds since the epoch and 16 random bits, in hex, so ids sort
/// by start time.
pub fn new_run_id() -> String {
    let ms = crate::clock::now_millis();
    format!("{ms:011x}{:04x}", random_u64() & 0xffff)
}

/// Hands memory the allocator keeps free back to the system (glibc keeps freed chunks
/// in its arenas, one per runtime worker). Called when a task goes away: the runs, rings,
/// block caches and encodings of a task and its followers were the daemon's large
/// allocations, and a long-lived daemon should shrink back after them.
pub fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Task names become directory names: letters, digits, `.`, `_`, `-`, at most 64.
pub fn validate_task_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad task name `{name}`: use 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.` or `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_unique_and_hex() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.len(), 15);
    }

    #[test]
    fn task_names_are_path_safe() {
        for ok in ["job", "llama-0", "a.b_c"] {
            assert!(validate_task_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            &"x".repeat(65),
            "sp ace",
        ] {
            assert!(validate_task_name(bad).is_err(), "{bad}");
        }
    }
}
