//! What the machine looked like: memory, load and the log volume's free space (the GPUs
//! come from `crate::gpu`).

use serde_json::{json, Map, Value};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_has_memory_load_and_the_log_volume() {
        let dir = tempfile::tempdir().unwrap();
        let v = snapshot(dir.path());
        assert!(v["memory_kib"]["MemTotal"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["load"].as_array().unwrap().len(), 3, "{v}");
        assert!(v["log_volume"]["total_bytes"].as_u64().unwrap() > 0, "{v}");
    }
}
