#!/usr/bin/env bash
# README command 2: every test. Native (cargo test), wasm in headless Chromium and in Node
# (wasm-bindgen-test), then the built package from Node (node --test) and its threaded variant
# in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== native: cargo test"
cargo test --features pack

echo "== wasm32: wasm-bindgen-test in headless Chromium (webdriver.json) and Node"
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300} \
  cargo test --target wasm32-unknown-unknown --tests -- --nocapture

echo "== package: wasm-pack build, then node --test on pkg/"
WASM_OPT=0 scripts/build-pkg.sh
if rustup component list --toolchain "$(cat scripts/nightly-toolchain)" --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "== package, threaded variant: nightly -Z build-std with atomics into pkg/threads/"
  PROFILE=native WASM_OPT=0 scripts/build-pkg-threads.sh
  export EDGE_LLM_REQUIRE_THREADS=1
else
  echo "== threaded variant NOT built: the nightly toolchain is missing (see scripts/setup.sh); its tests skip"
  rm -rf pkg/threads
fi
node --test tests/js/
