//! The gRPC API (`proto/corral/v1/corral.proto`, a public contract): its messages, the
//! client ([`corral_client::CorralClient`]) and the trait a server implements
//! ([`corral_server::Corral`]), with conversions to and from the JSON wire types so both
//! APIs answer alike.

#[allow(clippy::all, missing_docs)]
mod pb {
    tonic::include_proto!("corral.v1");
}

pub use pb::*;

use crate::wire::{LogEnd, LogGap, LogItem, LogRecord, RunInfo, TaskInfo};
use corral_core::policy::{RunStatus, TaskStatus};

/// A status name as the JSON API spells it, read back into its enum.
fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown status `{s}`"))
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<TaskInfo> for Task {
    fn from(t: TaskInfo) -> Task {
        Task {
            name: t.name,
            status: t.status.as_str().to_string(),
            pid: t.pid,
            run_id: t.run_id.unwrap_or_default(),
            restarts: t.restarts,
            retries: t.retries,
            uptime_s: t.uptime_s,
            command: t.command,
            labels: t.labels.into_iter().collect(),
            adopted: t.adopted,
            last_error: t.last_error.unwrap_or_default(),
            started_at: t.started_at,
            kind: t.kind.unwrap_or_default(),
            container_id: t.container_id.unwrap_or_default(),
        }
    }
}

impl TryFrom<Task> for TaskInfo {
    type Error = String;

    fn try_from(t: Task) -> Result<TaskInfo, String> {
        Ok(TaskInfo {
            status: parse::<TaskStatus>(&t.status)?,
            name: t.name,
            pid: t.pid,
            run_id: some(t.run_id),
            restarts: t.restarts,
            retries: t.retries,
            uptime_s: t.uptime_s,
            command: t.command,
            labels: t.labels.into_iter().collect(),
            adopted: t.adopted,
            last_error: some(t.last_error),
            started_at: t.started_at,
            kind: some(t.kind),
            container_id: some(t.container_id),
            write_errors: 0,
        })
    }
}

impl From<RunInfo> for Run {
    fn from(r: RunInfo) -> Run {
        Run {
            run_id: r.run_id,
            task: r.task,
            attempt: r.attempt,
            status: r.status.as_str().to_string(),
            pid: r.pid,
            started_at: r.started_at,
            ended_at: r.ended_at,
            exit_code: r.exit_code,
            signal: r.signal,
            error_message: r.error_message.unwrap_or_default(),
            lines: r.lines,
            bytes: r.bytes,
            truncated: r.truncated,
            container_id: r.container_id.unwrap_or_default(),
        }
    }
}

impl TryFrom<Run> for RunInfo {
    type Error = String;

    fn try_from(r: Run) -> Result<RunInfo, String> {
        Ok(RunInfo {
            status: parse::<RunStatus>(&r.status)?,
            run_id: r.run_id,
            task: r.task,
            attempt: r.attempt,
            pid: r.pid,
            started_at: r.started_at,
            ended_at: r.ended_at,
            exit_code: r.exit_code,
            signal: r.signal,
            log_path: String::new(),
            error_message: some(r.error_message),
            lines: r.lines,
            bytes: r.bytes,
            truncated: r.truncated,
            write_errors: 0,
            write_error: None,
            gap: None,
            container_id: some(r.container_id),
        })
    }
}

impl TryFrom<FollowReply> for LogItem {
    type Error = String;

    fn try_from(m: FollowReply) -> Result<LogItem, String> {
        Ok(match m.item.ok_or("an empty Follow message")? {
            follow_reply::Item::Record(r) => LogItem::Record(LogRecord {
                seq: r.seq,
                ts: r.ts,
                run_id: r.run_id,
                stream: r.stream.into(),
                line: r.line,
                partial: r.partial,
                lossy: r.lossy,
            }),
            follow_reply::Item::Gap(g) => LogItem::Gap {
                gap: LogGap {
                    from: g.from,
                    to: g.to,
                    reason: g.reason,
                },
            },
            follow_reply::Item::End(e) => LogItem::End {
                end: LogEnd {
                    status: parse::<RunStatus>(&e.status)?,
                    exit_code: e.exit_code,
                    signal: e.signal,
                },
            },
        })
    }
}
