//! The holder process (`corral hold`): one per run, in its own session, it is the child's
//! parent and holds the child's output pipes and exit status, so that the daemon can die,
//! or be upgraded, while the child goes on. It keeps what the daemon has not yet written to
//! disk (bounded: when full it stops reading, and the child waits on a full pipe, but never
//! gets EPIPE) and hands it to whichever daemon connects next, from the offsets that daemon
//! has. It is a small poll(2) loop with no timer of its own.

use super::proto::{self, ExitStatus, Hello};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Unacknowledged bytes kept per stream before the holder stops reading the child.
pub const DEFAULT_BUFFER: usize = 16 << 20;
/// Bytes asked of the kernel per read of the child's pipes (which are enlarged to this
/// where allowed), and the socket buffer asked for towards the daemon.
const READ_SIZE: usize = 1 << 20;
/// Acknowledged bytes at the front of a stream's buffer before they are dropped.
const COMPACT_AT: usize = 1 << 20;
/// After the child exits, how long its pipes may stay open (something outside its group
/// still holds them) before the holder stops reading them.
const EXIT_GRACE: Duration = Duration::from_millis(500);

pub struct HoldArgs {
    pub run_id: String,
    pub socket: PathBuf,
    pub exit_file: PathBuf,
    pub cwd: Option<PathBuf>,
    pub argv: Vec<String>,
    pub buffer: usize,
}

struct Stream {
    id: u8,
    fd: Option<OwnedFd>,
    /// Offset of `buf[0]` in the stream.
    base: u64,
    buf: Vec<u8>,
    /// Acknowledged up to here: the bytes below may go (they are dropped from the front
    /// of `buf` a megabyte or more at a time, so forgetting costs no copy per ACK).
    acked: u64,
    /// Sent to the current daemon up to this offset.
    sent: u64,
    /// Whether the pipe was cut after the grace, not closed by its writers.
    cut: bool,
    eof_sent: bool,
}

impl Stream {
    fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    fn forget_below(&mut self, off: u64) {
        self.acked = self.acked.max(off.min(self.end()));
        let n = (self.acked.saturating_sub(self.base)) as usize;
        if n == self.buf.len() {
            self.buf.clear();
        } else if n >= COMPACT_AT {
            self.buf.drain(..n);
        } else {
            return;
        }
        self.base += n as u64;
    }

    /// Bytes kept that the daemon has not acknowledged.
    fn held(&self) -> usize {
        (self.end() - self.acked.max(self.base)) as usize
    }
}

/// Runs the holder until a daemon has everything; the process exit code.
pub fn hold(a: HoldArgs) -> i32 {
    // The daemon that started us may go away: its signals and a closed terminal are not ours.
    // SAFETY: setting dispositions of this single-threaded process.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let _ = std::fs::remove_file(&a.socket);
    let listener = match UnixListener::bind(&a.socket) {
        Ok(l) => l,
        Err(e) => {
            return report_start_error(
                &format!("cannot listen on {}: {e}", a.socket.display()),
                None,
            )
        }
    };
    let _ = listener.set_nonblocking(true);
    let Some((prog, args)) = a.argv.split_first() else {
        return report_start_error("empty command line", None);
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    if let Some(d) = &a.cwd {
        cmd.current_dir(d);
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The child gets the default dispositions back.
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return report_start_error(&format!("{e}"), e.raw_os_error()),
    };
    let pid = child.id();
    let hello = Hello {
        run_id: a.run_id.clone(),
        pid,
        pid_start: start_time(pid),
        holder_pid: std::process::id(),
    };
    // The daemon reads this line on our stdout, then never again.
    println!("{}", serde_json::to_string(&hello).unwrap_or_default());
    let _ = std::io::stdout().flush();
    // SAFETY: dup2 of /dev/null over our own stdout.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    let to_fd = |p: Option<std::process::ChildStdout>| p.map(OwnedFd::from);
    let mut streams = [
        Stream {
            id: proto::STDOUT,
            fd: to_fd(child.stdout.take()),
            base: 0,
            buf: Vec::new(),
            acked: 0,
            sent: 0,
            cut: false,
            eof_sent: false,
        },
        Stream {
            id: proto::STDERR,
            fd: child.stderr.take().map(OwnedFd::from),
            base: 0,
            buf: Vec::new(),
            acked: 0,
            sent: 0,
            cut: false,
            eof_sent: false,
        },
    ];
    for s in &streams {
        if let Some(fd) = &s.fd {
            set_nonblocking(fd.as_raw_fd());
            // SAFETY: fcntl on our pipe's read end; best effort.
            unsafe {
                libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, READ_SIZE as libc::c_int);
            }
        }
    }
    let pidfd = pidfd_open(pid);
    let mut exit: Option<ExitStatus> = None;
    let mut exit_sent = false;
    let mut grace_until: Option<Instant> = None;
    let mut client: Option<UnixStream> = None;
    let mut inbuf: Vec<u8> = Vec::new();
    let mut out = Outbox::default();
    let mut resumed = false;
    let mut read_buf = vec![0u8; 1 << 16];

    loop {
        // Fill the outgoing queue from what the daemon has not been sent yet.
        if let (Some(_), true) = (&client, resumed) {
            if out.is_empty() {
                fill(&mut out, &mut streams, exit, &mut exit_sent, &hello);
            }
        }
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let pfd = |fd: RawFd, events: i16| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        for s in &streams {
            let room = s.held() < a.buffer;
            fds.push(pfd(
                s.fd.as_ref().filter(|_| room).map_or(-1, |f| f.as_raw_fd()),
                libc::POLLIN,
            ));
        }
        fds.push(pfd(
            pidfd
                .as_ref()
                .filter(|_| exit.is_none())
                .map_or(-1, |f| f.as_raw_fd()),
            libc::POLLIN,
        ));
        fds.push(pfd(listener.as_raw_fd(), libc::POLLIN));
        let want_out = if out.is_empty() { 0 } else { libc::POLLOUT };
        fds.push(pfd(
            client.as_ref().map_or(-1, |c| c.as_raw_fd()),
            libc::POLLIN | want_out,
        ));
        let timeout = match grace_until {
            Some(t) => t.saturating_duration_since(Instant::now()).as_millis() as i32,
            // Without a pidfd, the exit is found by waitpid when the pipes close, or
            // every second while they stay open.
            None if pidfd.is_none() && exit.is_none() => 1000,
            None => -1,
        };
        // SAFETY: fds is a valid array for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 1;
        }
        // The child's output.
        for (i, s) in streams.iter_mut().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            let Some(fd) = &s.fd else { continue };
            // SAFETY: reading into our own buffer.
            // Straight into the stream's buffer: no copy.
            s.buf.reserve(READ_SIZE);
            let len = s.buf.len();
            let spare = s.buf.capacity() - len;
            let r = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    s.buf.as_mut_ptr().add(len).cast(),
                    spare.min(READ_SIZE),
                )
            };
            if r > 0 {
                // SAFETY: the kernel wrote `r` bytes there.
                unsafe { s.buf.set_len(len + r as usize) };
            } else if r == 0
                || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
            {
                s.fd = None;
            }
        }
        // The child's exit.
        if exit.is_none() && (fds[2].revents != 0 || pidfd.is_none()) {
            if let Ok(Some(st)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                let st = ExitStatus {
                    code: st.code(),
                    signal: st.signal(),
                };
                write_exit_file(&a.exit_file, &st);
                exit = Some(st);
                grace_until = Some(Instant::now() + EXIT_GRACE);
            }
        }
        if let Some(t) = grace_until {
            if streams.iter().all(|s| s.fd.is_none()) {
                grace_until = None;
            } else if Instant::now() >= t {
                for s in streams.iter_mut().filter(|s| s.fd.is_some()) {
                    s.fd = None;
                    s.cut = true;
                }
                grace_until = None;
            }
        }
        // A daemon connects: it replaces any earlier connection.
        if fds[3].revents != 0 {
            if let Ok((c, _)) = listener.accept() {
                let _ = c.set_nonblocking(true);
                set_send_buffer(&c);
                client = Some(c);
                inbuf.clear();
                out.clear();
                resumed = false;
                exit_sent = false;
                for s in streams.iter_mut() {
                    s.eof_sent = false;
                }
                out.frame(
                    proto::HELLO,
                    serde_json::to_string(&hello).unwrap_or_default().as_bytes(),
                );
            }
        }
        // The daemon's frames, and our writes to it.
        let mut drop_client = false;
        if let Some(c) = client.as_mut() {
            if fds[4].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match c.read(&mut read_buf) {
                    Ok(0) => drop_client = true,
                    Ok(n) => inbuf.extend_from_slice(&read_buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => drop_client = true,
                }
                match proto::split(&inbuf) {
                    Ok((frames, used)) => {
                        for (kind, p) in frames {
                            match kind {
                                proto::RESUME | proto::ACK => {
                                    if let Some((o, e)) = proto::parse_offsets(p) {
                                        for (s, off) in streams.iter_mut().zip([o, e]) {
                                            s.forget_below(off);
                                            if kind == proto::RESUME {
                                                s.sent = off.max(s.base);
                                            }
                                        }
                                        resumed |= kind == proto::RESUME;
                                    }
                                }
                                proto::SIGNAL => {
                                    if let Ok(b) = <[u8; 4]>::try_from(p) {
                                        // SAFETY: a signal to the child's own group.
                                        unsafe {
                                            libc::kill(-(pid as i32), i32::from_le_bytes(b));
                                        }
                                    }
                                }
                                proto::DONE => {
                                    let _ = std::fs::remove_file(&a.socket);
                                    return 0;
                                }
                                _ => {}
                            }
                        }
                        inbuf.drain(..used);
                    }
                    Err(_) => drop_client = true,
                }
            }
            if !drop_client && !out.is_empty() && fds[4].revents & libc::POLLOUT != 0 {
                match out.write_to(c.as_raw_fd(), &streams) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => drop_client = true,
                }
            }
        }
        if drop_client {
            client = None;
            out.clear();
        }
    }
}

/// Queues the next frames for the daemon: data it has not been sent, then each stream's
/// end, then the exit.
fn fill(
    out: &mut Outbox,
    streams: &mut [Stream; 2],
    exit: Option<ExitStatus>,
    exit_sent: &mut bool,
    _hello: &Hello,
) {
    for (i, s) in streams.iter_mut().enumerate() {
        let end = s.end();
        if s.sent < end {
            let to = end.min(s.sent + proto::MAX_PAYLOAD as u64);
            out.data(i, s.id, s.sent, to);
            s.sent = to;
        } else if s.fd.is_none() && !s.eof_sent {
            let mut p = vec![s.id];
            p.extend_from_slice(&end.to_le_bytes());
            p.push(u8::from(s.cut));
            out.frame(proto::EOF, &p);
            s.eof_sent = true;
        }
    }
    if let Some(st) = exit {
        if !*exit_sent && streams.iter().all(|s| s.eof_sent) {
            out.frame(
                proto::EXIT,
                serde_json::to_string(&st).unwrap_or_default().as_bytes(),
            );
            *exit_sent = true;
        }
    }
}

/// What is queued for the daemon: frames built here, and DATA payloads that go straight
/// from a stream's buffer to the socket (one `writev` with their headers), never copied.
#[derive(Default)]
struct Outbox {
    segs: std::collections::VecDeque<Seg>,
    /// Bytes of the front segment already written.
    at: usize,
}

enum Seg {
    Own(Vec<u8>),
    /// Bytes `from..to` of stream `slot` (offsets in the stream).
    Data {
        slot: usize,
        from: u64,
        to: u64,
    },
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    fn clear(&mut self) {
        self.segs.clear();
        self.at = 0;
    }

    fn own(&mut self) -> &mut Vec<u8> {
        if !matches!(self.segs.back(), Some(Seg::Own(_))) {
            self.segs.push_back(Seg::Own(Vec::new()));
        }
        match self.segs.back_mut() {
            Some(Seg::Own(v)) => v,
            _ => unreachable!("an owned segment was just pushed"),
        }
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) {
        proto::frame(self.own(), kind, payload);
    }

    /// A DATA frame of bytes `from..to` of stream `slot` (whose wire id is `id`).
    fn data(&mut self, slot: usize, id: u8, from: u64, to: u64) {
        let h = self.own();
        h.push(proto::DATA);
        h.extend_from_slice(&((9 + to - from) as u32).to_le_bytes());
        h.push(id);
        h.extend_from_slice(&from.to_le_bytes());
        self.segs.push_back(Seg::Data { slot, from, to });
    }

    /// Writes what it can with one `writev`; the stream buffers still hold every queued
    /// payload (the daemon acknowledges only what it received, so nothing queued is
    /// forgotten before it is sent).
    fn write_to(&mut self, fd: RawFd, streams: &[Stream; 2]) -> std::io::Result<usize> {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
        for (k, seg) in self.segs.iter().take(8).enumerate() {
            let skip = if k == 0 { self.at } else { 0 };
            let bytes: &[u8] = match seg {
                Seg::Own(v) => &v[skip..],
                Seg::Data { slot, from, to } => {
                    // What is acknowledged may already be gone from the buffer, but it
                    // was all written: the unwritten rest starts at or after `base`.
                    let s = &streams[*slot];
                    let a = (from + skip as u64 - s.base) as usize;
                    let b = (to - s.base) as usize;
                    &s.buf[a..b]
                }
            };
            iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        // SAFETY: every iovec points into a live buffer that nothing changes during the call.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut left = n as usize;
        while left > 0 {
            let Some(front) = self.segs.front() else {
                break;
            };
            let len = match front {
                Seg::Own(v) => v.len(),
                Seg::Data { from, to, .. } => (to - from) as usize,
            } - self.at;
            if left < len {
                self.at += left;
                break;
            }
            left -= len;
            self.at = 0;
            self.segs.pop_front();
        }
        Ok(n as usize)
    }
}

fn report_start_error(msg: &str, errno: Option<i32>) -> i32 {
    println!("{}", serde_json::json!({ "error": msg, "errno": errno }));
    let _ = std::io::stdout().flush();
    1
}

/// Written when the child ends (atomically: a new file, then a rename), so that a daemon
/// that finds this holder gone still learns how the run ended.
fn write_exit_file(path: &std::path::Path, st: &ExitStatus) {
    let tmp = path.with_extension("exit.tmp");
    if std::fs::write(&tmp, serde_json::to_string(st).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// A larger send buffer towards the daemon: fewer wake-ups when the child is fast.
fn set_send_buffer(c: &UnixStream) {
    let size = READ_SIZE as libc::c_int;
    // SAFETY: setsockopt on our socket with a plain int; best effort.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an open descriptor.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// A descriptor that becomes readable when `pid` exits (Linux 5.3+), if the kernel has it.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; the result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}
