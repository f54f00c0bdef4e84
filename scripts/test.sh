#!/usr/bin/env bash
# README command 2: every test. Native (cargo test), wasm in headless Chromium and in Node
# (wasm-bindgen-test), then the built package from Node, Chromium (Worker proxy, Vite app), Deno,
# and its threaded variant in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== native: cargo test"
# setup.sh installed Mesa's Vulkan (llvmpipe): tests/gpu.rs must find an adapter here, not skip.
export EDGE_LLM_REQUIRE_GPU=${EDGE_LLM_REQUIRE_GPU:-1}
cargo test --features pack

echo "== wasm32: wasm-bindgen-test in headless Chromium (webdriver.json) and Node"
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300} \
  cargo test --target wasm32-unknown-unknown --tests -- --nocapture

echo "== package: wasm-pack build; examples/vite-app built by Vite; node --test (Node, and headless Chromium for the Worker proxy and the Vite app)"
WASM_OPT=0 scripts/build-pkg.sh
(
  cd examples/vite-app
  if [ ! -e node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --silent --no-audit --no-fund
  fi
  node_modules/.bin/vite build --logLevel warn
)
# The www/ demo's test runs on the tiny int4 model, packed like a real one.
tiny_src=$(mktemp -d)
cp tests/fixtures/tiny/model-int4.onnx "$tiny_src/model.onnx"
cp tests/fixtures/tiny/tokenizer.json tests/fixtures/tiny/model_config.json "$tiny_src/"
rm -rf www/models/tiny-int4
cargo run -q --features pack --bin edge-llm-pack -- pack "$tiny_src" www/models/tiny-int4 >/dev/null
rm -rf "$tiny_src"
if rustup component list --toolchain "$(cat scripts/nightly-toolchain)" --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "== package, threaded variant: nightly -Z build-std with atomics into pkg/threads/"
  PROFILE=native WASM_OPT=0 scripts/build-pkg-threads.sh
  export EDGE_LLM_REQUIRE_THREADS=1
else
  echo "== threaded variant NOT built: the nightly toolchain is missing (see scripts/setup.sh); its tests skip"
  rm -rf pkg/threads
fi
node --test tests/js/

echo "== Deno: the package and its Worker proxy (deno from npm)"
# --no-check: the test is about runtime behaviour; type-checking pkg/*.d.ts would need @types/node.
node_modules/.bin/deno test --no-check --allow-read --allow-write tests/deno/
