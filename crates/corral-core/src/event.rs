//! Structured events: the public event contract of DESIGN.md ("Event format").
//!
//! An [`Event`] is a fact with a component, a level and a type. Parsers produce the
//! parts they know ([`EventKind`]); the daemon stamps time, node, task and run on it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which part of a deployment an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Coordinator,
    RpcBackend,
    Model,
    System,
    Task,
}

/// Severity, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Start,
    Stop,
    ModelLoad,
    Connect,
    Disconnect,
    Error,
    Status,
    Heartbeat,
    Metrics,
    Restart,
    Exit,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub const ALL: &'static [$t] = &[$(<$t>::$v),*];
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(<$t>::$v),)*
                    _ => Err(format!(
                        "unknown {} `{}`; expected one of: {}",
                        stringify!($t).to_lowercase(), s,
                        [$($s),*].join(", ")
                    )),
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(Component {
    Coordinator => "coordinator",
    RpcBackend => "rpc_backend",
    Model => "model",
    System => "system",
    Task => "task",
});
str_enum!(Level {
    Debug => "debug",
    Info => "info",
    Warning => "warning",
    Error => "error",
    Critical => "critical",
});
str_enum!(EventType {
    Start => "start",
    Stop => "stop",
    ModelLoad => "model_load",
    Connect => "connect",
    Disconnect => "disconnect",
    Error => "error",
    Status => "status",
    Heartbeat => "heartbeat",
    Metrics => "metrics",
    Restart => "restart",
    Exit => "exit",
});

/// What a parser or the supervisor knows about a fact, before the daemon stamps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventKind {
    pub component: Component,
    pub level: Level,
    pub event_type: EventType,
    pub message: String,
    /// Always a JSON object.
    pub details: Map<String, Value>,
}

impl EventKind {
    pub fn new(
        component: Component,
        level: Level,
        event_type: EventType,
        message: impl Into<String>,
    ) -> Self {
        EventKind {
            component,
            level,
            event_type,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds one detail; a builder for parsers and tests.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// A finished request's timings (not live progress, not a load summary).
    pub fn is_request_metrics(&self) -> bool {
        self.event_type == EventType::Metrics && shape(&self.details) == "request"
    }
}

/// `details.kind`: which shape of its event type an event has (`request`, `progress`,
/// `summary` for metrics), or "" when it has none.
pub fn shape(details: &Map<String, Value>) -> &str {
    details.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// A structured event as published (contract: DESIGN.md "Event format").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    pub node: String,
    pub task: String,
    pub run_id: String,
    pub component: Component,
    pub level: Level,
    pub event_type: EventType,
    pub message: String,
    pub details: Map<String, Value>,
}

impl Event {
    pub fn from_kind(
        kind: EventKind,
        timestamp: f64,
        node: &str,
        task: &str,
        run_id: &str,
    ) -> Self {
        Event {
            timestamp,
            node: node.to_string(),
            task: task.to_string(),
            run_id: run_id.to_string(),
            component: kind.component,
            level: kind.level,
            event_type: kind.event_type,
            message: kind.message,
            details: kind.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serializes_with_contract_names() {
        let e = Event::from_kind(
            EventKind::new(
                Component::RpcBackend,
                Level::Warning,
                EventType::ModelLoad,
                "m",
            )
            .with("port", 8080),
            1.5,
            "gpu-01",
            "llama",
            "r1",
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["component"], "rpc_backend");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["event_type"], "model_load");
        assert_eq!(v["details"]["port"], 8080);
        assert_eq!(v["timestamp"], 1.5);
    }

    #[test]
    fn names_round_trip_and_bad_names_say_what_is_allowed() {
        for c in Component::ALL {
            assert_eq!(c.as_str().parse::<Component>().unwrap(), *c);
        }
        let err = "gpu".parse::<Component>().unwrap_err();
        assert!(err.contains("coordinator, rpc_backend"), "{err}");
        assert!(Level::Warning > Level::Info);
    }
}
