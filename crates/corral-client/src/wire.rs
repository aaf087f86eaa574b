//! The daemon's HTTP API as Rust types: what the handlers answer and what the CLI (and,
//! next, the gRPC service and the dashboard) read. Field names and shapes are the public
//! JSON contract documented in the README; statuses are enums, never strings compared.

use corral_core::event::Event;
use corral_core::policy::{Restart, RestartPolicy};
pub use corral_core::policy::{RunStatus, TaskStatus};
pub use corral_core::record::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A readiness and liveness check over HTTP (`GET url` answering 200).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthCheck {
    pub url: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Readiness attempts before the start counts as failed.
    pub attempts: u32,
    pub liveness_interval_ms: u64,
    pub liveness_failures: u32,
    /// Adopt a server already answering at `url` instead of starting a second one.
    pub adopt: bool,
}

/// What to run and how to keep it running: the body of `POST /tasks`, and what the
/// registry stores. Only `name` and `command` are required (a kind may build the command
/// from `extra`, as `llama` and `rpc` do).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// What the task is (`"llama"`, `"rpc"`; none for a plain process). The kind
    /// validates the spec, may build its command, and reads its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Kind-specific settings ([`LlamaSettings`], [`RpcSettings`]).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub extra: Value,
}

fn default_retries() -> u32 {
    5
}
fn default_backoff_initial() -> u64 {
    1000
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_stop_timeout() -> u64 {
    5000
}

impl TaskSpec {
    /// A plain task with the defaults of `POST /tasks`.
    pub fn new(name: impl Into<String>, command: Vec<String>) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            command,
            cwd: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            restart: Restart::default(),
            max_retries: default_retries(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            stop_timeout_ms: default_stop_timeout(),
            health: None,
            kind: None,
            extra: Value::Null,
        }
    }

    pub fn policy(&self) -> RestartPolicy {
        RestartPolicy {
            restart: self.restart,
            max_retries: self.max_retries,
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_initial_ms)),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The settings of a `llama` task (a llama-server coordinator), in [`TaskSpec::extra`].
/// The daemon's llama kind builds the command line from them when the spec has none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LlamaSettings {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub model_path: String,
    #[serde(default)]
    pub rpc_backends: Vec<String>,
    #[serde(default)]
    pub n_gpu_layers: Option<i64>,
    #[serde(default)]
    pub ctx_size: Option<i64>,
    /// The llama-server binary (a path, or a name looked up on PATH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin: Option<String>,
    /// Arguments appended to the command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_args: Vec<String>,
    /// Readiness and liveness probe settings (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSettings>,
}

/// Readiness and liveness settings of a coordinator, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeSettings {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub attempts: u32,
    pub liveness_interval_ms: u64,
    pub liveness_failures: u32,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            interval_ms: 1000,
            timeout_ms: 5000,
            attempts: 60,
            liveness_interval_ms: 60_000,
            liveness_failures: 3,
        }
    }
}

/// The settings of an `rpc` task (an rpc-server backend), in [`TaskSpec::extra`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RpcSettings {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_args: Vec<String>,
}

/// A task as shown by `corral ps` (`GET /tasks`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskInfo {
    pub name: String,
    pub status: TaskStatus,
    pub pid: Option<u32>,
    pub run_id: Option<String>,
    /// Restarts over the task's life.
    pub restarts: u32,
    /// Consecutive failed runs behind the current one (0 once it stayed up 60 s).
    #[serde(default)]
    pub retries: u32,
    pub uptime_s: Option<f64>,
    pub command: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub adopted: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub started_at: Option<f64>,
    #[serde(default)]
    pub kind: Option<String>,
    /// Failed writes of the current run's log (a full disk), while it runs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub write_errors: u64,
    /// The container the live run is (a `container` task), as the engine knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// A run as `corral runs` shows it (`GET /runs`, `GET /runs/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    pub task: String,
    pub attempt: i64,
    pub status: RunStatus,
    pub pid: Option<i64>,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub log_path: String,
    pub error_message: Option<String>,
    pub lines: i64,
    pub bytes: i64,
    pub truncated: bool,
    /// Writes of the run's log that failed (a full disk) while it ran: what they held
    /// reached live followers but is a hole in the files. Only a running run counts
    /// them; a finished one says so in its `error_message` and `truncated`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub write_errors: u64,
    /// The last such failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_error: Option<String>,
    /// The seq and byte range the size cap dropped: `[from, to, off_from, off_to]`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gap: Option<[i64; 4]>,
    /// The container the run is (a `container` task), as the engine knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// A container carrying corral's labels (`GET /api/v1/containers`, `corral ps
/// --containers`), as the container engine lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    /// Its name, without the engine's leading `/`.
    pub name: String,
    pub image: String,
    /// `created`, `running`, `exited`, … (the engine's word).
    pub state: String,
    /// The engine's text: `Up 3 minutes`, `Exited (0) 2 seconds ago`.
    pub status: String,
    /// corral's labels: the task, the run, when it started (RFC 3339), the node.
    pub task: Option<String>,
    pub run_id: Option<String>,
    pub started_at: Option<String>,
    pub node: Option<String>,
    /// Every label, corral's and the task's.
    pub labels: BTreeMap<String, String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The answer of `POST /tasks` and `POST /tasks/{name}/restart`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Started {
    pub task: String,
    pub run_id: String,
    /// Why the command could not be started (the run is recorded `failed` with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_error: Option<String>,
}

/// The body of `POST /tasks/{name}/stop` (optional).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StopRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The answer of `DELETE /tasks/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Removed {
    pub removed: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub node: String,
    pub uptime_s: f64,
    /// Whether this daemon is a hub (`serve --hub`: `/nodes` lists the fleet).
    #[serde(default)]
    pub hub: bool,
}

/// `POST /shutdown`: stop the daemon; with `leave_running`, its tasks stay up under their
/// holders and the next daemon takes them back (an upgrade), else they stop first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Shutdown {
    #[serde(default)]
    pub leave_running: bool,
}

/// Every error the API answers: `{"error":{"code":…,"message":…}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// An rpc-server backend (`GET /backends`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Backend {
    pub addr: String,
    pub healthy: Option<bool>,
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    pub last_checked: Option<f64>,
    pub tasks: Vec<String>,
}

/// A coordinator's status object (`GET /llama/{name}/status`, and the `details` of its
/// `status` events). Keys are camelCase where the contract has them so.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaStatus {
    /// The coordinator lifecycle: `initial` where a task is `stopped` or `completed`.
    pub status: TaskStatus,
    pub models: Vec<Value>,
    #[serde(rename = "lastError")]
    pub last_error: Option<String>,
    pub retries: u32,
    pub uptime: Option<u64>,
    #[serde(rename = "startedAt")]
    pub started_at: Option<String>,
    pub adopted: bool,
    pub port: u16,
    pub rpc_backends: Vec<String>,
    pub run_id: Option<String>,
}

/// The stream a record came from, as the daemon names it. The names corral knows today
/// ([`Stream`]) parse to `Known`; any other name (a source added to a newer daemon) is
/// kept as it was sent, so a client never fails on a record it cannot classify.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RecordStream {
    Known(Stream),
    Other(String),
}

impl RecordStream {
    pub fn as_str(&self) -> &str {
        match self {
            RecordStream::Known(s) => s.as_str(),
            RecordStream::Other(s) => s,
        }
    }

    /// corral's own notes about the run (`started pid 123`), not the process's output.
    pub fn is_system(&self) -> bool {
        *self == RecordStream::Known(Stream::System)
    }
}

impl From<String> for RecordStream {
    fn from(s: String) -> Self {
        match s.parse::<Stream>() {
            Ok(known) => RecordStream::Known(known),
            Err(_) => RecordStream::Other(s),
        }
    }
}

impl From<RecordStream> for String {
    fn from(s: RecordStream) -> Self {
        match s {
            RecordStream::Known(k) => k.as_str().to_string(),
            RecordStream::Other(o) => o,
        }
    }
}

impl From<Stream> for RecordStream {
    fn from(s: Stream) -> Self {
        RecordStream::Known(s)
    }
}

impl std::fmt::Display for RecordStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record of a run's output, as log streams carry it:
/// `{"seq","ts","run_id","stream","line"}` with `"partial":true` and `"lossy":true`
/// only when set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub ts: f64,
    pub run_id: String,
    pub stream: RecordStream,
    pub line: String,
    /// A chunk of an over-long line; the next record continues it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub partial: bool,
    /// The bytes were not UTF-8; invalid sequences were replaced.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lossy: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Records `from..=to` no longer exist (the size cap dropped them); the stream goes on
/// after `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogGap {
    pub from: u64,
    pub to: u64,
    pub reason: String,
}

/// The run ended; nothing follows in the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEnd {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl LogEnd {
    /// The exit status a command following the run leaves with: the run's exit code;
    /// 128 + signal for a signal; else 0 for a run that succeeded and 1 for any other.
    pub fn exit_status(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) if self.status == RunStatus::Succeeded => 0,
            (None, None) => 1,
        }
    }
}

/// One line of a log stream (`GET /tasks/{name}/logs`, NDJSON; the same objects are the
/// `data:` of its SSE form and the WebSocket's messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogItem {
    Record(LogRecord),
    /// `{"gap":{"from","to","reason"}}`
    Gap {
        gap: LogGap,
    },
    /// `{"end":{"status","exit_code","signal"}}`
    End {
        end: LogEnd,
    },
    /// `{"heartbeat":ts}`: an idle stream is still alive.
    Heartbeat {
        heartbeat: f64,
    },
}

/// One line of the NDJSON event stream (`GET /events`): a structured event with the id
/// that resumes the stream (`?since=ID`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// One line of the NDJSON event stream: an event, or the heartbeat of an idle stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventItem {
    Event(Box<EventRecord>),
    /// `{"heartbeat":ts}`
    Heartbeat {
        heartbeat: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_body_needs_only_name_and_command() {
        let spec: TaskSpec =
            serde_json::from_str(r#"{"name":"job","command":["python3","train.py"]}"#).unwrap();
        assert_eq!(
            spec,
            TaskSpec::new("job", vec!["python3".into(), "train.py".into()])
        );
        assert_eq!(spec.restart, Restart::No);
    }

    #[test]
    fn statuses_are_snake_case_strings_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&TaskStatus::Ready).unwrap(),
            r#""ready""#
        );
        assert_eq!(
            serde_json::from_str::<RunStatus>(r#""killed""#).unwrap(),
            RunStatus::Killed
        );
        assert_eq!(RunStatus::parse("lost"), Some(RunStatus::Lost));
    }

    #[test]
    fn started_omits_a_missing_spawn_error() {
        let s = Started {
            task: "t".into(),
            run_id: "r".into(),
            spawn_error: None,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"task":"t","run_id":"r"}"#
        );
    }
    #[test]
    fn log_items_parse_every_shape_the_stream_carries() {
        let rec: LogItem = serde_json::from_str(
            r#"{"seq":3,"ts":1.5,"run_id":"r","stream":"stderr","line":"x","partial":true}"#,
        )
        .unwrap();
        let LogItem::Record(r) = rec else {
            panic!("{rec:?}")
        };
        assert_eq!((r.seq, r.partial, r.lossy), (3, true, false));
        assert_eq!(r.stream, RecordStream::Known(Stream::Stderr));
        assert_eq!(
            serde_json::from_str::<LogItem>(r#"{"gap":{"from":2,"to":9,"reason":"size cap"}}"#)
                .unwrap(),
            LogItem::Gap {
                gap: LogGap {
                    from: 2,
                    to: 9,
                    reason: "size cap".into()
                }
            }
        );
        let end: LogItem =
            serde_json::from_str(r#"{"end":{"status":"killed","exit_code":null,"signal":9}}"#)
                .unwrap();
        let LogItem::End { end } = end else {
            panic!("{end:?}")
        };
        assert_eq!(end.exit_status(), 137);
        assert_eq!(
            serde_json::from_str::<LogItem>(r#"{"heartbeat":12.25}"#).unwrap(),
            LogItem::Heartbeat { heartbeat: 12.25 }
        );
    }

    #[test]
    fn a_record_of_an_unknown_stream_still_parses_and_round_trips() {
        let line = r#"{"seq":1,"ts":2.0,"run_id":"r","stream":"from-the-future","line":"x"}"#;
        let LogItem::Record(r) = serde_json::from_str::<LogItem>(line).unwrap() else {
            panic!("not a record")
        };
        assert_eq!(r.stream, RecordStream::Other("from-the-future".into()));
        assert!(!r.stream.is_system());
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
        // A followed file's records are a known stream.
        let file = r#"{"seq":1,"ts":2.0,"run_id":"r","stream":"file","line":"tail -F"}"#;
        let LogItem::Record(r) = serde_json::from_str::<LogItem>(file).unwrap() else {
            panic!("not a record")
        };
        assert_eq!(r.stream, RecordStream::Known(Stream::File));
    }

    #[test]
    fn an_event_line_carries_its_id_beside_the_event_fields() {
        let line = r#"{"timestamp":1.5,"node":"n","task":"t","run_id":"r","component":"task","level":"info","event_type":"start","message":"m","details":{"pid":7},"id":42}"#;
        let EventItem::Event(e) = serde_json::from_str::<EventItem>(line).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.id, 42);
        assert_eq!(e.event.details["pid"], 7);
        assert_eq!(
            serde_json::from_str::<EventItem>(r#"{"heartbeat":3.0}"#).unwrap(),
            EventItem::Heartbeat { heartbeat: 3.0 }
        );
    }
}

/// `GET /api/v1/publishers/redis`: the Redis publisher's state and counters. Never holds
/// a password: `server` is `host:port` only.
///
/// While enabled, every event the publisher takes is counted once:
/// `published + failed + dropped` is what it was handed (`dropped` counts both events its
/// full queue pushed out and events taken while Redis was unreachable).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RedisStatus {
    pub enabled: bool,
    pub connected: bool,
    /// `host:port` (or the socket path) of the server, never a credential.
    pub server: String,
    /// Whether the connection is TLS (`rediss://`); it never falls back to plaintext.
    #[serde(default)]
    pub tls: bool,
    pub db: i64,
    /// The pub/sub channels events go to.
    pub channels: Vec<String>,
    /// The stream that keeps the history (`XADD … MAXLEN ~ stream_maxlen`).
    pub stream: String,
    pub stream_maxlen: u64,
    pub published: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Events waiting in the publisher's queue now.
    pub queued: u64,
    /// Which of the runs' lines go to `{prefix}:raw`.
    #[serde(default)]
    pub raw_lines: RawLines,
    /// The most raw lines published per second; more are held back (counted).
    #[serde(default)]
    pub raw_lines_per_second: u64,
    /// Raw lines sent to Redis.
    #[serde(default)]
    pub raw_published: u64,
    /// Raw lines over the rate cap, not published.
    #[serde(default)]
    pub raw_held_back: u64,
    /// Raw lines lost: the publisher's queue was full, Redis was unreachable or a
    /// pipeline failed.
    #[serde(default)]
    pub raw_dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Which lines of the runs the Redis publisher sends to `{prefix}:raw`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawLines {
    /// None.
    None,
    /// Model loading, RPC distribution, warnings and errors (the default).
    #[default]
    Important,
    /// Every line.
    All,
}

impl RawLines {
    pub fn as_str(self) -> &'static str {
        match self {
            RawLines::None => "none",
            RawLines::Important => "important",
            RawLines::All => "all",
        }
    }
}

impl std::fmt::Display for RawLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RawLines {
    type Err = String;
    fn from_str(s: &str) -> Result<RawLines, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(RawLines::None),
            "important" => Ok(RawLines::Important),
            "all" => Ok(RawLines::All),
            _ => Err(format!("`{s}` is not one of: important, all, none")),
        }
    }
}

/// `PUT /api/v1/publishers/redis`: turn the publisher on or off and change its settings
/// at run time; every field is optional and what is given is kept for the next daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_maxlen: Option<u64>,
    /// A PEM file of the CA that signed the server's certificate (`rediss://`); empty
    /// for the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_lines: Option<RawLines>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_lines_per_second: Option<u64>,
}

/// The summary of a failed run's diagnostics bundle (`GET /runs/{run_id}/diagnostics`,
/// `summary.json` in the bundle).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Diagnostics {
    pub run_id: String,
    pub task: String,
    pub node: String,
    pub status: RunStatus,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub signal_name: Option<String>,
    pub error_message: Option<String>,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub lines: i64,
    pub bytes: i64,
    pub collected_at: f64,
    /// Where the bundle is, on the daemon's machine.
    pub dir: String,
    /// The files of the bundle.
    pub files: Vec<String>,
    /// What could not be collected, and why.
    pub problems: Vec<String>,
}

/// One alert rule and its counters (`GET /alerts`, `POST /alerts/{name}/test`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AlertRuleStatus {
    pub name: String,
    /// `webhook`, `slack` or `ntfy`.
    pub format: String,
    /// Events that matched.
    pub matched: u64,
    /// Messages delivered (alerts, summaries, resolutions, tests).
    pub sent: u64,
    /// Deliveries that failed.
    pub failed: u64,
    /// Matches folded into a summary instead of sent one by one.
    pub grouped: u64,
    pub last_error: Option<String>,
}

/// The GPUs of the daemon's machine (`GET /api/v1/gpu`), read through NVML (else
/// `nvidia-smi`) at most once a second and shared by every caller in that second.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GpuSnapshot {
    /// False where there is no NVIDIA GPU or driver; `reason` says what was missing.
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the numbers came from: `nvml` or `nvidia-smi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the driver was asked (Unix seconds).
    pub taken_at: f64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

/// One GPU. A value the driver would not give (not supported, a failed call) is null.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Gpu {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// GPU utilization over the driver's last sample period, in percent.
    pub utilization_pct: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_c: Option<u32>,
    /// Power draw in watts.
    pub power_w: Option<f64>,
    /// The compute processes on this GPU.
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

/// A compute process on a GPU, with the corral task and run it belongs to (its pid is
/// the run's, or in the run's process group, or a descendant of it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_bytes: Option<u64>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    /// The container the process runs in, when its cgroup names one (the full id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// How busy the process keeps the GPU's SMs, in percent, over the driver's last
    /// samples (NVML's process utilization, or `nvidia-smi pmon`); null where the driver
    /// keeps no samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_utilization_pct: Option<u32>,
}

/// A task as a node's registration lists it (enough for a fleet-wide `ps`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeTask {
    pub name: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u32,
}

/// The value of a node's registration key `{prefix}:nodes:{node}` (JSON), written by its
/// Redis publisher every heartbeat with a TTL of three heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeRecord {
    pub node: String,
    /// corral's version on the node.
    pub version: String,
    /// The node's API address (`http://HOST:PORT`).
    pub api: String,
    /// The node's gRPC address (the API's port: gRPC and HTTP share it); empty from a
    /// node older than the gRPC API.
    #[serde(default)]
    pub grpc: String,
    /// How many tasks the node has in each status.
    #[serde(default)]
    pub tasks: BTreeMap<String, u64>,
    /// The node's tasks, sorted by name.
    #[serde(default)]
    pub task_list: Vec<NodeTask>,
    /// When the node last wrote the key (Unix seconds, the node's clock).
    pub last_seen: f64,
    /// The node's heartbeat interval in seconds (the key lives three of them).
    #[serde(default)]
    pub heartbeat_s: f64,
}

/// Whether a node's registration is live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Its key exists: it refreshed it within three heartbeats.
    Up,
    /// The hub saw it before, and its key expired (or was removed).
    Gone,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Gone => "gone",
        }
    }
}

/// One node as a hub shows it: its last registration and whether it is still live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub status: NodeStatus,
    #[serde(flatten)]
    pub record: NodeRecord,
}

/// `GET /api/v1/nodes` (a hub only): the fleet as the hub reads it from Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodesAnswer {
    /// Whether the hub is connected to Redis now.
    pub connected: bool,
    /// `host:port` of the Redis server (never a credential).
    pub server: String,
    /// Why the hub is not connected, when it is not.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Every node seen since the hub started, sorted by name.
    pub nodes: Vec<NodeInfo>,
    /// Remote events the hub took onto its timeline.
    #[serde(default)]
    pub events_received: u64,
    /// Messages on the events channel that were not corral events (ignored).
    #[serde(default)]
    pub events_malformed: u64,
}
