//! The per-run holder process on its own: it runs the child, keeps its output until a
//! daemon has it, survives its daemon going away, and resumes from the daemon's offsets
//! with nothing lost or repeated.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

const HELLO: u8 = 1;
const DATA: u8 = 2;
const EOF: u8 = 3;
const EXIT: u8 = 4;
const RESUME: u8 = 10;
const DONE: u8 = 13;

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn offsets(kind: u8, a: u64, b: u64) -> Vec<u8> {
    let mut p = a.to_le_bytes().to_vec();
    p.extend_from_slice(&b.to_le_bytes());
    frame(kind, &p)
}

fn read_frame(s: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes(head[1..].try_into().unwrap()) as usize;
    let mut p = vec![0; len];
    s.read_exact(&mut p).ok()?;
    Some((head[0], p))
}

struct Held {
    child: std::process::Child,
    socket: std::path::PathBuf,
    exit_file: std::path::PathBuf,
    hello: serde_json::Value,
    _dir: tempfile::TempDir,
}

fn start(script: &str) -> Held {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run.sock");
    let exit_file = dir.path().join("run.exit");
    let mut child = Command::new(BIN)
        .args(["hold", "--run-id", "r1", "--socket"])
        .arg(&socket)
        .arg("--exit-file")
        .arg(&exit_file)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let hello: serde_json::Value = serde_json::from_str(&line).unwrap();
    Held {
        child,
        socket,
        exit_file,
        hello,
        _dir: dir,
    }
}

/// Reads frames until EXIT: stdout and stderr bytes, and the exit.
fn collect(s: &mut UnixStream, out: &mut [Vec<u8>; 2]) -> serde_json::Value {
    loop {
        let (kind, p) = read_frame(s).expect("a frame");
        match kind {
            HELLO => {}
            DATA => {
                let stream = p[0] as usize - 1;
                let off = u64::from_le_bytes(p[1..9].try_into().unwrap());
                assert_eq!(off, out[stream].len() as u64, "dense offsets");
                out[stream].extend_from_slice(&p[9..]);
            }
            EOF => {}
            EXIT => return serde_json::from_slice(&p).unwrap(),
            k => panic!("unexpected frame {k}"),
        }
    }
}

#[test]
fn the_holder_runs_the_child_and_hands_over_everything() {
    let mut h = start("echo out1; echo err1 >&2; echo out2; exit 3");
    assert!(h.hello["pid"].as_u64().unwrap() > 0, "{}", h.hello);
    let mut s = UnixStream::connect(&h.socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(&offsets(RESUME, 0, 0)).unwrap();
    let mut out = [Vec::new(), Vec::new()];
    let exit = collect(&mut s, &mut out);
    assert_eq!(out[0], b"out1\nout2\n");
    assert_eq!(out[1], b"err1\n");
    assert_eq!(exit["code"], 3);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&h.exit_file).unwrap()).unwrap();
    assert_eq!(file["code"], 3);
    s.write_all(&frame(DONE, &[])).unwrap();
    assert_eq!(h.child.wait().unwrap().code(), Some(0));
}

/// The daemon goes away mid-run and comes back: the child never notices, and the new
/// connection resumes from what the daemon had, with nothing lost or repeated.
#[test]
fn a_daemon_that_goes_away_resumes_from_its_offsets() {
    let mut h = start(
        "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; \
         read _ < /dev/null; sleep 0.3; echo after; exit 0",
    );
    let mut s = UnixStream::connect(&h.socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(&offsets(RESUME, 0, 0)).unwrap();
    // Take some output, then vanish without a word.
    let mut got = Vec::new();
    while got.len() < 5000 {
        let (kind, p) = read_frame(&mut s).unwrap();
        if kind == DATA && p[0] == 1 {
            got.extend_from_slice(&p[9..]);
        }
    }
    drop(s);
    // A new daemon kept only the first 4000 bytes.
    let kept = 4000;
    got.truncate(kept);
    let mut s = UnixStream::connect(&h.socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(&offsets(RESUME, kept as u64, 0)).unwrap();
    let mut out = [Vec::new(), Vec::new()];
    out[0] = got;
    let exit = collect(&mut s, &mut out);
    let mut want = String::new();
    for i in 0..2000 {
        want.push_str(&format!("line-{i}\n"));
    }
    want.push_str("after\n");
    assert_eq!(String::from_utf8(out[0].clone()).unwrap(), want);
    assert_eq!(exit["code"], 0);
    s.write_all(&frame(DONE, &[])).unwrap();
    assert_eq!(h.child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_command_that_cannot_start_is_reported_on_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["hold", "--run-id", "r", "--socket"])
        .arg(dir.path().join("s"))
        .arg("--exit-file")
        .arg(dir.path().join("e"))
        .args(["--", "/nonexistent/prog"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("No such file"), "{v}");
    assert_eq!(out.status.code(), Some(1));
}
