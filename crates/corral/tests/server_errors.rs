//! A failure of the daemon itself (it cannot create a run's log, a run's files are gone)
//! is a 5xx with a message that says what went wrong; only a bad request is a 4xx. The
//! daemon keeps serving and its registry stays readable.

mod common;

use common::*;
use serde_json::{json, Value};

fn assert_server_error(status: u16, body: &Value, code: &str, what: &str) {
    assert!((500..600).contains(&status), "{what}: {status} {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no message: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_log_that_cannot_be_created_is_a_500_not_a_bad_request() {
    let d = Daemon::start().await;
    // A file where the task's log directory must go: the daemon cannot create it.
    std::fs::create_dir_all(d.home.join("runs")).unwrap();
    std::fs::write(d.home.join("runs/job"), "in the way").unwrap();
    let (status, body) = d
        .post("/tasks", &json!({"name": "job", "command": ["true"]}))
        .await;
    assert_server_error(status, &body, "internal", "POST /tasks");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot create the run log"), "{msg}");

    // The CLI says why and exits non-zero.
    let out = d.cli(&["run", "--name", "job", "--", "true"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot create the run log"), "{out:?}");

    // The daemon goes on: the registry answers, and the task starts once the way is clear.
    let (status, _) = d.get("/runs").await;
    assert_eq!(status, 200);
    std::fs::remove_file(d.home.join("runs/job")).unwrap();
    let run_id = d.run_task("job", &[], &["true"]).await;
    let row = d.wait_run_end(&run_id).await;
    assert_eq!(row["status"], "succeeded", "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_files_are_gone_is_a_500() {
    let d = Daemon::start().await;
    let run_id = d
        .run_task("job", &[], &["sh", "-c", "echo one; echo two"])
        .await;
    d.wait_run_end(&run_id).await;
    // Another run, so that the first is no task's current one and is read from disk.
    let second = d.run_task("job", &[], &["true"]).await;
    d.wait_run_end(&second).await;
    let dir = d.home.join("runs/job/logs");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().contains(&run_id) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let (status, body) = d
        .get(&format!("/tasks/job/logs?run={run_id}&since=0"))
        .await;
    assert_server_error(
        status,
        &body,
        "log_unreadable",
        "logs of a run with no files",
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains(&run_id),
        "{body}"
    );
    // A bad request is still a 4xx.
    let (status, _) = d.get("/tasks/job/logs?since=x").await;
    assert_eq!(status, 400);
}
