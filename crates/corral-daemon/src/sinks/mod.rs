//! Sinks: where the bus's events go. Each sink is one module here implementing
//! [`Sink`](crate::bus::Sink), plus one registration line in [`builtin`]:
//!
//! - [`observer`]: the bounded, sampled store of recent events (history, catching up);
//! - [`live`]: every event, to viewers that follow;
//! - [`diagnostics`]: a bundle of everything needed to understand a failed run
//!   (registered by `serve` once the supervisor exists);
//! - [`redis`]: every event to Redis pub/sub channels and a stream (opt-in; registered
//!   by `serve` with its settings, see [`redis::Redis::new`]).
//!
//! [`Events`] is what the API reads: the two together give a viewer history, then live
//! events, with no gap and no duplicate.

pub mod alerts;
pub mod diagnostics;
pub mod live;
pub mod observer;
pub mod redis;

use crate::bus::{Bus, Filter, ObserverConfig, Stored};
use live::{Live, Subscription};
use observer::Observer;
use std::sync::Arc;

/// The observer store and the live stream, for readers.
#[derive(Clone)]
pub struct Events {
    bus: Arc<Bus>,
    pub observer: Observer,
    pub live: Live,
}

impl Events {
    /// Stored events after `since`, filtered, including every event published before
    /// the call (the store is awaited, not raced).
    pub async fn history(&self, since: u64, filter: &Filter) -> Vec<Stored> {
        self.observer.caught_up(self.bus.last_id()).await;
        self.observer.history(since, filter)
    }

    /// History after `since`, then every later event (see [`Live::follow`]).
    pub async fn follow(&self, since: u64, filter: Filter) -> Subscription {
        let published = self.bus.last_id();
        self.live
            .follow(&self.observer, published, since, filter)
            .await
    }
}

/// Registers the sinks every daemon has, and returns what the API reads of them.
pub fn builtin(bus: &Arc<Bus>, cfg: &ObserverConfig) -> Events {
    let (observer, observer_sink) = Observer::new(cfg.max_events);
    bus.register(observer_sink);
    let (live, live_sink) = Live::new();
    bus.register(live_sink);
    Events {
        bus: bus.clone(),
        observer,
        live,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Batch, BusStats, Queue, Sink};
    use corral_core::event::{Component, EventKind, EventType, Level};
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};

    fn kind(level: Level, t: EventType) -> EventKind {
        EventKind::new(Component::Coordinator, level, t, "m")
    }

    fn fixture(cfg: &ObserverConfig) -> (Arc<Bus>, Events) {
        let bus = Bus::new("n".into(), cfg);
        let events = builtin(&bus, cfg);
        (bus, events)
    }

    /// The counters once the store has handled everything published.
    struct Stats {
        by_type: BTreeMap<&'static str, u64>,
        sampled_out: u64,
        stored: usize,
    }

    async fn stats(bus: &Bus, events: &Events) -> Stats {
        events.observer.caught_up(bus.last_id()).await;
        let BusStats {
            by_type,
            sampled_out,
            ..
        } = bus.stats();
        Stats {
            by_type,
            sampled_out,
            stored: events.observer.len(),
        }
    }

    fn sink<'a>(st: &'a BusStats, name: &str) -> &'a crate::bus::SinkStats {
        st.sinks.iter().find(|s| s.name == name).unwrap()
    }

    /// Until `cond` holds, lets the sinks (other tasks) run.
    async fn until(mut cond: impl FnMut() -> bool) {
        while !cond() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn store_is_bounded_and_sampling_is_counted() {
        let (bus, events) = fixture(&ObserverConfig {
            max_events: 5,
            sampling: true,
            sample_rate: 0.5,
        });
        for _ in 0..10 {
            bus.emit(kind(Level::Info, EventType::Metrics), "t", "r");
        }
        for _ in 0..4 {
            bus.emit(kind(Level::Error, EventType::Error), "t", "r");
        }
        let st = stats(&bus, &events).await;
        assert_eq!(st.sampled_out, 5);
        assert_eq!(st.stored, 5);
        assert_eq!(st.by_type["metrics"], 10);
        let errors = events
            .history(
                0,
                &Filter {
                    min_level: Some(Level::Warning),
                    ..Filter::default()
                },
            )
            .await;
        assert_eq!(errors.len(), 4);
    }

    #[tokio::test]
    async fn live_subscribers_get_what_sampling_keeps_out_of_the_store() {
        let (bus, events) = fixture(&ObserverConfig::default());
        let mut rx = events.follow(0, Filter::default()).await;
        let kept: Vec<bool> = (0..3)
            .map(|_| bus.emit(kind(Level::Info, EventType::Heartbeat), "t", "r"))
            .collect();
        assert_eq!(kept, [true, false, false]);
        for id in 1..=3 {
            assert_eq!(rx.recv().await.unwrap().id, id);
        }
        assert_eq!(events.history(0, &Filter::default()).await.len(), 1);
        assert_eq!(bus.last_id(), 3);
    }

    #[tokio::test]
    async fn subscribe_gets_history_then_live_without_gap() {
        let (bus, events) = fixture(&ObserverConfig::default());
        bus.emit(kind(Level::Info, EventType::Start), "t", "r");
        let mut rx = events.follow(0, Filter::default()).await;
        bus.emit(kind(Level::Info, EventType::Stop), "t", "r");
        let hist: Vec<Stored> = std::iter::from_fn(|| rx.ready()).collect();
        assert_eq!(hist.len(), 1);
        let live = rx.recv().await.unwrap();
        assert_eq!(live.id, 2);
        assert_eq!(live.event.event_type, EventType::Stop);
    }

    /// A sink for these tests only: hands on every batch it takes.
    struct Collect {
        name: &'static str,
        tx: mpsc::UnboundedSender<Batch>,
    }

    impl Sink for Collect {
        fn name(&self) -> &'static str {
            self.name
        }

        async fn run(self, mut queue: Queue) {
            while let Some(batch) = queue.next().await {
                let _ = self.tx.send(batch);
            }
        }
    }

    async fn collect(rx: &mut mpsc::UnboundedReceiver<Batch>, n: usize) -> Vec<Stored> {
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(rx.recv().await.expect("the sink ended early").events);
        }
        got
    }

    #[tokio::test]
    async fn a_sink_gets_every_event_including_those_sampling_keeps_out_of_the_store() {
        let (bus, events) = fixture(&ObserverConfig::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        bus.register(Collect { name: "test", tx });
        for _ in 0..10 {
            bus.emit(kind(Level::Info, EventType::Heartbeat), "t", "r");
        }
        let got = collect(&mut rx, 10).await;
        let ids: Vec<u64> = got.iter().map(|s| s.id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(got.iter().filter(|s| s.kept).count(), 1);
        assert_eq!(stats(&bus, &events).await.stored, 1);
    }

    /// A sink for these tests only: takes one batch, says so, then waits for a gate
    /// before it takes the next.
    struct Slow {
        took: mpsc::UnboundedSender<Batch>,
        gate: Option<oneshot::Receiver<()>>,
    }

    impl Sink for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }

        fn capacity(&self) -> usize {
            8
        }

        async fn run(mut self, mut queue: Queue) {
            while let Some(batch) = queue.next().await {
                let _ = self.took.send(batch);
                if let Some(gate) = self.gate.take() {
                    let _ = gate.await;
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_sink_drops_its_oldest_and_counts_them_while_others_get_everything() {
        let (bus, events) = fixture(&ObserverConfig::default());
        let (took, mut slow_rx) = mpsc::unbounded_channel();
        let (open, gate) = oneshot::channel();
        bus.register(Slow {
            took,
            gate: Some(gate),
        });
        let (tx, mut all_rx) = mpsc::unbounded_channel();
        bus.register(Collect { name: "all", tx });
        let mut viewer = events.follow(0, Filter::default()).await;

        bus.emit(kind(Level::Error, EventType::Error), "t", "r");
        let first = slow_rx.recv().await.unwrap();
        assert_eq!((first.events.len(), first.dropped), (1, 0));
        // The slow sink now waits at its gate, holding nothing: 100 more events fill its
        // queue of 8 and push out the 92 oldest. Each publish returns at once (were one
        // to wait for the sink, this loop would never end: the gate opens after it).
        for _ in 0..100 {
            bus.emit(kind(Level::Error, EventType::Error), "t", "r");
        }
        let st = bus.stats();
        let slow = sink(&st, "slow");
        assert_eq!((slow.dropped, slow.queued, slow.delivered), (92, 8, 1));

        // The others miss nothing.
        let all = collect(&mut all_rx, 101).await;
        assert_eq!(
            all.iter().map(|s| s.id).collect::<Vec<_>>(),
            (1..=101).collect::<Vec<_>>()
        );
        for id in 1..=101 {
            assert_eq!(viewer.recv().await.unwrap().id, id);
        }
        assert_eq!(stats(&bus, &events).await.stored, 101);
        let st = bus.stats();
        for name in ["observer", "live", "all"] {
            assert_eq!(sink(&st, name).dropped, 0, "{name}");
        }

        // Let through, the slow sink gets the newest 8 and hears of the 92 it lost.
        open.send(()).unwrap();
        let rest = slow_rx.recv().await.unwrap();
        assert_eq!(rest.dropped, 92);
        assert_eq!(
            rest.events.iter().map(|s| s.id).collect::<Vec<_>>(),
            (94..=101).collect::<Vec<_>>()
        );
        assert_eq!(sink(&bus.stats(), "slow").dropped, 92);
    }

    #[tokio::test]
    async fn a_lagging_viewer_catches_up_from_the_store() {
        let (bus, events) = fixture(&ObserverConfig::default());
        let mut viewer = events.follow(0, Filter::default()).await;
        // Let the sinks forward each round, while the viewer reads nothing: it falls
        // more than the broadcast's capacity behind.
        for round in 1..=5u64 {
            for _ in 0..1000 {
                bus.emit(kind(Level::Error, EventType::Error), "t", "r");
            }
            until(|| sink(&bus.stats(), "live").delivered == round * 1000).await;
        }
        for id in 1..=5000 {
            assert_eq!(viewer.recv().await.unwrap().id, id);
        }
        bus.emit(kind(Level::Error, EventType::Error), "t", "r");
        assert_eq!(viewer.recv().await.unwrap().id, 5001);
    }

    #[tokio::test]
    async fn a_viewer_gets_history_and_live_filtered_in_order() {
        let (bus, events) = fixture(&ObserverConfig::default());
        bus.emit(kind(Level::Info, EventType::Start), "a", "r");
        bus.emit(kind(Level::Info, EventType::Start), "b", "r");
        let filter = Filter {
            task: Some("b".into()),
            ..Filter::default()
        };
        let mut viewer = events.follow(0, filter).await;
        bus.emit(kind(Level::Info, EventType::Stop), "a", "r");
        bus.emit(kind(Level::Info, EventType::Stop), "b", "r");
        assert_eq!(viewer.recv().await.unwrap().id, 2);
        assert_eq!(viewer.recv().await.unwrap().id, 4);
    }

    #[tokio::test]
    async fn closing_the_bus_ends_viewers_after_what_was_published() {
        let (bus, events) = fixture(&ObserverConfig::default());
        let mut viewer = events.follow(0, Filter::default()).await;
        bus.emit(kind(Level::Info, EventType::Start), "t", "r");
        bus.emit(kind(Level::Info, EventType::Stop), "t", "r");
        assert!(bus.close(Duration::from_secs(60)).await.is_empty());
        assert_eq!(viewer.recv().await.unwrap().id, 1);
        assert_eq!(viewer.recv().await.unwrap().id, 2);
        assert!(viewer.recv().await.is_none());
        // A viewer that comes after the end gets the history, then the end.
        let mut late = events.follow(0, Filter::default()).await;
        assert_eq!(late.recv().await.unwrap().id, 1);
        assert_eq!(late.recv().await.unwrap().id, 2);
        assert!(late.recv().await.is_none());
    }
}
