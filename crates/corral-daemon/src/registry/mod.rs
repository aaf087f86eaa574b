//! The run registry: SQLite in WAL mode, one file `<home>/registry.db`.
//!
//! Schema (versioned with `PRAGMA user_version`; each migration keeps existing rows):
//! - v1: `tasks(name, spec JSON, created_at, updated_at)` and
//!   `runs(run_id, task, attempt, status, pid, pid_start, started_at, ended_at, exit_code,
//!   signal, log_path, error_message, lines, bytes)`;
//! - v2: `runs` gains `truncated`, `gap_from`, `gap_to`, `gap_off_from`, `gap_off_to`
//!   (the range dropped by the log size cap);
//! - v3: `tasks` gains `desired` (`run` or `stop`): whether the task should be running,
//!   which a daemon that starts restores;
//! - v4: `runs` gains `container_id`: the container a run is (the `container` kind).
//!
//! Run `status` is one of `running, succeeded, failed, killed, lost`. Every write is one
//! statement or one transaction, so a crash cannot leave a half-written run.

use corral_client::wire::RunInfo;
use corral_core::policy::RunStatus;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("opening the registry {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the registry {path} has schema version {found}, newer than this corral ({known}); upgrade corral")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("registry query failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

type Result<T> = std::result::Result<T, RegistryError>;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE tasks (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        pid INTEGER,
        pid_start INTEGER,
        started_at REAL NOT NULL,
        ended_at REAL,
        exit_code INTEGER,
        signal INTEGER,
        log_path TEXT NOT NULL,
        error_message TEXT,
        lines INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_by_task ON runs(task, started_at);",
    // v2
    "ALTER TABLE runs ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN gap_from INTEGER;
    ALTER TABLE runs ADD COLUMN gap_to INTEGER;
    ALTER TABLE runs ADD COLUMN gap_off_from INTEGER;
    ALTER TABLE runs ADD COLUMN gap_off_to INTEGER;",
    // v3
    "ALTER TABLE tasks ADD COLUMN desired TEXT NOT NULL DEFAULT 'stop';",
    // v4
    "ALTER TABLE runs ADD COLUMN container_id TEXT;",
];

/// Whether a task should be running (kept across daemon restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Run,
    Stop,
}

impl Desired {
    fn as_str(self) -> &'static str {
        match self {
            Desired::Run => "run",
            Desired::Stop => "stop",
        }
    }
}

/// A row of `runs` (shown to clients as a [`RunInfo`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub task: String,
    pub attempt: i64,
    pub status: RunStatus,
    pub pid: Option<i64>,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub log_path: String,
    pub error_message: Option<String>,
    pub lines: i64,
    pub bytes: i64,
    pub truncated: bool,
    pub gap: Option<[i64; 4]>,
    /// The process's start time (clock ticks since boot), telling it from a reused pid.
    pub pid_start: Option<i64>,
    /// The container the run is, as the engine knows it.
    pub container_id: Option<String>,
}

impl From<RunRow> for RunInfo {
    fn from(r: RunRow) -> RunInfo {
        RunInfo {
            run_id: r.run_id,
            task: r.task,
            attempt: r.attempt,
            status: r.status,
            pid: r.pid,
            started_at: r.started_at,
            ended_at: r.ended_at,
            exit_code: r.exit_code,
            signal: r.signal,
            log_path: r.log_path,
            error_message: r.error_message,
            lines: r.lines,
            bytes: r.bytes,
            truncated: r.truncated,
            write_errors: 0,
            write_error: None,
            gap: r.gap,
            container_id: r.container_id,
        }
    }
}

/// How a run ended, for [`Registry::finish_run`].
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub ended_at: f64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error_message: Option<String>,
    pub lines: u64,
    pub bytes: u64,
    pub gap: Option<[u64; 4]>,
    /// Some of the run's log could not be written (it is truncated even without a gap).
    pub write_failed: bool,
}

pub struct Registry {
    conn: Mutex<Connection>,
}

/// Error messages are capped at 1000 characters (contract).
pub fn cap_message(s: &str) -> String {
    if s.chars().count() <= 1000 {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(999).collect();
        out.push('…');
        out
    }
}

impl Registry {
    pub fn open(path: &Path) -> Result<Registry> {
        let shown = path.display().to_string();
        let conn = Connection::open(path).map_err(|source| RegistryError::Open {
            path: shown.clone(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let reg = Registry {
            conn: Mutex::new(conn),
        };
        reg.migrate(&shown)?;
        Ok(reg)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn migrate(&self, shown: &str) -> Result<()> {
        let mut conn = self.conn();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(RegistryError::TooNew {
                path: shown.to_string(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn save_task(&self, name: &str, spec_json: &str, now: f64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO tasks(name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            params![name, spec_json, now],
        )?;
        Ok(())
    }

    /// Records whether a task should be running.
    pub fn set_desired(&self, name: &str, desired: Desired) -> Result<()> {
        self.conn().execute(
            "UPDATE tasks SET desired = ?2 WHERE name = ?1",
            params![name, desired.as_str()],
        )?;
        Ok(())
    }

    pub fn remove_task(&self, name: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM tasks WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// The saved tasks: name, spec (JSON), and whether each should be running.
    pub fn tasks(&self) -> Result<Vec<(String, String, Desired)>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT name, spec, desired FROM tasks ORDER BY name")?;
        let rows = st.query_map([], |r| {
            let desired: String = r.get(2)?;
            let desired = if desired == "run" {
                Desired::Run
            } else {
                Desired::Stop
            };
            Ok((r.get(0)?, r.get(1)?, desired))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn next_attempt(&self, task: &str) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(attempt), 0) + 1 FROM runs WHERE task = ?1",
            params![task],
            |r| r.get(0),
        )?)
    }

    pub fn insert_run(&self, row: &RunRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO runs(run_id, task, attempt, status, pid, pid_start, started_at, log_path)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.run_id,
                row.task,
                row.attempt,
                row.status.as_str(),
                row.pid,
                row.pid_start,
                row.started_at,
                row.log_path
            ],
        )?;
        Ok(())
    }

    pub fn set_pid(&self, run_id: &str, pid: i64, pid_start: Option<i64>) -> Result<()> {
        self.conn().execute(
            "UPDATE runs SET pid = ?2, pid_start = ?3 WHERE run_id = ?1",
            params![run_id, pid, pid_start],
        )?;
        Ok(())
    }

    pub fn set_container(&self, run_id: &str, container_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE runs SET container_id = ?2 WHERE run_id = ?1",
            params![run_id, container_id],
        )?;
        Ok(())
    }

    pub fn finish_run(&self, run_id: &str, o: &RunOutcome) -> Result<()> {
        let gap = o.gap.map(|g| g.map(|v| v as i64));
        self.conn().execute(
            "UPDATE runs SET status = ?2, ended_at = ?3, exit_code = ?4, signal = ?5,
                error_message = ?6, lines = ?7, bytes = ?8, truncated = ?9,
                gap_from = ?10, gap_to = ?11, gap_off_from = ?12, gap_off_to = ?13
             WHERE run_id = ?1",
            params![
                run_id,
                o.status.as_str(),
                o.ended_at,
                o.exit_code,
                o.signal,
                o.error_message.as_deref().map(cap_message),
                o.lines as i64,
                o.bytes as i64,
                gap.is_some() || o.write_failed,
                gap.map(|g| g[0]),
                gap.map(|g| g[1]),
                gap.map(|g| g[2]),
                gap.map(|g| g[3]),
            ],
        )?;
        Ok(())
    }

    const COLUMNS: &'static str = "run_id, task, attempt, status, pid, started_at, ended_at,
        exit_code, signal, log_path, error_message, lines, bytes, truncated,
        gap_from, gap_to, gap_off_from, gap_off_to, pid_start, container_id";

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
        let gap: [Option<i64>; 4] = [r.get(14)?, r.get(15)?, r.get(16)?, r.get(17)?];
        Ok(RunRow {
            run_id: r.get(0)?,
            task: r.get(1)?,
            attempt: r.get(2)?,
            status: {
                let s: String = r.get(3)?;
                RunStatus::parse(&s).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        3,
                        rusqlite::types::Type::Text,
                        format!("unknown run status `{s}`").into(),
                    )
                })?
            },
            pid: r.get(4)?,
            started_at: r.get(5)?,
            ended_at: r.get(6)?,
            exit_code: r.get(7)?,
            signal: r.get(8)?,
            log_path: r.get(9)?,
            error_message: r.get(10)?,
            lines: r.get(11)?,
            bytes: r.get(12)?,
            truncated: r.get(13)?,
            gap: match gap {
                [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
                _ => None,
            },
            pid_start: r.get(18)?,
            container_id: r.get(19)?,
        })
    }

    /// Runs, newest first; of one task when `task` is given.
    pub fn runs(&self, task: Option<&str>, limit: usize) -> Result<Vec<RunRow>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM runs WHERE (?1 IS NULL OR task = ?1)
             ORDER BY started_at DESC, attempt DESC LIMIT ?2",
            Self::COLUMNS
        );
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map(params![task, limit as i64], Self::row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn run(&self, run_id: &str) -> Result<Option<RunRow>> {
        let conn = self.conn();
        let sql = format!("SELECT {} FROM runs WHERE run_id = ?1", Self::COLUMNS);
        Ok(conn
            .query_row(&sql, params![run_id], Self::row)
            .optional()?)
    }

    /// Runs still marked `running` (at daemon start: candidates for `lost`).
    pub fn running(&self) -> Result<Vec<RunRow>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM runs WHERE status = 'running'",
            Self::COLUMNS
        );
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map([], Self::row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, task: &str, attempt: i64, at: f64) -> RunRow {
        RunRow {
            run_id: id.into(),
            task: task.into(),
            attempt,
            status: RunStatus::Running,
            pid: Some(42),
            started_at: at,
            ended_at: None,
            exit_code: None,
            signal: None,
            log_path: format!("/x/{id}.log"),
            error_message: None,
            lines: 0,
            bytes: 0,
            truncated: false,
            gap: None,
            pid_start: Some(7),
            container_id: None,
        }
    }

    #[test]
    fn runs_round_trip_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        assert_eq!(reg.schema_version().unwrap(), MIGRATIONS.len() as i64);
        reg.insert_run(&row("a", "job", 1, 1.0)).unwrap();
        reg.insert_run(&row("b", "job", 2, 2.0)).unwrap();
        reg.insert_run(&row("c", "other", 1, 3.0)).unwrap();
        reg.finish_run(
            "a",
            &RunOutcome {
                status: RunStatus::Failed,
                ended_at: 1.5,
                exit_code: Some(3),
                error_message: Some("x".repeat(5000)),
                lines: 10,
                bytes: 100,
                gap: Some([5, 9, 500, 900]),
                ..Default::default()
            },
        )
        .unwrap();
        let runs = reg.runs(Some("job"), 100).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        let a = reg.run("a").unwrap().unwrap();
        assert_eq!(a.status, RunStatus::Failed);
        assert_eq!(a.exit_code, Some(3));
        assert_eq!(a.error_message.as_ref().unwrap().chars().count(), 1000);
        assert!(a.truncated);
        assert_eq!(a.gap, Some([5, 9, 500, 900]));
        assert_eq!(reg.next_attempt("job").unwrap(), 3);
        assert_eq!(reg.running().unwrap().len(), 2);
        assert!(reg.run("zzz").unwrap().is_none());
    }

    /// A registry written by schema v1 keeps its rows when opened by this version.
    #[test]
    fn migration_from_v1_keeps_existing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO runs(run_id, task, attempt, status, started_at, log_path, exit_code)
                 VALUES ('old', 'job', 1, 'failed', 5.0, '/l', 2)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO tasks(name, spec, created_at, updated_at) VALUES ('job', '{}', 1.0, 1.0)",
                [],
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.schema_version().unwrap(), MIGRATIONS.len() as i64);
        // A task from before desired states is not started by surprise.
        assert_eq!(
            reg.tasks().unwrap(),
            [("job".to_string(), "{}".to_string(), Desired::Stop)]
        );
        reg.set_desired("job", Desired::Run).unwrap();
        assert_eq!(reg.tasks().unwrap()[0].2, Desired::Run);
        let old = reg.run("old").unwrap().unwrap();
        assert_eq!(
            (old.status.as_str(), old.exit_code, old.truncated),
            ("failed", Some(2), false)
        );
    }

    #[test]
    fn a_newer_registry_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Registry::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("schema version 99") && err.contains("upgrade corral"),
            "{err}"
        );
    }
}
