"""Train stage 3 with one of the refiner's two context inputs held at zero: a paired ablation of
``refine_context`` (mmi/model/refine.py), to tell which input carries its gain.

    OMP_NUM_THREADS=1 python scripts/ablate_refine_context.py --zero peak -- \
        --config configs/demo_synref_refine.json --set train.epochs=1 output=runs/refine_ctx/no_peak

``--zero rel`` or ``--zero peak`` replaces that channel with zeros in training and evaluation
alike; everything after ``--`` is train.py's command line. Not for shipping: a checkpoint it
writes has the two inputs in its config and would read the channel again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHANNELS = {"rel": 0, "peak": 1}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: ablate_refine_context.py --zero rel|peak -- TRAIN.PY ARGUMENTS")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zero", choices=sorted(CHANNELS), required=True, help="the context input held at zero")
    args = p.parse_args(argv[:cut])

    import train
    from mmi.model.refine import MaskRefiner

    whole = MaskRefiner._context
    channel = CHANNELS[args.zero]

    def context(logits, up):
        ctx = whole(logits, up)
        ctx[:, channel] = 0
        return ctx

    MaskRefiner._context = staticmethod(context)
    return train.main(argv[cut + 1:])


if __name__ == "__main__":
    sys.exit(main())
