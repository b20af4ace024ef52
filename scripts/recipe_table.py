"""The table of a recipe comparison (scripts/recipe_comparison.sh): for each run, the
validation after its last step, the median images/s it logged, and the difference in oIoU
from the first finished run. A run without a finished validation (missing, failed or still
running) is named on stderr and gets a row marked "missing"; the rows returned and written
by --json are the finished runs only.

    python scripts/recipe_table.py runs/recipes --order shipped cheap cheap_aux cheap_skip cheap_aux_skip \\
        --json assets/recipes/comparison_600.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.engine.runlog import read_log  # noqa: E402


def summarize(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        return None
    recs = read_log(path)
    vals = [r for r in recs if r["kind"] == "val"]
    if not vals:
        return None
    speeds = [r["images_per_s"] for r in recs if r["kind"] == "train" and r.get("images_per_s")]
    v = vals[-1]
    return {"run": os.path.basename(run_dir.rstrip("/")), "step": v["step"], "count": v["count"],
            "oIoU": round(100 * v["oIoU"], 2), "mIoU": round(100 * v["mIoU"], 2),
            "Prec@0.5": round(100 * v["Prec@0.5"], 2), "images_per_s": round(statistics.median(speeds), 1) if speeds else None}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--order", nargs="*", help="run names in table order (default: alphabetical)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    names = args.order or sorted(d for d in os.listdir(args.folder) if os.path.isdir(os.path.join(args.folder, d)))
    found = [(n, summarize(os.path.join(args.folder, n))) for n in names]
    rows = [r for _, r in found if r]
    missing = [n for n, r in found if r is None]
    if missing:
        print(f"recipe_table: missing runs (no validation in {args.folder}/RUN/log.jsonl): {', '.join(missing)}", file=sys.stderr)
    if not rows:
        raise SystemExit(f"no finished run under {args.folder}")
    base = rows[0]["oIoU"]
    print(f"| run | steps | oIoU | mIoU | Prec@0.5 | oIoU − {rows[0]['run']} | median images/s logged |\n|---|---|---|---|---|---|---|")
    for n, r in found:
        if r is None:
            print(f"| {n} | missing | – | – | – | – | – |")
            continue
        r["delta"] = round(r["oIoU"] - base, 2)
        print(f"| {r['run']} | {r['step']} | {r['oIoU']:.2f} | {r['mIoU']:.2f} | {r['Prec@0.5']:.2f} | {r['delta']:+.2f} | {r['images_per_s']} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
