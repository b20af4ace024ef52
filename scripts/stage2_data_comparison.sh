#!/usr/bin/env bash
# Does stage 2 of the shipped model (README "The shipped checkpoint") gain from more distinct
# training images? Two head-only stage-2 runs from the same stage-1 checkpoint, the same seed,
# schedule and number of steps (4 x 1,681 of batch 16), run side by side with one torch thread
# each; only the training images differ:
#   same   seed-0 train (9,120 images, each expression seen ~4 times), like the shipped stage 2
#   fresh  a seed-5 world of 24,000 images (its ~18,000 train images, each expression seen ~2 times;
#          no image of the seed-0 evaluation splits), its stage-1 backbone memo filled during training
# Both are then evaluated on the whole seed-0 val split (train.py --eval-only, threshold 0.5).
#   [SEED=1] [OUTDIR=runs/stage2_data] bash scripts/stage2_data_comparison.sh [DATA_ROOT=data]
# Each step is skipped when its output is there; an interrupted run resumes from its last.pt.
# Exits non-zero (after both runs end) when either failed; each run's output is appended to OUTDIR/NAME.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
SEED=${SEED:-1}
PY=${PY:-.venv/bin/python}
FRESH=$DATA/seed5
CONFIG=configs/demo_synref_stage2.json
OUTDIR=${OUTDIR:-runs/stage2_data}

[ -f "$DATA/synref/refs(unc).p" ] || $PY -m mmi.data.synthetic --out "$DATA" --images 12000 --seed 0
[ -f "$FRESH/synref/refs(unc).p" ] || $PY -m mmi.data.synthetic --out "$FRESH" --images 24000 --seed 5

mkdir -p "$OUTDIR"
# both from stage 1 leg b (assets/recipes/gpu/stage1b.pt), the shipped stage 2's start when this was
# measured; leg b's memo file serves "same", "fresh" fills its own during training
common=(train.seed="$SEED" train.epochs=4 train.max_steps_per_epoch=1681 data.workers=1
        train.init_from=assets/recipes/gpu/stage1b.pt)
run() {  # name, then --set items
  local name=$1; shift
  OMP_NUM_THREADS=1 $PY train.py --config "$CONFIG" --no-progress --resume auto \
    --set "${common[@]}" output="$OUTDIR/$name" "$@" >> "$OUTDIR/$name.txt" 2>&1
  [ -f "$OUTDIR/$name/eval_val.json" ] || OMP_NUM_THREADS=1 $PY train.py --eval-only \
    --checkpoint "$OUTDIR/$name/best.pt" --dataset synref --split val --data-root "$DATA" \
    --out "$OUTDIR/$name/eval_val.json" --workers 1 >> "$OUTDIR/$name.txt" 2>&1
}
run same data.root="$DATA" train.feature_cache_file="$DATA/cache/synref_gpu_stage1b_256.pt" &
same=$!
run fresh data.root="$FRESH" train.feature_cache_file="$DATA/cache/synref_seed5_gpu_stage1b_256.pt" &
fresh=$!
failed=()
wait "$same" || failed+=(same)
wait "$fresh" || failed+=(fresh)
for name in "${failed[@]}"; do echo "error: the $name run failed; see $OUTDIR/$name.txt" >&2; done
[ ${#failed[@]} -eq 0 ] || exit 1
for name in same fresh; do
  echo "== $name: validation during training (its own world's first 600 val expressions)"
  $PY scripts/time_to_accuracy.py "$OUTDIR/$name/log.jsonl"
  echo "== $name: the whole seed-0 val split"
  $PY scripts/summarize_eval.py "$OUTDIR/$name/eval_val.json"
done
