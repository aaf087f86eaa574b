//! Spawning a child in its own process group, signalling the group, and telling a live
//! process from a reused pid.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use tokio::process::{Child, Command};

/// A spawned child with its output pipes taken out for the capture thread.
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Starts `argv` in a new process group (its pgid is its pid), stdin from /dev/null.
pub fn spawn(
    argv: &[String],
    cwd: Option<&Path>,
    env: &[(String, String)],
) -> std::io::Result<Spawned> {
    let (prog, args) = argv.split_first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line")
    })?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            restore_nofile();
            Ok(())
        });
    }
    task_env(cmd.as_std_mut(), env);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("stdout pipe missing"))?
        .into_owned_fd()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("stderr pipe missing"))?
        .into_owned_fd()?;
    Ok(Spawned {
        child,
        pid,
        stdout,
        stderr,
    })
}

/// The environment of a task: the daemon's, less corral's own variables, plus the spec's.
fn task_env(cmd: &mut std::process::Command, env: &[(String, String)]) {
    for k in std::env::vars_os().map(|(k, _)| k) {
        if is_corral_secret(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Starts a run's holder (`cmd` is its command line) in a session of its own, so that
/// neither the daemon's terminal nor a signal to the daemon's process group reaches it,
/// with the task's environment (which its child inherits), stdin and stderr on
/// /dev/null. Returns the holder's pid and its stdout, where it says first who it runs.
///
/// The holder stays the daemon's child (so that it is reaped even where the daemon is
/// the container's init), but the daemon keeps no descriptor for it: it is reaped by
/// [`reap_holders`] when a SIGCHLD comes. A descriptor per run would be one more of the
/// few a thousand runs may have.
pub fn hold(
    mut cmd: std::process::Command,
    env: &[(String, String)],
) -> std::io::Result<(u32, OwnedFd)> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    task_env(&mut cmd, env);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            restore_nofile();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    HOLDERS.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    reap_holders();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("the holder's stdout pipe is missing"))?;
    // Dropping a std `Child` neither kills nor waits: the reaper does the waiting.
    Ok((pid, stdout.into()))
}

/// The soft limit of open files the daemon was started with (0: unchanged), which its
/// children get back (the daemon raises its own; see `serve`).
static CHILD_NOFILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Children get `soft` as their soft limit of open files.
pub fn set_child_nofile(soft: u64) {
    CHILD_NOFILE.store(soft, std::sync::atomic::Ordering::Relaxed);
}

/// In a forked child: puts back the soft limit of open files the daemon was given, for
/// programs that expect it (some close every descriptor up to it, or use `select(2)`).
fn restore_nofile() {
    let soft = CHILD_NOFILE.load(std::sync::atomic::Ordering::Relaxed);
    if soft == 0 {
        return;
    }
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit are async-signal-safe; best effort.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && soft < rl.rlim_cur {
            rl.rlim_cur = soft;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Holders started by this daemon and not reaped yet.
static HOLDERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Reaps every holder that has ended (`waitpid` with `WNOHANG` on each one of ours, never
/// on any pid, so the runtime's own children are left to it). The first call also
/// starts the task that calls it again on every SIGCHLD.
pub fn reap_holders() {
    static LISTENING: std::sync::Once = std::sync::Once::new();
    LISTENING.call_once(|| {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut sigchld) = signal(SignalKind::child()) else {
                    tracing::warn!("cannot listen for SIGCHLD: ended holders stay zombies");
                    return;
                };
                // A holder that ended before the listener was set up is reaped now.
                reap_holders();
                while sigchld.recv().await.is_some() {
                    reap_holders();
                }
            });
        }
    });
    let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    holders.retain(|&pid| {
        let mut status = 0;
        // SAFETY: waitpid on a child of ours, without blocking.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        r == 0
    });
}

/// Reads the first line from `fd` (a pipe), waiting at most `timeout` for it.
pub fn first_line(fd: OwnedFd, timeout: std::time::Duration) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + timeout;
    let mut f = std::fs::File::from(fd);
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.contains(&b'\n') {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", timeout.as_secs()),
            ));
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        line.extend_from_slice(&buf[..got]);
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    if end == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "it ended without a word",
        ));
    }
    Ok(String::from_utf8_lossy(&line[..end]).into_owned())
}

/// corral's own variables, never passed on to a task from the daemon's environment: its
/// API token and token file, everything else `CORRAL_*` (the daemon's settings), and the
/// Redis credentials it reads. A task's spec may still set any of them on purpose.
pub fn is_corral_secret(name: &str) -> bool {
    corral_core::secrets::is_corral_variable(name)
}

/// Sends `sig` to every process of group `pgid`. Returns false when the group is empty.
pub fn signal_group(pgid: u32, sig: i32) -> bool {
    if pgid == 0 {
        return false;
    }
    // SAFETY: kill(2) with a negative pid addresses the process group.
    unsafe { libc::kill(-(pgid as i32), sig) == 0 }
}

/// The state (field 3) and start time in clock ticks since boot (field 22) of
/// /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ');
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The start time of a process, which tells a live process from a later one that
/// reused its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether `pid` is the same live process that had `start` as its start time. A zombie
/// is not live: it has exited, and its parent (an earlier daemon) may never reap it.
pub fn is_same_process(pid: u32, start: Option<u64>) -> bool {
    match (stat(pid), start) {
        (Some((state, now)), Some(then)) => now == then && !matches!(state, 'Z' | 'X' | 'x'),
        _ => false,
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_this_process() {
        let me = std::process::id();
        let t = start_time(me);
        assert!(t.is_some());
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t.map(|v| v + 1)));
        assert!(!is_same_process(u32::MAX / 2, t));
    }

    #[test]
    fn a_zombie_is_not_the_same_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let t = start_time(pid);
        assert!(is_same_process(pid, t));
        child.kill().unwrap();
        // Not reaped yet: it lingers as a zombie with the same pid and start time.
        while stat(pid).is_some_and(|(state, _)| state != 'Z') {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(start_time(pid), t);
        assert!(!is_same_process(pid, t));
        child.wait().unwrap();
    }
}
