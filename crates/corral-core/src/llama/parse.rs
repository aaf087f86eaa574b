//! Turns the log lines of llama.cpp's `llama-server` and `rpc-server` into structured events.
//!
//! [`LogParser`] is a pure state machine: [`LogParser::feed`] takes one line and returns the
//! events that line completes, [`LogParser::finish`] returns what is still open at the end of
//! the input. It does no I/O and reads no clock; the daemon stamps time, node and run.
//!
//! Formats accepted, oldest first (fixtures: `tests/fixtures/llama/`):
//! - 2023 `server`: plain `fprintf` lines (`llama server listening at http://...`), JSON log
//!   objects (`{"level":"INFO","message":...}`), `print_timings:` blocks counting `runs`;
//! - 2024 `server`: JSON objects with `"msg"`, or `--log-format text` lines
//!   (`INFO [ function] message | key=value ...`), timing lines carrying `id_slot`/`id_task`;
//! - from 2024-09, `common/log.cpp`: `srv  func: ...`, `slot func: id  N | task M | ...`,
//!   optionally prefixed by `M.SS.mmm.uuu L ` (time since start and a level letter) and
//!   coloured with ANSI escapes; a timing block is one `slot print_timing:` header line followed
//!   by unprefixed continuation lines;
//! - newest: one prefixed `print_timing` line per figure, `n_gen = .., tg = .. t/s` progress;
//! - model loader output of every era (`llama_model_loader`, `llm_load_print_meta`,
//!   `print_info`, `llm_load_tensors`/`load_tensors`, KV and compute buffers), ggml/CUDA errors,
//!   assertions and aborts;
//! - rpc-server start-up blocks (`Starting RPC server ...`, `endpoint : ...`, `Devices:`),
//!   connection lines, and the RPC client errors llama-server prints.
//!
//! Invariants:
//! - `feed` never panics, whatever it is given; every event's `details` is a JSON object and
//!   every message is plain text (ANSI escapes and control characters removed);
//! - a line the parser does not know produces nothing and costs one multi-literal scan
//!   (`TRIGGERS`) before any capturing regex runs: this is called for every captured line;
//! - multi-line facts (a request's timing block, the rpc-server start block, an uncaught C++
//!   exception and its `what()`) are held until the line that completes them, a line that
//!   proves they are over, or [`LogParser::finish`].

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::{Map, Value};

use crate::event::{Component, EventKind, EventType, Level};

/// Which program's log a parser reads. `Auto` accepts both (lines do not conflict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParserKind {
    #[default]
    Auto,
    LlamaServer,
    RpcServer,
}

impl ParserKind {
    fn llama(self) -> bool {
        !matches!(self, ParserKind::RpcServer)
    }

    fn rpc(self) -> bool {
        !matches!(self, ParserKind::LlamaServer)
    }
}

/// Parses one program's log, line by line. Keep one per log stream: it holds multi-line blocks.
#[derive(Debug, Default)]
pub struct LogParser {
    kind: ParserKind,
    /// A request's timing figures, until its `total time` line.
    timing: Option<Timing>,
    /// `Starting RPC server vX`, until the `endpoint : host:port` line that follows it.
    rpc_start: Option<RpcStart>,
    /// Inside rpc-server's `Devices:` list.
    rpc_devices: bool,
    /// `terminate called after throwing ...`, until the `what():` line that follows it.
    crash: Option<EventKind>,
    /// A `loading model` line without a path (2024-2025 `main:`), dropped when the next model
    /// event is the `loading model '<path>'` line that says the same with the path.
    loading: Option<EventKind>,
    /// The last listening address announced since the process started: builds from 2024-09 to
    /// 2025 print it twice (when binding, and when the model is ready), 2023 builds in two formats.
    announced: Option<(String, Option<u16>)>,
    /// Tests compare the parser with and without the pre-check to prove the pre-check loses
    /// nothing.
    #[cfg(test)]
    no_prefilter: bool,
}

impl LogParser {
    pub fn new(kind: ParserKind) -> Self {
        LogParser {
            kind,
            ..LogParser::default()
        }
    }

    /// One log line, without its trailing newline (a trailing '\r' may be present). May contain ANSI
    /// colour escapes and any text. Returns the events this line completes (often none).
    /// Must never panic on any input.
    pub fn feed(&mut self, line: &str) -> Vec<EventKind> {
        let mut out = Vec::new();
        let line = line.trim_end_matches(['\r', '\n']);
        let clean = strip_ansi(line);
        let (prefix_level, rest) = split_prefix(&clean);
        let text = rest.trim();
        if text.is_empty() {
            return out;
        }
        let open_block = self.crash.is_some() || self.rpc_start.is_some() || self.rpc_devices;
        if !open_block && prefix_level != Some(Level::Error) && !self.prefilter(text) {
            return out;
        }

        if let Some(s) = parse_structured(text) {
            let l = Line {
                level: s.level.or(prefix_level),
                text: s.msg.trim(),
                func: &s.func,
                body: s.msg.trim(),
                slot: s.slot,
                task: s.task,
                ext: Some(&s.ext),
            };
            self.process(&l, &mut out);
        } else {
            let l = Line::parse(text, prefix_level);
            self.process(&l, &mut out);
        }
        out
    }

    /// End of input: returns events for any block still open (e.g. a timing block missing its last line).
    pub fn finish(&mut self) -> Vec<EventKind> {
        let mut out = Vec::new();
        if let Some(e) = self.loading.take() {
            out.push(e);
        }
        if let Some(s) = self.rpc_start.take() {
            out.push(s.event(None));
        }
        if let Some(e) = self.crash.take() {
            out.push(e);
        }
        if let Some(t) = self.timing.take() {
            out.push(t.event(false));
        }
        self.rpc_devices = false;
        out
    }

    fn prefilter(&self, text: &str) -> bool {
        #[cfg(test)]
        if self.no_prefilter {
            return true;
        }
        TRIGGERS.is_match(text)
    }

    fn process(&mut self, l: &Line<'_>, out: &mut Vec<EventKind>) {
        // Blocks whose completing line must come next.
        if let Some(mut crash) = self.crash.take() {
            if let Some(what) = l.text.strip_prefix("what():") {
                let what = what.trim();
                crash.message = format!("uncaught exception: {what}");
                crash.details.insert("what".into(), what.into());
                out.push(crash);
                return;
            }
            out.push(crash);
        }
        if let Some(start) = self.rpc_start.take() {
            if let Some(endpoint) = rpc_endpoint(l.text) {
                out.push(start.event(Some(endpoint)));
                return;
            }
            out.push(start.event(None));
        }
        if self.rpc_devices {
            if let Some(e) = rpc_device(l.text) {
                out.push(e);
                return;
            }
            self.rpc_devices = false;
        }

        let mut events = Vec::new();
        self.dispatch(l, &mut events);
        if events.is_empty() {
            return;
        }
        if let Some(pending) = self.loading.take() {
            let says_it_with_path = events
                .iter()
                .any(|e| e.event_type == EventType::ModelLoad && stage(e) == Some("loading"));
            if !says_it_with_path {
                out.push(pending);
            }
        }
        // A recognised fact logged at warning or error level keeps that level.
        if let Some(line_level) = l.level.filter(|lv| *lv >= Level::Warning) {
            for e in &mut events {
                e.level = e.level.max(line_level);
            }
        }
        out.append(&mut events);
    }

    fn dispatch(&mut self, l: &Line<'_>, ev: &mut Vec<EventKind>) {
        let llama = self.kind.llama();
        if llama && is_process_start(l) {
            // A new process: what the old one left open is over.
            self.announced = None;
            self.flush_timing(ev);
            return;
        }
        if llama && self.timing_line(l, ev) {
            return;
        }
        if llama {
            if let Some(e) = progress(l) {
                ev.push(e);
                return;
            }
        }
        if self.kind.rpc() && self.rpc_line(l, ev) {
            return;
        }
        if let Some(c) = when(l.text.starts_with("terminate called"), &TERMINATE, l.text) {
            let ty = cap(&c, "ty");
            let mut e = EventKind::new(
                Component::System,
                Level::Critical,
                EventType::Error,
                clean_message(l.text),
            );
            if !ty.is_empty() {
                e = e.with("exception", ty);
            }
            self.crash = Some(e);
            return;
        }
        if let Some(e) = self.error_line(l) {
            if e.details.get("exiting") == Some(&Value::Bool(true)) {
                self.announced = None;
            }
            ev.push(e);
            return;
        }
        if llama {
            if self.listening(l, ev) || self.model_line(l, ev) {
                return;
            }
            if let Some(e) = stop_line(l) {
                self.announced = None;
                ev.push(e);
                return;
            }
            if let Some(e) = coordinator_status(l) {
                ev.push(e);
                return;
            }
        }
        if let Some(e) = system_status(l) {
            ev.push(e);
            return;
        }
        if l.level == Some(Level::Error) {
            // An error we have no rule for is still an error: report it as printed.
            let component = if self.kind == ParserKind::RpcServer {
                Component::RpcBackend
            } else if is_model_func(l.func) {
                Component::Model
            } else {
                Component::Coordinator
            };
            ev.push(EventKind::new(
                component,
                Level::Error,
                EventType::Error,
                clean_message(l.text),
            ));
        }
    }

    // ---------------------------------------------------------------- timings

    fn timing_line(&mut self, l: &Line<'_>, ev: &mut Vec<EventKind>) -> bool {
        let b = l.body;
        // 2024-09 to 2025: `slot print_timing: id  0 | task 5 |` then unprefixed figure lines.
        if b.is_empty() && l.slot.is_some() && l.func.starts_with("print_timing") {
            self.flush_timing(ev);
            self.timing = Some(Timing::new("request", l.slot, l.task));
            return true;
        }
        if !b.contains("time") {
            return false;
        }
        let Some(c) = TIMING.captures(b) else {
            return false;
        };
        let what = cap(&c, "what");
        let line_kind = timing_kind(l.func);
        let fits = |t: &Timing| t.accepts(l, line_kind);
        let reuse = match (&self.timing, what) {
            (Some(t), "prompt eval") => {
                fits(t) && t.prompt.is_none() && t.eval.is_none() && t.total_ms.is_none()
            }
            (Some(t), "eval" | "generation eval") => {
                fits(t) && t.eval.is_none() && t.total_ms.is_none()
            }
            (Some(t), "load" | "sample") => fits(t) && t.eval.is_none() && t.total_ms.is_none(),
            (Some(t), _) => fits(t) && t.total_ms.is_none(),
            (None, _) => false,
        };
        if !reuse {
            self.flush_timing(ev);
            let kind = line_kind.unwrap_or("request");
            self.timing = Some(Timing::new(kind, l.slot, l.task));
        }
        let Some(t) = self.timing.as_mut() else {
            return true;
        };
        let ms = num(cap(&c, "ms"));
        match what {
            "prompt eval" => t.prompt = Some(Rate::from_caps(&c)),
            "eval" | "generation eval" => t.eval = Some(Rate::from_caps(&c)),
            "load" => t.load_ms = Some(ms),
            "sample" => t.sample_ms = Some(ms),
            _ => {
                t.total_ms = Some(ms);
                t.total_tokens = c.name("n").map(|m| num(m.as_str()));
                if let Some(done) = self.timing.take() {
                    ev.push(done.event(true));
                }
            }
        }
        true
    }

    fn flush_timing(&mut self, ev: &mut Vec<EventKind>) {
        if let Some(t) = self.timing.take() {
            ev.push(t.event(false));
        }
    }

    // ---------------------------------------------------------------- rpc-server

    fn rpc_line(&mut self, l: &Line<'_>, ev: &mut Vec<EventKind>) -> bool {
        let t = l.text;
        if let Some(rest) = t.strip_prefix("Starting RPC server") {
            if let Some(c) = RPC_START_OLD.captures(rest) {
                // Before 2024-10 the start was one line: `on host:port, backend memory: N MB`.
                let mut start = RpcStart::default().event(Some(cap(&c, "ep")));
                start
                    .details
                    .insert("memory_mib".into(), num(cap(&c, "mem")));
                ev.push(start);
            } else {
                let version = VERSION.captures(rest).map(|c| cap(&c, "v").to_string());
                self.rpc_start = Some(RpcStart { version });
            }
            return true;
        }
        if t == "Devices:" {
            self.rpc_devices = true;
            return true;
        }
        if let Some(rest) = t.strip_prefix("Accepted client connection") {
            let mut e = EventKind::new(
                Component::RpcBackend,
                Level::Info,
                EventType::Connect,
                "client connected",
            );
            if let Some(c) = RPC_ACCEPT_MEM.captures(rest) {
                e = e
                    .with("free_mem", num(cap(&c, "free")))
                    .with("total_mem", num(cap(&c, "total")));
            }
            ev.push(e);
            return true;
        }
        if t.starts_with("Client connection closed") {
            ev.push(EventKind::new(
                Component::RpcBackend,
                Level::Info,
                EventType::Disconnect,
                "client disconnected",
            ));
            return true;
        }
        if let Some(endpoint) = rpc_endpoint(t) {
            // An endpoint line with no start line before it (log joined mid-way).
            let (host, port) = split_host_port(endpoint);
            let mut e = EventKind::new(
                Component::RpcBackend,
                Level::Info,
                EventType::Status,
                format!("rpc-server endpoint {endpoint}"),
            )
            .with("endpoint", endpoint)
            .with("host", host);
            if let Some(p) = port {
                e = e.with("port", p);
            }
            ev.push(e);
            return true;
        }
        if let Some(c) = when(t.starts_with("backend memory"), &RPC_BACKEND_MEM, t) {
            ev.push(
                EventKind::new(
                    Component::RpcBackend,
                    Level::Info,
                    EventType::Status,
                    format!("rpc-server backend memory: {} MiB", cap(&c, "mem")),
                )
                .with("memory_mib", num(cap(&c, "mem"))),
            );
            return true;
        }
        if l.func == "create_backend" {
            if let Some(c) = RPC_USING_BACKEND.captures(l.body) {
                ev.push(
                    EventKind::new(
                        Component::RpcBackend,
                        Level::Info,
                        EventType::Status,
                        format!("rpc-server using {} backend", cap(&c, "b")),
                    )
                    .with("backend", cap(&c, "b")),
                );
                return true;
            }
        }
        if let Some(c) = when(t.starts_with("WARNING: Host"), &RPC_HOST_WARNING, t) {
            ev.push(
                EventKind::new(
                    Component::RpcBackend,
                    Level::Warning,
                    EventType::Status,
                    format!(
                        "rpc-server bound to {}: never expose it to an open network",
                        cap(&c, "host")
                    ),
                )
                .with("host", cap(&c, "host")),
            );
            return true;
        }
        false
    }

    // ---------------------------------------------------------------- errors

    fn error_line(&self, l: &Line<'_>) -> Option<EventKind> {
        let llama = self.kind.llama();
        let rpc = self.kind.rpc();
        let (t, b) = (l.text, l.body);
        // `file.cpp:123: message`: GGML_ABORT and GGML_ASSERT since 2024; the process dies.
        let abort = when(looks_like_source_site(t), &ABORT, t);
        let msg = abort.as_ref().map_or(b, |c| cap(c, "msg"));
        let site = |mut e: EventKind| {
            if let Some(c) = &abort {
                e.details.insert("file".into(), cap(c, "file").into());
                e.details.insert("line".into(), num(cap(c, "line")));
            }
            e
        };
        let fatal = if abort.is_some() {
            Level::Critical
        } else {
            Level::Error
        };
        let in_rpc_file = abort
            .as_ref()
            .is_some_and(|c| cap(c, "file").contains("ggml-rpc"));
        let rpc_err = |level, message: &str| {
            EventKind::new(
                Component::RpcBackend,
                level,
                EventType::Error,
                clean_message(message),
            )
        };

        // The RPC client side, printed by llama-server about its backends.
        if llama {
            if msg.contains("Remote RPC server crashed") {
                return Some(site(rpc_err(Level::Critical, msg)));
            }
            if let Some(c) = when(msg.contains("version mismatch"), &RPC_MISMATCH, msg) {
                let mut e = rpc_err(fatal, msg);
                if let Some(v) = c.name("v") {
                    e = e.with("server_version", v.as_str());
                }
                return Some(site(e));
            }
            if let Some(c) = when(
                msg.contains("Failed to connect to") || msg.contains("handshake failed for"),
                &RPC_CONNECT_FAIL,
                msg,
            ) {
                let addr = cap(&c, "addr").trim_end_matches([',', '.', ';']);
                return Some(site(rpc_err(fatal, msg).with("addr", addr)));
            }
        }
        // The server side, printed by rpc-server.
        if rpc && RPC_SERVER_ERRORS.iter().any(|p| t.contains(p)) {
            return Some(site(rpc_err(fatal, t)));
        }

        if let Some(c) = when(
            abort.is_some() && msg.starts_with("GGML_ASSERT("),
            &ASSERT_NEW,
            msg,
        ) {
            let component = if in_rpc_file {
                Component::RpcBackend
            } else {
                Component::System
            };
            return Some(site(
                EventKind::new(
                    component,
                    Level::Critical,
                    EventType::Error,
                    clean_message(msg),
                )
                .with("assertion", cap(&c, "cond")),
            ));
        }
        if let Some(c) = when(t.starts_with("GGML_ASSERT: "), &ASSERT_OLD, t) {
            let component = if cap(&c, "file").contains("ggml-rpc") {
                Component::RpcBackend
            } else {
                Component::System
            };
            return Some(
                EventKind::new(
                    component,
                    Level::Critical,
                    EventType::Error,
                    format!("GGML_ASSERT({}) failed", cap(&c, "cond")),
                )
                .with("assertion", cap(&c, "cond"))
                .with("file", cap(&c, "file"))
                .with("line", num(cap(&c, "line"))),
            );
        }

        // GPU and memory.
        if let Some(c) = when(t.contains(" error: "), &GPU_ERROR, t) {
            let err = cap(&c, "err");
            let oom = err.contains("out of memory");
            let level = if oom { Level::Critical } else { Level::Error };
            return Some(
                EventKind::new(Component::System, level, EventType::Error, clean_message(t))
                    .with("backend", cap(&c, "be"))
                    .with("error", err)
                    .with("oom", oom),
            );
        }
        if let Some(c) = when(b.contains("allocating "), &DEVICE_ALLOC_FAIL, b) {
            let err = cap(&c, "err");
            let oom = err.contains("out of memory");
            let level = if oom { Level::Critical } else { Level::Error };
            return Some(
                EventKind::new(Component::System, level, EventType::Error, clean_message(b))
                    .with("device", num(cap(&c, "dev")))
                    .with("size_mib", num(cap(&c, "mib")))
                    .with("error", err)
                    .with("oom", oom),
            );
        }

        // The model: missing, unreadable, corrupted, or the context could not be created.
        let model_failure = MODEL_ERRORS.iter().any(|p| msg.contains(p))
            || (l.func.starts_with("gguf_")
                && (b.contains("fail") || b.contains("invalid") || b.contains("error")))
            || (l.level == Some(Level::Error) && is_model_func(l.func));
        if llama && model_failure && !b.starts_with("exiting due to") {
            let mut e = EventKind::new(
                Component::Model,
                fatal,
                EventType::Error,
                clean_message(msg),
            );
            if let Some(p) = model_path(msg).or_else(|| l.ext.and_then(|x| x.model.as_deref())) {
                e = e.with("path", p);
            }
            return Some(site(e));
        }

        if b.contains("out of memory") {
            return Some(site(
                EventKind::new(
                    Component::System,
                    Level::Critical,
                    EventType::Error,
                    clean_message(msg),
                )
                .with("oom", true),
            ));
        }
        if let Some(c) = when(b.contains("failed to allocate"), &ALLOC_FAIL, b) {
            return Some(
                EventKind::new(
                    Component::System,
                    Level::Error,
                    EventType::Error,
                    clean_message(b),
                )
                .with("buffer", cap(&c, "buf"))
                .with("size_bytes", num(cap(&c, "size"))),
            );
        }
        if GPU_INIT_FUNCS.contains(&l.func) && b.starts_with("failed to initialize") {
            return Some(EventKind::new(
                Component::System,
                Level::Error,
                EventType::Error,
                clean_message(b),
            ));
        }

        // The HTTP side of llama-server.
        if llama {
            if b.contains("couldn't bind") {
                let mut e = EventKind::new(
                    Component::Coordinator,
                    Level::Error,
                    EventType::Error,
                    clean_message(b),
                );
                let (host, port) = match BIND_ADDR.captures(b) {
                    Some(c) => (Some(cap(&c, "host").to_string()), port_of(cap(&c, "port"))),
                    None => match l.ext {
                        Some(x) => (x.host.clone(), x.port),
                        None => (None, None),
                    },
                };
                if let Some(h) = host {
                    e = e.with("host", h);
                }
                if let Some(p) = port {
                    e = e.with("port", p);
                }
                return Some(e);
            }
            if b.starts_with("exiting due to") || b.contains("failed to initialize HTTP server") {
                let component = if b.contains("model") {
                    Component::Model
                } else {
                    Component::Coordinator
                };
                return Some(
                    EventKind::new(component, Level::Error, EventType::Error, clean_message(b))
                        .with("exiting", b.starts_with("exiting")),
                );
            }
        }

        if abort.is_some() {
            let component = if in_rpc_file {
                Component::RpcBackend
            } else {
                Component::System
            };
            return Some(site(EventKind::new(
                component,
                Level::Critical,
                EventType::Error,
                clean_message(msg),
            )));
        }
        // Argument and start-up errors printed with plain fprintf (no level prefix).
        if t.starts_with("error: ") {
            let component = if self.kind == ParserKind::RpcServer {
                Component::RpcBackend
            } else {
                Component::Coordinator
            };
            return Some(EventKind::new(
                component,
                Level::Error,
                EventType::Error,
                clean_message(t),
            ));
        }
        None
    }

    // ---------------------------------------------------------------- llama-server

    fn listening(&mut self, l: &Line<'_>, ev: &mut Vec<EventKind>) -> bool {
        let b = l.body;
        if !b.contains("listening") {
            return false;
        }
        let mut url = None;
        let mut threads = None;
        let (host, port) = if let Some(c) = HTTP_LISTENING.captures(b) {
            threads = c.name("threads").map(|m| num(m.as_str()));
            (Some(cap(&c, "host").to_string()), port_of(cap(&c, "port")))
        } else if let Some(c) = LISTENING_URL.captures(b) {
            let raw = cap(&c, "url").trim_end_matches([',', '.', ';']);
            url = Some(raw.to_string());
            if let Some(path) = raw.strip_prefix("unix://") {
                (Some(path.to_string()), None)
            } else {
                let hostport = raw
                    .strip_prefix("http://")
                    .or_else(|| raw.strip_prefix("https://"))
                    .unwrap_or(raw);
                let hostport = hostport.split('/').next().unwrap_or(hostport);
                let (h, p) = split_host_port(hostport);
                (Some(h.to_string()), p)
            }
        } else if b == "HTTP server listening" {
            match l.ext {
                Some(x) => {
                    threads = x.http_threads.map(Value::from);
                    (x.host.clone(), x.port)
                }
                None => (None, None),
            }
        } else {
            return false;
        };
        let key = (host.clone().unwrap_or_default(), port);
        if self.announced.as_ref() == Some(&key) {
            return true;
        }
        self.announced = Some(key);

        let message = match (&host, port) {
            (Some(h), Some(p)) => {
                format!("llama.cpp coordinator started on port {p} (listening on {h}:{p})")
            }
            (None, Some(p)) => format!("llama.cpp coordinator started on port {p}"),
            (Some(h), None) => format!("llama.cpp coordinator started, listening on {h}"),
            _ => "llama.cpp coordinator started".to_string(),
        };
        let mut e = EventKind::new(
            Component::Coordinator,
            Level::Info,
            EventType::Start,
            message,
        );
        if let Some(h) = host {
            e = e.with("host", h);
        }
        if let Some(p) = port {
            e = e.with("port", p);
        }
        if let Some(u) = url {
            e = e.with("url", u);
        }
        if let Some(n) = threads {
            e = e.with("http_threads", n);
        }
        ev.push(e);
        true
    }

    fn model_line(&mut self, l: &Line<'_>, ev: &mut Vec<EventKind>) -> bool {
        let b = l.body;
        let model_load = |stage: &str, message: String| {
            EventKind::new(
                Component::Model,
                Level::Info,
                EventType::ModelLoad,
                clean_message(&message),
            )
            .with("stage", stage)
        };
        if let Some(c) = when(b.starts_with("loading model"), &LOADING, b) {
            let path = cap(&c, "path");
            ev.push(model_load("loading", format!("loading model '{path}'")).with("path", path));
            return true;
        }
        if b == "loading model" {
            let mut e = model_load("loading", "loading model".into());
            if let Some(p) = l.ext.and_then(|x| x.model.as_deref()) {
                e = e.with("path", p);
            }
            self.loading = Some(e);
            return true;
        }
        if b.starts_with("model loaded") {
            ev.push(model_load("loaded", "model loaded".into()));
            return true;
        }
        if let Some(c) = when(b.contains("meta data"), &METADATA, b) {
            let mut e = model_load(
                "metadata",
                format!(
                    "model metadata: {} key-value pairs, {} tensors",
                    cap(&c, "kv"),
                    cap(&c, "tensors")
                ),
            )
            .with("kv_count", num(cap(&c, "kv")))
            .with("tensor_count", num(cap(&c, "tensors")))
            .with("path", cap(&c, "path"));
            if let Some(v) = c.name("version") {
                e = e.with("version", v.as_str());
            }
            ev.push(e);
            return true;
        }
        let meta_printer =
            matches!(l.func, "print_info" | "llama_model_loader") || l.func.ends_with("print_meta");
        if meta_printer {
            if let Some(c) = FILE_FORMAT.captures(b) {
                let format = cap(&c, "v");
                let mut e = model_load("file_format", format!("model file format: {format}"))
                    .with("format", format);
                if let Some(v) = GGUF_VERSION.captures(format) {
                    e = e.with("gguf_version", num(cap(&v, "n")));
                }
                ev.push(e);
                return true;
            }
            if let Some(c) = FILE_TYPE.captures(b) {
                let ftype = cap(&c, "v");
                ev.push(
                    model_load("file_type", format!("model file type: {ftype}"))
                        .with("file_type", ftype),
                );
                return true;
            }
            if let Some(c) = FILE_SIZE.captures(b) {
                let text = format!("{} {}", cap(&c, "n"), cap(&c, "unit"));
                let mut e = model_load("file_size", format!("model file size: {text}"))
                    .with("file_size_text", text.as_str());
                if let Some(bytes) = size_bytes(cap(&c, "n"), cap(&c, "unit")) {
                    e = e.with("file_size_bytes", bytes);
                }
                if let Some(bpw) = c.name("bpw") {
                    e = e.with("bpw", num(bpw.as_str()));
                }
                ev.push(e);
                return true;
            }
        }
        if let Some(c) = when(b.contains("offloaded"), &OFFLOADED, b) {
            ev.push(
                model_load(
                    "offload",
                    format!(
                        "offloaded {}/{} layers to GPU",
                        cap(&c, "n"),
                        cap(&c, "total")
                    ),
                )
                .with("offloaded_layers", num(cap(&c, "n")))
                .with("total_layers", num(cap(&c, "total"))),
            );
            return true;
        }
        if let Some(c) = when(b.contains("buffer size"), &BUFFER, b) {
            let buffer = match c.name("kind").map(|m| m.as_str()) {
                Some(k) => k,
                None if l.func.contains("load_tensors") => "model",
                None => "other",
            };
            let device = cap(&c, "dev");
            ev.push(
                model_load(
                    "buffer",
                    format!("{device} {buffer} buffer: {} MiB", cap(&c, "size")),
                )
                .with("device", device)
                .with("buffer", buffer)
                .with("size_mib", num(cap(&c, "size"))),
            );
            return true;
        }
        false
    }
}

// -------------------------------------------------------------------- line shapes

/// One line, split into what every llama.cpp log format has in common.
struct Line<'a> {
    /// From the `M.SS.mmm.uuu L ` prefix or the JSON `level`; `None` for unprefixed lines.
    level: Option<Level>,
    /// The whole message, prefix removed.
    text: &'a str,
    /// The printing function (`load_tensors`, `print_timing`, ...), or "".
    func: &'a str,
    /// The message after the function name and the `id N | task M |` slot columns.
    body: &'a str,
    slot: Option<i64>,
    task: Option<i64>,
    /// Extra fields of a structured (JSON or `key=value`) log line.
    ext: Option<&'a Ext>,
}

impl<'a> Line<'a> {
    fn parse(text: &'a str, level: Option<Level>) -> Self {
        let mut line = Line {
            level,
            text,
            func: "",
            body: text,
            slot: None,
            task: None,
            ext: None,
        };
        let rest = strip_tag(text).unwrap_or(text);
        if let Some((func, body)) = split_func(rest) {
            line.func = func;
            line.body = body;
            if let Some((slot, task, after)) = split_slot(body) {
                line.slot = Some(slot);
                line.task = Some(task);
                line.body = after;
            }
        }
        line
    }
}

/// Removes the `srv  `/`slot `/... column of `common/log.cpp` lines.
fn strip_tag(text: &str) -> Option<&str> {
    const TAGS: [&str; 7] = ["srv", "slot", "cmn", "que", "res", "mtmd", "spec"];
    let (word, rest) = text.split_once(' ')?;
    if TAGS.contains(&word) {
        Some(rest.trim_start())
    } else {
        None
    }
}

/// `func: rest` where func is an identifier-like C function name (`operator()` included).
fn split_func(text: &str) -> Option<(&str, &str)> {
    let colon = text.find(':')?;
    let func = &text[..colon];
    let after = &text[colon + 1..];
    let ok = !func.is_empty()
        && func.len() <= 64
        && func
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'(' | b')' | b'~'))
        && (after.is_empty() || after.starts_with(' '));
    ok.then(|| (func, after.trim()))
}

/// `id  3 | task 0 | rest` (server slot lines since 2024-09).
fn split_slot(body: &str) -> Option<(i64, i64, &str)> {
    let r = body.strip_prefix("id")?.trim_start();
    let (slot, r) = leading_int(r)?;
    let r = r.trim_start().strip_prefix('|')?.trim_start();
    let r = r.strip_prefix("task")?.trim_start();
    let (task, r) = leading_int(r)?;
    let r = r.trim_start().strip_prefix('|')?;
    Some((slot, task, r.trim()))
}

fn leading_int(s: &str) -> Option<(i64, &str)> {
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(s.len(), |(i, _)| i);
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// `0.07.476.132 I ` (time since start, level letter) from `common/log.cpp`; the level letter
/// alone when timestamps are off.
fn split_prefix(s: &str) -> (Option<Level>, &str) {
    let b = s.as_bytes();
    let start = timestamp_len(b).unwrap_or(0);
    if b.len() >= start + 2 && b[start + 1] == b' ' {
        let level = match b[start] {
            b'I' => Some(Level::Info),
            b'W' => Some(Level::Warning),
            b'E' => Some(Level::Error),
            b'D' | b'T' => Some(Level::Debug),
            _ => None,
        };
        if let Some(level) = level {
            let rest = &s[start + 2..];
            // Without a timestamp, "I " is only a prefix if a log line follows it.
            let trimmed = rest.trim_start();
            if start > 0 || strip_tag(trimmed).is_some() || split_func(trimmed).is_some() {
                return (Some(level), rest);
            }
        }
    }
    (None, &s[start..])
}

/// Length of `M.SS.mmm.uuu ` (minutes may have any number of digits), if `b` starts with one.
fn timestamp_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize| {
        b[from.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut i = 0;
    let n = digits(i);
    if n == 0 {
        return None;
    }
    i += n;
    for width in [2, 3, 3] {
        if b.get(i) != Some(&b'.') || digits(i + 1) != width {
            return None;
        }
        i += 1 + width;
    }
    (b.get(i) == Some(&b' ')).then_some(i + 1)
}

/// Removes ANSI escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL`, two-byte escapes)
/// and other control characters, so that messages are plain text.
fn strip_ansi(s: &str) -> Cow<'_, str> {
    // Branch-free so that it vectorises: `any()` stops early and costs ten times more here.
    let dirty = s
        .as_bytes()
        .iter()
        .fold(false, |d, &c| d | ((c < 0x20) & (c != b'\t')) | (c == 0x7f));
    if !dirty {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            }
        } else if c == '\t' || !(c.is_control()) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Extra fields of the 2023-2024 structured server logs.
#[derive(Debug, Default)]
struct Ext {
    host: Option<String>,
    port: Option<u16>,
    http_threads: Option<i64>,
    model: Option<String>,
}

struct Structured {
    level: Option<Level>,
    func: String,
    msg: String,
    slot: Option<i64>,
    task: Option<i64>,
    ext: Ext,
}

/// JSON objects (`{"level":"INFO","function":"main","msg":"..."}`, 2023-2024 default) and the
/// `--log-format text` shape (`INFO [ main] msg | tid="1" hostname="127.0.0.1"`).
fn parse_structured(text: &str) -> Option<Structured> {
    if text.starts_with('{') {
        if !text.contains("\"level\"") {
            return None;
        }
        let obj: Map<String, Value> = serde_json::from_str(text).ok()?;
        let msg = obj
            .get("msg")
            .or_else(|| obj.get("message"))?
            .as_str()?
            .to_string();
        let get = |k: &str| obj.get(k).cloned();
        return Some(structured(
            obj.get("level").and_then(Value::as_str),
            obj.get("function").and_then(Value::as_str).unwrap_or(""),
            msg,
            get,
        ));
    }
    let first = text.as_bytes().first()?;
    if !matches!(first, b'I' | b'W' | b'E' | b'V' | b'D') {
        return None;
    }
    let c = when(text.contains('['), &TEXT_LOG, text)?;
    let rest = cap(&c, "rest");
    let (msg, fields) = match rest.find(" | tid=") {
        Some(i) => (&rest[..i], &rest[i + 3..]),
        None => (rest, ""),
    };
    let pairs: Vec<(String, Value)> = TEXT_FIELD
        .captures_iter(fields)
        .map(|f| {
            let v = cap(&f, "v");
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (cap(&f, "k").to_string(), Value::from(v))
        })
        .collect();
    let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
    Some(structured(
        Some(cap(&c, "level")),
        cap(&c, "func").trim(),
        msg.to_string(),
        get,
    ))
}

fn structured(
    level: Option<&str>,
    func: &str,
    msg: String,
    get: impl Fn(&str) -> Option<Value>,
) -> Structured {
    let level = match level {
        Some("ERR" | "ERROR") => Some(Level::Error),
        Some("WARN" | "WARNING") => Some(Level::Warning),
        Some("INFO") => Some(Level::Info),
        Some("VERB" | "VERBOSE" | "DEBUG") => Some(Level::Debug),
        _ => None,
    };
    let int = |keys: [&str; 2]| keys.iter().find_map(|k| get(k).and_then(|v| value_i64(&v)));
    let string = |k: &str| {
        get(k).and_then(|v| match v {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    Structured {
        level,
        func: func.to_string(),
        // JSON strings may carry escaped control characters.
        msg: strip_ansi(&msg).into_owned(),
        slot: int(["id_slot", "slot_id"]),
        task: int(["id_task", "task_id"]),
        ext: Ext {
            host: string("hostname"),
            port: string("port").and_then(|p| port_of(&p)),
            http_threads: int(["n_threads_http", "http_threads"]),
            model: string("model").or_else(|| string("path")),
        },
    }
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// -------------------------------------------------------------------- small facts

/// Process start-up lines: a fresh process may announce the same address again.
fn is_process_start(l: &Line<'_>) -> bool {
    let b = l.body;
    b == "initializing ..."
        || b == "build info"
        || l.text.starts_with("build:")
        || (l.func == "main" && b.starts_with("build ="))
        || l.text.starts_with("system info:")
        || l.text.starts_with("system_info:")
}

fn progress(l: &Line<'_>) -> Option<EventKind> {
    let b = l.body;
    let phase = if b.starts_with("n_gen") {
        "generation"
    } else if b.starts_with("prompt processing") {
        "prompt"
    } else {
        return None;
    };
    let mut e = EventKind::new(
        Component::Coordinator,
        Level::Info,
        EventType::Metrics,
        clean_message(b),
    )
    .with("kind", "progress")
    .with("phase", phase)
    .with("slot", opt_int(l.slot))
    .with("task_id", opt_int(l.task));
    let mut any = false;
    for c in NUM_FIELD.captures_iter(b) {
        e.details
            .insert(cap(&c, "k").replace('.', "_"), num(cap(&c, "v")));
        any = true;
    }
    if !any {
        return None;
    }
    if let Some(c) = TOKENS_PER_SECOND.captures(b) {
        e.details
            .insert("tokens_per_second".into(), num(cap(&c, "v")));
    }
    if b.starts_with("prompt processing done") {
        e.details.insert("done".into(), true.into());
    }
    Some(e)
}

fn stop_line(l: &Line<'_>) -> Option<EventKind> {
    let b = l.body;
    if b.contains("cleaning up before exit") {
        return Some(EventKind::new(
            Component::Coordinator,
            Level::Info,
            EventType::Stop,
            "cleaning up before exit",
        ));
    }
    if b.contains("terminating immediately") {
        return Some(EventKind::new(
            Component::Coordinator,
            Level::Warning,
            EventType::Stop,
            clean_message(b),
        ));
    }
    None
}

fn coordinator_status(l: &Line<'_>) -> Option<EventKind> {
    let b = l.body;
    if let Some(c) = when(b.starts_with("initializing"), &SLOTS, b) {
        let mut e = EventKind::new(
            Component::Coordinator,
            Level::Info,
            EventType::Status,
            format!("initializing slots, n_slots = {}", cap(&c, "n")),
        )
        .with("n_slots", num(cap(&c, "n")));
        if let Some(ctx) = c.name("ctx") {
            e = e.with("n_ctx_slot", num(ctx.as_str()));
        }
        return Some(e);
    }
    let warning = |msg: &str| {
        EventKind::new(
            Component::Coordinator,
            Level::Warning,
            EventType::Status,
            clean_message(msg),
        )
        .with("slot", opt_int(l.slot))
        .with("task_id", opt_int(l.task))
    };
    if b.contains("failed to find free space in the KV cache") {
        return Some(warning(b));
    }
    if b.contains("context shift")
        && (l.level == Some(Level::Warning) || b.starts_with("slot context shift"))
    {
        return Some(warning(b));
    }
    None
}

/// CUDA and device discovery, printed by both programs.
fn system_status(l: &Line<'_>) -> Option<EventKind> {
    let status = |msg: &str| {
        EventKind::new(
            Component::System,
            Level::Info,
            EventType::Status,
            clean_message(msg),
        )
    };
    if GPU_INIT_FUNCS.contains(&l.func) {
        if let Some(c) = FOUND_DEVICES.captures(l.body) {
            return Some(
                status(l.body)
                    .with("backend", cap(&c, "be"))
                    .with("device_count", num(cap(&c, "n"))),
            );
        }
    }
    if let Some(c) = when(l.text.starts_with("Device "), &GPU_DEVICE, l.text) {
        return Some(
            status(l.text)
                .with("device_index", num(cap(&c, "i")))
                .with("name", cap(&c, "name"))
                .with("compute_capability", cap(&c, "cc"))
                .with("vmm", cap(&c, "vmm") == "yes"),
        );
    }
    if let Some(c) = when(l.body.starts_with("using device"), &USING_DEVICE, l.body) {
        let device = cap(&c, "dev");
        let component = if device.starts_with("RPC") {
            Component::RpcBackend
        } else {
            Component::System
        };
        return Some(
            EventKind::new(
                component,
                Level::Info,
                EventType::Status,
                clean_message(l.body),
            )
            .with("device", device)
            .with("description", cap(&c, "desc"))
            .with("free_mib", num(cap(&c, "free"))),
        );
    }
    None
}

fn rpc_endpoint(text: &str) -> Option<&str> {
    let c = when(text.starts_with("endpoint"), &RPC_ENDPOINT, text)?;
    Some(c.name("ep")?.as_str())
}

fn rpc_device(text: &str) -> Option<EventKind> {
    let c = when(text.ends_with("free)"), &RPC_DEVICE, text)?;
    Some(
        EventKind::new(
            Component::RpcBackend,
            Level::Info,
            EventType::Status,
            format!(
                "rpc-server device {}: {} ({} MiB, {} MiB free)",
                cap(&c, "dev"),
                cap(&c, "desc"),
                cap(&c, "total"),
                cap(&c, "free")
            ),
        )
        .with("device", cap(&c, "dev"))
        .with("description", cap(&c, "desc"))
        .with("memory_mib", num(cap(&c, "total")))
        .with("free_mib", num(cap(&c, "free"))),
    )
}

/// The rpc-server start block, from `Starting RPC server vX` to its `endpoint` line.
#[derive(Debug, Default)]
struct RpcStart {
    version: Option<String>,
}

impl RpcStart {
    fn event(&self, endpoint: Option<&str>) -> EventKind {
        let mut message = String::from("rpc-server started");
        if let Some(v) = &self.version {
            message.push_str(&format!(" (protocol v{v})"));
        }
        if let Some(ep) = endpoint {
            message.push_str(&format!(" on {ep}"));
        }
        let mut e = EventKind::new(
            Component::RpcBackend,
            Level::Info,
            EventType::Start,
            clean_message(&message),
        );
        if let Some(v) = &self.version {
            e = e.with("version", v.as_str());
        }
        if let Some(ep) = endpoint {
            let (host, port) = split_host_port(ep);
            e = e.with("endpoint", ep).with("host", host);
            if let Some(p) = port {
                e = e.with("port", p);
            }
        }
        e
    }
}

/// One request's timing figures (or, for `llama_print_timings`/`llama_perf_context_print`, the
/// whole context's).
#[derive(Debug)]
struct Timing {
    kind: &'static str,
    slot: Option<i64>,
    task: Option<i64>,
    prompt: Option<Rate>,
    eval: Option<Rate>,
    load_ms: Option<Value>,
    sample_ms: Option<Value>,
    total_ms: Option<Value>,
    total_tokens: Option<Value>,
}

#[derive(Debug)]
struct Rate {
    ms: Value,
    tokens: Value,
    ms_per_token: Value,
    tokens_per_second: Value,
}

impl Rate {
    fn from_caps(c: &Captures<'_>) -> Rate {
        let get = |name| c.name(name).map_or(Value::Null, |m| num(m.as_str()));
        Rate {
            ms: get("ms"),
            tokens: get("n"),
            ms_per_token: get("mspt"),
            tokens_per_second: get("tps"),
        }
    }
}

impl Timing {
    fn new(kind: &'static str, slot: Option<i64>, task: Option<i64>) -> Timing {
        Timing {
            kind,
            slot,
            task,
            prompt: None,
            eval: None,
            load_ms: None,
            sample_ms: None,
            total_ms: None,
            total_tokens: None,
        }
    }

    /// Whether a figure line belongs to this block: unprefixed continuation lines carry no
    /// slot, prefixed ones must name the same slot and task.
    fn accepts(&self, l: &Line<'_>, kind: Option<&str>) -> bool {
        let same_request =
            (l.slot.is_none() && l.task.is_none()) || (l.slot == self.slot && l.task == self.task);
        same_request && (kind.is_none() || kind == Some(self.kind))
    }

    fn event(self, complete: bool) -> EventKind {
        let null = || Value::Null;
        let (p_ms, p_n, p_mspt, p_tps) = match self.prompt {
            Some(r) => (r.ms, r.tokens, r.ms_per_token, r.tokens_per_second),
            None => (null(), null(), null(), null()),
        };
        let (e_ms, e_n, e_mspt, e_tps) = match self.eval {
            Some(r) => (r.ms, r.tokens, r.ms_per_token, r.tokens_per_second),
            None => (null(), null(), null(), null()),
        };
        // Before 2024-09 the total line had no token count: it is the sum of the other two.
        let total_tokens = match self.total_tokens {
            Some(v) if !v.is_null() => v,
            _ => match (p_n.as_i64(), e_n.as_i64()) {
                (Some(a), Some(b)) => a.checked_add(b).map_or(Value::Null, Value::from),
                _ => Value::Null,
            },
        };
        let total_ms = self.total_ms.unwrap_or(Value::Null);

        let show = |v: &Value| match v {
            Value::Null => "?".to_string(),
            v => v.to_string(),
        };
        let mut message = match (self.kind, self.slot, self.task) {
            ("request", Some(s), Some(t)) => format!("request done (slot {s}, task {t}):"),
            ("request", _, _) => "request done:".to_string(),
            _ => "context timings:".to_string(),
        };
        if !p_n.is_null() || !p_ms.is_null() {
            message.push_str(&format!(
                " prompt {} tokens in {} ms,",
                show(&p_n),
                show(&p_ms)
            ));
        }
        if !e_n.is_null() || !e_ms.is_null() {
            message.push_str(&format!(
                " generated {} tokens in {} ms ({} tokens/s),",
                show(&e_n),
                show(&e_ms),
                show(&e_tps)
            ));
        }
        message.push_str(&format!(" total {} ms", show(&total_ms)));
        if !complete {
            message.push_str(" (incomplete)");
        }

        let mut e = EventKind::new(
            Component::Coordinator,
            Level::Info,
            EventType::Metrics,
            message,
        )
        .with("kind", self.kind)
        .with("slot", opt_int(self.slot))
        .with("task_id", opt_int(self.task))
        .with("prompt_tokens", p_n)
        .with("prompt_ms", p_ms)
        .with("prompt_ms_per_token", p_mspt)
        .with("prompt_tokens_per_second", p_tps)
        .with("eval_tokens", e_n)
        .with("eval_ms", e_ms)
        .with("eval_ms_per_token", e_mspt)
        .with("eval_tokens_per_second", e_tps)
        .with("total_ms", total_ms)
        .with("total_tokens", total_tokens)
        .with("complete", complete);
        if let Some(v) = self.load_ms {
            e = e.with("load_ms", v);
        }
        if let Some(v) = self.sample_ms {
            e = e.with("sample_ms", v);
        }
        e
    }
}

/// `llama_print_timings`/`llama_perf_context_print` sum up a whole context, not one request.
fn timing_kind(func: &str) -> Option<&'static str> {
    match func {
        "" => None,
        "llama_print_timings" | "llama_perf_context_print" | "common_perf_print" => Some("summary"),
        _ => Some("request"),
    }
}

// -------------------------------------------------------------------- helpers

/// Runs a capturing regex only when a cheap test says it can match: most lines that pass
/// `TRIGGERS` still match none of the rules, and each regex call has a fixed cost.
fn when<'t>(guard: bool, re: &Regex, text: &'t str) -> Option<Captures<'t>> {
    if guard {
        re.captures(text)
    } else {
        None
    }
}

/// `file.cpp:123:` as the first word: what GGML_ABORT and GGML_ASSERT print.
fn looks_like_source_site(text: &str) -> bool {
    text.split(' ')
        .next()
        .is_some_and(|w| w.ends_with(':') && w.contains('.'))
}

fn cap<'t>(c: &Captures<'t>, name: &str) -> &'t str {
    c.name(name).map_or("", |m| m.as_str())
}

/// A number as printed (`%d`, `%.2f`, `inf`, `nan`, or too big for an integer): JSON null when
/// it is not a finite number.
fn num(s: &str) -> Value {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(u) = s.parse::<u64>() {
        return Value::from(u);
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::Null,
    }
}

fn opt_int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::from)
}

fn port_of(s: &str) -> Option<u16> {
    s.trim().parse().ok()
}

/// `host:port`, `[::1]:port` or a bare host.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => match port_of(p) {
            Some(port) => (h.trim_start_matches('[').trim_end_matches(']'), Some(port)),
            None => (s, None),
        },
        _ => (s, None),
    }
}

fn size_bytes(n: &str, unit: &str) -> Option<u64> {
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    let bytes = (n * scale).round();
    (0.0..1.8e19).contains(&bytes).then_some(bytes as u64)
}

/// The model file a model error names: a quoted path, or the word after `from`.
fn model_path(body: &str) -> Option<&str> {
    let looks_like_path = |p: &str| {
        !p.is_empty()
            && (p.contains('/') || p.contains('\\') || p.ends_with(".gguf") || p.ends_with(".bin"))
    };
    let mut rest = body;
    while let Some(open) = rest.find('\'') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('\'') else {
            break;
        };
        let candidate = &after[..close];
        if looks_like_path(candidate) {
            return Some(candidate);
        }
        rest = &after[close + 1..];
    }
    let from = body.rfind(" from ")?;
    let candidate = body[from + 6..].split_whitespace().next()?;
    let candidate = candidate.trim_end_matches([',', '.', ':', ';']);
    looks_like_path(candidate).then_some(candidate)
}

fn is_model_func(func: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "gguf_",
        "llama_model_load",
        "llama_load_model",
        "llama_model_loader",
        "llm_load",
        "load_tensors",
        "load_model",
        "common_init",
        "llama_init_from",
    ];
    PREFIXES.iter().any(|p| func.starts_with(p))
}

fn stage(e: &EventKind) -> Option<&str> {
    e.details.get("stage").and_then(Value::as_str)
}

/// Messages are plain, single-line text without a trailing colon (`found 1 CUDA devices:`).
fn clean_message(s: &str) -> String {
    let s = s.trim();
    s.strip_suffix(':').unwrap_or(s).trim_end().to_string()
}

// -------------------------------------------------------------------- patterns

/// Substrings at least one of which every line that can produce an event contains (lines logged
/// at error level, and lines inside an open block, skip this check). One pass over the line with
/// a multi-literal searcher instead of a contains() per phrase.
const TRIGGER_WORDS: &[&str] = &[
    // timings and progress
    "eval time",
    "total time",
    "load time",
    "sample time",
    "print_timing",
    "n_gen",
    "prompt processing",
    // llama-server life
    "listening",
    "loading model",
    "model loaded",
    "cleaning up",
    "terminat",
    "n_slots",
    "KV cache",
    "context shift",
    "initializing",
    "build",
    "system info",
    "system_info",
    // model loader
    "meta data",
    "format",
    "file type",
    "ftype",
    "file size",
    "model size",
    "offloaded",
    "buffer size",
    // errors
    "rror",
    "ERR",
    "ailed",
    "ASSERT",
    "out of memory",
    "couldn't bind",
    "exiting",
    "nvalid",
    "corrupt",
    "unable",
    "nknown",
    "mismatch",
    "HELLO",
    "No devices",
    ".c:",
    ".cc:",
    ".cpp:",
    ".cu:",
    ".h:",
    ".hpp:",
    ".m:",
    // rpc-server and devices
    "RPC",
    "endpoint",
    "Devices:",
    "MiB free",
    "lient connection",
    "backend memory",
    "create_backend",
    "WARNING: Host",
    "devices:",
    "Device ",
];

static TRIGGERS: LazyLock<Regex> = LazyLock::new(|| {
    let alternatives: Vec<String> = TRIGGER_WORDS.iter().map(|w| regex::escape(w)).collect();
    Regex::new(&alternatives.join("|")).expect("trigger words form a valid regex")
});

macro_rules! patterns {
    ($($(#[$doc:meta])* $name:ident = $re:expr;)*) => {
        $(
            $(#[$doc])*
            static $name: LazyLock<Regex> =
                LazyLock::new(|| Regex::new($re).expect(concat!("valid regex ", stringify!($name))));
        )*
    };
}

const MODEL_ERRORS: &[&str] = &[
    "failed to load model",
    "error loading model",
    "unable to load model",
    "failed to open GGUF file",
    "invalid magic",
    "model is corrupted",
    "corrupted or incomplete",
    "unknown model architecture",
    "failed to create context",
    "failed to create_context",
    "failed to initialize the context",
    "not within the file bounds",
    "wrong number of tensors",
    "failed to load draft model",
];

const RPC_SERVER_ERRORS: &[&str] = &[
    "client needs upgrade",
    "Expected HELLO command",
    "Failed to create server socket",
    "Failed to accept client connection",
    "Failed to create backend",
    "Failed to create cache directory",
    "Failed to find RPC backend",
    "Failed to obtain RPC backend",
    "Failed to initialize RPC transport",
    "No devices found",
    "Unknown command",
    "Failed to allocate input buffer",
];

const GPU_INIT_FUNCS: &[&str] = &["ggml_cuda_init", "ggml_init_cublas"];

patterns! {
    /// `prompt eval time = 1.26 ms / 6 tokens (0.21 ms per token, 4758.13 tokens per second)`,
    /// `generation eval time = ... / 50 runs (...)`, `total time = 36.22 ms / 126 tokens`.
    TIMING = r"^(?P<what>prompt eval|generation eval|eval|load|sample|total) time\s*=\s*(?P<ms>\S+)\s*ms(?:\s*/\s*(?P<n>[-\d]+)\s*(?:tokens|runs))?(?:\s*\(\s*(?P<mspt>\S+)\s*ms per token(?:,\s*(?P<tps>\S+)\s*tokens per second)?)?";
    /// `key = number` pairs of progress lines (`n_gen =    100`, `batch.n_tokens = 512`).
    NUM_FIELD = r"(?P<k>[A-Za-z_][\w.]*)\s*=\s*(?P<v>-?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|inf|nan))\b";
    TOKENS_PER_SECOND = r"(?P<v>[\d.]+)\s*tokens per second";
    /// `HTTP server is listening, hostname: 127.0.0.1, port: 8080, http threads: 7` (2024-25).
    HTTP_LISTENING = r"HTTP server is listening, hostname: (?P<host>[^,\s]+), port: (?P<port>\d+)(?:, http threads: (?P<threads>\d+))?";
    /// `listening on http://127.0.0.1:18134`, `listening at http://...`, `listening on 127.0.0.1:8080 - ...`.
    LISTENING_URL = r"listening (?:on|at) (?P<url>\S+)";
    BIND_ADDR = r"hostname[:=]\s*(?P<host>[^,\s]+),?\s*port[:=]\s*(?P<port>\d+)";
    LOADING = r"^loading model(?: from)? '(?P<path>[^']*)'";
    /// `loaded meta data with 22 key-value pairs and 291 tensors from /m.gguf (version GGUF V3 (latest))`.
    METADATA = r"loaded meta data with (?P<kv>\d+) key-value pairs and (?P<tensors>\d+) tensors from (?P<path>.+?)(?: \(version (?P<version>.+)\))?$";
    FILE_FORMAT = r"^(?:file )?format\s*=\s*(?P<v>.+?)\s*$";
    GGUF_VERSION = r"GGUF V(?P<n>\d+)";
    FILE_TYPE = r"^(?:file type|model ftype)\s*=\s*(?P<v>.+?)\s*$";
    FILE_SIZE = r"^(?:file|model) size\s*=\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B|B)\b(?:\s*\(\s*(?P<bpw>\d+(?:\.\d+)?)\s*BPW\s*\))?";
    OFFLOADED = r"offloaded (?P<n>\d+)/(?P<total>\d+) layers to GPU";
    /// `CUDA0 model buffer size = 3992.51 MiB`, `RPC[10.0.0.2:50052] model buffer size = ...`,
    /// `CPU buffer size = 70.31 MiB` (2024), `CUDA0 KV buffer size`, `CUDA_Host compute buffer size`.
    BUFFER = r"^(?P<dev>\S+?)\s+(?:(?P<kind>model|KV|compute|output|input|RS)\s+)?buffer size\s*=\s*(?P<size>\d+(?:\.\d+)?)\s*MiB";
    SLOTS = r"^initializing(?: slots)?, n_slots = (?P<n>\d+)(?:, n_ctx_slot = (?P<ctx>\d+))?";
    /// GGML_ABORT and, since 2024-07, GGML_ASSERT: `/src/ggml-cuda.cu:70: CUDA error`.
    ABORT = r"^(?P<file>\S+?\.(?:c|cc|cpp|cxx|cu|cuh|h|hpp|m|mm)):(?P<line>\d+): (?P<msg>.*)$";
    ASSERT_NEW = r"^GGML_ASSERT\((?P<cond>.*)\) failed";
    /// Before 2024-07: `GGML_ASSERT: /src/ggml.c:1234: cond`.
    ASSERT_OLD = r"^GGML_ASSERT: (?P<file>.+?):(?P<line>\d+): (?P<cond>.*)$";
    GPU_ERROR = r"^(?P<be>CUDA|ROCm|MUSA|HIP|SYCL|CANN|Vulkan|Metal) error: (?P<err>.+)$";
    /// `ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1189.40 MiB on device 3: cudaMalloc failed: out of memory`.
    DEVICE_ALLOC_FAIL = r"allocating (?P<mib>\d+(?:\.\d+)?) MiB on device (?P<dev>\d+): \w+ failed: (?P<err>.+)$";
    ALLOC_FAIL = r"failed to allocate (?P<buf>\S+) buffer of size (?P<size>\d+)";
    TERMINATE = r"^terminate called (?:after throwing an instance of '(?P<ty>[^']*)'|without an active exception)";
    RPC_MISMATCH = r"RPC server version mismatch(?::\s*(?P<v>\d+\.\d+\.\d+))?";
    RPC_CONNECT_FAIL = r"(?:Failed to connect to|RPC handshake failed for) (?P<addr>\S+)";
    RPC_START_OLD = r"^ on (?P<ep>\S+), backend memory: (?P<mem>\d+) MB";
    VERSION = r"^ v(?P<v>\d+\.\d+\.\d+)";
    RPC_ENDPOINT = r"^endpoint\s*: (?P<ep>\S+)$";
    RPC_BACKEND_MEM = r"^backend memory\s*: (?P<mem>\d+) MB$";
    RPC_DEVICE = r"^(?P<dev>[^:\s]+): (?P<desc>.*) \((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)$";
    RPC_ACCEPT_MEM = r"free_mem=(?P<free>\d+), total_mem=(?P<total>\d+)";
    RPC_USING_BACKEND = r"^using (?P<b>\S+) backend$";
    RPC_HOST_WARNING = r"^WARNING: Host \('(?P<host>[^']*)'\) is != '127\.0\.0\.1'";
    FOUND_DEVICES = r"^found (?P<n>\d+) (?P<be>\w+) devices";
    GPU_DEVICE = r"^Device (?P<i>\d+): (?P<name>.+?), compute capability (?P<cc>\d+\.\d+), VMM: (?P<vmm>yes|no)";
    USING_DEVICE = r"^using device (?P<dev>\S+) \((?P<desc>.*)\) - (?P<free>\d+) MiB free";
    TEXT_LOG = r"^(?P<level>INFO|WARN|WARNING|ERR|ERROR|VERB|DEBUG)\s+\[\s*(?P<func>[^\]]*)\]\s?(?P<rest>.*)$";
    TEXT_FIELD = r#"(?P<k>\w+)=(?P<v>"(?:[^"\\]|\\.)*"|\S*)"#;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `component/event_type/level key=value ...`, details sorted by key, strings unquoted.
    fn summary(e: &EventKind) -> String {
        let mut s = format!("{}/{}/{}", e.component, e.event_type, e.level);
        for (k, v) in &e.details {
            match v {
                Value::String(text) => s.push_str(&format!(" {k}={text}")),
                v => s.push_str(&format!(" {k}={v}")),
            }
        }
        s
    }

    fn run(kind: ParserKind, lines: &[&str]) -> Vec<String> {
        let mut p = LogParser::new(kind);
        let mut out: Vec<String> = Vec::new();
        for l in lines {
            out.extend(p.feed(l).iter().map(summary));
        }
        out.extend(p.finish().iter().map(summary));
        out
    }

    /// One line alone: its events, including any it leaves open until the end.
    fn one(line: &str) -> Vec<String> {
        run(ParserKind::Auto, &[line])
    }

    #[test]
    fn single_lines() {
        let table: &[(&str, &[&str])] = &[
            // ---- model loading, every era
            (
                "0.00.010.243 I srv    load_model: loading model 'tiny.gguf'",
                &["model/model_load/info path=tiny.gguf stage=loading"],
            ),
            (
                "llama_model_loader: loaded meta data with 22 key-value pairs and 291 tensors from /models/llama-2-7b.Q4_K_M.gguf (version GGUF V3 (latest))",
                &["model/model_load/info kv_count=22 path=/models/llama-2-7b.Q4_K_M.gguf stage=metadata tensor_count=291 version=GGUF V3 (latest)"],
            ),
            (
                "llama_model_loader: loaded meta data with 19 key-value pairs and 291 tensors from models/7B/ggml-model-q4_0.gguf",
                &["model/model_load/info kv_count=19 path=models/7B/ggml-model-q4_0.gguf stage=metadata tensor_count=291"],
            ),
            (
                "print_info: file format = GGUF V3 (latest)",
                &["model/model_load/info format=GGUF V3 (latest) gguf_version=3 stage=file_format"],
            ),
            (
                "llm_load_print_meta: format           = GGUF V2",
                &["model/model_load/info format=GGUF V2 gguf_version=2 stage=file_format"],
            ),
            (
                "print_info: file type   = Q4_K - Medium",
                &["model/model_load/info file_type=Q4_K - Medium stage=file_type"],
            ),
            (
                "llm_load_print_meta: model ftype      = mostly Q4_0",
                &["model/model_load/info file_type=mostly Q4_0 stage=file_type"],
            ),
            (
                "print_info: file size   = 4.07 GiB (4.83 BPW) ",
                &["model/model_load/info bpw=4.83 file_size_bytes=4370129224 file_size_text=4.07 GiB stage=file_size"],
            ),
            (
                "llm_load_print_meta: model size       = 3.56 GiB (4.54 BPW) ",
                &["model/model_load/info bpw=4.54 file_size_bytes=3822520893 file_size_text=3.56 GiB stage=file_size"],
            ),
            (
                "print_info: file size   = 1.21 MiB (8.00 BPW) ",
                &["model/model_load/info bpw=8.0 file_size_bytes=1268777 file_size_text=1.21 MiB stage=file_size"],
            ),
            (
                "load_tensors: offloaded 33/33 layers to GPU",
                &["model/model_load/info offloaded_layers=33 stage=offload total_layers=33"],
            ),
            (
                "llm_load_tensors: offloaded 20/41 layers to GPU",
                &["model/model_load/info offloaded_layers=20 stage=offload total_layers=41"],
            ),
            (
                "load_tensors:        CUDA0 model buffer size =  3992.51 MiB",
                &["model/model_load/info buffer=model device=CUDA0 size_mib=3992.51 stage=buffer"],
            ),
            (
                "load_tensors: RPC[10.0.0.2:50052] model buffer size =  2048.00 MiB",
                &["model/model_load/info buffer=model device=RPC[10.0.0.2:50052] size_mib=2048.0 stage=buffer"],
            ),
            (
                "llm_load_tensors:      CUDA0 buffer size =  3577.56 MiB",
                &["model/model_load/info buffer=model device=CUDA0 size_mib=3577.56 stage=buffer"],
            ),
            (
                "llama_kv_cache_init:      CUDA0 KV buffer size =  1024.00 MiB",
                &["model/model_load/info buffer=KV device=CUDA0 size_mib=1024.0 stage=buffer"],
            ),
            (
                "llama_context:  CUDA_Host compute buffer size =    16.01 MiB",
                &["model/model_load/info buffer=compute device=CUDA_Host size_mib=16.01 stage=buffer"],
            ),
            (
                "0.00.284.911 I srv  llama_server: model loaded",
                &["model/model_load/info stage=loaded"],
            ),
            // ---- listening, every era
            (
                "0.00.284.963 I srv  llama_server: listening on http://127.0.0.1:18134",
                &["coordinator/start/info host=127.0.0.1 port=18134 url=http://127.0.0.1:18134"],
            ),
            (
                "main: server is listening on 127.0.0.1:8080 - starting the main loop",
                &["coordinator/start/info host=127.0.0.1 port=8080 url=127.0.0.1:8080"],
            ),
            (
                "main: server is listening on http://0.0.0.0:8080 - starting the main loop",
                &["coordinator/start/info host=0.0.0.0 port=8080 url=http://0.0.0.0:8080"],
            ),
            (
                "main: HTTP server is listening, hostname: 127.0.0.1, port: 8080, http threads: 7",
                &["coordinator/start/info host=127.0.0.1 http_threads=7 port=8080"],
            ),
            (
                "srv  llama_server: server is listening on http://[::1]:8081",
                &["coordinator/start/info host=::1 port=8081 url=http://[::1]:8081"],
            ),
            (
                "llama server listening at http://127.0.0.1:8080",
                &["coordinator/start/info host=127.0.0.1 port=8080 url=http://127.0.0.1:8080"],
            ),
            (
                r#"{"timestamp":1700000000,"level":"INFO","function":"main","line":2700,"message":"HTTP server listening","hostname":"127.0.0.1","port":8080}"#,
                &["coordinator/start/info host=127.0.0.1 port=8080"],
            ),
            (
                r#"INFO [                    main] HTTP server listening | tid="140" timestamp=1712345678 hostname="0.0.0.0" port="8081" n_threads_http="7""#,
                &["coordinator/start/info host=0.0.0.0 http_threads=7 port=8081"],
            ),
            // ---- stop
            (
                "0.13.832.252 I srv    operator(): operator(): cleaning up before exit...",
                &["coordinator/stop/info"],
            ),
            (
                "Received second interrupt, terminating immediately.",
                &["coordinator/stop/warning"],
            ),
            // ---- errors
            (
                "0.00.005.939 E gguf_init_from_file: failed to open GGUF file '/nonexistent/model.gguf' (No such file or directory)",
                &["model/error/error path=/nonexistent/model.gguf"],
            ),
            (
                "llama_model_load: error loading model: llama_model_loader: failed to load model from /nonexistent/model.gguf",
                &["model/error/error path=/nonexistent/model.gguf"],
            ),
            (
                "llama_model_load_from_file_impl: failed to load model",
                &["model/error/error"],
            ),
            (
                "gguf_init_from_file_impl: invalid magic characters: 'lmao', expected 'GGUF'",
                &["model/error/error"],
            ),
            (
                "llama_model_load: error loading model: tensor 'blk.0.ffn_up.weight' data is not within the file bounds, model is corrupted or incomplete",
                &["model/error/error"],
            ),
            (
                r#"{"timestamp":1700000000,"level":"ERROR","function":"load_model","line":555,"message":"unable to load model","model":"/models/missing.gguf"}"#,
                &["model/error/error path=/models/missing.gguf"],
            ),
            (
                "0.00.006.889 E srv  llama_server: exiting due to model loading error",
                &["model/error/error exiting=true"],
            ),
            (
                "srv          main: exiting due to HTTP server error",
                &["coordinator/error/error exiting=true"],
            ),
            (
                "E srv          start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080",
                &["coordinator/error/error host=127.0.0.1 port=8080"],
            ),
            (
                "couldn't bind to server socket: hostname=0.0.0.0 port=8080",
                &["coordinator/error/error host=0.0.0.0 port=8080"],
            ),
            (
                "CUDA error: out of memory",
                &["system/error/critical backend=CUDA error=out of memory oom=true"],
            ),
            (
                "CUDA error: an illegal memory access was encountered",
                &["system/error/error backend=CUDA error=an illegal memory access was encountered oom=false"],
            ),
            (
                "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1189.40 MiB on device 3: cudaMalloc failed: out of memory",
                &["system/error/critical device=3 error=out of memory oom=true size_mib=1189.4"],
            ),
            (
                "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1247175168",
                &["system/error/error buffer=CUDA0 size_bytes=1247175168"],
            ),
            (
                "/home/user/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu:70: CUDA error",
                &["system/error/critical file=/home/user/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu line=70"],
            ),
            (
                "/src/llama.cpp/src/llama-context.cpp:1234: GGML_ASSERT(n_tokens_all <= cparams.n_batch) failed",
                &["system/error/critical assertion=n_tokens_all <= cparams.n_batch file=/src/llama.cpp/src/llama-context.cpp line=1234"],
            ),
            (
                "GGML_ASSERT: /src/llama.cpp/ggml.c:4567: ggml_nelements(a) == ne0*ne1",
                &["system/error/critical assertion=ggml_nelements(a) == ne0*ne1 file=/src/llama.cpp/ggml.c line=4567"],
            ),
            (
                "/src/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp:580: Remote RPC server crashed or returned malformed response",
                &["rpc_backend/error/critical file=/src/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp line=580"],
            ),
            (
                "/src/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp:123: GGML_ASSERT(status) failed",
                &["rpc_backend/error/critical assertion=status file=/src/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp line=123"],
            ),
            (
                "RPC server version mismatch: 2.0.0",
                &["rpc_backend/error/error server_version=2.0.0"],
            ),
            (
                "Failed to connect to 10.0.0.2:50052",
                &["rpc_backend/error/error addr=10.0.0.2:50052"],
            ),
            (
                "/src/ggml/src/ggml-rpc/ggml-rpc.cpp:418: Failed to connect to 10.0.0.2:50052",
                &["rpc_backend/error/critical addr=10.0.0.2:50052 file=/src/ggml/src/ggml-rpc/ggml-rpc.cpp line=418"],
            ),
            (
                "/src/tools/server/server-context.cpp:901: failed to load model '/m/x.gguf'",
                &["model/error/critical file=/src/tools/server/server-context.cpp line=901 path=/m/x.gguf"],
            ),
            (
                "HELLO request size mismatch (0 vs 1) — client needs upgrade to protocol v3.x",
                &["rpc_backend/error/error"],
            ),
            (
                "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
                &["system/error/error"],
            ),
            (
                "error: unknown argument: --bogus",
                &["coordinator/error/error"],
            ),
            (
                "0.01.000.000 E srv    operator(): got exception: {\"code\":500}",
                &["coordinator/error/error"],
            ),
            // ---- progress
            (
                "slot print_timing: id  0 | task 0 | n_gen =    100, tg =  45.32 t/s, tg_3s =  46.00 t/s",
                &["coordinator/metrics/info kind=progress n_gen=100 phase=generation slot=0 task_id=0 tg=45.32 tg_3s=46.0"],
            ),
            (
                "slot update_slots: id  3 | task 0 | prompt processing progress, n_tokens = 512, batch.n_tokens = 512, progress = 0.173677",
                &["coordinator/metrics/info batch_n_tokens=512 kind=progress n_tokens=512 phase=prompt progress=0.173677 slot=3 task_id=0"],
            ),
            (
                "slot print_timing: id  1 | task 7 | prompt processing, n_tokens =   4096, progress = 0.59, t =   3.21 s / 1276.00 tokens per second",
                &["coordinator/metrics/info kind=progress n_tokens=4096 phase=prompt progress=0.59 slot=1 t=3.21 task_id=7 tokens_per_second=1276.0"],
            ),
            (
                "slot update_slots: id  0 | task 0 | prompt processing done, n_tokens = 16, batch.n_tokens = 16",
                &["coordinator/metrics/info batch_n_tokens=16 done=true kind=progress n_tokens=16 phase=prompt slot=0 task_id=0"],
            ),
            // ---- status
            (
                "0.00.282.928 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 512, kv_unified = 'true'",
                &["coordinator/status/info n_ctx_slot=512 n_slots=4"],
            ),
            (
                "ggml_cuda_init: found 2 CUDA devices:",
                &["system/status/info backend=CUDA device_count=2"],
            ),
            (
                "  Device 0: NVIDIA GeForce RTX 4090, compute capability 8.9, VMM: yes",
                &["system/status/info compute_capability=8.9 device_index=0 name=NVIDIA GeForce RTX 4090 vmm=true"],
            ),
            (
                "llama_model_load_from_file_impl: using device RPC[10.0.0.2:50052] (10.0.0.2:50052) - 24105 MiB free",
                &["rpc_backend/status/info description=10.0.0.2:50052 device=RPC[10.0.0.2:50052] free_mib=24105"],
            ),
            (
                "W srv  update_slots: failed to find free space in the KV cache, retrying with smaller batch size, i = 0, n_batch = 512, ret = 1",
                &["coordinator/status/warning slot=null task_id=null"],
            ),
            // ---- rpc-server
            (
                "Accepted client connection, free_mem=25275826176, total_mem=25275826176",
                &["rpc_backend/connect/info free_mem=25275826176 total_mem=25275826176"],
            ),
            ("Accepted client connection", &["rpc_backend/connect/info"]),
            ("Client connection closed", &["rpc_backend/disconnect/info"]),
            (
                "Starting RPC server on 0.0.0.0:50052, backend memory: 24105 MB",
                &["rpc_backend/start/info endpoint=0.0.0.0:50052 host=0.0.0.0 memory_mib=24105 port=50052"],
            ),
            (
                "Starting RPC server v3.0.0",
                &["rpc_backend/start/info version=3.0.0"],
            ),
            (
                "create_backend: using CUDA backend",
                &["rpc_backend/status/info backend=CUDA"],
            ),
            (
                "WARNING: Host ('0.0.0.0') is != '127.0.0.1'",
                &["rpc_backend/status/warning host=0.0.0.0"],
            ),
            // ---- ANSI, \r, and lines that mean nothing
            (
                "\x1b[32m0.00.284.963 I \x1b[0msrv  llama_server: listening on http://127.0.0.1:9000\x1b[0m\r",
                &["coordinator/start/info host=127.0.0.1 port=9000 url=http://127.0.0.1:9000"],
            ),
            ("0.00.003.882 W srv  llama_server: security: no API key is set and CORS allows all origins (see https://github.com/ggml-org/llama.cpp/pull/25655)", &[]),
            ("0.07.439.640 I slot get_availabl: id  3 | task -1 | selected slot by LRU, t_last = -1", &[]),
            ("print_info: general.name     = failed-model-v2", &[]),
            ("llama_model_loader: - kv   0: general.architecture str = llama", &[]),
            ("", &[]),
            ("\r", &[]),
        ];
        let mut failures = Vec::new();
        for (line, want) in table {
            let got = one(line);
            if got != *want {
                failures.push(format!("{line:?}\n   got: {got:#?}\n  want: {want:#?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn new_one_line_timings_make_one_request_event() {
        let got = run(
            ParserKind::LlamaServer,
            &[
                "0.07.476.132 I slot print_timing: id  3 | task 0 | prompt eval time =       1.26 ms /     6 tokens (    0.21 ms per token,  4758.13 tokens per second)",
                "0.07.476.181 I slot print_timing: id  3 | task 0 |        eval time =      34.95 ms /   120 tokens (    0.29 ms per token,  3404.38 tokens per second)",
                "0.07.476.194 I slot print_timing: id  3 | task 0 |       total time =      36.22 ms /   126 tokens",
                "0.07.476.215 I slot print_timing: id  3 | task 0 |    graphs reused =        119",
            ],
        );
        assert_eq!(
            got,
            ["coordinator/metrics/info complete=true eval_ms=34.95 eval_ms_per_token=0.29 eval_tokens=120 eval_tokens_per_second=3404.38 kind=request prompt_ms=1.26 prompt_ms_per_token=0.21 prompt_tokens=6 prompt_tokens_per_second=4758.13 slot=3 task_id=0 total_ms=36.22 total_tokens=126"]
        );
    }

    #[test]
    fn header_then_unprefixed_lines_2024() {
        let got = run(
            ParserKind::Auto,
            &[
                "slot print_timing: id  0 | task 5 | ",
                "prompt eval time =      12.50 ms /    10 tokens (    1.25 ms per token,   800.00 tokens per second)",
                "       eval time =     400.00 ms /    50 tokens (    8.00 ms per token,   125.00 tokens per second)",
                "      total time =     412.50 ms /    60 tokens",
                "srv  update_slots: all slots are idle",
            ],
        );
        assert_eq!(
            got,
            ["coordinator/metrics/info complete=true eval_ms=400.0 eval_ms_per_token=8.0 eval_tokens=50 eval_tokens_per_second=125.0 kind=request prompt_ms=12.5 prompt_ms_per_token=1.25 prompt_tokens=10 prompt_tokens_per_second=800.0 slot=0 task_id=5 total_ms=412.5 total_tokens=60"]
        );
    }

    #[test]
    fn print_timings_2023_counts_runs_and_sums_total_tokens() {
        let got = run(
            ParserKind::LlamaServer,
            &[
                "print_timings: prompt eval time =     101.10 ms /     9 tokens (   11.23 ms per token,    89.02 tokens per second)",
                "print_timings:        eval time =    2048.00 ms /   128 runs   (   16.00 ms per token,    62.50 tokens per second)",
                "print_timings:       total time =    2149.10 ms",
            ],
        );
        assert_eq!(
            got,
            ["coordinator/metrics/info complete=true eval_ms=2048.0 eval_ms_per_token=16.0 eval_tokens=128 eval_tokens_per_second=62.5 kind=request prompt_ms=101.1 prompt_ms_per_token=11.23 prompt_tokens=9 prompt_tokens_per_second=89.02 slot=null task_id=null total_ms=2149.1 total_tokens=137"]
        );
    }

    #[test]
    fn json_timings_2024_use_id_slot_and_id_task() {
        let got = run(
            ParserKind::Auto,
            &[
                r#"{"tid":"1","timestamp":1,"level":"INFO","function":"print_timings","line":313,"msg":"prompt eval time     =      20.00 ms /     4 tokens (    5.00 ms per token,   200.00 tokens per second)","id_slot":1,"id_task":9,"t_prompt_processing":20.0,"n_prompt_tokens_processed":4,"t_token":5.0,"n_tokens_second":200.0}"#,
                r#"{"tid":"1","timestamp":1,"level":"INFO","function":"print_timings","line":327,"msg":"generation eval time =     100.00 ms /    10 runs   (   10.00 ms per token,   100.00 tokens per second)","id_slot":1,"id_task":9,"t_token_generation":100.0,"n_decoded":10,"t_token":10.0,"n_tokens_second":100.0}"#,
                r#"{"tid":"1","timestamp":1,"level":"INFO","function":"print_timings","line":337,"msg":"          total time =     120.00 ms","id_slot":1,"id_task":9,"t_prompt_processing":20.0,"t_token_generation":100.0,"t_total":120.0}"#,
            ],
        );
        assert_eq!(
            got,
            ["coordinator/metrics/info complete=true eval_ms=100.0 eval_ms_per_token=10.0 eval_tokens=10 eval_tokens_per_second=100.0 kind=request prompt_ms=20.0 prompt_ms_per_token=5.0 prompt_tokens=4 prompt_tokens_per_second=200.0 slot=1 task_id=9 total_ms=120.0 total_tokens=14"]
        );
    }

    #[test]
    fn an_incomplete_block_is_reported_when_the_next_starts_and_at_finish() {
        let got = run(
            ParserKind::Auto,
            &[
                "slot print_timing: id  1 | task 2 | prompt eval time =  1.00 ms /  1 tokens (  1.00 ms per token, 1000.00 tokens per second)",
                "slot print_timing: id  1 | task 3 | prompt eval time =  2.00 ms /  2 tokens (  1.00 ms per token, 1000.00 tokens per second)",
                "slot print_timing: id  1 | task 3 |        eval time = nan ms /     0 tokens (     inf ms per token,      nan tokens per second)",
            ],
        );
        assert_eq!(
            got,
            [
                "coordinator/metrics/info complete=false eval_ms=null eval_ms_per_token=null eval_tokens=null eval_tokens_per_second=null kind=request prompt_ms=1.0 prompt_ms_per_token=1.0 prompt_tokens=1 prompt_tokens_per_second=1000.0 slot=1 task_id=2 total_ms=null total_tokens=null",
                "coordinator/metrics/info complete=false eval_ms=null eval_ms_per_token=null eval_tokens=0 eval_tokens_per_second=null kind=request prompt_ms=2.0 prompt_ms_per_token=1.0 prompt_tokens=2 prompt_tokens_per_second=1000.0 slot=1 task_id=3 total_ms=null total_tokens=2",
            ]
        );
    }

    #[test]
    fn a_restart_closes_the_open_timing_block() {
        let got = run(
            ParserKind::Auto,
            &[
                "slot print_timing: id  0 | task 5 | ",
                "prompt eval time =      12.50 ms /    10 tokens (    1.25 ms per token,   800.00 tokens per second)",
                "build: 4100 (3952a221) with cc (GCC) 13.2.0 for x86_64-linux-gnu",
                "main: server is listening on http://127.0.0.1:8080 - starting the main loop",
            ],
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("coordinator/metrics/info complete=false"),
            "{got:?}"
        );
        assert!(got[1].starts_with("coordinator/start/info"), "{got:?}");
    }

    #[test]
    fn perf_context_print_is_a_summary_not_a_request() {
        let got = run(
            ParserKind::Auto,
            &[
                "llama_perf_context_print:        load time =     134.84 ms",
                "llama_perf_context_print: prompt eval time =     925.78 ms /    24 tokens (   38.57 ms per token,    25.92 tokens per second)",
                "llama_perf_context_print:        eval time =    4178.32 ms /    31 runs   (  134.78 ms per token,     7.42 tokens per second)",
                "llama_perf_context_print:       total time =    5211.06 ms /    55 tokens",
            ],
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("kind=summary"), "{got:?}");
        assert!(got[0].contains("load_ms=134.84"), "{got:?}");
        assert!(got[0].contains("total_tokens=55"), "{got:?}");
    }

    #[test]
    fn rpc_start_block_folds_the_endpoint_into_the_start_event() {
        let got = run(
            ParserKind::RpcServer,
            &[
                "Starting RPC server v3.0.0",
                "  endpoint       : 0.0.0.0:50052",
                "  local cache    : n/a",
                "Devices:",
                "  CUDA0: NVIDIA GeForce RTX 5090 (32109 MiB, 31588 MiB free)",
                "  CUDA1: NVIDIA GeForce RTX 5090 (32109 MiB, 32000 MiB free)",
                "  transport      : TCP",
                "Accepted client connection",
            ],
        );
        assert_eq!(
            got,
            [
                "rpc_backend/start/info endpoint=0.0.0.0:50052 host=0.0.0.0 port=50052 version=3.0.0",
                "rpc_backend/status/info description=NVIDIA GeForce RTX 5090 device=CUDA0 free_mib=31588 memory_mib=32109",
                "rpc_backend/status/info description=NVIDIA GeForce RTX 5090 device=CUDA1 free_mib=32000 memory_mib=32109",
                "rpc_backend/connect/info",
            ]
        );
    }

    #[test]
    fn rpc_lines_are_ignored_by_a_llama_server_parser_and_the_reverse() {
        assert!(run(ParserKind::LlamaServer, &["Accepted client connection"]).is_empty());
        assert!(run(ParserKind::RpcServer, &["main: model loaded"]).is_empty());
        assert!(run(
            ParserKind::RpcServer,
            &["srv  llama_server: listening on http://127.0.0.1:1"]
        )
        .is_empty());
    }

    #[test]
    fn the_same_address_announced_twice_starts_once_until_the_process_restarts() {
        let got = run(
            ParserKind::Auto,
            &[
                "main: HTTP server is listening, hostname: 127.0.0.1, port: 8080, http threads: 7",
                "main: loading model",
                "srv    load_model: loading model '/models/m.gguf'",
                "main: model loaded",
                "main: server is listening on http://127.0.0.1:8080 - starting the main loop",
                "srv    operator(): operator(): cleaning up before exit...",
                "build: 4000 (abcdef12) with cc (GCC) 13.2.0 for x86_64-linux-gnu",
                "main: server is listening on http://127.0.0.1:8080 - starting the main loop",
            ],
        );
        assert_eq!(
            got,
            [
                "coordinator/start/info host=127.0.0.1 http_threads=7 port=8080",
                "model/model_load/info path=/models/m.gguf stage=loading",
                "model/model_load/info stage=loaded",
                "coordinator/stop/info",
                "coordinator/start/info host=127.0.0.1 port=8080 url=http://127.0.0.1:8080",
            ]
        );
    }

    #[test]
    fn a_pathless_loading_line_is_kept_when_no_path_follows() {
        let got = run(
            ParserKind::Auto,
            &["main: loading model", "main: model loaded"],
        );
        assert_eq!(
            got,
            [
                "model/model_load/info stage=loading",
                "model/model_load/info stage=loaded"
            ]
        );
    }

    #[test]
    fn uncaught_exception_takes_its_reason_from_what() {
        let got = run(
            ParserKind::Auto,
            &[
                "terminate called after throwing an instance of 'std::runtime_error'",
                "  what():  error loading model vocabulary: unknown pre-tokenizer type: 'qwen9'",
            ],
        );
        assert_eq!(
            got,
            ["system/error/critical exception=std::runtime_error what=error loading model vocabulary: unknown pre-tokenizer type: 'qwen9'"]
        );
        let mut p = LogParser::new(ParserKind::Auto);
        p.feed("terminate called after throwing an instance of 'std::bad_alloc'");
        let e = p.feed("Aborted (core dumped)");
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].message,
            "terminate called after throwing an instance of 'std::bad_alloc'"
        );
    }

    #[test]
    fn messages_are_plain_text() {
        let mut p = LogParser::new(ParserKind::Auto);
        let e = p.feed("\x1b[31m0.00.006.889 E \x1b[1msrv  llama_server: exiting due to \x1b[0mmodel loading error\x1b[0m");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].message, "exiting due to model loading error");
        let e = p.feed("0.00.006.900 E srv  something: weird \x07thing\x1b]0;title\x07 happened\r");
        assert_eq!(e[0].message, "srv  something: weird thing happened");
    }

    #[test]
    fn prefix_parsing() {
        assert_eq!(
            split_prefix("0.07.476.132 I slot x"),
            (Some(Level::Info), "slot x")
        );
        assert_eq!(
            split_prefix("123.59.999.999 E gguf: x"),
            (Some(Level::Error), "gguf: x")
        );
        assert_eq!(
            split_prefix("W srv  x: y"),
            (Some(Level::Warning), "srv  x: y")
        );
        assert_eq!(split_prefix("I think so"), (None, "I think so"));
        assert_eq!(split_prefix("0.07.476 I x"), (None, "0.07.476 I x"));
        assert_eq!(split_prefix("1.2.3.4 "), (None, "1.2.3.4 "));
    }

    const FIXTURES: &[&str] = &[
        include_str!("../../tests/fixtures/llama/startup-requests-stop.stderr.log"),
        include_str!("../../tests/fixtures/llama/load-fail-missing-model.stderr.log"),
        include_str!("../../tests/fixtures/llama/rpc-server-session.stdout.log"),
        include_str!("../../tests/fixtures/llama/server-2023-10-json.log"),
        include_str!("../../tests/fixtures/llama/server-2024-02-missing-model.log"),
        include_str!("../../tests/fixtures/llama/server-2024-05-json-crash.log"),
        include_str!("../../tests/fixtures/llama/server-2024-05-text-two-runs.log"),
        include_str!("../../tests/fixtures/llama/server-2024-11-cuda.log"),
        include_str!("../../tests/fixtures/llama/server-2025-03-cuda-oom.log"),
        include_str!("../../tests/fixtures/llama/server-rpc-coordinator-crash.log"),
        include_str!("../../tests/fixtures/llama/rpc-server-2024-06.log"),
        include_str!("../../tests/fixtures/llama/rpc-server-2025-01.log"),
    ];

    /// The pre-check may only skip lines that would produce nothing anyway: the fixtures, then
    /// their lines cut and spliced (xorshift, so the same lines every run).
    #[test]
    fn the_prefilter_loses_nothing() {
        let lines: Vec<&str> = FIXTURES.iter().flat_map(|t| t.lines()).collect();
        for kind in [
            ParserKind::Auto,
            ParserKind::LlamaServer,
            ParserKind::RpcServer,
        ] {
            for corpus in FIXTURES {
                let mut fast = LogParser::new(kind);
                let mut slow = LogParser::new(kind);
                slow.no_prefilter = true;
                for line in corpus.lines() {
                    assert_eq!(fast.feed(line), slow.feed(line), "{line}");
                }
                assert_eq!(fast.finish(), slow.finish());
            }
            let mut fast = LogParser::new(kind);
            let mut slow = LogParser::new(kind);
            slow.no_prefilter = true;
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as usize
            };
            for _ in 0..10_000 {
                let a = lines[next() % lines.len()].as_bytes();
                let b = lines[next() % lines.len()].as_bytes();
                let mut raw = a[next() % (a.len() + 1)..].to_vec();
                raw.extend_from_slice(&b[..next() % (b.len() + 1)]);
                let line = String::from_utf8_lossy(&raw);
                assert_eq!(fast.feed(&line), slow.feed(&line), "{line}");
            }
            assert_eq!(fast.finish(), slow.finish());
        }
    }
}
