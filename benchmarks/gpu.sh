#!/usr/bin/env bash
# GPU check, a few minutes on one CUDA GPU:
#  1. inference FPS of R-50 G-IAM at 608: fp32, fp16 and bf16 at batch 1, fp32 and fp16 at batch 8;
#  2. training s/iteration of R-50 G-IAM from scratch: batch 4 at short sides 320-384 (the CPU
#     comparison with the official code) and batch 16 at the config's own sizes, fp32 and fp16 AMP;
#  3. a real 2-minute CUDA training run of the small config on the crowded stand-in, evaluated.
# Every step runs even when one before it failed; the exit status says whether all passed.
#   bash benchmarks/gpu.sh [OUT_DIR]          (JSON results and the run land in OUT_DIR)
#   SPARSEINST="python -m sparseinst_cli" bash benchmarks/gpu.sh   (a checkout, not installed)
set -uo pipefail
SPARSEINST=${SPARSEINST:-sparseinst}
OUT_DIR=${1:-runs/gpu}
mkdir -p "$OUT_DIR"
failed=0
step() {  # step NAME COMMAND...: run, time and record one step
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    if ! "$@"; then
        echo "== $name FAILED"
        failed=1
    fi
    echo "== $name took $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || failed=1
read -r -a SI <<<"$SPARSEINST"
step infer_b1 "${SI[@]}" bench -c r50_giam --size 608 --device cuda --dtype fp32 --dtype fp16 \
    --dtype bf16 --warmup 20 --iters 200 --json "$OUT_DIR/infer_b1.json" --markdown
step infer_b8 "${SI[@]}" bench -c r50_giam --size 608 --device cuda --dtype fp32 --dtype fp16 \
    --batch 8 --warmup 10 --iters 50 --json "$OUT_DIR/infer_b8.json" --markdown
step train_b4 "${SI[@]}" bench --train -c r50_giam --data demo --device cuda --dtype fp32 \
    --dtype fp16 --batch 4 --warmup 5 --iters 40 --json "$OUT_DIR/train_b4.json" --markdown \
    "input.min_size_train=[320,352,384]" input.max_size_train=640
step train_b16 "${SI[@]}" bench --train -c r50_giam --data crowded --device cuda --dtype fp32 \
    --dtype fp16 --batch 16 --warmup 5 --iters 30 --json "$OUT_DIR/train_b16.json" --markdown
step train_small "${SI[@]}" train -c small --data crowded --time 2 --device cuda \
    --project "$OUT_DIR" --name small
exit $failed
