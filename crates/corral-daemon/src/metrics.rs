//! corral's own counters and the Prometheus plumbing: a leaf every part may count into
//! (it imports nothing of the daemon). The exposition goes through `prometheus-client`:
//! long-lived series (a kind's request counters and histograms) are registered once in
//! the daemon's [`Registry`]; series read from state at scrape time (tasks, the capture
//! counters below, the bus) are [`Collector`]s written with [`counter`] and [`gauge`].
//! `/metrics` (in the API) renders the registry with [`render`].
//!
//! The capture hot path counts with plain atomics (`RECORDS.fetch_add`), read by
//! [`Capture`] at scrape time: no registry lookup, no lock, on the path.
//!
//! Names: prometheus-client appends `_total` to counters, so counters are named here
//! without it (`corral_records_captured` is exposed as `corral_records_captured_total`).

use prometheus_client::encoding::{EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub use prometheus_client::encoding::DescriptorEncoder;
pub use prometheus_client::registry::Registry;

/// A counter of fractional values (seconds).
pub type CounterF64 = prometheus_client::metrics::counter::Counter<f64, AtomicU64>;
/// A gauge of fractional values (tokens per second).
pub type GaugeF64 = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

pub static RECORDS: AtomicU64 = AtomicU64::new(0);
pub static BYTES: AtomicU64 = AtomicU64::new(0);
pub static FOLLOWERS: AtomicU64 = AtomicU64::new(0);
/// Failed writes of run logs and registry rows (a full disk, an I/O error).
pub static LOG_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static REGISTRY_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

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

/// Writes a counter family computed at scrape time: `name` without `_total`, one
/// sample per label set (an empty array for a counter without labels).
pub fn counter<L, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeCounterValue,
{
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        m.encode_family(&labels)?
            .encode_counter::<[(&str, &str); 0], V, f64>(&v, None)?;
    }
    Ok(())
}

/// Writes a gauge family computed at scrape time.
pub fn gauge<L, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeGaugeValue,
{
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// No labels.
pub const NO_LABELS: [(&str, &str); 0] = [];

/// The capture counters: `corral_records_captured_total`, `corral_bytes_captured_total`,
/// `corral_followers`, and the write failures: `corral_log_write_errors_total`,
/// `corral_registry_write_errors_total`.
#[derive(Debug)]
pub struct Capture;

impl Collector for Capture {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        counter(
            &mut enc,
            "corral_records_captured",
            "Log records captured.",
            [(NO_LABELS, RECORDS.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut enc,
            "corral_bytes_captured",
            "Log bytes captured.",
            [(NO_LABELS, BYTES.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut enc,
            "corral_log_write_errors",
            "Writes of run logs that failed (a full disk?); the records still reached live followers.",
            [(NO_LABELS, LOG_WRITE_ERRORS.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut enc,
            "corral_registry_write_errors",
            "Writes of the run registry that failed; a run's final row is retried until it is written.",
            [(NO_LABELS, REGISTRY_WRITE_ERRORS.load(Ordering::Relaxed))],
        )?;
        gauge(
            &mut enc,
            "corral_followers",
            "Connected log followers.",
            [(NO_LABELS, FOLLOWERS.load(Ordering::Relaxed))],
        )
    }
}

/// The registry in the Prometheus text format (version 0.0.4; see [`CONTENT_TYPE`]).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail, and no collector of ours returns an error.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_series_keep_their_names_types_and_labels() {
        #[derive(Debug)]
        struct Example;
        impl Collector for Example {
            fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
                counter(
                    &mut enc,
                    "corral_x_restarts",
                    "Restarts.",
                    [([("task", "a\"b")], 3u64)],
                )?;
                gauge(&mut enc, "corral_x_up", "Up.", [(NO_LABELS, 1i64)])
            }
        }
        let mut r = Registry::default();
        r.register_collector(Box::new(Example));
        assert_eq!(
            render(&r),
            "# HELP corral_x_restarts_total Restarts.\n\
             # TYPE corral_x_restarts_total counter\n\
             corral_x_restarts_total{task=\"a\\\"b\"} 3\n\
             # HELP corral_x_up Up.\n\
             # TYPE corral_x_up gauge\n\
             corral_x_up 1\n"
        );
    }
}
