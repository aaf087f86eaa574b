//! What the machine looked like: memory, load, the log volume's free space, and the GPUs
//! as `nvidia-smi` reports them.

use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long `nvidia-smi` may take before the snapshot goes without it.
const SMI_TIMEOUT: Duration = Duration::from_secs(5);

/// Memory and swap (`/proc/meminfo`, in KiB), load averages, CPUs, uptime, and the
/// free and total bytes of the volume that holds `log_dir`.
pub fn snapshot(log_dir: &Path) -> Value {
    let mut v = Map::new();
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        v.insert("memory_kib".into(), Value::Object(meminfo(&text)));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<f64> = text
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        v.insert("load".into(), json!(load));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/uptime") {
        if let Some(up) = text
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
        {
            v.insert("uptime_s".into(), json!(up));
        }
    }
    v.insert(
        "cpus".into(),
        json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
    );
    v.insert("log_volume".into(), disk(log_dir));
    Value::Object(v)
}

fn meminfo(text: &str) -> Map<String, Value> {
    let wanted = [
        "MemTotal",
        "MemAvailable",
        "MemFree",
        "SwapTotal",
        "SwapFree",
    ];
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            wanted.contains(&k).then_some(())?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), json!(kib)))
        })
        .collect()
}

fn disk(dir: &Path) -> Value {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return json!({"error": "the path holds a NUL byte"});
    };
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return json!({"path": dir, "error": std::io::Error::last_os_error().to_string()});
    }
    let bs = st.f_frsize as u64;
    json!({
        "path": dir,
        "free_bytes": st.f_bavail as u64 * bs,
        "total_bytes": st.f_blocks as u64 * bs,
    })
}

/// The GPUs and the processes on them, as `nvidia-smi` reports them; without it, why.
pub fn gpu_snapshot() -> Value {
    let gpus = match smi(&[
        "--query-gpu=index,name,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw",
        "--format=csv,noheader,nounits",
    ]) {
        Ok(out) => parse_gpus(&out),
        Err(why) => return json!({"available": false, "error": why}),
    };
    let apps = smi(&[
        "--query-compute-apps=pid,gpu_uuid,used_memory",
        "--format=csv,noheader,nounits",
    ])
    .map(|out| parse_apps(&out))
    .unwrap_or_default();
    json!({"available": true, "gpus": gpus, "processes": apps})
}

fn smi(args: &[&str]) -> Result<String, String> {
    let mut child = std::process::Command::new("nvidia-smi")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "no NVIDIA GPU or driver found (nvidia-smi is not installed)".to_string()
            } else {
                format!("cannot run nvidia-smi: {e}")
            }
        })?;
    let deadline = Instant::now() + SMI_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nvidia-smi did not answer within {}s",
                    SMI_TIMEOUT.as_secs()
                ));
            }
            // A bounded wait for a child we started, in a blocking thread of its own.
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for nvidia-smi: {e}")),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let said = String::from_utf8_lossy(&out.stdout);
        return Err(format!(
            "no NVIDIA GPU or driver found: nvidia-smi says {}",
            corral_core::term::sanitize(format!("{} {}", said.trim(), err.trim()).trim())
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A number from `nvidia-smi`'s CSV, or null for `[N/A]` and the like.
fn num(s: &str) -> Value {
    s.trim().parse::<f64>().map_or(Value::Null, |x| json!(x))
}

/// `index, name, uuid, utilization %, memory used MiB, memory total MiB, temperature C,
/// power W` lines.
pub fn parse_gpus(csv: &str) -> Vec<Value> {
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f.len() >= 8).then(|| {
                json!({
                    "index": num(f[0]),
                    "name": f[1],
                    "uuid": f[2],
                    "utilization_pct": num(f[3]),
                    "memory_used_mib": num(f[4]),
                    "memory_total_mib": num(f[5]),
                    "temperature_c": num(f[6]),
                    "power_w": num(f[7]),
                })
            })
        })
        .collect()
}

/// `pid, gpu uuid, used memory MiB` lines.
pub fn parse_apps(csv: &str) -> Vec<Value> {
    csv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f.len() >= 3)
                .then(|| json!({"pid": num(f[0]), "gpu_uuid": f[1], "used_memory_mib": num(f[2])}))
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
             1, NVIDIA H100 80GB HBM3, GPU-6b5d3f2c-1a7e-5d2f-8c2b-3a4f5e6d7c8b, 0, 4, 81559, 31, [N/A]\n",
        );
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0]["name"], "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0]["memory_used_mib"], 41235.0);
        assert_eq!(gpus[0]["power_w"], 312.45);
        assert_eq!(gpus[1]["power_w"], Value::Null);
        let apps = parse_apps("4242, GPU-5a4c2e1b-0f6d-4c1e-9b1a-2f3e4d5c6b7a, 40960\n");
        assert_eq!(apps[0]["pid"], 4242.0);
        assert_eq!(apps[0]["used_memory_mib"], 40960.0);
    }

    #[test]
    fn the_snapshot_has_memory_load_and_the_log_volume() {
        let dir = tempfile::tempdir().unwrap();
        let v = snapshot(dir.path());
        assert!(v["memory_kib"]["MemTotal"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["load"].as_array().unwrap().len(), 3, "{v}");
        assert!(v["log_volume"]["total_bytes"].as_u64().unwrap() > 0, "{v}");
    }
}
