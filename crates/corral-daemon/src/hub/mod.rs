//! The hub (`corral serve --hub`, DESIGN.md "Fleet"): a daemon that also reads the
//! fleet from Redis, with the same settings as its publisher (server, credentials,
//! prefix), whether that publisher is on or off:
//!
//! - `timeline`: every node's events (`{prefix}:logs`, and the stream's recent history
//!   at each connection) onto this daemon's bus as remote events, so `/api/v1/events`
//!   shows the fleet's merged timeline; never back to Redis;
//! - `fleet`: the nodes' registrations (`{prefix}:nodes:*`, scanned twice a heartbeat):
//!   `up` while a node's key lives, `gone` once it expired, each change a `status` event
//!   (component `system`) of the hub.
//!
//! [`Hub`] is the handle `/api/v1/nodes` reads. Both loops retry with the publisher's
//! backoff while Redis is unreachable and say why in the answer and (once per outage) in
//! the log; they never stop the daemon.

pub mod fleet;
pub mod timeline;

use crate::bus::Bus;
use crate::sinks::redis::{self as publisher, Channels, RedisConfig};
use corral_client::wire::{NodeRecord, NodeStatus, NodesAnswer};
use corral_core::event::{Component, EventKind, EventType, Level};
use fleet::{Change, Fleet};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timeline::Seen;

/// How often the subscription's connection is checked, and how long its PING may take.
const LIVENESS: Duration = Duration::from_secs(15);

/// The hub's two loops, each with its own connection.
#[derive(Clone, Copy)]
enum Loop {
    Timeline,
    Nodes,
}

#[derive(Default)]
struct Conn {
    /// Whether each loop (timeline, registrations) is connected now.
    timeline: bool,
    nodes: bool,
    last_error: Option<String>,
}

struct Inner {
    server: String,
    fleet: Mutex<Fleet>,
    conn: Mutex<Conn>,
    received: AtomicU64,
    malformed: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The hub's handle. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts reading the fleet from the Redis of `cfg` (its connection and prefix; its
    /// `enabled` does not matter: that is this node's publisher). `interval` is the node
    /// heartbeat; the registrations are scanned twice per heartbeat. An unusable setting
    /// is an error; an unreachable server is retried in the background.
    pub fn start(cfg: RedisConfig, bus: Arc<Bus>, interval: Duration) -> Result<Hub, String> {
        cfg.validate()?;
        let hub = Hub {
            inner: Arc::new(Inner {
                server: cfg.server(),
                fleet: Mutex::new(Fleet::default()),
                conn: Mutex::new(Conn::default()),
                received: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        // Two scans a heartbeat: a node's key expires three heartbeats after its last
        // write, and is seen gone at most half a heartbeat later.
        let interval = (interval / 2).max(Duration::from_millis(100));
        let timeline = tokio::spawn({
            let (hub, cfg, bus) = (hub.clone(), cfg.clone(), bus.clone());
            async move { hub.follow(cfg, bus).await }
        });
        let nodes = tokio::spawn({
            let hub = hub.clone();
            async move { hub.watch_nodes(cfg, bus, interval).await }
        });
        hub.inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([timeline, nodes]);
        Ok(hub)
    }

    /// Stops reading (at shutdown).
    pub fn stop(&self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.inner.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gRPC address `node` registered (empty from a node older than the gRPC API),
    /// or `None` for a node the hub never saw. A node that is gone keeps its last one.
    pub fn grpc_address(&self, node: &str) -> Option<String> {
        self.fleet().get(node).map(|n| n.record.grpc.clone())
    }

    /// The fleet, for `GET /api/v1/nodes`.
    pub fn nodes(&self) -> NodesAnswer {
        let conn = self.conn();
        NodesAnswer {
            connected: conn.timeline && conn.nodes,
            server: self.inner.server.clone(),
            last_error: conn.last_error.clone(),
            nodes: self.fleet().list(),
            events_received: self.inner.received.load(Ordering::Relaxed),
            events_malformed: self.inner.malformed.load(Ordering::Relaxed),
        }
    }

    /// Records a loop's state; logs an outage once (when the hub was connected, or at
    /// the first failure), and the way back.
    fn set_state(&self, which: Loop, result: Result<(), String>) {
        let mut conn = self.conn();
        let was = conn.timeline && conn.nodes;
        let flag = match which {
            Loop::Timeline => &mut conn.timeline,
            Loop::Nodes => &mut conn.nodes,
        };
        let before = *flag;
        match result {
            Ok(()) => {
                *flag = true;
                if conn.timeline && conn.nodes {
                    if !was {
                        tracing::info!(server = %self.inner.server, "the hub reads the fleet from Redis");
                    }
                    conn.last_error = None;
                }
            }
            Err(e) => {
                *flag = false;
                if before || conn.last_error.is_none() {
                    tracing::warn!(
                        server = %self.inner.server,
                        "the hub cannot read the fleet from Redis: {e}; it uses the publisher's \
                         settings (REDIS_HOST, REDIS_PORT, redis_url, …) and retries in the background"
                    );
                }
                conn.last_error = Some(e);
            }
        }
    }

    /// The timeline loop: (re)connects with backoff, forever.
    async fn follow(&self, cfg: RedisConfig, bus: Arc<Bus>) {
        let mut seen = Seen::new(timeline::SEEN);
        let mut failures: u32 = 0;
        loop {
            tokio::time::sleep(publisher::backoff(failures)).await;
            let e = self.follow_once(&cfg, &bus, &mut seen, &mut failures).await;
            self.set_state(Loop::Timeline, Err(e));
            failures = failures.saturating_add(1);
        }
    }

    /// One connection: subscribe, read the history, then the live messages until the
    /// connection ends. Returns why it ended.
    async fn follow_once(
        &self,
        cfg: &RedisConfig,
        bus: &Bus,
        seen: &mut Seen,
        failures: &mut u32,
    ) -> String {
        let ch = Channels::new(&cfg.channel_prefix);
        let tls = cfg.is_tls();
        let client = match publisher::client(cfg) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut pubsub =
            match tokio::time::timeout(publisher::CONNECT_TIMEOUT, client.get_async_pubsub()).await
            {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return publisher::describe(&e, tls),
                Err(_) => return "no answer in time while connecting".into(),
            };
        match tokio::time::timeout(publisher::CONNECT_TIMEOUT, pubsub.subscribe(&ch.logs)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return publisher::describe(&e, tls),
            Err(_) => return format!("no answer in time to SUBSCRIBE {}", ch.logs),
        }
        // Subscribed: what is published from now on waits in the subscription while
        // the history is read.
        let mut conn = match publisher::open(cfg).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let since = (crate::util::unix_now() * 1000.0) as u64;
        let reply = redis::cmd("XREVRANGE")
            .arg(&ch.stream)
            .arg("+")
            .arg(format!(
                "{}-0",
                since.saturating_sub(timeline::HISTORY_SPAN_MS)
            ))
            .arg("COUNT")
            .arg(timeline::HISTORY)
            .query_async::<redis::Value>(&mut conn)
            .await;
        let history = match reply {
            Ok(v) => timeline::data_fields(v),
            Err(e) => {
                return format!(
                    "reading the history ({}): {}",
                    ch.stream,
                    publisher::describe(&e, tls)
                )
            }
        };
        drop(conn);
        self.set_state(Loop::Timeline, Ok(()));
        *failures = 0;
        // XREVRANGE is newest first: put them on the timeline oldest first.
        for payload in history.iter().rev() {
            self.take(bus, seen, payload);
        }
        // A subscription only receives: a connection that died quietly (a host gone, a
        // cut network) would look idle for ever, so it is asked for a PING now and then.
        let (mut sink, mut messages) = pubsub.split();
        let mut liveness = tokio::time::interval(LIVENESS);
        liveness.tick().await;
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => self.take(bus, seen, msg.get_payload_bytes()),
                    None => return "the connection to Redis was closed".into(),
                },
                _ = liveness.tick() => {
                    match tokio::time::timeout(LIVENESS, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return publisher::describe(&e, tls),
                        Err(_) => return "no answer to PING in time on the subscription".into(),
                    }
                }
            }
        }
    }

    fn take(&self, bus: &Bus, seen: &mut Seen, payload: &[u8]) {
        match timeline::take(bus, seen, payload) {
            timeline::Taken::Published => {
                self.inner.received.fetch_add(1, Ordering::Relaxed);
            }
            timeline::Taken::Malformed => {
                // Counted, never logged per message: a foreign publisher on the channel
                // must not fill the log.
                if self.inner.malformed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "the hub ignores messages on the events channel that are not corral \
                         events (the first one now; more are not logged)"
                    );
                }
            }
            timeline::Taken::Skipped => {}
        }
    }

    /// The registrations loop: a scan every `interval`, its changes as events.
    async fn watch_nodes(&self, cfg: RedisConfig, bus: Arc<Bus>, interval: Duration) {
        let mut conn = None;
        loop {
            if conn.is_none() {
                match publisher::open(&cfg).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => self.set_state(Loop::Nodes, Err(e)),
                }
            }
            if let Some(c) = conn.as_mut() {
                match scan(c, &cfg).await {
                    Ok(found) => {
                        self.set_state(Loop::Nodes, Ok(()));
                        let changes = self.fleet().observe(found);
                        for ch in changes {
                            announce(&bus, ch);
                        }
                    }
                    Err(e) => {
                        self.set_state(Loop::Nodes, Err(publisher::describe(&e, cfg.is_tls())));
                        conn = None;
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}

impl Hub {
    /// Adds the hub's series to `/metrics`: `corral_hub_nodes{status}`,
    /// `corral_hub_events_received_total`, `corral_hub_connected`.
    pub fn register_metrics(&self, r: &mut crate::metrics::Registry) {
        r.register_collector(Box::new(HubSeries(self.clone())));
    }
}

/// The hub's counters, read at scrape time.
struct HubSeries(Hub);

impl std::fmt::Debug for HubSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubSeries")
    }
}

impl crate::metrics::Collector for HubSeries {
    fn encode(&self, mut enc: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{counter, gauge, NO_LABELS};
        let a = self.0.nodes();
        let count = |st: NodeStatus| a.nodes.iter().filter(|n| n.status == st).count() as i64;
        gauge(
            &mut enc,
            "corral_hub_nodes",
            "Nodes the hub has seen, by status (up: registration live; gone: expired).",
            [NodeStatus::Up, NodeStatus::Gone].map(|st| ([("status", st.as_str())], count(st))),
        )?;
        counter(
            &mut enc,
            "corral_hub_events_received",
            "Events of other nodes the hub took onto its timeline.",
            [(NO_LABELS, a.events_received)],
        )?;
        gauge(
            &mut enc,
            "corral_hub_connected",
            "1 while the hub reads the fleet from Redis.",
            [(NO_LABELS, i64::from(a.connected))],
        )
    }
}

/// Every live registration under the prefix. Values that are not a registration are
/// left out (a key that expired between the scan and the read is simply not there).
async fn scan(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &RedisConfig,
) -> Result<Vec<NodeRecord>, redis::RedisError> {
    let pattern = publisher::node::pattern(&cfg.channel_prefix);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    keys.sort();
    keys.dedup();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    Ok(values
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_slice::<NodeRecord>(&v).ok())
        .filter(|r| !r.node.is_empty())
        .collect())
}

/// A node's change as the hub's `status` event (component `system`).
fn announce(bus: &Bus, change: Change) {
    let kind = match change {
        Change::Up { node, back } => EventKind::new(
            Component::System,
            Level::Info,
            EventType::Status,
            if back {
                format!("node {node} is up again")
            } else {
                format!("node {node} is up")
            },
        )
        .with("node", node)
        .with("status", "up"),
        Change::Gone { node, last_seen } => {
            let ago = (crate::util::unix_now() - last_seen).max(0.0);
            EventKind::new(
                Component::System,
                Level::Warning,
                EventType::Status,
                format!("node {node} is gone: its registration expired (last seen {ago:.1} s ago)"),
            )
            .with("node", node)
            .with("status", "gone")
            .with("last_seen", last_seen)
        }
    };
    bus.emit(kind, "", "");
}
