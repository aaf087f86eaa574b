//! `corral service install|uninstall`: start the daemon at boot with systemd, with the
//! same home and address as now. Where systemd does not run (a container), the unit is
//! written and printed, and the output says how to enable it elsewhere.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub cmd: ServiceCmd,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Write (and enable, where systemd runs) a unit that starts `corral serve` at boot.
    Install(InstallArgs),
    /// Disable and remove the unit.
    Uninstall(UnitArgs),
}

#[derive(Args, Debug)]
pub struct UnitArgs {
    /// A user unit (`systemctl --user`, started when the user logs in, or at boot with
    /// lingering) instead of a system one.
    #[arg(long)]
    pub user: bool,
    /// Where the unit file goes [default: /etc/systemd/system, or
    /// ~/.config/systemd/user with --user].
    #[arg(long)]
    pub unit_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub unit: UnitArgs,
    /// The daemon's home [default: CORRAL_HOME, else the default home].
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// The daemon's listen address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
}

const UNIT: &str = "corral.service";

fn unit_dir(a: &UnitArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &a.unit_dir {
        return Ok(d.clone());
    }
    if a.user {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .context("neither XDG_CONFIG_HOME nor HOME is set: pass --unit-dir")?;
        return Ok(config.join("systemd/user"));
    }
    Ok(PathBuf::from("/etc/systemd/system"))
}

/// Whether systemd is the init system here (its runtime directory exists).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// A word for a unit's ExecStart: quoted when it holds anything but safe characters.
fn unit_word(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@=,+".contains(&b))
    {
        w.to_string()
    } else {
        format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

pub fn unit_text(exe: &Path, home: &Path, listen: &str, user: bool) -> String {
    let exec = [
        exe.display().to_string(),
        "serve".into(),
        "--home".into(),
        home.display().to_string(),
        "--listen".into(),
        listen.to_string(),
    ]
    .iter()
    .map(|w| unit_word(w))
    .collect::<Vec<_>>()
    .join(" ");
    let wanted = if user {
        "default.target"
    } else {
        "multi-user.target"
    };
    format!(
        "# Written by `corral service install`; remove with `corral service uninstall`.\n\
         [Unit]\n\
         Description=corral: keeps llama.cpp servers and GPU jobs running\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         # The daemon stops its tasks itself on SIGTERM; their holder processes must\n\
         # outlive a daemon restart, so only the daemon is signalled.\n\
         KillMode=process\n\
         TimeoutStopSec=60\n\
         \n\
         [Install]\n\
         WantedBy={wanted}\n"
    )
}

fn systemctl(user: bool, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("systemctl");
    if user {
        cmd.arg("--user");
    }
    let out = cmd
        .args(args)
        .output()
        .context("running systemctl (is systemd installed?)")?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn dispatch(a: ServiceArgs) -> anyhow::Result<i32> {
    match a.cmd {
        ServiceCmd::Install(a) => install(&a),
        ServiceCmd::Uninstall(a) => uninstall(&a),
    }
}

fn install(a: &InstallArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("locating the corral binary")?;
    let home = a.home.clone().unwrap_or_else(corral_client::default_home);
    let home = if home.is_absolute() {
        home
    } else {
        std::env::current_dir()?.join(home)
    };
    let text = unit_text(&exe, &home, &a.listen, a.unit.user);
    let dir = unit_dir(&a.unit)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(UNIT);
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    let scope = if a.unit.user { " --user" } else { "" };
    if systemd_runs() && a.unit.unit_dir.is_none() {
        systemctl(a.unit.user, &["daemon-reload"])?;
        systemctl(a.unit.user, &["enable", "--now", UNIT])?;
        println!("enabled and started {UNIT}: `systemctl{scope} status corral` shows it");
    } else {
        print!("{text}");
        println!(
            "systemd does not run here (or --unit-dir was given), so nothing was enabled; on a \
             machine with systemd: `systemctl{scope} daemon-reload && systemctl{scope} enable --now {UNIT}`"
        );
    }
    Ok(0)
}

fn uninstall(a: &UnitArgs) -> anyhow::Result<i32> {
    let path = unit_dir(a)?.join(UNIT);
    if systemd_runs() && a.unit_dir.is_none() {
        // Stopping the unit stops the daemon, which stops its tasks.
        let _ = systemctl(a.user, &["disable", "--now", UNIT]);
    }
    match std::fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no unit at {}; nothing to remove", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    if systemd_runs() && a.unit_dir.is_none() {
        systemctl(a.user, &["daemon-reload"])?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_serve_with_the_same_home_and_address() {
        let text = unit_text(
            Path::new("/opt/corral/bin/corral"),
            Path::new("/srv/corral home"),
            "127.0.0.1:7070",
            false,
        );
        assert!(
            text.contains(
                "ExecStart=/opt/corral/bin/corral serve --home \"/srv/corral home\" --listen 127.0.0.1:7070\n"
            ),
            "{text}"
        );
        assert!(text.contains("WantedBy=multi-user.target"), "{text}");
        assert!(unit_text(Path::new("/c"), Path::new("/h"), "x", true)
            .contains("WantedBy=default.target"));
    }
}
