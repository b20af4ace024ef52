"""Training speed and validation by epoch, from a run's log.jsonl.

    python scripts/train_speed.py runs/demo_synref/log.jsonl

A run resumed from last.pt is several processes ("legs"); steps a stopped process logged
after its last save are replayed by the next one, whose records win. Each leg starts with an empty
backbone feature cache, so speeds are reported per leg and epoch: the median of the
``images_per_s`` logged at each step, the number of logged steps, and the leg's steps and
minutes. Then the validation lines (oIoU, mIoU, Prec@0.5 in %), and where each epoch's
wall-clock went: its steps (first to last train line), the validation after it, and the gap
to the next epoch's first step (saves, the loader's start, its first batch).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.engine.runlog import read_log  # noqa: E402  (a replayed step after a resume: the last record wins)


def legs(records: list[dict]) -> list[list[dict]]:
    """Train records split at each start/resume event."""
    out: list[list[dict]] = []
    for r in records:
        if r["kind"] == "event" and r.get("message") in ("start", "resume"):
            out.append([])
        elif r["kind"] == "train" and out:
            out[-1].append(r)
    return [leg for leg in out if leg]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    records = read_log(ap.parse_args().log)
    print("| leg | steps | minutes | epoch: median images/s (logged steps) |\n|---|---|---|---|")
    for i, leg in enumerate(legs(records), 1):
        by_epoch: dict[int, list[float]] = {}
        for r in leg:
            by_epoch.setdefault(r["epoch"], []).append(r["images_per_s"])
        speeds = ", ".join(f"{e}: {statistics.median(v):.1f} ({len(v)})" for e, v in sorted(by_epoch.items()))
        minutes = (leg[-1]["time"] - leg[0]["time"]) / 60
        print(f"| {i} | {leg[0]['step']}-{leg[-1]['step']} | {minutes:.1f} | {speeds} |")
    print("\n| epoch | step | oIoU | mIoU | Prec@0.5 |\n|---|---|---|---|---|")
    for r in records:
        if r["kind"] == "val":
            print(f"| {r['epoch']} | {r['step']} | {100 * r['oIoU']:.2f} | {100 * r['mIoU']:.2f} | {100 * r['Prec@0.5']:.2f} |")
    print("\n| epoch | seconds of steps | then to its validation | then to the next epoch's first step |\n|---|---|---|---|")
    for e, steps, to_val, to_next in boundaries(records):
        print(f"| {e} | {steps:.1f} | {to_val:.1f} | {'-' if to_next is None else f'{to_next:.1f}'} |")


def boundaries(records: list[dict]) -> list[tuple[int, float, float, float | None]]:
    """Per epoch with a validation: (epoch, seconds from its first to its last train line,
    seconds from that ``epoch`` line to the ``val`` line, seconds from the ``val`` line to the
    next epoch's first train line, or None for the last)."""
    first: dict[int, float] = {}
    for r in records:
        if r["kind"] == "train":
            first.setdefault(r["epoch"], r["time"])
    ends = {r["epoch"]: r["time"] for r in records if r["kind"] == "epoch"}
    vals = {r["epoch"]: r["time"] for r in records if r["kind"] == "val"}
    return [(e, ends[e] - first[e], vals[e] - ends[e], first[e + 1] - vals[e] if e + 1 in first else None)
            for e in sorted(vals) if e in ends and e in first]


if __name__ == "__main__":
    main()
