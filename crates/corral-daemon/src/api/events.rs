//! `GET /api/v1/events`: the observer store's events, then (with `follow`, the default for
//! SSE) every live one, as NDJSON or SSE. The store and the live stream are sinks of the
//! bus (`crate::sinks`); this module only filters, encodes and streams.

use super::stream::{self, Framing, Source};
use super::{ApiError, Shared};
use crate::bus::{Filter, Stored};
use crate::sinks::live::Subscription;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
pub struct EventQuery {
    pub(super) since: Option<u64>,
    pub(super) component: Option<String>,
    pub(super) level: Option<String>,
    pub(super) task: Option<String>,
    #[serde(rename = "type")]
    pub(super) event_type: Option<String>,
    pub(super) follow: Option<bool>,
    pub(super) node: Option<String>,
}

pub(super) fn filter(q: &EventQuery) -> Result<Filter, ApiError> {
    Ok(Filter {
        component: q
            .component
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
        min_level: q
            .level
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
        task: q.task.clone(),
        node: q.node.clone(),
        event_type: q
            .event_type
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
    })
}

/// Appends one event: `id: N\ndata: JSON\n\n` on SSE; on NDJSON the object with its `id`
/// added, so a client can resume with `?since=`.
fn encode(out: &mut Vec<u8>, s: &Stored, framing: Framing) {
    let json = serde_json::to_string(&*s.event).unwrap_or_default();
    match framing {
        Framing::Sse => out.extend_from_slice(format!("id: {}\ndata: {json}\n\n", s.id).as_bytes()),
        Framing::Ndjson => {
            let mut v: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
            v["id"] = s.id.into();
            out.extend_from_slice(format!("{v}\n").as_bytes());
        }
    }
}

/// A viewer's events, as many per chunk as are ready.
struct EventSource {
    sub: Subscription,
    framing: Framing,
}

impl Source for EventSource {
    async fn next(&mut self) -> Option<Bytes> {
        let first = self.sub.recv().await?;
        let mut out = Vec::new();
        encode(&mut out, &first, self.framing);
        while let Some(s) = self.sub.ready() {
            encode(&mut out, &s, self.framing);
        }
        Some(out.into())
    }
}

/// `GET /api/v1/events`: stored events after `since` (or `Last-Event-ID`), then, when
/// following, every later event. A viewer that falls behind the live stream resumes
/// from the store, so it loses nothing the store still holds.
pub async fn events(
    State(st): State<Shared>,
    Query(q): Query<EventQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let framing = Framing::of(&headers);
    let f = filter(&q)?;
    let since = stream::last_event_id(&headers)?.or(q.since).unwrap_or(0);
    // Ids start again with each daemon: a cursor from beyond the newest id belongs to an
    // earlier daemon, so replay what this one has rather than wait for ids to catch up.
    let since = if since > st.bus.last_id() { 0 } else { since };
    let follow = q.follow.unwrap_or(framing == Framing::Sse);
    let body = if follow {
        let sub = st.events.follow(since, f).await;
        stream::body(EventSource { sub, framing }, framing, st.shutdown.clone())
    } else {
        let mut out = Vec::new();
        for s in st.events.history(since, &f).await {
            encode(&mut out, &s, framing);
        }
        Body::from(out)
    };
    Ok(stream::response(framing, body))
}
