//! `corral alerts [--json]` and `corral alerts test RULE`: the daemon's alert rules (from
//! `[[alerts]]` in its config file), their counters, and a test message through one.

use super::table;
use clap::{Args, Subcommand};
use corral_client::Client;
use std::io::Write;

#[derive(Args, Debug)]
#[command(
    after_help = "Rules live in the daemon's config file (`corral serve --config FILE`):\n\n  \
[[alerts]]\n  name = \"crash\"\n  url = \"https://hooks.slack.com/services/…\"\n  format = \"slack\"          \
# webhook (JSON, the default), slack, ntfy\n  level = \"warning\"         # the least level that matches\n  \
event_types = [\"exit\", \"restart\", \"disconnect\"]\n  tasks = [\"coordinator\"]   # any task when left out\n  \
message = \"code [1-9]\"    # a regular expression on the event's message\n  group = \"5m\"              \
# one alert, then one summary per window, then `resolved`\n\nNothing is sent without a rule."
)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub cmd: Option<AlertsCommand>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Send a test message through one rule, to check that alerts reach its destination.
    Test {
        /// The rule's name.
        rule: String,
        /// Print the rule's counters as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn alerts(c: &Client, a: AlertsArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match a.cmd {
        Some(AlertsCommand::Test { rule, json }) => {
            let s = c.alert_test(&rule).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&s)?)?;
            } else {
                writeln!(
                    out,
                    "sent a test message through rule {} ({})",
                    corral_core::term::sanitize(&s.name),
                    s.format
                )?;
            }
        }
        None => {
            let rules = c.alerts().await?;
            if a.json {
                writeln!(out, "{}", serde_json::to_string(&rules)?)?;
            } else if rules.is_empty() {
                writeln!(
                    out,
                    "no alert rules: add [[alerts]] to the daemon's config file (see `corral alerts --help`)"
                )?;
            } else {
                let clean = |t: &str| corral_core::term::sanitize(t).into_owned();
                let rows: Vec<Vec<String>> = rules
                    .iter()
                    .map(|r| {
                        vec![
                            clean(&r.name),
                            r.format.clone(),
                            r.matched.to_string(),
                            r.sent.to_string(),
                            r.grouped.to_string(),
                            r.failed.to_string(),
                            table::opt(r.last_error.as_deref().map(clean)),
                        ]
                    })
                    .collect();
                table::print(
                    &mut out,
                    &[
                        "RULE",
                        "FORMAT",
                        "MATCHED",
                        "SENT",
                        "GROUPED",
                        "FAILED",
                        "LAST ERROR",
                    ],
                    &rows,
                )?;
            }
        }
    }
    Ok(0)
}
