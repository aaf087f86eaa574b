//! `corral nodes`: the fleet as a hub reads it from Redis (`/api/v1/nodes`): each node,
//! `up` while its registration lives and `gone` once it expired, its version, tasks by
//! status and last heartbeat; and `corral ps --all-nodes`: every node's tasks from the
//! same answer. Only a hub (`corral serve --hub`) answers.

use super::table;
use corral_client::wire::{NodeStatus, NodesAnswer};
use corral_client::Client;
use std::io::Write;

pub const AFTER_HELP: &str = "\
Each daemon whose Redis publisher is on registers itself every --node-heartbeat (default \
10s) in the key {prefix}:nodes:{node}, which lives three heartbeats; the hub lists every \
node it saw, `gone` once its key expired.\n\nExamples:\n  corral nodes\n  corral nodes --json";

pub async fn nodes(c: &Client, json: bool) -> anyhow::Result<i32> {
    let answer = c.nodes().await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&answer)?)?;
    } else {
        print(&mut out, &answer, corral_daemon::util::unix_now())?;
    }
    Ok(0)
}

/// `corral ps --all-nodes`: one row per task of every node, as of the node's last
/// heartbeat (a gone node's tasks as it last registered them, marked so).
pub async fn ps_all(c: &Client, json: bool) -> anyhow::Result<i32> {
    let answer = c.nodes().await?;
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = answer
            .nodes
            .iter()
            .flat_map(|n| {
                n.record.task_list.iter().map(move |t| {
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    v["node"] = n.record.node.clone().into();
                    v["node_status"] = n.status.as_str().into();
                    v
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
        return Ok(0);
    }
    print_tasks(&mut out, &answer)?;
    Ok(0)
}

fn print_tasks(out: &mut impl Write, a: &NodesAnswer) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = a
        .nodes
        .iter()
        .flat_map(|n| {
            let node = match n.status {
                NodeStatus::Up => clean(&n.record.node),
                NodeStatus::Gone => format!("{} (gone)", clean(&n.record.node)),
            };
            n.record.task_list.iter().map(move |t| {
                vec![
                    node.clone(),
                    clean(&t.name),
                    t.status.to_string(),
                    clean(t.kind.as_deref().unwrap_or("-")),
                    table::opt(t.pid),
                    t.restarts.to_string(),
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        return writeln!(out, "no tasks on any node the hub knows");
    }
    table::print(
        out,
        &["NODE", "NAME", "STATUS", "KIND", "PID", "RESTARTS"],
        &rows,
    )
}

fn clean(t: &str) -> String {
    corral_core::term::sanitize(t).into_owned()
}

/// A table of the nodes, after a line saying why the hub cannot read Redis (when it
/// cannot); every text from the daemon goes through the terminal sanitiser.
fn print(out: &mut impl Write, a: &NodesAnswer, now: f64) -> std::io::Result<()> {
    if !a.connected {
        writeln!(
            out,
            "the hub is not connected to Redis at {}: {}",
            clean(&a.server),
            clean(a.last_error.as_deref().unwrap_or("connecting"))
        )?;
    }
    if a.nodes.is_empty() {
        return writeln!(
            out,
            "no nodes yet: a node appears once its Redis publisher is on (corral redis on) \
             with the same server and prefix as the hub"
        );
    }
    let rows: Vec<Vec<String>> = a
        .nodes
        .iter()
        .map(|n| {
            let r = &n.record;
            let tasks = if r.tasks.is_empty() {
                "-".to_string()
            } else {
                r.tasks
                    .iter()
                    .map(|(s, k)| format!("{k} {}", clean(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                clean(&r.node),
                match n.status {
                    NodeStatus::Up => "up".into(),
                    NodeStatus::Gone => "gone".into(),
                },
                clean(&r.version),
                clean(&r.api),
                tasks,
                format!("{} ago", table::age(now - r.last_seen)),
            ]
        })
        .collect();
    table::print(
        out,
        &["NODE", "STATUS", "VERSION", "API", "TASKS", "LAST SEEN"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_client::wire::{NodeInfo, NodeRecord};

    #[test]
    fn a_table_of_nodes_with_their_tasks_by_status() {
        let rec = |node: &str, tasks: &[(&str, u64)]| NodeRecord {
            node: node.into(),
            version: "0.1.0".into(),
            api: "http://10.0.0.2:7070".into(),
            tasks: tasks.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            last_seen: 95.0,
            ..Default::default()
        };
        let a = NodesAnswer {
            connected: true,
            server: "h:6379".into(),
            nodes: vec![
                NodeInfo {
                    status: NodeStatus::Up,
                    record: rec("gpu-01", &[("crashed", 1), ("ready", 2)]),
                },
                NodeInfo {
                    status: NodeStatus::Gone,
                    record: rec("gpu-\u{1b}[2J02", &[]),
                },
            ],
            ..Default::default()
        };
        let mut out = Vec::new();
        print(&mut out, &a, 100.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{text}");
        assert!(
            lines[1].contains("gpu-01")
                && lines[1].contains("up")
                && lines[1].contains("1 crashed, 2 ready")
                && lines[1].ends_with("5s ago"),
            "{text}"
        );
        assert!(
            lines[2].contains("gone") && !text.contains('\u{1b}'),
            "{text}"
        );
    }

    #[test]
    fn every_nodes_tasks_with_gone_nodes_marked() {
        use corral_client::wire::{NodeTask, TaskStatus};
        let task = |name: &str, status| NodeTask {
            name: name.into(),
            status,
            kind: Some("llama".into()),
            pid: Some(7),
            restarts: 1,
        };
        let node = |name: &str, status, tasks| NodeInfo {
            status,
            record: NodeRecord {
                node: name.into(),
                task_list: tasks,
                ..Default::default()
            },
        };
        let a = NodesAnswer {
            nodes: vec![
                node("a", NodeStatus::Up, vec![task("x", TaskStatus::Ready)]),
                node("b", NodeStatus::Gone, vec![task("y", TaskStatus::Crashed)]),
            ],
            ..Default::default()
        };
        let mut out = Vec::new();
        print_tasks(&mut out, &a).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].starts_with("a ") && lines[1].contains("ready"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("b (gone)") && lines[2].contains("crashed"),
            "{text}"
        );
    }
}
