//! Deterministic sampling of high-volume events for the observer store.
//!
//! Only info-level per-request metrics and heartbeats are thinned; warnings, errors and
//! lifecycle events are always kept. The draw is a counter, not a random number: with
//! rate 0.1 exactly one event in ten is kept, the first one included.

use crate::event::{EventType, Level};

#[derive(Debug, Clone)]
pub struct Sampler {
    enabled: bool,
    rate: f64,
    /// Credit accumulated by `rate` per candidate; an event is kept when it reaches 1.
    credit: f64,
    pub kept: u64,
    pub sampled_out: u64,
}

impl Sampler {
    /// `rate` is the share kept, clamped to [0, 1].
    pub fn new(enabled: bool, rate: f64) -> Self {
        Sampler {
            enabled,
            rate: if rate.is_finite() {
                rate.clamp(0.0, 1.0)
            } else {
                1.0
            },
            credit: 1.0,
            kept: 0,
            sampled_out: 0,
        }
    }

    /// Whether an event of this kind may be thinned at all.
    pub fn is_high_volume(level: Level, event_type: EventType) -> bool {
        level <= Level::Info && matches!(event_type, EventType::Metrics | EventType::Heartbeat)
    }

    /// Decides whether to keep one event.
    pub fn keep(&mut self, level: Level, event_type: EventType) -> bool {
        if !self.enabled || !Self::is_high_volume(level, event_type) {
            self.kept += 1;
            return true;
        }
        if self.credit >= 1.0 - 1e-9 {
            self.credit -= 1.0;
            self.credit += self.rate;
            self.kept += 1;
            true
        } else {
            self.credit += self.rate;
            self.sampled_out += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_in_ten_metrics_deterministically() {
        let mut s = Sampler::new(true, 0.1);
        let kept: Vec<usize> = (0..30)
            .filter(|_| s.keep(Level::Info, EventType::Metrics))
            .collect();
        assert_eq!(kept, [0, 10, 20]);
        assert_eq!((s.kept, s.sampled_out), (3, 27));
    }

    #[test]
    fn never_thins_warnings_errors_or_lifecycle() {
        let mut s = Sampler::new(true, 0.0);
        for _ in 0..100 {
            assert!(s.keep(Level::Warning, EventType::Metrics));
            assert!(s.keep(Level::Error, EventType::Heartbeat));
            assert!(s.keep(Level::Info, EventType::Start));
            assert!(s.keep(Level::Info, EventType::Restart));
        }
        assert_eq!(s.sampled_out, 0);
    }

    #[test]
    fn disabled_keeps_everything_and_rate_one_keeps_everything() {
        for mut s in [Sampler::new(false, 0.1), Sampler::new(true, 1.0)] {
            assert!((0..50).all(|_| s.keep(Level::Info, EventType::Heartbeat)));
        }
    }

    #[test]
    fn rate_zero_keeps_only_the_first() {
        let mut s = Sampler::new(true, 0.0);
        let kept = (0..10)
            .filter(|_| s.keep(Level::Debug, EventType::Metrics))
            .count();
        assert_eq!(kept, 1);
    }
}
