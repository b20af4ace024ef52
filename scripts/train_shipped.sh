#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (weights/mmi_demo.pt), then measure it.
#   bash scripts/train_shipped.sh [DATA_ROOT=data]            stage 2 from the committed stage-1 checkpoint (CPU)
#   STAGE1=gpu bash scripts/train_shipped.sh [DATA_ROOT]       stage 1 as well (needs one CUDA GPU, three ~9-minute legs)
# Each step is skipped when its output is there, so the script continues after an interruption
# (a stage-2 run resumes from its last.pt, written every 200 steps). README, "The shipped checkpoint".
#   stage 1 (GPU)  scripts/gpu_train.sh three times, the whole network trained (configs/demo_synref_gpu.json,
#                  backbone lr x0.1, bf16), each leg on a fresh world of its own (no seed-0 scene):
#                  leg a from ImageNet (32,000 images, seed 1, batch 64) for ~5.8 min; leg b from leg a
#                  (36,000 images, seed 3, batch 64) for ~6.5 min; leg c from leg b (36,000 images, seed 4,
#                  batch 256, lr 2e-3, 15 loader processes, uint8 batches) for 6.2 min
#                  -> runs/demo_synref_gpu/mmi.pt. The shipped model's own stage 1 is committed as
#                  assets/recipes/gpu/stage1c.pt (the logs and configs of all legs beside it)
#   data           python -m mmi.data.synthetic: the seed-0 world every table is measured on
#   stage 2 (CPU)  one run of the head alone from stage 1, 4 more epochs on seed-0 train
#                  (configs/demo_synref_stage2.json: the backbone frozen at its stage-1 weights, its
#                  outputs memoised once, ~9 min), ~41 min on 2 cores
#   average        the shipped weights are the mean of stage 1's weights and stage 2's best.pt
#                  (python -m mmi.engine.checkpoint average): above both on val, where stage 2 alone
#                  is not (README, "What was compared")
#   stage 3 (CPU)  the boundary refiner (with its context inputs: how far below the coarse map's peak, the
#                  peak's region) added to the average and trained alone, 3 epochs on seed-0 train
#                  (configs/demo_synref_refine.json: everything else fixed, the same memo), ~30 min
#   stage 4 (CPU)  the region selector (which of a mask's 8-connected regions to keep) added to stage 3's
#                  model and trained alone, 3 epochs on seed-0 train (configs/demo_synref_select.json:
#                  everything else fixed, the same memo; best.pt: epoch 2), ~23 min
#   evaluation     scripts/evaluate_shipped.sh: stage 4's export to weights/, every split, probes
# From another stage 1 (a later GPU leg's export, e.g. runs/stage1d.pt; BENCHMARKS.md, "The next leg"):
#   STAGE1_CKPT=runs/stage1d.pt OUTDIR=runs/shipped_d bash scripts/train_shipped.sh data
# its own memo (data/cache/synref_<name>_256.pt) and its own run folders, so nothing of the
# shipped recipe's runs is taken for done.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PY:-.venv/bin/python}
OUTDIR=${OUTDIR:-runs/shipped}
SOUP=$OUTDIR/average
CONFIG2=configs/demo_synref_stage2.json
INIT=assets/recipes/gpu/stage1c.pt
CACHE=$DATA/cache/synref_gpu_stage1c_256.pt
if [ -n "${STAGE1_CKPT:-}" ]; then
  [ -f "$STAGE1_CKPT" ] || { echo "error: STAGE1_CKPT=$STAGE1_CKPT: no such file" >&2; exit 2; }
  [ "$OUTDIR" != runs/shipped ] || { echo "error: STAGE1_CKPT: name an OUTDIR of its own (runs/shipped holds the shipped recipe's runs)" >&2; exit 2; }
  INIT=$STAGE1_CKPT
  CACHE=$DATA/cache/synref_$(basename "$STAGE1_CKPT" .pt)_256.pt
fi

if [ "${STAGE1:-}" = gpu ]; then
  RUN1=runs/demo_synref_gpu
  INIT=$RUN1/mmi.pt
  CACHE=$DATA/cache/synref_gpu_stage1_retrained_256.pt
  if [ ! -f "$INIT" ]; then
    if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
      echo "error: STAGE1=gpu needs a CUDA GPU; without one, leave STAGE1 unset (stage 2 starts from $INIT's" >&2
      echo "committed counterpart assets/recipes/gpu/stage1c.pt)" >&2
      exit 2
    fi
    if [ ! -f "$RUN1/stage1a.pt" ]; then
      OUT=$RUN1/out_a WORK=$RUN1/work_a VARIANTS="bb01:optim.backbone_lr_mult=0.1" PY=$PY bash scripts/gpu_train.sh
      cat "$RUN1"/out_a/bb01.pt.part-* > "$RUN1/stage1a.pt"
    fi
    if [ ! -f "$RUN1/stage1b.pt" ]; then
      OUT=$RUN1/out_b WORK=$RUN1/work_b SEED=3 IMAGES=36000 RESERVE_S=40 BUDGET_MIN=6.5 \
        VARIANTS="s1b:train.init_from=$RUN1/stage1a.pt" PY=$PY bash scripts/gpu_train.sh
      cat "$RUN1"/out_b/s1b.pt.part-* > "$RUN1/stage1b.pt"
    fi
    OUT=$RUN1/out_c WORK=$RUN1/work_c SEED=4 IMAGES=36000 DEADLINE_S=585 RESERVE_S=40 BUDGET_MIN=6.2 \
      VARIANTS="c:train.init_from=$RUN1/stage1b.pt,data.batch_size=256,optim.lr=0.002,data.workers=15,data.uint8_transfer=true" \
      PY=$PY bash scripts/gpu_train.sh
    cat "$RUN1"/out_c/c.pt.part-* > "$INIT"
  fi
fi

[ -d "$DATA/synref" ] || $PY -m mmi.data.synthetic --out "$DATA" --images 12000 --seed 0

SET=(data.root="$DATA" train.feature_cache_file="$CACHE" train.init_from="$INIT")
[ -f "$CACHE" ] || $PY -m mmi.model.feature_cache --config "$CONFIG2" --set "${SET[@]}" output="$OUTDIR/memo"

$PY train.py --config "$CONFIG2" --resume auto --set "${SET[@]}" output="$OUTDIR/stage2_s0"

mkdir -p "$SOUP"
[ -f "$SOUP/mmi.pt" ] || $PY -m mmi.engine.checkpoint average "$INIT" "$OUTDIR/stage2_s0/best.pt" --out "$SOUP/mmi.pt"

$PY train.py --config configs/demo_synref_refine.json --resume auto --set data.root="$DATA" \
  train.feature_cache_file="$CACHE" train.init_from="$SOUP/mmi.pt" output="$OUTDIR/refine"
$PY train.py --export "$OUTDIR/refine/best.pt" --out "$OUTDIR/refine/mmi.pt"

$PY train.py --config configs/demo_synref_select.json --resume auto --set data.root="$DATA" \
  train.feature_cache_file="$CACHE" train.init_from="$OUTDIR/refine/mmi.pt" output="$OUTDIR/select"
$PY train.py --export "$OUTDIR/select/best.pt" --out "$OUTDIR/select/mmi.pt"
bash scripts/evaluate_shipped.sh "$OUTDIR/select/mmi.pt" "$DATA"
