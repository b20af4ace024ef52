"""The plain view, the mirrored view alone and their mean, from the same predictions.

    python scripts/mirror_views.py CHECKPOINT DATA_ROOT [--splits val testA testB compositional]
                                   [--dataset synref] [--amp bf16] [--batch-size 32] [--out FILE.json]

Each batch runs twice (the plain view, and the image flipped left-right with the left/right
words swapped: :mod:`mmi.mirror`); every variant is scored from those two runs, with every
region and with one region kept (``--regions peak``): ``plain`` is what ``--eval-only``
gives, ``mirrored`` the mirrored view alone (flipped back; a check that mirroring is sound
for the data: it should score about as the plain view), ``mean`` what ``--eval-only --flip``
gives. oIoU / mIoU / Prec@0.9 per split and variant, and oIoU by type.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.data import Letterbox, build_dataset, collate, normalization  # noqa: E402
from mmi.engine.checkpoint import load_inference  # noqa: E402
from mmi.engine.evaluate import _expression_type, probabilities  # noqa: E402
from mmi.metrics import IoUAccumulator  # noqa: E402
from mmi.mirror import Mirror  # noqa: E402
from mmi.regions import keep_regions  # noqa: E402

VIEWS = ("plain", "mirrored", "mean")


def score_split(model, mirror: Mirror, ds, amp: str, batch_size: int, threshold: float = 0.5) -> dict:
    """{f"{view}_{regions}": IoUAccumulator} over every expression of ``ds``."""
    device = torch.device("cpu")
    accs = {f"{v}_{r}": IoUAccumulator() for v in VIEWS for r in ("all", "peak")}
    for batch in DataLoader(ds, batch_size=batch_size, num_workers=1, collate_fn=collate):
        plain = probabilities(model, batch, device, amp)
        ids, usable = mirror.words(batch["words"])
        flipped = probabilities(model, dict(batch, image=batch["image"].flip(-1), words=ids), device, amp)
        views = {"plain": plain, "mirrored": torch.where(usable[:, None, None], flipped.flip(-1), plain),
                 "mean": mirror.average(plain, flipped, usable)}
        for i, meta in enumerate(batch["meta"]):
            lb = Letterbox.from_dict(meta["letterbox"])
            gt = ds.original_mask(meta["index"]) != 0
            kind = _expression_type(ds, meta)
            for view, probs in views.items():
                prob = lb.inverse(probs[i].numpy())
                for regions in ("all", "peak"):
                    pred = keep_regions(prob > threshold, prob, regions)
                    accs[f"{view}_{regions}"].add(int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt)), kind)
    return accs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("data_root")
    p.add_argument("--dataset", default="synref")
    p.add_argument("--splits", nargs="+", default=["val", "testA", "testB", "compositional"])
    p.add_argument("--amp", choices=("off", "bf16"), default="bf16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="the totals and by-type figures as JSON")
    args = p.parse_args(argv)
    model, vocab, _ = load_inference(args.checkpoint)
    model.eval()
    mirror = Mirror(vocab)
    if not mirror.swapped:
        print("error: the vocabulary has no left/right pair to swap", file=sys.stderr)
        return 2
    doc = {"checkpoint": os.path.abspath(args.checkpoint), "amp": args.amp, "batch_size": args.batch_size,
           "swapped": mirror.swapped, "splits": {}}
    print("| split | view | regions | oIoU | mIoU | Prec@0.9 | oIoU by type |\n|---|---|---|---|---|---|---|")
    for split in args.splits:
        ds = build_dataset(args.dataset, args.data_root, split, model.image_size, vocab, model.t_max, train=False,
                           normalization=normalization(model.config))
        start = time.time()
        accs = score_split(model, mirror, ds, args.amp, args.batch_size)
        doc["splits"][split] = {k: {"totals": a.summary(), "by_type": a.by_group()} for k, a in accs.items()}
        doc["splits"][split]["seconds"] = round(time.time() - start, 1)
        for key, acc in accs.items():
            view, regions = key.split("_")
            s = acc.summary()
            types = ", ".join(f"{t} {100 * v['oIoU']:.1f}" for t, v in sorted(acc.by_group().items()))
            print(f"| {args.dataset}/{split} | {view} | {regions} | {100 * s['oIoU']:.2f} | {100 * s['mIoU']:.2f} "
                  f"| {100 * s['Prec@0.9']:.2f} | {types} |", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf8") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
