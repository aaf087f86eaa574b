#!/usr/bin/env bash
# Rebuilds the web dashboard from dashboard/ into crates/corral-daemon/assets/dashboard/
# (checked in and embedded in the binary, so `cargo build` needs no Node.js).
#   scripts/dashboard-build.sh           rebuild; commit what changed
#   scripts/dashboard-build.sh --check   rebuild into a temporary directory and fail if it
#                                        differs from the checked-in output (CI runs this)
# Installs the exact versions of dashboard/package-lock.json with `npm ci` (needs Node.js
# and npm, and the npm registry or npm's cache).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "Node.js and npm are needed to build the dashboard: apt-get install nodejs npm" >&2
  exit 1
fi
# Reinstall only when the lockfile changed since the last install.
stamp=dashboard/node_modules/.corral-installed
if ! [ -f "$stamp" ] || [ dashboard/package-lock.json -nt "$stamp" ]; then
  npm ci --prefix dashboard --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi

out=crates/corral-daemon/assets/dashboard
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  node dashboard/build.mjs "$tmp" >/dev/null
  if ! diff -r "$tmp" "$out" >/dev/null; then
    diff -r "$tmp" "$out" | head -20 >&2 || true
    echo "the checked-in dashboard ($out) is not what its sources build: run scripts/dashboard-build.sh and commit the result" >&2
    exit 1
  fi
  echo "dashboard: the checked-in build matches its sources" >&2
else
  node dashboard/build.mjs
fi
