#!/usr/bin/env bash
# The ResNet-12 `miniimagenet` recipe on one GPU, end to end, as one prepared run (about 12 minutes on an
# H200): (1) training throughput at the recipe's batch of 256 -- model-only ceiling, the fewshot pipeline
# (uint8 images on the GPU, batched crop/flip/jitter) and its ratio, bf16 autocast, eager and
# torch.compile; (2) `fewshot train --recipe miniimagenet` on the base classes, validating on val;
# (3) `fewshot eval` of the best checkpoint on 2,000 val episodes per shot, every head (with proto-dc, the
# best head on photos: prototypes calibrated toward the base-class means the run records), 95% CIs.
#
#   bash benchmarks/gpu_miniimagenet.sh [MINIIMAGENET_ROOT] [OUT_DIR]
#   SMOKE=1 bash benchmarks/gpu_miniimagenet.sh      # the same commands on the CPU, tiny: a few steps each
#
# MINIIMAGENET_ROOT defaults to ../shared/data/miniimagenet (any of the four layouts for training; the
# ImageFolder comparison of step 1 needs the class-folder layout's train/ folder and is skipped otherwise).
# Everything it prints is also written to OUT_DIR/log.txt; figures go to RESULTS.md by hand, with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../shared/data/miniimagenet}
OUT=${2:-runs/gpu-miniimagenet}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1

if [ "${SMOKE:-0}" = 1 ]; then
    DATA="miniimagenet:$ROOT?max_per_class=8"
    BENCH=(--steps 1 --warmup 1 --workers 0 --batch-size 64 --device cpu)
    TRAIN=(--epochs 1 --batch-size 64 --device cpu --val-episodes 20 --val-every 1)
    EVAL=(--episodes 20 --device cpu)
    COMPILE=()
else
    DATA="miniimagenet:$ROOT"
    BENCH=(--steps 100 --warmup 20 --workers 8)
    TRAIN=(--compile)
    EVAL=(--episodes 2000)
    COMPILE=(--compile)
fi
FOLDER=()
[ -d "$ROOT/train" ] && FOLDER=(--folder "$ROOT/train")

python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

echo "== 1. throughput: ResNet-12, recipe miniimagenet (eager, then torch.compile)"
t0=$SECONDS
python benchmarks/train_throughput.py --recipe miniimagenet --data "$DATA" --split base "${FOLDER[@]}" "${BENCH[@]}"
if [ ${#COMPILE[@]} -gt 0 ]; then
    python benchmarks/train_throughput.py --recipe miniimagenet --data "$DATA" --split base "${BENCH[@]}" \
        --workers 0 "${COMPILE[@]}"
fi
echo "throughput: $((SECONDS - t0)) s"

echo "== 2. train: fewshot train --recipe miniimagenet"
t0=$SECONDS
python -m fewshot train --data "$DATA" --recipe miniimagenet --out "$OUT/train" --quiet "${TRAIN[@]}"
echo "train: $((SECONDS - t0)) s"

echo "== 3. eval on val: every head and proto-dc, 5-way 1/5-shot"
t0=$SECONDS
python -m fewshot eval --checkpoint "$OUT/train/best.pt" --data "miniimagenet:$ROOT" --split val \
    --way 5 --shot 1,5 --heads proto,nn,ls,ls-mlp,logreg,proto-dc --out "$OUT/eval" --quiet "${EVAL[@]}"
echo "eval: $((SECONDS - t0)) s"
