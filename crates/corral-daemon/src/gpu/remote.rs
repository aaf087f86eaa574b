//! Another machine's GPUs (`corral gpu user@host`): `nvidia-smi`'s two queries run there
//! in one session on the host's SSH connection, their CSV read by [`super::smi`]'s
//! parser. A host without `nvidia-smi` is an answer (`available: false`, with the
//! reason), not a failure; a host that cannot be reached is a failure.

use super::smi;
use crate::ssh::{quote, Ssh, SshError};
use corral_client::wire::GpuSnapshot;
use std::time::Duration;

/// How long the remote queries may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The line between the two answers.
const APPS: &str = "corral-compute-apps";
const MISSING: &str = "corral-no-nvidia-smi";

/// The command line run on the host.
fn script() -> String {
    format!(
        "if ! command -v nvidia-smi >/dev/null 2>&1; then echo {MISSING}; exit 0; fi; \
         nvidia-smi {} {} || exit $?; echo {APPS}; nvidia-smi {} {} || true",
        quote(smi::QUERY_GPU),
        quote(smi::FORMAT),
        quote(smi::QUERY_APPS),
        quote(smi::FORMAT)
    )
}

/// Reads the answer of [`script`].
pub fn parse(host: &str, out: &str, taken_at: f64) -> GpuSnapshot {
    if out.lines().any(|l| l.trim() == MISSING) {
        return GpuSnapshot {
            available: false,
            reason: Some(format!(
                "no NVIDIA GPU or driver found on {host} (nvidia-smi is not installed there)"
            )),
            source: None,
            taken_at,
            gpus: Vec::new(),
        };
    }
    let (gpus, apps) = match out.split_once(&format!("{APPS}\n")) {
        Some((g, a)) => (g, a),
        None => (out, ""),
    };
    let mut gpus = smi::parse_gpus(gpus);
    smi::add_apps(&mut gpus, apps);
    GpuSnapshot {
        available: true,
        reason: None,
        source: Some(format!("nvidia-smi on {host}")),
        taken_at,
        gpus,
    }
}

/// The GPUs of `host`.
pub async fn read(ssh: &Ssh, host: &str) -> Result<GpuSnapshot, SshError> {
    let out = ssh.output(host, &script(), TIMEOUT).await?;
    let taken_at = crate::util::unix_now();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Ok(GpuSnapshot {
            available: false,
            reason: Some(format!(
                "nvidia-smi failed on {host}: {}",
                corral_core::term::sanitize(
                    format!(
                        "{} {}",
                        text.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                    .trim()
                )
            )),
            source: None,
            taken_at,
            gpus: Vec::new(),
        });
    }
    Ok(parse(host, &text, taken_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_answers_are_read_and_a_missing_program_is_an_answer() {
        let out = format!(
            "0, NVIDIA H100 80GB HBM3, GPU-1, 87, 40000, 81559, 61, 350.12\n{APPS}\n4242, GPU-1, 39000\n"
        );
        let s = parse("h", &out, 1.0);
        assert!(s.available);
        assert_eq!(s.gpus.len(), 1);
        assert_eq!(s.gpus[0].processes.len(), 1);
        assert_eq!(s.gpus[0].processes[0].pid, 4242);
        let s = parse("h", &format!("{MISSING}\n"), 1.0);
        assert!(!s.available);
        assert!(s.reason.unwrap().contains("not installed"));
    }
}
