//! Restart policy and the lifecycle state machine of a supervised task, with no I/O.
//!
//! The supervisor feeds it what happened (spawned, became ready, exited, stop asked,
//! retry timer fired) with the monotonic time of the event, and gets back what to do.
//! Invariants:
//! - after `max_retries` consecutive failed restarts the task goes to `error` and stays
//!   there until started by hand: a task runs at most `max_retries + 1` times in a row;
//! - the consecutive-failure count resets when a run stayed up `reset_after` (60 s);
//! - backoff doubles from `backoff_initial` up to `backoff_max`, then jitter of at most
//!   ±10% is applied; the jitter is an input, so tests are deterministic;
//! - a stop request always wins over a pending restart.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// No restart comes sooner than this after an exit, whatever the configured backoff: a
/// task that exits at once cannot spin.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// At most this many automatic restarts of one task in [`RATE_WINDOW`]; past it the next
/// waits for the window to move. A crash loop makes dozens of runs a minute, not thousands.
pub const RATE_CAP: usize = 60;
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Run once; the task is `completed` when the run ends.
    #[default]
    No,
    /// Restart after a failed run (non-zero exit or killed by a signal).
    OnFailure,
    /// Restart after every run that was not stopped by hand.
    Always,
}

impl std::str::FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(Restart::No),
            "on-failure" => Ok(Restart::OnFailure),
            "always" => Ok(Restart::Always),
            _ => Err(format!(
                "unknown restart policy `{s}`; expected no, on-failure or always"
            )),
        }
    }
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub restart: Restart,
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run that stays up this long resets the consecutive-failure count.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            restart: Restart::No,
            max_retries: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// Delay before retry `n` (1-based): `initial * 2^(n-1)` capped at `max`, then
    /// scaled by `1 + jitter / 10` with `jitter` clamped to [-1, 1]; never under
    /// [`MIN_BACKOFF`].
    pub fn backoff(&self, n: u32, jitter: f64) -> Duration {
        self.backoff_raw(n, jitter).max(MIN_BACKOFF)
    }

    fn backoff_raw(&self, n: u32, jitter: f64) -> Duration {
        let exp = n.saturating_sub(1).min(40);
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.backoff_max);
        base.mul_f64(1.0 + jitter.clamp(-1.0, 1.0) / 10.0)
    }
}

/// Task status (contract: `corral ps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Initial,
    Starting,
    Ready,
    /// Exited unexpectedly; waiting for its next retry.
    Crashed,
    /// Retry budget spent, or the spawn failed; needs a manual start.
    Error,
    Stopping,
    Stopped,
    /// A run-once task whose run ended.
    Completed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Initial => "initial",
            TaskStatus::Starting => "starting",
            TaskStatus::Ready => "ready",
            TaskStatus::Crashed => "crashed",
            TaskStatus::Error => "error",
            TaskStatus::Stopping => "stopping",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Completed => "completed",
        }
    }

    /// A task in one of these states has no process and no pending restart.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            TaskStatus::Initial | TaskStatus::Error | TaskStatus::Stopped | TaskStatus::Completed
        )
    }
}

/// Run status (contract: `corral runs`). `killed` is a run stopped by request; `lost`
/// one whose end no daemon saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Running,
    Succeeded,
    Failed,
    Killed,
    Lost,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Killed => "killed",
            RunStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "killed" => RunStatus::Killed,
            "lost" => RunStatus::Lost,
            _ => return None,
        })
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// What the supervisor must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Start a new run after `delay`; this is retry `retry` of `of` (`retry` 0: not a
    /// retry, the restart `always` makes after a clean exit).
    RestartAfter {
        delay: Duration,
        retry: u32,
        of: u32,
    },
    /// Send SIGTERM to the group now, SIGKILL after the stop timeout.
    Terminate,
    /// Spawn a run now.
    Spawn,
}

/// The lifecycle of one task. `now` is monotonic time from any fixed origin.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub policy: RestartPolicy,
    pub status: TaskStatus,
    /// Consecutive failed runs since the last reset.
    pub failures: u32,
    /// Restarts over the task's life (shown by `ps`).
    pub restarts: u32,
    started_at: Option<Duration>,
    stop_requested: bool,
    /// When the last automatic restarts were planned (at most [`RATE_CAP`]).
    recent: VecDeque<Duration>,
}

impl Lifecycle {
    pub fn new(policy: RestartPolicy) -> Self {
        Lifecycle {
            policy,
            status: TaskStatus::Initial,
            failures: 0,
            restarts: 0,
            started_at: None,
            stop_requested: false,
            recent: VecDeque::new(),
        }
    }

    /// A restart after `delay` from `now`, held back by the rate cap when needed.
    fn restart_after(&mut self, now: Duration, delay: Duration, retry: u32) -> Action {
        let mut at = now + delay;
        if self.recent.len() >= RATE_CAP {
            if let Some(oldest) = self.recent.pop_front() {
                at = at.max(oldest + RATE_WINDOW);
            }
        }
        self.recent.push_back(at);
        Action::RestartAfter {
            delay: at - now,
            retry,
            of: self.policy.max_retries,
        }
    }

    /// Started by hand (`run`, `restart`): clears the retry budget and any stop request.
    pub fn start(&mut self) -> Action {
        self.failures = 0;
        self.stop_requested = false;
        self.status = TaskStatus::Starting;
        Action::Spawn
    }

    /// The process is running. `ready` is true for tasks with no readiness probe.
    pub fn spawned(&mut self, now: Duration, ready: bool) {
        self.started_at = Some(now);
        self.status = if ready {
            TaskStatus::Ready
        } else {
            TaskStatus::Starting
        };
    }

    /// Whether a user asked this task to stop (the run's end is then not a failure).
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    /// The readiness probe passed.
    pub fn ready(&mut self) {
        if self.status == TaskStatus::Starting {
            self.status = TaskStatus::Ready;
        }
    }

    /// The process could not be started (command not found, permission denied).
    pub fn spawn_failed(&mut self) {
        self.started_at = None;
        self.status = TaskStatus::Error;
    }

    /// Stop asked by a user. Returns `Terminate` when a process must be signalled.
    pub fn stop(&mut self) -> Action {
        self.stop_requested = true;
        match self.status {
            TaskStatus::Starting | TaskStatus::Ready | TaskStatus::Stopping => {
                self.status = TaskStatus::Stopping;
                Action::Terminate
            }
            TaskStatus::Crashed => {
                self.status = TaskStatus::Stopped;
                Action::None
            }
            _ => Action::None,
        }
    }

    /// The run ended at `now`. `jitter` in [-1, 1] spreads restarts of many tasks.
    pub fn exited(&mut self, exit: Exit, now: Duration, jitter: f64) -> Action {
        let uptime = self.started_at.take().map(|s| now.saturating_sub(s));
        if self.stop_requested {
            self.status = TaskStatus::Stopped;
            return Action::None;
        }
        let restart = match self.policy.restart {
            Restart::No => false,
            Restart::OnFailure => !exit.success(),
            Restart::Always => true,
        };
        if !restart {
            self.status = TaskStatus::Completed;
            return Action::None;
        }
        if uptime.is_some_and(|u| u >= self.policy.reset_after) {
            self.failures = 0;
        }
        if exit.success() {
            // `always` and a clean exit: a restart, not a failure, so it spends no
            // budget; the initial backoff keeps a task that exits at once from spinning.
            self.failures = 0;
            self.status = TaskStatus::Crashed;
            self.restarts += 1;
            let delay = self.policy.backoff(1, jitter);
            return self.restart_after(now, delay, 0);
        }
        self.failures += 1;
        if self.failures > self.policy.max_retries {
            self.status = TaskStatus::Error;
            return Action::None;
        }
        self.status = TaskStatus::Crashed;
        self.restarts += 1;
        let delay = self.policy.backoff(self.failures, jitter);
        self.restart_after(now, delay, self.failures)
    }

    /// The restart timer fired. Returns `Spawn` unless a stop came first.
    pub fn retry_due(&mut self) -> Action {
        if self.status == TaskStatus::Crashed && !self.stop_requested {
            self.status = TaskStatus::Starting;
            Action::Spawn
        } else {
            Action::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn policy(restart: Restart) -> RestartPolicy {
        RestartPolicy {
            restart,
            ..RestartPolicy::default()
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let p = policy(Restart::Always);
        let delays: Vec<u64> = (1..=7).map(|n| p.backoff(n, 0.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(p.backoff(u32::MAX, 0.0), secs(30));
    }

    #[test]
    fn a_zero_backoff_is_still_the_minimum() {
        let p = RestartPolicy {
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..policy(Restart::Always)
        };
        assert_eq!(p.backoff(1, -1.0), MIN_BACKOFF);
    }

    /// `--backoff-initial 0 --restart always` on `true`: a clean exit at once, forever.
    /// Restarts come at the minimum backoff until the cap, then no more than the cap per
    /// window.
    #[test]
    fn a_crash_loop_is_capped_per_minute() {
        let mut lc = Lifecycle::new(RestartPolicy {
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..policy(Restart::Always)
        });
        let mut now = Duration::ZERO;
        lc.start();
        let mut runs = Vec::new();
        while now < Duration::from_secs(180) {
            lc.spawned(now, true);
            runs.push(now);
            match lc.exited(Exit::Code(0), now, 0.0) {
                Action::RestartAfter { delay, .. } => {
                    assert!(delay >= MIN_BACKOFF, "{delay:?}");
                    now += delay;
                }
                a => panic!("{a:?}"),
            }
            assert_eq!(lc.retry_due(), Action::Spawn);
        }
        // In any window of 60 s, at most the cap (+1 for the run started by hand).
        for (i, start) in runs.iter().enumerate() {
            let in_window = runs[i..]
                .iter()
                .take_while(|t| **t < *start + RATE_WINDOW)
                .count();
            assert!(in_window <= RATE_CAP + 1, "{in_window} runs from {start:?}");
        }
        // The first ones come at the minimum backoff.
        assert_eq!(runs[1] - runs[0], MIN_BACKOFF);
        assert!(
            runs.len() < 4 * RATE_CAP,
            "{} runs in 3 minutes",
            runs.len()
        );
    }

    #[test]
    fn jitter_is_at_most_ten_percent() {
        let p = policy(Restart::Always);
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(2200));
        assert_eq!(p.backoff(2, -1.0), Duration::from_millis(1800));
        assert_eq!(p.backoff(2, 7.0), Duration::from_millis(2200));
        assert_eq!(p.backoff(6, 1.0), secs(33));
    }

    /// A crash loop: 1 initial run + 5 retries, with backoff 1, 2, 4, 8, 16 s, then error.
    #[test]
    fn crash_loop_spends_the_budget_then_errors() {
        let mut l = Lifecycle::new(policy(Restart::OnFailure));
        assert_eq!(l.start(), Action::Spawn);
        let mut now = secs(0);
        let mut delays = Vec::new();
        let mut runs = 0;
        loop {
            l.spawned(now, true);
            runs += 1;
            now += secs(1);
            match l.exited(Exit::Code(3), now, 0.0) {
                Action::RestartAfter { delay, retry, of } => {
                    assert_eq!((retry, of), (runs, 5));
                    assert_eq!(l.status, TaskStatus::Crashed);
                    delays.push(delay.as_secs());
                    now += delay;
                    assert_eq!(l.retry_due(), Action::Spawn);
                    assert_eq!(l.status, TaskStatus::Starting);
                }
                Action::None => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(runs, 6);
        assert_eq!(delays, [1, 2, 4, 8, 16]);
        assert_eq!(l.status, TaskStatus::Error);
        assert_eq!(l.restarts, 5);
        // Stays in error: no timer, no spawn.
        assert_eq!(l.retry_due(), Action::None);
        // A manual start resets the budget.
        assert_eq!(l.start(), Action::Spawn);
        l.spawned(now, true);
        assert!(matches!(
            l.exited(Exit::Signal(9), now + secs(1), 0.0),
            Action::RestartAfter { retry: 1, .. }
        ));
    }

    #[test]
    fn a_stable_run_resets_the_failure_count() {
        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        l.spawned(secs(0), true);
        assert!(matches!(
            l.exited(Exit::Code(1), secs(1), 0.0),
            Action::RestartAfter { retry: 1, .. }
        ));
        l.retry_due();
        l.spawned(secs(2), true);
        assert!(matches!(
            l.exited(Exit::Code(1), secs(3), 0.0),
            Action::RestartAfter { retry: 2, .. }
        ));
        l.retry_due();
        l.spawned(secs(10), true);
        // Up for 60 s: the count starts again.
        assert!(matches!(
            l.exited(Exit::Code(1), secs(70), 0.0),
            Action::RestartAfter { retry: 1, delay, .. } if delay == secs(1)
        ));
        // Up for 59 s: it does not.
        l.retry_due();
        l.spawned(secs(71), true);
        assert!(matches!(
            l.exited(Exit::Code(1), secs(130), 0.0),
            Action::RestartAfter { retry: 2, .. }
        ));
    }

    #[test]
    fn run_once_tasks_complete_whatever_the_exit() {
        for exit in [Exit::Code(0), Exit::Code(2), Exit::Signal(15)] {
            let mut l = Lifecycle::new(policy(Restart::No));
            l.start();
            l.spawned(secs(0), true);
            assert_eq!(l.exited(exit, secs(1), 0.0), Action::None);
            assert_eq!(l.status, TaskStatus::Completed);
        }
    }

    #[test]
    fn on_failure_completes_on_success_and_always_restarts() {
        let mut l = Lifecycle::new(policy(Restart::OnFailure));
        l.start();
        l.spawned(secs(0), true);
        assert_eq!(l.exited(Exit::Code(0), secs(1), 0.0), Action::None);
        assert_eq!(l.status, TaskStatus::Completed);

        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        l.spawned(secs(0), true);
        assert!(matches!(
            l.exited(Exit::Code(0), secs(1), 0.0),
            Action::RestartAfter { .. }
        ));
    }

    #[test]
    fn always_restarts_clean_exits_without_spending_the_budget() {
        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        for i in 0..20u64 {
            l.spawned(secs(2 * i), true);
            assert_eq!(
                l.exited(Exit::Code(0), secs(2 * i + 1), 0.0),
                Action::RestartAfter {
                    delay: secs(1),
                    retry: 0,
                    of: 5
                }
            );
            assert_eq!(l.retry_due(), Action::Spawn);
        }
        // A failure after clean exits is the first of a new count.
        l.spawned(secs(100), true);
        assert!(matches!(
            l.exited(Exit::Code(1), secs(101), 0.0),
            Action::RestartAfter { retry: 1, .. }
        ));
    }

    #[test]
    fn stop_wins_over_restart() {
        // Stop while running: terminate, and the exit does not restart.
        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        l.spawned(secs(0), true);
        assert_eq!(l.stop(), Action::Terminate);
        assert_eq!(l.status, TaskStatus::Stopping);
        assert_eq!(l.exited(Exit::Signal(15), secs(1), 0.0), Action::None);
        assert_eq!(l.status, TaskStatus::Stopped);

        // Stop while waiting for a retry: stopped at once, the timer does nothing.
        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        l.spawned(secs(0), true);
        l.exited(Exit::Code(1), secs(1), 0.0);
        assert_eq!(l.stop(), Action::None);
        assert_eq!(l.status, TaskStatus::Stopped);
        assert_eq!(l.retry_due(), Action::None);

        // Stop of a settled task is a no-op.
        let mut l = Lifecycle::new(policy(Restart::No));
        assert_eq!(l.stop(), Action::None);
        assert_eq!(l.status, TaskStatus::Initial);
    }

    #[test]
    fn no_retries_means_the_first_failure_is_an_error() {
        let mut l = Lifecycle::new(RestartPolicy {
            restart: Restart::Always,
            max_retries: 0,
            ..RestartPolicy::default()
        });
        l.start();
        l.spawned(secs(0), true);
        assert_eq!(l.exited(Exit::Code(1), secs(1), 0.0), Action::None);
        assert_eq!(l.status, TaskStatus::Error);
        assert_eq!(l.restarts, 0);
    }

    #[test]
    fn a_stop_while_starting_wins_over_readiness() {
        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        l.spawned(secs(0), false);
        // One failure, so that the budget is partly spent when the stop comes.
        l.exited(Exit::Code(1), secs(1), 0.0);
        assert_eq!(l.retry_due(), Action::Spawn);
        l.spawned(secs(2), false);
        assert_eq!(l.failures, 1);
        assert_eq!(l.stop(), Action::Terminate);
        // The probe passing now does not make a stopping task ready.
        l.ready();
        assert_eq!(l.status, TaskStatus::Stopping);
        // A second stop (a restart by hand, a removal) asks again; the actor sends
        // SIGTERM once and keeps its SIGKILL deadline.
        assert_eq!(l.stop(), Action::Terminate);
        assert_eq!(l.exited(Exit::Signal(15), secs(3), 0.0), Action::None);
        assert_eq!(l.status, TaskStatus::Stopped);
        // Started again by hand, it has its full budget.
        assert_eq!(l.start(), Action::Spawn);
        assert_eq!(l.failures, 0);
    }

    #[test]
    fn readiness_is_separate_from_spawning() {
        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        l.spawned(secs(0), false);
        assert_eq!(l.status, TaskStatus::Starting);
        l.ready();
        assert_eq!(l.status, TaskStatus::Ready);
    }

    #[test]
    fn spawn_failure_is_an_error() {
        let mut l = Lifecycle::new(policy(Restart::Always));
        l.start();
        l.spawn_failed();
        assert_eq!(l.status, TaskStatus::Error);
        assert_eq!(l.retry_due(), Action::None);
    }

    #[test]
    fn parses_restart_names() {
        assert_eq!("on-failure".parse::<Restart>().unwrap(), Restart::OnFailure);
        assert!("sometimes"
            .parse::<Restart>()
            .unwrap_err()
            .contains("on-failure"));
    }
}
