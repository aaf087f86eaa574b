#!/bin/sh
# The project's benchmark, in one run, on /dev/shm: capture throughput versus a plain pipe,
# follower fan-out and latency over loopback (--capture); the same capture under the plain
# pipe, corral, supervisord and pm2 side by side (--peers; supervisord and pm2 are installed
# on first use under ~/.cache/corral-test); an idle daemon with 1,000 tasks and followers
# (--idle); a remote file read over SSH through a real sshd on loopback: latency of a new
# line, transfer while idle (--ssh; needs openssh-server). With none of these flags it runs
# all four; --quick shrinks the sizes.
# Builds the daemon and the benchmark in release mode first; options go to corral-bench
# (see `scripts/bench.sh --help`).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin corral --bin corral-bench
exec target/release/corral-bench "$@"
