# Shared by scripts/build-pkg.sh and scripts/build-pkg-threads.sh (sourced, not run).

# A variant's missing build: its index.js throws a NotSupportedError saying so, and auto.js falls
# back. $1: the directory; $2: what is missing; $3: the script that wrote it.
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

# A variant's package entry in $1 (a directory under pkg/): js/index.js over that build's module,
# sharing pkg/chat.js and pkg/errors.js.
entry() {
  local f
  for f in index.js index.d.ts; do
    sed -e 's#"\./chat\.js"#"../chat.js"#' -e 's#"\./errors\.js"#"../errors.js"#' "js/$f" > "$1/$f"
  done
}

# binaryen's wasm-opt -O1 on $1/edge_llm_bg.wasm (wasm-bindgen's output), $2...: extra feature
# flags; prints the sizes and sets $gz (gzip -9 bytes; empty when WASM_OPT=0 skipped it).
# -O1, not -O3: on the 2-core machine (2026-12-02, fresh run of README command 1) binaryen.js
# took 49 s at -O1 against 5 min 57 s at -O3 (142 s at -O2), and -O1's output is smaller
# (3,745,408 B gzipped against 3,932,769: -O3 inlines more). Decode in headless Chromium, 3
# alternated runs each: 18.8 tok/s at -O1, 19.4 at -O3 (ranges 18.7-19.6 and 18.1-19.7: within
# noise); prefill 69.1 and 68.5 tok/s. V8 optimizes the code again; -O1 is what keeps the size.
wasm_opt() {
  local wasm=$1/edge_llm_bg.wasm raw opt
  shift
  gz=
  raw=$(stat -c %s "$wasm")
  if [ "${WASM_OPT:-1}" = 0 ]; then
    # For quick local rebuilds only: scripts/test.sh (CI) runs wasm-opt and the size gate.
    printf '%s: %s bytes raw (wasm-opt skipped: WASM_OPT=0; size gate not checked)\n' "$wasm" "$raw"
    return
  fi
  if [ ! -x node_modules/.bin/wasm-opt ]; then
    # (As `a && b` the missing tool failed quietly: set -e spares a list's first command.)
    echo "$(basename "$0"): node_modules/.bin/wasm-opt is missing: run npm ci (binaryen from package-lock.json)" >&2
    exit 1
  fi
  node_modules/.bin/wasm-opt -O1 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue "$@" "$wasm" -o "$wasm.opt"
  mv "$wasm.opt" "$wasm"
  opt=$(stat -c %s "$wasm")
  gz=$(gzip -9 -c "$wasm" | wc -c)
  printf '%s: %s bytes raw from cargo, %s after wasm-opt, %s gzipped\n' "$wasm" "$raw" "$opt" "$gz"
}
