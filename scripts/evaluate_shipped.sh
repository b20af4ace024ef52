#!/usr/bin/env bash
# Export the shipped checkpoint from a run (best.pt, else last.pt) and measure it: every synthetic
# split and the language probes (empty / mismatched expressions) on val; tables in RUN/eval/summary.md;
# the app's shipped validation results in assets/results/synref_val_shipped.json.
#   bash scripts/evaluate_shipped.sh [RUN_DIR | CHECKPOINT=runs/shipped/select/mmi.pt] [DATA_ROOT=data]
# A checkpoint file (e.g. a weight average) is shipped as it is, its tables in its folder's eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/shipped/select/mmi.pt}
DATA=${2:-data}
PY=${PY:-.venv/bin/python}
if [ -f "$RUN" ]; then
  SRC=$RUN
  RUN=$(dirname "$RUN")
else
  SRC=$RUN/best.pt
  [ -f "$SRC" ] || SRC=$RUN/last.pt
  # the run's curves and resolved config travel with the figures
  [ -f "$RUN/curves.png" ] && cp "$RUN/curves.png" assets/figures/demo_training_curves.png
  [ -f "$RUN/config.json" ] && cp "$RUN/config.json" assets/figures/demo_training_config.json
fi
OUT=$RUN/eval
mkdir -p "$OUT"
$PY train.py --export "$SRC" --out weights/mmi_demo.pt
PY=$PY bash scripts/eval_splits.sh weights/mmi_demo.pt "$OUT" "$DATA"
# the failure-case tab's default: the first 500 val records with ground truth, regenerable without data/
$PY scripts/ship_results.py "$OUT/synref_val.json" --data-root "$DATA" --out assets/results/synref_val_shipped.json
