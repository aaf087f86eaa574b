//! A run's open files (`.log`, `.idx`, `.sys`, and a held run's `.pos`), and the
//! daemon-wide budget of them.
//!
//! A live run needs its files only while something is written or read, yet a thousand
//! quiet runs would each keep four descriptors open for good, and a daemon under
//! `ulimit -n 1024` could not start its five hundredth task. So a run's files are a
//! [`RunFiles`] that opens them on first use and may be closed again by the budget:
//! when more sets are open than the budget allows, the one used least recently is
//! closed, and it is opened again, by path, the next time its run writes or a follower
//! reads it.
//!
//! Invariants:
//! - an I/O call works on an `Arc<Open>` taken out of the set, never under a lock, and a
//!   set closed meanwhile keeps its descriptors until that call is done;
//! - locks are taken in one order: the budget, then one set's slot; a slot's lock is
//!   never held while the budget's is taken;
//! - the budget counts sets, not descriptors: a set holds at most four.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The descriptors of one run's files, while they are open.
pub struct Open {
    pub log: File,
    pub idx: File,
    pub sys: File,
    /// The checkpoint file, for a run whose source can hand its bytes again.
    pub pos: Option<File>,
}

/// One run's files: where they are, whether they are opened for writing, and the open
/// descriptors when they are.
pub struct RunFiles {
    pub log_path: PathBuf,
    idx_path: PathBuf,
    sys_path: PathBuf,
    pos_path: PathBuf,
    writable: bool,
    slot: Arc<Slot>,
    id: u64,
    budget: &'static Mutex<Budget>,
}

/// What the budget sees of a set.
struct Slot {
    open: Mutex<Option<Arc<Open>>>,
    filled: AtomicBool,
    used: AtomicU64,
    with_pos: AtomicBool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Open>>> {
        // Every update under this lock is one assignment: a poisoned lock is still whole.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the descriptors out (they close when the last call using them is done).
    fn take(&self) -> Option<Arc<Open>> {
        let mut open = self.lock();
        self.filled.store(false, Ordering::Release);
        open.take()
    }
}

pub struct Budget {
    /// Most sets open at once.
    cap: usize,
    open: usize,
    next_id: u64,
    slots: BTreeMap<u64, Arc<Slot>>,
}

impl Budget {
    const fn new(cap: usize) -> Budget {
        Budget {
            cap,
            open: 0,
            next_id: 0,
            slots: BTreeMap::new(),
        }
    }
}

/// The daemon's budget; unlimited until [`set_budget`].
static BUDGET: Mutex<Budget> = Mutex::new(Budget::new(usize::MAX));

/// Uses of sets, in order: what was used least recently has the smallest tick.
static TICK: AtomicU64 = AtomicU64::new(0);

fn lock(b: &'static Mutex<Budget>) -> MutexGuard<'static, Budget> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn budget() -> MutexGuard<'static, Budget> {
    lock(&BUDGET)
}

/// Sets how many runs may have their files open at once (at least 8).
pub fn set_budget(sets: usize) {
    budget().cap = sets.max(8);
}

/// The budget for a daemon allowed `nofile` descriptors: a quarter of them for run
/// files, at four a set. The rest are for the sockets of held runs and viewers, the
/// registry and the listener.
pub fn budget_for_limit(nofile: u64) -> usize {
    usize::try_from(nofile / 16).unwrap_or(usize::MAX)
}

/// Sets of files open now, across the daemon.
pub fn open_sets() -> usize {
    budget().open
}

/// The most sets the daemon may have open at once.
pub fn budget_cap() -> usize {
    budget().cap
}

impl RunFiles {
    /// The files of a run beside `log_path`, with `open` as their descriptors if the
    /// caller has them already (it just created the files).
    pub fn new(log_path: PathBuf, writable: bool, open: Option<Open>) -> RunFiles {
        RunFiles::new_in(&BUDGET, log_path, writable, open)
    }

    fn new_in(
        budget: &'static Mutex<Budget>,
        log_path: PathBuf,
        writable: bool,
        open: Option<Open>,
    ) -> RunFiles {
        let with_pos = open.as_ref().is_some_and(|o| o.pos.is_some());
        let filled = open.is_some();
        let slot = Arc::new(Slot {
            open: Mutex::new(open.map(Arc::new)),
            filled: AtomicBool::new(filled),
            used: AtomicU64::new(0),
            with_pos: AtomicBool::new(with_pos),
        });
        let id = {
            let mut b = lock(budget);
            b.next_id += 1;
            let id = b.next_id;
            b.slots.insert(id, slot.clone());
            id
        };
        let files = RunFiles {
            idx_path: log_path.with_extension("idx"),
            sys_path: log_path.with_extension("sys"),
            pos_path: log_path.with_extension("pos"),
            log_path,
            writable,
            slot,
            id,
            budget,
        };
        if filled {
            files.opened();
        }
        files
    }

    /// The open descriptors, opening the files first if the budget closed them.
    pub fn get(&self) -> std::io::Result<Arc<Open>> {
        if let Some(open) = self.slot.lock().as_ref() {
            let open = open.clone();
            self.touch();
            return Ok(open);
        }
        let fresh = Arc::new(self.open_files()?);
        let filled_here = {
            let mut slot = self.slot.lock();
            match slot.as_ref() {
                // Another caller opened them meanwhile: use theirs, ours close.
                Some(theirs) => return Ok(theirs.clone()),
                None => {
                    *slot = Some(fresh.clone());
                    self.slot.filled.store(true, Ordering::Release);
                    true
                }
            }
        };
        if filled_here {
            self.opened();
        }
        Ok(fresh)
    }

    /// From now on the set includes the checkpoint file (created if missing).
    pub fn keep_pos(&self) -> std::io::Result<Arc<Open>> {
        if !self.slot.with_pos.swap(true, Ordering::AcqRel) && self.slot.take().is_some() {
            self.closed(1);
        }
        self.get()
    }

    /// Closes the descriptors now (they are opened again when next needed).
    pub fn close(&self) {
        if self.slot.take().is_some() {
            self.closed(1);
        }
    }

    fn touch(&self) {
        let tick = TICK.fetch_add(1, Ordering::Relaxed);
        self.slot.used.store(tick, Ordering::Relaxed);
    }

    fn closed(&self, n: usize) {
        if n > 0 {
            let mut b = lock(self.budget);
            b.open = b.open.saturating_sub(n);
        }
    }

    /// Counts this set as open and closes the least recently used others while too
    /// many are.
    fn opened(&self) {
        self.touch();
        let victims: Vec<Arc<Slot>> = {
            let mut b = lock(self.budget);
            b.open += 1;
            let excess = b.open.saturating_sub(b.cap);
            if excess == 0 {
                Vec::new()
            } else {
                let mut candidates: Vec<(u64, &Arc<Slot>)> = b
                    .slots
                    .iter()
                    .filter(|(&id, s)| id != self.id && s.filled.load(Ordering::Acquire))
                    .map(|(_, s)| (s.used.load(Ordering::Relaxed), s))
                    .collect();
                candidates.sort_unstable_by_key(|(used, _)| *used);
                candidates
                    .into_iter()
                    .take(excess)
                    .map(|(_, s)| s.clone())
                    .collect()
            }
        };
        let n = victims.iter().filter(|s| s.take().is_some()).count();
        self.closed(n);
    }

    fn open_files(&self) -> std::io::Result<Open> {
        let open = |p: &Path| {
            if self.writable {
                OpenOptions::new().read(true).write(true).open(p)
            } else {
                File::open(p)
            }
        };
        let sys = match open(&self.sys_path) {
            Ok(f) => f,
            // An old run may have no notes file: it reads as empty.
            Err(_) if !self.writable => File::open("/dev/null")?,
            Err(e) => return Err(e),
        };
        let pos = if self.slot.with_pos.load(Ordering::Acquire) {
            Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(&self.pos_path)?,
            )
        } else {
            None
        };
        Ok(Open {
            log: open(&self.log_path)?,
            idx: open(&self.idx_path)?,
            sys,
            pos,
        })
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        let slot = lock(self.budget).slots.remove(&self.id);
        if slot.is_some_and(|s| s.take().is_some()) {
            self.closed(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(budget: &'static Mutex<Budget>, dir: &Path, name: &str) -> RunFiles {
        let log = dir.join(format!("{name}.log"));
        for ext in ["log", "idx", "sys"] {
            std::fs::write(log.with_extension(ext), b"").unwrap();
        }
        RunFiles::new_in(budget, log, true, None)
    }

    fn own_budget(cap: usize) -> &'static Mutex<Budget> {
        Box::leak(Box::new(Mutex::new(Budget::new(cap))))
    }

    fn fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn the_least_recently_used_sets_are_closed_beyond_the_budget_and_reopen_on_use() {
        let budget = own_budget(8);
        let dir = tempfile::tempdir().unwrap();
        let sets: Vec<RunFiles> = (0..20)
            .map(|i| make(budget, dir.path(), &format!("r{i}")))
            .collect();
        for s in &sets {
            s.get().unwrap();
        }
        let open = |s: &RunFiles| s.slot.filled.load(Ordering::Acquire);
        assert!(open(&sets[19]), "the newest set is open");
        assert!(!open(&sets[0]), "the oldest set was closed");
        assert_eq!(sets.iter().filter(|s| open(s)).count(), 8);
        assert_eq!(lock(budget).open, 8);
        // A closed set opens again when used, and writes land in the same file.
        let f = sets[0].get().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f.log, b"again\n", 0).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("r0.log")).unwrap(),
            b"again\n"
        );
        assert!(open(&sets[0]));
        assert_eq!(lock(budget).open, 8, "another set was closed for it");
        let before = fds();
        drop(f);
        drop(sets);
        assert!(fds() < before, "dropping the sets closes their files");
        assert_eq!(lock(budget).open, 0);
    }

    #[test]
    fn keeping_the_checkpoint_adds_the_pos_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = make(own_budget(8), dir.path(), "p");
        assert!(s.get().unwrap().pos.is_none());
        assert!(s.keep_pos().unwrap().pos.is_some());
        assert!(dir.path().join("p.pos").exists());
        s.close();
        assert!(
            s.get().unwrap().pos.is_some(),
            "reopened with its checkpoint file"
        );
    }
}
