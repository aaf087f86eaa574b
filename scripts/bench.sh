#!/usr/bin/env bash
# The project's benchmark, in one run, on /dev/shm: capture throughput versus a plain pipe,
# follower fan-out and latency over loopback (--capture); the same capture under the plain
# pipe, corral, supervisord and pm2 side by side (--peers; supervisord and pm2 are installed
# on first use under ~/.cache/corral-test); an idle daemon with 1,000 tasks and followers
# (--idle); a remote file read over SSH through a real sshd on loopback: latency of a new
# line, transfer while idle (--ssh; needs openssh-server); Redis publishing and a simulated
# fleet (--redis, --fleet; need redis-server and redis-benchmark); the web dashboard in
# headless Chromium (--dashboard: write-to-DOM latency at 1,000 lines/s, and the highest
# line rate the page keeps up with for 30 s; needs chromium and `npm ci --prefix
# dashboard`). With none of these flags it runs them all; --quick shrinks the sizes.
# Builds the daemon and the benchmark in release mode first; other options go to
# corral-bench (see `scripts/bench.sh --help`).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin corral --bin corral-bench
target="${CARGO_TARGET_DIR:-target}"
dashboard=0
sections=0
quick=()
args=()
for a in "$@"; do
  case "$a" in
    --dashboard) dashboard=1 ;;
    --capture|--peers|--idle) sections=1; args+=("$a") ;;
    --quick) quick=(--quick); args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done
if [ "$sections" = 1 ] || [ "$dashboard" = 0 ]; then
  "$target/release/corral-bench" "${args[@]}"
fi
if [ "$dashboard" = 1 ] || [ "$sections" = 0 ]; then
  CORRAL_BIN="$target/release/corral" node dashboard/test/bench.mjs "${quick[@]}"
fi
