//! `corral nodes`: the fleet as a hub reads it from Redis (`/api/v1/nodes`): each node,
//! `up` while its registration lives and `gone` once it expired, its version, tasks by
//! status and last heartbeat. Only a hub (`corral serve --hub`) answers.

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
}
