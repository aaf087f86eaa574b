//! The capture thread: one per run, it reads the child's stdout and stderr pipes and
//! hands framed records to the run's [`LogWriter`].
//!
//! It is a plain OS thread blocked in `poll(2)`, so that no async runtime scheduling and
//! no viewer can delay the reads: the child is never blocked by corral beyond the disk
//! write of what it printed. When the supervisor reports that the child exited, the
//! thread drains what is left and stops at end-of-file, or after a short grace when a
//! grandchild still holds the pipes open.

use crate::logbook::LogWriter;
use corral_core::framer::{frame, Frame};
use corral_core::record::Stream;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of stderr kept for a failed run's error message.
const STDERR_TAIL: usize = 5;
/// How long the pipes stay open after the child exited, for grandchildren's last words.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// Bytes asked of the kernel per read; the pipe is also enlarged to this where allowed.
const READ_SIZE: usize = 1 << 20;

/// The writer and what the capture learned, shared with the supervisor (which writes
/// lifecycle notes through the same writer).
pub struct Capture {
    pub writer: LogWriter,
    pub stderr_tail: VecDeque<String>,
}

pub type SharedCapture = Arc<Mutex<Capture>>;

pub fn lock(c: &SharedCapture) -> std::sync::MutexGuard<'_, Capture> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

pub use crate::clock::now_micros;

struct Pipe {
    fd: OwnedFd,
    stream: Stream,
    buf: Vec<u8>,
    len: usize,
    open: bool,
}

/// Starts the capture thread. `exited` is set by the supervisor when the child is gone.
pub fn start(
    capture: SharedCapture,
    stdout: OwnedFd,
    stderr: OwnedFd,
    max_record: usize,
    exited: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let name = format!("capture-{}", lock(&capture).writer.log().run_id);
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            raise_priority();
            let mut pipes = [stdout, stderr]
                .into_iter()
                .zip([Stream::Stdout, Stream::Stderr])
                .map(|(fd, stream)| {
                    enlarge_pipe(&fd);
                    Pipe {
                        fd,
                        stream,
                        buf: vec![0; READ_SIZE + max_record + 1],
                        len: 0,
                        open: true,
                    }
                })
                .collect::<Vec<_>>();
            run(&capture, &mut pipes, max_record, &exited);
        })
}

fn run(capture: &SharedCapture, pipes: &mut [Pipe], max_record: usize, exited: &AtomicBool) {
    let mut frames: Vec<Frame> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        if pipes.iter().all(|p| !p.open) {
            return;
        }
        let timeout_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Something outside the process group (it escaped with setsid) still
                    // holds the pipes. Take what is already in them, then stop reading,
                    // and say so in the log: nothing stops silently.
                    drain_ready(capture, pipes, max_record, &mut frames);
                    let mut held = Vec::new();
                    for p in pipes.iter_mut().filter(|p| p.open) {
                        held.push(p.stream.as_str());
                        flush_pending(capture, p, max_record, &mut frames);
                        p.open = false;
                    }
                    if !held.is_empty() {
                        let note = format!(
                            "stopped reading {} {}s after the task exited: a process outside its process group still holds the pipe open; later output from it is not captured",
                            held.join(" and "),
                            EXIT_GRACE.as_secs_f64()
                        );
                        lock(capture).writer.system(&note, now_micros());
                    }
                    return;
                }
                left.as_millis().max(1) as i32
            }
            None => 100,
        };
        let (n, fds) = poll_pipes(pipes, timeout_ms);
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("poll on a child's pipes failed: {e}");
            return;
        }
        if deadline.is_none() && exited.load(Ordering::Acquire) {
            deadline = Some(Instant::now() + EXIT_GRACE);
        }
        for (p, pfd) in pipes.iter_mut().zip(&fds) {
            if p.open && pfd.revents != 0 {
                read_once(capture, p, max_record, &mut frames);
            }
        }
    }
}

/// poll(2) on the open pipes (closed ones are skipped); the result and the revents.
fn poll_pipes(pipes: &[Pipe], timeout_ms: i32) -> (i32, Vec<libc::pollfd>) {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .map(|p| libc::pollfd {
            fd: if p.open { p.fd.as_raw_fd() } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    (n, fds)
}

/// Reads whatever the open pipes hold right now, without waiting (bounded, so a writer
/// that keeps writing cannot keep the capture here).
fn drain_ready(
    capture: &SharedCapture,
    pipes: &mut [Pipe],
    max_record: usize,
    frames: &mut Vec<Frame>,
) {
    for _ in 0..64 {
        let (n, fds) = poll_pipes(pipes, 0);
        if n <= 0 {
            return;
        }
        for (p, pfd) in pipes.iter_mut().zip(&fds) {
            if p.open && pfd.revents != 0 {
                read_once(capture, p, max_record, frames);
            }
        }
    }
}

/// One read from a ready pipe, then framing and appending what is complete.
fn read_once(capture: &SharedCapture, p: &mut Pipe, max_record: usize, frames: &mut Vec<Frame>) {
    let room = &mut p.buf[p.len..];
    // SAFETY: reading into the unused tail of our own buffer.
    let n = unsafe { libc::read(p.fd.as_raw_fd(), room.as_mut_ptr().cast(), room.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => return,
            _ => {
                flush_pending(capture, p, max_record, frames);
                p.open = false;
                return;
            }
        }
    }
    if n == 0 {
        flush_pending(capture, p, max_record, frames);
        p.open = false;
        return;
    }
    p.len += n as usize;
    append(capture, p, max_record, false, frames);
}

fn flush_pending(
    capture: &SharedCapture,
    p: &mut Pipe,
    max_record: usize,
    frames: &mut Vec<Frame>,
) {
    if p.len > 0 {
        append(capture, p, max_record, true, frames);
    }
}

fn append(
    capture: &SharedCapture,
    p: &mut Pipe,
    max_record: usize,
    eof: bool,
    frames: &mut Vec<Frame>,
) {
    frames.clear();
    let used = frame(&p.buf[..p.len], max_record, eof, frames);
    if !frames.is_empty() {
        let mut c = lock(capture);
        c.writer
            .append(p.stream, &p.buf[..p.len], frames, now_micros());
        if p.stream == Stream::Stderr {
            let tail = frames.len().saturating_sub(STDERR_TAIL);
            for f in &frames[tail..] {
                let text = String::from_utf8_lossy(f.content(&p.buf))
                    .trim_end()
                    .to_string();
                if c.stderr_tail.len() == STDERR_TAIL {
                    c.stderr_tail.pop_front();
                }
                c.stderr_tail.push_back(text);
            }
        }
    }
    p.buf.copy_within(used..p.len, 0);
    p.len -= used;
}

/// How much the capture thread is favoured over the rest of the daemon (nice levels).
const PRIORITY_BOOST: libc::c_int = 5;

/// Gives this thread a lower nice value than the daemon's other threads, where allowed
/// (root, `CAP_SYS_NICE` or `RLIMIT_NICE`); best effort. On a busy machine, the runtime's
/// workers serving a crowd of followers would otherwise take the CPU turns the capture needs,
/// and the child would block on a full pipe. The capture only runs when the child wrote
/// something, so it cannot starve anyone for longer than the child keeps printing.
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

/// Asks for a bigger pipe so that a fast child needs fewer wake-ups; best effort.
fn enlarge_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl on an open descriptor with an integer argument.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, READ_SIZE as libc::c_int);
    }
}
