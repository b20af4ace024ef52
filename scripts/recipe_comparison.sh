#!/usr/bin/env bash
# Paired comparison of the training levers of configs/demo_synref_fast.json against the
# shipped recipe (configs/demo_synref.json): the same seed, data order and number of steps
# for every variant, validation oIoU on the first 600 synref/val expressions at the end.
# Two runs at a time with one torch thread each (2-core machine), so the step times of
# one round are comparable with each other.
#
#   bash scripts/recipe_comparison.sh [DATA_ROOT] [STEPS] [OUT]
#   python scripts/recipe_table.py runs/recipes          # the table (README)
# Every run is tried; the script exits 1 at the end when one of them failed.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}; STEPS=${2:-600}; OUT=${3:-runs/recipes}
PY=${PY:-.venv/bin/python}
COMMON="train.epochs=1 train.max_steps_per_epoch=$STEPS train.save_every_steps=0 data.root=$DATA data.val_max_items=600 train.feature_cache_file=$DATA/cache/synref_mobilenet_v2_256.pt"
FAST="configs/demo_synref_fast.json"
STEP="optim.schedule=step optim.milestones=[40]"
run() {  # name config overrides...
  local name=$1 cfg=$2; shift 2
  if [ -f "$OUT/$name/log.jsonl" ] && grep -q '"kind": "val"' "$OUT/$name/log.jsonl"; then echo "skip $name (done)"; return; fi
  rm -rf "$OUT/$name"
  if OMP_NUM_THREADS=1 $PY train.py --config "$cfg" --no-progress --set $COMMON output=$OUT/$name "$@" > "$OUT/$name.txt" 2>&1; then
    echo "done $name"
  else
    echo "FAILED $name (see $OUT/$name.txt)"; return 1  # xargs goes on with the other runs, then exits 123
  fi
}
export -f run; export OUT PY COMMON
mkdir -p "$OUT"
{
  echo "shipped configs/demo_synref.json train.time_budget_min=null"
  echo "cheap $FAST model.overrides.aux_weight=0 model.overrides.skip_fusion=false $STEP"
  echo "cheap_aux $FAST model.overrides.skip_fusion=false $STEP"
  echo "cheap_skip $FAST model.overrides.aux_weight=0 $STEP"
  echo "cheap_aux_skip $FAST $STEP"
  echo "fast $FAST"
  echo "fast_lr2e-3 $FAST optim.lr=0.002"
} | xargs -P 2 -L 1 bash -c 'run "$@"' _ || { echo "recipe_comparison: some runs FAILED (lines above)" >&2; exit 1; }
