//! The wire between the daemon and a run's holder process, over the holder's Unix socket.
//!
//! Every frame is `type: u8, len: u32 (LE), payload[len]`. Offsets count the bytes of one
//! stream (stdout or stderr) from the start of the run, so both sides agree on what has
//! been kept without sequence numbers of their own.
//!
//! Holder → daemon:
//! - `HELLO` JSON [`Hello`]: who the holder runs, sent first on every connection;
//! - `DATA` `stream: u8, offset: u64 (LE), bytes`: output at that offset of that stream;
//! - `EOF` `stream: u8, offset: u64`: the stream ended there;
//! - `EXIT` JSON [`ExitStatus`]: the child ended (after its streams' `EOF`s).
//!
//! Daemon → holder:
//! - `RESUME` `stdout: u64, stderr: u64`: what the daemon has on disk; the holder sends
//!   from there (first frame of every connection);
//! - `ACK` `stdout: u64, stderr: u64`: on disk up to there; the holder may forget it;
//! - `SIGNAL` `sig: i32`: deliver to the child's process group;
//! - `DONE`: the daemon has everything and the exit; the holder ends.

use serde::{Deserialize, Serialize};

pub const HELLO: u8 = 1;
pub const DATA: u8 = 2;
pub const EOF: u8 = 3;
pub const EXIT: u8 = 4;
pub const RESUME: u8 = 10;
pub const ACK: u8 = 11;
pub const SIGNAL: u8 = 12;
pub const DONE: u8 = 13;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// Largest payload a frame may carry (a DATA frame is cut to fit).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The holder's introduction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub run_id: String,
    /// The child's pid (its process group id too).
    pub pid: u32,
    /// The child's start time (clock ticks since boot), telling it from a reused pid.
    pub pid_start: Option<u64>,
    /// The holder's own pid.
    pub holder_pid: u32,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a DATA frame.
pub fn data(out: &mut Vec<u8>, stream: u8, offset: u64, bytes: &[u8]) {
    out.push(DATA);
    out.extend_from_slice(&((9 + bytes.len()) as u32).to_le_bytes());
    out.push(stream);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Two offsets, for RESUME and ACK.
pub fn offsets(out: &mut Vec<u8>, kind: u8, stdout: u64, stderr: u64) {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&stdout.to_le_bytes());
    p[8..].copy_from_slice(&stderr.to_le_bytes());
    frame(out, kind, &p);
}

/// Reads two offsets back.
pub fn parse_offsets(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() != 16 {
        return None;
    }
    let a = u64::from_le_bytes(p[..8].try_into().ok()?);
    let b = u64::from_le_bytes(p[8..].try_into().ok()?);
    Some((a, b))
}

/// A stream tag and an offset, then bytes (DATA, EOF).
pub fn parse_data(p: &[u8]) -> Option<(u8, u64, &[u8])> {
    if p.len() < 9 {
        return None;
    }
    let off = u64::from_le_bytes(p[1..9].try_into().ok()?);
    Some((p[0], off, &p[9..]))
}

/// Complete frames, `(kind, payload)`, and how many bytes of the buffer they took.
pub type Split<'a> = (Vec<(u8, &'a [u8])>, usize);

/// Cuts complete frames off the front of `buf`: `(kind, payload)` each, and how many
/// bytes they took. A frame longer than [`MAX_PAYLOAD`] + 16 is an error (a peer that
/// does not speak this protocol).
pub fn split(buf: &[u8]) -> Result<Split<'_>, String> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let kind = buf[at];
        let len = u32::from_le_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
        if len > MAX_PAYLOAD + 16 {
            return Err(format!("frame of {len} bytes (type {kind}): not a holder"));
        }
        if buf.len() - at - 5 < len {
            break;
        }
        frames.push((kind, &buf[at + 5..at + 5 + len]));
        at += 5 + len;
    }
    Ok((frames, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_any_cut() {
        let mut wire = Vec::new();
        data(&mut wire, STDOUT, 7, b"hello\n");
        offsets(&mut wire, ACK, 13, 2);
        frame(&mut wire, DONE, &[]);
        // Fed in two pieces at every cut, the frames come out whole and in order.
        for cut in 0..=wire.len() {
            let mut got = Vec::new();
            let mut pending = wire[..cut].to_vec();
            let (frames, used) = split(&pending).unwrap();
            got.extend(frames.into_iter().map(|(k, p)| (k, p.to_vec())));
            pending.drain(..used);
            pending.extend_from_slice(&wire[cut..]);
            let (frames, used) = split(&pending).unwrap();
            got.extend(frames.into_iter().map(|(k, p)| (k, p.to_vec())));
            assert_eq!(used, pending.len());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(parse_data(&got[0].1), Some((STDOUT, 7, &b"hello\n"[..])));
            assert_eq!(parse_offsets(&got[1].1), Some((13, 2)));
            assert_eq!(got[2], (DONE, Vec::new()));
        }
    }

    #[test]
    fn a_huge_frame_is_refused() {
        let mut wire = vec![DATA];
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(split(&wire).is_err());
    }
}
