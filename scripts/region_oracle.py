"""How much choosing one region per expression could give: every region, the peak's, and the best.

An expression names one object; a thresholded mask can hold several 8-connected regions. For one
checkpoint on one split (original resolution, threshold 0.5, float32) this scores three masks per
expression from the same probabilities: every region (the evaluation's), the region holding the
highest probability (``--regions peak``), and the region that overlaps the ground truth best (an
oracle: the ceiling of any rule or learned choice of one region, mmi/model/select.py), with the
share of expressions that have two or more regions:

    python scripts/region_oracle.py weights/mmi_demo.pt data [--split val] [--max-items N] [--out oracle.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def choices(prob, gt) -> tuple[dict, int]:
    """prob (H, W) float, gt (H, W) bool -> ({"all", "peak", "oracle"}: (intersection, union)), regions."""
    import numpy as np

    from mmi.regions import label, peak_label

    def iu(m):
        return int(np.count_nonzero(m & gt)), int(np.count_nonzero(m | gt))

    pred = prob > 0.5
    n, labels = label(pred)  # one labelling for the peak rule and the oracle
    out = {"all": iu(pred), "peak": iu(pred), "oracle": iu(pred)}
    if n >= 2:
        regions = [iu(labels == r) for r in range(1, n + 1)]
        out["peak"] = regions[peak_label(labels, pred, prob) - 1]
        out["oracle"] = max(regions, key=lambda r: r[0] / r[1])
    return out, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data_root")
    p.add_argument("--split", default="val")
    p.add_argument("--max-items", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="a JSON of the three totals, overall and by type")
    args = p.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from mmi.data import build_dataset
    from mmi.data.dataset import collate
    from mmi.data.transforms import Letterbox
    from mmi.engine.checkpoint import load_inference
    from mmi.engine.evaluate import _expression_type, probabilities
    from mmi.metrics import IoUAccumulator

    model, vocab, _ = load_inference(args.checkpoint)
    ds = build_dataset("synref", args.data_root, args.split, model.image_size, vocab, model.t_max, train=False)
    n = len(ds) if args.max_items is None else min(len(ds), args.max_items)
    loader = DataLoader(Subset(ds, range(n)), batch_size=args.batch_size, collate_fn=collate)
    accs = {k: IoUAccumulator() for k in ("all", "peak", "oracle")}
    several = 0
    with tqdm(total=n, desc=args.split, unit="expr", dynamic_ncols=True) as bar:
        for batch in loader:
            for prob, meta in zip(probabilities(model, batch, torch.device("cpu")), batch["meta"]):
                prob = Letterbox.from_dict(meta["letterbox"]).inverse(prob.numpy())
                got, regions = choices(prob, ds.original_mask(meta["index"]) != 0)
                several += regions >= 2
                for k, (i, u) in got.items():
                    accs[k].add(i, u, _expression_type(ds, meta))
            bar.update(len(batch["meta"]))
    result = {"checkpoint": args.checkpoint, "split": args.split, "count": n,
              "two_or_more_regions": several / n if n else 0.0,
              **{k: {"totals": a.summary(), "by_type": a.by_group()} for k, a in accs.items()}}
    print(f"{args.split}, {n} expressions, {100 * result['two_or_more_regions']:.1f}% with two or more regions; "
          "oIoU every region / the peak's / the best (oracle):")
    rows = [("all", {k: result[k]["totals"]["oIoU"] for k in accs})]
    rows += [(t, {k: result[k]["by_type"][t]["oIoU"] for k in accs}) for t in sorted(result["all"]["by_type"])]
    for name, values in rows:
        print(f"  {name:<9} " + " / ".join(f"{100 * v:.2f}" for v in values.values()))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
