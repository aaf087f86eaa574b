//! The daemon side of llama.cpp awareness: log watchers, coordinator status objects,
//! models, request metrics and the RPC backend registry with its heartbeats.

use super::LlamaConfig;
use crate::bus::{Bus, Queue, Sink};
use crate::logbook::follow::{Follower, RawItem};
use crate::logbook::Format;
use crate::metrics::{CounterF64, DescriptorEncoder, GaugeF64, Registry};
use crate::supervisor::kind::{RunContext, Watcher};
use crate::supervisor::{Supervisor, TaskInfo, TaskSpec};
pub use corral_client::wire::Backend;
use corral_core::event::{Component, EventKind, EventType, Level};
use corral_core::llama::{LogParser, ParserKind};
use corral_core::policy::TaskStatus;
use corral_core::record::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Data {
    models: HashMap<String, Vec<Value>>,
    backends: BTreeMap<String, Backend>,
    last_status: HashMap<String, Value>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskModel {
    task: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskModelPhase {
    task: String,
    model: String,
    /// `prompt` or `eval`.
    phase: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Tokens per second of one request: from a CPU-bound small model to batched GPUs.
const TPS_BUCKETS: [f64; 13] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
/// Seconds one request took: from a cached short answer to a long generation.
const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

fn tps_histogram() -> Histogram {
    Histogram::new(TPS_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The coordinators' request metrics, per task and model, written by the log watchers.
#[derive(Clone)]
struct RequestMetrics {
    requests: Family<TaskModel, Counter>,
    prompt_tokens: Family<TaskModel, Counter>,
    eval_tokens: Family<TaskModel, Counter>,
    prompt_seconds: Family<TaskModel, CounterF64>,
    eval_seconds: Family<TaskModel, CounterF64>,
    last_prompt_tps: Family<TaskModel, GaugeF64>,
    last_eval_tps: Family<TaskModel, GaugeF64>,
    tokens_per_second: Histograms<TaskModelPhase>,
    duration: Histograms<TaskModel>,
}

impl RequestMetrics {
    fn new() -> RequestMetrics {
        RequestMetrics {
            requests: Family::default(),
            prompt_tokens: Family::default(),
            eval_tokens: Family::default(),
            prompt_seconds: Family::default(),
            eval_seconds: Family::default(),
            last_prompt_tps: Family::default(),
            last_eval_tps: Family::default(),
            tokens_per_second: Family::new_with_constructor(tps_histogram),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }

    /// Counts one finished request from its `metrics` event's details.
    fn record(&self, task: &str, model: &str, d: &serde_json::Map<String, Value>) {
        let get = |k: &str| d.get(k).and_then(Value::as_f64).filter(|v| v.is_finite());
        let num = |k: &str| get(k).unwrap_or(0.0).max(0.0);
        let labels = TaskModel {
            task: task.to_string(),
            model: model.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.prompt_tokens
            .get_or_create(&labels)
            .inc_by(num("prompt_tokens") as u64);
        self.eval_tokens
            .get_or_create(&labels)
            .inc_by(num("eval_tokens") as u64);
        self.prompt_seconds
            .get_or_create(&labels)
            .inc_by(num("prompt_ms") / 1000.0);
        self.eval_seconds
            .get_or_create(&labels)
            .inc_by(num("eval_ms") / 1000.0);
        self.last_prompt_tps
            .get_or_create(&labels)
            .set(num("prompt_tokens_per_second"));
        self.last_eval_tps
            .get_or_create(&labels)
            .set(num("eval_tokens_per_second"));
        // A phase the server did not report (a fully cached prompt) is not a zero.
        for (phase, key) in [
            ("prompt", "prompt_tokens_per_second"),
            ("eval", "eval_tokens_per_second"),
        ] {
            if let Some(tps) = get(key).filter(|v| *v > 0.0) {
                self.tokens_per_second
                    .get_or_create(&TaskModelPhase {
                        task: task.to_string(),
                        model: model.to_string(),
                        phase,
                    })
                    .observe(tps);
            }
        }
        let ms = get("total_ms").or_else(|| match (get("prompt_ms"), get("eval_ms")) {
            (None, None) => None,
            (p, e) => Some(p.unwrap_or(0.0) + e.unwrap_or(0.0)),
        });
        if let Some(ms) = ms.filter(|ms| *ms >= 0.0) {
            self.duration.get_or_create(&labels).observe(ms / 1000.0);
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "corral_llama_requests",
            "Completed requests",
            self.requests.clone(),
        );
        r.register(
            "corral_llama_prompt_tokens",
            "Prompt tokens evaluated",
            self.prompt_tokens.clone(),
        );
        r.register(
            "corral_llama_eval_tokens",
            "Tokens generated",
            self.eval_tokens.clone(),
        );
        r.register(
            "corral_llama_prompt_seconds",
            "Seconds spent on prompts",
            self.prompt_seconds.clone(),
        );
        r.register(
            "corral_llama_eval_seconds",
            "Seconds spent generating",
            self.eval_seconds.clone(),
        );
        r.register(
            "corral_llama_prompt_tokens_per_second",
            "Prompt tokens per second of the last request",
            self.last_prompt_tps.clone(),
        );
        r.register(
            "corral_llama_eval_tokens_per_second",
            "Generated tokens per second of the last request",
            self.last_eval_tps.clone(),
        );
        r.register(
            "corral_llama_request_tokens_per_second",
            "Tokens per second of each request, by phase (prompt, eval)",
            self.tokens_per_second.clone(),
        );
        r.register(
            "corral_llama_request_duration_seconds",
            "Seconds each request took, prompt and generation",
            self.duration.clone(),
        );
    }
}

/// `corral_rpc_backend_up{addr}`, read from the backend registry at scrape time (a
/// backend no coordinator names any more has no series).
struct BackendsUp(Arc<Mutex<Data>>);

impl std::fmt::Debug for BackendsUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendsUp")
    }
}

impl crate::metrics::Collector for BackendsUp {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let d = self.0.lock().unwrap_or_else(|e| e.into_inner());
        crate::metrics::gauge(
            &mut enc,
            "corral_rpc_backend_up",
            "Whether an rpc backend accepted a TCP connection at the last check.",
            d.backends.values().filter_map(|b| {
                b.healthy
                    .map(|h| ([("addr", b.addr.as_str())], i64::from(h)))
            }),
        )
    }
}

struct Inner {
    /// Wakes the backend checks at once (a coordinator started, a fact came in).
    recheck: tokio::sync::Notify,
    cfg: LlamaConfig,
    sup: Arc<Supervisor>,
    bus: Arc<Bus>,
    data: Arc<Mutex<Data>>,
}

impl Inner {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The llama kinds' shared state: request metrics, models, backends, status objects. The
/// watchers write metrics from the first run on; the loops that need the supervisor
/// start with the daemon ([`Llama::start`]).
#[derive(Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    data: Arc<Mutex<Data>>,
    metrics: RequestMetrics,
    inner: Arc<OnceLock<Arc<Inner>>>,
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn model_label(spec: &TaskSpec) -> String {
    let p = spec.extra["model_path"].as_str().unwrap_or("");
    p.rsplit('/').next().unwrap_or(p).to_string()
}

impl Llama {
    pub fn new(cfg: LlamaConfig) -> Llama {
        Llama {
            cfg,
            data: Arc::new(Mutex::new(Data::default())),
            metrics: RequestMetrics::new(),
            inner: Arc::new(OnceLock::new()),
        }
    }

    /// Starts the status watcher and the heartbeats (once).
    pub fn start(&self, sup: &Arc<Supervisor>) {
        let inner = Arc::new(Inner {
            recheck: tokio::sync::Notify::new(),
            cfg: self.cfg.clone(),
            sup: sup.clone(),
            bus: sup.bus.clone(),
            data: self.data.clone(),
        });
        if self.inner.set(inner.clone()).is_err() {
            return;
        }
        inner.bus.register(StatusWatch(inner.clone()));
        inner.bus.register(BackendFacts(inner.clone()));
        tokio::spawn(coordinator_heartbeats(inner.clone()));
        if inner.cfg.backend_heartbeat {
            tokio::spawn(backend_heartbeats(inner));
        }
    }

    /// The model a llama task serves (the first, by its id), once its server said.
    pub fn model_of(&self, task: &str) -> Option<String> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        data.models
            .get(task)?
            .first()?
            .get("id")?
            .as_str()
            .map(str::to_string)
    }

    pub fn status(&self, name: &str) -> Option<Value> {
        let inner = self.inner.get()?;
        let spec = inner.sup.spec(name).ok()?;
        let info = inner.sup.get(name).ok()?;
        Some(status_object(inner, &info, &spec))
    }

    pub fn backends(&self) -> Vec<Backend> {
        match self.inner.get() {
            Some(inner) => {
                refresh_backend_list(inner);
                inner.data().backends.values().cloned().collect()
            }
            None => Vec::new(),
        }
    }

    /// The request metrics and the backends' up gauge.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
        registry.register_collector(Box::new(BackendsUp(self.data.clone())));
    }
}

fn llama_tasks(sup: &Supervisor, kind: &str) -> Vec<(TaskInfo, TaskSpec)> {
    sup.list()
        .into_iter()
        .filter(|t| t.kind.as_deref() == Some(kind))
        .filter_map(|t| sup.spec(&t.name).ok().map(|s| (t, s)))
        .collect()
}

fn status_object(inner: &Inner, info: &TaskInfo, spec: &TaskSpec) -> Value {
    // The core's `stopped` is the coordinator lifecycle's `initial`.
    let status = match info.status {
        TaskStatus::Stopped | TaskStatus::Completed => TaskStatus::Initial,
        s => s,
    };
    let models = inner
        .data()
        .models
        .get(&info.name)
        .cloned()
        .unwrap_or_default();
    json!({
        "status": status,
        "models": models,
        "lastError": info.last_error,
        "retries": info.retries,
        "uptime": info.uptime_s.map(|u| u.round() as u64),
        "startedAt": info.started_at.filter(|_| info.uptime_s.is_some()).map(corral_core::time::rfc3339_utc),
        "adopted": info.adopted,
        "port": spec.extra["port"],
        "rpc_backends": spec.extra["rpc_backends"],
        "run_id": info.run_id,
    })
}

/// Re-derives coordinator status objects when the supervisor reports a change (a `task`
/// event), fetches models when a coordinator becomes ready, and pushes `status` events.
/// A sink of the bus: when its queue dropped events, every coordinator is re-derived.
struct StatusWatch(Arc<Inner>);

impl Sink for StatusWatch {
    fn name(&self) -> &'static str {
        "llama_status"
    }

    async fn run(self, mut queue: Queue) {
        while let Some(batch) = queue.next().await {
            if batch.dropped > 0 {
                refresh_status(&self.0, None).await;
            }
            for s in &batch.events {
                if s.event.component == Component::Task {
                    refresh_status(&self.0, Some(&s.event.task)).await;
                }
            }
        }
    }
}

/// Re-derives the status of one coordinator (`None`: of every one).
async fn refresh_status(inner: &Inner, task: Option<&str>) {
    for (info, spec) in llama_tasks(&inner.sup, "llama") {
        if task.is_some_and(|t| t != info.name) {
            continue;
        }
        let fresh_ready = info.status == TaskStatus::Ready
            && inner
                .data()
                .last_status
                .get(&info.name)
                .is_none_or(|s| s["status"] != "ready");
        if fresh_ready {
            let models = fetch_models(&spec).await;
            inner.data().models.insert(info.name.clone(), models);
        } else if info.status != TaskStatus::Ready {
            // A server that is not serving lists no models; they are fetched again
            // when it is next ready.
            inner.data().models.remove(&info.name);
        }
        let info = inner.sup.get(&info.name).unwrap_or(info);
        push_status(inner, &info, &spec);
    }
}

fn push_status(inner: &Inner, info: &TaskInfo, spec: &TaskSpec) {
    let obj = status_object(inner, info, spec);
    let mut compare = obj.clone();
    compare["uptime"] = Value::Null;
    {
        let mut d = inner.data();
        let prev = d.last_status.get(&info.name).map(|p| {
            let mut p = p.clone();
            p["uptime"] = Value::Null;
            p
        });
        if prev.as_ref() == Some(&compare) {
            return;
        }
        d.last_status.insert(info.name.clone(), obj.clone());
    }
    let status = obj["status"].as_str().unwrap_or("").to_string();
    let level = match status.as_str() {
        "error" => Level::Error,
        "crashed" => Level::Warning,
        _ => Level::Info,
    };
    let mut kind = EventKind::new(
        Component::Coordinator,
        level,
        EventType::Status,
        format!("llama.cpp coordinator {} is {status}", info.name),
    );
    if let Value::Object(m) = obj {
        kind.details = m;
    }
    inner
        .bus
        .emit(kind, &info.name, info.run_id.as_deref().unwrap_or(""));
}

/// `GET /v1/models` (falling back to `/models`): id, size, n_params, n_ctx per model.
async fn fetch_models(spec: &TaskSpec) -> Vec<Value> {
    let host = super::probe_host(spec.extra["host"].as_str().unwrap_or("127.0.0.1")).to_string();
    let port = spec.extra["port"].as_u64().unwrap_or(8080);
    let client = reqwest::Client::new();
    for path in ["/v1/models", "/models"] {
        let url = format!("http://{host}:{port}{path}");
        let Ok(resp) = client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        else {
            continue;
        };
        if !resp.status().is_success() {
            continue;
        }
        let Ok(v) = resp.json::<Value>().await else {
            continue;
        };
        let list = v["data"]
            .as_array()
            .or(v["models"].as_array())
            .cloned()
            .unwrap_or_default();
        return list
            .iter()
            .map(|m| {
                let meta = &m["meta"];
                json!({
                    "id": m["id"].as_str().or(m["model"].as_str()).or(m["name"].as_str()),
                    "size": meta["size"],
                    "n_params": meta["n_params"],
                    "n_ctx": if meta["n_ctx"].is_null() { meta["n_ctx_train"].clone() } else { meta["n_ctx"].clone() },
                })
            })
            .collect();
    }
    Vec::new()
}

async fn coordinator_heartbeats(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.cfg.coordinator_heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (info, spec) in llama_tasks(&inner.sup, "llama") {
            // A stopped or failed coordinator has nothing to beat for: its status event
            // said so when it changed.
            if !matches!(
                info.status,
                TaskStatus::Starting | TaskStatus::Ready | TaskStatus::Stopping
            ) {
                continue;
            }
            let kind = EventKind::new(
                Component::Coordinator,
                Level::Info,
                EventType::Heartbeat,
                format!(
                    "llama.cpp coordinator {} heartbeat: {}",
                    info.name, info.status
                ),
            )
            .with("port", spec.extra["port"].clone())
            .with("rpc_backends", spec.extra["rpc_backends"].clone())
            .with("model", spec.extra["model_path"].clone())
            .with("uptime", info.uptime_s.map(|u| u.round() as u64))
            .with("status", info.status.as_str());
            inner
                .bus
                .emit(kind, &info.name, info.run_id.as_deref().unwrap_or(""));
        }
    }
}

/// Brings the registry's list of backends in line with the configured coordinators.
fn refresh_backend_list(inner: &Inner) {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (info, spec) in llama_tasks(&inner.sup, "llama") {
        for addr in str_list(&spec.extra["rpc_backends"]) {
            wanted.entry(addr).or_default().push(info.name.clone());
        }
    }
    let mut d = inner.data();
    d.backends.retain(|addr, _| wanted.contains_key(addr));
    for (addr, tasks) in wanted {
        d.backends
            .entry(addr.clone())
            .or_insert_with(|| Backend {
                addr,
                healthy: None,
                latency_ms: None,
                last_error: None,
                last_checked: None,
                tasks: Vec::new(),
            })
            .tasks = tasks;
    }
}

/// A bare TCP connect, sending nothing: rpc-server serves one client at a time.
async fn check_backend(addr: &str) -> Result<f64, String> {
    let start = Instant::now();
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Ok((start.elapsed().as_secs_f64() * 1e6).round() / 1e3)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out after 2s".into()),
    }
}

/// Marks a backend unhealthy at once because of a fact (the coordinator said it failed,
/// its local rpc-server task exited), with the reason; the next successful check marks it
/// healthy again.
fn mark_unhealthy(inner: &Inner, addr: &str, reason: &str, source: &str) {
    let task = {
        let mut d = inner.data();
        let Some(b) = d.backends.get_mut(addr) else {
            return;
        };
        let changed = b.healthy != Some(false);
        b.healthy = Some(false);
        b.latency_ms = None;
        b.last_error = Some(reason.to_string());
        b.last_checked = Some(crate::util::unix_now());
        if !changed {
            return;
        }
        b.tasks.first().cloned().unwrap_or_default()
    };
    let kind = EventKind::new(
        Component::RpcBackend,
        Level::Warning,
        EventType::Disconnect,
        format!("rpc backend {addr} is down: {reason}"),
    )
    .with("addr", addr)
    .with("source", source);
    inner.bus.emit(kind, &task, "");
}

/// Whether a backend address names the server an `rpc` task listens on.
fn serves(addr: &str, host: &str, port: u64) -> bool {
    let Some((h, p)) = addr.rsplit_once(':') else {
        return false;
    };
    if p.parse::<u64>().ok() != Some(port) {
        return false;
    }
    let local = |h: &str| matches!(h, "127.0.0.1" | "localhost" | "::1" | "[::1]");
    h == host || (matches!(host, "0.0.0.0" | "::" | "") && local(h)) || (local(h) && local(host))
}

/// Reacts to facts about backends as they happen, not on the next timer: a coordinator's
/// own log lines about a backend, the exit of a local rpc-server task, and a coordinator
/// or rpc-server that starts (its backends are checked at once). A sink of the bus.
struct BackendFacts(Arc<Inner>);

impl Sink for BackendFacts {
    fn name(&self) -> &'static str {
        "llama_backends"
    }

    async fn run(self, mut queue: Queue) {
        while let Some(batch) = queue.next().await {
            if batch.dropped > 0 {
                // Facts were lost: check every backend now instead.
                self.0.recheck.notify_one();
            }
            for s in &batch.events {
                backend_fact(&self.0, &s.event);
            }
        }
    }
}

fn backend_fact(inner: &Arc<Inner>, ev: &corral_core::event::Event) {
    {
        let Ok(spec) = inner.sup.spec(&ev.task) else {
            return;
        };
        match (spec.kind.as_deref(), ev.component, ev.event_type) {
            (Some("llama"), Component::RpcBackend, EventType::Error) => {
                refresh_backend_list(inner);
                // The coordinator names the backend when it can; a crash in the middle of
                // a request does not say which, so every backend of it is suspect until
                // its next check.
                let named = ev.details.get("addr").and_then(Value::as_str);
                let addrs: Vec<String> = match named {
                    Some(a) => vec![a.to_string()],
                    None => str_list(&spec.extra["rpc_backends"]),
                };
                for addr in addrs {
                    mark_unhealthy(inner, &addr, &ev.message, "coordinator log");
                }
            }
            (Some("llama"), Component::Task, EventType::Start) => inner.recheck.notify_one(),
            (Some("rpc"), Component::Task, EventType::Exit | EventType::Stop) => {
                refresh_backend_list(inner);
                let host = spec.extra["host"].as_str().unwrap_or("127.0.0.1");
                let port = spec.extra["port"].as_u64().unwrap_or(0);
                let addrs: Vec<String> = inner
                    .data()
                    .backends
                    .keys()
                    .filter(|a| serves(a, host, port))
                    .cloned()
                    .collect();
                let reason = format!(
                    "its rpc-server task `{}` {}",
                    ev.task,
                    ev.message.trim_start_matches(&format!("task {} ", ev.task))
                );
                for addr in addrs {
                    mark_unhealthy(inner, &addr, &reason, "task");
                }
            }
            (Some("rpc"), Component::Task, EventType::Start) => {
                // A server that just started needs a moment to listen: check it a few
                // times, soon, rather than leave it down until the next period.
                let inner = inner.clone();
                tokio::spawn(async move {
                    for ms in [100, 250, 500, 1000, 2000, 4000] {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        inner.recheck.notify_one();
                    }
                });
            }
            _ => {}
        }
    }
}

async fn backend_heartbeats(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.cfg.backend_heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The first tick is at once: a backend is checked at start, not after a period.
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.recheck.notified() => {}
        }
        refresh_backend_list(&inner);
        let addrs: Vec<String> = inner.data().backends.keys().cloned().collect();
        if addrs.is_empty() {
            continue;
        }
        let results = futures_util::future::join_all(addrs.iter().map(|a| check_backend(a))).await;
        let now = crate::util::unix_now();
        let mut list = Vec::new();
        let mut changes = Vec::new();
        {
            let mut d = inner.data();
            for (addr, r) in addrs.iter().zip(results) {
                let Some(b) = d.backends.get_mut(addr) else {
                    continue;
                };
                let healthy = r.is_ok();
                if b.healthy != Some(healthy) {
                    changes.push((addr.clone(), healthy, r.clone().err(), b.tasks.clone()));
                }
                b.healthy = Some(healthy);
                b.latency_ms = r.as_ref().ok().copied();
                b.last_error = r.err();
                b.last_checked = Some(now);
                list.push(json!({
                    "addr": addr, "healthy": healthy, "latency_ms": b.latency_ms, "last_error": b.last_error,
                }));
            }
        }
        for (addr, healthy, err, tasks) in changes {
            let task = tasks.first().cloned().unwrap_or_default();
            let kind = if healthy {
                EventKind::new(
                    Component::RpcBackend,
                    Level::Info,
                    EventType::Connect,
                    format!("rpc backend {addr} is reachable"),
                )
            } else {
                EventKind::new(
                    Component::RpcBackend,
                    Level::Warning,
                    EventType::Disconnect,
                    format!(
                        "rpc backend {addr} is unreachable: {}",
                        err.as_deref().unwrap_or("")
                    ),
                )
            }
            .with("addr", addr.clone())
            .with("source", "heartbeat");
            inner.bus.emit(kind, &task, "");
        }
        let active = list.iter().filter(|b| b["healthy"] == true).count();
        let kind = EventKind::new(
            Component::RpcBackend,
            Level::Info,
            EventType::Heartbeat,
            format!("rpc backends: {active}/{} reachable", list.len()),
        )
        .with("total_configured", list.len())
        .with("total_active", active)
        .with("backends", Value::Array(list));
        inner.bus.emit(kind, "", "");
    }
}

/// For llama and rpc tasks: follows the run's log, turns lines into events on the bus
/// and request metrics, and returns why the server died (its error lines), if it did.
pub fn watch_run(llama: &Llama, parser_kind: ParserKind, run: RunContext<'_>) -> Watcher {
    let spec = run.spec;
    let log = run.log;
    let metrics = llama.metrics.clone();
    let bus = run.bus;
    let task = spec.name.clone();
    let run_id = run.run_id.to_string();
    let model = model_label(spec);
    // The coordinator's `start` event carries its configuration (DESIGN.md's event
    // example): what the log line cannot say.
    let settings: Vec<(&str, Value)> = match parser_kind {
        ParserKind::LlamaServer => {
            let backends = spec.extra["rpc_backends"].clone();
            let count = backends.as_array().map_or(0, Vec::len);
            vec![
                ("model_path", spec.extra["model_path"].clone()),
                ("rpc_backends", backends),
                ("backend_count", count.into()),
                ("n_gpu_layers", spec.extra["n_gpu_layers"].clone()),
                ("ctx_size", spec.extra["ctx_size"].clone()),
            ]
        }
        _ => Vec::new(),
    };
    tokio::spawn(async move {
        let mut parser = LogParser::new(parser_kind);
        let mut follower = Follower::new(log, 1, Format::Ndjson, true);
        let mut verdict = Verdict::default();
        let handle = |kinds: Vec<EventKind>, verdict: &mut Verdict| {
            for mut k in kinds {
                if k.component == Component::Coordinator && k.event_type == EventType::Start {
                    for (key, v) in &settings {
                        k.details
                            .entry(key.to_string())
                            .or_insert_with(|| v.clone());
                    }
                }
                verdict.note(&k);
                if k.is_request_metrics() {
                    metrics.record(&task, &model, &k.details);
                }
                bus.emit(k, &task, &run_id);
            }
        };
        while let Some(item) = follower.next_raw().await {
            match item {
                RawItem::Records { batch, from, to } => {
                    for seq in from..=to {
                        let i = (seq - batch.first_seq) as usize;
                        if batch.recs[i].stream == Stream::System {
                            continue;
                        }
                        let line = String::from_utf8_lossy(batch.content(i));
                        let kinds = parser.feed(&line);
                        handle(kinds, &mut verdict);
                    }
                }
                RawItem::Gap { .. } => {}
                RawItem::End(_) => break,
            }
        }
        let kinds = parser.finish();
        handle(kinds, &mut verdict);
        verdict.reason()
    })
}

/// Error lines of a run kept for its failure reason.
const RECENT_ERRORS: usize = 8;

/// What a run's log says about why it ended: its latest error lines only (a server may log
/// errors for days, and the reason for an exit is near the exit), forgotten once the
/// server completes a request after them (they were not fatal), and the file they name.
#[derive(Default)]
struct Verdict {
    errors: VecDeque<String>,
    path: Option<String>,
}

impl Verdict {
    fn note(&mut self, k: &EventKind) {
        if k.level >= Level::Error {
            if self.errors.len() == RECENT_ERRORS {
                self.errors.pop_front();
            }
            self.errors.push_back(k.message.clone());
            if let Some(p) = k.details.get("path").and_then(Value::as_str) {
                self.path.get_or_insert_with(|| p.to_string());
            }
        } else if k.is_request_metrics() {
            self.errors.clear();
            self.path = None;
        }
    }

    fn reason(&mut self) -> Option<String> {
        failure_reason(self.errors.make_contiguous(), self.path.as_deref())
    }
}

/// Why a server died, from its last error lines: the last one (llama.cpp ends with the verdict,
/// e.g. "exiting due to model loading error"), the first one (usually the cause), and the
/// file involved when neither names it.
fn failure_reason(errors: &[String], path: Option<&str>) -> Option<String> {
    let last = errors.last()?;
    let mut reason = last.clone();
    if let Some(first) = errors.first().filter(|f| *f != last) {
        reason = format!("{reason}: {first}");
    }
    if let Some(p) = path.filter(|p| !reason.contains(p)) {
        reason = format!("{reason} ({p})");
    }
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::{failure_reason, BackendsUp, Data, RequestMetrics, Verdict};
    use crate::metrics::{render, Registry};
    use corral_core::event::{Component, EventKind, EventType, Level};
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_request_feeds_its_counters_gauges_and_histograms() {
        let m = RequestMetrics::new();
        let mut r = Registry::default();
        m.register(&mut r);
        let data = Arc::new(Mutex::new(Data::default()));
        r.register_collector(Box::new(BackendsUp(data.clone())));
        let details = |v: serde_json::Value| v.as_object().unwrap().clone();
        m.record(
            "coord",
            "x.gguf",
            &details(serde_json::json!({
                "prompt_tokens": 12, "prompt_ms": 40.0, "prompt_tokens_per_second": 300.0,
                "eval_tokens": 120, "eval_ms": 3000.0, "eval_tokens_per_second": 40.0,
                "total_ms": 3040.0,
            })),
        );
        // A fully cached prompt reports no prompt phase, and no total.
        m.record(
            "coord",
            "x.gguf",
            &details(serde_json::json!({
                "prompt_tokens": null, "prompt_ms": null, "prompt_tokens_per_second": null,
                "eval_tokens": 10, "eval_ms": 500.0, "eval_tokens_per_second": 20.0,
                "total_ms": null,
            })),
        );
        data.lock().unwrap().backends.insert(
            "10.0.0.2:50052".into(),
            super::Backend {
                addr: "10.0.0.2:50052".into(),
                healthy: Some(true),
                latency_ms: None,
                last_error: None,
                last_checked: None,
                tasks: Vec::new(),
            },
        );
        let text = render(&r);
        let l = "{task=\"coord\",model=\"x.gguf\"}";
        for line in [
            format!("corral_llama_requests_total{l} 2"),
            format!("corral_llama_prompt_tokens_total{l} 12"),
            format!("corral_llama_eval_tokens_total{l} 130"),
            format!("corral_llama_prompt_seconds_total{l} 0.04"),
            format!("corral_llama_eval_seconds_total{l} 3.5"),
            format!("corral_llama_prompt_tokens_per_second{l} 0.0"),
            format!("corral_llama_eval_tokens_per_second{l} 20.0"),
            "# TYPE corral_llama_requests_total counter".into(),
            "# TYPE corral_llama_prompt_seconds_total counter".into(),
            "# TYPE corral_llama_eval_tokens_per_second gauge".into(),
            "# TYPE corral_llama_request_tokens_per_second histogram".into(),
            "corral_llama_request_tokens_per_second_count{task=\"coord\",model=\"x.gguf\",phase=\"prompt\"} 1".into(),
            "corral_llama_request_tokens_per_second_count{task=\"coord\",model=\"x.gguf\",phase=\"eval\"} 2".into(),
            "corral_llama_request_tokens_per_second_bucket{task=\"coord\",model=\"x.gguf\",phase=\"eval\",le=\"25\"} 1".into(),
            "# TYPE corral_llama_request_duration_seconds histogram".into(),
            format!("corral_llama_request_duration_seconds_sum{l} 3.54"),
            format!("corral_llama_request_duration_seconds_count{l} 2"),
            "# TYPE corral_rpc_backend_up gauge".into(),
            "corral_rpc_backend_up{addr=\"10.0.0.2:50052\"} 1".into(),
        ] {
            assert!(text.lines().any(|t| t == line), "no `{line}` in\n{text}");
        }
    }

    #[test]
    fn errors_the_server_served_past_are_not_the_reason() {
        let err =
            |m: &str| EventKind::new(Component::Coordinator, Level::Error, EventType::Error, m);
        let metrics = |shape: &str| {
            EventKind::new(
                Component::Coordinator,
                Level::Info,
                EventType::Metrics,
                shape,
            )
            .with("kind", shape)
        };
        let (request, progress) = (metrics("request"), metrics("progress"));
        let mut v = Verdict::default();
        v.note(&err("failed to tokenize prompt"));
        v.note(&request);
        assert_eq!(v.reason(), None, "a request completed after the error");
        v.note(&err("CUDA error: out of memory"));
        v.note(&progress);
        assert_eq!(v.reason().as_deref(), Some("CUDA error: out of memory"));
        for i in 0..20 {
            v.note(&err(&format!("e{i}")));
        }
        assert_eq!(
            v.reason().as_deref(),
            Some("e19: e12"),
            "only the latest eight"
        );
    }

    #[test]
    fn the_reason_has_the_verdict_the_cause_and_the_file() {
        let errs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(failure_reason(&[], Some("/m.gguf")), None);
        assert_eq!(failure_reason(&errs(&["only"]), None).unwrap(), "only");
        assert_eq!(
            failure_reason(
                &errs(&["invalid magic", "x", "exiting due to model loading error"]),
                Some("/b.gguf")
            )
            .unwrap(),
            "exiting due to model loading error: invalid magic (/b.gguf)"
        );
        assert_eq!(
            failure_reason(
                &errs(&["failed to open '/b.gguf'", "exiting"]),
                Some("/b.gguf")
            )
            .unwrap(),
            "exiting: failed to open '/b.gguf'"
        );
    }
}
