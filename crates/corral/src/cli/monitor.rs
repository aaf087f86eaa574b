//! `corral monitor`: history then live records of a task's run, resuming after a lost
//! connection from the last seq printed, with no duplicate and no gap.
//!
//! The parts: [`Cursor`] says what to ask for and which records are new; [`connect`]
//! (re)connects with backoff; [`follow`] reads one connection's stream; [`Printer`]
//! writes what is new.

use super::stream::{self, NdjsonLines};
use super::{say_error, MonitorArgs};
use corral_client::wire::{LogEnd, LogGap, LogItem, LogRecord};
use corral_client::{enc, Client, ClientError};
use corral_core::term::sanitize;
use std::io::Write;
use std::time::Duration;

pub struct MonitorOpts {
    pub task: String,
    pub run: Option<String>,
    pub tail: u64,
    pub since: Option<u64>,
    pub json: bool,
    /// Exact bytes even on a terminal.
    pub raw: bool,
}

impl From<MonitorArgs> for MonitorOpts {
    fn from(a: MonitorArgs) -> Self {
        MonitorOpts {
            since: if a.no_history { None } else { a.since },
            tail: if a.no_history { 0 } else { a.tail },
            task: a.name,
            run: a.run,
            json: a.json,
            raw: a.raw,
        }
    }
}

/// Follows until the run ends; returns the exit status to leave with.
pub async fn monitor(client: &Client, opts: MonitorOpts) -> anyhow::Result<i32> {
    let mut cursor = Cursor {
        task: opts.task.clone(),
        run: opts.run.clone(),
        since: opts.since,
        tail: opts.tail,
    };
    let mut printer = Printer::new(opts.json, opts.raw);
    let mut link = Link::default();
    loop {
        let Some(resp) = connect(client, &cursor, &mut link).await? else {
            continue;
        };
        cursor.adopt(resp.headers());
        if let Some(end) = follow(resp, &mut cursor, &mut printer).await? {
            return Ok(end.exit_status());
        }
        // The stream broke off without an end: the daemon went away. Resume.
        link.lost(None);
        tokio::time::sleep(link.backoff).await;
    }
}

/// Which run to follow and where we are in it.
struct Cursor {
    task: String,
    /// Known once the first answer names it: a reconnect follows the same run.
    run: Option<String>,
    /// The last seq printed (or skipped over by a gap); `None` until the first answer.
    since: Option<u64>,
    /// Records of history to ask for while `since` is unknown.
    tail: u64,
}

impl Cursor {
    /// The request for the stream from here.
    fn path(&self) -> String {
        let mut path = format!("{}/logs?follow=true", corral_client::task_path(&self.task));
        if let Some(r) = &self.run {
            path.push_str(&format!("&run={}", enc(r)));
        }
        match self.since {
            Some(s) => path.push_str(&format!("&since={s}")),
            None => path.push_str(&format!("&tail={}", self.tail)),
        }
        path
    }

    /// Takes the run and the start of the stream from the answer's headers.
    fn adopt(&mut self, headers: &reqwest::header::HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if self.run.is_none() {
            self.run = header("x-corral-run-id").map(str::to_string);
        }
        if self.since.is_none() {
            // From now on resume by seq, even if nothing was printed before a reconnect.
            self.since = header("x-corral-start-seq")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|start| start.saturating_sub(1));
        }
    }

    /// Whether `rec` is new (not printed before a reconnect); moves past it.
    fn take(&mut self, rec: &LogRecord) -> bool {
        if self.since.is_some_and(|s| rec.seq <= s) {
            return false;
        }
        self.since = Some(rec.seq);
        true
    }

    fn skip(&mut self, gap: &LogGap) {
        self.since = Some(gap.to);
    }
}

/// The state of the connection to the daemon: whether the user was told it was lost, and
/// how long to wait before the next try.
struct Link {
    warned: bool,
    backoff: Duration,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            warned: false,
            backoff: Duration::from_millis(200),
        }
    }
}

impl Link {
    fn lost(&mut self, why: Option<&ClientError>) {
        if !self.warned {
            match why {
                Some(e) => say_error(&format!("lost the daemon ({e}); reconnecting…")),
                None => say_error("lost the daemon; reconnecting…"),
            }
            self.warned = true;
        }
    }

    fn connected(&mut self, since: Option<u64>) {
        if self.warned {
            say_error(&format!(
                "reconnected; resuming after record {}",
                since.unwrap_or(0)
            ));
            self.warned = false;
        }
        self.backoff = Duration::from_millis(200);
    }
}

/// One try at opening the stream. `None`: the daemon is away for now (after a wait,
/// try again); an error: it answered no (an unknown task), or was never there at all.
async fn connect(
    client: &Client,
    cursor: &Cursor,
    link: &mut Link,
) -> anyhow::Result<Option<reqwest::Response>> {
    match client
        .send(client.request(reqwest::Method::GET, &cursor.path()))
        .await
    {
        Ok(resp) => {
            link.connected(cursor.since);
            Ok(Some(resp))
        }
        Err(e @ ClientError::Api { .. }) => Err(e.into()),
        // Never connected: the daemon is not there at all.
        Err(e) if cursor.run.is_none() && !link.warned => Err(e.into()),
        Err(e) => {
            link.lost(Some(&e));
            tokio::time::sleep(link.backoff).await;
            link.backoff = (link.backoff * 2).min(Duration::from_secs(2));
            Ok(None)
        }
    }
}

/// Prints one connection's new records; returns the run's end, or `None` when the
/// stream broke off before it.
async fn follow(
    resp: reqwest::Response,
    cursor: &mut Cursor,
    printer: &mut Printer,
) -> anyhow::Result<Option<LogEnd>> {
    let mut lines = NdjsonLines::new(resp);
    loop {
        if !lines.has_line() {
            printer.flush()?;
        }
        let Some(Ok(line)) = lines.next().await else {
            printer.flush()?;
            return Ok(None);
        };
        // Anything that is not a stream item (a newer daemon's addition) is passed over.
        let Ok(item) = serde_json::from_slice::<LogItem>(&line) else {
            continue;
        };
        match item {
            LogItem::Record(rec) => {
                if cursor.take(&rec) {
                    printer.record(&line, &rec)?;
                }
            }
            LogItem::Gap { gap } => {
                cursor.skip(&gap);
                printer.gap(&line, &gap)?;
            }
            LogItem::End { end } => {
                printer.end(&line)?;
                printer.flush()?;
                return Ok(Some(end));
            }
            LogItem::Heartbeat { .. } => {}
        }
    }
}

/// Writes records to stdout: the NDJSON lines as received with `--json`, else the text
/// (corral's own notes marked `[corral]`), with gaps reported on stderr.
struct Printer {
    json: bool,
    strip: bool,
    out: std::io::StdoutLock<'static>,
}

impl Printer {
    fn new(json: bool, raw: bool) -> Printer {
        Printer {
            json,
            strip: !raw && stream::stdout_is_terminal(),
            out: std::io::stdout().lock(),
        }
    }

    fn raw(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")
    }

    fn record(&mut self, line: &[u8], rec: &LogRecord) -> std::io::Result<()> {
        if self.json {
            return self.raw(line);
        }
        let text = stream::text(rec, self.strip);
        if rec.stream.is_system() {
            writeln!(self.out, "[corral] {text}")
        } else if rec.partial {
            write!(self.out, "{text}")
        } else {
            writeln!(self.out, "{text}")
        }
    }

    fn gap(&mut self, line: &[u8], gap: &LogGap) -> std::io::Result<()> {
        if self.json {
            return self.raw(line);
        }
        self.out.flush()?;
        say_error(&format!(
            "records {}-{} no longer exist ({})",
            gap.from,
            gap.to,
            sanitize(&gap.reason)
        ));
        Ok(())
    }

    fn end(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.json {
            self.raw(line)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
