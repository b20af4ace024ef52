#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (weights/mmi_demo.pt) from scratch, then measure it.
#   bash scripts/train_shipped.sh [DATA_ROOT=data]
# Steps (each skipped when its output is there, so running the script again after an
# interruption continues: the run resumes from RUN/last.pt, written every 200 steps):
#   1. the synthetic world: python -m mmi.data.synthetic (12,000 images, seed 0)
#   2. the frozen backbone's outputs for the train and val images, memoised in a file
#   3. configs/demo_synref_fast.json: 7 epochs, cosine lr from 1e-3   -> runs/demo_synref_fast
#   4. export + every table (scripts/evaluate_shipped.sh), time to accuracy
# The minutes of steps 1-2 go to RUN.prep.json, which the time-to-accuracy table adds.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/demo_synref_fast}
CONFIG=configs/demo_synref_fast.json
CACHE=$DATA/cache/synref_mobilenet_v2_256.pt
PREP=$RUN.prep.json
mkdir -p "$(dirname "$RUN")"
[ -f "$PREP" ] || echo '{}' > "$PREP"
record() {  # name start_seconds
  $PY -c "import json,sys,time; p='$PREP'; d=json.load(open(p)); d['$1']=round((time.time()-$2)/60,2); json.dump(d,open(p,'w'))"
}

if [ ! -d "$DATA/synref" ]; then
  t0=$(date +%s.%N); $PY -m mmi.data.synthetic --out "$DATA" --images 12000 --seed 0; record data "$t0"
fi
if [ ! -f "$CACHE" ]; then
  t0=$(date +%s.%N)
  $PY -m mmi.model.feature_cache --config "$CONFIG" --set data.root="$DATA" train.feature_cache_file="$CACHE"
  record feature_cache "$t0"
fi
if [ -f "$RUN/last.pt" ]; then
  $PY train.py --resume "$RUN/last.pt"
else
  $PY train.py --config "$CONFIG" --set data.root="$DATA" output="$RUN" train.feature_cache_file="$CACHE"
fi

bash scripts/evaluate_shipped.sh "$RUN" "$DATA"
$PY scripts/time_to_accuracy.py "$RUN/log.jsonl" --prep "$PREP" | tee "$RUN/eval/time_to_accuracy.md"
