#!/bin/sh
# On a machine WITH an NVIDIA GPU and driver: builds corral (offline: the crates must be
# in cargo's cache already; or set CORRAL_BIN to a built binary), starts a daemon on a
# free loopback port in a temporary home, runs a task, prints `corral gpu --json` and
# `corral gpu`, and checks that the daemon read the GPUs: `available: true` and at least
# one GPU with a name and a memory total above zero. Exits non-zero otherwise.
# Needs no network.
set -eu
cd "$(dirname "$0")/.."

if [ -n "${CORRAL_BIN:-}" ]; then
    bin=$CORRAL_BIN
else
    cargo build --release --offline --quiet --bin corral
    bin=$(pwd)/target/release/corral
    [ -n "${CARGO_TARGET_DIR:-}" ] && bin=$CARGO_TARGET_DIR/release/corral
fi

home=$(mktemp -d)
daemon=
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    rm -rf "$home"
}
trap cleanup EXIT INT TERM

"$bin" serve --home "$home" --listen 127.0.0.1:0 >"$home/serve.out" 2>&1 &
daemon=$!
addr=
for _ in $(seq 1 100); do
    addr=$(sed -n 's/^corral listening on //p' "$home/serve.out" | head -n 1)
    [ -n "$addr" ] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$home/serve.out"; echo "gpu-check: the daemon exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$home/serve.out"; echo "gpu-check: the daemon did not start" >&2; exit 1; }
export CORRAL_ADDR="$addr" CORRAL_TOKEN_FILE="$home/token"

"$bin" run --name gpu-check-task -- sleep 30 >/dev/null
json=$("$bin" gpu --json)
echo "$json"
"$bin" gpu

# Checked with the JSON parser at hand (python3, else jq).
if command -v python3 >/dev/null; then
    echo "$json" | python3 -c '
import json, sys
s = json.load(sys.stdin)
if not s.get("available"):
    sys.exit("gpu-check: not available: %s" % s.get("reason"))
ok = [g for g in s.get("gpus", []) if g.get("name") and (g.get("memory_total_bytes") or 0) > 0]
if not ok:
    sys.exit("gpu-check: no GPU with a name and a memory total")
print("gpu-check: ok, %d GPU(s) from %s" % (len(ok), s.get("source")))
'
elif command -v jq >/dev/null; then
    echo "$json" | jq -e '.available == true and ([.gpus[] | select(.name != null and .memory_total_bytes > 0)] | length > 0)' >/dev/null \
        || { echo "gpu-check: no available GPU with a name and a memory total" >&2; exit 1; }
    echo "gpu-check: ok"
else
    echo "gpu-check: needs python3 or jq to check the answer" >&2
    exit 1
fi
"$bin" stop gpu-check-task >/dev/null
