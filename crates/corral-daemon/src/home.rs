//! The daemon's home directory: one daemon per home (an advisory lock), and the API
//! token kept there.
//!
//! The token file `<home>/token` is created at first start, mode 0600 in a home of mode
//! 0700, so the daemon's user (and root) can read it and drive the daemon, and nobody
//! else can. The CLI reads it by itself. Why a token file rather than a Unix socket: the
//! same credential serves the CLI, scripts with `curl`, the dashboard (through a one-time
//! login link) and remote clients over TCP, and file permissions still decide who may
//! read it.

use anyhow::{bail, Context};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub use corral_client::{default_home, TOKEN_FILE};

/// Creates the home (mode 0700 when new) and takes `<home>/daemon.lock` (an advisory
/// `flock`, released by the kernel when the daemon exits, however it exits). Fails when
/// another live daemon holds it.
pub fn lock(home: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    if !home.exists() {
        std::fs::create_dir_all(home)
            .with_context(|| format!("cannot create the home directory {}", home.display()))?;
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    let path = home.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another corral daemon is using the home {}; stop it first, or give this one another --home",
            home.display()
        );
    }
    Ok(file)
}

/// The token in `<home>/token`, created (random, mode 0600) when there is none. A token
/// file anyone else can read is refused: it would hand them the daemon.
pub fn load_or_create_token(home: &Path) -> anyhow::Result<String> {
    let path = home.join(TOKEN_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let token = random_token()?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                bail!(
                    "the token file {} can be read by other users; run `chmod 600 {}` (or delete it for a new token)",
                    path.display(),
                    path.display()
                );
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            if token.len() < 16 {
                bail!(
                    "the token file {} holds no usable token (16 characters at least); delete it for a new one",
                    path.display()
                );
            }
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// 32 random bytes from the kernel, in hex.
pub fn random_token() -> anyhow::Result<String> {
    let mut buf = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut buf).context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_created_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_token(dir.path()).unwrap();
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), a);
        std::fs::set_permissions(
            dir.path().join(TOKEN_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = load_or_create_token(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
