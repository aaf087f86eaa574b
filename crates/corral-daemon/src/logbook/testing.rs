//! Helpers for tests that read a run back the way a follower does.

use super::follow::{Follower, Item};
use super::{Format, Ingest, RunEnd, RunLog};
use corral_core::policy::RunStatus;
use corral_core::record::WireRecord;
use std::sync::Arc;

/// Follows a run from seq 1 to its end mark: its records and how it ended.
pub async fn read_to_end(log: Arc<RunLog>) -> (Vec<WireRecord>, RunEnd) {
    let mut f = Follower::new(log, 1, Format::Ndjson, true);
    let mut out = Vec::new();
    while let Some(item) = f.next().await {
        match item {
            Item::Records { data } => {
                for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    out.push(serde_json::from_slice(line).unwrap());
                }
            }
            Item::Gap { .. } => panic!("no gap expected"),
            Item::End(end) => return (out, end),
        }
    }
    panic!("the follower ended without an end mark");
}

/// Ends the run (succeeded) and reads every record back.
pub async fn finish_and_read(ingest: &Ingest) -> Vec<WireRecord> {
    ingest.log().finish(RunEnd {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
    });
    read_to_end(ingest.log().clone()).await.0
}
