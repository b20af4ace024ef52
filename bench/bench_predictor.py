"""Predictor speed on the CPU: one image with 1 expression, with 8 expressions, and the
same image again (image features from the cache).

    python bench/bench_predictor.py --checkpoint weights/mmi_demo.pt [--threads 2] [--repeats 5]
                                    [--size 640x480] [--regions all|peak] [--amp off|bf16|auto]
                                    [--out runs/bench_predictor.json]

Each case is timed ``--repeats`` times (after one warm-up run), the cases interleaved round
by round and the images made before the clock starts (before 2026-11-27 each case ran as a
block and each "first" time included making its image, ~10 ms: earlier figures in
BENCHMARKS.md carry that); the median and the minimum are reported and the ratios use the
medians.
"first" cases use a fresh image each time (cache miss: backbone + vision encoder + decoder);
"repeat" cases use an image already in the cache (decoder only). Both include everything
``Predictor.predict`` does: input conversion, hashing, letterbox, attention maps and the
mask at the original size.

Goals: 8 expressions cost at most 2x one expression; a repeat on the same image at most
half the first.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.engine.precision import cpu_has_bf16  # noqa: E402
from mmi.predictor import Predictor  # noqa: E402

DEFAULT_EXPRESSIONS = [
    "the large red cube on the left", "a small blue ball", "the second green thing from the top",
    "the rightmost star", "the yellow heart below the circle", "the striped square in the middle",
    "the biggest object", "the purple triangle right of the ball",
]


def image(seed: int, h: int, w: int) -> np.ndarray:
    """A synthetic (H, W, 3) uint8 scene: noise background and a few filled rectangles."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    for _ in range(6):
        y, x = int(rng.integers(0, h - h // 5)), int(rng.integers(0, w - w // 5))
        img[y : y + h // 5, x : x + w // 5] = rng.integers(0, 255, 3, dtype=np.uint8)
    return img


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(predictor: Predictor, exprs: list[str], repeats: int, h: int, w: int) -> dict[str, float]:
    """The four cases, interleaved (each round times every case once, so a slower spell of the
    machine falls on all of them alike, not on one case's block); the images are made before any
    timing (making one takes ~10 ms, as long as a quarter of a request)."""
    ns = (1, len(exprs))
    fresh = iter([image(1000 + i, h, w) for i in range(1 + repeats * len(ns))])
    seen = {n: image(500 + n, h, w) for n in ns}
    predictor.predict(next(fresh), exprs)  # warm-up (allocations, kernels)
    for n in ns:
        predictor.predict(seen[n], exprs[:n])  # in the cache from now on
    cases: dict[str, list[float]] = {f"{kind}, {n} expr": [] for n in ns for kind in ("first", "repeat")}
    for _ in range(repeats):
        for n in ns:
            img = next(fresh)
            cases[f"first, {n} expr"].append(timed(lambda: predictor.predict(img, exprs[:n])))
            cases[f"repeat, {n} expr"].append(timed(lambda: predictor.predict(seen[n], exprs[:n])))
    return {k: statistics.median(v) for k, v in cases.items()}, {k: min(v) for k, v in cases.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", default="640x480", help="image WxH")
    p.add_argument("--expressions", type=int, default=8, help="expressions in the batched case (<= 32)")
    p.add_argument("--amp", choices=("off", "bf16", "auto"), default="off",
                   help="the predictor's precision: off (float32, as every earlier figure in BENCHMARKS.md), bf16, "
                        "or auto (app.py's default: bf16 where the CPU computes it natively, float32 elsewhere)")
    p.add_argument("--regions", choices=("all", "peak"), default="all",
                   help="the predictor's region mode (the app's default is peak)")
    p.add_argument("--refine-full-map", action="store_true",
                   help="a checkpoint with a boundary refiner: refine each expression on the whole stride-2 map, "
                        "as in training, instead of in the box around its coarse mask (MaskRefiner.crop)")
    p.add_argument("--out", default="runs/bench_predictor.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    exprs = (DEFAULT_EXPRESSIONS * 4)[: args.expressions]
    predictor = Predictor.from_checkpoint(args.checkpoint, "cpu", regions=args.regions, amp=args.amp)
    refiner = getattr(predictor.model, "refiner", None)
    if args.refine_full_map:
        if refiner is None:
            p.error(f"--refine-full-map: {args.checkpoint} has no boundary refiner")
        refiner.crop = False
    t, best = run(predictor, exprs, args.repeats, h, w)
    n = len(exprs)
    one, many = t["first, 1 expr"], t[f"first, {n} expr"]
    ratios = {f"{n} expr / 1 expr (first)": many / one, "repeat / first (1 expr)": t["repeat, 1 expr"] / one}
    goals = {f"{n} expr / 1 expr (first)": 2.0, "repeat / first (1 expr)": 0.5}
    print(f"checkpoint {args.checkpoint}  model input {predictor.image_size}px  image {w}x{h}  "
          f"threads {args.threads}  regions {args.regions}  amp {predictor.amp}  median of {args.repeats}")
    print(f"{'case':<22}{'median ms':>10}{'min ms':>10}")
    for k, v in t.items():
        print(f"{k:<22}{1000 * v:>10.1f}{1000 * best[k]:>10.1f}")
    print(f"{'ratio':<30}{'value':>8}{'goal':>8}  met")
    for k, v in ratios.items():
        print(f"{k:<30}{v:>8.2f}{'<= ' + str(goals[k]):>8}  {'yes' if v <= goals[k] else 'NO'}")
    doc = {"checkpoint": os.path.abspath(args.checkpoint), "image_size": predictor.image_size, "image": [h, w],
           "threads": args.threads, "regions": args.regions, "amp": predictor.amp, "cpu_bf16": cpu_has_bf16(),
           "refiner": None if refiner is None else ("box" if refiner.crop else "full map"),
           "repeats": args.repeats, "expressions": exprs, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "seconds": t, "seconds_min": best, "ratios": ratios, "goals": goals,
           "met": {k: ratios[k] <= goals[k] for k in ratios}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf8") as f:
        json.dump(doc, f, indent=1)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
