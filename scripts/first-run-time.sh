#!/usr/bin/env bash
# Times README command 1 (scripts/demo.sh) as a first run: a fresh clone of this checkout's HEAD
# with an empty cargo home, target dir, pip and npm caches, and no wasm-bindgen on PATH (issue
# #16: under 15 minutes on a fresh 2-core machine). What it cannot make fresh: apt's packages
# (Chromium, Mesa) and rustup's toolchains and targets, which stay installed (they took 25 s on a
# machine straight after boot). Prints the log with a clock time on every line, then the total.
#   scripts/first-run-time.sh [WORK_DIR]   (default /var/tmp/edge-llm-first-run; wiped first)
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
F=${1:-/var/tmp/edge-llm-first-run}
rm -rf "$F"
mkdir -p "$F/cargo" "$F/rustbin"
git clone -q "$src" "$F/repo"
# rustup's proxies, without whatever else ~/.cargo/bin holds (a wasm-bindgen installed before).
rustbin=$(dirname "$(command -v rustup)")
for b in cargo rustc rustdoc rustup; do ln -sf "$rustbin/$b" "$F/rustbin/$b"; done
export CARGO_HOME=$F/cargo CARGO_TARGET_DIR=$F/target PIP_CACHE_DIR=$F/pip npm_config_cache=$F/npm
PATH=$F/cargo/bin:$F/rustbin:$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$rustbin" | paste -sd:)
export PATH
if command -v wasm-bindgen >/dev/null; then
  echo "first-run-time: wasm-bindgen is still on PATH ($(command -v wasm-bindgen))" >&2
  exit 1
fi
cd "$F/repo"
start=$(date +%s)
bash -x scripts/demo.sh 2>&1 | while IFS= read -r line; do printf '%s %s\n' "$(date +%T)" "$line"; done | tee "$F/log"
rc=${PIPESTATUS[0]}
echo "first-run-time: scripts/demo.sh exited $rc after $(( $(date +%s) - start )) s (log: $F/log)"
exit "$rc"
