#!/usr/bin/env bash
# The fast CPU recipe (configs/demo_synref_fast.json) from scratch, then measured (README,
# "Time to accuracy"); the shipped checkpoint is untouched (scripts/train_shipped.sh makes that one).
#   bash scripts/train_fast.sh [DATA_ROOT=data]
# Steps (each skipped when its output is there, so running the script again after an
# interruption continues: the run resumes from RUN/last.pt, written every 200 steps):
#   1. the synthetic world: python -m mmi.data.synthetic (12,000 images, seed 0)
#   2. the frozen backbone's outputs for the train and val images, memoised in a file
#   3. configs/demo_synref_fast.json: 7 epochs, cosine lr from 1e-3   -> runs/demo_synref_fast
#   4. export RUN/mmi_fast.pt, every synthetic split and the language probes, time to accuracy
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
$PY train.py --config "$CONFIG" --resume auto --set data.root="$DATA" output="$RUN" train.feature_cache_file="$CACHE"

SRC=$RUN/best.pt; [ -f "$SRC" ] || SRC=$RUN/last.pt
$PY train.py --export "$SRC" --out "$RUN/mmi_fast.pt"
PY=$PY bash scripts/eval_splits.sh "$RUN/mmi_fast.pt" "$RUN/eval" "$DATA"
$PY scripts/time_to_accuracy.py "$RUN/log.jsonl" --prep "$PREP" | tee "$RUN/eval/time_to_accuracy.md"
