"""The demo's one-click examples: a few synthetic scenes and their expressions.

``python -m mmi.data.synthetic.examples --out assets/examples`` writes ``example_K.png``
and ``examples.json``::

    [{"file_name": "example_1.png", "expressions": ["...", ...], "types": ["relation", ...]}, ...]

Scenes come from :func:`~.exporter.generate_image` with a fixed seed, so the files are
reproducible. Scenes with a per-pixel noise background are skipped (their PNGs are large).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

from .exporter import SynthConfig, encode_image, generate_image

DEFAULT_SEED = 2024


def pick_expressions(refs: list, per_image: int) -> list[tuple[str, str]]:
    """(text, type) pairs: round-robin over the referred objects, distinct types first."""
    chosen: list[tuple[str, str]] = []
    seen_types: set[str] = set()
    queues = [list(exprs) for _, exprs in refs]
    for prefer_new in (True, False):
        for depth in range(3):
            for q in queues:
                if len(chosen) >= per_image or depth >= len(q):
                    continue
                e = q[depth]
                if (e.text, e.type) in chosen or (prefer_new and e.type in seen_types):
                    continue
                chosen.append((e.text, e.type))
                seen_types.add(e.type)
    return chosen[:per_image]


def write_examples(out: str, count: int = 6, seed: int = DEFAULT_SEED, per_image: int = 4) -> list[dict[str, Any]]:
    """Write ``count`` example scenes with up to ``per_image`` expressions each."""
    os.makedirs(out, exist_ok=True)
    config = SynthConfig(name="example", image_format="png")
    entries: list[dict[str, Any]] = []
    index = 0
    while len(entries) < count:
        if index > 1000:
            raise RuntimeError("could not find enough example scenes in 1000 images")
        g = generate_image(seed, index, config)
        index += 1
        if g.scene.background["kind"] == "noise" or g.scene.split == "compositional":
            continue
        picked = pick_expressions(g.refs, per_image)
        if len(picked) < 3:
            continue
        name = f"example_{len(entries) + 1}.png"
        with open(os.path.join(out, name), "wb") as f:
            f.write(encode_image(g.image, config))
        entries.append({"file_name": name, "expressions": [t for t, _ in picked], "types": [k for _, k in picked]})
    with open(os.path.join(out, "examples.json"), "w", encoding="utf8") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    return entries


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmi.data.synthetic.examples", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="assets/examples")
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, got {args.count}")
    for e in write_examples(args.out, args.count, args.seed):
        print(e["file_name"], "|", " | ".join(e["expressions"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
