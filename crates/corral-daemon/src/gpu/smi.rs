//! `nvidia-smi`, the fallback where NVML cannot be opened but the program exists: its
//! `--format=csv,noheader,nounits` answers to two queries (the GPUs, the compute apps).

use corral_client::wire::{Gpu, GpuProcess};
use std::time::{Duration, Instant};

/// How long `nvidia-smi` may take before the answer goes without it.
const TIMEOUT: Duration = Duration::from_secs(5);

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, thiserror::Error)]
pub enum SmiError {
    #[error("nvidia-smi is not installed")]
    NotInstalled,
    #[error("nvidia-smi: {0}")]
    Failed(String),
}

/// The GPU query (`--query-gpu=…`), with [`FORMAT`]; its answer is read by [`parse_gpus`].
pub const QUERY_GPU: &str =
    "--query-gpu=index,name,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw";
/// The compute processes query, with [`FORMAT`]; read by [`parse_apps`].
pub const QUERY_APPS: &str = "--query-compute-apps=pid,gpu_uuid,used_memory";
pub const FORMAT: &str = "--format=csv,noheader,nounits";

/// The GPUs and their compute processes, as `nvidia-smi` reports them.
pub fn read() -> Result<Vec<Gpu>, SmiError> {
    let mut gpus = parse_gpus(&run(&[QUERY_GPU, FORMAT])?);
    // The processes are a second query; without them the GPUs are still worth showing.
    if let Ok(out) = run(&[QUERY_APPS, FORMAT]) {
        add_apps(&mut gpus, &out);
    }
    Ok(gpus)
}

/// Puts each process of a compute-apps answer on its GPU.
pub fn add_apps(gpus: &mut [Gpu], csv: &str) {
    for (uuid, p) in parse_apps(csv) {
        if let Some(g) = gpus.iter_mut().find(|g| g.uuid.as_deref() == Some(&uuid)) {
            g.processes.push(p);
        }
    }
}

fn run(args: &[&str]) -> Result<String, SmiError> {
    let mut child = std::process::Command::new("nvidia-smi")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SmiError::NotInstalled
            } else {
                SmiError::Failed(format!("cannot run it: {e}"))
            }
        })?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SmiError::Failed(format!(
                    "no answer within {}s",
                    TIMEOUT.as_secs()
                )));
            }
            // A bounded wait for a child we started, in a blocking thread of its own.
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(SmiError::Failed(format!("waiting for it: {e}"))),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SmiError::Failed(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let said = String::from_utf8_lossy(&out.stdout);
        return Err(SmiError::Failed(format!(
            "it says {}",
            corral_core::term::sanitize(format!("{} {}", said.trim(), err.trim()).trim())
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A number from the CSV, or None for `[N/A]`, `[Not Supported]` and the like.
fn num(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
}

fn mib_to_bytes(s: &str) -> Option<u64> {
    num(s).map(|m| (m * MIB) as u64)
}

fn text(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && !s.starts_with('[')).then(|| s.to_string())
}

/// `index, name, uuid, utilization %, memory used MiB, memory total MiB, temperature C,
/// power W` lines.
pub fn parse_gpus(csv: &str) -> Vec<Gpu> {
    csv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            if f.len() < 8 {
                return None;
            }
            Some(Gpu {
                index: f[0].parse().ok()?,
                name: text(f[1]),
                uuid: text(f[2]),
                utilization_pct: num(f[3]).map(|x| x.min(100.0) as u32),
                memory_used_bytes: mib_to_bytes(f[4]),
                memory_total_bytes: mib_to_bytes(f[5]),
                temperature_c: num(f[6]).map(|x| x as u32),
                power_w: num(f[7]),
                processes: Vec::new(),
            })
        })
        .collect()
}

/// `pid, gpu uuid, used memory MiB` lines, each with the GPU it is on.
pub fn parse_apps(csv: &str) -> Vec<(String, GpuProcess)> {
    csv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            if f.len() < 3 {
                return None;
            }
            Some((
                f[1].to_string(),
                GpuProcess {
                    pid: f[0].parse().ok()?,
                    used_memory_bytes: mib_to_bytes(f[2]),
                    task: None,
                    run_id: None,
                    container: None,
                    sm_utilization_pct: None,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_csv_is_read() {
        // As nvidia-smi 535 prints it for the queries above.
        let gpus = parse_gpus(
            "0, NVIDIA H100 80GB HBM3, GPU-5a4c2e1b-0f6d-4c1e-9b1a-2f3e4d5c6b7a, 37, 41235, 81559, 54, 312.45\n\
             1, NVIDIA H100 80GB HBM3, GPU-6b5d3f2c-1a7e-5d2f-8c2b-3a4f5e6d7c8b, [N/A], 4, 81559, 31, [N/A]\n\
             \n\
             garbage line\n",
        );
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].index, 0);
        assert_eq!(gpus[0].name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(gpus[0].utilization_pct, Some(37));
        assert_eq!(gpus[0].memory_used_bytes, Some(41235 * 1024 * 1024));
        assert_eq!(gpus[0].memory_total_bytes, Some(81559 * 1024 * 1024));
        assert_eq!(gpus[0].temperature_c, Some(54));
        assert_eq!(gpus[0].power_w, Some(312.45));
        assert_eq!(gpus[1].power_w, None);
        assert_eq!(gpus[1].utilization_pct, None);
        let apps = parse_apps(
            "4242, GPU-5a4c2e1b-0f6d-4c1e-9b1a-2f3e4d5c6b7a, 40960\n\
             4243, GPU-5a4c2e1b-0f6d-4c1e-9b1a-2f3e4d5c6b7a, [N/A]\n",
        );
        assert_eq!(apps[0].0, "GPU-5a4c2e1b-0f6d-4c1e-9b1a-2f3e4d5c6b7a");
        assert_eq!(apps[0].1.pid, 4242);
        assert_eq!(apps[0].1.used_memory_bytes, Some(40960 * 1024 * 1024));
        assert_eq!(apps[1].1.used_memory_bytes, None);
    }
}
