"""Time to accuracy, as MLPerf measures training: wall-clock from a fresh start to the
first validation at or above each target oIoU, read from one run's log.jsonl.

    python scripts/time_to_accuracy.py runs/demo_synref_fast/log.jsonl [--prep runs/demo_synref_fast.prep.json]

A run resumed from last.pt is several processes ("legs"), each opening with a start or
resume event; the clock counts each leg from its event to its last line, so time between
legs (a machine that was off) is not counted, and steps a stopped leg did after its last
save (replayed by the next leg) are counted, as they were spent. ``--prep`` adds the
set-up minutes that ``scripts/train_shipped.sh`` records before training (data
generation, the backbone feature cache). The validation is the subset logged during
training (``data.val_max_items``); confirm the final figure with ``train.py --eval-only``
on the whole split.
"""
from __future__ import annotations

import argparse
import json

TARGETS = (60.0, 70.0, 80.0, 85.0)


def timeline(lines: list[dict]) -> list[tuple[float, dict]]:
    """(minutes since the fresh start, val record) for each validation, legs summed."""
    out, done, leg_start, last = [], 0.0, None, None
    for r in lines:
        if r.get("kind") == "event" and r.get("message") in ("start", "resume"):
            if leg_start is not None:
                done += last - leg_start
            leg_start = r["time"]
        if leg_start is None:
            continue
        last = r["time"]
        if r.get("kind") == "val":
            out.append(((done + r["time"] - leg_start) / 60.0, r))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--prep", help="JSON {step name: minutes} of the set-up before training")
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="oIoU targets in %%")
    args = ap.parse_args(argv)
    with open(args.log, encoding="utf8") as f:
        lines = [json.loads(x) for x in f if x.strip()]
    prep = {}
    if args.prep:
        with open(args.prep, encoding="utf8") as f:
            prep = json.load(f)
    extra = float(sum(prep.values()))
    vals = timeline(lines)
    print("| validation | step | training minutes | oIoU | mIoU | Prec@0.5 |\n|---|---|---|---|---|---|")
    for minutes, r in vals:
        print(f"| epoch {r['epoch']} | {r['step']} | {minutes:.1f} | {100 * r['oIoU']:.2f} | {100 * r['mIoU']:.2f} | "
              f"{100 * r['Prec@0.5']:.2f} |")
    result = {"prep_minutes": prep, "targets": {}}
    head = f" (+ {extra:.1f} min set-up: " + ", ".join(f"{k} {v:.1f}" for k, v in prep.items()) + ")" if prep else ""
    print(f"\n| target oIoU | reached at (hours from a fresh start{head}) |\n|---|---|")
    for t in args.targets:
        hit = next(((m, r) for m, r in vals if 100 * r["oIoU"] >= t), None)
        if hit is None:
            best = max((100 * r["oIoU"] for _, r in vals), default=float("nan"))
            print(f"| {t:g} | not reached (best {best:.2f}) |")
            result["targets"][str(t)] = None
        else:
            hours = (hit[0] + extra) / 60.0
            print(f"| {t:g} | {hours:.2f} h (epoch {hit[1]['epoch']}, step {hit[1]['step']}) |")
            result["targets"][str(t)] = round(hours, 3)
    return result


if __name__ == "__main__":
    main()
