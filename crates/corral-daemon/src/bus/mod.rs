//! The event bus: structured events from the supervisor, parsers, probes and heartbeats
//! go to one place, which numbers them, marks which ones history keeps (sampling), and
//! hands every one of them to each registered [`Sink`] (the observer store, the live
//! stream, Redis) through that sink's own bounded queue.
//!
//! Invariants:
//! - publishing never waits for a sink: a full queue drops its oldest event and counts
//!   it, per sink (`corral_sink_events_dropped_total`), and no other sink notices;
//! - ids are dense and increase in publishing order, and every queue holds its events in
//!   id order, so a sink (or a viewer behind one) that lost some sees the gap by id (the
//!   store and the live stream get every id; a sink that takes no remote events sees
//!   their ids as gaps, and none of those reads ids);
//! - sampling only marks events ([`Stored::kept`]): it thins what history sinks keep,
//!   never what a sink receives. Only high-volume info events are sampled away, and they
//!   are counted;
//! - events of other nodes (a hub's, [`Bus::publish_remote`]) go only to the sinks that
//!   take them ([`Sink::remote`]): the store and the live stream, never the publisher;
//! - after [`Bus::close`] nothing more is queued; each sink gets what was queued before,
//!   then the end of its queue, and the close waits (bounded) for them to flush.

mod sink;

pub use sink::{Batch, Queue, Sink, SinkStats, DEFAULT_CAPACITY};

use corral_core::event::{Event, EventKind, EventType, Level};
use corral_core::sampling::Sampler;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The observer's settings (`SOLLOL_OBSERVER_*`): how many events the store holds, and
/// how the bus samples high-volume events for it.
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

/// A published event with its id.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: u64,
    pub event: Arc<Event>,
    /// Whether sampling keeps it for history (the observer store); live viewers get
    /// every event either way.
    pub kept: bool,
}

struct State {
    next_id: u64,
    /// One sampler per (node, task, event type, details.kind), so that a chatty stream
    /// (a heartbeat every second, live `n_gen` progress) cannot thin another one (a
    /// server's request metrics, or on a hub another node's task of the same name) out
    /// of the store.
    samplers: HashMap<(String, String, EventType, String), Sampler>,
    sampling: bool,
    sample_rate: f64,
    sampled_out: u64,
    by_type: BTreeMap<&'static str, u64>,
    sinks: Vec<Arc<sink::Shared>>,
    closed: bool,
}

pub struct Bus {
    pub node: String,
    state: Mutex<State>,
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct BusStats {
    pub by_type: BTreeMap<&'static str, u64>,
    pub sampled_out: u64,
    pub sinks: Vec<SinkStats>,
}

impl Bus {
    /// A bus with no sink yet; `cfg` says how to sample (see [`ObserverConfig`]).
    pub fn new(node: String, cfg: &ObserverConfig) -> Arc<Bus> {
        Arc::new(Bus {
            node,
            state: Mutex::new(State {
                next_id: 1,
                samplers: HashMap::new(),
                sampling: cfg.sampling,
                sample_rate: cfg.sample_rate,
                sampled_out: 0,
                by_type: BTreeMap::new(),
                sinks: Vec::new(),
                closed: false,
            }),
            tasks: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a sink its queue and starts it in a task of its own (on the current tokio
    /// runtime). It receives every event published from now on.
    pub fn register<S: Sink>(&self, sink: S) {
        let shared = sink::Shared::new(sink.name(), sink.capacity(), sink.remote());
        {
            let mut s = self.lock();
            if s.closed {
                shared.close();
            } else {
                s.sinks.push(shared.clone());
            }
        }
        let name = sink.name();
        let task = tokio::spawn(sink.run(Queue::new(shared)));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, task));
    }

    /// Stamps and publishes an event (see [`Bus::publish`]).
    pub fn emit(&self, kind: EventKind, task: &str, run_id: &str) -> bool {
        let ts = crate::util::unix_now();
        self.publish(Event::from_kind(kind, ts, &self.node, task, run_id))
    }

    /// Numbers an event, decides whether history keeps it, and queues it for every sink.
    /// Returns whether history keeps it. Never waits for a sink; after [`Bus::close`] it
    /// drops the event.
    pub fn publish(&self, event: Event) -> bool {
        self.publish_to(event, false)
    }

    /// Publishes an event of another node, as a hub read it from Redis (its `node`,
    /// timestamp and run kept): numbered and sampled like any event, but handed only to
    /// the sinks that take remote events ([`Sink::remote`]), so that it reaches the
    /// store and the live stream and never this node's publisher (no loop through Redis).
    pub fn publish_remote(&self, event: Event) -> bool {
        self.publish_to(event, true)
    }

    fn publish_to(&self, event: Event, remote: bool) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        // `corral_events_total` counts this node's events: what its publisher is handed.
        if !remote {
            *s.by_type.entry(event.event_type.as_str()).or_default() += 1;
        }
        let mut kept = true;
        if Sampler::is_high_volume(event.level, event.event_type) {
            let (on, rate) = (s.sampling, s.sample_rate);
            kept = s
                .samplers
                .entry((
                    event.node.clone(),
                    event.task.clone(),
                    event.event_type,
                    corral_core::event::shape(&event.details).to_string(),
                ))
                .or_insert_with(|| Sampler::new(on, rate))
                .keep(event.level, event.event_type);
            if !kept {
                s.sampled_out += 1;
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        let stored = Stored {
            id,
            event: Arc::new(event),
            kept,
        };
        // Queued under the bus lock, so that every queue is in id order. A push only
        // takes the queue's own lock for a moment: no sink can hold this up.
        for q in s.sinks.iter().filter(|q| !remote || q.remote) {
            q.push(stored.clone());
        }
        kept
    }

    /// The newest id given out (0 before the first event).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    pub fn stats(&self) -> BusStats {
        let s = self.lock();
        BusStats {
            by_type: s.by_type.clone(),
            sampled_out: s.sampled_out,
            sinks: s.sinks.iter().map(|q| q.stats()).collect(),
        }
    }

    /// Stops queueing, lets every sink take what is queued, and waits for the sinks to
    /// return, at most `within` in all. Returns the names of the sinks that had not
    /// finished by then (they are abandoned).
    pub async fn close(&self, within: Duration) -> Vec<&'static str> {
        {
            let mut s = self.lock();
            s.closed = true;
            for q in &s.sinks {
                q.close();
            }
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = tokio::time::Instant::now() + within;
        let mut late = Vec::new();
        for (name, task) in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                late.push(name);
            }
        }
        late
    }
}

/// Which events a viewer wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub component: Option<corral_core::event::Component>,
    pub min_level: Option<Level>,
    pub task: Option<String>,
    pub event_type: Option<EventType>,
    /// Only events of this node (on a hub, whose timeline holds the fleet's).
    pub node: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.component.is_none_or(|c| c == e.component)
            && self.min_level.is_none_or(|l| e.level >= l)
            && self.task.as_deref().is_none_or(|t| t == e.task)
            && self.event_type.is_none_or(|t| t == e.event_type)
            && self.node.as_deref().is_none_or(|n| n == e.node)
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

    /// Collects what it is given, and says when its queue ended.
    struct Collect(tokio::sync::mpsc::UnboundedSender<Batch>);

    impl Sink for Collect {
        fn name(&self) -> &'static str {
            "collect"
        }

        fn capacity(&self) -> usize {
            4
        }

        async fn run(self, mut queue: Queue) {
            while let Some(batch) = queue.next().await {
                let _ = self.0.send(batch);
            }
        }
    }

    #[tokio::test]
    async fn a_queue_keeps_the_newest_events_and_reports_what_it_dropped() {
        // Current-thread runtime: the sink cannot run until this test awaits, so the
        // queue fills deterministically.
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        bus.register(Collect(tx));
        for _ in 0..10 {
            bus.emit(kind(Level::Error, EventType::Error), "t", "r");
        }
        let st = &bus.stats().sinks[0];
        assert_eq!(
            (st.name, st.dropped, st.queued, st.delivered),
            ("collect", 6, 4, 0)
        );
        let batch = rx.recv().await.unwrap();
        let ids: Vec<u64> = batch.events.iter().map(|s| s.id).collect();
        assert_eq!((ids, batch.dropped), (vec![7, 8, 9, 10], 6));
        let st = &bus.stats().sinks[0];
        assert_eq!((st.dropped, st.queued, st.delivered), (6, 0, 4));
    }

    #[tokio::test]
    async fn close_delivers_what_was_queued_then_ends_every_queue() {
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        bus.register(Collect(tx));
        bus.emit(kind(Level::Info, EventType::Start), "t", "r");
        let late = bus.close(Duration::from_secs(60)).await;
        assert!(late.is_empty(), "{late:?}");
        // Published after the close: nobody gets it.
        assert!(!bus.emit(kind(Level::Info, EventType::Stop), "t", "r"));
        assert_eq!(rx.recv().await.unwrap().events[0].id, 1);
        assert!(
            rx.recv().await.is_none(),
            "the sink returned and dropped its sender"
        );
    }

    /// Takes remote events too.
    struct Everything(tokio::sync::mpsc::UnboundedSender<Batch>);

    impl Sink for Everything {
        fn name(&self) -> &'static str {
            "everything"
        }

        fn remote(&self) -> bool {
            true
        }

        async fn run(self, mut queue: Queue) {
            while let Some(batch) = queue.next().await {
                let _ = self.0.send(batch);
            }
        }
    }

    #[tokio::test]
    async fn remote_events_reach_only_the_sinks_that_take_them() {
        let bus = Bus::new("hub".into(), &ObserverConfig::default());
        let (local_tx, mut local) = tokio::sync::mpsc::unbounded_channel();
        let (all_tx, mut all) = tokio::sync::mpsc::unbounded_channel();
        bus.register(Collect(local_tx));
        bus.register(Everything(all_tx));
        let remote = Event::from_kind(kind(Level::Info, EventType::Start), 1.0, "gpu-01", "t", "r");
        bus.publish_remote(remote);
        bus.emit(kind(Level::Info, EventType::Stop), "t", "r");
        bus.close(Duration::from_secs(60)).await;
        let ids = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Batch>| {
            let mut out = Vec::new();
            while let Ok(b) = rx.try_recv() {
                out.extend(b.events.iter().map(|s| (s.id, s.event.node.clone())));
            }
            out
        };
        assert_eq!(
            ids(&mut all),
            [(1, "gpu-01".to_string()), (2, "hub".to_string())]
        );
        // The publisher's kind of sink never sees the remote event: no loop through Redis.
        assert_eq!(ids(&mut local), [(2, "hub".to_string())]);
        assert_eq!(bus.stats().by_type.values().sum::<u64>(), 1);
    }

    /// Never takes anything and never returns.
    struct Stuck;

    impl Sink for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }

        async fn run(self, _queue: Queue) {
            std::future::pending::<()>().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn close_gives_up_on_a_sink_that_does_not_finish() {
        let bus = Bus::new("n".into(), &ObserverConfig::default());
        bus.register(Stuck);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        bus.register(Collect(tx));
        assert_eq!(bus.close(Duration::from_secs(5)).await, ["stuck"]);
    }
}
