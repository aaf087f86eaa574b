//! `corral gpu [HOST]`: the daemon machine's GPUs (`/api/v1/gpu`), each with the processes
//! on it and the corral task and run each belongs to; with `user@host`, that machine's,
//! read by the daemon over SSH. Without a GPU or driver it says so and succeeds: no GPU
//! is an answer, not a failure.

use super::table;
use corral_client::wire::{Gpu, GpuSnapshot};
use corral_client::Client;
use std::io::Write;

pub const AFTER_HELP: &str = "\
The daemon reads the GPUs through NVIDIA's driver library (NVML), else nvidia-smi, at most \
once a second. A process belongs to a task when it is the task's run, in the run's process \
group, or started by it, or when it runs in the container of a task's run (`corral run \
--image`); the CONTAINER column shows the container a process runs in. With HOST (user@host, \
or a host of the daemon's ssh config), the daemon runs nvidia-smi there over its SSH \
connection to that host.\n\nExamples:\n  corral gpu\n  corral gpu --json\n  corral gpu gpu@10.0.0.7";

#[derive(clap::Args, Debug)]
pub struct GpuArgs {
    /// Another machine (user@host), reached by the daemon over SSH.
    pub host: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn gpu(c: &Client, a: GpuArgs) -> anyhow::Result<i32> {
    let snap = match &a.host {
        Some(h) => c.gpu_of(h).await?,
        None => c.gpu().await?,
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&snap)?)?;
    } else {
        print(&mut out, &snap)?;
    }
    Ok(0)
}

fn clean(t: &str) -> String {
    corral_core::term::sanitize(t).into_owned()
}

/// Bytes as GiB (or MiB below one GiB).
fn size(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// One block per GPU: a summary line, then its processes as a table; every text from
/// the daemon goes through the terminal sanitiser.
fn print(out: &mut impl Write, s: &GpuSnapshot) -> std::io::Result<()> {
    if !s.available {
        let why = s
            .reason
            .as_deref()
            .unwrap_or("no NVIDIA GPU or driver found");
        return writeln!(out, "{}", clean(why));
    }
    if s.gpus.is_empty() {
        return writeln!(out, "the driver reports no GPUs");
    }
    for (i, g) in s.gpus.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        block(out, g)?;
    }
    Ok(())
}

fn block(out: &mut impl Write, g: &Gpu) -> std::io::Result<()> {
    writeln!(
        out,
        "GPU {}  {}  {}",
        g.index,
        table::opt(g.name.as_deref().map(clean)),
        table::opt(g.uuid.as_deref().map(clean)),
    )?;
    writeln!(
        out,
        "  utilization {}  memory {} / {}  temperature {}  power {}",
        table::opt(g.utilization_pct.map(|u| format!("{u}%"))),
        size(g.memory_used_bytes),
        size(g.memory_total_bytes),
        table::opt(g.temperature_c.map(|t| format!("{t} C"))),
        table::opt(g.power_w.map(|w| format!("{w:.0} W"))),
    )?;
    if g.processes.is_empty() {
        return writeln!(out, "  no processes");
    }
    // A CONTAINER column when a process runs in one (the short id, as `docker ps`).
    let containers = g.processes.iter().any(|p| p.container.is_some());
    let rows: Vec<Vec<String>> = g
        .processes
        .iter()
        .map(|p| {
            let mut row = vec![
                format!("  {}", p.pid),
                table::opt(p.task.as_deref().map(clean)),
                table::opt(p.run_id.as_deref().map(clean)),
            ];
            if containers {
                row.push(table::opt(
                    p.container.as_deref().map(|c| clean(&c[..c.len().min(12)])),
                ));
            }
            row.push(size(p.used_memory_bytes));
            row
        })
        .collect();
    let headers: &[&str] = if containers {
        &["  PID", "TASK", "RUN", "CONTAINER", "MEMORY"]
    } else {
        &["  PID", "TASK", "RUN", "MEMORY"]
    };
    table::print(out, headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_client::wire::GpuProcess;

    fn text(s: &GpuSnapshot) -> String {
        let mut v = Vec::new();
        print(&mut v, s).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn no_gpu_prints_the_reason() {
        let s = GpuSnapshot {
            available: false,
            reason: Some("no NVIDIA GPU or driver found (libnvidia-ml.so.1 \x1b[31m)".into()),
            ..Default::default()
        };
        let t = text(&s);
        assert!(
            t.starts_with("no NVIDIA GPU or driver found (libnvidia-ml.so.1 "),
            "{t}"
        );
        assert!(!t.contains('\x1b'), "{t}");
    }

    #[test]
    fn a_gpu_shows_its_processes_with_task_and_run() {
        let s = GpuSnapshot {
            available: true,
            gpus: vec![Gpu {
                index: 0,
                name: Some("NVIDIA H100 80GB HBM3".into()),
                uuid: Some("GPU-5a4c".into()),
                utilization_pct: Some(37),
                memory_used_bytes: Some(41235 << 20),
                memory_total_bytes: Some(81559 << 20),
                temperature_c: Some(54),
                power_w: Some(312.4),
                processes: vec![
                    GpuProcess {
                        pid: 4242,
                        used_memory_bytes: Some(40 << 30),
                        task: Some("llama\x1b]0;x\x07".into()),
                        run_id: Some("1a2b3c4d".into()),
                        container: Some("5829187b80f3".to_string() + &"0".repeat(52)),
                        sm_utilization_pct: None,
                    },
                    GpuProcess {
                        pid: 99,
                        used_memory_bytes: None,
                        task: None,
                        run_id: None,
                        container: None,
                        sm_utilization_pct: None,
                    },
                ],
            }],
            ..Default::default()
        };
        let t = text(&s);
        assert!(t.contains("GPU 0  NVIDIA H100 80GB HBM3  GPU-5a4c"), "{t}");
        assert!(
            t.contains(
                "utilization 37%  memory 40.3 GiB / 79.6 GiB  temperature 54 C  power 312 W"
            ),
            "{t}"
        );
        assert!(t.contains("PID"), "{t}");
        assert!(t.contains("TASK") && t.contains("RUN"), "{t}");
        assert!(
            t.contains("CONTAINER") && t.contains("5829187b80f3 ") && !t.contains("5829187b80f30"),
            "{t}"
        );
        assert!(t.contains("1a2b3c4d") && t.contains("40.0 GiB"), "{t}");
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t}");
    }
}
