#!/usr/bin/env bash
# Builds the npm package into pkg/ (wasm-pack --target web, release) and optimizes the .wasm
# with binaryen from npm (package-lock.json); wasm-pack's own wasm-opt download is disabled in
# Cargo.toml. Debian's binaryen 108 is too old: it rewrites wasm-bindgen's externref table.
set -euo pipefail
cd "$(dirname "$0")/.."
wasm-pack build --target web --release --out-name edge_llm --mode no-install "$@"
# The Worker proxy (`edge-llm/worker`) ships beside the wasm-pack output: wasm-pack only
# packages the modules wasm-bindgen imports (pkg/snippets/).
cp js/worker.js js/worker-entry.js js/worker.d.ts pkg/
node scripts/pkg-json.mjs pkg/package.json
# pkg/auto.js picks this build or the threaded one (pkg/threads/, scripts/build-pkg-threads.sh).
cp js/auto.js js/auto.d.ts pkg/
node -e 'const fs = require("fs"); const p = JSON.parse(fs.readFileSync("pkg/package.json"));
  p.files = [...new Set([...(p.files ?? []), "auto.js", "auto.d.ts", "threads/"])];
  fs.writeFileSync("pkg/package.json", JSON.stringify(p, null, 2) + "\n");'
wasm=pkg/edge_llm_bg.wasm
raw=$(stat -c %s "$wasm")
if [ "${WASM_OPT:-1}" = 0 ]; then
  # Tests skip it: binaryen.js takes minutes on a 2-core machine and the tests check behaviour.
  printf 'pkg/edge_llm_bg.wasm: %s bytes raw (wasm-opt skipped: WASM_OPT=0)\n' "$raw"
  exit 0
fi
node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue "$wasm" -o "$wasm.opt" && mv "$wasm.opt" "$wasm"
opt=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
printf 'pkg/edge_llm_bg.wasm: %s bytes raw from cargo, %s after wasm-opt, %s gzipped\n' "$raw" "$opt" "$gz"
