//! The capture reactor: one OS thread that reads the pipes of every run.
//!
//! It sleeps in `epoll_wait` (through `mio`) and wakes only for data, a hang-up, or a
//! message: a new run's pipes to read, or a run whose process exited. It never wakes on
//! a timer, except for the one deadline a run has while it is ending: after its process
//! exited, its pipes are read for [`EXIT_GRACE`] more (a grandchild that escaped the
//! process group may still hold them); then what they hold is taken, reading stops, and a
//! `system` note says so, so that capture never ends silently.
//!
//! Guarantees kept from the thread-per-run capture it replaces:
//! - reads of up to [`READ_SIZE`] (plus the carried incomplete line), into one scratch
//!   buffer, framed in place; pipes are enlarged to [`READ_SIZE`] where allowed;
//! - no viewer can delay it: it takes the ring lock only to push a batch, and it runs at
//!   a raised priority (nice −5, best effort);
//! - no run starves another: each ready pipe gets one read per turn, round-robin, and a
//!   pipe that may hold more goes to the back of the queue;
//! - a run's capture reports drained (a oneshot) only after both pipes reached
//!   end-of-file or its grace ended, and after the last record was appended.
//!
//! The thread is started lazily by the first capture and lives as long as the daemon.

use crate::logbook::{ingest, Channel, Ingest};
use corral_core::record::Stream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::Capture;

/// How long the pipes stay open after the process exited, for grandchildren's last words.
pub const EXIT_GRACE: Duration = Duration::from_millis(500);
/// Bytes asked of the kernel per read; pipes are also enlarged to this where allowed.
pub const READ_SIZE: usize = 1 << 20;
/// Reads of one pipe when its run's grace ends: what it holds then, bounded so that a
/// writer that keeps writing cannot keep the reactor there.
const FINAL_READS: usize = 64;
/// How much the reactor is favoured over the rest of the daemon (nice levels).
const PRIORITY_BOOST: libc::c_int = 5;

const WAKER: Token = Token(0);

enum Msg {
    Add {
        run: u64,
        ingest: Ingest,
        pipes: Vec<(OwnedFd, Channel)>,
        done: oneshot::Sender<()>,
    },
    /// The run's process exited: its grace starts.
    Ended(u64),
}

/// The handle to the reactor thread.
pub struct Reactor {
    tx: Mutex<mpsc::Sender<Msg>>,
    waker: Waker,
    next_run: AtomicU64,
}

/// The daemon's reactor, started on first use.
pub fn global() -> std::io::Result<&'static Reactor> {
    static REACTOR: OnceLock<Result<Reactor, String>> = OnceLock::new();
    REACTOR
        .get_or_init(|| Reactor::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| std::io::Error::other(format!("cannot start the capture reactor: {e}")))
}

impl Reactor {
    fn start() -> std::io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, rx) = mpsc::channel();
        let state = Loop {
            poll,
            rx,
            pipes: HashMap::new(),
            runs: HashMap::new(),
            ready: VecDeque::new(),
            ending: Vec::new(),
            scratch: Vec::new(),
            next_token: 1,
        };
        std::thread::Builder::new()
            .name("corral-capture".into())
            .spawn(move || state.run())?;
        Ok(Reactor {
            tx: Mutex::new(tx),
            waker,
            next_run: AtomicU64::new(1),
        })
    }

    fn send(&self, msg: Msg) -> std::io::Result<()> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(msg)
            .map_err(|_| std::io::Error::other("the capture reactor has stopped"))?;
        self.waker.wake()
    }

    /// Reads `pipes` (each with the stream it carries) into `ingest` until they all reach
    /// end-of-file, or until the grace after [`Capture::run_ended`] ends.
    pub fn capture(
        &'static self,
        ingest: Ingest,
        pipes: Vec<(OwnedFd, Stream)>,
    ) -> std::io::Result<Capture> {
        let mut channels = Vec::with_capacity(pipes.len());
        for (fd, stream) in pipes {
            set_nonblocking(&fd)?;
            enlarge_pipe(&fd);
            channels.push((fd, ingest.channel(stream)));
        }
        let run = self.next_run.fetch_add(1, Ordering::Relaxed);
        let (done, drained) = oneshot::channel();
        self.send(Msg::Add {
            run,
            ingest,
            pipes: channels,
            done,
        })?;
        Ok(Capture::new(drained, move || {
            // A reactor that stopped has dropped `done`: the capture reads as drained.
            let _ = self.send(Msg::Ended(run));
        }))
    }
}

struct Pipe {
    fd: OwnedFd,
    channel: Channel,
    run: u64,
    /// In the ready queue.
    queued: bool,
}

struct Run {
    ingest: Ingest,
    /// Its open pipes, in the order given (stdout before stderr).
    open: Vec<Token>,
    done: Option<oneshot::Sender<()>>,
    ending: bool,
}

struct Loop {
    poll: Poll,
    rx: mpsc::Receiver<Msg>,
    pipes: HashMap<Token, Pipe>,
    runs: HashMap<u64, Run>,
    /// Pipes that may hold data, in the order they get their next read. A pipe is in it
    /// at most once (`queued`): events are edge-triggered, so it stays until a read finds
    /// it empty. Tokens of pipes closed meanwhile are skipped.
    ready: VecDeque<Token>,
    /// Runs in their grace after the exit, with its end.
    ending: Vec<(Instant, u64)>,
    scratch: Vec<u8>,
    next_token: usize,
}

/// What one read of a pipe found.
enum Read {
    /// Bytes were read; there may be more.
    More,
    /// Nothing to read now.
    Empty,
    /// End-of-file or an error: the pipe was closed.
    Closed,
}

impl Loop {
    fn run(mut self) {
        raise_priority();
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else {
                let now = Instant::now();
                self.ending
                    .iter()
                    .map(|(at, _)| at.saturating_duration_since(now))
                    .min()
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Every run's `done` is dropped with this state: their captures read as
                // drained, and the supervisor finishes them.
                tracing::error!("the capture reactor stopped: waiting for pipes failed: {e}");
                return;
            }
            for ev in events.iter() {
                if ev.token() != WAKER && self.pipes.contains_key(&ev.token()) {
                    self.mark_ready(ev.token());
                }
            }
            if !self.take_messages() {
                return;
            }
            self.turn();
            self.end_graces();
        }
    }

    fn mark_ready(&mut self, t: Token) {
        if let Some(p) = self.pipes.get_mut(&t).filter(|p| !p.queued) {
            p.queued = true;
            self.ready.push_back(t);
        }
    }

    /// Handles every queued message; false once every sender is gone.
    fn take_messages(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Add {
                    run,
                    ingest,
                    pipes,
                    done,
                }) => self.add(run, ingest, pipes, done),
                Ok(Msg::Ended(run)) => {
                    if let Some(r) = self.runs.get_mut(&run).filter(|r| !r.ending) {
                        r.ending = true;
                        self.ending.push((Instant::now() + EXIT_GRACE, run));
                    }
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn add(
        &mut self,
        run: u64,
        ingest: Ingest,
        pipes: Vec<(OwnedFd, Channel)>,
        done: oneshot::Sender<()>,
    ) {
        let need = ingest::scratch_len(READ_SIZE, ingest.max_record());
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        let mut open = Vec::with_capacity(pipes.len());
        for (fd, mut channel) in pipes {
            let t = Token(self.next_token);
            self.next_token += 1;
            let reg = self.poll.registry().register(
                &mut SourceFd(&fd.as_raw_fd()),
                t,
                Interest::READABLE,
            );
            if let Err(e) = reg {
                tracing::error!("cannot watch a {} pipe: {e}", channel.stream().as_str());
                channel.end(None);
                continue;
            }
            // Whatever the child wrote before the registration is read on this turn.
            self.pipes.insert(
                t,
                Pipe {
                    fd,
                    channel,
                    run,
                    queued: true,
                },
            );
            open.push(t);
            self.ready.push_back(t);
        }
        let r = Run {
            ingest,
            open,
            done: Some(done),
            ending: false,
        };
        if r.open.is_empty() {
            finish(r);
        } else {
            self.runs.insert(run, r);
        }
    }

    /// One read for each pipe that was ready when the turn began.
    fn turn(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(t) = self.ready.pop_front() else {
                break;
            };
            match self.read_once(t) {
                Read::More => self.ready.push_back(t),
                Read::Empty => {
                    if let Some(p) = self.pipes.get_mut(&t) {
                        p.queued = false;
                    }
                }
                Read::Closed => {
                    if let Some(run) = self.close(t) {
                        self.finish_if_closed(run);
                    }
                }
            }
        }
    }

    fn read_once(&mut self, t: Token) -> Read {
        let Some(p) = self.pipes.get_mut(&t) else {
            return Read::Empty;
        };
        let fd = p.fd.as_raw_fd();
        let r = p.channel.read_with(&mut self.scratch, |room| loop {
            // SAFETY: reading into a buffer we own, at most its length.
            let n = unsafe { libc::read(fd, room.as_mut_ptr().cast(), room.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        });
        match r {
            Ok(0) => Read::Closed,
            Ok(_) => Read::More,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::Empty,
            Err(e) => {
                tracing::warn!(
                    run_id = %p.channel.ingest().log().run_id,
                    "reading a {} pipe failed, closing it: {e}",
                    p.channel.stream().as_str()
                );
                Read::Closed
            }
        }
    }

    /// Stops reading a pipe: its incomplete line becomes a record, the pipe is closed.
    /// Returns its run.
    fn close(&mut self, t: Token) -> Option<u64> {
        let mut p = self.pipes.remove(&t)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&p.fd.as_raw_fd()));
        p.channel.end(None);
        if let Some(r) = self.runs.get_mut(&p.run) {
            r.open.retain(|&o| o != t);
        }
        Some(p.run)
    }

    fn finish_if_closed(&mut self, run: u64) {
        if self.runs.get(&run).is_some_and(|r| r.open.is_empty()) {
            if let Some(r) = self.runs.remove(&run) {
                self.ending.retain(|&(_, id)| id != run);
                finish(r);
            }
        }
    }

    /// Ends the runs whose grace is over: what their pipes hold now is taken, then they
    /// stop, with a note in the log naming the pipes still held open.
    fn end_graces(&mut self) {
        let now = Instant::now();
        let (over, left): (Vec<_>, Vec<_>) = self.ending.drain(..).partition(|(at, _)| *at <= now);
        self.ending = left;
        for (_, run) in over {
            let Some(open) = self.runs.get(&run).map(|r| r.open.clone()) else {
                continue;
            };
            let mut held = Vec::new();
            for t in open {
                let mut closed = false;
                for _ in 0..FINAL_READS {
                    match self.read_once(t) {
                        Read::More => {}
                        Read::Empty => break,
                        Read::Closed => {
                            closed = true;
                            break;
                        }
                    }
                }
                if !closed {
                    if let Some(p) = self.pipes.get(&t) {
                        held.push(p.channel.stream().as_str());
                    }
                }
                self.close(t);
            }
            let Some(r) = self.runs.remove(&run) else {
                continue;
            };
            if !held.is_empty() {
                r.ingest.system(&cut_note(&held));
            }
            finish(r);
        }
    }
}

/// The note for pipes whose reading stopped at the end of the grace after the exit.
pub fn cut_note(streams: &[&str]) -> String {
    format!(
        "stopped reading {} {}s after the task exited: a process outside its process group still holds the pipe open; later output from it is not captured",
        streams.join(" and "),
        EXIT_GRACE.as_secs_f64()
    )
}

/// Tells the supervisor that the run's capture is complete.
fn finish(mut r: Run) {
    if let Some(done) = r.done.take() {
        let _ = done.send(());
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an open descriptor with integer arguments.
    let rc = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for a bigger pipe so that a fast child needs fewer wake-ups; best effort.
fn enlarge_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl on an open descriptor with an integer argument.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, READ_SIZE as libc::c_int);
    }
}

/// Gives this thread a lower nice value than the daemon's other threads, where allowed
/// (root, `CAP_SYS_NICE` or `RLIMIT_NICE`); best effort. On a busy machine, the runtime's
/// workers serving a crowd of followers would otherwise take the CPU turns the capture
/// needs, and children would block on full pipes. The reactor only runs when a child wrote
/// something, so it cannot starve anyone for longer than the children keep printing.
fn raise_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() == 0 {
            libc::setpriority(libc::PRIO_PROCESS, tid, nice - PRIORITY_BOOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logbook::LogConfig;
    use corral_core::record::WireRecord;
    use std::io::Write;
    use std::sync::Arc;

    fn new_ingest(dir: &std::path::Path, run_id: &str) -> Ingest {
        Ingest::create(dir, run_id, &LogConfig::default()).unwrap()
    }

    /// Every record of a run, once it has ended.
    async fn records(ingest: &Ingest) -> Vec<WireRecord> {
        crate::logbook::testing::finish_and_read(ingest).await
    }

    fn pipe() -> (OwnedFd, std::io::PipeWriter) {
        let (r, w) = std::io::pipe().unwrap();
        (OwnedFd::from(r), w)
    }

    /// Fifty runs at once, each with two pipes written by its own thread: one reactor
    /// thread reads them all, keeps each run's records to itself, and reports each run
    /// drained once both of its pipes closed.
    #[tokio::test]
    async fn many_runs_are_read_by_one_thread_and_each_drains() {
        let dir = tempfile::tempdir().unwrap();
        let reactor = global().unwrap();
        let mut runs = Vec::new();
        for i in 0..50 {
            let ingest = new_ingest(dir.path(), &format!("r{i}"));
            let (out_r, mut out_w) = pipe();
            let (err_r, mut err_w) = pipe();
            let capture = reactor
                .capture(
                    ingest.clone(),
                    vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
                )
                .unwrap();
            let writer = std::thread::spawn(move || {
                for j in 0..100 {
                    writeln!(out_w, "run {i} line {j}").unwrap();
                    if j % 10 == 0 {
                        writeln!(err_w, "run {i} warning {j}").unwrap();
                    }
                }
                write!(out_w, "run {i} last words").unwrap();
            });
            runs.push((i, ingest, capture, writer));
        }
        for (i, ingest, mut capture, writer) in runs {
            writer.join().unwrap();
            capture.drained().await;
            let recs = records(&ingest).await;
            let out: Vec<&str> = recs
                .iter()
                .filter(|r| r.stream == Stream::Stdout)
                .map(|r| r.line.as_str())
                .collect();
            let mut expect: Vec<String> = (0..100).map(|j| format!("run {i} line {j}")).collect();
            expect.push(format!("run {i} last words"));
            assert_eq!(out, expect);
            let errs = recs.iter().filter(|r| r.stream == Stream::Stderr).count();
            assert_eq!(errs, 10);
            let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=111).collect::<Vec<_>>());
            assert_eq!(ingest.stderr_tail().len(), 5);
        }
    }

    /// A run whose child writes without pause does not keep the reactor from another
    /// run's line: the quiet run's record arrives while the busy one is still writing.
    #[tokio::test]
    async fn a_busy_run_does_not_starve_a_quiet_one() {
        let dir = tempfile::tempdir().unwrap();
        let reactor = global().unwrap();
        let busy = new_ingest(dir.path(), "busy");
        let (busy_r, mut busy_w) = pipe();
        let (busy_e, _busy_e_w) = pipe();
        let mut busy_capture = reactor
            .capture(
                busy.clone(),
                vec![(busy_r, Stream::Stdout), (busy_e, Stream::Stderr)],
            )
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let line = [b'x'; 4095];
                let mut block = Vec::new();
                for _ in 0..64 {
                    block.extend_from_slice(&line);
                    block.push(b'\n');
                }
                while !stop.load(Ordering::Relaxed) {
                    if busy_w.write_all(&block).is_err() {
                        break;
                    }
                }
            })
        };
        // The flood is on before the quiet run starts.
        let mut rx = busy.log().subscribe();
        rx.wait_for(|&seq| seq > 1000).await.unwrap();

        let quiet = new_ingest(dir.path(), "quiet");
        let (quiet_r, mut quiet_w) = pipe();
        let (quiet_e, quiet_e_w) = pipe();
        let mut quiet_capture = reactor
            .capture(
                quiet.clone(),
                vec![(quiet_r, Stream::Stdout), (quiet_e, Stream::Stderr)],
            )
            .unwrap();
        let mut rx = quiet.log().subscribe();
        writeln!(quiet_w, "heard").unwrap();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|&seq| seq >= 1))
            .await
            .expect("the quiet run's line must be read while the busy run floods")
            .unwrap();
        assert!(!flood.is_finished(), "the busy run was still writing");
        drop((quiet_w, quiet_e_w));
        quiet_capture.drained().await;
        stop.store(true, Ordering::Relaxed);
        busy_capture.run_ended();
        busy_capture.drained().await;
        flood.join().unwrap();
        assert_eq!(records(&quiet).await.len(), 1);
    }

    /// A pipe still held open after the run ended (a grandchild that left the process
    /// group) is read for the grace, then what it holds is taken, and a note says that
    /// reading stopped.
    #[tokio::test]
    async fn a_pipe_held_past_the_end_is_cut_after_the_grace_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = new_ingest(dir.path(), "held");
        let (out_r, mut out_w) = pipe();
        let (err_r, err_w) = pipe();
        let mut capture = global()
            .unwrap()
            .capture(
                ingest.clone(),
                vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            )
            .unwrap();
        drop(err_w); // stderr closes; stdout stays held
        writeln!(out_w, "before the end").unwrap();
        let mut rx = ingest.log().subscribe();
        rx.wait_for(|&seq| seq >= 1).await.unwrap();
        let started = Instant::now();
        capture.run_ended();
        write!(out_w, "late words").unwrap();
        capture.drained().await;
        assert!(started.elapsed() >= EXIT_GRACE);
        let _ = writeln!(out_w, "never read");
        let recs = records(&ingest).await;
        let lines: Vec<(&str, Stream)> = recs.iter().map(|r| (r.line.as_str(), r.stream)).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], ("before the end", Stream::Stdout));
        assert_eq!(lines[1], ("late words", Stream::Stdout));
        assert_eq!(lines[2].1, Stream::System);
        assert!(
            lines[2]
                .0
                .starts_with("stopped reading stdout 0.5s after the task exited: a process outside its process group"),
            "{lines:?}"
        );
    }

    /// A run whose pipes close before its end is reported drained without any grace,
    /// and the end that comes later changes nothing.
    #[tokio::test]
    async fn pipes_closed_before_the_end_drain_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = new_ingest(dir.path(), "quick");
        let (out_r, mut out_w) = pipe();
        let (err_r, err_w) = pipe();
        let mut capture = global()
            .unwrap()
            .capture(
                ingest.clone(),
                vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            )
            .unwrap();
        out_w.write_all(b"all\nof it").unwrap();
        drop((out_w, err_w));
        capture.drained().await;
        capture.run_ended();
        capture.drained().await;
        let lines: Vec<String> = records(&ingest).await.into_iter().map(|r| r.line).collect();
        assert_eq!(lines, ["all", "of it"]);
    }
}
