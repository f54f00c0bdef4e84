#!/usr/bin/env bash
# README command 1: build the package, put the default model in www/models/default, run it
# in headless Chromium (streamed answer + benchmark table). `scripts/demo.sh serve` serves the
# page on 0.0.0.0:${PORT:-8080} instead, for a phone on the same network.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-pkg.sh

pack() { cargo run -q --features pack --bin edge-llm-pack -- "$@"; }
dest=www/models/default
# Default model: the project's tiny test model until the GGUF importer (issue #4) packs SmolLM2.
src=target/models/tiny-int4
mkdir -p "$src"
cp tests/fixtures/tiny/model-int4.onnx "$src/model.onnx"
cp tests/fixtures/tiny/tokenizer.json tests/fixtures/tiny/model_config.json "$src/"
pack pack "$src" "$dest"
pack verify "$dest" --budget bundled

if [ "${1:-}" = serve ]; then
  exec node scripts/serve.mjs
fi
exec node scripts/demo.mjs models/default "${PROMPT:-What is the capital of France?}"
