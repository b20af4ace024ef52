"""Keeping one region of a full-size mask: labelled in the box around the mask
(``regions.split_regions``, since 2026-11-28) against labelled over the whole image (before):

    python bench/bench_regions.py [--size 640x480] [--masks 8] [--repeats 20] [--rounds 15]

Each mask holds one object-sized region, every second one a smaller look-alike as well (two
regions: the peak's is kept), placed at random; the two ways are timed in alternating rounds
on the same masks and must give the same masks and counts. Prints ms per ``--masks`` masks
(one request of the predictor at that image size), the medians of the rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.regions import label, peak_label, split_regions  # noqa: E402

WHOLE, BOX = "whole image", "mask's box"


def whole_image(mask: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, int]:
    """The labelling before: every pixel of the image (the same result as split_regions)."""
    n, labels = label(mask)
    if n <= 1:
        return mask, n
    return labels == peak_label(labels, mask, prob), n


def masks(count: int, h: int, w: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        prob = np.zeros((h, w), np.float32)
        y, x = int(rng.integers(0, h - h // 4)), int(rng.integers(0, w - w // 4))
        prob[y : y + h // 8, x : x + w // 8] = 0.9
        if i % 2:  # a look-alike, weaker, a little way off
            y2, x2 = min(y + h // 6, h - h // 16), x
            prob[y2 : y2 + h // 16, x2 : x2 + w // 16] = 0.7
        out.append((prob > 0.5, prob))
    return out


def run(items, repeats: int, rounds: int) -> dict[str, float]:
    """Median ms per pass over ``items`` for each way, alternating rounds."""
    ways = {WHOLE: whole_image, BOX: lambda m, p: split_regions(m, p, "peak")}
    for (m, p) in items:  # the same answer both ways
        a, b = whole_image(m, p), split_regions(m, p, "peak")
        if a[1] != b[1] or not np.array_equal(a[0], b[0]):
            raise AssertionError("the two ways disagree")
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            for _ in range(repeats):
                for m, p in items:
                    fn(m, p)
            times[name].append((time.perf_counter() - start) / repeats * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x480", help="image WxH")
    p.add_argument("--masks", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    t = run(masks(args.masks, h, w), args.repeats, args.rounds)
    print(f"{args.masks} masks of {w}x{h}, one region kept (peak); median of {args.rounds} rounds")
    for k, v in t.items():
        print(f"{k:<14}{v:8.3f} ms")
    print(f"{'box / whole':<14}{t[BOX] / t[WHOLE]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
