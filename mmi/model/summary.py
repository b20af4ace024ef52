"""Parameter counts of the presets: ``python -m mmi.model.summary`` prints the README table."""
from __future__ import annotations

import argparse

from .presets import PRESETS, build_model, resolve_config


def parameter_counts(vocab_size: int = 1000) -> dict[str, int]:
    """Trainable parameters of each preset (LFR included) for a vocabulary of ``vocab_size`` words."""
    return {name: sum(p.numel() for p in build_model(name, vocab_size, backbone_weights=None).parameters())
            for name in PRESETS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab-size", type=int, default=1000)
    args = ap.parse_args()
    print("| preset | backbone, S, C | parameters |\n|---|---|---|")
    for name, n in parameter_counts(args.vocab_size).items():
        cfg = resolve_config(name, args.vocab_size)
        print(f"| `{name}` | {cfg['backbone']}, {cfg['image_size']}, {cfg['dim']} | {n:,} |")


if __name__ == "__main__":
    main()
