"""What a training step costs with the backbone memo keyed by content against by name
(``train.cache_by_name``): the whole loop (loader, memo, model step), CPU seconds per image.

    python bench/bench_memo_loader.py --config configs/ablation_synref.json --steps 40 --rounds 2

The config's run (its data, model and memo file, ``train.feature_cache_file``, read and never
written here) is built twice per round, once per mode, and trains ``--steps`` steps of its first
epoch from the same start; the modes take turns (content, name, content, name, ...), so a
background load shifts both alike. Before each run the memo learns the names of the images of
those steps (one pass of the loader, as a run's earlier epochs would have taught it), so "by
name" is the steady state of a run whose memo holds every training image: the loader skips
decoding, letterboxing and normalising them and the model's process skips hashing them.
``data.workers=0``: the loader runs in the training process, so its CPU time (``process_time``)
is the whole cost of a step, which a busy machine does not change much; wall seconds are
printed too. Quote the ratio of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.engine.config import load_config  # noqa: E402
from mmi.engine.trainer import Trainer  # noqa: E402


def one_run(args, by_name: bool, out: str) -> dict:
    sets = [f"output={out}", "data.workers=0", "train.val_every=0", "train.epochs=1", "train.log_every=1",
            f"train.max_steps_per_epoch={args.steps}", f"train.cache_by_name={str(by_name).lower()}",
            "train.save_every_steps=0"] + ([f"data.root={args.data_root}"] if args.data_root else [])
    cfg = load_config(args.config, sets + args.set)
    if not cfg["train"]["feature_cache_file"] or not os.path.exists(cfg["train"]["feature_cache_file"]):
        raise SystemExit(f"{args.config}: needs its memo file (train.feature_cache_file; "
                         "python -m mmi.model.feature_cache --config CFG fills it)")
    tr = Trainer(cfg, progress=False)
    tr.cfg["train"]["feature_cache_file"] = None  # measure, never write the memo file
    cache, part = tr.model.feature_cache, tr.model.memoised_part()
    ds = tr.train_ds
    ds.memo_names = frozenset()
    sizes = []  # images per step (the last batch of a short split may be smaller)
    with torch.no_grad():  # teach the memo the names of this epoch's images (all present: keyed by content)
        for i, batch in enumerate(tr._loader(0, 0)):
            if i == args.steps:
                break
            cache(part, batch["image"], batch["image_names"], batch["image_present"])
            sizes.append(len(batch["image_names"]))
    ds.memo_names = None
    hits = cache.hits
    cpu, wall = time.process_time(), time.perf_counter()
    tr.fit()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if tr.state.step != len(sizes):
        raise SystemExit(f"trained {tr.state.step} steps where the loader gave {len(sizes)} batches")
    images = sum(sizes)  # those batches, the same ones the run took (same seed, same epoch)
    return {"mode": "name" if by_name else "content", "images": images, "cpu_ms_per_image": 1e3 * cpu / images,
            "wall_ms_per_image": 1e3 * wall / images, "memo_hits": cache.hits - hits}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/ablation_synref.json")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides, as train.py takes them")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for by_name in (False, True):
                rows.append(one_run(args, by_name, os.path.join(tmp, f"{r}_{by_name}")))
                print(json.dumps(rows[-1]), flush=True)
    med = {m: {k: statistics.median(x[k] for x in rows if x["mode"] == m) for k in ("cpu_ms_per_image",
                                                                                   "wall_ms_per_image")}
           for m in ("content", "name")}
    print(f"\n{args.config}, {args.steps} steps x {args.rounds} rounds per mode, {args.threads} thread(s), "
          f"loader in the training process\n")
    print("| memo keyed by | CPU ms per image (median) | ratio | wall ms per image (median) | ratio |")
    print("|---|---|---|---|---|")
    for m in ("content", "name"):
        print(f"| {m} | {med[m]['cpu_ms_per_image']:.1f} | {med['content']['cpu_ms_per_image'] / med[m]['cpu_ms_per_image']:.2f}x "
              f"| {med[m]['wall_ms_per_image']:.1f} | {med['content']['wall_ms_per_image'] / med[m]['wall_ms_per_image']:.2f}x |")
    if args.out:
        doc = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
               "args": vars(args), "rows": rows, "median": med}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
