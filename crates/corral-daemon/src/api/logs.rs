//! Log endpoints: live and historical records as NDJSON, SSE or WebSocket, and the raw
//! log download.
//!
//! A stream starts at a cursor: `Last-Event-ID` (SSE resume), else `since` (records
//! after that seq), else `tail` (the last N records, default 1000). The response names
//! the run in `X-Corral-Run-Id`, so a client can resume the same run after a reconnect.
//! Framing, heartbeats and the end at shutdown are [`super::stream`]'s; the records come
//! encoded from the logbook, one shared buffer per batch.

use super::stream::{self, Framing, Shutdown, Source, HEARTBEAT};
use super::{ApiError, Shared};
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

/// A log byte stream's source: a follower, encoding with the logbook's shared batches.
struct LogSource {
    f: Follower,
    _guard: crate::metrics::FollowerGuard,
    fmt: Format,
    /// The end record went out: nothing follows.
    done: bool,
}

impl Source for LogSource {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let item = self.f.next().await?;
        self.done = matches!(item, Item::End(_));
        Some(item_bytes(item, self.fmt))
    }
}

fn open(st: &Shared, name: &str, q: &LogQuery) -> Result<Arc<RunLog>, ApiError> {
    let log = match &q.run {
        Some(run_id) => st.sup.run_log(run_id)?,
        None => st.sup.task_log(name)?,
    };
    Ok(log)
}

/// Where a stream starts: after `since` (the last seq the client has), else `tail`
/// records (default 1000) before the end.
pub(super) fn start_seq(log: &RunLog, since: Option<u64>, tail: Option<u64>) -> u64 {
    if let Some(id) = since {
        return id.saturating_add(1);
    }
    let last = log.stats().last_seq;
    let tail = tail.unwrap_or(DEFAULT_TAIL);
    (last + 1).saturating_sub(tail).max(1)
}

pub fn end_json(end: &crate::logbook::RunEnd) -> String {
    serde_json::json!({"end": {"status": end.status, "exit_code": end.exit_code, "signal": end.signal}})
        .to_string()
}

pub fn gap_json(from: u64, to: u64, reason: &str) -> String {
    serde_json::json!({"gap": {"from": from, "to": to, "reason": reason}}).to_string()
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
    let framing = Framing::of(&headers);
    let last_event_id = stream::last_event_id(&headers)?;
    let log = open(&st, &name, &q)?;
    let start = start_seq(&log, last_event_id.or(q.since), q.tail);
    let fmt = match framing {
        Framing::Sse => Format::Sse,
        Framing::Ndjson => Format::Ndjson,
    };
    let follow = q.follow.unwrap_or(framing == Framing::Sse);
    let run_id = log.run_id.clone();
    let src = LogSource {
        f: Follower::new(log, start, fmt, follow),
        _guard: crate::metrics::FollowerGuard::new(),
        fmt,
        done: false,
    };
    let mut resp = stream::response(framing, stream::body(src, framing, st.shutdown.clone()));
    let h = resp.headers_mut();
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
    let start = start_seq(&log, q.since, q.tail);
    let follow = q.follow.unwrap_or(true);
    let follower = Follower::new(log, start, Format::Ndjson, follow);
    let shutdown = st.shutdown.clone();
    Ok(ws.on_upgrade(move |socket| ws_loop(socket, follower, shutdown)))
}

async fn ws_loop(mut socket: WebSocket, mut f: Follower, shutdown: Shutdown) {
    use futures_util::SinkExt;
    let _guard = crate::metrics::FollowerGuard::new();
    let mut heartbeat = Box::pin(tokio::time::sleep(HEARTBEAT));
    let mut shutdown = shutdown.pinned();
    loop {
        let item = tokio::select! {
            biased;
            item = f.next() => Some(item),
            _ = shutdown.as_mut() => Some(None),
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
            None => vec![stream::heartbeat_json().into()],
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
