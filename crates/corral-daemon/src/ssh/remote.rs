//! The POSIX sh scripts corral runs on a remote host, and the command lines that run them.
//! They need only `sh`, `ls`, `wc`, `tail`, `head`, `cat`, `sleep`, `kill` and, for a
//! command, `setsid` (util-linux, or busybox).
//!
//! **The follow script** ([`follow`]) reads a remote file by byte position: it prints one
//! header line `corral-follow <inode> <start>` (the file's inode and the byte it starts
//! from: the asked offset when the file at the path is the asked inode and is long
//! enough, else 0), then the file's bytes from there, as they are written: a look every
//! 0.2 s on the remote side, which sends nothing while the file does not grow. It ends
//! (status 0) with a line on stderr: `corral-rotated` (another file is at the path),
//! `corral-truncated` (the file shrank), or `corral-exit <status>` (the command whose log
//! it reads ended, and its last bytes were sent). A script that waits for the file to
//! exist says `corral-waiting` once. It ends by itself when its connection closes: a
//! `cat` on the session's stdin sees end-of-file then, and the loop looks at it each turn.
//!
//! **The launch script** ([`launch`]) starts a command detached from the session, in a
//! session and process group of its own, under a runner that keeps its output in
//! `<dir>/log` and, once it ends, its status in `<dir>/status` (written whole, by a
//! rename); `<dir>/pgid` is the process group. A dropped connection loses nothing: the log
//! is read by position and the status is read when the follow script sees it. Launching
//! the same directory twice starts nothing the second time.
//!
//! **The signal script** ([`signal`]) sends a signal to the command's process group,
//! unless it already ended.

use super::quote;

const FOLLOW: &str = r#"f=$1 off=$2 want=$3 st=$4
exec 3<&0 </dev/null
cat <&3 >/dev/null 2>&1 &
c=$!
nap() { sleep 0.2 2>/dev/null || sleep 1; }
ino() { set -- $(ls -di -- "$f" 2>/dev/null); i=${1:-}; }
size() { s=$(wc -c <"$f" 2>/dev/null) || s=-1; s=$((s+0)); }
ended() { [ -n "$st" ] && [ -f "$st" ]; }
noted=
while ino; [ -z "$i" ]; do
  kill -0 $c 2>/dev/null || exit 0
  if ended; then echo "corral-exit $(cat "$st")" >&2; exit 0; fi
  [ -n "$noted" ] || { echo corral-waiting >&2; noted=1; }
  nap
done
size
if [ "$i" != "$want" ] || [ "$s" -lt "$off" ]; then off=0; fi
cur=$i
printf 'corral-follow %s %s\n' "$cur" "$off"
while :; do
  kill -0 $c 2>/dev/null || exit 0
  done=
  ended && done=1
  ino; size
  if [ "$i" != "$cur" ]; then echo corral-rotated >&2; exit 0; fi
  if [ "$s" -lt 0 ]; then nap; continue; fi
  if [ "$s" -lt "$off" ]; then echo "corral-truncated $s" >&2; exit 0; fi
  if [ "$s" -gt "$off" ]; then
    tail -c +$((off+1)) -- "$f" | head -c $((s-off)) || exit 3
    off=$s
    [ -n "$done" ] || continue
  fi
  if [ -n "$done" ]; then echo "corral-exit $(cat "$st")" >&2; exit 0; fi
  nap
done"#;

const LAUNCH: &str = r#"d=$1 cwd=$2; shift 2
if [ -f "$d/pgid" ]; then echo "corral-started $(cat "$d/pgid")"; exit 0; fi
command -v setsid >/dev/null 2>&1 || { echo "the remote host has no setsid (util-linux or busybox)" >&2; exit 3; }
mkdir -p "$d" && d=$(cd "$d" && pwd) || exit 3
if [ -n "$cwd" ]; then cd "$cwd" || exit 3; fi
: >>"$d/log"
setsid sh -c '
d=$1; shift
setsid "$@" >>"$d/log" 2>&1 </dev/null &
p=$!
echo $p >"$d/pgid.tmp" && mv "$d/pgid.tmp" "$d/pgid"
wait $p
echo $? >"$d/status.tmp" && mv "$d/status.tmp" "$d/status"
' corral-runner "$d" "$@" </dev/null >/dev/null 2>&1 &
n=0
while [ ! -f "$d/pgid" ] && [ $n -lt 200 ]; do sleep 0.05 2>/dev/null || sleep 1; n=$((n+1)); done
[ -f "$d/pgid" ] || { echo "the remote runner did not start" >&2; exit 3; }
echo "corral-started $(cat "$d/pgid")""#;

const SIGNAL: &str = r#"d=$1
if [ -f "$d/status" ]; then echo corral-ended; exit 0; fi
p=$(cat "$d/pgid" 2>/dev/null) || { echo corral-none; exit 0; }
kill -s "$2" -- "-$p" 2>/dev/null
echo corral-signalled"#;

fn line(script: &str, name: &str, args: &[&str]) -> String {
    let mut s = format!("sh -c {} {name}", quote(script));
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

/// The remote directory of a command run: its log, status and process group.
pub fn run_dir(run_id: &str) -> String {
    format!(".corral/runs/{run_id}")
}

/// Follows `path` from byte `offset` of the file whose inode is `inode` (else from the
/// start of the file at the path); with `status`, ends when that file appears.
pub fn follow(path: &str, offset: u64, inode: Option<u64>, status: Option<&str>) -> String {
    let inode = inode.map(|i| i.to_string()).unwrap_or_default();
    line(
        FOLLOW,
        "corral-follow",
        &[path, &offset.to_string(), &inode, status.unwrap_or("")],
    )
}

/// Starts `command` (in `cwd`, else the remote home) under the runner, keeping its files
/// in `dir`. Prints `corral-started <pgid>`.
pub fn launch(dir: &str, cwd: Option<&str>, command: &[String]) -> String {
    let mut args = vec![dir, cwd.unwrap_or("")];
    args.extend(command.iter().map(String::as_str));
    line(LAUNCH, "corral-launch", &args)
}

/// Sends `signal` (`TERM`, `KILL`) to the process group of the command in `dir`.
pub fn signal(dir: &str, signal: &str) -> String {
    line(SIGNAL, "corral-signal", &[dir, signal])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Runs a command line as the remote login shell would.
    fn sh(line: &str) -> std::process::Child {
        Command::new("sh")
            .args(["-c", line])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn inode(p: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn follow_goes_on_from_the_offset_of_the_same_file_and_ends_with_its_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.log");
        std::fs::write(&f, b"one\ntwo\n").unwrap();
        let ino = inode(&f);
        let mut child = sh(&follow(f.to_str().unwrap(), 4, Some(ino), None));
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut header = String::new();
        std::io::BufRead::read_line(&mut out, &mut header).unwrap();
        assert_eq!(header, format!("corral-follow {ino} 4\n"));
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut out, &mut got).unwrap();
        assert_eq!(&got, b"two\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        let mut got = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut got).unwrap();
        assert_eq!(&got, b"three\n");
        // The connection closes: the script ends by itself.
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn follow_starts_over_on_another_file_and_ends_with_the_commands_status() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.log");
        let st = dir.path().join("status");
        std::fs::write(&f, b"x\n").unwrap();
        std::fs::write(&st, b"3\n").unwrap();
        let mut child = sh(&follow(
            f.to_str().unwrap(),
            1,
            Some(inode(&f) + 1),
            Some(st.to_str().unwrap()),
        ));
        // The connection stays open: the script ends because the command did.
        let _open = child.stdin.take();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("corral-follow {} 0\nx\n", inode(&f))
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "corral-exit 3\n");
    }

    #[test]
    fn launch_keeps_the_output_and_the_status_and_signal_reaches_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("run");
        let d = d.to_str().unwrap();
        let cmd = ["sh", "-c", "echo it\\'s; exit 7"].map(String::from);
        let out = sh(&launch(d, None, &cmd)).wait_with_output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("corral-started "),
            "{out:?}"
        );
        let status = std::path::Path::new(d).join("status");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !status.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "7\n");
        assert_eq!(
            std::fs::read_to_string(std::path::Path::new(d).join("log")).unwrap(),
            "it's\n"
        );

        let d2 = dir.path().join("run2");
        let d2 = d2.to_str().unwrap();
        let cmd = ["sleep", "30"].map(String::from);
        sh(&launch(d2, Some("/"), &cmd)).wait_with_output().unwrap();
        let out = sh(&signal(d2, "TERM")).wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "corral-signalled\n");
        let status = std::path::Path::new(d2).join("status");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !status.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "143\n");
    }
}
