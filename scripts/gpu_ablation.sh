#!/usr/bin/env bash
# The paper's Table I on one lent GPU, in one command of at most ~9 minutes (README, "Ablation"):
# the five variants of scripts/ablation.py (baseline generic_lav, +mutual, +IMI, +LFR, all) and
# the full model with order_free fusion, one seed, all at once on the one GPU through
# scripts/gpu_train.sh (the GPU recipe, configs/demo_synref_gpu.json, the same time budget for
# each, a cosine over it), 2 data-loading processes each. Results under $OUT: each run's
# exported checkpoint in parts and its log in logs.tar.gz; the validation curves print last.
#   OUT=... bash scripts/gpu_ablation.sh          (with .whl/ carried, as for gpu_train.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VARIANTS=$($PY - <<'EOF'
import json, sys
sys.path.insert(0, "scripts")
from ablation import variants

runs = dict(variants())
runs["all_order_free"] = dict(runs["all"], fusion="order_free")
def value(v):
    return v if isinstance(v, str) else json.dumps(v)
print(" ".join(name.replace("+", "") + ":" + ",".join(["data.workers=2"] + [f"model.overrides.{k}={value(v)}"
                                                                              for k, v in sorted(o.items())])
               for name, o in runs.items()))
EOF
)
echo "variants: $VARIANTS"
VARIANTS="$VARIANTS" PY=$PY bash scripts/gpu_train.sh
