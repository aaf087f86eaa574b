//! The observer store: a bounded window of recent events for `GET /api/v1/events`,
//! `corral events` and catching up by id.
//!
//! Invariants: it holds at most `max_events` events, only those sampling kept
//! ([`Stored::kept`]), in id order; `seen` (the newest id it has handled, kept or not)
//! only grows, so a reader can wait until the store has caught up with an id before it
//! reads (see [`Observer::caught_up`]).

use crate::bus::{Filter, Queue, Sink, Stored};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The store as readers see it.
#[derive(Clone)]
pub struct Observer {
    inner: Arc<Inner>,
}

struct Inner {
    max_events: usize,
    events: Mutex<VecDeque<Stored>>,
    /// The newest id handled; `u64::MAX` once the sink stopped (nothing more will come,
    /// so nobody should wait).
    seen: watch::Sender<u64>,
}

/// The store's sink: fills it from the bus.
pub struct ObserverSink(Observer);

impl Observer {
    /// The store and the sink that fills it (register the sink on the bus).
    pub fn new(max_events: usize) -> (Observer, ObserverSink) {
        let obs = Observer {
            inner: Arc::new(Inner {
                max_events: max_events.max(1),
                events: Mutex::new(VecDeque::new()),
                seen: watch::channel(0).0,
            }),
        };
        (obs.clone(), ObserverSink(obs))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Stored>> {
        self.inner.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, events: Vec<Stored>) {
        let Some(last) = events.last().map(|s| s.id) else {
            return;
        };
        {
            let mut store = self.lock();
            store.extend(events.into_iter().filter(|s| s.kept));
            let over = store.len().saturating_sub(self.inner.max_events);
            store.drain(..over);
        }
        self.inner.seen.send_if_modified(|seen| {
            let grew = last > *seen;
            *seen = (*seen).max(last);
            grew
        });
    }

    /// Waits until the store has handled every event up to `id` (or its sink stopped).
    pub async fn caught_up(&self, id: u64) {
        let mut rx = self.inner.seen.subscribe();
        let _ = rx.wait_for(|&seen| seen >= id).await;
    }

    /// Stored events after `since` (an id), oldest first, filtered.
    pub fn history(&self, since: u64, filter: &Filter) -> Vec<Stored> {
        self.between(since, u64::MAX, filter)
    }

    /// Stored events with `after < id < before`, oldest first, filtered.
    pub fn between(&self, after: u64, before: u64, filter: &Filter) -> Vec<Stored> {
        let store = self.lock();
        // Ids ascend: skip the older part without looking at it.
        let start = store.partition_point(|s| s.id <= after);
        store
            .range(start..)
            .take_while(|s| s.id < before)
            .filter(|s| filter.matches(&s.event))
            .cloned()
            .collect()
    }

    /// How many events the store holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Marks the store finished however its sink ends (returned, or abandoned at shutdown),
/// so that no reader waits for it.
struct Finished(Observer);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.inner.seen.send_replace(u64::MAX);
    }
}

impl Sink for ObserverSink {
    /// History shows the fleet's events on a hub.
    fn remote(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "observer"
    }

    async fn run(self, mut queue: Queue) {
        let _finished = Finished(self.0.clone());
        while let Some(batch) = queue.next().await {
            self.0.insert(batch.events);
        }
    }
}
