"""``python -m mmi.data.synthetic --out DIR --images N --seed S [--name synref] [--long]
[--size WxH] [--workers K] [--format jpg|png]``: write a synthetic referring data set
in the refer layout (see :mod:`mmi.data.synthetic.exporter`)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Optional, Sequence

from .exporter import SynthConfig, write_dataset


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--size must look like 320x240, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmi.data.synthetic",
                                description="Write a synthetic referring data set in the refer layout.")
    p.add_argument("--out", required=True, help="data root: writes OUT/<name>/ and OUT/images/<name>/")
    p.add_argument("--images", type=int, default=20000, help="number of images (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="data set name (default synref, or synref_long with --long)")
    p.add_argument("--long", action="store_true", help="longer compositional expressions (up to 20 words)")
    p.add_argument("--size", type=_size, default=(320, 240), help="base image size WxH (aspect varies +-12%%)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image files (default jpg, quality 90)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be at least 1, got {args.images}")
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.name is not None and not re.fullmatch(r"synref[\w\-]*", args.name):
        p.error(f"--name must start with 'synref' (the data loader knows synthetic sets by that prefix), got '{args.name}'")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    name = args.name or ("synref_long" if args.long else "synref")
    try:
        config = SynthConfig(name=name, long=args.long, width=args.size[0], height=args.size[1],
                             image_format=args.format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = write_dataset(args.out, args.images, args.seed, config, workers=args.workers, progress=not args.quiet)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
