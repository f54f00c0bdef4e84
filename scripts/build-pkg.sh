#!/usr/bin/env bash
# Builds the npm package into pkg/: cargo builds the .wasm (release), wasm-bindgen writes its JS
# glue (--target web), then binaryen from npm (package-lock.json) optimizes the .wasm. Debian's
# binaryen 108 is too old: it rewrites wasm-bindgen's externref table. (wasm-pack did the first
# two steps; it is no longer needed: what it added, package.json and the README, is written
# below, and installing it cost minutes of a first run, issue #16.)
set -euo pipefail
cd "$(dirname "$0")/.."
# PROFILE=dev: no LTO, dependencies still at opt-level 2: quicker to build, for tests on a cold
# target directory. Any other name is a Cargo.toml profile.
profile=${PROFILE:-release}
case "$profile" in
  dev) out_dir=debug; bindgen=(--debug) ;;
  *) out_dir=$profile; bindgen=() ;;
esac
# RELAXED=0: no pkg/relaxed/ (quicker local rebuilds; auto.js then runs the plain build).
relaxed=${RELAXED:-1}
max_gz=4000000
# Builds the wasm (features: $2, comma-separated or empty) and runs wasm-bindgen into $1.
build() {
  local out=$1 features=$2
  cargo build --lib --target wasm32-unknown-unknown --profile "$profile" ${features:+--features "$features"} "${cargo_args[@]}"
  mkdir -p "$out"
  rm -rf "$out/snippets" "$out/edge_llm.js" "$out/edge_llm.d.ts" "$out/edge_llm_bg.wasm" "$out/edge_llm_bg.wasm.d.ts"
  wasm-bindgen --target web --out-dir "$out" --out-name edge_llm "${bindgen[@]}" \
    "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/$out_dir/edge_llm.wasm"
}
source scripts/pkg-common.sh
# wasm-opt and the download-size budget (README "Package size"; issue #16) for $1/edge_llm_bg.wasm:
# gzip -9 of the optimized .wasm, both single-thread builds (build-pkg-threads.sh's are not
# gated; they run about 0.2 MB larger). Cargo.toml's per-crate opt-levels keep it under;
# scripts/wasm-size.py shows what each crate costs when it is not. $2...: extra wasm-opt flags.
optimize() {
  wasm_opt "$@"
  if [ -n "$gz" ] && [ "$gz" -gt "$max_gz" ]; then
    printf 'build-pkg: %s/edge_llm_bg.wasm is %s bytes gzipped, over the %s-byte budget (scripts/wasm-size.py: what each crate costs)\n' "$1" "$gz" "$max_gz" >&2
    exit 1
  fi
}
cargo_args=("$@")
# Only wasm-bindgen's outputs are replaced: pkg/threads/ (scripts/build-pkg-threads.sh) stays.
build pkg ""
# The modules wasm-bindgen does not import (the package entry, the OpenAI-style chat, errors,
# the Worker proxy, the build picker) ship beside its output, with package.json, the npm README
# and the licenses.
cp js/index.js js/index.d.ts js/chat.js js/chat.d.ts js/errors.js js/errors.d.ts \
  js/worker.js js/worker-entry.js js/worker.d.ts js/auto.js js/auto.d.ts pkg/
cp js/npm-README.md pkg/README.md
cp LICENSE-MIT LICENSE-APACHE pkg/
node scripts/pkg-json.mjs pkg/package.json Cargo.toml
# auto.js imports pkg/threads/index.js, which scripts/build-pkg-threads.sh builds (nightly). Until
# it has, that module says so (auto.js and the Worker then run this single-thread build).
[ -e pkg/threads/edge_llm.js ] || stub pkg/threads "its threaded variant (scripts/build-pkg-threads.sh)" build-pkg.sh
optimize pkg
# The relaxed-SIMD build (Cargo feature `relaxed-simd`: the int4 GEMV's block dot products as
# `i32x4.relaxed_dot_i8x16_i7x16_add_s`), which auto.js loads where the engine validates relaxed
# SIMD. Only edge-llm's own crate is rebuilt: its dependencies' artifacts are shared with the
# build above.
if [ "$relaxed" = 0 ]; then
  stub pkg/relaxed "its relaxed-SIMD variant (RELAXED=0 scripts/build-pkg.sh)" build-pkg.sh
else
  rm -rf pkg/relaxed
  build pkg/relaxed relaxed-simd
  entry pkg/relaxed
  optimize pkg/relaxed --enable-relaxed-simd
fi
