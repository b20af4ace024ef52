"""Region selector lab: compare selector designs in minutes, not in a stage-4 run each.

Stage 4 (mmi/model/select.py) trains the selector alone on a fixed model, so what the selector
reads of an expression never changes. ``dump`` runs the model once over a split and keeps, for
every expression whose mask has two or more regions, the selector's inputs (region features,
the decoder's grid, the words) and its targets; for an evaluation split also each region's
intersection and union with the ground truth at the original resolution (the mask the
evaluation would score if the selector kept that region), and the totals of every other
expression. ``fit`` trains a selector on one dump and scores it on another: the evaluation's
overall IoU, exactly as ``python -m mmi.evaluate`` would give it with that selector (float32,
original resolution, threshold 0.5), by expression type, and how often it kept the best region:

    python scripts/selector_lab.py dump weights/mmi_demo.pt data --split train --out runs/lab/train.pt \
        [--memo data/cache/synref_gpu_stage1c_256.pt]
    python scripts/selector_lab.py dump weights/mmi_demo.pt data --split val --out runs/lab/val.pt
    python scripts/selector_lab.py fit runs/lab/train.pt runs/lab/val.pt [--context] [--epochs 8]

``fit --shipped CKPT`` scores the checkpoint's own selector instead of training one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def dump(args) -> int:
    import torch

    with torch.no_grad():
        return _dump(args)


def _dump(args) -> int:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from mmi.data import build_dataset
    from mmi.data.dataset import collate
    from mmi.data.transforms import Letterbox
    from mmi.engine.checkpoint import load_inference
    from mmi.engine.evaluate import _expression_type
    from mmi.model.select import GEOMETRY, SUPPRESS, RegionSelector, label_regions, loss_target, region_ious

    model, vocab, _ = load_inference(args.checkpoint)
    selector = model.selector if isinstance(model.selector, RegionSelector) else None
    if selector is None:
        raise SystemExit(f"{args.checkpoint} has no region selector (select_regions): its features are the selector's")
    seen: dict = {}

    class Recorder(nn.Module):  # in the selector's place: keeps its inputs, passes the logits through
        maps = 1  # have the model hand over its attention maps

        def forward(self, logits, hidden, grid, sentence, words=None, word_mask=None, maps=None):
            seen.update(logits=logits, hidden=hidden, grid=grid, sentence=sentence, words=words, word_mask=word_mask,
                        maps=maps)
            return logits

    model.selector = Recorder()
    if args.memo:  # the backbone's outputs memoised by stage 2-4 training (keyed by image content)
        from mmi.model.feature_cache import FeatureCache

        model.feature_cache = FeatureCache(int(6 * 2**30))
        print(f"memo: {model.feature_cache.load(args.memo, model.memoised_part())} images from {args.memo}")
    ds = build_dataset("synref", args.data_root, args.split, model.image_size, vocab, model.t_max, train=False)
    n_items = len(ds) if args.max_items is None else min(len(ds), args.max_items)
    scored = args.split != "train"
    records, fixed = [], {}
    loader = DataLoader(Subset(ds, range(n_items)), batch_size=args.batch_size, collate_fn=collate)
    with tqdm(total=n_items, desc=f"dump {args.split}", unit="expr", dynamic_ncols=True) as bar:
        for batch in loader:
            model({"image": batch["image"], "words": batch["words"], "word_mask": batch["word_mask"]})
            logits = seen["logits"]
            target = loss_target(batch["mask"], logits.shape[-2:])
            size = batch["image"].shape[-1]
            for b, ((n, labels), meta) in enumerate(zip(label_regions(logits), batch["meta"])):
                kind = _expression_type(ds, meta) or "all"
                gt = ds.original_mask(meta["index"]) != 0 if scored else None
                box = Letterbox.from_dict(meta["letterbox"]) if scored else None

                def iu(lg):
                    prob = torch.sigmoid(F.interpolate(lg[None, None].float(), size=(size, size), mode="bilinear",
                                                       align_corners=False))[0, 0]
                    m = box.inverse(prob.numpy()) > 0.5
                    return int(np.count_nonzero(m & gt)), int(np.count_nonzero(m | gt))

                if n < 2:
                    if scored:
                        i, u = iu(logits[b, 0])
                        t = fixed.setdefault(kind, [0, 0, 0])
                        t[0] += i; t[1] += u; t[2] += 1
                    continue
                iou = region_ious(labels, n, target[b])
                x = selector.region_features(logits[b, 0], labels, n, seen["hidden"][b], seen["grid"][b], seen["sentence"][b])
                geo = x[:, selector.geometry_at:selector.geometry_at + GEOMETRY]
                rec = {"type": kind, "x": x.clone(), "iou": iou, "grid": seen["grid"][b].half().clone(),
                       "mapped": selector.map_features(labels, n, seen["maps"][b], geo).half(),
                       "words": seen["words"][b].half().clone() if seen["words"] is not None else None,
                       "word_mask": seen["word_mask"][b].clone() if seen["word_mask"] is not None else None}
                if scored:
                    regions = []
                    for r in range(1, n + 1):
                        drop = torch.from_numpy((labels > 0) & (labels != r))
                        regions.append(iu(torch.where(drop, logits[b, 0].clamp(max=SUPPRESS), logits[b, 0])))
                    rec["iu"] = torch.tensor(regions, dtype=torch.float64)
                    rec["iu_all"] = torch.tensor(iu(logits[b, 0]), dtype=torch.float64)  # every region kept
                records.append(rec)
            bar.update(len(batch["meta"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"checkpoint": args.checkpoint, "split": args.split, "count": n_items, "records": records,
                "fixed": fixed}, out)
    print(f"{args.split}: {n_items} expressions, {len(records)} with two or more regions -> {out}")
    return 0


def _batch(records, idx):
    """Pad a list of records to (B, n_max, D) with a padding mask (B, n_max) True where padded."""
    import torch

    recs = [records[i] for i in idx]
    n_max = max(r["x"].shape[0] for r in recs)
    B, D = len(recs), recs[0]["x"].shape[1]
    x = torch.zeros(B, n_max, D)
    pad = torch.ones(B, n_max, dtype=torch.bool)
    for k, r in enumerate(recs):
        x[k, :r["x"].shape[0]] = r["x"]
        pad[k, :r["x"].shape[0]] = False
    grid = torch.stack([r["grid"] for r in recs]).float()
    mapped = None
    if "mapped" in recs[0]:
        mapped = torch.zeros(B, n_max, *recs[0]["mapped"].shape[1:])
        for k, r in enumerate(recs):
            mapped[k, :r["mapped"].shape[0]] = r["mapped"].float()
    words = torch.stack([r["words"] for r in recs]).float() if recs[0]["words"] is not None else None
    wmask = torch.stack([r["word_mask"] for r in recs]).bool() if recs[0]["word_mask"] is not None else None
    return x, pad, grid, words, wmask, mapped


def score_records(selector, records, unsure: float = 0.0) -> list[int]:
    """The region each record's selector keeps (0-based), or -1 (every region kept) where the
    selector's softmax gives its choice less than ``unsure``."""
    import torch

    picks = []
    selector.eval()
    with torch.no_grad():
        for s in range(0, len(records), 256):
            idx = list(range(s, min(s + 256, len(records))))
            x, pad, grid, words, wmask, mapped = _batch(records, idx)
            sc = selector.scores(x, pad, grid, words, wmask, mapped).masked_fill(pad, float("-inf"))
            prob, pick = sc.softmax(1).max(1)
            picks += torch.where(prob < unsure, -1, pick).tolist()
    return picks


def totals(data, picks) -> dict:
    """The evaluation's overall IoU with the given picks, overall and by type, and the oracle's."""
    by: dict = {}
    for kind, (i, u, c) in data["fixed"].items():
        t = by.setdefault(kind, [0.0, 0.0, 0.0, 0.0, 0, 0])  # I, U (picks), I, U (oracle), best picked, several
        t[0] += i; t[1] += u; t[2] += i; t[3] += u
    for rec, p in zip(data["records"], picks):
        t = by.setdefault(rec["type"], [0.0, 0.0, 0.0, 0.0, 0, 0])
        iu = rec["iu"]
        got = rec["iu_all"] if p < 0 else iu[p]
        t[0] += float(got[0]); t[1] += float(got[1])
        o = int((iu[:, 0] / iu[:, 1]).argmax())
        t[2] += float(iu[o, 0]); t[3] += float(iu[o, 1])
        t[4] += int(p == o); t[5] += 1
    allv = [sum(t[k] for t in by.values()) for k in range(6)]
    res = {k: {"oIoU": 100 * t[0] / t[1], "oracle": 100 * t[2] / t[3], "kept_best": t[4] / max(t[5], 1), "several": t[5]}
           for k, t in sorted(by.items())}
    res["all"] = {"oIoU": 100 * allv[0] / allv[1], "oracle": 100 * allv[2] / allv[3],
                  "kept_best": allv[4] / max(allv[5], 1), "several": allv[5]}
    return res


def fit(args) -> int:
    import random

    import torch
    import torch.nn.functional as F

    from mmi.model.select import MAP_FEATURES, RegionSelector

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    val = torch.load(args.val, weights_only=False)
    if args.shipped:
        from mmi.engine.checkpoint import load_inference

        selector = load_inference(args.shipped)[0].selector
        name = f"shipped selector of {args.shipped}"
    else:
        train = torch.load(args.train, weights_only=False)
        recs = [r for r in train["records"] if float(r["iou"].max()) > 0][:args.max_records]
        dim = recs[0]["grid"].shape[0]
        hidden = recs[0]["x"].shape[1] - 2 * dim - 11
        maps = recs[0]["mapped"].shape[-1] // MAP_FEATURES if args.maps else 0
        selector = RegionSelector(dim, hidden, width=args.width, context=args.context, words=args.words, maps=maps)
        opt = torch.optim.AdamW(selector.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        steps = args.epochs * ((len(recs) + args.batch_size - 1) // args.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.05)
        start = time.time()
        for epoch in range(args.epochs):
            selector.train()
            order = list(range(len(recs)))
            random.shuffle(order)
            total = 0.0
            for s in range(0, len(order), args.batch_size):
                idx = order[s:s + args.batch_size]
                x, pad, grid, words, wmask, mapped = _batch(recs, idx)
                target = torch.tensor([int(recs[i]["iou"].argmax()) for i in idx])
                sc = selector.scores(x, pad, grid, words, wmask, mapped).masked_fill(pad, float("-inf"))
                loss = F.cross_entropy(sc, target)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(selector.parameters(), 5.0)
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            print(f"epoch {epoch + 1}: loss {total / len(recs):.4f} ({time.time() - start:.0f} s)", flush=True)
        name = (f"context={args.context} words={args.words} maps={args.maps} width={args.width} epochs={args.epochs} lr={args.lr} wd={args.weight_decay} "
                f"seed={args.seed} records={len(recs)}")
    res = totals(val, score_records(selector, val["records"]))
    print(name)
    soft = {}
    for unsure in args.unsure:
        soft[str(unsure)] = totals(val, score_records(selector, val["records"], unsure))["all"]["oIoU"]
        print(f"  every region kept below p={unsure}: oIoU {soft[str(unsure)]:.2f}")
    for k, v in res.items():
        print(f"  {k:12s} oIoU {v['oIoU']:.2f}  oracle {v['oracle']:.2f}  kept best {100 * v['kept_best']:.1f}% of {v['several']}")
    also = {}
    for path in args.also:  # other splits' dumps (held out: the design was picked on val)
        other = torch.load(path, weights_only=False)
        also[other["split"]] = totals(other, score_records(selector, other["records"]))
        print(f"  {other['split']:12s} oIoU {also[other['split']]['all']['oIoU']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"selector": name, "val": str(args.val), "result": res,
                                               "every_region_kept_below": soft, "also": also}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="the selector's inputs and targets on one split")
    d.add_argument("checkpoint")
    d.add_argument("data_root")
    d.add_argument("--split", default="val")
    d.add_argument("--max-items", type=int)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--out", required=True)
    d.add_argument("--memo", help="a backbone memo (train.feature_cache_file): the same features, faster")
    f = sub.add_parser("fit", help="train a selector on one dump, score it on another")
    f.add_argument("train", nargs="?")
    f.add_argument("val")
    f.add_argument("--shipped", help="score this checkpoint's selector instead of training one")
    f.add_argument("--context", action="store_true", help="attend over the decoder's grid (select_context)")
    f.add_argument("--words", action="store_true", help="attend over the words (select_words)")
    f.add_argument("--maps", action="store_true", help="read the decoder's attention maps per word (select_maps)")
    f.add_argument("--width", type=int, default=64)
    f.add_argument("--max-records", type=int, help="train on the first N expressions with several regions")
    f.add_argument("--epochs", type=int, default=8)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's (0: Adam's steps, as stage 4)")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--unsure", type=float, nargs="*", default=[],
                   help="also score keeping every region where the choice's softmax is below each of these")
    f.add_argument("--also", nargs="*", default=[], help="dumps of other splits to score the same selector on")
    f.add_argument("--out")
    args = p.parse_args(argv)
    if args.cmd == "fit" and not args.shipped and not args.train:
        p.error("fit needs a training dump (or --shipped CKPT)")
    return dump(args) if args.cmd == "dump" else fit(args)


if __name__ == "__main__":
    raise SystemExit(main())
