//! `corral serve`: the daemon in the foreground. The daemon itself is the
//! `corral-daemon` library; this wires its options from flags and environment, and makes
//! the process outlive the terminal it was started from.

use super::{config, say, ServeArgs};
use anyhow::Context;
use std::path::PathBuf;

/// The daemon's home: `--home` / `CORRAL_HOME`, else the default.
pub fn home(a: &ServeArgs) -> PathBuf {
    a.home
        .clone()
        .unwrap_or_else(corral_daemon::serve::default_home)
}

pub fn serve_opts(
    a: &ServeArgs,
    token: Option<String>,
) -> anyhow::Result<corral_daemon::ServeOpts> {
    let file = match &a.config {
        Some(p) => config::read_file(p)?,
        None => config::FileSettings::default(),
    };
    Ok(corral_daemon::ServeOpts {
        listen: a.listen.clone(),
        home: home(a),
        token,
        insecure_no_auth: a.insecure_no_auth,
        allow_hosts: a.allow_hosts.clone(),
        log: corral_daemon::logbook::LogConfig {
            ring_records: a.ring_records.max(1),
            ring_budget: a.ring_mb.max(1) * 1024 * 1024,
            max_bytes: a.max_log_mb.max(1) * 1024 * 1024,
            ..Default::default()
        },
        observer: config::observer_config()?,
        node: corral_daemon::serve::node_name(),
        llama: a.llama.config()?,
        redis: a.redis.config(&file.redis, |k| std::env::var(k).ok())?,
        alerts: file.alerts,
        // This very program holds the runs (`corral hold`), so they outlive the daemon.
        holder: Some(std::env::current_exe().context("finding the corral program")?),
    })
}

pub async fn serve(a: ServeArgs, token: Option<String>) -> anyhow::Result<i32> {
    let opts = serve_opts(&a, token)?;
    if opts.insecure_no_auth {
        super::say_error(&format!(
            "WARNING: --insecure-no-auth: the API takes no token; anyone who can reach {} can run \
             commands as this user",
            opts.listen
        ));
    }
    ignore_hangup()?;
    let home = opts.home.clone();
    corral_daemon::serve(opts, |addr| {
        // The first line on stdout is for scripts and tests: the bound address.
        say(&format!("corral listening on http://{addr}"));
        tracing::info!(home = %home.display(), "listening on http://{addr}");
    })
    .await?;
    tracing::info!("stopped");
    Ok(0)
}

/// A closed terminal (SIGHUP) does not stop the daemon: its tasks go on, and it stops
/// only on SIGTERM or Ctrl-C. A handler rather than `SIG_IGN`, which the supervised
/// processes would inherit through exec; a handler is reset to the default there.
fn ignore_hangup() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP ignored: the daemon keeps running (stop it with SIGTERM or Ctrl-C)"
            );
        }
    });
    Ok(())
}
