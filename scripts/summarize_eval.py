"""Markdown tables from results JSONs of ``train.py --eval-only``: one row per file
(oIoU, mIoU, Prec@X, in percent), then per expression type for those that have types, then
(where the file keeps per-expression records) how the expressions spread over IoU bands:
below 0.1 (another object, or nothing), 0.1-0.5 (partly), 0.5-0.9, at least 0.9.

    python scripts/summarize_eval.py runs/demo_synref/eval/synref_*.json
"""
from __future__ import annotations

import json
import sys

KEYS = ("oIoU", "mIoU", "Prec@0.5", "Prec@0.6", "Prec@0.7", "Prec@0.8", "Prec@0.9")


def row(name: str, totals: dict) -> str:
    return f"| {name} | {totals['count']} | " + " | ".join(f"{100 * totals[k]:.2f}" for k in KEYS) + " |"


def label(r: dict) -> str:
    """dataset/split, with the language probe, a kept single region (``--regions peak``) and the
    mirrored view (``--flip``) said."""
    probe = r.get("language", "normal")
    return (f"{r['dataset']}/{r['split']}" + ("" if probe == "normal" else f" ({probe} expression)")
            + (", one region kept" if r.get("regions", "all") != "all" else "")
            + (", mirrored view averaged" if r.get("flip") else ""))


def main(paths: list[str]) -> None:
    results = [json.load(open(p)) for p in paths]
    head = "| | expressions | " + " | ".join(KEYS) + " |\n|---|---|" + "---|" * len(KEYS)
    print(f"threshold {results[0]['threshold']}, original resolution\n")
    print(head)
    for r in results:
        print(row(label(r), r["totals"]))
    for r in results:
        if r.get("by_type") and r.get("language", "normal") == "normal":
            print(f"\nBy expression type, {label(r)}:\n\n{head}")
            for t, totals in sorted(r["by_type"].items()):
                print(row(t, totals))
    for r in results:
        if r.get("records") and r.get("language", "normal") == "normal":
            print(f"\nIoU bands, {label(r)} (share of expressions):\n")
            print("| | expressions | " + " | ".join(BANDS) + " |\n|---|---|" + "---|" * len(BANDS))
            for name, share in iou_bands(r["records"]).items():
                print(f"| {name} | {share['count']} | " + " | ".join(f"{100 * share[b]:.1f}%" for b in BANDS) + " |")


BANDS = ("IoU < 0.1", "0.1-0.5", "0.5-0.9", "IoU >= 0.9")


def iou_bands(records: list[dict]) -> dict[str, dict]:
    """{"all" and each expression type: {"count": n, band: share of its expressions}}, bands of :data:`BANDS`."""
    groups: dict[str, list[float]] = {"all": []}
    for rec in records:
        groups["all"].append(rec["iou"])
        if rec.get("type"):
            groups.setdefault(rec["type"], []).append(rec["iou"])
    out = {}
    for name in ["all"] + sorted(k for k in groups if k != "all"):
        v = groups[name]
        counts = (sum(x < 0.1 for x in v), sum(0.1 <= x < 0.5 for x in v), sum(0.5 <= x < 0.9 for x in v),
                  sum(x >= 0.9 for x in v))
        out[name] = {"count": len(v), **{b: c / len(v) for b, c in zip(BANDS, counts)}}
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
