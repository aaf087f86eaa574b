//! The sink seam: what the bus hands events to, and the bounded queue it hands them
//! through.
//!
//! Every sink has its own [`Queue`] of at most [`Sink::capacity`] events and its own task.
//! Publishing pushes into each queue and returns: it never waits for a sink. A sink that
//! falls behind loses its *oldest* queued events (the newest say most about now, and a
//! sink that catches up by id, like the live stream, needs the newest to see the gap);
//! each loss is counted per sink and reported to the sink with the next batch.

use super::Stored;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Events a sink may have waiting before the oldest are dropped, unless it says otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;

/// A consumer of every event published on the bus: the observer store, the live stream,
/// Redis, an alerting hook. Implementations live in `sinks/` (one folder or file each)
/// and are registered with [`Bus::register`](super::Bus::register).
///
/// The bus spawns [`Sink::run`] in a task of its own. `run` takes batches from its queue
/// with [`Queue::next`] until that returns `None` (the bus closed and the sink took
/// everything queued before), then flushes whatever it holds and returns; the daemon
/// waits for that, within a bounded time, before it exits.
pub trait Sink: Send + 'static {
    /// The sink's name: the `sink` label of its metrics.
    fn name(&self) -> &'static str;

    /// How many events may wait for this sink before the oldest are dropped.
    fn capacity(&self) -> usize {
        DEFAULT_CAPACITY
    }

    /// Whether it also takes events of other nodes that a hub reads from Redis
    /// ([`Bus::publish_remote`](super::Bus::publish_remote)): the observer store and the
    /// live stream do, to show the fleet's timeline; sinks that act for this node (Redis,
    /// alerts, diagnostics, a kind's state) do not, so a hub never republishes them.
    fn remote(&self) -> bool {
        false
    }

    /// Consumes the queue until it ends; see the trait's documentation.
    fn run(self, queue: Queue) -> impl Future<Output = ()> + Send;
}

/// Events taken from a sink's queue in one go, oldest first (ids ascending).
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Stored>,
    /// Events this sink lost to a full queue since its previous batch (all of them older
    /// than `events`).
    pub dropped: u64,
}

/// One sink's counters, for `/metrics`.
#[derive(Debug, Clone)]
pub struct SinkStats {
    pub name: &'static str,
    pub capacity: usize,
    /// Events the sink has taken from its queue.
    pub delivered: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events waiting now.
    pub queued: usize,
}

struct Pending {
    events: VecDeque<Stored>,
    dropped: u64,
    closed: bool,
}

/// The bus's side of a sink's queue.
pub(crate) struct Shared {
    name: &'static str,
    capacity: usize,
    /// Whether it takes remote events ([`Sink::remote`]).
    pub(crate) remote: bool,
    pending: Mutex<Pending>,
    ready: Notify,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    pub(crate) fn new(name: &'static str, capacity: usize, remote: bool) -> Arc<Shared> {
        Arc::new(Shared {
            name,
            capacity: capacity.max(1),
            remote,
            pending: Mutex::new(Pending {
                events: VecDeque::new(),
                dropped: 0,
                closed: false,
            }),
            ready: Notify::new(),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event, dropping the oldest when full. Never waits.
    pub(crate) fn push(&self, event: Stored) {
        {
            let mut p = self.lock();
            if p.closed {
                return;
            }
            if p.events.len() >= self.capacity {
                p.events.pop_front();
                p.dropped += 1;
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            p.events.push_back(event);
        }
        // One consumer: a permit stored while it is not waiting wakes its next wait.
        self.ready.notify_one();
    }

    /// No more events: the consumer gets what is queued, then the end.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    pub(crate) fn stats(&self) -> SinkStats {
        let queued = self.lock().events.len();
        SinkStats {
            name: self.name,
            capacity: self.capacity,
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued,
        }
    }
}

/// A sink's end of its queue.
pub struct Queue {
    shared: Arc<Shared>,
}

impl Queue {
    pub(crate) fn new(shared: Arc<Shared>) -> Queue {
        Queue { shared }
    }

    /// Everything queued, waiting for at least one event; `None` once the bus closed
    /// and nothing is left. Cancel-safe: a sink may race it against its own timers.
    pub async fn next(&mut self) -> Option<Batch> {
        loop {
            {
                let mut p = self.shared.lock();
                if !p.events.is_empty() {
                    let events: Vec<Stored> = p.events.drain(..).collect();
                    let dropped = std::mem::take(&mut p.dropped);
                    self.shared
                        .delivered
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    return Some(Batch { events, dropped });
                }
                if p.closed {
                    return None;
                }
            }
            self.shared.ready.notified().await;
        }
    }
}
