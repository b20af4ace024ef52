#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (weights/mmi_demo.pt), then measure it.
#   bash scripts/train_shipped.sh [DATA_ROOT=data]            stage 2 from the committed stage-1 checkpoint (CPU)
#   STAGE1=gpu bash scripts/train_shipped.sh [DATA_ROOT]       stage 1 as well (needs one CUDA GPU, two ~9-minute legs)
# Each step is skipped when its output is there, so the script continues after an interruption
# (stage 2 resumes from its last.pt, written every 200 steps). README, "The shipped checkpoint".
#   stage 1 (GPU)  scripts/gpu_train.sh twice, the whole network trained (configs/demo_synref_gpu.json,
#                  backbone lr x0.1, bf16): leg a from ImageNet on a fresh 32,000-image world (seed 1)
#                  for ~5.8 min; leg b from leg a's weights on another fresh world (36,000 images,
#                  seed 3) for ~6.5 min -> runs/demo_synref_gpu/mmi.pt. The shipped model's own stage 1
#                  is committed as assets/recipes/gpu/stage1b.pt (logs and configs of both legs beside it)
#   data           python -m mmi.data.synthetic: the seed-0 world every table is measured on
#   stage 2 (CPU)  two runs from stage 1, each 4 more epochs on seed-0 train, ~40 + ~65 min on 2 cores:
#                  the head alone, the backbone frozen at its stage-1 weights and its outputs memoised
#                  (configs/demo_synref_stage2.json); and the head with the backbone's stride-16 and
#                  stride-32 blocks (configs/demo_synref_stage2_partial.json)
#   average        the shipped weights are the mean of the two runs' best.pt (python -m mmi.engine.checkpoint average)
#   evaluation     scripts/evaluate_shipped.sh: the average to weights/, every split, probes
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PY:-.venv/bin/python}
STAGE2=runs/demo_synref_stage2
PARTIAL=runs/demo_synref_stage2_partial
SOUP=runs/demo_synref_average
CONFIG2=configs/demo_synref_stage2.json
INIT=assets/recipes/gpu/stage1b.pt
CACHE=$DATA/cache/synref_gpu_stage1b_256.pt

if [ "${STAGE1:-}" = gpu ]; then
  RUN1=runs/demo_synref_gpu
  INIT=$RUN1/mmi.pt
  CACHE=$DATA/cache/synref_gpu_stage1_retrained_256.pt
  if [ ! -f "$INIT" ]; then
    if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
      echo "error: STAGE1=gpu needs a CUDA GPU; without one, leave STAGE1 unset (stage 2 starts from $INIT's" >&2
      echo "committed counterpart assets/recipes/gpu/stage1b.pt)" >&2
      exit 2
    fi
    if [ ! -f "$RUN1/stage1a.pt" ]; then
      OUT=$RUN1/out_a WORK=$RUN1/work_a VARIANTS="bb01:optim.backbone_lr_mult=0.1" PY=$PY bash scripts/gpu_train.sh
      cat "$RUN1"/out_a/bb01.pt.part-* > "$RUN1/stage1a.pt"
    fi
    OUT=$RUN1/out_b WORK=$RUN1/work_b SEED=3 IMAGES=36000 RESERVE_S=40 BUDGET_MIN=6.5 \
      VARIANTS="s1b:train.init_from=$RUN1/stage1a.pt" PY=$PY bash scripts/gpu_train.sh
    cat "$RUN1"/out_b/s1b.pt.part-* > "$INIT"
  fi
fi

[ -d "$DATA/synref" ] || $PY -m mmi.data.synthetic --out "$DATA" --images 12000 --seed 0

SET=(data.root="$DATA" output="$STAGE2" train.feature_cache_file="$CACHE" train.init_from="$INIT")
[ -f "$CACHE" ] || $PY -m mmi.model.feature_cache --config "$CONFIG2" --set "${SET[@]}"
$PY train.py --config "$CONFIG2" --resume auto --set "${SET[@]}"

# the second stage-2 run: its memo (the fixed blocks' outputs) fills during its first epoch
SET=(data.root="$DATA" output="$PARTIAL" train.feature_cache_file="${CACHE%.pt}_fixed7.pt" train.init_from="$INIT")
$PY train.py --config configs/demo_synref_stage2_partial.json --resume auto --set "${SET[@]}"

mkdir -p "$SOUP"
$PY -m mmi.engine.checkpoint average "$STAGE2/best.pt" "$PARTIAL/best.pt" --out "$SOUP/mmi.pt"
bash scripts/evaluate_shipped.sh "$SOUP/mmi.pt" "$DATA"
