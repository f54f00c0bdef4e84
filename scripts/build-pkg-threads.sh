#!/usr/bin/env bash
# Builds the multi-threaded variant of the package into pkg/threads/ (next to the single-thread
# pkg/ that scripts/build-pkg.sh builds): wasm threads need `+atomics,+bulk-memory` and a std
# rebuilt with them, i.e. the pinned nightly toolchain (scripts/setup.sh installs it) with
# `-Z build-std`. The rayon pool runs in Web Workers over shared memory (wasm-bindgen-rayon),
# so pages using it must be cross-origin isolated (COOP/COEP, see scripts/serve.mjs);
# pkg/auto.js picks this build only there.
# PROFILE=native gives a faster, non-LTO build (tests); WASM_OPT=0 skips wasm-opt.
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=$(cat scripts/nightly-toolchain)
profile=${PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-target}/threads
# RUSTFLAGS (every crate, std included) replaces .cargo/config.toml's rustflags, so the
# getrandom cfg is repeated here. Shared memory must declare a maximum: 2 GiB.
export RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 --cfg getrandom_backend=\"wasm_js\" -C link-arg=--max-memory=2147483648"
# The final link only: memory shared and imported (every Worker instantiates the module over
# it), and the TLS symbols wasm-bindgen's thread setup calls exported.
link=()
for a in --shared-memory --import-memory --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base; do
  link+=(-C "link-arg=$a")
done
# RELAXED=0: no pkg/threads-relaxed/ (the relaxed-SIMD twin, as scripts/build-pkg.sh's).
relaxed=${RELAXED:-1}
source scripts/pkg-common.sh
# Builds the wasm (features: $2) into $1 with its package entry; $3...: extra wasm-opt flags.
build() {
  local out=$1 features=$2
  shift 2
  cargo "+$toolchain" rustc --lib --crate-type cdylib --target wasm32-unknown-unknown --profile "$profile" --features "$features" \
    -Z build-std=panic_abort,std --target-dir "$target_dir" -- "${link[@]}"
  rm -rf "$out"
  wasm-bindgen --target web --out-dir "$out" --out-name edge_llm "$target_dir/wasm32-unknown-unknown/$profile/edge_llm.wasm"
  # wasm-bindgen-rayon starts each thread's Worker from a blob holding its helper module's fetched
  # source (so a helper hosted on a CDN works). A dev server that rewrites modules (Vite adds
  # `import … from "/@vite/client"`) breaks that: a path-absolute import cannot resolve from a
  # blob: URL, the Worker dies and the pool never starts. A blob that imports the helper by its
  # absolute URL works both ways (statically, so its message listener is up before messages flow).
  local helpers
  helpers=$(ls "$out"/snippets/wasm-bindgen-rayon-*/src/workerHelpers.no-bundler.js)
  grep -qF "$blob_from_fetch" "$helpers" || { echo "build-pkg-threads: $helpers changed: re-check its Worker start" >&2; exit 1; }
  sed -i "s|$blob_from_fetch|let scriptBlob = new Blob([\`import \${JSON.stringify(import.meta.url)};\`], { type: 'text/javascript' });|" "$helpers"
  entry "$out"
  # -O1 as in build-pkg.sh; the threaded builds are not size-gated (about 0.2 MB above the single ones).
  wasm_opt "$out" --enable-threads "$@"
}
blob_from_fetch='let scriptBlob = await fetch(import.meta.url).then(r => r.blob());'
build pkg/threads threads
if [ "$relaxed" = 0 ]; then
  stub pkg/threads-relaxed "its threaded relaxed-SIMD variant (RELAXED=0 scripts/build-pkg-threads.sh)" build-pkg-threads.sh
else
  # Only edge-llm's own crate is rebuilt (std and the dependencies are shared with the build above).
  build pkg/threads-relaxed threads,relaxed-simd --enable-relaxed-simd
fi
