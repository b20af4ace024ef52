#!/usr/bin/env bash
# Reproduce the shipped demo checkpoint (weights/mmi_demo.pt) from scratch, then measure it.
#   bash scripts/train_shipped.sh [DATA_ROOT=data]
# Stage 1 needs one CUDA GPU (about 8 minutes); stages 2-3 run on the CPU (README, "The shipped
# checkpoint"). Each step is skipped when its output is there, so the script continues after
# an interruption (stage 2 resumes from its last.pt, written every 200 steps).
#   stage 1 (GPU)  scripts/gpu_train.sh: a fresh 32,000-image world (seed 1), the whole network
#                  trained for ~5.8 minutes (configs/demo_synref_gpu.json, backbone lr x0.1)
#                  -> runs/demo_synref_gpu/mmi.pt. On a machine without a GPU, put that file
#                  there (made on a GPU machine: join its parts with cat NAME.pt.part-* > mmi.pt)
#   data           python -m mmi.data.synthetic: the seed-0 world every table is measured on
#   stage 2 (CPU)  the backbone frozen at its stage-1 weights, outputs memoised, the head trained
#                  4 more epochs on seed-0 train (configs/demo_synref_stage2.json)
#   evaluation     scripts/evaluate_shipped.sh: export best.pt to weights/, every split, probes
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PY:-.venv/bin/python}
STAGE1=runs/demo_synref_gpu
STAGE2=runs/demo_synref_stage2
CONFIG2=configs/demo_synref_stage2.json
CACHE=$DATA/cache/synref_gpu_stage1_256.pt

if [ ! -f "$STAGE1/mmi.pt" ]; then
  if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: stage 1 needs a CUDA GPU, and $STAGE1/mmi.pt (its output) is not here." >&2
    echo "Run 'bash scripts/gpu_train.sh' on a GPU machine (VARIANTS='bb01:optim.backbone_lr_mult=0.1')," >&2
    echo "join the parts it writes (cat bb01.pt.part-* > $STAGE1/mmi.pt) and run this script again." >&2
    exit 2
  fi
  OUT=$STAGE1/out WORK=$STAGE1/work VARIANTS="bb01:optim.backbone_lr_mult=0.1" PY=$PY bash scripts/gpu_train.sh
  cat "$STAGE1"/out/bb01.pt.part-* > "$STAGE1/mmi.pt"
  cp "$STAGE1/work/runs/bb01/log.jsonl" "$STAGE1/work/runs/bb01/config.json" "$STAGE1/"
fi

[ -d "$DATA/synref" ] || $PY -m mmi.data.synthetic --out "$DATA" --images 12000 --seed 0

SET=(data.root="$DATA" output="$STAGE2" train.feature_cache_file="$CACHE" train.init_from="$STAGE1/mmi.pt")
[ -f "$CACHE" ] || $PY -m mmi.model.feature_cache --config "$CONFIG2" --set "${SET[@]}"
$PY train.py --config "$CONFIG2" --resume auto --set "${SET[@]}"

bash scripts/evaluate_shipped.sh "$STAGE2" "$DATA"
