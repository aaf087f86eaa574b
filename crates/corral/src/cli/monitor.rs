//! `corral monitor`: history then live records of a task's run, resuming after a lost
//! connection from the last seq printed, with no duplicate and no gap.

use corral_client::{enc, Client, ClientError};
use corral_core::term::strip_escapes;
use futures_util::StreamExt;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::Duration;

pub struct MonitorOpts {
    pub task: String,
    pub run: Option<String>,
    pub tail: u64,
    pub since: Option<u64>,
    pub json: bool,
}

/// Follows until the run ends; returns the exit status to leave with.
pub async fn monitor(client: &Client, opts: MonitorOpts) -> anyhow::Result<i32> {
    let strip = std::io::stdout().is_terminal();
    let mut run = opts.run.clone();
    let mut since = opts.since;
    let mut backoff = Duration::from_millis(200);
    let mut warned = false;
    let mut out = std::io::stdout().lock();
    loop {
        let mut path = format!("/tasks/{}/logs?follow=true", enc(&opts.task));
        if let Some(r) = &run {
            path.push_str(&format!("&run={}", enc(r)));
        }
        match since {
            Some(s) => path.push_str(&format!("&since={s}")),
            None => path.push_str(&format!("&tail={}", opts.tail)),
        }
        let resp = match client
            .send(client.request(reqwest::Method::GET, &path))
            .await
        {
            Ok(r) => r,
            Err(e @ ClientError::Api { .. }) => return Err(e.into()),
            Err(e) => {
                if run.is_none() && !warned {
                    // Never connected: the daemon is not there at all.
                    return Err(e.into());
                }
                if !warned {
                    super::say_error(&format!("lost the daemon ({e}); reconnecting…"));
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if warned {
            super::say_error(&format!(
                "reconnected; resuming after record {}",
                since.unwrap_or(0)
            ));
            warned = false;
        }
        backoff = Duration::from_millis(200);
        if run.is_none() {
            run = resp
                .headers()
                .get("x-corral-run-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        if since.is_none() {
            // From now on resume by seq, even if nothing was printed before a reconnect.
            since = resp
                .headers()
                .get("x-corral-start-seq")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|start| start.saturating_sub(1));
        }
        let mut body = resp.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut ended = None;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            pending.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(i) = memchr::memchr(b'\n', &pending[start..]) {
                let line = &pending[start..start + i];
                start += i + 1;
                if line.is_empty() {
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                if let Some(seq) = v["seq"].as_u64() {
                    if since.is_some_and(|s| seq <= s) {
                        continue; // already printed before a reconnect
                    }
                    since = Some(seq);
                    if opts.json {
                        out.write_all(line)?;
                        out.write_all(b"\n")?;
                    } else {
                        print_record(&mut out, &v, strip)?;
                    }
                } else if let Some(g) = v.get("gap") {
                    since = g["to"].as_u64().or(since);
                    if opts.json {
                        out.write_all(line)?;
                        out.write_all(b"\n")?;
                    } else {
                        out.flush()?;
                        eprintln!(
                            "corral: records {}-{} no longer exist ({})",
                            g["from"],
                            g["to"],
                            g["reason"].as_str().unwrap_or("")
                        );
                    }
                } else if let Some(end) = v.get("end") {
                    if opts.json {
                        out.write_all(line)?;
                        out.write_all(b"\n")?;
                    }
                    ended = Some(end.clone());
                }
            }
            pending.drain(..start);
            out.flush()?;
            if ended.is_some() {
                break;
            }
        }
        if let Some(end) = ended {
            out.flush()?;
            return Ok(exit_status(&end));
        }
        // The stream broke off without an end: the daemon went away. Resume.
        if !warned {
            eprintln!("corral: lost the daemon; reconnecting…");
            warned = true;
        }
        tokio::time::sleep(backoff).await;
    }
}

fn print_record(out: &mut impl Write, v: &Value, strip: bool) -> std::io::Result<()> {
    let line = v["line"].as_str().unwrap_or("");
    let text = if strip {
        strip_escapes(line)
    } else {
        line.into()
    };
    if v["stream"] == "system" {
        writeln!(out, "[corral] {text}")
    } else if v["partial"] == true {
        write!(out, "{text}")
    } else {
        writeln!(out, "{text}")
    }
}

/// The run's exit code; 128 + signal for a signal; 1 for a run that has none.
pub fn exit_status(end: &Value) -> i32 {
    if let Some(c) = end["exit_code"].as_i64() {
        return c as i32;
    }
    if let Some(s) = end["signal"].as_i64() {
        return 128 + s as i32;
    }
    if end["status"] == "succeeded" {
        0
    } else {
        1
    }
}
