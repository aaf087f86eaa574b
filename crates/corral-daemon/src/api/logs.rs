//! Log endpoints: live and historical records as NDJSON, SSE or WebSocket, and the raw
//! log download.
//!
//! A stream starts at a cursor: `Last-Event-ID` (SSE resume), else `since` (records
//! after that seq), else `tail` (the last N records, default 1000). The response names
//! the run in `X-Corral-Run-Id`, so a client can resume the same run after a reconnect.

use super::{ApiError, Shared, HEARTBEAT};
use crate::logbook::follow::{Follower, Item};
use crate::logbook::{Format, RunLog};
use axum::body::Body;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, Default)]
pub struct LogQuery {
    since: Option<u64>,
    tail: Option<u64>,
    follow: Option<bool>,
    run: Option<String>,
}

const DEFAULT_TAIL: u64 = 1000;

/// Bytes a log stream hands to its connection before it lets other tasks run.
const YIELD_AFTER: usize = 256 * 1024;

/// A byte stream's state between items.
struct LogStream {
    f: Follower,
    _guard: crate::metrics::FollowerGuard,
    fmt: Format,
    /// The end record went out: nothing follows.
    done: bool,
    /// Fires when the stream was idle for [`HEARTBEAT`].
    heartbeat: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Bytes handed out since the task last yielded.
    unyielded: usize,
}

fn open(st: &Shared, name: &str, q: &LogQuery) -> Result<Arc<RunLog>, ApiError> {
    let log = match &q.run {
        Some(run_id) => st.sup.run_log(run_id)?,
        None => st.sup.task_log(name)?,
    };
    Ok(log)
}

fn start_seq(log: &RunLog, q: &LogQuery, last_event_id: Option<u64>) -> u64 {
    if let Some(id) = last_event_id.or(q.since) {
        return id.saturating_add(1);
    }
    let last = log.stats().last_seq;
    let tail = q.tail.unwrap_or(DEFAULT_TAIL);
    (last + 1).saturating_sub(tail).max(1)
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

pub fn end_json(end: &crate::logbook::RunEnd) -> String {
    serde_json::json!({"end": {"status": end.status, "exit_code": end.exit_code, "signal": end.signal}})
        .to_string()
}

pub fn gap_json(from: u64, to: u64, reason: &str) -> String {
    serde_json::json!({"gap": {"from": from, "to": to, "reason": reason}}).to_string()
}

fn heartbeat_json() -> String {
    format!("{{\"heartbeat\":{:.3}}}", crate::util::unix_now())
}

/// Encodes an item for a byte stream (NDJSON or SSE).
fn item_bytes(item: Item, fmt: Format) -> Bytes {
    match (item, fmt) {
        (Item::Records { data, .. }, _) => data,
        (Item::Gap { from, to, reason }, Format::Ndjson) => {
            format!("{}\n", gap_json(from, to, reason)).into()
        }
        (Item::Gap { from, to, reason }, Format::Sse) => {
            format!("event: gap\ndata: {}\n\n", gap_json(from, to, reason)).into()
        }
        (Item::End(end), Format::Ndjson) => format!("{}\n", end_json(&end)).into(),
        (Item::End(end), Format::Sse) => format!("event: end\ndata: {}\n\n", end_json(&end)).into(),
    }
}

pub async fn task_logs(
    State(st): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sse = wants_sse(&headers);
    let last_event_id = super::last_event_id(&headers)?;
    let log = open(&st, &name, &q)?;
    let start = start_seq(&log, &q, last_event_id);
    let fmt = if sse { Format::Sse } else { Format::Ndjson };
    let follow = q.follow.unwrap_or(sse);
    let run_id = log.run_id.clone();
    let follower = Follower::new(log, start, fmt, follow);
    let state = LogStream {
        f: follower,
        _guard: crate::metrics::FollowerGuard::new(),
        fmt,
        done: false,
        heartbeat: Box::pin(tokio::time::sleep(HEARTBEAT)),
        unyielded: 0,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        if s.unyielded >= YIELD_AFTER {
            // A follower catching up always has its next records ready: without a turn
            // given back now and then, one connection would keep a runtime worker (and
            // the supervisor, the API and live followers queued behind it) for as long
            // as its socket takes data.
            s.unyielded = 0;
            tokio::task::yield_now().await;
        }
        let item = tokio::select! {
            biased;
            item = s.f.next() => item,
            _ = s.heartbeat.as_mut() => {
                s.heartbeat.as_mut().reset(tokio::time::Instant::now() + HEARTBEAT);
                let hb: Bytes = match s.fmt {
                    Format::Sse => Bytes::from_static(b": heartbeat\n\n"),
                    Format::Ndjson => format!("{}\n", heartbeat_json()).into(),
                };
                return Some((Ok::<_, std::io::Error>(hb), s));
            }
        }?;
        // One timer per stream, pushed back on every item (cheap: it only moves later),
        // rather than a new timeout per item.
        s.heartbeat
            .as_mut()
            .reset(tokio::time::Instant::now() + HEARTBEAT);
        s.done = matches!(item, Item::End(_));
        let bytes = item_bytes(item, s.fmt);
        s.unyielded += bytes.len();
        Some((Ok(bytes), s))
    });
    let ctype = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&run_id) {
        h.insert("x-corral-run-id", v);
    }
    // Where this stream starts, so a client can resume exactly there even before it
    // has received a record.
    if let Ok(v) = HeaderValue::from_str(&start.to_string()) {
        h.insert("x-corral-start-seq", v);
    }
    Ok(resp)
}

pub async fn task_logs_ws(
    State(st): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let log = open(&st, &name, &q)?;
    let start = start_seq(&log, &q, None);
    let follow = q.follow.unwrap_or(true);
    let follower = Follower::new(log, start, Format::Ndjson, follow);
    Ok(ws.on_upgrade(move |socket| ws_loop(socket, follower)))
}

async fn ws_loop(mut socket: WebSocket, mut f: Follower) {
    use futures_util::SinkExt;
    let _guard = crate::metrics::FollowerGuard::new();
    let mut heartbeat = Box::pin(tokio::time::sleep(HEARTBEAT));
    loop {
        let item = tokio::select! {
            biased;
            item = f.next() => Some(item),
            _ = heartbeat.as_mut() => None,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        heartbeat
            .as_mut()
            .reset(tokio::time::Instant::now() + HEARTBEAT);
        // One message per record, as slices of the shared encoded batch (no copy: the
        // encoder only writes valid UTF-8), queued together and flushed once.
        let texts: Vec<Utf8Bytes> = match item {
            Some(Some(Item::Records { data, .. })) => data
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    Utf8Bytes::try_from(data.slice_ref(l))
                        .unwrap_or_else(|_| String::from_utf8_lossy(l).into_owned().into())
                })
                .collect(),
            Some(Some(Item::Gap { from, to, reason })) => vec![gap_json(from, to, reason).into()],
            Some(Some(Item::End(end))) => vec![end_json(&end).into()],
            Some(None) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            None => vec![heartbeat_json().into()],
        };
        for t in texts {
            if socket.feed(Message::Text(t)).await.is_err() {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

/// The run's `.log` as the process wrote it. After a size cap the dropped middle is
/// left out and named in `X-Corral-Gap: FROM-TO` (seqs).
pub async fn raw_log(
    State(st): State<Shared>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let log = st.sup.run_log(&run_id)?;
    let ranges = log
        .raw_ranges()
        .map_err(|e| ApiError::new(StatusCode::GONE, "log_unreadable", e.to_string()))?;
    let gap = log.stats().gap;
    let stream =
        futures_util::stream::unfold((log, ranges, 0usize), |(log, ranges, i)| async move {
            let (mut a, b) = *ranges.get(i)?;
            if a >= b {
                return Some((Ok(Bytes::new()), (log, ranges, i + 1)));
            }
            let n = ((b - a) as usize).min(1 << 20);
            let mut buf = vec![0u8; n];
            let res = {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.read_raw(a, &mut buf).map(|got| (buf, got)))
                    .await
            };
            match res {
                Ok(Ok((mut buf, got))) if got > 0 => {
                    buf.truncate(got);
                    a += got as u64;
                    let mut ranges = ranges;
                    ranges[i].0 = a;
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), (log, ranges, i)))
                }
                Ok(Ok(_)) => Some((Ok(Bytes::new()), (log, ranges, i + 1))),
                Ok(Err(e)) => Some((Err(e), (log, Vec::new(), 0))),
                Err(e) => Some((Err(std::io::Error::other(e)), (log, Vec::new(), 0))),
            }
        });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(g) = gap {
        if let Ok(v) = HeaderValue::from_str(&format!("{}-{}", g.from, g.to)) {
            h.insert("x-corral-gap", v);
        }
    }
    Ok(resp)
}
