//! Alerts: events that match a rule the user wrote reach people, through a webhook (a
//! JSON body), a Slack-compatible incoming webhook, or an ntfy topic.
//!
//! A rule matches events by level (at least), type, task, and words in the message (a
//! regular expression); or, with `line`, the lines a task prints (a regular expression on
//! its stdout, stderr or followed file, read by a run watcher like any viewer, so
//! matching never slows capture). Nothing is ever sent without a rule.
//!
//! Grouping, so that a crash loop sends one alert and a summary, not hundreds: the first
//! match of a rule for a task is sent at once; further matches within the rule's `group`
//! window are counted, and when the window closes one summary says how many there were
//! (and the next window begins). A `resolved` message follows when a task that was
//! alerted on becomes `ready` again (a server's health check passes), or when a whole
//! window passes with no further match. Sending happens in a task of its own with a timeout; a destination
//! that fails is counted and logged, never retried in a loop, and never slows the bus.

mod send;

pub use send::{send, Format};

use crate::bus::{Queue, Sink, Stored};
use corral_client::wire::GpuSnapshot;
use corral_core::event::{Event, EventType, Level};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One rule, as written in the daemon's config file (`[[alerts]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The rule's name (for `corral alerts test NAME` and in every message).
    pub name: String,
    /// Where to send: an `http(s)://` URL.
    pub url: String,
    /// `webhook` (a JSON body), `slack` (`{"text": …}`), `ntfy` (a text body with a title).
    #[serde(default)]
    pub format: Format,
    /// The least level that matches (`debug` … `critical`).
    #[serde(default)]
    pub level: Option<Level>,
    /// Event types that match (`restart`, `disconnect`, `error`, …); any when empty.
    #[serde(default)]
    pub event_types: Vec<EventType>,
    /// Tasks that match; any when empty.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// A regular expression the event's message must match.
    #[serde(default)]
    pub message: Option<String>,
    /// A regular expression on the task's lines instead of its events: the rule matches
    /// the lines a run prints (of `streams`, every stream when empty).
    #[serde(default)]
    pub line: Option<String>,
    /// `stdout`, `stderr`, `file`: the streams a `line` rule reads.
    #[serde(default)]
    pub streams: Vec<String>,
    /// A number in the details of a llama server's request metrics
    /// (`eval_tokens_per_second`, `prompt_tokens_per_second`): the rule matches when
    /// every request for `for` (default 1m) had it below `below`. Or
    /// `gpu_memory_share`: a GPU's used memory over its total, matched when it stayed
    /// above `above` (0 to 1) for `for`, checked every few seconds.
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub below: Option<f64>,
    #[serde(default)]
    pub above: Option<f64>,
    /// For `gpu_memory_share`: the GPUs (by index) it watches; every GPU when empty.
    #[serde(default)]
    pub gpus: Vec<u32>,
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    /// How long matches of one task are grouped after the first is sent, e.g. `5m`
    /// (default 5 minutes).
    #[serde(default)]
    pub group: Option<String>,
}

impl Rule {
    /// Checks the rule; the error names the rule and what to fix.
    pub fn check(&self) -> Result<CompiledRule, String> {
        let name = &self.name;
        if name.is_empty() {
            return Err("an alert rule needs a `name`".into());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "alert rule `{name}`: `url` must be an http:// or https:// URL"
            ));
        }
        let message = match &self.message {
            Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                format!("alert rule `{name}`: `message` is not a valid regular expression: {e}")
            })?),
            None => None,
        };
        let line = match &self.line {
            Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                format!("alert rule `{name}`: `line` is not a valid regular expression: {e}")
            })?),
            None => None,
        };
        if line.is_some() && (!self.event_types.is_empty() || self.message.is_some()) {
            return Err(format!(
                "alert rule `{name}`: a `line` rule matches log lines, not events:                  drop `event_types` and `message`, or make two rules"
            ));
        }
        if let Some(bad) = self
            .streams
            .iter()
            .find(|s| !matches!(s.as_str(), "stdout" | "stderr" | "file"))
        {
            return Err(format!(
                "alert rule `{name}`: unknown stream `{bad}` in `streams`; use stdout, stderr or file"
            ));
        }
        let gpu_share = match (self.metric.as_deref(), self.above) {
            (Some(GPU_MEMORY_SHARE), Some(a)) if a > 0.0 && a <= 1.0 && self.below.is_none() => {
                Some(a)
            }
            (Some(GPU_MEMORY_SHARE), _) => {
                return Err(format!(
                    "alert rule `{name}`: metric `{GPU_MEMORY_SHARE}` needs `above`, a share between 0 and 1 \
                     (e.g. above = 0.9), and no `below`"
                ))
            }
            (_, Some(_)) => {
                return Err(format!(
                    "alert rule `{name}`: `above` goes with metric = \"{GPU_MEMORY_SHARE}\"; \
                     tokens-per-second rules take `below`"
                ))
            }
            _ => None,
        };
        if !self.gpus.is_empty() && gpu_share.is_none() {
            return Err(format!(
                "alert rule `{name}`: `gpus` goes with metric = \"{GPU_MEMORY_SHARE}\""
            ));
        }
        let held_for = match (&self.metric, self.below.or(self.above), &self.for_) {
            (None, None, None) => None,
            (Some(m), Some(_), f) => {
                if !matches!(
                    m.as_str(),
                    "eval_tokens_per_second" | "prompt_tokens_per_second" | GPU_MEMORY_SHARE
                ) {
                    return Err(format!(
                        "alert rule `{name}`: unknown metric `{m}`; use eval_tokens_per_second, \
                         prompt_tokens_per_second or {GPU_MEMORY_SHARE}"
                    ));
                }
                if line.is_some() || !self.event_types.is_empty() || self.message.is_some() {
                    return Err(format!(
                        "alert rule `{name}`: a `metric` rule matches request metrics: drop `line`, `event_types` and `message`"
                    ));
                }
                Some(match f {
                    Some(f) => corral_core::duration::parse_duration(f).map_err(|e| {
                        format!(
                            "alert rule `{name}`: `for` must be a duration such as 30s or 2m: {e}"
                        )
                    })?,
                    None => Duration::from_secs(60),
                })
            }
            _ => {
                return Err(format!(
                "alert rule `{name}`: a metric rule needs both `metric` and `below` (`above` for \
                     {GPU_MEMORY_SHARE}), and optionally `for`"
            ))
            }
        };
        let group = match &self.group {
            Some(g) => corral_core::duration::parse_duration(g).map_err(|e| {
                format!("alert rule `{name}`: `group` must be a duration such as 30s or 5m: {e}")
            })?,
            None => DEFAULT_GROUP,
        };
        Ok(CompiledRule {
            rule: self.clone(),
            message,
            line,
            held_for,
            gpu_share,
            group,
        })
    }
}

/// The metric of GPU memory rules: used over total, per GPU.
pub const GPU_MEMORY_SHARE: &str = "gpu_memory_share";

/// Matches of one task are grouped this long unless the rule says otherwise.
pub const DEFAULT_GROUP: Duration = Duration::from_secs(300);
/// How long one delivery may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A checked rule.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub rule: Rule,
    message: Option<regex::Regex>,
    line: Option<regex::Regex>,
    /// For a `metric` rule: how long the value must stay past its limit.
    held_for: Option<Duration>,
    /// For a `gpu_memory_share` rule: the share a GPU's memory must stay above.
    gpu_share: Option<f64>,
    group: Duration,
}

impl CompiledRule {
    /// Whether an event matches (a `line` rule matches no event).
    pub fn matches(&self, e: &Event) -> bool {
        let r = &self.rule;
        self.line.is_none()
            && self.held_for.is_none()
            && r.level.is_none_or(|l| e.level >= l)
            && (r.event_types.is_empty() || r.event_types.contains(&e.event_type))
            && task_matches(&r.tasks, e)
            && self.message.as_ref().is_none_or(|m| m.is_match(&e.message))
    }
}

/// A rule's counters, for `corral alerts` and `/metrics`.
pub use corral_client::wire::AlertRuleStatus as RuleStats;

/// Why a test message was not sent.
#[derive(Debug, Clone, PartialEq)]
pub enum TestError {
    /// There is no such rule; the message names the rules there are.
    UnknownRule(String),
    /// The destination did not take it.
    NotDelivered(String),
}

/// The rules and their counters, shared by the sink and the API.
#[derive(Clone, Default)]
pub struct Alerts {
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    node: String,
    /// The rules hold for the fleet (a hub): other nodes' events match them too.
    fleet: bool,
}

#[derive(Default)]
struct Inner {
    rules: Vec<CompiledRule>,
    stats: Vec<RuleStats>,
    /// Per (rule, task): an open group.
    groups: HashMap<(usize, String), Group>,
    /// Per (metric rule, task): since when every request was below the floor.
    below_since: HashMap<(usize, String), Instant>,
}

struct Group {
    /// When the group's window closes.
    until: Instant,
    /// Matches since the first, not sent yet.
    more: u64,
    last: Option<Arc<Event>>,
    /// Whether a `resolved` message is owed when the task recovers.
    firing: bool,
}

/// What one delivery says.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// `alert`, `summary`, `resolved` or `test`.
    pub kind: &'static str,
    pub rule: String,
    pub node: String,
    pub task: String,
    pub title: String,
    pub text: String,
    pub level: Level,
    /// The event that fired it, when there is one.
    pub event: Option<Event>,
    /// For a summary: how many matches it stands for.
    pub count: u64,
}

impl Alerts {
    /// The alerts of a daemon on `node` with these (checked) rules.
    pub fn new(node: &str, rules: Vec<CompiledRule>) -> Alerts {
        let stats = rules
            .iter()
            .map(|r| RuleStats {
                name: r.rule.name.clone(),
                format: r.rule.format.as_str().to_string(),
                ..Default::default()
            })
            .collect();
        Alerts {
            inner: Arc::new(Mutex::new(Inner {
                rules,
                stats,
                groups: HashMap::new(),
                below_since: HashMap::new(),
            })),
            http: reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .build()
                .unwrap_or_default(),
            node: node.to_string(),
            fleet: false,
        }
    }

    /// On a hub: the rules also match the events the hub reads from the other nodes.
    pub fn for_fleet(mut self, yes: bool) -> Alerts {
        self.fleet = yes;
        self
    }

    /// How often the GPUs are read for the `gpu_memory_share` rules: half the shortest
    /// `for`, between 1 and 5 seconds; `None` without such rules.
    pub fn gpu_interval(&self) -> Option<Duration> {
        self.lock()
            .rules
            .iter()
            .filter(|r| r.gpu_share.is_some())
            .filter_map(|r| r.held_for)
            .map(|d| (d / 2).clamp(Duration::from_secs(1), Duration::from_secs(5)))
            .min()
    }

    /// Reads the GPUs every [`Alerts::gpu_interval`] and applies the GPU rules, until
    /// the daemon ends. Each process is shown with its task (`attribute`).
    pub async fn watch_gpus(
        self,
        gpus: Arc<crate::gpu::Gpus>,
        attribute: impl Fn(&GpuSnapshot) -> GpuSnapshot + Send + 'static,
    ) {
        let Some(every) = self.gpu_interval() else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snap = gpus.snapshot().await;
            if !snap.available {
                continue;
            }
            let snap = attribute(&snap);
            self.dispatch(self.on_gpus(&snap, Instant::now()));
        }
    }

    /// One reading of the GPUs against the `gpu_memory_share` rules: a GPU past a rule's
    /// share for its `for` fires it (grouped like any match, as `gpu:N`); one back
    /// under the share resolves what fired.
    fn on_gpus(&self, snap: &GpuSnapshot, now: Instant) -> Vec<(usize, Message)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for i in 0..inner.rules.len() {
            let (Some(limit), Some(held_for)) = (inner.rules[i].gpu_share, inner.rules[i].held_for)
            else {
                continue;
            };
            for g in &snap.gpus {
                let wanted = &inner.rules[i].rule.gpus;
                if !wanted.is_empty() && !wanted.contains(&g.index) {
                    continue;
                }
                let (Some(used), Some(total)) = (g.memory_used_bytes, g.memory_total_bytes) else {
                    continue;
                };
                if total == 0 {
                    continue;
                }
                let share = used as f64 / total as f64;
                let key = (i, format!("gpu:{}", g.index));
                if share > limit {
                    let since = *inner.below_since.entry(key).or_insert(now);
                    if now.duration_since(since) >= held_for {
                        inner.stats[i].matched += 1;
                        let e = Arc::new(gpu_event(&self.node, g, share, limit, snap.taken_at));
                        out.extend(self.fire(&mut inner, i, &e, now));
                    }
                } else {
                    inner.below_since.remove(&key);
                    if inner.groups.remove(&key).is_some_and(|g| g.firing) {
                        let rule = &inner.rules[i].rule;
                        let why = format!(
                            "its memory is at {:.0}% again, not above {:.0}%",
                            share * 100.0,
                            limit * 100.0
                        );
                        out.push((i, self.resolved(rule, &key.1, why)));
                    }
                }
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().rules.is_empty()
    }

    pub fn stats(&self) -> Vec<RuleStats> {
        self.lock().stats.clone()
    }

    /// Sends a test message through rule `name`; the error says why it could not.
    pub async fn test(&self, name: &str) -> Result<RuleStats, TestError> {
        let (i, rule) = {
            let inner = self.lock();
            let Some(i) = inner.rules.iter().position(|r| r.rule.name == name) else {
                let known: Vec<&str> = inner.rules.iter().map(|r| r.rule.name.as_str()).collect();
                return Err(TestError::UnknownRule(if known.is_empty() {
                    format!("no alert rule `{name}`: this daemon has no rules (add [[alerts]] to its config file)")
                } else {
                    format!(
                        "no alert rule `{name}`; this daemon's rules: {}",
                        known.join(", ")
                    )
                }));
            };
            (i, inner.rules[i].rule.clone())
        };
        let msg = Message {
            kind: "test",
            rule: rule.name.clone(),
            node: self.node.clone(),
            task: String::new(),
            title: format!("corral: test of alert rule {}", rule.name),
            text: format!(
                "This is a test message of alert rule `{}` on node {}: alerts reach this destination.",
                rule.name, self.node
            ),
            level: Level::Info,
            event: None,
            count: 0,
        };
        let r = send(&self.http, &rule, &msg).await;
        self.delivered(i, &r);
        r.map(|()| self.lock().stats[i].clone())
            .map_err(TestError::NotDelivered)
    }

    fn delivered(&self, i: usize, r: &Result<(), String>) {
        let mut inner = self.lock();
        let s = &mut inner.stats[i];
        match r {
            Ok(()) => s.sent += 1,
            Err(e) => {
                s.failed += 1;
                s.last_error = Some(e.clone());
            }
        }
    }

    /// The `line` rules that read `task`'s runs.
    fn line_rules(&self, task: &str) -> Vec<(usize, regex::Regex, Vec<String>)> {
        self.lock()
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let re = r.line.clone()?;
                (r.rule.tasks.is_empty() || r.rule.tasks.iter().any(|t| t == task))
                    .then(|| (i, re, r.rule.streams.clone()))
            })
            .collect()
    }

    /// A line that matched rule `i`: what it sends (see the module documentation).
    fn on_line(&self, i: usize, e: &Arc<Event>, now: Instant) -> Vec<(usize, Message)> {
        let mut inner = self.lock();
        inner.stats[i].matched += 1;
        self.fire(&mut inner, i, e, now).into_iter().collect()
    }

    /// A match of rule `i`: sent at once when its group is closed, else counted in it.
    fn fire(
        &self,
        inner: &mut Inner,
        i: usize,
        e: &Arc<Event>,
        now: Instant,
    ) -> Option<(usize, Message)> {
        let key = (i, self.subject(e));
        let group = inner.rules[i].group;
        match inner.groups.get_mut(&key) {
            Some(g) if now < g.until => {
                g.more += 1;
                g.last = Some(e.clone());
                inner.stats[i].grouped += 1;
                None
            }
            _ => {
                inner.groups.insert(
                    key.clone(),
                    Group {
                        until: now + group,
                        more: 0,
                        last: None,
                        firing: true,
                    },
                );
                let rule = &inner.rules[i].rule;
                Some((i, self.message("alert", rule, &key.1, e, 0, e.level)))
            }
        }
    }

    /// Decides what an event sends (see the module documentation); returns the messages.
    fn on_event(&self, e: &Arc<Event>, now: Instant) -> Vec<(usize, Message)> {
        let mut out = Vec::new();
        let mut inner = self.lock();
        let recovered = e.event_type == EventType::Status
            && e.details.get("status").and_then(|s| s.as_str()) == Some("ready");
        let subject = self.subject(e);
        for i in 0..inner.rules.len() {
            let key = (i, subject.clone());
            if recovered {
                if let Some(g) = inner.groups.remove(&key).filter(|g| g.firing) {
                    let rule = &inner.rules[i].rule;
                    out.push((
                        i,
                        self.message("resolved", rule, &subject, e, g.more, Level::Info),
                    ));
                }
                continue;
            }
            if let Some(held_for) = inner.rules[i].held_for {
                if let Some(below) = metric_below(&inner.rules[i].rule, e) {
                    let since = if below {
                        *inner.below_since.entry(key.clone()).or_insert(now)
                    } else {
                        inner.below_since.remove(&key);
                        continue;
                    };
                    if now.duration_since(since) >= held_for {
                        inner.stats[i].matched += 1;
                        out.extend(self.fire(&mut inner, i, e, now));
                    }
                }
                continue;
            }
            if !inner.rules[i].matches(e) {
                continue;
            }
            inner.stats[i].matched += 1;
            out.extend(self.fire(&mut inner, i, e, now));
        }
        out
    }

    /// For each group whose window closed: a summary of its matches (and a new window),
    /// or, when nothing matched in it, the resolution.
    fn close_groups(&self, now: Instant) -> Vec<(usize, Message)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let due: Vec<(usize, String)> = inner
            .groups
            .iter()
            .filter(|(_, g)| now >= g.until)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let window = inner.rules[key.0].group;
            let Some(g) = inner.groups.get_mut(&key) else {
                continue;
            };
            match g.last.take() {
                Some(last) => {
                    let more = std::mem::take(&mut g.more);
                    g.until = now + window;
                    let rule = &inner.rules[key.0].rule;
                    out.push((
                        key.0,
                        self.message("summary", rule, &key.1, &last, more, last.level),
                    ));
                }
                None => {
                    let quiet = inner.groups.remove(&key).is_some_and(|g| g.firing);
                    if quiet {
                        let rule = &inner.rules[key.0].rule;
                        let what = format!(
                            "no match of alert rule `{}` for {}",
                            rule.name,
                            corral_core::duration::format_duration(window)
                        );
                        out.push((key.0, self.resolved(rule, &key.1, what)));
                    }
                }
            }
        }
        out
    }

    fn resolved(&self, rule: &Rule, subject: &str, why: String) -> Message {
        let who = self.who(subject);
        let (node, task) = self.parts(subject);
        Message {
            kind: "resolved",
            rule: rule.name.clone(),
            node,
            task,
            title: format!("corral: resolved: {who} ({})", rule.name),
            text: format!("resolved for {who}: {why}"),
            level: Level::Info,
            event: None,
            count: 0,
        }
    }

    /// What a group of matches is about: `task` on this node, `node/task` for another
    /// node's event (a hub holds the fleet's rules), `gpu:N` for a GPU of this node, or
    /// nothing (the node itself).
    fn subject(&self, e: &Event) -> String {
        if e.node.is_empty() || e.node == self.node {
            e.task.clone()
        } else {
            format!("{}/{}", e.node, e.task)
        }
    }

    /// A subject's node and task (`gpu:N` is the task of a GPU alert).
    fn parts(&self, subject: &str) -> (String, String) {
        match subject.split_once('/') {
            Some((node, task)) => (node.to_string(), task.to_string()),
            None => (self.node.clone(), subject.to_string()),
        }
    }

    fn who(&self, subject: &str) -> String {
        let (node, task) = self.parts(subject);
        match task.strip_prefix("gpu:") {
            _ if task.is_empty() => format!("node {node}"),
            Some(index) => format!("GPU {index} on {node}"),
            None => format!("{task} on {node}"),
        }
    }

    /// When the next open group's window closes.
    fn next_close(&self) -> Option<Instant> {
        self.lock().groups.values().map(|g| g.until).min()
    }

    fn message(
        &self,
        kind: &'static str,
        rule: &Rule,
        subject: &str,
        e: &Event,
        count: u64,
        level: Level,
    ) -> Message {
        let who = self.who(subject);
        let (node, task) = self.parts(subject);
        let (title, text) = match kind {
            "summary" => (
                format!("corral: {count} more for {who} ({})", rule.name),
                format!(
                    "{count} more events matched alert rule `{}` for {who}; the last: [{}] {}",
                    rule.name,
                    e.level.as_str(),
                    e.message
                ),
            ),
            "resolved" => (
                format!("corral: resolved: {who} ({})", rule.name),
                format!(
                    "resolved for {who}: it is {} again ({})",
                    status_of(e),
                    e.message
                ),
            ),
            _ => (
                format!("corral: {} {who} ({})", e.level.as_str(), rule.name),
                format!("[{}] {}", e.level.as_str(), e.message),
            ),
        };
        Message {
            kind,
            rule: rule.name.clone(),
            node,
            task,
            title,
            text,
            level,
            event: Some(e.clone()),
            count,
        }
    }

    fn dispatch(&self, msgs: Vec<(usize, Message)>) {
        for (i, msg) in msgs {
            let rule = self.lock().rules[i].rule.clone();
            let this = self.clone();
            tokio::spawn(async move {
                let r = send(&this.http, &rule, &msg).await;
                if let Err(e) = &r {
                    tracing::warn!(rule = %rule.name, "alert not delivered: {e}");
                }
                this.delivered(i, &r);
            });
        }
    }
}

/// For a `metric` rule and a request-metrics event of one of its tasks: whether the
/// metric is below the floor (`None` when the event says nothing of it).
fn metric_below(rule: &Rule, e: &Event) -> Option<bool> {
    if e.event_type != EventType::Metrics
        || corral_core::event::shape(&e.details) != "request"
        || !task_matches(&rule.tasks, e)
    {
        return None;
    }
    let v = e.details.get(rule.metric.as_deref()?)?.as_f64()?;
    Some(v < rule.below?)
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The event a GPU memory alert stands on: the GPU, its memory, and the processes on it
/// with their tasks, largest first.
fn gpu_event(node: &str, g: &corral_client::wire::Gpu, share: f64, limit: f64, at: f64) -> Event {
    use corral_core::event::{Component, EventKind};
    let mut procs: Vec<_> = g.processes.iter().collect();
    procs.sort_by_key(|p| std::cmp::Reverse(p.used_memory_bytes.unwrap_or(0)));
    let on: Vec<String> = procs
        .iter()
        .take(3)
        .map(|p| {
            let who = p
                .task
                .as_deref()
                .map_or(format!("pid {}", p.pid), |t| format!("{t} (pid {})", p.pid));
            match p.used_memory_bytes {
                Some(b) => format!("{who} {:.1} GiB", b as f64 / GIB),
                None => who,
            }
        })
        .collect();
    let mut message = format!(
        "GPU {} ({}) memory {:.0}% used ({:.1} of {:.1} GiB), above {:.0}%",
        g.index,
        g.name.as_deref().unwrap_or("?"),
        share * 100.0,
        g.memory_used_bytes.unwrap_or(0) as f64 / GIB,
        g.memory_total_bytes.unwrap_or(0) as f64 / GIB,
        limit * 100.0
    );
    if !on.is_empty() {
        message.push_str(&format!("; on it: {}", on.join(", ")));
    }
    let kind = EventKind::new(
        Component::System,
        Level::Warning,
        EventType::Status,
        message,
    )
    .with("gpu", g.index)
    .with("memory_share", share)
    .with("above", limit)
    .with(
        "processes",
        serde_json::to_value(&g.processes).unwrap_or(serde_json::Value::Null),
    );
    Event::from_kind(kind, at, node, &format!("gpu:{}", g.index), "")
}

/// Whether an event is of one of `tasks` (any when empty): by its task's name, or as
/// `node/task` (a hub's rule for one node's task).
fn task_matches(tasks: &[String], e: &Event) -> bool {
    tasks.is_empty()
        || tasks.iter().any(|t| match t.split_once('/') {
            Some((node, task)) => node == e.node && task == e.task,
            None => *t == e.task,
        })
}

fn status_of(e: &Event) -> &str {
    e.details
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("up")
}

/// The run watcher of the `line` rules: follows each run of a task that a `line` rule
/// reads, from its start, and fires the rules its lines match.
pub struct LineWatcher(pub Alerts);

impl crate::supervisor::kind::RunWatcher for LineWatcher {
    fn watch(&self, run: &crate::supervisor::kind::RunContext<'_>) {
        use crate::logbook::follow::{Follower, RawItem};
        use corral_core::event::{Component, EventKind};
        use corral_core::record::Stream;
        let rules = self.0.line_rules(&run.spec.name);
        if rules.is_empty() {
            return;
        }
        let alerts = self.0.clone();
        let log = run.log.clone();
        let (task, run_id, node) = (
            run.spec.name.clone(),
            run.run_id.to_string(),
            run.bus.node.clone(),
        );
        let start = *log.subscribe().borrow() + 1;
        tokio::spawn(async move {
            let mut f = Follower::new(log, start, crate::logbook::Format::Ndjson, true);
            while let Some(item) = f.next_raw().await {
                let RawItem::Records { batch, from, to } = item else {
                    if matches!(item, RawItem::End(_)) {
                        return;
                    }
                    continue;
                };
                for seq in from..=to {
                    let i = (seq - batch.first_seq) as usize;
                    let stream = batch.recs[i].stream;
                    if stream == Stream::System {
                        continue;
                    }
                    let line = String::from_utf8_lossy(batch.content(i));
                    for (rule, re, streams) in &rules {
                        let wanted =
                            streams.is_empty() || streams.iter().any(|s| s == stream.as_str());
                        if !wanted || !re.is_match(&line) {
                            continue;
                        }
                        let kind = EventKind::new(
                            Component::Task,
                            Level::Warning,
                            EventType::Status,
                            format!("{}: {line}", stream.as_str()),
                        )
                        .with("seq", seq)
                        .with("stream", stream.as_str());
                        let e = Arc::new(Event::from_kind(
                            kind,
                            batch.recs[i].ts_micros as f64 / 1e6,
                            &node,
                            &task,
                            &run_id,
                        ));
                        alerts.dispatch(alerts.on_line(*rule, &e, Instant::now()));
                    }
                }
            }
        });
    }
}

/// The sink that feeds [`Alerts`]: registered by `serve` when there are rules.
pub struct AlertSink(pub Alerts);

impl Sink for AlertSink {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn remote(&self) -> bool {
        self.0.fleet
    }

    async fn run(self, mut queue: Queue) {
        let alerts = self.0;
        loop {
            let close = alerts.next_close();
            let batch = match close {
                Some(at) => {
                    tokio::select! {
                        b = queue.next() => b,
                        _ = tokio::time::sleep_until(at.into()) => {
                            alerts.dispatch(alerts.close_groups(Instant::now()));
                            continue;
                        }
                    }
                }
                None => queue.next().await,
            };
            let Some(batch) = batch else { break };
            let now = Instant::now();
            for Stored { event, .. } in batch.events {
                alerts.dispatch(alerts.on_event(&event, now));
            }
            alerts.dispatch(alerts.close_groups(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::event::{Component, EventKind};

    fn rule(toml_text: &str) -> CompiledRule {
        let r: Rule = toml::from_str(toml_text).unwrap();
        r.check().unwrap()
    }

    fn ev(task: &str, level: Level, t: EventType, msg: &str) -> Arc<Event> {
        Arc::new(Event::from_kind(
            EventKind::new(Component::Task, level, t, msg),
            0.0,
            "n",
            task,
            "r",
        ))
    }

    fn status(task: &str, s: &str) -> Arc<Event> {
        Arc::new(Event::from_kind(
            EventKind::new(Component::Task, Level::Info, EventType::Status, "s").with("status", s),
            0.0,
            "n",
            task,
            "r",
        ))
    }

    #[test]
    fn rules_match_by_level_type_task_and_message() {
        let r = rule(
            r#"name = "x"
            url = "http://127.0.0.1:1/"
            level = "warning"
            event_types = ["exit", "restart"]
            tasks = ["a"]
            message = "code [1-9]""#,
        );
        assert!(r.matches(&ev(
            "a",
            Level::Warning,
            EventType::Exit,
            "exited with code 3"
        )));
        assert!(!r.matches(&ev("a", Level::Info, EventType::Exit, "exited with code 3")));
        assert!(!r.matches(&ev(
            "b",
            Level::Warning,
            EventType::Exit,
            "exited with code 3"
        )));
        assert!(!r.matches(&ev(
            "a",
            Level::Warning,
            EventType::Stop,
            "exited with code 3"
        )));
        assert!(!r.matches(&ev(
            "a",
            Level::Warning,
            EventType::Exit,
            "exited with code 0"
        )));
    }

    #[test]
    fn bad_rules_say_what_to_fix() {
        let bad = |t: &str| {
            toml::from_str::<Rule>(t)
                .map_err(|e| e.to_string())
                .and_then(|r| r.check().map(|_| ()))
        };
        assert!(bad(r#"name = "x"
            url = "ftp://h/""#)
        .unwrap_err()
        .contains("http:// or https://"));
        assert!(bad(r#"name = "x"
            url = "http://h/"
            message = "(""#)
        .unwrap_err()
        .contains("regular expression"));
        assert!(bad(r#"name = "x"
            url = "http://h/"
            group = "soon""#)
        .unwrap_err()
        .contains("duration"));
        assert!(bad(r#"name = "x"
            url = "http://h/"
            colour = "red""#)
        .unwrap_err()
        .contains("colour"));
    }

    fn request(task: &str, tps: f64) -> Arc<Event> {
        Arc::new(Event::from_kind(
            EventKind::new(
                Component::Coordinator,
                Level::Info,
                EventType::Metrics,
                "req",
            )
            .with("kind", "request")
            .with("eval_tokens_per_second", tps),
            0.0,
            "n",
            task,
            "r",
        ))
    }

    #[test]
    fn a_metric_rule_fires_when_every_request_stays_below_the_floor_for_its_duration() {
        let a = Alerts::new(
            "n",
            vec![rule(
                r#"name = "slow"
                url = "http://127.0.0.1:1/"
                metric = "eval_tokens_per_second"
                below = 10.0
                for = "2m""#,
            )],
        );
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(a.on_event(&request("c", 4.0), at(0)).is_empty());
        assert!(a.on_event(&request("c", 5.0), at(60)).is_empty());
        // One fast request starts the count again.
        assert!(a.on_event(&request("c", 30.0), at(90)).is_empty());
        assert!(a.on_event(&request("c", 5.0), at(100)).is_empty());
        assert!(a.on_event(&request("c", 5.0), at(200)).is_empty());
        let fired = a.on_event(&request("c", 5.0), at(221));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].1.kind, "alert");
        // Other events never match a metric rule.
        assert!(a
            .on_event(&ev("c", Level::Error, EventType::Error, "boom"), at(222))
            .is_empty());
        let bad = |t: &str| {
            toml::from_str::<Rule>(t)
                .unwrap()
                .check()
                .map(|_| ())
                .unwrap_err()
        };
        assert!(bad(r#"name = "x"
            url = "http://h/"
            metric = "eval_tokens_per_second""#)
        .contains("needs both"));
        assert!(bad(r#"name = "x"
            url = "http://h/"
            metric = "gpu"
            below = 1.0"#)
        .contains("unknown metric"));
    }

    #[test]
    fn a_crash_loop_sends_one_alert_a_summary_and_a_resolution() {
        let a = Alerts::new(
            "n",
            vec![rule(
                r#"name = "crash"
                url = "http://127.0.0.1:1/"
                event_types = ["exit"]
                group = "1m""#,
            )],
        );
        let t0 = Instant::now();
        let first = a.on_event(&ev("a", Level::Warning, EventType::Exit, "exit 1"), t0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.kind, "alert");
        for k in 1..100 {
            let more = a.on_event(
                &ev("a", Level::Warning, EventType::Exit, "exit 1"),
                t0 + Duration::from_millis(k * 100),
            );
            assert!(more.is_empty());
        }
        assert!(a.close_groups(t0 + Duration::from_secs(30)).is_empty());
        let summary = a.close_groups(t0 + Duration::from_secs(61));
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].1.kind, "summary");
        assert_eq!(summary[0].1.count, 99);
        let resolved = a.on_event(&status("a", "ready"), t0 + Duration::from_secs(62));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].1.kind, "resolved");
        assert!(
            a.close_groups(t0 + Duration::from_secs(200)).is_empty(),
            "resolved once"
        );
        // Recovered and alerted on again: a new alert at once.
        let again = a.on_event(
            &ev("a", Level::Warning, EventType::Exit, "exit 1"),
            t0 + Duration::from_secs(63),
        );
        assert_eq!(again[0].1.kind, "alert");
        let s = &a.stats()[0];
        assert_eq!((s.matched, s.grouped), (101, 99));
        // A window with no further match resolves it too.
        let quiet = a.close_groups(t0 + Duration::from_secs(63 + 61));
        assert_eq!(quiet.len(), 1);
        assert_eq!(quiet[0].1.kind, "resolved");
        assert!(quiet[0].1.text.contains("no match"), "{}", quiet[0].1.text);
    }

    fn gpu_snap(used_gib: u64) -> GpuSnapshot {
        use corral_client::wire::{Gpu, GpuProcess};
        GpuSnapshot {
            available: true,
            reason: None,
            source: Some("nvml".into()),
            taken_at: 1.0,
            gpus: vec![Gpu {
                index: 1,
                name: Some("NVIDIA A100-SXM4-80GB".into()),
                memory_used_bytes: Some(used_gib << 30),
                memory_total_bytes: Some(80 << 30),
                processes: vec![GpuProcess {
                    pid: 42,
                    used_memory_bytes: Some(used_gib << 30),
                    task: Some("llm".into()),
                    run_id: Some("r".into()),
                    container: None,
                    sm_utilization_pct: None,
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn gpu_memory_above_a_share_for_a_while_alerts_once_then_resolves() {
        let a = Alerts::new(
            "gpu-01",
            vec![rule(
                r#"name = "gpu-mem"
                url = "http://127.0.0.1:1/"
                metric = "gpu_memory_share"
                above = 0.9
                for = "10s"
                group = "1m""#,
            )],
        );
        assert_eq!(a.gpu_interval(), Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        assert!(a.on_gpus(&gpu_snap(40), t0).is_empty(), "under the share");
        assert!(a
            .on_gpus(&gpu_snap(75), t0 + Duration::from_secs(1))
            .is_empty());
        assert!(
            a.on_gpus(&gpu_snap(76), t0 + Duration::from_secs(5))
                .is_empty(),
            "not above for 10 s yet"
        );
        let fired = a.on_gpus(&gpu_snap(76), t0 + Duration::from_secs(11));
        assert_eq!(fired.len(), 1);
        let m = &fired[0].1;
        assert_eq!(
            (m.kind, m.task.as_str(), m.node.as_str()),
            ("alert", "gpu:1", "gpu-01")
        );
        assert!(m.title.contains("GPU 1 on gpu-01"), "{}", m.title);
        assert!(
            m.text.contains("GPU 1 (NVIDIA A100-SXM4-80GB) memory 95% used (76.0 of 80.0 GiB), above 90%; on it: llm (pid 42) 76.0 GiB"),
            "{}",
            m.text
        );
        assert!(
            a.on_gpus(&gpu_snap(77), t0 + Duration::from_secs(16))
                .is_empty(),
            "grouped"
        );
        let resolved = a.on_gpus(&gpu_snap(10), t0 + Duration::from_secs(20));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].1.kind, "resolved");
        assert!(
            resolved[0].1.text.contains("12% again"),
            "{}",
            resolved[0].1.text
        );
        assert!(a
            .on_gpus(&gpu_snap(10), t0 + Duration::from_secs(25))
            .is_empty());
    }

    #[test]
    fn gpu_rules_say_what_they_need() {
        let bad = |t: &str| toml::from_str::<Rule>(t).unwrap().check().unwrap_err();
        assert!(bad(r#"name = "x"
            url = "http://h/"
            metric = "gpu_memory_share"
            above = 90.0"#)
        .contains("between 0 and 1"));
        assert!(bad(r#"name = "x"
            url = "http://h/"
            metric = "eval_tokens_per_second"
            above = 5.0"#)
        .contains("tokens-per-second rules take `below`"));
        assert!(bad(r#"name = "x"
            url = "http://h/"
            level = "error"
            gpus = [0]"#)
        .contains("`gpus` goes with"));
    }

    #[test]
    fn a_hubs_rules_match_other_nodes_events_and_name_their_node() {
        let a = Alerts::new(
            "hub",
            vec![rule(
                r#"name = "crash"
                url = "http://127.0.0.1:1/"
                event_types = ["exit"]
                tasks = ["gpu-02/llm", "rpc"]"#,
            )],
        )
        .for_fleet(true);
        let on = |node: &str, task: &str| {
            Arc::new(Event::from_kind(
                EventKind::new(Component::Task, Level::Warning, EventType::Exit, "exit 1"),
                0.0,
                node,
                task,
                "r",
            ))
        };
        let t0 = Instant::now();
        let m = a.on_event(&on("gpu-02", "llm"), t0);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].1.node.as_str(), m[0].1.task.as_str()),
            ("gpu-02", "llm")
        );
        assert!(m[0].1.title.contains("llm on gpu-02"), "{}", m[0].1.title);
        assert!(
            a.on_event(&on("gpu-03", "llm"), t0).is_empty(),
            "another node's llm"
        );
        // A plain task name matches that task on any node, each node grouped apart.
        assert_eq!(a.on_event(&on("gpu-03", "rpc"), t0).len(), 1);
        assert_eq!(a.on_event(&on("gpu-04", "rpc"), t0).len(), 1);
        assert!(a.on_event(&on("gpu-04", "rpc"), t0).is_empty(), "grouped");
    }
}
