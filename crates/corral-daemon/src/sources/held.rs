//! A held run's output: the child's stdout and stderr as its holder process (see
//! [`crate::holder`]) keeps them, read from the holder's Unix socket.
//!
//! The holder numbers each stream's bytes from the start of the run; this source tells it
//! where the run's log stands (`RESUME`), hands what it sends to the run's channels, and
//! after every batch writes the log's checkpoint and only then acknowledges (`ACK`) what
//! the checkpoint holds, so the holder forgets nothing the log might not have. The
//! incomplete last line of a stream is never acknowledged: a later daemon gets it again.
//! When both streams ended and the exit came, it says `DONE` and the holder ends.
//!
//! Detached (the daemon leaves its runs running for the next one), it stops reading and
//! lets go of its channels without ending them: their incomplete lines stay with the
//! holder.
//!
//! Reading runs on the async runtime, one small task per held run: an idle run costs a
//! registered socket, no thread and no wake-up.

use super::{reactor, Capture, Source};
use crate::holder::proto::{self, ExitStatus};
use crate::logbook::{Channel, Ingest};
use corral_core::policy::Exit;
use corral_core::record::Stream;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

/// Largest read from the holder's socket.
const READ_SIZE: usize = 1 << 20;

/// Read buffers, lent to one read at a time and given back: the daemon keeps at most
/// [`SPARE_BUFFERS`] of them whatever the number of runs, and however many runtime
/// threads the reads happened on (a buffer per thread would stay with each thread that
/// ever served a busy run).
static BUFFERS: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());
const SPARE_BUFFERS: usize = 2;

fn lend_buffer() -> Box<[u8]> {
    BUFFERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_else(|| vec![0u8; READ_SIZE].into_boxed_slice())
}

fn give_back_buffer(b: Box<[u8]>) {
    let mut spare = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < SPARE_BUFFERS {
        spare.push(b);
    }
}

/// The holder of one run, to be read.
pub struct Held {
    pub run_id: String,
    pub socket: PathBuf,
    /// Written by the holder when the child ended: how a run whose holder went away ended.
    pub exit_file: PathBuf,
    /// Bytes of stdout and stderr the log already has in records.
    pub resume: [u64; 2],
    /// The child's exit, for the run's handle.
    pub exit: oneshot::Sender<Exit>,
}

/// The exit a holder recorded in its exit file, if it wrote one.
pub fn recorded_exit(path: &std::path::Path) -> Option<Exit> {
    let text = std::fs::read_to_string(path).ok()?;
    let st: ExitStatus = serde_json::from_str(&text).ok()?;
    Some(to_exit(st))
}

fn to_exit(st: ExitStatus) -> Exit {
    match (st.code, st.signal) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        _ => Exit::Code(-1),
    }
}

impl Source for Held {
    fn start(self: Box<Self>, ingest: Ingest) -> std::io::Result<Capture> {
        ingest.keep_checkpoints()?;
        let conn = std::os::unix::net::UnixStream::connect(&self.socket).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot reach the run's holder at {}: {e}",
                    self.socket.display()
                ),
            )
        })?;
        conn.set_nonblocking(true)?;
        let size = READ_SIZE as libc::c_int;
        // SAFETY: setsockopt on our socket with a plain int; best effort (fewer wake-ups
        // when the child is fast).
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&conn),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let conn = UnixStream::from_std(conn)?;
        let (done, drained) = oneshot::channel();
        let (detach_tx, detach) = oneshot::channel();
        tokio::spawn(pump(*self, conn, ingest, detach, done));
        Ok(Capture::detachable(
            drained,
            || {},
            move || {
                let _ = detach_tx.send(());
            },
        ))
    }
}

/// How the reading ended.
enum Outcome {
    /// Both streams ended and the exit came; the holder was told to end.
    Done,
    /// The daemon lets go of the run: the holder keeps it.
    Detached,
    /// The holder went away, or spoke nonsense.
    Lost(String),
}

fn slot(stream: u8) -> Option<usize> {
    match stream {
        proto::STDOUT => Some(0),
        proto::STDERR => Some(1),
        _ => None,
    }
}

struct Pump {
    ingest: Ingest,
    channels: [Option<Channel>; 2],
    /// The next byte expected of each stream.
    next: [u64; 2],
    exit: Option<oneshot::Sender<Exit>>,
    exited: bool,
    cut: Vec<&'static str>,
}

impl Pump {
    /// Handles one frame from the holder; an error ends the connection.
    fn frame(&mut self, run_id: &str, kind: u8, p: &[u8]) -> Result<(), String> {
        match kind {
            proto::HELLO => {
                let hello: proto::Hello =
                    serde_json::from_slice(p).map_err(|e| format!("a bad hello: {e}"))?;
                if hello.run_id != run_id {
                    return Err(format!(
                        "the socket holds run {}, not {run_id}",
                        hello.run_id
                    ));
                }
            }
            proto::DATA => {
                let (stream, off, bytes) = proto::parse_data(p).ok_or("a DATA frame too short")?;
                let i = slot(stream).ok_or("DATA of an unknown stream")?;
                let end = off + bytes.len() as u64;
                if end <= self.next[i] {
                    return Ok(()); // already in the log
                }
                if off > self.next[i] {
                    let lost = off - self.next[i];
                    self.ingest.system(&format!(
                        "{lost} bytes of {} are missing: the holder no longer had them",
                        ["stdout", "stderr"][i]
                    ));
                }
                let skip = self.next[i].saturating_sub(off) as usize;
                if let Some(ch) = self.channels[i].as_mut() {
                    ch.push(&bytes[skip..], None);
                }
                self.next[i] = end;
            }
            proto::EOF => {
                let (stream, _off, rest) = proto::parse_data(p).ok_or("an EOF frame too short")?;
                let i = slot(stream).ok_or("EOF of an unknown stream")?;
                if let Some(mut ch) = self.channels[i].take() {
                    ch.end(None);
                }
                if rest.first() == Some(&1) {
                    self.cut.push(["stdout", "stderr"][i]);
                }
            }
            proto::EXIT => {
                let st: ExitStatus =
                    serde_json::from_slice(p).map_err(|e| format!("a bad exit: {e}"))?;
                self.exited = true;
                if let Some(tx) = self.exit.take() {
                    let _ = tx.send(to_exit(st));
                }
            }
            other => return Err(format!("an unknown frame type {other}")),
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.exited && self.channels.iter().all(Option::is_none)
    }
}

async fn pump(
    held: Held,
    mut conn: UnixStream,
    ingest: Ingest,
    mut detach: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
) {
    let Held {
        run_id,
        exit_file,
        resume,
        exit,
        ..
    } = held;
    let mut p = Pump {
        channels: [
            Some(ingest.channel(Stream::Stdout)),
            Some(ingest.channel(Stream::Stderr)),
        ],
        ingest,
        next: resume,
        exit: Some(exit),
        exited: false,
        cut: Vec::new(),
    };
    let mut out = Vec::new();
    proto::offsets(&mut out, proto::RESUME, resume[0], resume[1]);
    // Bytes of a frame cut across reads; the reads themselves go to a scratch buffer of
    // the worker thread, so an idle run holds no read buffer.
    let mut inbuf: Vec<u8> = Vec::new();
    let outcome = 'conn: loop {
        if !out.is_empty() {
            if let Err(e) = conn.write_all(&out).await {
                break Outcome::Lost(format!("writing to the holder: {e}"));
            }
            out.clear();
        }
        if p.finished() {
            proto::frame(&mut out, proto::DONE, &[]);
            let _ = conn.write_all(&out).await;
            break Outcome::Done;
        }
        tokio::select! {
            biased;
            _ = &mut detach => break Outcome::Detached,
            r = conn.readable() => if let Err(e) = r {
                break Outcome::Lost(format!("waiting for the holder: {e}"));
            },
        }
        let mut rd = lend_buffer();
        let handled = (|| {
            let n = match conn.try_read(&mut rd) {
                Ok(0) => return Err(Outcome::Lost("the holder closed its socket".into())),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(Outcome::Lost(format!("reading from the holder: {e}"))),
            };
            // Frames are handled from the read itself unless one was cut across reads.
            let buf: &[u8] = if inbuf.is_empty() {
                &rd[..n]
            } else {
                inbuf.extend_from_slice(&rd[..n]);
                &inbuf
            };
            let (frames, used) = proto::split(buf).map_err(Outcome::Lost)?;
            for (kind, payload) in frames {
                p.frame(&run_id, kind, payload).map_err(Outcome::Lost)?;
            }
            if inbuf.is_empty() {
                inbuf.extend_from_slice(&rd[used..n]);
            } else {
                inbuf.drain(..used);
            }
            Ok(true)
        })();
        give_back_buffer(rd);
        match handled {
            Ok(true) => {}
            Ok(false) => continue,
            Err(outcome) => break 'conn outcome,
        }
        if inbuf.is_empty() {
            inbuf = Vec::new();
        }
        // What the checkpoint holds may be forgotten by the holder; never more.
        match p.ingest.checkpoint() {
            Ok(at) => proto::offsets(&mut out, proto::ACK, at.streams[0], at.streams[1]),
            Err(e) => tracing::error!(run_id = %run_id, "writing the run's checkpoint: {e}"),
        }
    };
    match outcome {
        Outcome::Done => {}
        Outcome::Detached => {
            for ch in p.channels.iter_mut().filter_map(Option::take) {
                ch.abandon();
            }
        }
        Outcome::Lost(why) => {
            let how = if p.exited {
                None
            } else {
                let exit = recorded_exit(&exit_file);
                if let Some(tx) = p.exit.take() {
                    // Unknown when neither the holder nor its exit file says: the run
                    // ends, and its message says why.
                    let _ = tx.send(exit.unwrap_or(Exit::Code(-1)));
                }
                Some(exit)
            };
            p.ingest.system(&match how {
                Some(None) => format!(
                    "the run's holder process went away ({why}): how the process ended is unknown; output after this point is not captured"
                ),
                _ => format!("the run's holder process went away ({why})"),
            });
        }
    }
    if !p.cut.is_empty() {
        p.ingest.system(&reactor::cut_note(&p.cut));
    }
    drop(p);
    let _ = done.send(());
}
