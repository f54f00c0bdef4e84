#!/usr/bin/env bash
# The GPU benchmark on a machine with a hardware GPU and no network (issue #15's numbers):
#
#   scripts/gpu-device-bench.sh prepare   here, with the network: builds the native, stripped
#                                         `edge-llm-pack` and downloads the Vulkan loader and
#                                         libglvnd's Debian packages into `.gl/` (git-ignored)
#   scripts/gpu-device-bench.sh run       there, from the repository root with `.gl/` carried
#                                         (the device tool: carry [".gl"]): unpacks them,
#                                         points the loader at the NVIDIA driver's ICD, and runs
#                                         `bench-gpu`'s kernel sweep (every GEMV kernel: each
#                                         lanes x rows shape of gemv_rows, by the barrier tree
#                                         and, where the lanes fit a subgroup, by shuffles
#                                         ("shfl"); every prefill kernel)
#                                         and the tuned decode and prefill of synthetic
#                                         SmolLM2-135M, Llama-3.2-1B and Llama-3.1-8B shapes
#                                         (random int4 weights: no model file has to reach the
#                                         machine), each also at position 900 (the attention's
#                                         cost in a long chat; the kernel sweep times both
#                                         attention kernels at 128 to 4096 positions), then
#                                         repeats and comparisons (one greedy step a submit
#                                         against the tuned chain, norms fused into the
#                                         GEMVs against before them, f16 products against
#                                         f32, whole attention against split, per-row GEMV,
#                                         tiled prefill),
#                                         writing to $OUT.
#
# The NVIDIA driver there ships its Vulkan ICD (libGLX_nvidia needs libglvnd; with libvulkan1
# alone the loader finds no driver). Nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    target=${CARGO_TARGET_DIR:-/var/tmp/edge-llm-target}
    CARGO_TARGET_DIR=$target cargo build --profile native --features pack --bin edge-llm-pack
    mkdir -p .gl
    cp "$target/native/edge-llm-pack" .gl/edge-llm-pack
    strip .gl/edge-llm-pack
    (cd .gl && rm -f ./*.deb && apt-get download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libgles2 libopengl0)
    du -sh .gl
    ;;
run)
    out=${OUT:-/tmp/gpu-bench}
    mkdir -p "$out"
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
    (nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv || true) > "$out/gpu.txt" 2>&1
    bin=./.gl/edge-llm-pack
    # Each run bounded, so one slow case cannot take the call's whole time.
    bench() { timeout "$1" "$bin" bench-gpu "${@:3}" > "$out/$2.txt" 2>&1 || echo "exit $?" >> "$out/$2.txt"; }
    # What matters most first (a call cut short by the device's time keeps what ran): one
    # kernel sweep (GEMV GB/s, each prefill kernel's GFLOP/s, the token pick), the engine's
    # tuned decode and prefill on each model's shapes, then repeats and the comparisons.
    bench 90 kernels-1 --warmup 10 --steps 50
    for model in smollm2-135m llama-3.2-1b llama-3.1-8b; do
        bench 120 "decode-$model-auto" --warmup 10 --steps 100 --synthetic "$model" --gemv auto --at-position 900
    done
    for i in 2 3; do
        bench 90 "kernels-$i" --warmup 10 --steps 50
    done
    # One greedy step a submit (the auto runs chain as the load tuned): what chaining saves a token.
    for model in smollm2-135m llama-3.2-1b; do
        bench 120 "decode-$model-one-step-a-submit" --warmup 10 --steps 100 --synthetic "$model" --gemv auto --decode-ahead 0
    done
    # The residual adds and norms in the GEMVs after them, and before them (the auto runs do
    # what the load's tuning chose): what two dispatches fewer a layer (and three fewer at the
    # ends) give a decode step.
    for model in smollm2-135m llama-3.2-1b; do
        for fuse in true false; do
            bench 120 "decode-$model-fuse-norm-$fuse" --warmup 10 --steps 100 --synthetic "$model" --gemv auto --fuse-norm "$fuse"
        done
    done
    bench 120 decode-smollm2-135m-tiled-prefill --warmup 10 --steps 100 --synthetic smollm2-135m --gemv auto --prefill tiled
    # Products in f16 (shader-f16; H100/H200 have it) against the auto runs' f32, the tiled
    # prefill too; then as `gpuPrecision: "f16"` loads do (kept only where the load's tuning
    # times both faster: its line says the four times).
    for model in smollm2-135m llama-3.2-1b; do
        bench 120 "decode-$model-f16" --warmup 10 --steps 100 --synthetic "$model" --gemv auto --precision f16
    done
    bench 120 decode-smollm2-135m-f16-tiled-prefill --warmup 10 --steps 100 --synthetic smollm2-135m --gemv auto --prefill tiled --precision f16
    bench 120 decode-llama-3.2-1b-f16-where-faster --warmup 10 --steps 100 --synthetic llama-3.2-1b --gemv auto --precision f16-where-faster
    # The attention deep in the chat by one workgroup per query head at every step (the auto
    # runs split it where the load's tuning chose): the split's gain at position 900.
    for model in smollm2-135m llama-3.1-8b; do
        bench 120 "decode-$model-whole-attention" --warmup 10 --steps 100 --synthetic "$model" --gemv auto --at-position 900 --attention-split-from 100000
    done
    for model in smollm2-135m llama-3.2-1b llama-3.1-8b; do
        bench 120 "decode-$model-per-row" --warmup 10 --steps 100 --synthetic "$model" --gemv per-row
    done
    bench 60 kernels-per-row-tree --warmup 10 --steps 50 --no-subgroups --gemv per-row
    tail -n 8 "$out"/decode-*.txt
    grep -H "load-time tuning" "$out"/decode-*-auto.txt || true
    grep -H "decode tok/s" "$out"/decode-*-fuse-norm-*.txt || true
    grep -H "decode tok/s\|prefill 56\|products" "$out"/decode-*-f16*.txt || true
    grep -h "n= 32768" "$out"/kernels-*.txt || true
    grep -h "at position\|decode attention tuned\|decode norms" "$out"/kernels-1.txt || true
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
