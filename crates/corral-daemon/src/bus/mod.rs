//! The event bus: structured events from the supervisor, parsers, probes and heartbeats
//! go to one place, which keeps a bounded, sampled store of recent events (the observer)
//! and broadcasts every event to live subscribers (SSE, `corral events --follow`).
//!
//! Invariants: publishing never waits for a subscriber (a lagging subscriber is told how
//! many events it missed and resumes from the store by id); the store is bounded by
//! `max_events`; only high-volume info events are sampled away, and they are counted.

use corral_core::event::{Event, EventKind, EventType, Level};
use corral_core::sampling::Sampler;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub max_events: usize,
    pub sampling: bool,
    pub sample_rate: f64,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            max_events: 10_000,
            sampling: true,
            sample_rate: 0.1,
        }
    }
}

/// An event with its place in the store.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: u64,
    pub event: Arc<Event>,
}

struct Store {
    events: VecDeque<Stored>,
    next_id: u64,
    /// One sampler per (task, event type, details.kind), so that a chatty stream (a
    /// heartbeat every second, live `n_gen` progress) cannot thin another one (a
    /// server's request metrics) out of the store.
    samplers: HashMap<(String, EventType, String), Sampler>,
    sampling: bool,
    sample_rate: f64,
    sampled_out: u64,
    by_type: BTreeMap<&'static str, u64>,
}

pub struct Bus {
    pub node: String,
    max_events: usize,
    store: Mutex<Store>,
    tx: broadcast::Sender<Stored>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct BusStats {
    pub by_type: BTreeMap<&'static str, u64>,
    pub sampled_out: u64,
    pub stored: usize,
}

impl Bus {
    pub fn new(node: String, cfg: &ObserverConfig) -> Arc<Bus> {
        Arc::new(Bus {
            node,
            max_events: cfg.max_events.max(1),
            store: Mutex::new(Store {
                events: VecDeque::new(),
                next_id: 1,
                samplers: HashMap::new(),
                sampling: cfg.sampling,
                sample_rate: cfg.sample_rate,
                sampled_out: 0,
                by_type: BTreeMap::new(),
            }),
            tx: broadcast::channel(4096).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stamps and publishes an event (see [`Bus::publish`]).
    pub fn emit(&self, kind: EventKind, task: &str, run_id: &str) -> bool {
        let ts = crate::util::unix_now();
        self.publish(Event::from_kind(kind, ts, &self.node, task, run_id))
    }

    /// Publishes to live subscribers always, and to the store unless sampling thins it.
    /// Returns whether the store kept it.
    pub fn publish(&self, event: Event) -> bool {
        let (stored, kept) = {
            let mut s = self.lock();
            *s.by_type.entry(event.event_type.as_str()).or_default() += 1;
            let mut keep = true;
            if Sampler::is_high_volume(event.level, event.event_type) {
                let (on, rate) = (s.sampling, s.sample_rate);
                keep = s
                    .samplers
                    .entry((
                        event.task.clone(),
                        event.event_type,
                        corral_core::event::shape(&event.details).to_string(),
                    ))
                    .or_insert_with(|| Sampler::new(on, rate))
                    .keep(event.level, event.event_type);
                if !keep {
                    s.sampled_out += 1;
                }
            }
            let id = s.next_id;
            s.next_id += 1;
            let stored = Stored {
                id,
                event: Arc::new(event),
            };
            if keep {
                s.events.push_back(stored.clone());
                while s.events.len() > self.max_events {
                    s.events.pop_front();
                }
            }
            (stored, keep)
        };
        let _ = self.tx.send(stored);
        kept
    }

    /// The newest id given out (0 before the first event).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    /// Stored events after `since` (an id), oldest first, filtered.
    pub fn history(&self, since: u64, filter: &Filter) -> Vec<Stored> {
        self.lock()
            .events
            .iter()
            .filter(|s| s.id > since && filter.matches(&s.event))
            .cloned()
            .collect()
    }

    /// History and a live subscription, taken together so nothing falls between them.
    pub fn subscribe(
        &self,
        since: u64,
        filter: &Filter,
    ) -> (Vec<Stored>, broadcast::Receiver<Stored>) {
        let s = self.lock();
        let rx = self.tx.subscribe();
        let hist = s
            .events
            .iter()
            .filter(|e| e.id > since && filter.matches(&e.event))
            .cloned()
            .collect();
        (hist, rx)
    }

    pub fn stats(&self) -> BusStats {
        let s = self.lock();
        BusStats {
            by_type: s.by_type.clone(),
            sampled_out: s.sampled_out,
            stored: s.events.len(),
        }
    }
}

/// Which events a viewer wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub component: Option<corral_core::event::Component>,
    pub min_level: Option<Level>,
    pub task: Option<String>,
    pub event_type: Option<EventType>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.component.is_none_or(|c| c == e.component)
            && self.min_level.is_none_or(|l| e.level >= l)
            && self.task.as_deref().is_none_or(|t| t == e.task)
            && self.event_type.is_none_or(|t| t == e.event_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::event::Component;

    fn kind(level: Level, t: EventType) -> EventKind {
        EventKind::new(Component::Coordinator, level, t, "m")
    }

    #[test]
    fn store_is_bounded_and_sampling_is_counted() {
        let bus = Bus::new(
            "n".into(),
            &ObserverConfig {
                max_events: 5,
                sampling: true,
                sample_rate: 0.5,
            },
        );
        for _ in 0..10 {
            bus.emit(kind(Level::Info, EventType::Metrics), "t", "r");
        }
        for _ in 0..4 {
            bus.emit(kind(Level::Error, EventType::Error), "t", "r");
        }
        let st = bus.stats();
        assert_eq!(st.sampled_out, 5);
        assert_eq!(st.stored, 5);
        assert_eq!(st.by_type["metrics"], 10);
        let errors = bus.history(
            0,
            &Filter {
                min_level: Some(Level::Warning),
                ..Filter::default()
            },
        );
        assert_eq!(errors.len(), 4);
    }

    #[test]
    fn each_task_and_type_is_sampled_on_its_own() {
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        for _ in 0..10 {
            bus.emit(kind(Level::Info, EventType::Heartbeat), "a", "r");
        }
        // The heartbeats of `a` used their credit; the first metrics event of `a` and
        // the first heartbeat of `b` are still kept.
        assert!(bus.emit(kind(Level::Info, EventType::Metrics), "a", "r"));
        assert!(bus.emit(kind(Level::Info, EventType::Heartbeat), "b", "r"));
        assert_eq!(bus.stats().sampled_out, 9);
    }

    #[test]
    fn live_progress_does_not_thin_request_metrics() {
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        let metrics = |shape: &str| kind(Level::Info, EventType::Metrics).with("kind", shape);
        for _ in 0..10 {
            bus.emit(metrics("progress"), "a", "r");
        }
        // Progress used its own credit; the first finished request is still kept.
        assert!(bus.emit(metrics("request"), "a", "r"));
        assert!(!bus.emit(metrics("request"), "a", "r"));
        assert_eq!(bus.stats().sampled_out, 10);
    }

    #[tokio::test]
    async fn live_subscribers_get_what_sampling_keeps_out_of_the_store() {
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        let (_, mut rx) = bus.subscribe(0, &Filter::default());
        let kept: Vec<bool> = (0..3)
            .map(|_| bus.emit(kind(Level::Info, EventType::Heartbeat), "t", "r"))
            .collect();
        assert_eq!(kept, [true, false, false]);
        for id in 1..=3 {
            assert_eq!(rx.recv().await.unwrap().id, id);
        }
        assert_eq!(bus.history(0, &Filter::default()).len(), 1);
        assert_eq!(bus.last_id(), 3);
    }

    #[tokio::test]
    async fn subscribe_gets_history_then_live_without_gap() {
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        bus.emit(kind(Level::Info, EventType::Start), "t", "r");
        let (hist, mut rx) = bus.subscribe(0, &Filter::default());
        bus.emit(kind(Level::Info, EventType::Stop), "t", "r");
        assert_eq!(hist.len(), 1);
        let live = rx.recv().await.unwrap();
        assert_eq!(live.id, 2);
        assert_eq!(live.event.event_type, EventType::Stop);
    }
}
