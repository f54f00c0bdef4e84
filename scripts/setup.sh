#!/usr/bin/env bash
# Installs what building and testing edge-llm needs, idempotently, on Debian as root:
# the wasm32 target, a pinned nightly with rust-src (threaded build), wasm-bindgen-cli pinned to
# Cargo.lock, binaryen (wasm-opt, from npm), Chromium + ChromeDriver, Mesa's software Vulkan,
# Node.js, the npm packages in package-lock.json and onnxruntime (tests).
# `setup.sh demo` (README command 1) leaves out what only the tests use (onnxruntime), the
# nightly toolchain unless NIGHTLY=1 (the threaded build: `demo.sh serve`, THREADS>1), and
# wasm-bindgen-cli, which demo.sh installs with `setup.sh wasm-bindgen` beside its cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}

wasm_bindgen() {
  local wbg_version
  wbg_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wbg_version" ]; then
    echo "setup: cargo install wasm-bindgen-cli $wbg_version"
    cargo install -q wasm-bindgen-cli --version "$wbg_version" --force
  fi
}
# `setup.sh wasm-bindgen`: that alone (demo.sh runs it beside the package's cargo build, which
# does not need it yet).
if [ "$mode" = wasm-bindgen ]; then
  wasm_bindgen
  exit 0
fi

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v node >/dev/null || need_apt+=(nodejs npm)
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || need_apt+=(mesa-vulkan-drivers)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# The threaded wasm build (scripts/build-pkg-threads.sh) rebuilds std with atomics: a pinned
# nightly with its sources.
nightly=$(cat scripts/nightly-toolchain)
if [ "$mode" != demo ] || [ "${NIGHTLY:-0}" = 1 ]; then
  rustup component list --toolchain "$nightly" --installed 2>/dev/null | grep -q '^rust-src' \
    || rustup toolchain install "$nightly" --profile minimal -c rust-src \
    || echo "setup: WARNING: could not install $nightly: the threaded wasm build (pkg/threads/) cannot be built" >&2
fi


[ "$mode" = demo ] || wasm_bindgen

# onnxruntime: tests/ort_compat.rs checks that our graphs run unchanged in the ONNX reference runtime.
[ "$mode" = demo ] || python3 -c 'import onnxruntime, numpy' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check onnxruntime numpy

# Every devDependency installed (a checkout older than node_modules may predate one), else npm ci.
if ! node -e 'const d = require("./package.json").devDependencies; process.exit(Object.keys(d).every((n) => require("fs").existsSync(`node_modules/${n}/package.json`)) ? 0 : 1)' \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --silent --no-audit --no-fund
fi
