#!/usr/bin/env bash
# One checkpoint on every synthetic split twice, paired: every region of each thresholded
# mask (the method's) and only the region holding the highest probability (--regions peak,
# the app's default); bf16 autocast (AMP=off: fp32) and batch 32, both modes alike.
# One results JSON per split and mode in OUT_DIR, the tables in OUT_DIR/summary.md.
#   bash scripts/compare_regions.sh CHECKPOINT OUT_DIR DATA_ROOT     (~30 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1; OUT=$2; DATA=$3
PY=${PY:-.venv/bin/python}
AMP=${AMP:-bf16}
mkdir -p "$OUT"
for split in val testA testB compositional; do
  for regions in all peak; do
    [ -f "$OUT/synref_${split}_$regions.json" ] && continue  # a rerun after a stop goes on where it was
    $PY train.py --eval-only --checkpoint "$CKPT" --dataset synref --split $split --data-root "$DATA" \
        --amp "$AMP" --batch-size 32 --regions $regions --no-progress --out "$OUT/synref_${split}_$regions.json"
  done
done
$PY scripts/summarize_eval.py "$OUT"/synref_{val,testA,testB,compositional}_{all,peak}.json | tee "$OUT/summary.md"
