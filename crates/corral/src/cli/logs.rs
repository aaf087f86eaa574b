//! `corral logs`: a run's stored log. With no filter, the bytes exactly as the process
//! wrote them; with `--tail`, `--grep`, `--stream` or `--json`, its records, filtered.
//!
//! The parts: [`run_id`] finds the run; [`Filter`] says which records to keep; [`raw`]
//! copies the plain log; [`fetch`] asks for the records; [`select`] filters them; [`print`]
//! writes them out.

use super::stream;
use super::{say_error, LogsArgs};
use anyhow::{bail, Context};
use corral_client::wire::{LogItem, LogRecord, RecordStream, RunInfo, Stream};
use corral_client::{enc, Client};
use std::io::Write;

pub async fn logs(c: &Client, a: LogsArgs) -> anyhow::Result<i32> {
    let filter = Filter::from_args(&a)?;
    let run_id = run_id(c, &a).await?;
    let mut out = std::io::stdout().lock();
    if filter.is_none() && a.tail.is_none() && !a.json {
        let sanitize = !a.raw && stream::stdout_is_terminal();
        raw(c, &run_id, sanitize, &mut out).await?;
        return Ok(0);
    }
    let body = fetch(c, &a.name, &run_id, a.tail, &filter).await?;
    let picked = select(&body, &filter, a.json, a.tail);
    print(
        &picked,
        a.json,
        !a.raw && stream::stdout_is_terminal(),
        &mut out,
    )?;
    out.flush()?;
    Ok(0)
}

/// The run asked for, else the task's latest.
async fn run_id(c: &Client, a: &LogsArgs) -> anyhow::Result<String> {
    if let Some(r) = &a.run {
        return Ok(r.clone());
    }
    let rows: Vec<RunInfo> = c
        .get(&format!(
            "{}limit=1",
            corral_client::runs_path(Some(&a.name))
        ))
        .await?;
    match rows.first() {
        Some(r) => Ok(r.run_id.clone()),
        None => bail!("task `{}` has no runs yet", a.name),
    }
}

/// Which records `--stream` and `--grep` keep. With no `--stream`, corral's own notes
/// (`system`) are left out; records of a stream this client does not know are kept.
struct Filter {
    stream: Option<Stream>,
    grep: Option<regex::Regex>,
}

impl Filter {
    fn from_args(a: &LogsArgs) -> anyhow::Result<Filter> {
        let grep = a
            .grep
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .context("--grep is not a valid regular expression")?;
        let stream = a
            .stream
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| anyhow::anyhow!("--stream: {e}"))?;
        Ok(Filter { stream, grep })
    }

    fn is_none(&self) -> bool {
        self.stream.is_none() && self.grep.is_none()
    }

    fn keeps(&self, rec: &LogRecord) -> bool {
        let stream_ok = match self.stream {
            Some(s) => rec.stream == RecordStream::Known(s),
            None => !rec.stream.is_system(),
        };
        stream_ok && self.grep.as_ref().is_none_or(|re| re.is_match(&rec.line))
    }
}

/// Byte-for-byte what the process wrote (a range the size cap dropped is announced on
/// stderr first); on a terminal, line by line through the sanitiser instead.
async fn raw(c: &Client, run_id: &str, sanitize: bool, out: &mut impl Write) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let resp = c
        .send(c.request(reqwest::Method::GET, &format!("/runs/{}/log", enc(run_id))))
        .await?;
    if let Some(g) = resp
        .headers()
        .get("x-corral-gap")
        .and_then(|v| v.to_str().ok())
    {
        say_error(&format!(
            "records {} were dropped by the log size cap; the rest follows",
            corral_core::term::sanitize(g)
        ));
    }
    let mut body = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the log")?;
        if !sanitize {
            out.write_all(&chunk)?;
            continue;
        }
        pending.extend_from_slice(&chunk);
        let complete = pending
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        for line in pending[..complete].split_inclusive(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line));
            writeln!(out, "{}", corral_core::term::sanitize(&text))?;
        }
        pending.drain(..complete);
    }
    if !pending.is_empty() {
        let text = String::from_utf8_lossy(&pending);
        write!(out, "{}", corral_core::term::sanitize(&text))?;
    }
    out.flush()?;
    Ok(())
}

/// The run's records as NDJSON: all of them, or when only `--tail` is asked for, just
/// enough of the end.
async fn fetch(
    c: &Client,
    task: &str,
    run_id: &str,
    tail: Option<u64>,
    filter: &Filter,
) -> anyhow::Result<bytes::Bytes> {
    let base = format!(
        "{}/logs?follow=false&run={}",
        corral_client::task_path(task),
        enc(run_id)
    );
    match tail {
        Some(t) if filter.is_none() => tail_records(c, &base, t).await,
        _ => get_body(c, &format!("{base}&since=0")).await,
    }
}

async fn get_body(c: &Client, path: &str) -> anyhow::Result<bytes::Bytes> {
    Ok(c.send(c.request(reqwest::Method::GET, path))
        .await?
        .bytes()
        .await?)
}

/// The last records of a run, holding at least `tail` of the process's records: the
/// server's `tail` counts corral's own notes too, so the window widens until enough are
/// in it (or it reaches the start of the run).
async fn tail_records(c: &Client, base: &str, tail: u64) -> anyhow::Result<bytes::Bytes> {
    let mut n = tail.saturating_add(8);
    loop {
        let body = get_body(c, &format!("{base}&tail={n}")).await?;
        let (mut output, mut first) = (0u64, None);
        for (_, item) in items(&body) {
            if let LogItem::Record(rec) = item {
                first.get_or_insert(rec.seq);
                if !rec.stream.is_system() {
                    output += 1;
                }
            }
        }
        if output >= tail || first.is_none_or(|s| s <= 1) || n == u64::MAX {
            return Ok(body);
        }
        n = n.saturating_mul(4);
    }
}

/// The stream items of an NDJSON body with their lines; what does not parse (a newer
/// daemon's addition) is passed over.
fn items(body: &[u8]) -> impl Iterator<Item = (&[u8], LogItem)> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|line| Some((line, serde_json::from_slice::<LogItem>(line).ok()?)))
}

/// What [`select`] keeps: each line with its record (gaps only with `--json`), and the
/// run's end.
struct Picked<'a> {
    kept: Vec<(&'a [u8], Option<LogRecord>)>,
    end: Option<&'a [u8]>,
}

/// The records `filter` keeps, the last `tail` of them.
fn select<'a>(body: &'a [u8], filter: &Filter, json: bool, tail: Option<u64>) -> Picked<'a> {
    let mut kept = Vec::new();
    let mut end = None;
    for (line, item) in items(body) {
        match item {
            LogItem::Record(rec) if filter.keeps(&rec) => kept.push((line, Some(rec))),
            LogItem::Record(_) | LogItem::Heartbeat { .. } => {}
            LogItem::Gap { .. } if json => kept.push((line, None)),
            LogItem::Gap { .. } => {}
            LogItem::End { .. } => end = Some(line),
        }
    }
    if let Some(t) = tail {
        let start = kept
            .len()
            .saturating_sub(usize::try_from(t).unwrap_or(usize::MAX));
        kept.drain(..start);
    }
    Picked { kept, end }
}

/// The NDJSON lines as received (then the run's end) with `--json`; else the text.
fn print(picked: &Picked, json: bool, strip: bool, out: &mut impl Write) -> std::io::Result<()> {
    for (line, rec) in &picked.kept {
        if json {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        } else if let Some(rec) = rec {
            let text = stream::text(rec, strip);
            if rec.partial {
                write!(out, "{text}")?;
            } else {
                writeln!(out, "{text}")?;
            }
        }
    }
    if let (true, Some(end)) = (json, picked.end) {
        out.write_all(end)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = concat!(
        r#"{"seq":1,"ts":1.0,"run_id":"r","stream":"system","line":"started pid 7"}"#,
        "\n",
        r#"{"seq":2,"ts":1.0,"run_id":"r","stream":"stdout","line":"out 1"}"#,
        "\n",
        r#"{"gap":{"from":3,"to":4,"reason":"size cap"}}"#,
        "\n",
        r#"{"seq":5,"ts":1.0,"run_id":"r","stream":"stderr","line":"err 1"}"#,
        "\n",
        r#"{"seq":6,"ts":1.0,"run_id":"r","stream":"file","line":"from a file"}"#,
        "\n",
        r#"{"seq":7,"ts":1.0,"run_id":"r","stream":"stdout","line":"part","partial":true}"#,
        "\n",
        r#"{"seq":8,"ts":1.0,"run_id":"r","stream":"stdout","line":"ial"}"#,
        "\n",
        r#"{"end":{"status":"succeeded","exit_code":0,"signal":null}}"#,
        "\n",
    );

    fn filter(stream: Option<Stream>, grep: Option<&str>) -> Filter {
        Filter {
            stream,
            grep: grep.map(|g| regex::Regex::new(g).unwrap()),
        }
    }

    fn shown(f: &Filter, json: bool, tail: Option<u64>) -> String {
        let picked = select(BODY.as_bytes(), f, json, tail);
        let mut out = Vec::new();
        print(&picked, json, false, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_leaves_out_corrals_notes_and_joins_partial_lines() {
        assert_eq!(
            shown(&filter(None, None), false, None),
            "out 1\nerr 1\nfrom a file\npartial\n"
        );
        assert_eq!(
            shown(&filter(Some(Stream::System), None), false, None),
            "started pid 7\n"
        );
        assert_eq!(
            shown(&filter(None, Some("^(out|err) ")), false, Some(1)),
            "err 1\n"
        );
    }

    #[test]
    fn json_keeps_the_lines_as_received_with_gaps_and_the_end() {
        let out = shown(&filter(Some(Stream::Stderr), None), true, None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with(r#"{"gap""#));
        assert!(lines[1].contains(r#""line":"err 1""#));
        assert!(lines[2].starts_with(r#"{"end""#));
    }
}
