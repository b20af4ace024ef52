#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (weights/mmi_demo.pt) from scratch, then measure it.
#   bash scripts/train_shipped.sh [DATA_ROOT=data]
# Two stages, each resumable: run the script again after an interruption and it continues from
# the last saved step (RUN/last.pt is written every 200 steps and at every epoch end).
#   stage 1  configs/demo_synref.json: 5 epochs, lr 1e-3, 1e-4 in epoch 5        -> runs/demo_synref
#   stage 2  continue that run at lr 1e-3 for epochs 6-10, 1e-4 in epoch 11       -> runs/demo_synref_long
# On the 2-core CPU of the README: about 90 + 105 minutes, then ~16 minutes of evaluation.
# No time budget in either stage: a stage cut short would skip its lr drop.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PY:-.venv/bin/python}
STAGE1=runs/demo_synref
STAGE2=runs/demo_synref_long
EPOCHS=${EPOCHS:-11}

[ -d "$DATA/synref" ] || $PY -m mmi.data.synthetic --out "$DATA" --images 12000 --seed 0

$PY train.py --config configs/demo_synref.json --resume auto --set data.root="$DATA" output="$STAGE1" train.time_budget_min=null

if [ -f "$STAGE2/last.pt" ]; then
  $PY train.py --resume "$STAGE2/last.pt"
else
  mkdir -p "$STAGE2" && cp "$STAGE1/log.jsonl" "$STAGE2/log.jsonl"  # one log, one curve for both stages
  $PY train.py --resume "$STAGE1/last.pt" --set output="$STAGE2" train.epochs="$EPOCHS" \
      "optim.milestones=[$((EPOCHS - 1))]" train.time_budget_min=null
fi

bash scripts/evaluate_shipped.sh "$STAGE2" "$DATA"
