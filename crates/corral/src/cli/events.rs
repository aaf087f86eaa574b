//! `corral events`: structured events, history then (with `--follow`) live.

use super::llama::EventsArgs;
use super::stream::{self, NdjsonLines};
use super::table;
use anyhow::Context;
use corral_client::wire::{EventItem, EventRecord};
use corral_client::{enc, Client};
use std::io::Write;

pub async fn events(c: &Client, a: EventsArgs) -> anyhow::Result<i32> {
    let resp = c.send(c.request(reqwest::Method::GET, &path(&a))).await?;
    let strip = stream::stdout_is_terminal();
    let mut out = std::io::stdout().lock();
    let mut lines = NdjsonLines::new(resp);
    loop {
        if !lines.has_line() {
            out.flush()?;
        }
        let Some(line) = lines.next().await else {
            break;
        };
        let line = line.context("reading events")?;
        match serde_json::from_slice::<EventItem>(&line) {
            Ok(EventItem::Heartbeat { .. }) => {}
            Ok(EventItem::Event(ev)) if !a.json => print(&mut out, &ev, strip)?,
            // With --json every line but heartbeats, as received (an event of a kind this
            // client does not know included); without, only the events it can show.
            Ok(EventItem::Event(_)) => raw(&mut out, &line)?,
            Err(_) if a.json && serde_json::from_slice::<serde_json::Value>(&line).is_ok() => {
                raw(&mut out, &line)?
            }
            Err(_) => {}
        }
    }
    out.flush()?;
    Ok(0)
}

/// The request: the filters, and where to start.
fn path(a: &EventsArgs) -> String {
    let mut path = format!("/events?follow={}", a.follow);
    for (k, v) in [
        ("component", &a.component),
        ("level", &a.level),
        ("task", &a.task),
        ("node", &a.node),
    ] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    if let Some(s) = a.since {
        path.push_str(&format!("&since={s}"));
    }
    path
}

fn raw(out: &mut impl Write, line: &[u8]) -> std::io::Result<()> {
    out.write_all(line)?;
    out.write_all(b"\n")
}

/// `TIME LEVEL node component/type task: message` (the node: on a hub, events of the
/// whole fleet are shown together).
fn print(out: &mut impl Write, rec: &EventRecord, strip: bool) -> std::io::Result<()> {
    let e = &rec.event;
    let msg = if strip {
        corral_core::term::sanitize(&e.message)
    } else {
        e.message.as_str().into()
    };
    writeln!(
        out,
        "{} {:<8} {} {}/{} {}: {msg}",
        table::time(e.timestamp),
        e.level.as_str(),
        corral_core::term::sanitize(&e.node),
        e.component,
        e.event_type,
        corral_core::term::sanitize(&e.task),
    )
}
