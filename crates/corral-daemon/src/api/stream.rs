//! Streaming responses, shared by the log streams and the event stream: the framing
//! (SSE or NDJSON, chosen by `Accept`), a heartbeat on an idle stream, fair turns on a
//! busy one, and the end at daemon shutdown.
//!
//! A stream's content comes from a [`Source`], which encodes its own chunks (the log
//! streams hand out batches encoded once and shared by every follower); this module
//! only moves them. Invariants:
//! - an idle stream carries a heartbeat at least every [`HEARTBEAT`]: `: heartbeat` on
//!   SSE, `{"heartbeat":TS}` on NDJSON;
//! - at shutdown a stream hands out what its source has or gets within a short grace
//!   (a stopped run's last records and end, still being read), then ends cleanly (the
//!   body ends; no error).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::watch;

/// Idle streams carry a heartbeat at least this often.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// Bytes a stream hands to its connection before it lets other tasks run.
const YIELD_AFTER: usize = 256 * 1024;

/// How a byte stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-sent events (`Accept: text/event-stream`).
    Sse,
    /// One JSON object per line.
    Ndjson,
}

impl Framing {
    pub fn of(headers: &HeaderMap) -> Framing {
        let sse = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        if sse {
            Framing::Sse
        } else {
            Framing::Ndjson
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Sse => "text/event-stream",
            Framing::Ndjson => "application/x-ndjson",
        }
    }

    fn heartbeat(self) -> Bytes {
        match self {
            Framing::Sse => Bytes::from_static(b": heartbeat\n\n"),
            Framing::Ndjson => format!("{}\n", heartbeat_json()).into(),
        }
    }
}

/// The NDJSON (and WebSocket) heartbeat object.
pub fn heartbeat_json() -> String {
    format!("{{\"heartbeat\":{:.3}}}", crate::util::unix_now())
}

/// The `Last-Event-ID` an SSE client sends when it reconnects: `None` when absent; a
/// value that is not a number is the client's mistake, said as such (silently replaying
/// from the start would send duplicates).
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, super::ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            super::ApiError::bad_request(format!(
                "Last-Event-ID `{}` is not a number: send the `id:` of the last event received",
                String::from_utf8_lossy(v.as_bytes()).escape_default()
            ))
        })
}

/// What a stream sends: encoded chunks, until it ends.
pub trait Source: Send + 'static {
    /// The next chunk, or `None` at the end. Must be cancel-safe: it races the
    /// heartbeat and the shutdown, and loses when it is not ready.
    fn next(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

/// The daemon's shutdown as streams see it: set once, after the tasks are stopped and
/// the sinks flushed.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// The signal and its trigger (send `true` to shut down).
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Returns once the daemon is shutting down (or the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }

    /// [`Shutdown::wait`] as one future for a stream's whole life: polled only while the
    /// stream is idle, it stays registered rather than registering anew each time.
    pub fn pinned(mut self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.wait().await })
    }
}

struct Plumbing<S> {
    src: S,
    framing: Framing,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Fires when the stream was idle for [`HEARTBEAT`]: one timer per stream, pushed
    /// back on every chunk (cheap: it only moves later), rather than a timeout per chunk.
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    /// Bytes handed out since the task last yielded.
    unyielded: usize,
    /// Set when the daemon began shutting down: until then the source may still hand
    /// out what it has (a run's last records and its end, being read), then the stream
    /// ends.
    closing: Option<tokio::time::Instant>,
}

/// How long a stream may go on handing out what its source has once the daemon shuts
/// down (its tasks are stopped by then: what is left is their last records and end).
pub(super) const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Heartbeat deadlines fall on a grid of this step, so the idle streams of a daemon fire
/// together, in one wake-up of the runtime, rather than a thousand times apart.
const HEARTBEAT_GRID: std::time::Duration = std::time::Duration::from_secs(1);

/// When an idle stream's next heartbeat is due: within [`HEARTBEAT`] of `now`, at most
/// [`HEARTBEAT_GRID`] sooner, on the daemon-wide grid.
fn heartbeat_due(now: tokio::time::Instant) -> tokio::time::Instant {
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| now);
    let due = (now + HEARTBEAT).saturating_duration_since(base);
    let grid = HEARTBEAT_GRID.as_millis();
    let on_grid = std::time::Duration::from_millis((due.as_millis() / grid * grid) as u64);
    (base + on_grid).max(now + HEARTBEAT - HEARTBEAT_GRID)
}

/// A streaming body: the source's chunks, heartbeats while it is idle, and the end
/// when it ends or the daemon shuts down.
pub fn body<S: Source>(src: S, framing: Framing, shutdown: Shutdown) -> Body {
    let state = Plumbing {
        src,
        framing,
        shutdown: shutdown.pinned(),
        heartbeat: Box::pin(tokio::time::sleep_until(heartbeat_due(
            tokio::time::Instant::now(),
        ))),
        unyielded: 0,
        closing: None,
    };
    Body::from_stream(futures_util::stream::unfold(state, |mut p| async move {
        if let Some(deadline) = p.closing {
            let chunk = tokio::time::timeout_at(deadline, p.src.next())
                .await
                .ok()??;
            return Some((Ok(chunk), p));
        }
        if p.unyielded >= YIELD_AFTER {
            // A follower catching up always has its next chunk ready: without a turn
            // given back now and then, one connection would keep a runtime worker (and
            // the supervisor, the API and live followers queued behind it) for as long
            // as its socket takes data.
            p.unyielded = 0;
            tokio::task::yield_now().await;
        }
        let chunk = tokio::select! {
            biased;
            chunk = p.src.next() => chunk?,
            _ = p.shutdown.as_mut() => {
                // What the source has, or gets within the grace, still goes out.
                let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                p.closing = Some(deadline);
                let chunk = tokio::time::timeout_at(deadline, p.src.next()).await.ok()??;
                return Some((Ok(chunk), p));
            }
            _ = p.heartbeat.as_mut() => {
                p.heartbeat.as_mut().reset(heartbeat_due(tokio::time::Instant::now()));
                let hb = p.framing.heartbeat();
                return Some((Ok::<_, std::io::Error>(hb), p));
            }
        };
        p.heartbeat
            .as_mut()
            .reset(heartbeat_due(tokio::time::Instant::now()));
        p.unyielded += chunk.len();
        Some((Ok(chunk), p))
    }))
}

/// The response around a streaming body, with the headers every stream has.
pub fn response(framing: Framing, body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(framing.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells a buffering proxy (nginx) to pass chunks on as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// Idle streams' heartbeats fall due together (on the grid), never later than
    /// [`HEARTBEAT`] after the stream went idle, and at most one grid step sooner.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_of_idle_streams_fall_due_together() {
        let t0 = tokio::time::Instant::now();
        let mut dues = std::collections::BTreeSet::new();
        // A hundred streams going idle over one grid step.
        for i in 0..100u64 {
            let now = t0 + HEARTBEAT_GRID * (i as u32) / 100;
            let due = heartbeat_due(now);
            assert!(due <= now + HEARTBEAT, "{i}: later than the promise");
            assert!(due + HEARTBEAT_GRID >= now + HEARTBEAT, "{i}: too soon");
            dues.insert(due);
        }
        assert!(dues.len() <= 2, "{} different deadlines", dues.len());
    }

    /// Chunks from a channel.
    struct Chan(tokio::sync::mpsc::UnboundedReceiver<&'static str>);

    impl Source for Chan {
        async fn next(&mut self) -> Option<Bytes> {
            self.0.recv().await.map(Bytes::from)
        }
    }

    async fn chunk(s: &mut axum::body::BodyDataStream) -> Option<String> {
        s.next()
            .await
            .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_beats_and_shutdown_ends_it_after_what_is_ready() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (down, shutdown) = Shutdown::new();
        let mut s = body(Chan(rx), Framing::Sse, shutdown).into_data_stream();
        tx.send("a").unwrap();
        assert_eq!(chunk(&mut s).await.as_deref(), Some("a"));
        // Nothing for 15 s (paused time moves on by itself): a heartbeat.
        assert_eq!(chunk(&mut s).await.as_deref(), Some(": heartbeat\n\n"));
        tx.send("b").unwrap();
        down.send(true).unwrap();
        assert_eq!(chunk(&mut s).await.as_deref(), Some("b"));
        assert_eq!(chunk(&mut s).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn ndjson_heartbeats_are_objects_and_a_source_end_ends_the_stream() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (_down, shutdown) = Shutdown::new();
        let mut s = body(Chan(rx), Framing::Ndjson, shutdown).into_data_stream();
        let hb = chunk(&mut s).await.unwrap();
        assert!(
            hb.starts_with("{\"heartbeat\":") && hb.ends_with("}\n"),
            "{hb}"
        );
        drop(tx);
        assert_eq!(chunk(&mut s).await, None);
    }
}
