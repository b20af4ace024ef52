#!/usr/bin/env bash
# Measure one exported checkpoint on every synthetic split and with the language probes (empty /
# mismatched expressions) on val; one results JSON each in OUT_DIR, the tables in OUT_DIR/summary.md.
# Shared by scripts/evaluate_shipped.sh and scripts/train_fast.sh.
#   bash scripts/eval_splits.sh CHECKPOINT OUT_DIR DATA_ROOT      (paths relative to the repository root)
#   REGIONS=peak bash scripts/eval_splits.sh ...    one region per expression kept (train.py --eval-only --regions)
#   PROBES="" EVAL_ARGS="--amp bf16" bash ...       no probes; more flags for every train.py --eval-only
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1; OUT=$2; DATA=$3
PY=${PY:-.venv/bin/python}
REGIONS=${REGIONS:-all}
PROBES=${PROBES-empty mismatched}
EVAL_ARGS=${EVAL_ARGS:-}
mkdir -p "$OUT"
for split in val testA testB compositional; do
  $PY train.py --eval-only --checkpoint "$CKPT" --dataset synref --split $split --data-root "$DATA" \
      --regions "$REGIONS" $EVAL_ARGS --out "$OUT/synref_$split.json"
done
for probe in $PROBES; do
  $PY train.py --eval-only --checkpoint "$CKPT" --dataset synref --split val --data-root "$DATA" \
      --language $probe --regions "$REGIONS" $EVAL_ARGS --out "$OUT/synref_val_$probe.json"
done
$PY scripts/summarize_eval.py "$OUT"/synref_*.json | tee "$OUT/summary.md"
