#!/usr/bin/env bash
# The one GPU session of issue 10, as run on a lent machine: train both recipes (scripts/gpu_train.py),
# time the GPU rows of Table 1 on the best one (scripts/gpu_bench.py), and pack what comes back into
# $OUT within the transfer limits (8 files, 16 MiB each): results.tar.gz (summaries, curves, logs,
# params, GPU timings) and the validation-best checkpoint in 15 MiB parts with its sha256.
#
#   mkdir -p .gpu_data && cp ../shared/datasets/cifar10-jpeg.tar.gz .gpu_data/ && grep cifar10-jpeg \
#     ../shared/datasets/SHA256SUMS > .gpu_data/SHA256SUMS
#   OUT=/tmp/out EPOCHS=100 OOD_VAL=".gpu_data/tin_val.npz .gpu_data/shapes_val.npz" scripts/gpu_run.sh
set -uo pipefail
: "${OUT:?set OUT to the folder that receives the results}"
REPO=$(cd "$(dirname "$0")/.." && pwd)
RESULTS=$(mktemp -d)
export PYTHONUNBUFFERED=1
WORK=${WORK:-$REPO/.gpu_run}  # git-ignored
PYTHONPATH=$REPO/src timeout "${TRAIN_SECONDS:-440}" python3 "$REPO/scripts/gpu_train.py" --out "$RESULTS" \
  --work "$WORK" ${EPOCHS:+--epochs "$EPOCHS"} --ood-val ${OOD_VAL:?set OOD_VAL to the OOD validation .npz files} \
  > "$RESULTS/train_run.log" 2>&1
echo "gpu_train.py exit status $?" >> "$RESULTS/train_run.log"
# the checkpoint to keep: the recipe gpu_train.py chose on validation (test top-1 is recorded, never compared)
BEST=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['choice']['recipe'] or 'ce')" \
  "$RESULTS/summary.json" 2>> "$RESULTS/train_run.log" || echo ce)
echo "validation-best recipe: $BEST" >> "$RESULTS/train_run.log"
PYTHONPATH=$REPO/src timeout 150 python3 "$REPO/scripts/gpu_bench.py" "$WORK/$BEST/fp32.pt" \
  "$RESULTS/gpu_bench.json" > "$RESULTS/gpu_bench.log" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$RESULTS/nvidia-smi.csv" 2>&1
cp "$RESULTS/$BEST"/fp32.pt.part-* "$RESULTS/$BEST/fp32.pt.sha256" "$OUT/" 2>/dev/null
tar czf "$OUT/results.tar.gz" --exclude='*.part-*' -C "$RESULTS" .
tail -n 30 "$RESULTS/train_run.log"; cat "$RESULTS/gpu_bench.log"
