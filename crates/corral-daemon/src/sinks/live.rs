//! The live event stream: every event, sampled or not, for viewers that follow
//! (`GET /api/v1/events?follow=true`, `corral events --follow`).
//!
//! The sink forwards its queue into a broadcast channel; each viewer is a
//! [`Subscription`] on it. Invariants:
//! - a viewer gets the store's history, then every later event, in id order, with no
//!   duplicate;
//! - a viewer that misses ids (it lagged behind the broadcast, the sink's queue dropped
//!   some, or they passed just before it subscribed) is not cut off: it takes the missing
//!   range from the observer store by id, once the store has caught up with it, and goes
//!   on. What sampling kept out of the store is then missing for that viewer alone;
//! - when the bus closes, the sink forwards what was queued and drops the channel: every
//!   viewer receives those events, then the end of its stream.

use super::observer::Observer;
use crate::bus::{Filter, Queue, Sink, Stored};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// Events a viewer may be behind the live stream before it lags (and catches up from
/// the store).
const CHANNEL: usize = 4096;

type Slot = Arc<Mutex<Option<broadcast::Sender<Stored>>>>;

/// Where viewers subscribe.
#[derive(Clone)]
pub struct Live {
    tx: Slot,
}

/// The sink that feeds the live stream.
pub struct LiveSink {
    tx: Slot,
}

impl Live {
    /// The stream and the sink that feeds it (register the sink on the bus).
    pub fn new() -> (Live, LiveSink) {
        let tx: Slot = Arc::new(Mutex::new(Some(broadcast::channel(CHANNEL).0)));
        (Live { tx: tx.clone() }, LiveSink { tx })
    }

    /// A viewer that first gets the store's events after `since` (once the store has
    /// handled every event up to `published`, the newest id given out when the viewer
    /// asked), then every later event. Subscribing first and reading the store second is
    /// what leaves no gap: anything in between is either in the store or still to come.
    pub async fn follow(
        &self,
        observer: &Observer,
        published: u64,
        since: u64,
        filter: Filter,
    ) -> Subscription {
        let rx = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(broadcast::Sender::subscribe);
        observer.caught_up(published).await;
        let history = observer.history(since, &filter);
        // Every event up to `published` that history lacks was sampled away or filtered
        // out before the viewer came: none of them is owed to it.
        let last = history.last().map_or(0, |s| s.id).max(published).max(since);
        Subscription {
            last,
            pending: history.into(),
            held: None,
            rx,
            observer: observer.clone(),
            filter,
        }
    }
}

/// One viewer's cursor over the history and the live stream.
pub struct Subscription {
    /// The newest id this viewer has been given or skipped: it never goes back.
    last: u64,
    /// Events ready to hand out, in id order.
    pending: VecDeque<Stored>,
    /// A live event that came after a gap: handed out once the gap is filled.
    held: Option<Stored>,
    /// `None` when the live stream had ended before the viewer came.
    rx: Option<broadcast::Receiver<Stored>>,
    observer: Observer,
    filter: Filter,
}

impl Subscription {
    /// The next event for this viewer, `None` when the live stream ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Stored> {
        loop {
            if let Some(s) = self.pending.pop_front() {
                return Some(s);
            }
            if let Some(id) = self.held.as_ref().map(|s| s.id) {
                self.observer.caught_up(id - 1).await;
                let held = self.held.take()?;
                self.pending
                    .extend(self.observer.between(self.last, held.id, &self.filter));
                self.last = held.id;
                if self.filter.matches(&held.event) {
                    self.pending.push_back(held);
                }
                continue;
            }
            match self.rx.as_mut()?.recv().await {
                Ok(s) if s.id <= self.last => {}
                Ok(s) if s.id == self.last + 1 => {
                    self.last = s.id;
                    if self.filter.matches(&s.event) {
                        return Some(s);
                    }
                }
                Ok(s) => self.held = Some(s),
                // The next event received shows the gap, which is filled from the store.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// An event that is ready now (history, a filled gap), without waiting.
    pub fn ready(&mut self) -> Option<Stored> {
        self.pending.pop_front()
    }
}

impl Sink for LiveSink {
    /// History shows the fleet's events on a hub.
    fn remote(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "live"
    }

    async fn run(self, mut queue: Queue) {
        let _ended = Ended(self.tx.clone());
        let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        while let Some(batch) = queue.next().await {
            for s in batch.events {
                // No viewer is not an error.
                let _ = tx.send(s);
            }
        }
    }
}

/// Drops the stream's sender however the sink ends: with the sink's own copy gone too,
/// every viewer gets what was sent, then the end.
struct Ended(Slot);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
