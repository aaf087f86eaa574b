//! The gRPC API (`corral-client/proto/corral/v1/corral.proto`), served on the HTTP API's
//! port: the router sends `content-type: application/grpc` requests here, behind the same
//! guard (token, `Host`/`:authority`), so both APIs have one set of rules.
//!
//! Each call is a thin translation onto what the HTTP handlers use: the supervisor, the
//! registry, the logbook's followers and the event sinks. `Follow` reads the logbook's
//! shared batches directly (no JSON in between), with the HTTP stream's cursor rules.

use super::stream::Shutdown;
use super::{ApiError, Shared};
use crate::logbook::follow::{Follower, RawItem};
use crate::logbook::{Format, RunLog};
use corral_client::grpc::corral_server::{Corral, CorralServer};
use corral_client::grpc::{self as pb, follow_reply};
use corral_client::wire::TaskSpec;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// `Follow`'s response metadata: the run it follows, and the first seq it sends.
pub const RUN_ID: &str = "x-corral-run-id";
pub const START_SEQ: &str = "x-corral-start-seq";

/// The gRPC service's paths (`/corral.v1.Corral/Follow`, …), routed to [`service`].
pub const PATH: &str = "/corral.v1.Corral/{*method}";

/// The gRPC service, for the HTTP router.
pub fn service(st: Shared) -> CorralServer<impl Corral> {
    CorralServer::new(Service { st })
}

/// Whether a request is a gRPC call.
pub fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// An API error as a gRPC status, with the same message.
pub fn status(e: ApiError) -> Status {
    use axum::http::StatusCode as S;
    let msg = e.message;
    match e.status {
        S::NOT_FOUND => Status::not_found(msg),
        S::UNAUTHORIZED => Status::unauthenticated(msg),
        S::FORBIDDEN => Status::permission_denied(msg),
        S::CONFLICT => Status::failed_precondition(msg),
        S::BAD_REQUEST | S::UNPROCESSABLE_ENTITY | S::PAYLOAD_TOO_LARGE => {
            Status::invalid_argument(msg)
        }
        S::SERVICE_UNAVAILABLE | S::GONE => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

struct Service {
    st: Shared,
}

type Stream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl Corral for Service {
    type FollowStream = Stream<pb::FollowReply>;
    type EventsStream = Stream<pb::EventReply>;

    async fn follow(
        &self,
        req: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let q = req.into_inner();
        let log = if q.run_id.is_empty() {
            self.st.sup.task_log(&q.task)
        } else {
            self.st.sup.run_log(&q.run_id)
        }
        .map_err(|e| status(e.into()))?;
        let start = super::logs::start_seq(
            &log,
            (q.from_seq > 0).then(|| q.from_seq - 1),
            (q.tail > 0).then_some(q.tail),
        );
        let follower = Follower::new(log.clone(), start, Format::Ndjson, q.follow);
        let run_id = log.run_id.clone();
        let mut resp = Response::new(follow_stream(follower, log, self.st.shutdown.clone()));
        // As the HTTP stream's headers: the run, and where the stream starts, so a client
        // can resume exactly there even before it has received a record.
        let md = resp.metadata_mut();
        if let Ok(v) = run_id.parse() {
            md.insert(RUN_ID, v);
        }
        if let Ok(v) = start.to_string().parse() {
            md.insert(START_SEQ, v);
        }
        Ok(resp)
    }

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let q = req.into_inner();
        let none_if_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = super::events::filter(&super::events::EventQuery {
            since: None,
            component: none_if_empty(q.component),
            level: none_if_empty(q.level),
            task: none_if_empty(q.task),
            event_type: none_if_empty(q.event_type),
            follow: None,
            node: none_if_empty(q.node),
        })
        .map_err(status)?;
        let since = if q.since > self.st.bus.last_id() {
            0
        } else {
            q.since
        };
        if !q.follow {
            let stored = self.st.events.history(since, &filter).await;
            let out: Vec<_> = stored.iter().map(|s| Ok(event_reply(s))).collect();
            return Ok(Response::new(stream::iter(out).boxed()));
        }
        let sub = self.st.events.follow(since, filter).await;
        let shutdown = self.st.shutdown.clone().pinned();
        let s = stream::unfold((sub, shutdown), |(mut sub, mut shutdown)| async move {
            let next = tokio::select! {
                s = sub.recv() => s,
                _ = shutdown.as_mut() => None,
            }?;
            Some((Ok(event_reply(&next)), (sub, shutdown)))
        });
        Ok(Response::new(s.boxed()))
    }

    async fn list_tasks(
        &self,
        _: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksReply>, Status> {
        let tasks = self.st.sup.list().into_iter().map(pb::Task::from).collect();
        Ok(Response::new(pb::ListTasksReply { tasks }))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsReply>, Status> {
        let q = req.into_inner();
        let task = (!q.task.is_empty()).then_some(q.task.as_str());
        let limit = (q.limit > 0).then_some(q.limit as usize);
        let runs = super::tasks::list_runs(&self.st, task, limit).map_err(status)?;
        Ok(Response::new(pb::ListRunsReply {
            runs: runs.into_iter().map(pb::Run::from).collect(),
        }))
    }

    async fn start(&self, req: Request<pb::StartRequest>) -> Result<Response<pb::Started>, Status> {
        let spec: TaskSpec = serde_json::from_str(&req.into_inner().spec_json)
            .map_err(|e| Status::invalid_argument(format!("bad task: {e}")))?;
        let name = spec.name.clone();
        let s = self.st.sup.run(spec).await.map_err(|e| status(e.into()))?;
        Ok(Response::new(started(name, s)))
    }

    async fn stop(&self, req: Request<pb::StopRequest>) -> Result<Response<pb::Task>, Status> {
        let q = req.into_inner();
        let timeout = (q.timeout_ms > 0).then(|| Duration::from_millis(q.timeout_ms));
        let t = self
            .st
            .sup
            .stop(&q.task, timeout)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::Task::from(t)))
    }

    async fn restart(&self, req: Request<pb::TaskRef>) -> Result<Response<pb::Started>, Status> {
        let name = req.into_inner().task;
        let s = self
            .st
            .sup
            .restart(&name)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(started(name, s)))
    }
}

/// A follower's items as one message per record, ending with the run's `End` (or at the
/// daemon's shutdown, like the HTTP streams).
fn follow_stream(
    follower: Follower,
    log: Arc<RunLog>,
    shutdown: Shutdown,
) -> Stream<pb::FollowReply> {
    struct St {
        f: Follower,
        run_id: String,
        ready: VecDeque<pb::FollowReply>,
        shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        /// Set at the daemon's shutdown: what comes before it still goes out, as on
        /// the HTTP streams ([`super::stream::SHUTDOWN_GRACE`]).
        closing: Option<tokio::time::Instant>,
        done: bool,
    }
    let st = St {
        f: follower,
        run_id: log.run_id.clone(),
        ready: VecDeque::new(),
        shutdown: shutdown.pinned(),
        closing: None,
        done: false,
    };
    stream::unfold(st, |mut st| async move {
        loop {
            if let Some(m) = st.ready.pop_front() {
                return Some((Ok(m), st));
            }
            if st.done {
                return None;
            }
            let item = match st.closing {
                Some(deadline) => tokio::time::timeout_at(deadline, st.f.next_raw())
                    .await
                    .ok()??,
                None => tokio::select! {
                    biased;
                    item = st.f.next_raw() => item?,
                    _ = st.shutdown.as_mut() => {
                        st.closing =
                            Some(tokio::time::Instant::now() + super::stream::SHUTDOWN_GRACE);
                        continue;
                    }
                },
            };
            let item = match item {
                RawItem::Records { batch, from, to } => {
                    for seq in from..=to {
                        let i = (seq - batch.first_seq) as usize;
                        let rec = &batch.recs[i];
                        let bytes = batch.content(i);
                        let line = String::from_utf8_lossy(bytes);
                        st.ready.push_back(pb::FollowReply {
                            item: Some(follow_reply::Item::Record(pb::Record {
                                seq,
                                ts: rec.ts_micros as f64 / 1e6,
                                run_id: st.run_id.clone(),
                                stream: rec.stream.as_str().to_string(),
                                lossy: matches!(line, std::borrow::Cow::Owned(_)),
                                line: line.into_owned(),
                                partial: rec.partial,
                            })),
                        });
                    }
                    continue;
                }
                RawItem::Gap { from, to, reason } => follow_reply::Item::Gap(pb::Gap {
                    from,
                    to,
                    reason: reason.to_string(),
                }),
                RawItem::End(end) => {
                    st.done = true;
                    follow_reply::Item::End(pb::End {
                        status: end.status.as_str().to_string(),
                        exit_code: end.exit_code,
                        signal: end.signal,
                    })
                }
            };
            st.ready.push_back(pb::FollowReply { item: Some(item) });
        }
    })
    .boxed()
}

fn event_reply(s: &crate::bus::Stored) -> pb::EventReply {
    let e = &*s.event;
    pb::EventReply {
        id: s.id,
        timestamp: e.timestamp,
        node: e.node.clone(),
        task: e.task.clone(),
        run_id: e.run_id.clone(),
        component: e.component.as_str().to_string(),
        level: e.level.as_str().to_string(),
        event_type: e.event_type.as_str().to_string(),
        message: e.message.clone(),
        details_json: serde_json::Value::Object(e.details.clone()).to_string(),
    }
}

fn started(task: String, s: crate::supervisor::Started) -> pb::Started {
    pb::Started {
        task,
        run_id: s.run_id,
        spawn_error: s.spawn_error.unwrap_or_default(),
    }
}
