//! The daemon's diagnostics (`corral serve`, `corral demo`): the `tracing` events of the
//! daemon library and of this binary, to stderr and to `<home>/daemon.log`.
//!
//! - stderr: compact text, in colour only when stderr is a terminal; or JSON lines with
//!   `--log-format json` (`CORRAL_LOG_FORMAT`).
//! - `<home>/daemon.log`: the same events in the same format (never in colour), rotated at
//!   [`MAX_FILE_BYTES`] to `daemon.log.1`.
//! - Which events: `--log-level` / `CORRAL_LOG`, a level or `RUST_LOG`-style directives.
//!
//! **Invariant:** logging never blocks and never takes the daemon down: events are queued
//! to a writer thread per destination ([`writer`]), and a destination that went away
//! (`corral serve | head -1`, a closed terminal) is given up quietly. Client commands do
//! not log: they print their errors as `corral: …` on stderr.

pub mod writer;

use anyhow::Context;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};
use writer::{NonBlocking, RotatingFile, Stderr};

/// `daemon.log` is moved to `daemon.log.1` before it grows past this.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Lines each writer thread may hold before new ones are dropped (and counted).
const QUEUE_LINES: usize = 8192;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The diagnostics flags of `serve` and `demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Format of the daemon's diagnostics, on stderr and in <home>/daemon.log.
    #[arg(long, env = "CORRAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which diagnostics to keep: a level (error, warn, info, debug, trace) or
    /// RUST_LOG-style directives, e.g. `info,corral_daemon::supervisor=debug`.
    #[arg(long, env = "CORRAL_LOG", default_value = "info")]
    pub log_level: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

/// The installed diagnostics: flush them before the process exits.
pub struct Logging {
    stderr: NonBlocking,
    file: NonBlocking,
}

static FILE: OnceLock<NonBlocking> = OnceLock::new();

type Layers = Vec<Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>>;

fn layer(
    format: LogFormat,
    ansi: bool,
    to: NonBlocking,
) -> Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(to)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => fmt.compact().boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
}

/// Installs the subscriber for this process. `file` is where to keep the diagnostics
/// (`<home>/daemon.log`); none for now: [`keep_in`] names it later.
pub fn init(args: &LogArgs, file: Option<PathBuf>) -> anyhow::Result<Logging> {
    let filter = EnvFilter::builder()
        .parse(&args.log_level)
        .with_context(|| {
            format!(
                "--log-level (CORRAL_LOG) `{}` is not a level or a list of directives; \
                 write e.g. info, or info,corral_daemon=debug",
                args.log_level
            )
        })?;
    let stderr = NonBlocking::spawn("corral-log-stderr", Stderr::default(), QUEUE_LINES)
        .context("starting the log writer")?;
    let file = NonBlocking::spawn(
        "corral-log-file",
        RotatingFile::new(file, MAX_FILE_BYTES),
        QUEUE_LINES,
    )
    .context("starting the log writer")?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // What is for the terminal only (the dashboard's login link, a credential) never
    // reaches the file.
    let not_terminal_only = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target() != corral_daemon::serve::TERMINAL_ONLY
    });
    let layers: Layers = vec![
        layer(args.log_format, tty, stderr.clone()),
        layer(args.log_format, false, file.clone())
            .with_filter(not_terminal_only)
            .boxed(),
    ];
    let subscriber = tracing_subscriber::registry().with(layers.with_filter(filter));
    tracing::subscriber::set_global_default(subscriber)
        .context("installing the diagnostics subscriber")?;
    let _ = FILE.set(file.clone());
    Ok(Logging { stderr, file })
}

/// Keeps the diagnostics in `path` from now on (the demo learns its home only once it
/// knows whether it starts a daemon of its own).
pub fn keep_in(path: PathBuf) {
    if let Some(file) = FILE.get() {
        file.open(path);
    }
}

impl Logging {
    /// Writes out what is queued, waiting at most `timeout` for each destination.
    pub fn flush(&self, timeout: Duration) {
        self.file.flush(timeout);
        self.stderr.flush(timeout);
    }
}
