#!/usr/bin/env bash
# One checkpoint on every synthetic split twice, paired: every region of each thresholded
# mask (the method's) and only the region holding the highest probability (--regions peak,
# the app's default); bf16 autocast (AMP=off: fp32) and batch 32, both modes alike, no probes.
# scripts/eval_splits.sh for each mode (OUT_DIR/all, OUT_DIR/peak), both in OUT_DIR/summary.md.
#   bash scripts/compare_regions.sh CHECKPOINT OUT_DIR DATA_ROOT     (~20 minutes on 2 cores)
#   FLIP=1 bash scripts/compare_regions.sh ...   both modes with the mirrored view averaged in
#                                                (train.py --eval-only --flip; ~40 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1; OUT=$2; DATA=$3
FLIP_ARG=""
if [ -n "${FLIP:-}" ]; then FLIP_ARG="--flip"; fi
for regions in all peak; do
  REGIONS=$regions PROBES="" EVAL_ARGS="--amp ${AMP:-bf16} --batch-size 32 --no-progress $FLIP_ARG" \
    bash scripts/eval_splits.sh "$CKPT" "$OUT/$regions" "$DATA" > /dev/null
done
${PY:-.venv/bin/python} scripts/summarize_eval.py "$OUT"/{all,peak}/synref_{val,testA,testB,compositional}.json \
  | tee "$OUT/summary.md"
