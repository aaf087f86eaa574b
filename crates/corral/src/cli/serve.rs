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
        fleet_token: fleet_token(a)?,
        allow_hosts: a.allow_hosts.clone(),
        log: corral_daemon::logbook::LogConfig {
            ring_records: a.ring_records.max(1),
            ring_budget: a.ring_mb.max(1) * 1024 * 1024,
            max_bytes: a.max_log_mb.max(1) * 1024 * 1024,
            ..Default::default()
        },
        observer: config::observer_config()?,
        node: node_name(a)?,
        llama: a.llama.config()?,
        redis: a.redis.config(&file.redis, |k| std::env::var(k).ok())?,
        alerts: file.alerts,
        node_heartbeat: heartbeat(&a.node_heartbeat)?,
        hub: a.hub,
        ssh_config: a.ssh_config.clone(),
        docker_host: Some(a.docker_host.clone()),
        // This very program holds the runs (`corral hold`), so they outlive the daemon.
        holder: Some(std::env::current_exe().context("finding the corral program")?),
    })
}

/// The fleet token from `--fleet-token-file`: the file's first line, at least 16
/// characters (a secret, so never taken from a flag's value or the environment itself).
fn fleet_token(a: &ServeArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &a.fleet_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the fleet token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        anyhow::bail!(
            "the fleet token in {} is shorter than 16 characters; put a long random line there, \
             e.g. `openssl rand -hex 32 > {}`",
            path.display(),
            path.display()
        );
    }
    Ok(Some(token))
}

/// `--node` / `CORRAL_NODE`, else the hostname. It names a Redis key and is shown on
/// every event, so it must be printable and have no spaces.
fn node_name(a: &ServeArgs) -> anyhow::Result<String> {
    let Some(n) = a.node.as_deref() else {
        return Ok(corral_daemon::serve::node_name());
    };
    if n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "--node (CORRAL_NODE) `{}` is not a usable node name: give 1 to 253 printable \
             characters without spaces, e.g. gpu-01",
            corral_core::term::sanitize(n)
        );
    }
    Ok(n.to_string())
}

/// `--node-heartbeat` / `CORRAL_NODE_HEARTBEAT`: at least 100 ms.
fn heartbeat(s: &str) -> anyhow::Result<std::time::Duration> {
    let d = corral_core::duration::parse_duration(s).map_err(|e| {
        anyhow::anyhow!("--node-heartbeat (CORRAL_NODE_HEARTBEAT) `{s}`: {e}; e.g. 10s or 500ms")
    })?;
    if d < std::time::Duration::from_millis(100) {
        anyhow::bail!("--node-heartbeat (CORRAL_NODE_HEARTBEAT) must be at least 100ms, not {s}");
    }
    Ok(d)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["corral", "serve"];
        argv.extend(extra);
        match crate::cli::Cli::parse_from(argv).cmd {
            crate::cli::Command::Serve(a) => *a,
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn node_names_and_heartbeats_are_checked() {
        assert_eq!(node_name(&args(&["--node", "gpu-01"])).unwrap(), "gpu-01");
        for bad in ["", "two words", "tab\there"] {
            let e = node_name(&args(&["--node", bad])).unwrap_err().to_string();
            assert!(e.contains("--node"), "{e}");
        }
        assert_eq!(heartbeat("1s").unwrap(), std::time::Duration::from_secs(1));
        assert!(heartbeat("50ms")
            .unwrap_err()
            .to_string()
            .contains("at least 100ms"));
        assert!(heartbeat("soon")
            .unwrap_err()
            .to_string()
            .contains("--node-heartbeat"));
    }
}
