//! Alerts delivered to a real HTTP receiver on loopback: a crash loop sends one alert, a
//! summary and a resolution; each destination format; `corral alerts test`; bad rules.

mod common;

use common::*;
use serde_json::Value;

fn config(tmp: &std::path::Path, port: u16) -> String {
    let path = tmp.join("corral.toml");
    std::fs::write(
        &path,
        format!(
            r#"[[alerts]]
name = "crash"
url = "http://127.0.0.1:{port}/hook"
level = "warning"
event_types = ["exit"]
tasks = ["crashy"]
group = "3s"

[[alerts]]
name = "chat"
url = "http://127.0.0.1:{port}/slack"
format = "slack"
event_types = ["error"]

[[alerts]]
name = "oom"
url = "http://127.0.0.1:{port}/oom"
line = "out of memory"
streams = ["stderr"]
tasks = ["llm"]
group = "2s"

[[alerts]]
name = "phone"
url = "http://127.0.0.1:{port}/ntfy"
format = "ntfy"
tasks = ["nobody"]
"#
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_sends_one_alert_a_summary_and_a_resolution() {
    let (port, got) = receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), port);
    let d = Daemon::start_with(DaemonOpts::args(&["--config", &cfg])).await;
    d.run_task(
        "crashy",
        &[
            "--restart",
            "on-failure",
            "--max-retries",
            "10",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "100ms",
        ],
        &["sh", "-c", "echo working; exit 1"],
    )
    .await;
    d.wait_task_status("crashy", "error").await;
    // Eleven failed runs: the first is sent at once, the rest are grouped.
    let first = wait_for("the first alert", DEADLINE, || async {
        at(&got, "/hook").into_iter().next()
    })
    .await;
    let v: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(v["kind"], "alert", "{v}");
    assert_eq!(v["rule"], "crash");
    assert_eq!(v["task"], "crashy");
    assert_eq!(v["event"]["event_type"], "exit");
    assert!(
        v["text"].as_str().unwrap().contains("exited with code 1"),
        "{v}"
    );
    // The summary of the rest, then (nothing more matches) the resolution.
    let kinds = wait_for("a summary and a resolution", DEADLINE, || async {
        let kinds: Vec<(String, u64)> = at(&got, "/hook")
            .iter()
            .map(|g| {
                let v: Value = serde_json::from_str(&g.body).unwrap();
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        kinds.iter().any(|(k, _)| k == "resolved").then_some(kinds)
    })
    .await;
    let summarized: u64 = kinds
        .iter()
        .filter(|(k, _)| k == "summary")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(kinds[0].0, "alert");
    assert_eq!(
        kinds.iter().filter(|(k, _)| k == "alert").count(),
        1,
        "one alert for the whole loop: {kinds:?}"
    );
    assert_eq!(
        summarized, 10,
        "the summaries count the other ten: {kinds:?}"
    );
    assert_eq!(kinds.last().unwrap().0, "resolved", "{kinds:?}");
    // Giving up is an `error` event: the Slack-format rule says so.
    let slack = wait_for("the slack message", DEADLINE, || async {
        at(&got, "/slack").into_iter().next()
    })
    .await;
    let v: Value = serde_json::from_str(&slack.body).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.starts_with("*corral: error crashy on "), "{text}");
    assert!(text.contains("giving up"), "{text}");
    // The counters.
    let rules = d.cli(&["alerts", "--json"]).await.ok().json();
    let crash = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "crash")
        .unwrap();
    assert_eq!(crash["matched"], 11, "{crash}");
    assert_eq!(crash["grouped"], 10, "{crash}");
    assert_eq!(crash["failed"], 0, "{crash}");
    // Nothing reached the rule for another task.
    assert!(at(&got, "/ntfy").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_test_reaches_the_destination_and_bad_rules_are_refused() {
    let (port, got) = receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), port);
    let d = Daemon::start_with(DaemonOpts::args(&["--config", &cfg])).await;
    let out = d.cli(&["alerts", "test", "phone"]).await.ok();
    assert!(out
        .stdout()
        .contains("sent a test message through rule phone"));
    let ntfy = at(&got, "/ntfy");
    assert_eq!(ntfy.len(), 1, "{ntfy:?}");
    assert!(
        ntfy[0].body.contains("test message of alert rule `phone`"),
        "{ntfy:?}"
    );
    assert_eq!(
        ntfy[0].title.as_deref(),
        Some("corral: test of alert rule phone")
    );
    let out = d.cli(&["alerts", "test", "nope"]).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("no alert rule `nope`")
            && out.stderr.contains("crash, chat, oom, phone"),
        "{}",
        out.stderr
    );
    // A destination that is down: a clear error, counted.
    drop(d);
    let dead = tmp.path().join("dead.toml");
    std::fs::write(
        &dead,
        "[[alerts]]\nname = \"gone\"\nurl = \"http://127.0.0.1:9/x\"\n",
    )
    .unwrap();
    let d = Daemon::start_with(DaemonOpts::args(&["--config", dead.to_str().unwrap()])).await;
    let out = d.cli(&["alerts", "test", "gone"]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("was not delivered"), "{}", out.stderr);
    let rules = d.cli(&["alerts", "--json"]).await.ok().json();
    assert_eq!(rules[0]["failed"], 1, "{rules}");
    // A bad rule stops the daemon from starting, naming the file and the rule.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[alerts]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/\"\nmessage = \"(\"\n",
    )
    .unwrap();
    let out = cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            bad.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("bad.toml: alerts[0]")
            && out.stderr.contains("not a valid regular expression"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_rule_alerts_on_what_a_task_prints_on_its_stream() {
    let (port, got) = receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), port);
    let d = Daemon::start_with(DaemonOpts::args(&["--config", &cfg])).await;
    let run = d
        .run_task(
            "llm",
            &["--restart", "no"],
            &[
                "sh",
                "-c",
                "echo loading; echo 'out of memory (only on stdout)'; \
                 for i in 1 2 3; do echo \"CUDA error $i: out of memory\" >&2; done; echo done",
            ],
        )
        .await;
    d.wait_run_end(&run).await;
    let kinds = wait_for("an alert, a summary and a resolution", DEADLINE, || async {
        let msgs: Vec<Value> = at(&got, "/oom")
            .iter()
            .map(|g| serde_json::from_str(&g.body).unwrap())
            .collect();
        msgs.iter().any(|v| v["kind"] == "resolved").then_some(msgs)
    })
    .await;
    assert_eq!(kinds[0]["kind"], "alert", "{kinds:?}");
    assert_eq!(kinds[0]["task"], "llm");
    assert_eq!(kinds[0]["event"]["run_id"], run.as_str());
    assert!(
        kinds[0]["text"]
            .as_str()
            .unwrap()
            .contains("stderr: CUDA error 1: out of memory"),
        "{kinds:?}"
    );
    let summarized: u64 = kinds
        .iter()
        .filter(|v| v["kind"] == "summary")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        summarized, 2,
        "the other two stderr lines, not the stdout one: {kinds:?}"
    );
}
