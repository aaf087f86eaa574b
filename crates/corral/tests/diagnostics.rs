//! Diagnostics bundles: written when a run fails, with what is needed to understand why
//! and no secret; read with `corral diag`, packed with `--tar`; bounded per task.

mod common;

use common::*;
use serde_json::Value;

/// Waits until the run's bundle is complete (its summary is written); returns the summary.
async fn wait_bundle(d: &Daemon, run: &str) -> Value {
    wait_for("the run's diagnostics bundle", DEADLINE, || async {
        let (status, v) = d.get(&format!("/runs/{run}/diagnostics")).await;
        (status == 200).then_some(v)
    })
    .await
}

/// Every file of a directory, concatenated.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        out.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_gets_a_bundle_with_no_secret_in_it() {
    let d = Daemon::start().await;
    let run = d
        .run_task(
            "crashy",
            &[
                "--restart",
                "no",
                "--env",
                "MY_API_KEY=supersecret-1",
                "--env",
                "MODEL=tiny",
            ],
            &[
                "sh",
                "-c",
                "echo loading model $MODEL; echo 'fatal: out of memory' >&2; exit 3",
                "crashy",
                "--api-key",
                "supersecret-2",
            ],
        )
        .await;
    let s = wait_bundle(&d, &run).await;
    assert_eq!(s["run_id"], run.as_str());
    assert_eq!(s["task"], "crashy");
    assert_eq!(s["status"], "failed");
    assert_eq!(s["exit_code"], 3);
    assert!(
        s["error_message"]
            .as_str()
            .unwrap()
            .contains("fatal: out of memory"),
        "{s}"
    );
    let files: Vec<&str> = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in [
        "records.ndjson",
        "command.json",
        "events.ndjson",
        "system.json",
        "gpu.json",
        "summary.json",
    ] {
        assert!(files.contains(&f), "{f} in {files:?}");
    }
    let dir = std::path::PathBuf::from(s["dir"].as_str().unwrap());
    assert!(dir.starts_with(d.home.join("runs/crashy/diagnostics")));
    let records = parse_ndjson(&std::fs::read(dir.join("records.ndjson")).unwrap());
    let lines: Vec<&str> = records.iter().filter_map(|r| r["line"].as_str()).collect();
    assert!(lines.contains(&"loading model tiny"), "{lines:?}");
    assert!(lines.contains(&"fatal: out of memory"), "{lines:?}");
    let cmd: Value =
        serde_json::from_slice(&std::fs::read(dir.join("command.json")).unwrap()).unwrap();
    assert_eq!(cmd["env"]["MY_API_KEY"], "[redacted]");
    assert_eq!(cmd["env"]["MODEL"], "tiny");
    assert_eq!(cmd["command"][5], "[redacted]", "{cmd}");
    let events = parse_ndjson(&std::fs::read(dir.join("events.ndjson")).unwrap());
    assert!(
        events
            .iter()
            .any(|e| e["event_type"] == "start" && e["task"] == "crashy"),
        "{events:?}"
    );
    let sys: Value =
        serde_json::from_slice(&std::fs::read(dir.join("system.json")).unwrap()).unwrap();
    assert!(
        sys["memory_kib"]["MemAvailable"].as_u64().is_some(),
        "{sys}"
    );
    assert!(sys["log_volume"]["free_bytes"].as_u64().is_some(), "{sys}");
    let gpu: Value = serde_json::from_slice(&std::fs::read(dir.join("gpu.json")).unwrap()).unwrap();
    assert!(
        gpu["available"] == true || gpu["error"].as_str().unwrap().contains("no NVIDIA GPU"),
        "{gpu}"
    );
    let everything = String::from_utf8_lossy(&all_bytes(&dir)).into_owned();
    assert!(
        !everything.contains("supersecret"),
        "a secret in the bundle"
    );
    let token = d.token.clone().unwrap();
    assert!(!everything.contains(&token), "the API token in the bundle");
    // The bundle is announced as an event.
    let dir_text = s["dir"].as_str().unwrap().to_string();
    let announced = |e: &Value| e["details"]["diagnostics"].as_str() == Some(&dir_text);
    let evs = d
        .wait_events("task=crashy&type=status", "the bundle's event", |evs| {
            evs.iter().any(announced)
        })
        .await;
    let ev = evs.iter().find(|e| announced(e)).unwrap();
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains(&format!("corral diag {run}")),
        "{ev}"
    );

    // `corral diag` shows it; `--tar` packs it.
    let out = d.cli(&["diag", &run]).await.ok();
    let text = out.stdout();
    assert!(text.contains("exit code 3"), "{text}");
    assert!(text.contains("fatal: out of memory"), "{text}");
    let json = d.cli(&["diag", &run, "--json"]).await.ok().json();
    assert_eq!(json, s);
    let tarball = d.tmp.path().join("bundle.tar.gz");
    d.cli(&["diag", &run, "--tar", tarball.to_str().unwrap()])
        .await
        .ok();
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&tarball)
        .output()
        .expect("tar is needed to check the bundle");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["records.ndjson", "command.json", "summary.json"] {
        assert!(
            listing.contains(&format!("diagnostics-{run}/{f}")),
            "{f} in\n{listing}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_succeeded_has_no_bundle_and_a_crash_loop_keeps_only_the_newest() {
    let d = Daemon::start().await;
    let ok = d.run_task("fine", &["--restart", "no"], &["true"]).await;
    d.wait_run_end(&ok).await;
    let out = d.cli(&["diag", &ok]).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("no diagnostics bundle") && out.stderr.contains("succeeded"),
        "{}",
        out.stderr
    );
    // 25 failures in a row; bundles are kept for the newest 20.
    d.run_task(
        "loop",
        &[
            "--restart",
            "on-failure",
            "--max-retries",
            "24",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "100ms",
        ],
        &["sh", "-c", "echo once; exit 1"],
    )
    .await;
    d.wait_task_status("loop", "error").await;
    let runs = d.runs("loop").await;
    assert_eq!(runs.len(), 25);
    let newest = runs[0]["run_id"].as_str().unwrap().to_string();
    wait_bundle(&d, &newest).await;
    let dir = d.home.join("runs/loop/diagnostics");
    wait_until("old bundles to be removed", DEADLINE, || {
        std::fs::read_dir(&dir).map_or(0, |r| r.count()) == 20
    })
    .await;
}
