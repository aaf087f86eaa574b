//! Node registration (DESIGN.md "Fleet"): while the publisher is on, the key
//! `{prefix}:nodes:{node}` holds this node's [`NodeRecord`] (JSON: node, version, API
//! address, tasks by status and the task list, last seen) with a TTL of
//! [`TTL_HEARTBEATS`] heartbeats, written again every heartbeat. A node that stops
//! writing it (killed, cut off) loses its key within three heartbeats, which is how a hub
//! knows it is gone.
//!
//! The heartbeat is a timer the user configures (`--node-heartbeat`); it has its own
//! connection, so a slow publisher never delays it and the reverse. Turning the
//! publisher off, or stopping the daemon, removes the key at once (the node left on
//! purpose); a daemon stopped with its tasks left running for the next one leaves the
//! key to expire.

use super::{sink, Redis, RedisConfig};
use corral_client::wire::{NodeRecord, NodeTask};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The default heartbeat of the registration.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a stopping daemon tries to remove its registration.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// A registration lives this many heartbeats unless it is written again.
pub const TTL_HEARTBEATS: u32 = 3;

/// What a node registers, and how often.
#[derive(Clone)]
pub struct Registration {
    pub node: String,
    /// The node's API address (`http://HOST:PORT`).
    pub api: String,
    pub interval: Duration,
    /// The node's tasks now (the supervisor's list, given by `serve`).
    pub tasks: Arc<dyn Fn() -> Vec<NodeTask> + Send + Sync>,
}

/// The key of a node's registration.
pub fn key(prefix: &str, node: &str) -> String {
    format!("{prefix}:nodes:{node}")
}

/// The `SCAN MATCH` pattern of every registration under `prefix`, with the glob
/// characters of the prefix escaped.
pub fn pattern(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 8);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str(":nodes:*");
    out
}

/// The registration's value at `now` (Unix seconds): the tasks counted by status.
pub fn record(reg: &Registration, tasks: Vec<NodeTask>, now: f64) -> NodeRecord {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for t in &tasks {
        *by_status.entry(t.status.as_str().to_string()).or_default() += 1;
    }
    NodeRecord {
        node: reg.node.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        api: reg.api.clone(),
        grpc: reg.api.clone(),
        tasks: by_status,
        task_list: tasks,
        last_seen: now,
        heartbeat_s: reg.interval.as_secs_f64(),
    }
}

/// The running registration; [`Registered::leave`] ends it.
pub struct Registered {
    redis: Redis,
    node: String,
    task: tokio::task::JoinHandle<()>,
}

impl Registered {
    /// Stops the heartbeat and removes the key (trying for at most [`LEAVE_TIMEOUT`]),
    /// so that a hub sees this node gone at once rather than after three heartbeats. A
    /// failure is logged: the key then expires by itself.
    pub async fn leave(self) {
        // Ended before the key is removed, so that no write of its own comes after.
        self.task.abort();
        let _ = self.task.await;
        let cfg = self.redis.config();
        if !cfg.enabled {
            return;
        }
        let del = async {
            let mut c = sink::open(&cfg).await?;
            redis::cmd("DEL")
                .arg(key(&cfg.channel_prefix, &self.node))
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| sink::describe(&e, cfg.is_tls()))
        };
        let done = tokio::time::timeout(LEAVE_TIMEOUT, del)
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()));
        if let Err(e) = done {
            tracing::warn!(
                server = %cfg.server(),
                "could not remove this node's registration from Redis: {e}; it expires by itself"
            );
        }
    }

    /// Stops the heartbeat and leaves the key to expire (the next daemon of this node,
    /// started within three heartbeats, takes it over with no `gone` in between).
    pub fn abandon(self) {
        self.task.abort();
    }
}

impl Redis {
    /// Starts the registration heartbeat (a task of its own, until [`Registered::leave`]).
    pub fn register_node(&self, reg: Registration) -> Registered {
        let redis = self.clone();
        let node = reg.node.clone();
        let task = tokio::spawn(async move { redis.heartbeat(reg).await });
        Registered {
            redis: self.clone(),
            node,
            task,
        }
    }

    async fn heartbeat(&self, reg: Registration) {
        let interval = reg.interval.max(Duration::from_millis(100));
        let ttl_ms = (interval * TTL_HEARTBEATS).as_millis() as u64;
        let mut rx = self.subscribe();
        let mut conn: Option<(redis::aio::MultiplexedConnection, RedisConfig)> = None;
        // One log line per change of state, never one per heartbeat.
        let mut failing = false;
        loop {
            let cfg = rx.borrow_and_update().clone();
            if cfg.enabled {
                if conn.is_none() {
                    match sink::open(&cfg).await {
                        Ok(c) => conn = Some((c, cfg.clone())),
                        Err(e) => {
                            if !failing {
                                tracing::warn!(
                                    server = %cfg.server(),
                                    "cannot register this node in Redis: {e}; retrying every heartbeat"
                                );
                            }
                            failing = true;
                        }
                    }
                }
                if let Some((c, _)) = conn.as_mut() {
                    let rec = record(&reg, (reg.tasks)(), crate::util::unix_now());
                    let body = serde_json::to_string(&rec).unwrap_or_else(|_| "{}".into());
                    let set = redis::cmd("SET")
                        .arg(key(&cfg.channel_prefix, &reg.node))
                        .arg(body)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<()>(c)
                        .await;
                    match set {
                        Ok(()) => {
                            if failing {
                                tracing::info!(node = %reg.node, "this node is registered in Redis again");
                            }
                            failing = false;
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(
                                    server = %cfg.server(),
                                    "registering this node in Redis failed: {}; retrying every heartbeat",
                                    sink::describe(&e, cfg.is_tls())
                                );
                            }
                            failing = true;
                            conn = None;
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // New settings: leave under the old ones when the node was turned
                    // off or moves to another server or prefix, then register afresh; a
                    // change of anything else (raw lines, stream length) keeps the key.
                    let new = rx.borrow().clone();
                    if let Some((mut c, old)) = conn.take() {
                        if new.enabled && same_place(&old, &new) {
                            conn = Some((c, old));
                        } else {
                            let _ = redis::cmd("DEL")
                                .arg(key(&old.channel_prefix, &reg.node))
                                .query_async::<()>(&mut c)
                                .await;
                            failing = false;
                        }
                    }
                }
            }
        }
    }
}

/// Whether two settings name the same key on the same server, as the same user.
fn same_place(a: &RedisConfig, b: &RedisConfig) -> bool {
    a.url == b.url
        && a.host == b.host
        && a.port == b.port
        && a.db == b.db
        && a.username == b.username
        && a.password == b.password
        && a.tls_ca == b.tls_ca
        && a.channel_prefix == b.channel_prefix
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_client::wire::TaskStatus;

    fn task(name: &str, status: TaskStatus) -> NodeTask {
        NodeTask {
            name: name.into(),
            status,
            kind: None,
            pid: None,
            restarts: 0,
        }
    }

    #[test]
    fn a_record_counts_the_tasks_by_status() {
        let reg = Registration {
            node: "gpu-01".into(),
            api: "http://127.0.0.1:7070".into(),
            interval: Duration::from_secs(10),
            tasks: Arc::new(Vec::new),
        };
        let r = record(
            &reg,
            vec![
                task("a", TaskStatus::Ready),
                task("b", TaskStatus::Ready),
                task("c", TaskStatus::Crashed),
            ],
            5.0,
        );
        assert_eq!(
            serde_json::to_value(&r.tasks).unwrap(),
            serde_json::json!({"crashed": 1, "ready": 2})
        );
        assert_eq!((r.last_seen, r.heartbeat_s), (5.0, 10.0));
        assert_eq!(r.task_list.len(), 3);
    }

    #[test]
    fn only_a_change_of_server_or_prefix_moves_the_key() {
        let a = RedisConfig::default();
        let raw = RedisConfig {
            stream_maxlen: 5,
            ..a.clone()
        };
        assert!(same_place(&a, &raw));
        for b in [
            RedisConfig {
                channel_prefix: "x".into(),
                ..a.clone()
            },
            RedisConfig {
                port: 7000,
                ..a.clone()
            },
            RedisConfig {
                url: Some("redis://h:1/0".into()),
                ..a.clone()
            },
        ] {
            assert!(!same_place(&a, &b), "{b:?}");
        }
    }

    #[test]
    fn the_scan_pattern_escapes_the_prefix() {
        assert_eq!(pattern("corral:llama_cpp"), "corral:llama_cpp:nodes:*");
        assert_eq!(pattern("a*b?[c]"), r"a\*b\?\[c\]:nodes:*");
        assert_eq!(key("p", "n"), "p:nodes:n");
    }
}
