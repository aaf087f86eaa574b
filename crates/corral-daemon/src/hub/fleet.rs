//! The fleet as a hub knows it: every node it has seen, and whether its registration is
//! live. Pure: it is given what one scan of the registrations found and answers what
//! changed, so the rules are tested without Redis or a clock.

use corral_client::wire::{NodeInfo, NodeRecord, NodeStatus};
use std::collections::BTreeMap;

/// A node's change of status, for the hub's `status` event.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Seen for the first time (`back: false`), or again after it was gone.
    Up { node: String, back: bool },
    /// Its registration is gone; `last_seen` is from its last record.
    Gone { node: String, last_seen: f64 },
}

/// Every node seen since the hub started.
#[derive(Debug, Default)]
pub struct Fleet {
    nodes: BTreeMap<String, NodeInfo>,
}

impl Fleet {
    /// Takes one complete scan's records: those found are up (with their new record),
    /// those seen before and not found now are gone (their last record kept).
    pub fn observe(&mut self, found: Vec<NodeRecord>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut present = std::collections::BTreeSet::new();
        for record in found {
            let node = record.node.clone();
            present.insert(node.clone());
            let previous = self.nodes.insert(
                node.clone(),
                NodeInfo {
                    status: NodeStatus::Up,
                    record,
                },
            );
            match previous.map(|p| p.status) {
                None => changes.push(Change::Up { node, back: false }),
                Some(NodeStatus::Gone) => changes.push(Change::Up { node, back: true }),
                Some(NodeStatus::Up) => {}
            }
        }
        for (node, info) in &mut self.nodes {
            if info.status == NodeStatus::Up && !present.contains(node) {
                info.status = NodeStatus::Gone;
                changes.push(Change::Gone {
                    node: node.clone(),
                    last_seen: info.record.last_seen,
                });
            }
        }
        changes
    }

    pub fn get(&self, node: &str) -> Option<&NodeInfo> {
        self.nodes.get(node)
    }

    /// Every node, sorted by name.
    pub fn list(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: &str, last_seen: f64) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            last_seen,
            ..Default::default()
        }
    }

    fn statuses(f: &Fleet) -> Vec<(String, &'static str)> {
        f.list()
            .into_iter()
            .map(|n| (n.record.node, n.status.as_str()))
            .collect()
    }

    #[test]
    fn a_node_comes_up_goes_and_comes_back() {
        let mut f = Fleet::default();
        let up = |n: &str, back| Change::Up {
            node: n.into(),
            back,
        };
        assert_eq!(
            f.observe(vec![rec("a", 1.0), rec("b", 1.0)]),
            [up("a", false), up("b", false)]
        );
        // Refreshed: nothing changes, the record is the newest.
        assert_eq!(f.observe(vec![rec("a", 2.0), rec("b", 2.0)]), []);
        assert_eq!(f.list()[0].record.last_seen, 2.0);
        // b's key expired: gone once, its last record kept.
        assert_eq!(
            f.observe(vec![rec("a", 3.0)]),
            [Change::Gone {
                node: "b".into(),
                last_seen: 2.0
            }]
        );
        assert_eq!(f.observe(vec![rec("a", 4.0)]), []);
        assert_eq!(statuses(&f), [("a".into(), "up"), ("b".into(), "gone")]);
        assert_eq!(
            f.observe(vec![rec("a", 5.0), rec("b", 5.0)]),
            [up("b", true)]
        );
        assert_eq!(statuses(&f), [("a".into(), "up"), ("b".into(), "up")]);
    }
}
