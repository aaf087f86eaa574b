//! The fleet's timeline on a hub: every event the nodes publish to `{prefix}:logs`, and
//! at each (re)connection the stream's recent history (`XREVRANGE {prefix}:stream + <an
//! hour ago> COUNT` [`HISTORY`]), so that a hub started late, or back after Redis went
//! away, still shows what happened. Each remote event goes onto the hub's bus as it was
//! published (its `node`, timestamp, task and run kept) through
//! [`Bus::publish_remote`](crate::bus::Bus::publish_remote), which never hands it to the
//! hub's own publisher.
//!
//! Order at a connection: subscribe first, then read the history, then the messages the
//! subscription buffered meanwhile, so nothing published in between is missed. An event
//! in both (or read again after a reconnection) is shown once: [`Seen`] remembers the
//! identity of the last [`SEEN`] events: (node, timestamp, task, run, type, message),
//! which the stream's entry and the channel's message share (the stream id is not in the
//! message). The hub's own events are already on its bus and are skipped by node name.

use crate::bus::Bus;
use corral_core::event::Event;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// At most this many events of the stream's history are read at a connection.
pub const HISTORY: usize = 1000;
/// How far back the history goes.
pub const HISTORY_SPAN_MS: u64 = 3_600_000;
/// Identities of events remembered to skip duplicates.
pub const SEEN: usize = 20_000;

/// A bounded set of the identities of recent events.
#[derive(Debug)]
pub struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    cap: usize,
}

impl Seen {
    pub fn new(cap: usize) -> Seen {
        Seen {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap: cap.max(1),
        }
    }

    /// Remembers `e`; false if it was seen already (a duplicate).
    pub fn insert(&mut self, e: &Event) -> bool {
        let id = identity(e);
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// What tells two events apart: the same event read from the stream and from the channel
/// has the same identity; two events of a node differ in time or content.
fn identity(e: &Event) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.node.hash(&mut h);
    e.timestamp.to_bits().hash(&mut h);
    e.task.hash(&mut h);
    e.run_id.hash(&mut h);
    e.event_type.as_str().hash(&mut h);
    e.message.hash(&mut h);
    h.finish()
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// On the bus now.
    Published,
    /// This hub's own event, or one shown already.
    Skipped,
    /// Not an event (counted, not shown).
    Malformed,
}

/// Puts one published event (its JSON, as the channel and the stream carry it) on the
/// hub's bus, unless it is the hub's own or a duplicate.
pub fn take(bus: &Bus, seen: &mut Seen, payload: &[u8]) -> Taken {
    let Ok(event) = serde_json::from_slice::<Event>(payload) else {
        return Taken::Malformed;
    };
    if event.node == bus.node || !seen.insert(&event) {
        return Taken::Skipped;
    }
    bus.publish_remote(event);
    Taken::Published
}

/// Reads a stream range reply (`[[id, [field, value, …]], …]`) into the `data` fields,
/// in the reply's order. Entries without one are left out.
pub fn data_fields(reply: redis::Value) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let redis::Value::Array(entries) = reply else {
        return out;
    };
    for entry in entries {
        let redis::Value::Array(parts) = entry else {
            continue;
        };
        let Some(redis::Value::Array(fields)) = parts.into_iter().nth(1) else {
            continue;
        };
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (redis::Value::BulkString(k), redis::Value::BulkString(v)) = (k, v) {
                if k == b"data" {
                    out.push(v);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ObserverConfig;
    use corral_core::event::{Component, EventKind, EventType, Level};

    fn event(node: &str, ts: f64, msg: &str) -> Vec<u8> {
        let e = Event::from_kind(
            EventKind::new(Component::Task, Level::Info, EventType::Start, msg),
            ts,
            node,
            "t",
            "r",
        );
        serde_json::to_vec(&e).unwrap()
    }

    #[test]
    fn own_duplicate_and_malformed_events_are_not_published() {
        let bus = Bus::new("hub".into(), &ObserverConfig::default());
        let mut seen = Seen::new(10);
        let a = event("a", 1.0, "started");
        assert_eq!(take(&bus, &mut seen, &a), Taken::Published);
        // The same event read again (history, then the channel): once.
        assert_eq!(take(&bus, &mut seen, &a), Taken::Skipped);
        // The same message of another node, or later: distinct.
        assert_eq!(
            take(&bus, &mut seen, &event("b", 1.0, "started")),
            Taken::Published
        );
        assert_eq!(
            take(&bus, &mut seen, &event("a", 2.0, "started")),
            Taken::Published
        );
        assert_eq!(
            take(&bus, &mut seen, &event("hub", 3.0, "x")),
            Taken::Skipped
        );
        assert_eq!(take(&bus, &mut seen, b"{not json"), Taken::Malformed);
        assert_eq!(take(&bus, &mut seen, b"{}"), Taken::Malformed);
        assert_eq!(bus.last_id(), 3);
    }

    #[test]
    fn seen_forgets_the_oldest_beyond_its_capacity() {
        let mut seen = Seen::new(2);
        let e = |ts| serde_json::from_slice::<Event>(&event("a", ts, "m")).unwrap();
        assert!(seen.insert(&e(1.0)));
        assert!(seen.insert(&e(2.0)));
        assert!(seen.insert(&e(3.0)));
        assert!(!seen.insert(&e(3.0)));
        assert!(seen.insert(&e(1.0)), "forgotten, so new again");
    }

    #[test]
    fn a_range_reply_gives_its_data_fields_in_order() {
        use redis::Value as V;
        let b = |s: &str| V::BulkString(s.as_bytes().to_vec());
        let reply = V::Array(vec![
            V::Array(vec![b("2-0"), V::Array(vec![b("data"), b("two")])]),
            V::Array(vec![b("1-0"), V::Array(vec![b("other"), b("x")])]),
            V::Nil,
            V::Array(vec![b("0-1"), V::Array(vec![b("data"), b("zero")])]),
        ]);
        assert_eq!(data_fields(reply), [b"two".to_vec(), b"zero".to_vec()]);
        assert!(data_fields(V::Nil).is_empty());
    }
}
