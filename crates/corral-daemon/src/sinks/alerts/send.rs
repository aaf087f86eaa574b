//! Delivering one alert message in a destination's own format.

use super::{Message, Rule};
use corral_core::event::Level;
use serde::{Deserialize, Serialize};

/// How a destination wants its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `POST` of the [`Message`] as JSON.
    #[default]
    Webhook,
    /// A Slack-compatible incoming webhook: `{"text": "*title*\ntext"}`.
    Slack,
    /// An ntfy topic URL: the text as the body, the title and priority as headers.
    Ntfy,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Webhook => "webhook",
            Format::Slack => "slack",
            Format::Ntfy => "ntfy",
        }
    }
}

/// Sends `msg` to `rule`'s destination; the error says what went wrong (never the URL,
/// which may hold a secret).
pub async fn send(http: &reqwest::Client, rule: &Rule, msg: &Message) -> Result<(), String> {
    let req = http.post(&rule.url);
    let req = match rule.format {
        Format::Webhook => req.json(msg),
        Format::Slack => req.json(&serde_json::json!({
            "text": format!("*{}*\n{}", msg.title, msg.text),
        })),
        Format::Ntfy => {
            let priority = match msg.level {
                Level::Critical => "5",
                Level::Error => "4",
                Level::Warning => "3",
                _ => "2",
            };
            req.header("Title", ascii_header(&msg.title))
                .header("Priority", priority)
                .header("Tags", format!("corral,{}", msg.kind))
                .body(msg.text.clone())
        }
    };
    let resp = req.send().await.map_err(|e| {
        let what = if e.is_timeout() {
            "no answer in time".to_string()
        } else if e.is_connect() {
            "cannot connect".to_string()
        } else {
            e.without_url().to_string()
        };
        format!("delivering to the rule's url: {what}")
    })?;
    if !resp.status().is_success() {
        return Err(format!("the destination answered {}", resp.status()));
    }
    Ok(())
}

/// A header value: what is not printable ASCII becomes `?` (header values are bytes,
/// and ntfy reads the title as one).
fn ascii_header(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}
