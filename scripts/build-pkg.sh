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
# wasm-opt and the download-size budget (README "Package size"; issue #16) for $1/edge_llm_bg.wasm:
# gzip -9 of the optimized .wasm, both single-thread builds (build-pkg-threads.sh's are not
# gated; they run about 0.2 MB larger). Cargo.toml's per-crate
# opt-levels keep it under; scripts/wasm-size.py shows what each crate costs when it is not.
# $2...: extra wasm-opt feature flags.
optimize() {
  local wasm=$1/edge_llm_bg.wasm raw opt gz
  shift
  raw=$(stat -c %s "$wasm")
  if [ "${WASM_OPT:-1}" = 0 ]; then
    # For quick local rebuilds only: scripts/test.sh (CI) runs wasm-opt and this gate.
    printf '%s: %s bytes raw (wasm-opt skipped: WASM_OPT=0; the %s-byte gzipped size gate was not checked)\n' "$wasm" "$raw" "$max_gz"
    return
  fi
  # -O1, not -O3: on the 2-core machine (2026-12-02, fresh run of README command 1) binaryen.js
  # took 49 s at -O1 against 5 min 57 s at -O3 (142 s at -O2), and -O1's output is smaller
  # (3,745,408 B gzipped against 3,932,769: -O3 inlines more). Decode in headless Chromium, 3
  # alternated runs each: 18.8 tok/s at -O1, 19.4 at -O3 (ranges 18.7-19.6 and 18.1-19.7: within
  # noise); prefill 69.1 and 68.5 tok/s. V8 optimizes the code again; -O1 is what keeps the size.
  if [ ! -x node_modules/.bin/wasm-opt ]; then
    # (As `a && b` the missing tool failed quietly: set -e spares a list's first command.)
    echo "build-pkg: node_modules/.bin/wasm-opt is missing: run npm ci (binaryen from package-lock.json)" >&2
    exit 1
  fi
  node_modules/.bin/wasm-opt -O1 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue "$@" "$wasm" -o "$wasm.opt"
  mv "$wasm.opt" "$wasm"
  opt=$(stat -c %s "$wasm")
  gz=$(gzip -9 -c "$wasm" | wc -c)
  printf '%s: %s bytes raw from cargo, %s after wasm-opt, %s gzipped\n' "$wasm" "$raw" "$opt" "$gz"
  if [ "$gz" -gt "$max_gz" ]; then
    printf 'build-pkg: %s is %s bytes gzipped, over the %s-byte budget (scripts/wasm-size.py: what each crate costs)\n' "$wasm" "$gz" "$max_gz" >&2
    exit 1
  fi
}
# A variant's missing build: its index.js says so, and auto.js falls back (pkg/threads/ is
# scripts/build-pkg-threads.sh's). $1: the directory; $2: the message.
stub() {
  rm -rf "$1"
  mkdir -p "$1"
  cat > "$1/index.js" <<JS
// Written by scripts/$3: this package was built without this variant; auto.js falls back.
const e = new Error("edge-llm-wasm was built without $2");
e.name = "NotSupportedError";
throw e;
JS
  printf 'export {};\n' > "$1/index.d.ts"
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
  # Its package entry: js/index.js over this build's module, sharing pkg/chat.js and pkg/errors.js.
  for f in index.js index.d.ts; do
    sed -e 's#"\./chat\.js"#"../chat.js"#' -e 's#"\./errors\.js"#"../errors.js"#' "js/$f" > "pkg/relaxed/$f"
  done
  optimize pkg/relaxed --enable-relaxed-simd
fi
