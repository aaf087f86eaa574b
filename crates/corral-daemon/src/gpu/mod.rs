//! The GPUs of this machine: the one place GPU state comes from (the API's `/gpu`,
//! `/metrics`, diagnostics bundles).
//!
//! - [`nvml`]: NVIDIA's management library, opened at run time (`libnvidia-ml.so.1`), so
//!   corral builds and runs on machines without it;
//! - [`smi`]: `nvidia-smi`'s CSV, the fallback where the library cannot be opened but the
//!   program exists;
//! - [`remote`]: another machine's GPUs, from `nvidia-smi` run there over SSH
//!   ([`crate::ssh`]), read by the same parser;
//! - [`Gpus`]: the cache in front of them. **Invariant:** the driver is asked at most once
//!   per [`MAX_AGE`], whoever asks and however many ask at once: concurrent callers wait
//!   for the one refresh in flight and share its answer.
//! - [`attribute`]: which corral task and run a GPU process belongs to (its pid is the
//!   run's, or in the run's process group, or a descendant), from `/proc`. This module
//!   knows nothing of the supervisor; the caller passes the runs' pids.
//! - [`attribute_containers`]: the container a GPU process runs in, from the container
//!   id its cgroup path names (`/proc/<pid>/cgroup`: Docker's `docker-<id>.scope` or
//!   `/docker/<id>`, Podman's `libpod-<id>`), and the task and run of a container run
//!   corral started (the caller passes the runs' container ids). Processes in a container
//!   descend from the engine's shim, not from corral, so the pid walk cannot find them.
//!
//! A value one call could not read for one GPU is null in the answer, never an error of
//! the whole answer; no library or driver at all is `available: false` with the reason.

pub mod nvml;
pub mod remote;
pub mod smi;
pub mod watch;

use corral_client::wire::GpuSnapshot;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How old a snapshot may be before a caller makes the next one.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Where snapshots come from: the driver in production, a counting fake in tests.
pub trait Source: Send + Sync + 'static {
    /// Reads every GPU now (blocking; called off the async threads). Never fails: what
    /// cannot be read is null, or `available: false` with the reason.
    fn read(&self) -> GpuSnapshot;
}

/// The production source: NVML when the library opens, else `nvidia-smi` when it runs,
/// else why neither did.
#[derive(Default)]
pub struct System {
    /// Read with `nvidia-smi` only, never NVML (`CORRAL_GPU_SOURCE=nvidia-smi`): for a
    /// driver whose library misbehaves, and for tests that stand in for `nvidia-smi`.
    smi_only: bool,
    /// The opened library, kept for the daemon's life once it opened (NVML is
    /// thread-safe); until then each read tries again, so a driver installed later is
    /// found.
    nvml: Mutex<Option<Arc<nvml::Nvml>>>,
}

impl Source for System {
    fn read(&self) -> GpuSnapshot {
        let lib = if self.smi_only {
            Err("NVML not used: CORRAL_GPU_SOURCE=nvidia-smi".to_string())
        } else {
            let mut held = self.nvml.lock().unwrap_or_else(|e| e.into_inner());
            match &*held {
                Some(l) => Ok(l.clone()),
                None => match nvml::Nvml::open() {
                    Ok(l) => {
                        let l = Arc::new(l);
                        *held = Some(l.clone());
                        Ok(l)
                    }
                    Err(e) => Err(e),
                },
            }
        };
        let taken_at = crate::util::unix_now();
        match lib {
            Ok(l) => match l.read() {
                Ok(gpus) => GpuSnapshot {
                    available: true,
                    reason: None,
                    source: Some("nvml".into()),
                    taken_at,
                    gpus,
                },
                Err(e) => unavailable(taken_at, &e),
            },
            Err(e) => match smi::read() {
                Ok(gpus) => GpuSnapshot {
                    available: true,
                    reason: None,
                    source: Some("nvidia-smi".into()),
                    taken_at,
                    gpus,
                },
                Err(smi::SmiError::NotInstalled) => unavailable(taken_at, &e),
                Err(other) => unavailable(taken_at, &format!("{e}; {other}")),
            },
        }
    }
}

fn unavailable(taken_at: f64, why: &str) -> GpuSnapshot {
    GpuSnapshot {
        available: false,
        reason: Some(format!("no NVIDIA GPU or driver found ({why})")),
        source: None,
        taken_at,
        gpus: Vec::new(),
    }
}

/// The cached snapshots of one source.
pub struct Gpus {
    source: Arc<dyn Source>,
    max_age: Duration,
    /// Held across a refresh, so that callers arriving meanwhile wait for it and share it.
    refresh: tokio::sync::Mutex<()>,
    last: Mutex<Option<(Instant, Arc<GpuSnapshot>)>>,
}

impl Gpus {
    pub fn new(source: Arc<dyn Source>, max_age: Duration) -> Gpus {
        Gpus {
            source,
            max_age,
            refresh: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
        }
    }

    /// The daemon's one instance, on this machine's driver.
    pub fn shared() -> Arc<Gpus> {
        static SHARED: OnceLock<Arc<Gpus>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let system = System {
                    smi_only: std::env::var("CORRAL_GPU_SOURCE").is_ok_and(|s| s == "nvidia-smi"),
                    ..System::default()
                };
                Arc::new(Gpus::new(Arc::new(system), MAX_AGE))
            })
            .clone()
    }

    fn fresh(&self) -> Option<Arc<GpuSnapshot>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < self.max_age)
            .map(|(_, s)| s.clone())
    }

    /// A snapshot at most `max_age` old: the cached one, or a new one read now.
    pub async fn snapshot(&self) -> Arc<GpuSnapshot> {
        if let Some(s) = self.fresh() {
            return s;
        }
        let _one = self.refresh.lock().await;
        // Whoever held the lock before us may have just refreshed.
        if let Some(s) = self.fresh() {
            return s;
        }
        let source = self.source.clone();
        let snap = match tokio::task::spawn_blocking(move || source.read()).await {
            Ok(s) => s,
            Err(e) => unavailable(
                crate::util::unix_now(),
                &format!("reading the GPUs failed: {e}"),
            ),
        };
        let snap = Arc::new(snap);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), snap.clone()));
        snap
    }

    /// The last snapshot taken, however old (for `/metrics`, which refreshes first).
    pub fn latest(&self) -> Option<Arc<GpuSnapshot>> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, s)| s.clone())
    }
}

/// The snapshot with every process's task and run, from the supervisor's runs now.
pub fn attributed(snap: &GpuSnapshot, sup: &crate::supervisor::Supervisor) -> GpuSnapshot {
    let mut out = snap.clone();
    if out.gpus.iter().any(|g| !g.processes.is_empty()) {
        let runs: Vec<RunPid> = sup
            .list()
            .into_iter()
            .filter_map(|t| {
                Some(RunPid {
                    pid: t.pid?,
                    task: t.name,
                    run_id: t.run_id,
                })
            })
            .collect();
        attribute(&mut out, &runs, &proc_stat);
        let containers: Vec<RunContainer> = sup
            .list()
            .into_iter()
            .filter_map(|t| {
                Some(RunContainer {
                    container: t.container_id?,
                    task: t.name,
                    run_id: t.run_id,
                })
            })
            .collect();
        attribute_containers(&mut out, &containers, &proc_container);
    }
    out
}

/// A run of a corral task, by the pid of its process.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPid {
    pub pid: u32,
    pub task: String,
    pub run_id: Option<String>,
}

/// A process's parent and process group, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub ppid: u32,
    pub pgid: u32,
}

/// Reads `/proc/<pid>/stat`'s fields 4 and 5 (ppid, pgrp). The command name (field 2)
/// may hold spaces and parentheses, so the fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some(Stat { ppid, pgid })
}

/// This machine's `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// How far up the parent chain a process is followed.
const MAX_ANCESTORS: usize = 64;

/// The run `pid` belongs to: the run whose pid it is, or whose process group it (or an
/// ancestor) is in, or of which it is a descendant. `stat` reads a process's parent and
/// group (`proc_stat` on this machine).
pub fn owner<'a>(
    pid: u32,
    runs: &'a [RunPid],
    stat: &dyn Fn(u32) -> Option<Stat>,
) -> Option<&'a RunPid> {
    let run_of = |p: u32| runs.iter().find(|r| r.pid == p);
    let mut p = pid;
    for _ in 0..MAX_ANCESTORS {
        if let Some(r) = run_of(p) {
            return Some(r);
        }
        let s = stat(p)?;
        // Runs are started in a process group of their own, led by the run's process.
        if let Some(r) = run_of(s.pgid) {
            return Some(r);
        }
        if s.ppid <= 1 || s.ppid == p {
            return None;
        }
        p = s.ppid;
    }
    None
}

/// Fills in the task and run of every process of `snap`.
pub fn attribute(snap: &mut GpuSnapshot, runs: &[RunPid], stat: &dyn Fn(u32) -> Option<Stat>) {
    for p in snap.gpus.iter_mut().flat_map(|g| g.processes.iter_mut()) {
        if let Some(r) = owner(p.pid, runs, stat) {
            p.task = Some(r.task.clone());
            p.run_id = r.run_id.clone();
        }
    }
}

/// A run of a corral task that is a container, by the container's full id.
#[derive(Debug, Clone, PartialEq)]
pub struct RunContainer {
    pub container: String,
    pub task: String,
    pub run_id: Option<String>,
}

/// The full container id a cgroup file (`/proc/<pid>/cgroup`) names: the first run of
/// exactly 64 hex digits in a path. `None` for a process in no container.
pub fn container_of_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        // `hierarchy-id:controllers:path`; the path may itself hold colons.
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        let b = path.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_hexdigit() {
                let start = i;
                while i < b.len() && b[i].is_ascii_hexdigit() {
                    i += 1;
                }
                if i - start == 64 {
                    return Some(path[start..i].to_ascii_lowercase());
                }
            } else {
                i += 1;
            }
        }
    }
    None
}

/// This machine's `/proc/<pid>/cgroup`, as [`container_of_cgroup`] reads it.
pub fn proc_container(pid: u32) -> Option<String> {
    container_of_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// Fills in the container of every process of `snap` that runs in one (`container`
/// reads it, [`proc_container`] on this machine), and the task and run of those in a
/// container run of corral's that no other rule attributed.
pub fn attribute_containers(
    snap: &mut GpuSnapshot,
    runs: &[RunContainer],
    container: &dyn Fn(u32) -> Option<String>,
) {
    for p in snap.gpus.iter_mut().flat_map(|g| g.processes.iter_mut()) {
        let Some(id) = container(p.pid) else { continue };
        if p.task.is_none() {
            if let Some(r) = runs.iter().find(|r| r.container == id) {
                p.task = Some(r.task.clone());
                p.run_id = r.run_id.clone();
            }
        }
        p.container = Some(id);
    }
}

/// SM utilization per task, run and GPU index (the sum over the run's processes there,
/// at most 100), of an attributed snapshot; processes of no task, or with no sample, are
/// left out.
pub fn task_utilization(snap: &GpuSnapshot) -> Vec<(String, String, u32, u32)> {
    let mut sum: std::collections::BTreeMap<(String, String, u32), u32> = Default::default();
    for g in &snap.gpus {
        for p in &g.processes {
            if let (Some(task), Some(sm)) = (&p.task, p.sm_utilization_pct) {
                let key = (task.clone(), p.run_id.clone().unwrap_or_default(), g.index);
                let e = sum.entry(key).or_default();
                *e = (*e + sm).min(100);
            }
        }
    }
    sum.into_iter().map(|((t, r, g), u)| (t, r, g, u)).collect()
}

/// GPU memory per task, run and GPU index (the sum over the run's processes there),
/// of an attributed snapshot; processes of no task, or of unknown memory, are left out.
pub fn task_memory(snap: &GpuSnapshot) -> Vec<(String, String, u32, u64)> {
    let mut sum: std::collections::BTreeMap<(String, String, u32), u64> = Default::default();
    for g in &snap.gpus {
        for p in &g.processes {
            if let (Some(task), Some(bytes)) = (&p.task, p.used_memory_bytes) {
                let key = (task.clone(), p.run_id.clone().unwrap_or_default(), g.index);
                let e = sum.entry(key).or_default();
                *e = e.saturating_add(bytes);
            }
        }
    }
    sum.into_iter().map(|((t, r, g), b)| (t, r, g, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_client::wire::{Gpu, GpuProcess};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn stat_fields_are_read_past_a_hostile_command_name() {
        assert_eq!(
            parse_stat("4242 (python3) S 4200 4100 4100 0 -1 4194560 …"),
            Some(Stat {
                ppid: 4200,
                pgid: 4100
            })
        );
        assert_eq!(
            parse_stat("77 (a) b) (c d) R 1 77 77 0"),
            Some(Stat { ppid: 1, pgid: 77 })
        );
        assert_eq!(parse_stat("77 (truncated"), None);
        assert_eq!(parse_stat("77 (x) S notanumber 1"), None);
    }

    fn runs() -> Vec<RunPid> {
        vec![
            RunPid {
                pid: 100,
                task: "llama".into(),
                run_id: Some("r100".into()),
            },
            RunPid {
                pid: 200,
                task: "train".into(),
                run_id: Some("r200".into()),
            },
        ]
    }

    /// A fake process table: pid → (ppid, pgid).
    fn table(rows: &[(u32, u32, u32)]) -> impl Fn(u32) -> Option<Stat> {
        let t: HashMap<u32, Stat> = rows
            .iter()
            .map(|&(pid, ppid, pgid)| (pid, Stat { ppid, pgid }))
            .collect();
        move |pid| t.get(&pid).copied()
    }

    #[test]
    fn a_process_belongs_to_its_run_by_pid_group_or_ancestry() {
        let runs = runs();
        let stat = table(&[
            (100, 50, 100),  // the llama run itself
            (101, 100, 100), // its child, same group
            (300, 250, 200), // in train's group, parent not a run
            (250, 1, 200),
            (400, 201, 400), // own group, a grandchild of train
            (201, 200, 201),
            (500, 1, 500),   // nobody's
            (600, 600, 600), // its own parent: no loop
        ]);
        let who = |pid| owner(pid, &runs, &stat).map(|r| r.task.as_str());
        assert_eq!(who(100), Some("llama"));
        assert_eq!(who(101), Some("llama"));
        assert_eq!(who(300), Some("train"));
        assert_eq!(who(400), Some("train"));
        assert_eq!(who(500), None);
        assert_eq!(who(600), None);
        assert_eq!(who(999), None, "a process that is gone");
    }

    #[test]
    fn a_parent_cycle_ends() {
        let stat = table(&[(10, 11, 10), (11, 10, 11)]);
        assert_eq!(owner(10, &runs(), &stat), None);
    }

    #[test]
    fn attribute_fills_task_and_run() {
        let mut snap = GpuSnapshot {
            available: true,
            gpus: vec![Gpu {
                processes: vec![
                    GpuProcess {
                        pid: 101,
                        ..Default::default()
                    },
                    GpuProcess {
                        pid: 500,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        attribute(
            &mut snap,
            &runs(),
            &table(&[(101, 100, 100), (500, 1, 500)]),
        );
        let p = &snap.gpus[0].processes;
        assert_eq!(p[0].task.as_deref(), Some("llama"));
        assert_eq!(p[0].run_id.as_deref(), Some("r100"));
        assert_eq!(p[1].task, None);
    }

    #[test]
    fn a_cgroup_path_names_the_container() {
        let id = "5829187b80f3a1c2d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8091a2b3c";
        for text in [
            // Podman, cgroupfs (cgroup v1, many hierarchies).
            format!("12:pids:/libpod_parent/libpod-{id}\n11:memory:/libpod_parent/libpod-{id}\n"),
            // Podman with systemd, cgroup v2.
            format!("0::/machine.slice/libpod-{id}.scope/container\n"),
            // Docker, systemd and cgroupfs.
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("4:memory:/docker/{id}\n"),
        ] {
            assert_eq!(container_of_cgroup(&text).as_deref(), Some(id), "{text}");
        }
        for text in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "4:memory:/process_api/21efb9b8e0b04b8e48e7dcb4ba544870\n",
            "",
        ] {
            assert_eq!(container_of_cgroup(text), None, "{text}");
        }
    }

    #[test]
    fn a_process_in_a_container_run_belongs_to_its_task() {
        let id = "a".repeat(64);
        let mut snap = GpuSnapshot {
            available: true,
            gpus: vec![Gpu {
                processes: vec![
                    GpuProcess {
                        pid: 7,
                        ..Default::default()
                    },
                    GpuProcess {
                        pid: 8,
                        ..Default::default()
                    },
                    GpuProcess {
                        pid: 9,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let runs = [RunContainer {
            container: id.clone(),
            task: "srv".into(),
            run_id: Some("r1".into()),
        }];
        let other = "b".repeat(64);
        attribute_containers(&mut snap, &runs, &|pid| match pid {
            7 => Some(id.clone()),
            8 => Some(other.clone()),
            _ => None,
        });
        let p = &snap.gpus[0].processes;
        assert_eq!(
            (p[0].task.as_deref(), p[0].run_id.as_deref()),
            (Some("srv"), Some("r1"))
        );
        assert_eq!(p[0].container.as_deref(), Some(id.as_str()));
        // Another container: shown, of no task.
        assert_eq!(
            (p[1].task.as_deref(), p[1].container.as_deref()),
            (None, Some(other.as_str()))
        );
        assert_eq!(
            (p[2].task.as_deref(), p[2].container.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn task_memory_sums_a_runs_processes_per_gpu() {
        let p = |pid, task: Option<&str>, mem| GpuProcess {
            pid,
            used_memory_bytes: mem,
            task: task.map(String::from),
            run_id: task.map(|t| format!("r-{t}")),
            container: None,
            sm_utilization_pct: mem.map(|m: u64| (m / 2) as u32),
        };
        let snap = GpuSnapshot {
            available: true,
            gpus: vec![
                Gpu {
                    index: 0,
                    processes: vec![
                        p(1, Some("llama"), Some(100)),
                        p(2, Some("llama"), Some(50)),
                        p(3, None, Some(7)),
                        p(4, Some("train"), None),
                    ],
                    ..Default::default()
                },
                Gpu {
                    index: 1,
                    processes: vec![p(1, Some("llama"), Some(10))],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            task_memory(&snap),
            vec![
                ("llama".into(), "r-llama".into(), 0, 150),
                ("llama".into(), "r-llama".into(), 1, 10),
            ]
        );
        // Utilization: summed over a run's processes on a GPU, at most 100.
        assert_eq!(
            task_utilization(&snap),
            vec![
                ("llama".into(), "r-llama".into(), 0, 75),
                ("llama".into(), "r-llama".into(), 1, 5),
            ]
        );
    }

    #[test]
    fn this_process_stat_is_readable() {
        let me = std::process::id();
        let s = proc_stat(me).expect("/proc/self/stat");
        assert!(s.ppid > 0);
    }

    struct Counting(AtomicUsize);
    impl Source for Counting {
        fn read(&self) -> GpuSnapshot {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            GpuSnapshot {
                taken_at: n as f64,
                ..Default::default()
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn callers_within_max_age_reach_the_source_once() {
        let src = Arc::new(Counting(AtomicUsize::new(0)));
        let gpus = Arc::new(Gpus::new(src.clone(), Duration::from_secs(3600)));
        let a = gpus.snapshot().await;
        let b = gpus.snapshot().await;
        assert_eq!(src.0.load(Ordering::SeqCst), 1);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&gpus.latest().unwrap(), &a));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_one_refresh() {
        let src = Arc::new(Counting(AtomicUsize::new(0)));
        let gpus = Arc::new(Gpus::new(src.clone(), Duration::from_secs(3600)));
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let g = gpus.clone();
                tokio::spawn(async move { g.snapshot().await })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(src.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_snapshot_is_read_again() {
        let src = Arc::new(Counting(AtomicUsize::new(0)));
        let gpus = Gpus::new(src.clone(), Duration::ZERO);
        assert_eq!(gpus.latest(), None);
        gpus.snapshot().await;
        let second = gpus.snapshot().await;
        assert_eq!(src.0.load(Ordering::SeqCst), 2);
        assert_eq!(second.taken_at, 1.0);
    }

    #[tokio::test]
    async fn without_a_driver_the_answer_says_why() {
        // This machine may or may not have a GPU; either answer is well formed, and an
        // unavailable one names what was missing.
        let snap = Gpus::new(Arc::new(System::default()), MAX_AGE)
            .snapshot()
            .await;
        if snap.available {
            assert!(!snap.gpus.is_empty() || snap.source.is_some(), "{snap:?}");
        } else {
            let why = snap.reason.as_deref().unwrap();
            assert!(why.starts_with("no NVIDIA GPU or driver found ("), "{why}");
            assert!(why.contains("libnvidia-ml.so.1"), "{why}");
        }
    }
}
