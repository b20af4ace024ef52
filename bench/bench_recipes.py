"""Training-step throughput of recipes (configs) as they train from a warm feature cache:
the memoised outputs are given (computed once from a random image batch), so this measures
what a training step costs once the cache is warm (data loading excluded: see the run
logs' images_per_s). A recipe with a frozen backbone (or none named) trains the head
alone; one with ``backbone_frozen_blocks`` N also runs and trains the blocks after the
first N.

    python bench/bench_recipes.py configs/demo_synref.json configs/demo_synref_fast.json --steps 20
    python bench/bench_recipes.py configs/demo_synref_stage2.json configs/demo_synref_stage2_partial.json \
        configs/demo_synref_stage2_partial.json:model.overrides.backbone_frozen_blocks=1 --steps 10

A config may carry overrides after a colon, as ``train.py --set`` takes them, comma-separated.

Each config runs with its own model overrides and its own ``train.amp`` (``auto``
resolved for this machine); the configs are measured in turns (A B A B ...) so a
background load shifts them alike; the table gives the median images/s of each and the
ratio to the first. On a CPU quote only the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.engine.config import load_config  # noqa: E402
from mmi.engine.precision import autocast  # noqa: E402
from mmi.engine.precision import resolve_amp  # noqa: E402
from mmi.model import build_model  # noqa: E402


class _Given:
    """Stands in for the feature cache: returns fixed backbone outputs."""

    def __init__(self, feats):
        self.feats = feats

    def __call__(self, backbone, image, names=None, present=None):
        return self.feats


def setup(spec: str, batch: int, vocab: int = 300) -> dict:
    path, _, sets = spec.partition(":")
    cfg = load_config(path, [x for x in sets.split(",") if x])
    over = dict(cfg["model"]["overrides"], backbone_weights=None)
    if not over.get("backbone_frozen_blocks"):
        over["frozen_backbone"] = True
    torch.manual_seed(0)
    model = build_model(cfg["model"]["preset"], vocab, **over).train()
    S, T = model.image_size, model.t_max
    with torch.no_grad():
        feats = [f.detach() for f in model.memoised_part()(torch.randn(batch, 3, S, S))]
    model.feature_cache = _Given(feats)
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch, 1, S, S)
    mask[:, :, S // 4: S // 2, S // 3: 2 * S // 3] = 1
    lengths = torch.randint(3, 9, (batch, 1), generator=g)
    data = {"image": torch.zeros(batch, 3, S, S), "words": torch.randint(2, vocab, (batch, T), generator=g),
            "word_mask": torch.arange(T)[None] < lengths, "mask": mask}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-4)
    amp = resolve_amp(cfg["train"]["amp"], torch.device("cpu"))
    name = os.path.basename(path) + (f" ({sets})" if sets else "")
    return {"name": name, "model": model, "data": data, "opt": opt, "amp": amp, "times": []}


def step(r: dict) -> float:
    start = time.perf_counter()
    with autocast(torch.device("cpu"), r["amp"]):
        loss = r["model"](r["data"])["loss"]
    r["opt"].zero_grad(set_to_none=True)
    loss.backward()
    r["opt"].step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per config (after 2 warm-up steps)")
    ap.add_argument("--out", default="runs/bench_recipes.json")
    args = ap.parse_args()
    runs = [setup(c, args.batch) for c in args.configs]
    for r in runs:
        step(r), step(r)  # warm-up
    for _ in range(args.steps):
        for r in runs:
            r["times"].append(step(r))
    rows = []
    for r in runs:
        med = statistics.median(r["times"])
        rows.append({"config": r["name"], "amp": r["amp"], "step_s_median": round(med, 4),
                     "images_per_s": round(args.batch / med, 2)})
    base = rows[0]["images_per_s"]
    print(f"machine: {platform.processor() or platform.machine()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"batch {args.batch}")
    print("| config | amp | images/s (median step) | ratio to the first |\n|---|---|---|---|")
    for row in rows:
        row["ratio"] = round(row["images_per_s"] / base, 2)
        print(f"| {row['config']} | {row['amp']} | {row['images_per_s']} | {row['ratio']} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": torch.get_num_threads(), "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
