"""Markdown tables from results JSONs of ``train.py --eval-only``: one row per file
(oIoU, mIoU, Prec@X, in percent), then per expression type for those that have types.

    python scripts/summarize_eval.py runs/demo_synref/eval/synref_*.json
"""
from __future__ import annotations

import json
import sys

KEYS = ("oIoU", "mIoU", "Prec@0.5", "Prec@0.6", "Prec@0.7", "Prec@0.8", "Prec@0.9")


def row(name: str, totals: dict) -> str:
    return f"| {name} | {totals['count']} | " + " | ".join(f"{100 * totals[k]:.2f}" for k in KEYS) + " |"


def main(paths: list[str]) -> None:
    results = [json.load(open(p)) for p in paths]
    head = "| | expressions | " + " | ".join(KEYS) + " |\n|---|---|" + "---|" * len(KEYS)
    print(f"threshold {results[0]['threshold']}, original resolution\n")
    print(head)
    for r in results:
        probe = r.get("language", "normal")
        print(row(f"{r['dataset']}/{r['split']}" + ("" if probe == "normal" else f" ({probe} expression)"), r["totals"]))
    for r in results:
        if r.get("by_type") and r.get("language", "normal") == "normal":
            print(f"\nBy expression type, {r['dataset']}/{r['split']}:\n\n{head}")
            for t, totals in sorted(r["by_type"].items()):
                print(row(t, totals))


if __name__ == "__main__":
    main(sys.argv[1:])
