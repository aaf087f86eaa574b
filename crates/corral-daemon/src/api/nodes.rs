//! `GET /api/v1/nodes`: the fleet as a hub reads it from Redis (`crate::hub`): every
//! node seen, `up` or `gone`, with its version, API address, tasks and last heartbeat.
//! A daemon that is not a hub answers 404 and says how to start one.

use super::{ApiError, Shared};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use corral_client::wire::NodesAnswer;

pub async fn nodes(State(st): State<Shared>) -> Result<Json<NodesAnswer>, ApiError> {
    match &st.hub {
        Some(hub) => Ok(Json(hub.nodes())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_hub",
            "this daemon is not a hub: it lists no nodes; start one with `corral serve --hub` \
             (it reads the fleet from the Redis the nodes publish to)",
        )),
    }
}

// ---- A hub's reach into the nodes (gRPC, with the fleet token) ----
//
// `/api/v1/nodes/{node}/…` answers as the node's own `/api/v1/…` would, in the same JSON
// and stream formats, so every client (the CLI's `NODE/TASK` names, the dashboard) uses
// one code path for local and remote tasks.

use super::remote::{NodeClient, RemoteError};
use super::stream::{self, Framing, Source};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use corral_client::grpc as pb;
use corral_client::wire::{LogItem, RunInfo, Started, StopRequest, TaskInfo};
use futures_util::FutureExt;
use serde::Deserialize;

fn client(st: &Shared, node: &str) -> Result<NodeClient, ApiError> {
    let hub = st.hub.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_hub",
            "this daemon is not a hub: it reaches no other node; start one with `corral serve --hub`",
        )
    })?;
    let addr = hub
        .grpc_address(node)
        .ok_or_else(|| RemoteError::UnknownNode(node.to_string()));
    addr.and_then(|addr| st.remote.client(node, &addr))
        .map_err(|e| match e {
            RemoteError::UnknownNode(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_node", e.to_string())
            }
            RemoteError::Unusable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_unreachable",
                e.to_string(),
            ),
        })
}

/// A node's gRPC error as the HTTP error the node itself would have sent.
fn remote_error(node: &str, s: tonic::Status) -> ApiError {
    use tonic::Code;
    let (status, code) = match s.code() {
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "bad_request"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "conflict"),
        Code::Unauthenticated | Code::PermissionDenied => (StatusCode::BAD_GATEWAY, "node_refused"),
        Code::Unavailable | Code::DeadlineExceeded => {
            (StatusCode::SERVICE_UNAVAILABLE, "node_unreachable")
        }
        _ => (StatusCode::BAD_GATEWAY, "node_error"),
    };
    let hint = match s.code() {
        Code::Unauthenticated => " (give the hub and the node the same --fleet-token-file)",
        Code::PermissionDenied => {
            " (the node does not answer to the address it registered: see its --allow-host)"
        }
        _ => "",
    };
    ApiError::new(
        status,
        code,
        format!("node `{node}`: {}{hint}", s.message()),
    )
}

fn bad_answer(node: &str, e: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_error",
        format!("node `{node}`: {e}"),
    )
}

/// `GET /api/v1/nodes/{node}/tasks`
pub async fn tasks(
    State(st): State<Shared>,
    Path(node): Path<String>,
) -> Result<Json<Vec<TaskInfo>>, ApiError> {
    let reply = client(&st, &node)?
        .list_tasks(pb::ListTasksRequest {})
        .await
        .map_err(|e| remote_error(&node, e))?;
    let tasks = reply.into_inner().tasks.into_iter().map(TaskInfo::try_from);
    Ok(Json(
        tasks
            .collect::<Result<_, _>>()
            .map_err(|e| bad_answer(&node, e))?,
    ))
}

#[derive(Deserialize)]
pub struct RunsQuery {
    task: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/nodes/{node}/runs`
pub async fn runs(
    State(st): State<Shared>,
    Path(node): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Vec<RunInfo>>, ApiError> {
    let reply = client(&st, &node)?
        .list_runs(pb::ListRunsRequest {
            task: q.task.unwrap_or_default(),
            limit: q.limit.unwrap_or(0),
        })
        .await
        .map_err(|e| remote_error(&node, e))?;
    let runs = reply.into_inner().runs.into_iter().map(RunInfo::try_from);
    Ok(Json(
        runs.collect::<Result<_, _>>()
            .map_err(|e| bad_answer(&node, e))?,
    ))
}

/// `POST /api/v1/nodes/{node}/tasks/{name}/stop`
pub async fn stop(
    State(st): State<Shared>,
    Path((node, name)): Path<(String, String)>,
    body: Option<Json<StopRequest>>,
) -> Result<Json<TaskInfo>, ApiError> {
    let timeout_ms = body.and_then(|b| b.0.timeout_ms).unwrap_or(0);
    let reply = client(&st, &node)?
        .stop(pb::StopRequest {
            task: name,
            timeout_ms,
        })
        .await
        .map_err(|e| remote_error(&node, e))?;
    Ok(Json(
        TaskInfo::try_from(reply.into_inner()).map_err(|e| bad_answer(&node, e))?,
    ))
}

/// `POST /api/v1/nodes/{node}/tasks/{name}/restart`
pub async fn restart(
    State(st): State<Shared>,
    Path((node, name)): Path<(String, String)>,
) -> Result<Json<Started>, ApiError> {
    let s = client(&st, &node)?
        .restart(pb::TaskRef { task: name })
        .await
        .map_err(|e| remote_error(&node, e))?
        .into_inner();
    Ok(Json(Started {
        task: s.task,
        run_id: s.run_id,
        spawn_error: (!s.spawn_error.is_empty()).then_some(s.spawn_error),
    }))
}

#[derive(Deserialize, Default)]
pub struct LogQuery {
    since: Option<u64>,
    tail: Option<u64>,
    follow: Option<bool>,
    run: Option<String>,
}

/// `GET /api/v1/nodes/{node}/tasks/{name}/logs`: the node's log stream, through its
/// gRPC `Follow`, with the local stream's cursor rules, formats and headers.
pub async fn logs(
    State(st): State<Shared>,
    Path((node, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let framing = Framing::of(&headers);
    let since = stream::last_event_id(&headers)?.or(q.since);
    let follow = q.follow.unwrap_or(framing == Framing::Sse);
    let reply = client(&st, &node)?
        .follow(pb::FollowRequest {
            task: name,
            run_id: q.run.unwrap_or_default(),
            from_seq: since.map_or(0, |s| s.saturating_add(1)),
            tail: q.tail.unwrap_or(0),
            follow,
        })
        .await
        .map_err(|e| remote_error(&node, e))?;
    let meta = reply.metadata().clone();
    let src = Remote {
        messages: reply.into_inner(),
        framing,
        done: false,
    };
    let mut resp = stream::response(framing, stream::body(src, framing, st.shutdown.clone()));
    for name in [super::grpc::RUN_ID, super::grpc::START_SEQ] {
        if let Some(v) = meta
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            resp.headers_mut().insert(name, v);
        }
    }
    Ok(resp)
}

/// A node's `Follow` messages, encoded as the local log stream encodes records.
struct Remote {
    messages: tonic::Streaming<pb::FollowReply>,
    framing: Framing,
    done: bool,
}

/// Bytes gathered from messages already received before a chunk is handed on.
const CHUNK: usize = 64 * 1024;

impl Remote {
    fn encode(&mut self, m: pb::FollowReply, out: &mut Vec<u8>) {
        let Ok(item) = LogItem::try_from(m) else {
            return;
        };
        let json = serde_json::to_string(&item).unwrap_or_default();
        match (self.framing, &item) {
            (Framing::Ndjson, _) => {
                out.extend_from_slice(json.as_bytes());
                out.push(b'\n');
            }
            (Framing::Sse, LogItem::Record(r)) => {
                out.extend_from_slice(format!("id: {}\ndata: {json}\n\n", r.seq).as_bytes())
            }
            (Framing::Sse, LogItem::Gap { .. }) => {
                out.extend_from_slice(format!("event: gap\ndata: {json}\n\n").as_bytes())
            }
            (Framing::Sse, LogItem::End { .. }) => {
                out.extend_from_slice(format!("event: end\ndata: {json}\n\n").as_bytes())
            }
            (Framing::Sse, LogItem::Heartbeat { .. }) => {}
        }
        if matches!(item, LogItem::End { .. }) {
            self.done = true;
        }
    }
}

impl Source for Remote {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        // A broken connection to the node ends this stream; the client resumes from
        // its cursor, as after any lost connection.
        let first = self.messages.message().await.ok()??;
        let mut out = Vec::new();
        self.encode(first, &mut out);
        while out.len() < CHUNK && !self.done {
            match self.messages.message().now_or_never() {
                Some(Ok(Some(m))) => self.encode(m, &mut out),
                _ => break,
            }
        }
        Some(out.into())
    }
}
