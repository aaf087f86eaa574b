#!/bin/sh
# The benchmark of issue 2: capture throughput versus a plain pipe, follower fan-out
# over loopback, and write-to-receipt latency, in one run, on /dev/shm.
# Builds the daemon and the benchmark in release mode first; options go to corral-bench
# (see `scripts/bench.sh --help`).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin corral --bin corral-bench
exec target/release/corral-bench "$@"
