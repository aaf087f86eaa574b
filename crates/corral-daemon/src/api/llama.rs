//! llama.cpp endpoints: coordinator status, the event stream, the backend registry.

use super::{ApiError, Shared, HEARTBEAT};
use crate::bus::{Filter, Stored};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

pub async fn status(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let spec = st.sup.spec(&name)?;
    if spec.kind.as_deref() != Some("llama") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_llama_task",
            format!(
                "task `{name}` is not a llama-server coordinator (start one with `corral llama`)"
            ),
        ));
    }
    st.sup
        .kinds
        .get("llama")
        .and_then(|k| k.status(&name))
        .map(Json)
        .ok_or_else(|| crate::supervisor::SupError::UnknownTask(name).into())
}

pub async fn backends(State(st): State<Shared>) -> Json<Vec<corral_client::wire::Backend>> {
    Json(st.llama.backends())
}

#[derive(Deserialize, Default)]
pub struct EventQuery {
    since: Option<u64>,
    component: Option<String>,
    level: Option<String>,
    task: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    follow: Option<bool>,
}

fn filter(q: &EventQuery) -> Result<Filter, ApiError> {
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
        event_type: q
            .event_type
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
    })
}

fn encode(s: &Stored, sse: bool) -> Bytes {
    let json = serde_json::to_string(&*s.event).unwrap_or_default();
    if sse {
        format!("id: {}\ndata: {json}\n\n", s.id).into()
    } else {
        // NDJSON carries the id too, so a client can resume with ?since=.
        let mut v: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
        v["id"] = s.id.into();
        format!("{v}\n").into()
    }
}

/// `GET /api/v1/events`: stored events after `since`, then (with `follow`, the default
/// for SSE) live ones. A viewer that falls behind the live broadcast resumes from the
/// store, so it loses nothing the store still holds.
pub async fn events(
    State(st): State<Shared>,
    Query(q): Query<EventQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let f = filter(&q)?;
    let since = super::last_event_id(&headers)?.or(q.since).unwrap_or(0);
    // Ids start again with each daemon: a cursor from beyond the newest id belongs to an
    // earlier daemon, so replay what this one has rather than wait for ids to catch up.
    let since = if since > st.bus.last_id() { 0 } else { since };
    let follow = q.follow.unwrap_or(sse);
    let bus = st.bus.clone();
    let (hist, rx) = bus.subscribe(since, &f);
    let last = hist.last().map_or(since, |s| s.id);
    let mut head = Vec::new();
    for s in &hist {
        head.extend_from_slice(&encode(s, sse));
    }
    let first =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
    let live = futures_util::stream::unfold(
        (rx, last, bus, f),
        move |(mut rx, mut last, bus, f)| async move {
            if !follow {
                return None;
            }
            loop {
                match tokio::time::timeout(HEARTBEAT, rx.recv()).await {
                    Err(_) => {
                        let hb: Bytes = if sse {
                            Bytes::from_static(b": heartbeat\n\n")
                        } else {
                            format!("{{\"heartbeat\":{:.3}}}\n", crate::util::unix_now()).into()
                        };
                        return Some((Ok(hb), (rx, last, bus, f)));
                    }
                    Ok(Ok(s)) => {
                        if s.id <= last || !f.matches(&s.event) {
                            continue;
                        }
                        last = s.id;
                        return Some((Ok(encode(&s, sse)), (rx, last, bus, f)));
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                        // Catch up from the store rather than dropping the viewer.
                        let missed = bus.history(last, &f);
                        let mut out = Vec::new();
                        for s in &missed {
                            out.extend_from_slice(&encode(s, sse));
                            last = s.id;
                        }
                        return Some((Ok(Bytes::from(out)), (rx, last, bus, f)));
                    }
                    Ok(Err(_)) => return None,
                }
            }
        },
    );
    let ctype = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut resp = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        first, live,
    )));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
