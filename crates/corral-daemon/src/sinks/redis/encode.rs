//! What one event becomes in Redis: the channels it is published on and its JSON, and
//! the pipeline of a batch (`PUBLISH` per channel, then `XADD` to the stream). Pure: no
//! connection here, so the choices are tested without a server.

use corral_core::event::{Component, Event, EventType};

/// The channel names under a prefix (DESIGN.md "Redis channels").
#[derive(Debug, Clone, PartialEq)]
pub struct Channels {
    /// Every structured event.
    pub logs: String,
    /// Component `coordinator`.
    pub coordinator: String,
    /// Component `rpc_backend` (connect, disconnect, heartbeats).
    pub rpc_backends: String,
    /// Event type `metrics`.
    pub metrics: String,
    /// The runs' lines (not events; not in the stream).
    pub raw: String,
    /// The stream that keeps the history.
    pub stream: String,
}

impl Channels {
    pub fn new(prefix: &str) -> Channels {
        Channels {
            logs: format!("{prefix}:logs"),
            coordinator: format!("{prefix}:coordinator"),
            rpc_backends: format!("{prefix}:rpc_backends"),
            metrics: format!("{prefix}:metrics"),
            raw: format!("{prefix}:raw"),
            stream: format!("{prefix}:stream"),
        }
    }

    /// The pub/sub channels, for the status.
    pub fn list(&self) -> Vec<String> {
        vec![
            self.logs.clone(),
            self.coordinator.clone(),
            self.rpc_backends.clone(),
            self.metrics.clone(),
            self.raw.clone(),
        ]
    }

    /// The channels one event goes to: `logs` always, then the channel of its component
    /// or type, if it has one.
    pub fn of(&self, e: &Event) -> Vec<&str> {
        let mut out = vec![self.logs.as_str()];
        match e.component {
            Component::Coordinator => out.push(&self.coordinator),
            Component::RpcBackend => out.push(&self.rpc_backends),
            _ => {}
        }
        if e.event_type == EventType::Metrics {
            out.push(&self.metrics);
        }
        out
    }
}

/// An event's JSON: the same serialization as `/api/v1/events` (the contract fields plus
/// `node`, `task`, `run_id`).
pub fn json(e: &Event) -> String {
    // Serializing a struct of strings, numbers and a JSON map cannot fail; should it
    // ever, an empty object is published rather than the daemon stopping.
    serde_json::to_string(e).unwrap_or_else(|_| "{}".into())
}

/// Appends one event's commands to `pipe`: a `PUBLISH` per channel, then
/// `XADD stream MAXLEN ~ maxlen * data json`. Replies are ignored: only a failure of the
/// pipeline as a whole matters.
pub fn append(pipe: &mut redis::Pipeline, ch: &Channels, maxlen: u64, e: &Event) {
    let body = json(e);
    for c in ch.of(e) {
        pipe.cmd("PUBLISH").arg(c).arg(&body).ignore();
    }
    pipe.cmd("XADD")
        .arg(&ch.stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen)
        .arg("*")
        .arg("data")
        .arg(&body)
        .ignore();
}

/// A raw line's JSON: `{"timestamp","source","line","seq","run_id","node"}`.
pub fn raw_json(l: &super::RawLine) -> String {
    serde_json::to_string(l).unwrap_or_else(|_| "{}".into())
}

/// Appends one raw line's `PUBLISH {prefix}:raw json` to `pipe`.
pub fn append_raw(pipe: &mut redis::Pipeline, ch: &Channels, l: &super::RawLine) {
    pipe.cmd("PUBLISH").arg(&ch.raw).arg(raw_json(l)).ignore();
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::event::{EventKind, Level};

    fn event(c: Component, t: EventType) -> Event {
        Event::from_kind(EventKind::new(c, Level::Info, t, "m"), 1.5, "n", "t", "r")
    }

    #[test]
    fn every_event_goes_to_logs_and_some_to_one_more_channel() {
        let ch = Channels::new("synapticllamas:llama_cpp");
        let cases = [
            (Component::Task, EventType::Start, vec!["logs"]),
            (Component::System, EventType::Status, vec!["logs"]),
            (
                Component::Coordinator,
                EventType::Start,
                vec!["logs", "coordinator"],
            ),
            (
                Component::RpcBackend,
                EventType::Heartbeat,
                vec!["logs", "rpc_backends"],
            ),
            (
                Component::Coordinator,
                EventType::Metrics,
                vec!["logs", "coordinator", "metrics"],
            ),
            (
                Component::Model,
                EventType::Metrics,
                vec!["logs", "metrics"],
            ),
        ];
        for (c, t, want) in cases {
            let got: Vec<String> = ch
                .of(&event(c, t))
                .into_iter()
                .map(|s| {
                    s.trim_start_matches("synapticllamas:llama_cpp:")
                        .to_string()
                })
                .collect();
            assert_eq!(got, want, "{c} {t}");
        }
        assert_eq!(ch.stream, "synapticllamas:llama_cpp:stream");
    }

    #[test]
    fn a_raw_line_has_the_contract_fields_in_order() {
        let l = super::super::RawLine {
            timestamp: 1.5,
            source: "llama".into(),
            line: "error: \u{1b}[31m".into(),
            seq: 7,
            run_id: "r1".into(),
            node: "gpu-01".into(),
        };
        assert_eq!(
            raw_json(&l),
            r#"{"timestamp":1.5,"source":"llama","line":"error: \u001b[31m","seq":7,"run_id":"r1","node":"gpu-01"}"#
        );
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&json(&event(Component::Task, EventType::Exit))).unwrap();
        for k in [
            "timestamp",
            "component",
            "level",
            "message",
            "event_type",
            "details",
            "node",
            "task",
            "run_id",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["event_type"], "exit");
    }

    #[test]
    fn every_event_type_of_every_component_has_the_contract_json_and_its_channels() {
        let ch = Channels::new("synapticllamas:llama_cpp");
        let want_keys = [
            "component",
            "details",
            "event_type",
            "level",
            "message",
            "node",
            "run_id",
            "task",
            "timestamp",
        ];
        for &c in Component::ALL {
            for &t in EventType::ALL {
                let e = Event::from_kind(
                    EventKind::new(c, Level::Warning, t, "m").with("k", 1),
                    1.5,
                    "gpu-01",
                    "coordinator",
                    "r1",
                );
                let v: serde_json::Value = serde_json::from_str(&json(&e)).unwrap();
                let mut keys: Vec<&str> =
                    v.as_object().unwrap().keys().map(String::as_str).collect();
                keys.sort_unstable();
                assert_eq!(keys, want_keys, "{c} {t}: {v}");
                assert_eq!(
                    (&v["component"], &v["event_type"], &v["level"]),
                    (
                        &serde_json::Value::from(c.as_str()),
                        &serde_json::Value::from(t.as_str()),
                        &serde_json::Value::from("warning")
                    ),
                    "{v}"
                );
                assert_eq!(
                    (v["timestamp"].as_f64(), &v["details"]["k"]),
                    (Some(1.5), &1.into())
                );
                let channels = ch.of(&e);
                assert_eq!(channels[0], "synapticllamas:llama_cpp:logs");
                assert_eq!(
                    channels.contains(&"synapticllamas:llama_cpp:metrics"),
                    t == EventType::Metrics,
                    "{c} {t}"
                );
            }
        }
        assert_eq!(
            ch.list(),
            [
                "synapticllamas:llama_cpp:logs",
                "synapticllamas:llama_cpp:coordinator",
                "synapticllamas:llama_cpp:rpc_backends",
                "synapticllamas:llama_cpp:metrics",
                "synapticllamas:llama_cpp:raw",
            ]
        );
    }

    #[test]
    fn a_pipeline_publishes_then_appends_to_the_stream() {
        let ch = Channels::new("p");
        let mut pipe = redis::pipe();
        append(
            &mut pipe,
            &ch,
            100,
            &event(Component::Coordinator, EventType::Start),
        );
        let cmds: Vec<String> = pipe
            .cmd_iter()
            .map(|c| {
                c.args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                        redis::Arg::Cursor => "<cursor>".into(),
                    })
                    .take(7)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(cmds.len(), 3);
        assert!(cmds[0].starts_with("PUBLISH p:logs {"), "{}", cmds[0]);
        assert!(
            cmds[1].starts_with("PUBLISH p:coordinator {"),
            "{}",
            cmds[1]
        );
        assert_eq!(cmds[2], "XADD p:stream MAXLEN ~ 100 * data");
    }
}
