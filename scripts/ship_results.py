"""Trim the per-expression results of ``train.py --eval-only`` into the small file the app's
failure-case tab opens by default (it needs no data folder):

    python scripts/ship_results.py RESULTS.json --data-root DATA [--max-records 500] \
        [--out assets/results/synref_val_shipped.json]

Keeps the header (dataset, split, threshold, checkpoint meta, totals and per-type metrics
of the whole evaluation) and the first ``--max-records`` records by dataset index, each
with its predicted mask (RLE) and its ground truth mask (``gt_rle``, read from the
dataset). For the synthetic world it records the generator's seed and config
(``synthetic``), from which the app regenerates the images exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

KEEP = ("checkpoint_meta", "dataset", "split", "split_by", "threshold", "image_size", "t_max", "language", "count",
        "totals", "by_type")
RECORD_KEYS = ("index", "ref_id", "sent_id", "ann_id", "image_id", "file_name", "expression", "type", "iou",
               "height", "width", "rle")


def trim(results: dict, data_root: str, max_records: int) -> dict:
    from mmi.data.refer import Refer
    from mmi.engine.evaluate import rle_encode

    records = sorted(results["records"], key=lambda r: r.get("index", 0))[:max_records]
    refer = Refer(data_root, results["dataset"], results.get("split_by"))
    out = [dict({k: r[k] for k in RECORD_KEYS if k in r}, iou=round(float(r["iou"]), 5),
                gt_rle=rle_encode(refer.ref_mask(r["ref_id"]).astype(bool))) for r in records]
    header = {k: results[k] for k in KEEP if k in results}
    header["checkpoint"] = os.path.basename(str(results.get("checkpoint", "")))
    header["evaluated"] = int(results.get("count", len(results["records"])))
    inst = os.path.join(data_root, results["dataset"], "instances.json")
    if results["dataset"].startswith("synref") and os.path.isfile(inst):
        with open(inst, encoding="utf8") as f:
            info = json.load(f).get("info", {})
        header["synthetic"] = {"seed": info.get("seed"), "config": info.get("config", {})}
    header["note"] = (f"the first {len(out)} of {header['evaluated']} evaluated expressions (by dataset index); "
                      "totals and by_type are over all evaluated ones. Written by scripts/ship_results.py.")
    return dict(header, records=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="the JSON of train.py --eval-only")
    p.add_argument("--data-root", default="data")
    p.add_argument("--max-records", type=int, default=500)
    p.add_argument("--out", default=os.path.join(HERE, "assets", "results", "synref_val_shipped.json"))
    args = p.parse_args(argv)
    with open(args.results, encoding="utf8") as f:
        results = json.load(f)
    doc = trim(results, args.data_root, args.max_records)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf8") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(doc['records'])} records, {os.path.getsize(args.out) / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
