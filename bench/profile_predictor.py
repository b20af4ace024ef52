"""Where a request's extra expressions spend their time: the predictor on a repeat image (features
cached) with 1 and with N expressions, profiled both ways, and the difference per entry:

    python bench/profile_predictor.py --checkpoint weights/mmi_demo.pt [--threads 1] [--amp bf16]
                                      [--regions peak] [--expressions 8] [--repeats 20] [--top 15]

Two tables, ms per request, N minus 1: torch's operators (self CPU time: the network's linear
layers, convolutions, casts) and Python functions (cumulative time: the decoder, the refiner, the
region selector, the predictor's per-expression results). Times vary with the machine's load;
read the shares, not the milliseconds.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_predictor import DEFAULT_EXPRESSIONS, image  # noqa: E402
from mmi.predictor import Predictor  # noqa: E402


def profile(predictor: Predictor, img, exprs: list[str], repeats: int) -> tuple[dict, dict]:
    """(torch operator -> self CPU ms, Python function -> cumulative ms), per request."""
    predictor.predict(img, exprs)  # the image cached, the kernels warm
    with torch.profiler.profile() as prof:
        for _ in range(repeats):
            predictor.predict(img, exprs)
    ops = {e.key: e.self_cpu_time_total / repeats / 1e3 for e in prof.key_averages()}
    py = cProfile.Profile()
    py.enable()
    for _ in range(repeats):
        predictor.predict(img, exprs)
    py.disable()
    funcs = {f"{os.path.basename(k[0])}:{k[1]}({k[2]})": v[3] / repeats * 1e3 for k, v in pstats.Stats(py).stats.items()}
    return ops, funcs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--amp", choices=("off", "bf16", "auto"), default="bf16")
    p.add_argument("--regions", choices=("all", "peak"), default="peak")
    p.add_argument("--expressions", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, "cpu", regions=args.regions, amp=args.amp)
    img = image(1, 480, 640)
    exprs = (DEFAULT_EXPRESSIONS * 4)[: args.expressions]
    one, many = profile(predictor, img, exprs[:1], args.repeats), profile(predictor, img, exprs, args.repeats)
    for title, a, b in (("torch operators, self CPU", one[0], many[0]), ("Python functions, cumulative", one[1], many[1])):
        print(f"\n{title}: ms per request, {len(exprs)} expressions minus 1")
        rows = sorted(((b[k] - a.get(k, 0.0), k) for k in b), reverse=True)[: args.top]
        for diff, key in rows:
            print(f"{diff:8.2f} {a.get(key, 0.0):8.2f} {b[key]:8.2f}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
