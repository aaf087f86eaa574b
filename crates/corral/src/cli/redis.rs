//! `corral redis on|off|status`: the daemon's Redis publisher, through
//! `/api/v1/publishers/redis`. What `on` and `off` set is kept by the daemon for its next
//! start. The status never holds a password.

use super::table;
use clap::Subcommand;
use corral_client::wire::{RedisStatus, RedisUpdate};
use corral_client::Client;
use std::io::Write;

#[derive(Subcommand, Debug)]
pub enum RedisCommand {
    /// Start publishing events to Redis (kept across daemon restarts).
    On(super::JsonArg),
    /// Stop publishing events to Redis (kept across daemon restarts).
    Off(super::JsonArg),
    /// Show whether the publisher is on and connected, and its counters.
    Status(super::JsonArg),
}

pub async fn dispatch(c: &Client, cmd: RedisCommand) -> anyhow::Result<i32> {
    let (status, json) = match cmd {
        RedisCommand::On(a) => (set(c, true).await?, a.json),
        RedisCommand::Off(a) => (set(c, false).await?, a.json),
        RedisCommand::Status(a) => (c.redis_status().await?, a.json),
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
    } else {
        print(&mut out, &status)?;
    }
    Ok(0)
}

async fn set(c: &Client, enabled: bool) -> anyhow::Result<RedisStatus> {
    Ok(c.redis_update(&RedisUpdate {
        enabled: Some(enabled),
        ..Default::default()
    })
    .await?)
}

/// The status as `key  value` lines; every text from the daemon goes through the
/// terminal sanitiser.
fn print(out: &mut impl Write, s: &RedisStatus) -> std::io::Result<()> {
    let clean = |t: &str| corral_core::term::sanitize(t).into_owned();
    let state = match (s.enabled, s.connected) {
        (false, _) => "off",
        (true, true) => "on, connected",
        (true, false) => "on, not connected",
    };
    let rows: Vec<[String; 2]> = vec![
        ["publisher".into(), state.into()],
        [
            "server".into(),
            format!("{}{}", clean(&s.server), if s.tls { " (TLS)" } else { "" }),
        ],
        ["db".into(), s.db.to_string()],
        ["channels".into(), clean(&s.channels.join(" "))],
        [
            "stream".into(),
            format!("{} (MAXLEN ~ {})", clean(&s.stream), s.stream_maxlen),
        ],
        ["published".into(), s.published.to_string()],
        ["failed".into(), s.failed.to_string()],
        ["dropped".into(), s.dropped.to_string()],
        ["queued".into(), s.queued.to_string()],
        [
            "raw lines".into(),
            format!("{} (at most {}/s)", s.raw_lines, s.raw_lines_per_second),
        ],
        ["raw published".into(), s.raw_published.to_string()],
        ["raw held back".into(), s.raw_held_back.to_string()],
        ["raw dropped".into(), s.raw_dropped.to_string()],
        [
            "last error".into(),
            table::opt(s.last_error.as_deref().map(clean)),
        ],
    ];
    for r in rows {
        writeln!(out, "{:<13} {}", r[0], r[1])?;
    }
    Ok(())
}
