"""The refiner's per-expression box against its full map on a whole split: how many masks differ.

Out of training the refiner corrects each expression only in the box around its coarse mask
(MaskRefiner.crop, mmi/model/refine.py); in training it saw the full map. This evaluates one
checkpoint both ways on every expression of a split (original resolution, threshold 0.5,
float32) and compares the per-expression intersections and unions:

    python scripts/check_refine_box.py weights/mmi_demo.pt data [--split val] [--out box_check.json]

Exit code 0 when every mask is the same, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data_root")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="a JSON of the two totals and the differing records")
    args = p.parse_args(argv)

    import torch

    from mmi.data import build_dataset
    from mmi.engine.checkpoint import load_inference
    from mmi.engine.evaluate import evaluate

    model, vocab, _ = load_inference(args.checkpoint)
    if model.refiner is None:
        raise SystemExit(f"{args.checkpoint} has no refiner: nothing to compare")
    ds = build_dataset("synref", args.data_root, args.split, model.image_size, vocab, model.t_max, train=False)
    runs = {}
    for crop in (True, False):
        model.refiner.crop = crop
        runs[crop] = evaluate(model, ds, torch.device("cpu"), threshold=0.5, batch_size=args.batch_size,
                              progress=True)
    box, full = runs[True], runs[False]
    differ = [(a["index"], a["expression"], a["intersection"], a["union"], b["intersection"], b["union"])
              for a, b in zip(box["records"], full["records"])
              if (a["intersection"], a["union"]) != (b["intersection"], b["union"])]
    result = {"checkpoint": args.checkpoint, "split": args.split, "count": len(box["records"]),
              "differ": len(differ), "box_totals": box["totals"], "full_totals": full["totals"],
              "differing_records": [dict(zip(("index", "expression", "box_i", "box_u", "full_i", "full_u"), d))
                                    for d in differ]}
    print(f"{args.split}: {len(differ)} of {result['count']} masks differ between the box and the full map; "
          f"oIoU {100 * box['totals']['oIoU']:.2f} (box) against {100 * full['totals']['oIoU']:.2f} (full map)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
