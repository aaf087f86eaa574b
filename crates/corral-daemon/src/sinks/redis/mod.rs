//! The Redis publisher (opt-in): every event of the bus goes to Redis pub/sub channels
//! and to a Redis Stream that keeps the history (DESIGN.md "Redis channels").
//!
//! - [`RedisConfig`]: where to connect and under which prefix, whether it is on;
//! - [`Redis`]: the handle the API holds: the status, and changes at run time, kept in
//!   `<home>/redis.json` (mode 0600: it may hold a password) so that the next daemon
//!   starts with them; those kept settings override the flags, environment and config
//!   file, being the latest choice someone made;
//! - `sink`: the [`Sink`](crate::bus::Sink) that connects, reconnects and publishes;
//! - `encode`: the channels of an event, its JSON, the pipeline of a batch;
//! - `raw`: the runs' lines for `{prefix}:raw`: which are important, the rate cap, and
//!   the [`RawWatcher`] the supervisor calls for every run;
//! - `node`: this node's registration (`{prefix}:nodes:{node}`, a TTL of three
//!   heartbeats), which a hub (`crate::hub`) reads.
//!
//! Invariants: with the publisher off nothing connects; publishing never blocks the bus
//! (the sink's own bounded queue); every event taken while on is counted once as
//! published, failed or dropped; no password (nor a URL holding one) appears in a log
//! line, the status, an event or an error message.

mod encode;
pub mod node;
mod raw;
mod sink;

pub use encode::Channels;
pub use node::{Registered, Registration};
pub use raw::{important, RawLine, RawWatcher, IMPORTANT_WORDS};
pub use sink::{backoff, describe, RedisSink};
pub(crate) use sink::{client, open, CONNECT_TIMEOUT};

pub use corral_client::wire::RawLines;
use corral_client::wire::{RedisStatus, RedisUpdate};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The default channel prefix.
pub const DEFAULT_PREFIX: &str = "corral:llama_cpp";
/// The default `MAXLEN ~` of the stream.
pub const DEFAULT_STREAM_MAXLEN: u64 = 100_000;
/// The default cap of raw lines published per second.
pub const DEFAULT_RAW_LINES_PER_SECOND: u64 = 1000;
/// The name of the file (in the daemon's home) that keeps changes made at run time.
pub const STATE_FILE: &str = "redis.json";

/// Where and how to publish. `Debug` hides the password and the URL.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `redis://[user:password@]host:port/db` (or `rediss://`); when given it says
    /// everything about the connection, and host, port, db and credentials are ignored.
    pub url: Option<String>,
    pub channel_prefix: String,
    pub stream_maxlen: u64,
    /// A PEM file of the CA that signed the server's certificate, for `rediss://` (else
    /// the system's roots). Only for a TLS URL: a CA with a plaintext URL is an error.
    pub tls_ca: Option<String>,
    /// Which run lines go to `{prefix}:raw`, and at most how many per second.
    pub raw_lines: RawLines,
    pub raw_lines_per_second: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            enabled: false,
            host: "localhost".into(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
            url: None,
            channel_prefix: DEFAULT_PREFIX.into(),
            stream_maxlen: DEFAULT_STREAM_MAXLEN,
            tls_ca: None,
            raw_lines: RawLines::default(),
            raw_lines_per_second: DEFAULT_RAW_LINES_PER_SECOND,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("enabled", &self.enabled)
            .field("server", &self.server())
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("url", &self.url.as_ref().map(|_| "<hidden>"))
            .field("channel_prefix", &self.channel_prefix)
            .field("stream_maxlen", &self.stream_maxlen)
            .field("tls_ca", &self.tls_ca)
            .field("raw_lines", &self.raw_lines)
            .field("raw_lines_per_second", &self.raw_lines_per_second)
            .finish()
    }
}

impl RedisConfig {
    /// What to connect to, or an error that names the setting (never its value, which
    /// may hold a password).
    pub fn connection_info(&self) -> Result<redis::ConnectionInfo, String> {
        use redis::IntoConnectionInfo;
        if let Some(url) = &self.url {
            return url.as_str().into_connection_info().map_err(|_| {
                "the Redis URL (redis_url, CORRAL_REDIS_URL or SOLLOL_REDIS_URL) is not valid; \
                 use redis://[USER:PASSWORD@]HOST:PORT[/DB], or rediss://… for TLS"
                    .to_string()
            });
        }
        if self.host.trim().is_empty() {
            return Err("redis_host is empty; set REDIS_HOST or redis_host".into());
        }
        Ok(redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(self.host.clone(), self.port),
            redis: redis::RedisConnectionInfo {
                db: self.db,
                username: self.username.clone(),
                password: self.password.clone(),
                ..Default::default()
            },
        })
    }

    /// Whether the connection is TLS (a `rediss://` URL).
    pub fn is_tls(&self) -> bool {
        matches!(
            self.connection_info().map(|i| i.addr),
            Ok(redis::ConnectionAddr::TcpTls { .. })
        )
    }

    /// `host:port` of the server, without any credential.
    pub fn server(&self) -> String {
        match self.connection_info() {
            Ok(info) => match info.addr {
                redis::ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
                redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
                redis::ConnectionAddr::Unix(p) => p.display().to_string(),
            },
            Err(_) if self.url.is_some() => "(invalid URL)".into(),
            Err(_) => format!("{}:{}", self.host, self.port),
        }
    }

    fn db_number(&self) -> i64 {
        self.connection_info()
            .map(|i| i.redis.db)
            .unwrap_or(self.db)
    }

    /// Checks what can be checked without a server.
    pub fn validate(&self) -> Result<(), String> {
        if self.channel_prefix.is_empty() {
            return Err("channel_prefix is empty; the default is corral:llama_cpp".into());
        }
        if self.stream_maxlen == 0 {
            return Err("stream_maxlen must be at least 1".into());
        }
        if self.db < 0 {
            return Err("redis_db must not be negative".into());
        }
        if self.raw_lines_per_second == 0 {
            return Err(
                "raw_lines_per_second must be at least 1; to publish no raw lines set \
                 raw_lines = \"none\""
                    .into(),
            );
        }
        let info = self.connection_info()?;
        if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr {
            return Err(
                "the Redis URL asks for TLS without checking the certificate (#insecure); \
                 that is not supported: give the server's CA in redis_tls_ca instead"
                    .into(),
            );
        }
        if self.tls_ca.is_some() && !self.is_tls() {
            return Err(
                "redis_tls_ca (CORRAL_REDIS_TLS_CA) is set but the connection is not TLS; \
                 use a rediss:// URL (redis_url, CORRAL_REDIS_URL)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The configuration with `u`'s fields applied.
    pub fn apply(&self, u: &RedisUpdate) -> RedisConfig {
        let mut c = self.clone();
        if let Some(v) = u.enabled {
            c.enabled = v;
        }
        if let Some(v) = &u.host {
            c.host = v.clone();
        }
        if let Some(v) = u.port {
            c.port = v;
        }
        if let Some(v) = u.db {
            c.db = v;
        }
        if let Some(v) = &u.username {
            c.username = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = &u.password {
            c.password = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = &u.url {
            c.url = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = &u.channel_prefix {
            c.channel_prefix = v.clone();
        }
        if let Some(v) = u.stream_maxlen {
            c.stream_maxlen = v;
        }
        if let Some(v) = &u.tls_ca {
            c.tls_ca = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = u.raw_lines {
            c.raw_lines = v;
        }
        if let Some(v) = u.raw_lines_per_second {
            c.raw_lines_per_second = v;
        }
        c
    }
}

/// Merges `later` into `earlier`: the fields `later` gives win.
fn merge(earlier: &mut RedisUpdate, later: &RedisUpdate) {
    macro_rules! take {
        ($($f:ident),*) => { $( if later.$f.is_some() { earlier.$f = later.$f.clone(); } )* };
    }
    take!(
        enabled,
        host,
        port,
        db,
        username,
        password,
        url,
        channel_prefix,
        stream_maxlen,
        tls_ca,
        raw_lines,
        raw_lines_per_second
    );
}

/// Counters and connection state, shared by the sink and the handle.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    raw_published: AtomicU64,
    raw_held_back: AtomicU64,
    raw_dropped: AtomicU64,
}

#[derive(Default)]
struct Conn {
    connected: bool,
    last_error: Option<String>,
}

struct Inner {
    config: watch::Sender<RedisConfig>,
    counters: Counters,
    conn: Mutex<Conn>,
    /// `<home>/redis.json`; `None` keeps changes for this daemon only (tests).
    state_file: Option<PathBuf>,
    /// What was changed at run time, as kept in the state file.
    kept: Mutex<RedisUpdate>,
    /// The raw lines' queue to the sink, and their daemon-wide rate cap.
    raw_tx: tokio::sync::mpsc::Sender<RawLine>,
    raw_cap: Mutex<raw::RateCap>,
    started: std::time::Instant,
}

/// Errors of a change at run time.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot keep the Redis settings in {path}: {source}; check that the daemon's home is writable")]
    Save {
        path: String,
        source: std::io::Error,
    },
}

/// The publisher's handle: its status and its settings. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl Redis {
    /// The handle and its sink (to register on the bus). `config` comes from flags,
    /// environment and config file; what `state_file` kept from an earlier daemon is
    /// applied over it. A state file that cannot be read is reported and ignored.
    pub fn new(
        config: RedisConfig,
        state_file: Option<PathBuf>,
        bus: &Arc<crate::bus::Bus>,
    ) -> (Redis, RedisSink) {
        let kept = state_file.as_deref().map(load_state).unwrap_or_default();
        let mut config = config.apply(&kept);
        if let Err(e) = config.validate() {
            tracing::warn!("the Redis publisher is off: {e}");
            config.enabled = false;
        }
        let (tx, _) = watch::channel(config);
        let (raw_tx, raw_rx) = raw::queue();
        let handle = Redis {
            inner: Arc::new(Inner {
                config: tx,
                counters: Counters::default(),
                conn: Mutex::new(Conn::default()),
                state_file,
                kept: Mutex::new(kept),
                raw_tx,
                raw_cap: Mutex::new(raw::RateCap::default()),
                started: std::time::Instant::now(),
            }),
        };
        let sink = RedisSink::new(handle.clone(), Arc::downgrade(bus), raw_rx);
        (handle, sink)
    }

    /// The watcher that sends the runs' lines to `{prefix}:raw`, to register with
    /// [`Supervisor::add_run_watcher`](crate::supervisor::Supervisor::add_run_watcher).
    pub fn raw_watcher(&self) -> RawWatcher {
        RawWatcher {
            redis: self.clone(),
        }
    }

    /// Whether one more raw line fits in this second's cap.
    fn admit_raw(&self, per_second: u64) -> bool {
        let now = self.inner.started.elapsed().as_secs();
        self.inner
            .raw_cap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(now, per_second)
    }

    pub(crate) fn count_raw(&self, which: raw::RawCount, n: u64) {
        let c = &self.inner.counters;
        let counter = match which {
            raw::RawCount::Published => &c.raw_published,
            raw::RawCount::HeldBack => &c.raw_held_back,
            raw::RawCount::Dropped => &c.raw_dropped,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn config(&self) -> RedisConfig {
        self.inner.config.borrow().clone()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status; `queue` is the sink's queue as the bus counts it (events waiting, and
    /// those its full queue pushed out, which the sink has not heard of yet).
    pub fn status(&self, queue: Option<&crate::bus::SinkStats>) -> RedisStatus {
        let cfg = self.config();
        let ch = Channels::new(&cfg.channel_prefix);
        let conn = self.conn();
        let c = &self.inner.counters;
        RedisStatus {
            enabled: cfg.enabled,
            connected: cfg.enabled && conn.connected,
            server: cfg.server(),
            tls: cfg.is_tls(),
            db: cfg.db_number(),
            channels: ch.list(),
            stream: ch.stream,
            stream_maxlen: cfg.stream_maxlen,
            published: c.published.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            queued: queue.map(|q| q.queued as u64).unwrap_or(0),
            raw_lines: cfg.raw_lines,
            raw_lines_per_second: cfg.raw_lines_per_second,
            raw_published: c.raw_published.load(Ordering::Relaxed),
            raw_held_back: c.raw_held_back.load(Ordering::Relaxed),
            raw_dropped: c.raw_dropped.load(Ordering::Relaxed),
            last_error: conn.last_error.clone(),
        }
    }

    /// Applies a change now and keeps it for the next daemon. An invalid change is
    /// refused whole, and nothing is kept.
    pub fn update(&self, u: &RedisUpdate) -> Result<RedisConfig, RedisError> {
        let mut kept = self.inner.kept.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.config().apply(u);
        next.validate().map_err(RedisError::Invalid)?;
        let mut merged = kept.clone();
        merge(&mut merged, u);
        if let Some(path) = &self.inner.state_file {
            save_state(path, &merged).map_err(|source| RedisError::Save {
                path: path.display().to_string(),
                source,
            })?;
        }
        *kept = merged;
        if !next.enabled {
            let mut conn = self.conn();
            conn.connected = false;
        }
        self.inner.config.send_replace(next.clone());
        Ok(next)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<RedisConfig> {
        self.inner.config.subscribe()
    }

    pub(crate) fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut conn = self.conn();
        conn.connected = connected;
        if error.is_some() || connected {
            conn.last_error = error;
        }
    }

    pub(crate) fn count_published(&self, n: u64) {
        self.inner
            .counters
            .published
            .fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_failed(&self, n: u64) {
        self.inner.counters.failed.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        self.inner.counters.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// `(published, failed)`, for `/metrics`.
    pub fn counters(&self) -> (u64, u64) {
        let c = &self.inner.counters;
        (
            c.published.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
        )
    }
}

/// Reads the kept changes; a missing file is none, a broken one is reported and ignored.
fn load_state(path: &Path) -> RedisUpdate {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "ignoring {}: {e}; remove it, or set the publisher again with `corral redis on`",
                path.display()
            );
            RedisUpdate::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RedisUpdate::default(),
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            RedisUpdate::default()
        }
    }
}

/// Writes the kept changes atomically (a temporary file renamed over), mode 0600.
fn save_state(path: &Path, kept: &RedisUpdate) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(kept).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_server_never_show_a_password() {
        let c = RedisConfig {
            password: Some("s3cret".into()),
            url: Some("redis://u:hunter2@h:7000/3".into()),
            ..RedisConfig::default()
        };
        let shown = format!("{c:?} {}", c.server());
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(c.server(), "h:7000");
        assert_eq!(c.db_number(), 3);
        let bad = RedisConfig {
            url: Some("nonsense://x:hunter2@".into()),
            ..RedisConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("redis://"), "{e}");
    }

    #[test]
    fn changes_are_kept_atomically_and_applied_over_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let mut kept = RedisUpdate {
            enabled: Some(true),
            password: Some("pw".into()),
            ..Default::default()
        };
        merge(
            &mut kept,
            &RedisUpdate {
                enabled: Some(false),
                port: Some(7001),
                ..Default::default()
            },
        );
        save_state(&path, &kept).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = load_state(&path);
        assert_eq!(back, kept);
        let c = RedisConfig {
            enabled: true,
            ..RedisConfig::default()
        }
        .apply(&back);
        assert_eq!(
            (c.enabled, c.port, c.password.as_deref()),
            (false, 7001, Some("pw"))
        );
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(load_state(&path), RedisUpdate::default());
    }
}
