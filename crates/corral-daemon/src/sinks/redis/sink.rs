//! The publisher's [`Sink`]: takes batches from its queue and sends each as one pipeline
//! (`PUBLISH` per channel and `XADD` per event), over one multiplexed connection.
//!
//! Connection: the first connection is tried [`FIRST_TRIES`] times [`FIRST_GAP`] apart,
//! then again in the background with exponential backoff capped at [`MAX_BACKOFF`], one
//! log line per change of state (never one per try or per lost event). While there is no
//! connection the queue is still taken, and what it held is dropped and counted; once
//! connected again the publisher puts a `status` event (component `system`) on the bus
//! that says how many events Redis missed, which it then publishes like any other.
//! With the publisher off it holds no connection and takes events without counting them.
//!
//! Raw lines (`raw.rs`) come through a queue of their own and go to `{prefix}:raw` only
//! (not the stream), a pipeline per [`PIPELINE_EVENTS`] lines; those taken while Redis
//! is unreachable, or whose pipeline failed, count as `raw_dropped`.

use super::encode::{self, Channels};
use super::raw::{RawCount, RawLine};
use super::{Redis, RedisConfig};
use crate::bus::{Batch, Bus, Queue, Sink};
use corral_core::event::{Component, EventKind, EventType, Level};
use std::sync::Weak;
use std::time::Duration;

/// Events that may wait for Redis before the oldest are dropped.
pub const CAPACITY: usize = 10_000;
/// Tries of the first connection, and the time between them.
pub const FIRST_TRIES: u32 = 3;
pub const FIRST_GAP: Duration = Duration::from_secs(1);
/// The longest wait between two tries to reconnect.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting, and any one reply, may take before it counts as a failure.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Events per pipeline: a long backlog goes as several, so that no reply waits too long.
const PIPELINE_EVENTS: usize = 500;
/// Pipelines of one batch sent before the first reply is awaited.
const IN_FLIGHT: usize = 4;

/// The wait before try number `failures + 1` (none before the first).
pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n if n < FIRST_TRIES => FIRST_GAP,
        n => (FIRST_GAP * 2u32.saturating_pow((n - FIRST_TRIES + 1).min(8))).min(MAX_BACKOFF),
    }
}

/// A Redis error as the status and the log show it: what happened and what to do, with
/// no credential (the server's messages never echo one, and URLs are never shown).
/// `tls` says whether the connection was `rediss://`, which changes what a closed
/// connection or a broken handshake means.
pub fn describe(e: &redis::RedisError, tls: bool) -> String {
    let text = e.to_string();
    if let Some(t) = tls_error(e) {
        return match t {
            rustls::Error::InvalidMessage(_) => format!(
                "TLS handshake failed: the server did not answer in TLS ({t}); is it a \
                 plaintext server? corral never falls back to plaintext: use redis:// if \
                 that is what you mean"
            ),
            _ => format!(
                "TLS handshake failed: {t}; check redis_tls_ca (CORRAL_REDIS_TLS_CA): it \
                 must be the CA that signed the server's certificate, and the certificate \
                 must name the host of the URL"
            ),
        };
    }
    if !tls && closed_by_server(e) {
        return format!(
            "the server closed the connection ({text}); if it expects TLS use rediss://"
        );
    }
    if tls && closed_by_server(e) {
        return format!("the server closed the TLS connection ({text})");
    }
    if text.contains("NOPERM") {
        return format!(
            "permission denied by the server's ACL ({}): the Redis user must be allowed \
             PUBLISH on the prefix's channels and XADD on its stream, e.g. ACL SETUSER USER \
             +publish +xadd +ping '&PREFIX:*' '~PREFIX:*'",
            e.detail().unwrap_or(&text)
        );
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("without any password configured")
    {
        return format!(
            "authentication failed: the server refused the credentials ({}); check \
             REDIS_PASSWORD / redis_password (and the user name)",
            e.detail().unwrap_or("wrong user name or password")
        );
    }
    if e.is_connection_refusal() {
        return format!("connection refused ({text}); is redis-server running there?");
    }
    if e.is_timeout() && tls {
        // A plaintext server waits for the end of a line that a TLS handshake never sends.
        return format!(
            "no answer in time over TLS ({text}): the TLS handshake or the first reply did \
             not come; if the server is plaintext, use redis:// (corral never falls back \
             to plaintext)"
        );
    }
    if e.is_timeout() {
        return format!("no answer in time ({text})");
    }
    text
}

/// The TLS error under a Redis error, if the handshake (or the TLS layer) failed.
fn tls_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(t);
            }
        }
        cur = err.source();
    }
    None
}

/// Whether the server ended the connection (an end of file, a reset, a broken pipe)
/// rather than refusing it or not answering.
fn closed_by_server(e: &redis::RedisError) -> bool {
    use std::io::ErrorKind as K;
    if e.is_connection_dropped() {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

pub struct RedisSink {
    handle: Redis,
    bus: Weak<Bus>,
    raw: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<RawLine>>,
}

impl RedisSink {
    pub(super) fn new(
        handle: Redis,
        bus: Weak<Bus>,
        raw: tokio::sync::mpsc::Receiver<RawLine>,
    ) -> RedisSink {
        RedisSink {
            handle,
            bus,
            raw: tokio::sync::Mutex::new(raw),
        }
    }
}

/// Takes up to [`PIPELINE_EVENTS`] raw lines, at least one. The queue's sender lives in
/// the handle, so it never closes while the sink runs; were it closed, this never ends
/// (rather than spinning on an empty answer).
async fn next_raw(rx: &mut tokio::sync::mpsc::Receiver<RawLine>) -> Vec<RawLine> {
    let mut buf = Vec::new();
    if rx.recv_many(&mut buf, PIPELINE_EVENTS).await == 0 {
        std::future::pending::<()>().await;
    }
    buf
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capacity(&self) -> usize {
        CAPACITY
    }

    async fn run(self, mut queue: Queue) {
        let mut rx = self.handle.subscribe();
        let mut state = State::default();
        let mut raw_guard = self.raw.lock().await;
        let raw = &mut *raw_guard;
        loop {
            let cfg = rx.borrow_and_update().clone();
            let changed = if !cfg.enabled {
                state.conn = None;
                self.handle.set_connected(false, None);
                tokio::select! {
                    b = queue.next() => match b {
                        // Off: taken and forgotten, not counted.
                        Some(_) => false,
                        None => return,
                    },
                    // Lines sent just before it was turned off: forgotten too.
                    _ = next_raw(raw) => false,
                    r = rx.changed() => r.is_ok(),
                }
            } else if state.conn.is_some() {
                tokio::select! {
                    b = queue.next() => match b {
                        Some(batch) => { self.publish(&mut state, &cfg, batch).await; false }
                        None => return,
                    },
                    lines = next_raw(raw) => {
                        self.publish_raw(&mut state, &cfg, lines).await;
                        false
                    }
                    r = rx.changed() => r.is_ok(),
                }
            } else {
                match self
                    .connect(&mut state, &cfg, &mut queue, raw, &mut rx)
                    .await
                {
                    Step::Go => false,
                    Step::Changed => true,
                    Step::End => return,
                }
            };
            if changed {
                // New settings: connect afresh, at once.
                state.conn = None;
                state.failures = 0;
                self.handle.set_connected(false, None);
            }
        }
    }
}

#[derive(Default)]
struct State {
    conn: Option<redis::aio::MultiplexedConnection>,
    /// Failed tries since the last connection.
    failures: u32,
    /// Whether it has ever been connected (for the log and the `status` event).
    was_connected: bool,
    /// Events lost since the connection went away (or since the start), for the
    /// `status` event once it is back.
    lost: u64,
}

enum Step {
    Go,
    Changed,
    End,
}

impl RedisSink {
    /// One try to connect, after its backoff, while the queue is drained (and counted
    /// as dropped) and settings may change.
    async fn connect(
        &self,
        st: &mut State,
        cfg: &RedisConfig,
        queue: &mut Queue,
        raw: &mut tokio::sync::mpsc::Receiver<RawLine>,
        rx: &mut tokio::sync::watch::Receiver<RedisConfig>,
    ) -> Step {
        let wait = backoff(st.failures);
        let attempt = async {
            tokio::time::sleep(wait).await;
            let mut conn = open(cfg).await?;
            may_publish(&mut conn, cfg).await?;
            Ok::<_, String>(conn)
        };
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                // The queue first: events waiting while Redis is away are taken (and
                // counted) rather than left to push each other out.
                biased;
                r = &mut attempt => break r,
                b = queue.next() => match b {
                    Some(batch) => {
                        let n = batch.events.len() as u64 + batch.dropped;
                        self.handle.count_dropped(n);
                        st.lost += n;
                    }
                    None => return Step::End,
                },
                lines = next_raw(raw) => {
                    self.handle.count_raw(RawCount::Dropped, lines.len() as u64);
                }
                r = rx.changed() => if r.is_ok() { return Step::Changed },
            }
        };
        match result {
            Ok(conn) => {
                st.conn = Some(conn);
                st.failures = 0;
                self.handle.set_connected(true, None);
                tracing::info!(server = %cfg.server(), "publishing events to Redis");
                if st.lost > 0 {
                    self.announce_loss(st.lost);
                }
                st.was_connected = true;
                st.lost = 0;
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                self.handle.set_connected(false, Some(e.clone()));
                if st.failures == FIRST_TRIES {
                    tracing::warn!(
                        server = %cfg.server(),
                        "cannot reach Redis after {FIRST_TRIES} tries: {e}; events are \
                         counted as dropped while retrying in the background"
                    );
                }
            }
        }
        Step::Go
    }

    /// Sends a batch as pipelines of [`PIPELINE_EVENTS`] events, up to [`IN_FLIGHT`] of
    /// them at once on the one connection: Redis executes one while the next is encoded
    /// and on its way (requests go out, and replies come back, in order, so the stream
    /// keeps the events' order). Each pipeline's events count as published or failed by
    /// its own reply; a failure drops the connection.
    async fn publish(&self, st: &mut State, cfg: &RedisConfig, batch: Batch) {
        use futures_util::StreamExt;
        let Some(conn) = st.conn.clone() else {
            return;
        };
        if batch.dropped > 0 {
            self.handle.count_dropped(batch.dropped);
        }
        let ch = Channels::new(&cfg.channel_prefix);
        // A pipeline is encoded when there is room for it in flight.
        let mut chunks = batch.events.chunks(PIPELINE_EVENTS);
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let mut failed = 0;
        let mut error = None;
        loop {
            while in_flight.len() < IN_FLIGHT {
                let Some(chunk) = chunks.next() else { break };
                let mut pipe = redis::pipe();
                for s in chunk {
                    encode::append(&mut pipe, &ch, cfg.stream_maxlen, &s.event);
                }
                let (n, mut c) = (chunk.len() as u64, conn.clone());
                in_flight.push_back(async move { (n, pipe.query_async::<()>(&mut c).await) });
            }
            let Some((n, reply)) = in_flight.next().await else {
                break;
            };
            match reply {
                Ok(()) => self.handle.count_published(n),
                Err(e) => {
                    failed += n;
                    error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = error {
            let msg = describe(&e, cfg.is_tls());
            self.handle.count_failed(failed);
            self.handle.set_connected(false, Some(msg.clone()));
            tracing::warn!(
                server = %cfg.server(),
                "publishing to Redis failed: {msg}; reconnecting in the background"
            );
            st.conn = None;
            st.lost += failed;
            // The first retry waits a little: the server may be restarting.
            st.failures = FIRST_TRIES;
        }
    }

    /// Sends raw lines as one pipeline of `PUBLISH {prefix}:raw`; a failure drops the
    /// connection and counts them as dropped.
    async fn publish_raw(&self, st: &mut State, cfg: &RedisConfig, lines: Vec<RawLine>) {
        let Some(conn) = st.conn.as_mut() else {
            self.handle.count_raw(RawCount::Dropped, lines.len() as u64);
            return;
        };
        if lines.is_empty() {
            return;
        }
        let ch = Channels::new(&cfg.channel_prefix);
        let mut pipe = redis::pipe();
        for l in &lines {
            encode::append_raw(&mut pipe, &ch, l);
        }
        let n = lines.len() as u64;
        match pipe.query_async::<()>(conn).await {
            Ok(()) => self.handle.count_raw(RawCount::Published, n),
            Err(e) => {
                let msg = describe(&e, cfg.is_tls());
                self.handle.count_raw(RawCount::Dropped, n);
                self.handle.set_connected(false, Some(msg.clone()));
                tracing::warn!(
                    server = %cfg.server(),
                    "publishing raw lines to Redis failed: {msg}; reconnecting in the background"
                );
                st.conn = None;
                st.failures = FIRST_TRIES;
            }
        }
    }

    /// Puts on the bus the event saying how many events Redis missed.
    fn announce_loss(&self, lost: u64) {
        if let Some(bus) = self.bus.upgrade() {
            bus.emit(
                EventKind::new(
                    Component::System,
                    Level::Warning,
                    EventType::Status,
                    format!("Redis publisher reconnected; {lost} event(s) were dropped while it was unreachable"),
                )
                .with("publisher", "redis")
                .with("dropped", lost),
                "",
                "",
            );
        }
    }
}

/// A client for the settings (not yet connected). A `rediss://` URL is TLS or nothing:
/// a failed handshake is an error, never a reason to try plaintext.
pub(crate) fn client(cfg: &RedisConfig) -> Result<redis::Client, String> {
    let info = cfg.connection_info()?;
    let tls = matches!(info.addr, redis::ConnectionAddr::TcpTls { .. });
    match (&cfg.tls_ca, tls) {
        (Some(path), true) => {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read the TLS CA file {path} (redis_tls_ca, CORRAL_REDIS_TLS_CA): {e}"
                )
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| {
                format!(
                    "the TLS CA file {path} (redis_tls_ca) holds no usable PEM certificate: {}",
                    e.detail()
                        .map(str::to_string)
                        .unwrap_or_else(|| e.to_string())
                )
            })
        }
        _ => redis::Client::open(info).map_err(|e| describe(&e, tls)),
    }
}

/// Connects and checks the connection with a `PING` (which also proves the credentials).
pub(crate) async fn open(cfg: &RedisConfig) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = client(cfg)?;
    let describe = |e: redis::RedisError| describe(&e, cfg.is_tls());
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(describe)?;
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .map_err(describe)?;
    Ok(conn)
}

/// Whether the connection's user may run what publishing needs (`PUBLISH` to each
/// channel, `XADD` to the stream), found out without publishing anything: inside
/// `MULTI` the server checks a command's ACL when it queues it (a forbidden one is
/// answered `NOPERM` at once), and `DISCARD` then throws the queued commands away. A
/// user that may not run `MULTI` itself is not probed (its `PUBLISH` would run for
/// real): a missing permission then shows at the first publish instead.
async fn may_publish(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &RedisConfig,
) -> Result<(), String> {
    let tls = cfg.is_tls();
    if redis::cmd("MULTI").query_async::<()>(conn).await.is_err() {
        return Ok(());
    }
    let ch = Channels::new(&cfg.channel_prefix);
    let mut pipe = redis::pipe();
    for c in ch.list() {
        pipe.cmd("PUBLISH").arg(c).arg("{}").ignore();
    }
    pipe.cmd("XADD")
        .arg(&ch.stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(cfg.stream_maxlen)
        .arg("*")
        .arg("data")
        .arg("{}")
        .ignore();
    pipe.cmd("DISCARD").ignore();
    pipe.query_async::<()>(conn)
        .await
        .map_err(|e| describe(&e, tls))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_three_tries_a_second_apart_then_doubles_up_to_five_seconds() {
        let waits: Vec<u64> = (0..8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [0, 1000, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
