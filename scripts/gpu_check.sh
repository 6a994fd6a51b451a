#!/usr/bin/env bash
# Parity and timing on an NVIDIA GPU, from binaries built on another machine (a GPU box
# may have no package registry).
#
#   scripts/gpu_check.sh build [DIR]     # here: build with --features cuda,wgpu into DIR
#   scripts/gpu_check.sh run [DIR]       # there: parity on cuda and wgpu, then timings
#
# DIR (default gpu-bin) receives the parity test binary and the CLI. `run` executes the
# parity tests (every dtype on cuda; f32/f16 on wgpu, bf16 refused) against
# tests/fixtures, then, when python3 with torch and transformers is present, writes a
# random full-size PaliGemma 1 3B 224 checkpoint and times our CLI on cuda and wgpu
# against transformers on cuda (scripts/bench.py --gpu), printing one table.
#
# Environment for `run`: CHECKPOINT=dir (skip writing one), TOKENIZER_FROM=dir (copy
# the tokenizer files from a checkpoint made here, instead of training one there),
# TIMING=0 (parity only; otherwise `paligemma warmup` first measures the time to first
# token on an empty kernel cache, warm in-process, and in a new process from the filled
# cache), BENCH_TIMEOUT=seconds per timed run (default 900: on a fresh
# machine burn's CUDA backend compiles every kernel with NVRTC and autotunes matmuls on
# first use, which took over two minutes on an H100 for the 3B model;
# CUBECL_AUTOTUNE_LEVEL=minimal shortens the tuning). wgpu on NVIDIA needs the Vulkan
# loader and the driver's ICD with its GL/EGL dependencies (libvulkan1, libglvnd0,
# libegl1, libgl1, libglx0).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
dir=${2:-gpu-bin}

case "$mode" in
build)
    mkdir -p "$dir"
    cargo build --release --features cuda,wgpu --example paligemma
    cp target/release/examples/paligemma "$dir/paligemma"
    bin=$(cargo test --release --features cuda,wgpu --test parity --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "parity" and m.get("executable"):
        print(m["executable"])')
    cp "$bin" "$dir/parity"
    strip "$dir/paligemma" "$dir/parity" 2>/dev/null || true
    ls -la "$dir"
    ;;
run)
    [ -x "$dir/parity" ] && [ -x "$dir/paligemma" ] || { echo "no binaries in $dir: run '$0 build $dir' first" >&2; exit 2; }
    export PALIGEMMA_FIXTURES=$PWD/tests/fixtures XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}
    mkdir -p "$XDG_RUNTIME_DIR"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    # cubecl loads NVRTC at run time: find it when the linker cache does not know it.
    if ! ldconfig -p | grep -q libnvrtc; then
        lib=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libnvrtc.so*' 2>/dev/null | head -1)
        [ -n "$lib" ] && export LD_LIBRARY_PATH=$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        echo "NVRTC: ${lib:-not found}"
    fi
    # wgpu needs the Vulkan loader and NVIDIA's ICD.
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
        export VK_DRIVER_FILES=$icd
    fi
    status=0
    echo "== parity: cuda (f32 1e-4; f16, bf16 within docs/precision.md) =="
    "$dir/parity" --test-threads=1 --nocapture on_cuda || status=1
    echo "== parity: wgpu =="
    "$dir/parity" --test-threads=1 --nocapture on_wgpu || status=1
    if [ "${TIMING:-1}" != 0 ]; then
        if ! python3 -c 'import torch, transformers' 2>/dev/null; then
            echo "no python3 with torch and transformers: skipping timings"
        else
            ck=${CHECKPOINT:-/tmp/pg1-3b-224}
            if [ ! -f "$ck/config.json" ]; then
                extra=()
                [ -n "${TOKENIZER_FROM:-}" ] && extra=(--tokenizer-from "$TOKENIZER_FROM")
                python3 scripts/make_random_checkpoint.py --variant pg1-3b-224 --out "$ck" "${extra[@]}"
            fi
            # First-call latency: pass 1 of the first process runs on an empty cache
            # (compiles and tunes everything), pass 2 is warm in-process, and the second
            # process starts from the filled cache.
            cache=$(mktemp -d)
            for run in "cold cache + in-process" "new process, warm cache"; do
                echo "== first-call latency on cuda, bf16: $run =="
                passes=2; [ "$run" = "new process, warm cache" ] && passes=1
                timeout "${BENCH_TIMEOUT:-900}" "$dir/paligemma" warmup --device cuda --dtype bf16 \
                    --gpu-cache "$cache" --model "$ck" --max-new-tokens 8 --passes $passes || status=1
            done
            echo "== timing: $ck, 32 new tokens, one warm-up run each =="
            python3 scripts/bench.py --gpu --cli "$dir/paligemma" --model "$ck" \
                --timeout "${BENCH_TIMEOUT:-900}" || status=1
        fi
    fi
    exit $status
    ;;
*)
    sed -n 2,16p "$0"
    exit 2
    ;;
esac
