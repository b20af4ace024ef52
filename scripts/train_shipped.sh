#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (weights/mmi_demo.pt), then measure it.
#   bash scripts/train_shipped.sh [DATA_ROOT=data]            stage 2 from the committed stage-1 checkpoint (CPU)
#   STAGE1=gpu bash scripts/train_shipped.sh [DATA_ROOT]       stage 1 as well (needs one CUDA GPU, ~8 minutes)
# Each step is skipped when its output is there, so the script continues after an interruption
# (stage 2 resumes from its last.pt, written every 200 steps). README, "The shipped checkpoint".
#   stage 1 (GPU)  scripts/gpu_train.sh: a fresh 32,000-image world (seed 1), the whole network
#                  trained for ~5.8 minutes (configs/demo_synref_gpu.json, backbone lr x0.1)
#                  -> runs/demo_synref_gpu/mmi.pt; the shipped model's own stage 1 is committed as
#                  assets/recipes/gpu/stage1_bb01.pt (its log and config beside it)
#   data           python -m mmi.data.synthetic: the seed-0 world every table is measured on
#   stage 2 (CPU)  the backbone frozen at its stage-1 weights, outputs memoised, the head trained
#                  4 more epochs on seed-0 train (configs/demo_synref_stage2.json), ~40 min on 2 cores
#   evaluation     scripts/evaluate_shipped.sh: export best.pt to weights/, every split, probes
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PY:-.venv/bin/python}
STAGE2=runs/demo_synref_stage2
CONFIG2=configs/demo_synref_stage2.json
INIT=assets/recipes/gpu/stage1_bb01.pt
CACHE=$DATA/cache/synref_gpu_stage1_256.pt

if [ "${STAGE1:-}" = gpu ]; then
  RUN1=runs/demo_synref_gpu
  INIT=$RUN1/mmi.pt
  CACHE=$DATA/cache/synref_gpu_stage1_retrained_256.pt
  if [ ! -f "$INIT" ]; then
    if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
      echo "error: STAGE1=gpu needs a CUDA GPU; without one, leave STAGE1 unset (stage 2 starts from $INIT's" >&2
      echo "committed counterpart assets/recipes/gpu/stage1_bb01.pt)" >&2
      exit 2
    fi
    OUT=$RUN1/out WORK=$RUN1/work VARIANTS="bb01:optim.backbone_lr_mult=0.1" PY=$PY bash scripts/gpu_train.sh
    cat "$RUN1"/out/bb01.pt.part-* > "$INIT"
  fi
fi

[ -d "$DATA/synref" ] || $PY -m mmi.data.synthetic --out "$DATA" --images 12000 --seed 0

SET=(data.root="$DATA" output="$STAGE2" train.feature_cache_file="$CACHE" train.init_from="$INIT")
[ -f "$CACHE" ] || $PY -m mmi.model.feature_cache --config "$CONFIG2" --set "${SET[@]}"
$PY train.py --config "$CONFIG2" --resume auto --set "${SET[@]}"

bash scripts/evaluate_shipped.sh "$STAGE2" "$DATA"
