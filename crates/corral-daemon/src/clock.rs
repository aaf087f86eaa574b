//! The daemon's one wall clock. Everything that stamps a record, an event or a run reads
//! time here, in the units it stores: seconds (f64) for events and the registry,
//! microseconds (u64) for records. The pure core takes time as an argument instead.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    since_epoch().as_secs_f64()
}

/// Microseconds since the Unix epoch (a record's `ts`).
pub fn now_micros() -> u64 {
    since_epoch().as_micros() as u64
}

/// Milliseconds since the Unix epoch (the head of a run id).
pub fn now_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// Nanoseconds since the Unix epoch (a seed, not a measurement).
pub fn now_nanos() -> u128 {
    since_epoch().as_nanos()
}
