#!/usr/bin/env bash
# The paper's Table I on one lent GPU, in one command of at most ~9 minutes (README, "Ablation"):
# the six variants of scripts/ablation.py (baseline generic_lav, +mutual, +IMI, +LFR, all, and
# all_order_free: the full model with order_free fusion), one seed, all at once on the one GPU through
# scripts/gpu_train.sh (the GPU recipe, configs/demo_synref_gpu.json, the same time budget for
# each, a cosine over it), WORKERS data-loading processes each (default 2). Results under $OUT:
# each run's exported checkpoint in parts and its log in logs.tar.gz; the validation curves print last.
#   OUT=... bash scripts/gpu_ablation.sh          (with .whl/ carried, as for gpu_train.sh)
#   ROWS="baseline mutual all" WORKERS=4 OUT=... bash scripts/gpu_ablation.sh    (some rows only: fewer
#   runs share the GPU and the 16 cores, so each trains more in the same minutes; the table over
#   two loans. Names: baseline mutual IMI LFR all all_order_free)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VARIANTS=$($PY - <<'EOF'
import json, os, sys
sys.path.insert(0, "scripts")
from ablation import variants

runs = {name.replace("+", ""): o for name, o in variants().items()}
rows = os.environ.get("ROWS", "").split() or list(runs)
unknown = [r for r in rows if r not in runs]
if unknown:
    sys.exit(f"unknown ROWS {unknown}: choose from {list(runs)}")
def value(v):
    return v if isinstance(v, str) else json.dumps(v)
workers = int(os.environ.get("WORKERS", "2"))
print(" ".join(name + ":" + ",".join([f"data.workers={workers}"] + [f"model.overrides.{k}={value(v)}"
                                                                    for k, v in sorted(runs[name].items())])
               for name in rows))
EOF
)
echo "variants: $VARIANTS"
VARIANTS="$VARIANTS" PY=$PY bash scripts/gpu_train.sh
