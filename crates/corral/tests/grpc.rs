//! The gRPC API (`proto/corral/v1/corral.proto`) against a real daemon, through the
//! generated client as any gRPC client would call it: the same port and token as the
//! HTTP API, `Follow` with the HTTP stream's cursor semantics (dense seqs, the end,
//! resume from a seq), `Events`, `ListTasks`/`ListRuns`, `Start`/`Stop`/`Restart`, and
//! the errors (no token, a bad task, an unknown task).

mod common;

use common::*;
use corral_client::grpc::corral_client::CorralClient;
use corral_client::grpc::{self as pb, follow_reply::Item};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(d: &Daemon) -> Channel {
    Channel::from_shared(d.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {} over gRPC: {e}", d.addr))
}

/// A request with the daemon's token.
fn authed<T>(d: &Daemon, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let token = d.token.as_ref().expect("the daemon's token");
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Every message of a `Follow` until it ends: records, gaps, and the end.
async fn follow_all(
    c: &mut CorralClient<Channel>,
    d: &Daemon,
    q: pb::FollowRequest,
) -> (tonic::metadata::MetadataMap, Vec<Item>) {
    let resp = c.follow(authed(d, q)).await.expect("Follow");
    let meta = resp.metadata().clone();
    let mut s = resp.into_inner();
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(DEADLINE, s.message())
        .await
        .expect("a Follow message in time")
        .expect("a Follow stream without error")
    {
        out.push(m.item.expect("a message with an item"));
    }
    (meta, out)
}

fn seqs(items: &[Item]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) if r.stream != "system" => Some(r.line.parse().unwrap()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn follow_streams_a_run_densely_to_its_end_and_resumes_from_a_seq() {
    let d = Daemon::start().await;
    let mut c = CorralClient::new(channel(&d).await);
    let run = d
        .run_task(
            "count",
            &[],
            &[
                "sh",
                "-c",
                "i=1; while [ $i -le 300 ]; do echo $i; i=$((i+1)); done",
            ],
        )
        .await;
    d.wait_run_end(&run).await;

    let (meta, items) = follow_all(
        &mut c,
        &d,
        pb::FollowRequest {
            task: "count".into(),
            follow: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(meta.get("x-corral-run-id").unwrap().to_str().unwrap(), run);
    assert_eq!(
        meta.get("x-corral-start-seq").unwrap().to_str().unwrap(),
        "1"
    );
    assert_eq!(seqs(&items), (1..=300).collect::<Vec<u64>>());
    // Dense seqs over every record (the system notes included), then the end, last.
    let all: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) => Some(r.seq),
            _ => None,
        })
        .collect();
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>());
    match items.last() {
        Some(Item::End(e)) => {
            assert_eq!(e.status, "succeeded");
            assert_eq!(e.exit_code, Some(0));
        }
        other => panic!("the stream did not end with the run's end: {other:?}"),
    }
    for i in &items {
        if let Item::Record(r) = i {
            assert_eq!(r.run_id, run);
            assert!(r.ts > 1.7e9, "{r:?}");
        }
    }

    // Resume: from a seq, by run id, exactly what comes after.
    let from = all[150];
    let (meta, rest) = follow_all(
        &mut c,
        &d,
        pb::FollowRequest {
            run_id: run.clone(),
            from_seq: from,
            follow: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        meta.get("x-corral-start-seq").unwrap().to_str().unwrap(),
        from.to_string()
    );
    let got: Vec<u64> = rest
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) => Some(r.seq),
            _ => None,
        })
        .collect();
    assert_eq!(got, (from..=*all.last().unwrap()).collect::<Vec<_>>());
    assert!(matches!(rest.last(), Some(Item::End(_))));

    // `tail` without a cursor: the last N records.
    let (_, tail) = follow_all(
        &mut c,
        &d,
        pb::FollowRequest {
            task: "count".into(),
            tail: 5,
            follow: false,
            ..Default::default()
        },
    )
    .await;
    let tail_seqs: Vec<u64> = tail
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) => Some(r.seq),
            _ => None,
        })
        .collect();
    assert_eq!(tail_seqs.len(), 5, "{tail:?}");
    assert_eq!(*tail_seqs.last().unwrap(), *all.last().unwrap());
}

/// The next stdout line of a live `Follow`, or `None` at the run's end.
async fn next_line(s: &mut tonic::Streaming<pb::FollowReply>) -> Option<String> {
    loop {
        let m = tokio::time::timeout(DEADLINE, s.message())
            .await
            .expect("a message in time")
            .unwrap()
            .expect("the stream goes on");
        match m.item.unwrap() {
            Item::Record(r) if r.stream == "stdout" => return Some(r.line),
            Item::End(_) => return None,
            _ => {}
        }
    }
}

#[tokio::test]
async fn follow_delivers_live_lines_as_they_are_printed() {
    let d = Daemon::start().await;
    let mut c = CorralClient::new(channel(&d).await);
    // The task prints one line, then waits for a file before printing the next.
    let gate = d.tmp.path().join("gate");
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
        gate.display()
    );
    d.run_task("live", &[], &["sh", "-c", &script]).await;
    let resp = c
        .follow(authed(
            &d,
            pb::FollowRequest {
                task: "live".into(),
                follow: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let mut s = resp.into_inner();
    assert_eq!(next_line(&mut s).await.as_deref(), Some("first"));
    std::fs::write(&gate, "").unwrap();
    assert_eq!(next_line(&mut s).await.as_deref(), Some("second"));
    assert_eq!(
        next_line(&mut s).await,
        None,
        "the run's end closes the stream"
    );
}

#[tokio::test]
async fn tasks_are_listed_started_restarted_and_stopped_and_their_events_stream() {
    let d = Daemon::start().await;
    let mut c = CorralClient::new(channel(&d).await);
    let spec = serde_json::json!({
        "name": "sleeper",
        "command": ["sleep", "600"],
        "labels": {"team": "infer"},
    });
    let started = c
        .start(authed(
            &d,
            pb::StartRequest {
                spec_json: spec.to_string(),
            },
        ))
        .await
        .expect("Start")
        .into_inner();
    assert_eq!(started.task, "sleeper");
    assert!(started.spawn_error.is_empty());
    d.wait_task_status("sleeper", "ready").await;

    let tasks = c
        .list_tasks(authed(&d, pb::ListTasksRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let t = tasks.iter().find(|t| t.name == "sleeper").expect("listed");
    assert_eq!(t.status, "ready");
    assert_eq!(t.run_id, started.run_id);
    assert_eq!(t.labels.get("team").map(String::as_str), Some("infer"));
    assert!(t.pid.is_some());

    let again = c
        .restart(authed(
            &d,
            pb::TaskRef {
                task: "sleeper".into(),
            },
        ))
        .await
        .expect("Restart")
        .into_inner();
    assert_ne!(again.run_id, started.run_id);
    d.wait_task_status("sleeper", "ready").await;

    let stopped = c
        .stop(authed(
            &d,
            pb::StopRequest {
                task: "sleeper".into(),
                timeout_ms: 2000,
            },
        ))
        .await
        .expect("Stop")
        .into_inner();
    assert_eq!(stopped.status, "stopped");

    let runs = c
        .list_runs(authed(
            &d,
            pb::ListRunsRequest {
                task: "sleeper".into(),
                limit: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .runs;
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, vec![again.run_id.as_str(), started.run_id.as_str()]);
    assert!(runs.iter().all(|r| r.status == "killed"), "{runs:?}");

    // Events: the stored ones, filtered by task, each with the id that resumes.
    let mut s = c
        .events(authed(
            &d,
            pb::EventsRequest {
                task: "sleeper".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = s.message().await.unwrap() {
        events.push(e);
    }
    assert!(events.iter().all(|e| e.task == "sleeper"), "{events:?}");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    for want in ["start", "exit"] {
        assert!(types.contains(&want), "no {want} event in {types:?}");
    }
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    for e in &events {
        let details: serde_json::Value = serde_json::from_str(&e.details_json).unwrap();
        assert!(details.is_object());
    }
    // Following from the last id: nothing old, then a new event as it happens.
    let last = events.last().unwrap().id;
    let mut live = c
        .events(authed(
            &d,
            pb::EventsRequest {
                task: "sleeper".into(),
                since: last,
                follow: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    c.restart(authed(
        &d,
        pb::TaskRef {
            task: "sleeper".into(),
        },
    ))
    .await
    .unwrap();
    let e = tokio::time::timeout(DEADLINE, live.message())
        .await
        .expect("a live event in time")
        .unwrap()
        .unwrap();
    assert!(e.id > last);
    assert_eq!(e.task, "sleeper");
}

#[tokio::test]
async fn calls_without_the_token_or_with_bad_input_get_clear_errors() {
    let d = Daemon::start().await;
    let mut c = CorralClient::new(channel(&d).await);

    let e = c
        .list_tasks(pb::ListTasksRequest {})
        .await
        .expect_err("a call without a token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("token"), "{e:?}");

    let mut wrong = tonic::Request::new(pb::ListTasksRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    let e = c.list_tasks(wrong).await.expect_err("a wrong token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let e = c
        .start(authed(
            &d,
            pb::StartRequest {
                spec_json: "{\"name\": 3}".into(),
            },
        ))
        .await
        .expect_err("a bad task");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("bad task"), "{e:?}");

    let e = c
        .restart(authed(
            &d,
            pb::TaskRef {
                task: "nope".into(),
            },
        ))
        .await
        .expect_err("an unknown task");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nope"), "{e:?}");

    let e = c
        .follow(authed(
            &d,
            pb::FollowRequest {
                task: "nope".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("following an unknown task");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // The HTTP API on the same port still answers as before.
    let (status, body) = d.get("/tasks").await;
    assert_eq!(status, 200, "{body}");
}
