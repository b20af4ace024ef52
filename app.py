"""The MMI demo: type expressions, see masks and the evidence for them.

    python app.py --checkpoint weights/mmi_demo.pt [--host 127.0.0.1] [--port 7860] [--device cpu|cuda]
                  [--results RUN/eval/synref_val.json] [--data-root data] [--regions peak|all]
                  [--password-file FILE] [--max-upload-mb 50] [--max-queue 64] [--model-concurrency 2]

Serving to a team (a password from MMI_APP_PASSWORD or a file, the limits): ``webapp.serving``.

The entry point; the tabs live in the ``webapp`` package (one module per tab, the shared
predictor and caches in ``webapp.common``): Segment (overlay with outlines, legend, which
words mattered, heatmaps, exports), Scene lab (fresh synthetic scenes checked by the
world's resolver, ground truth beside the prediction) and Failure cases (the shipped
model's validation results by default, or an uploaded results file).

APIs: ``/segment`` and ``/word_importance`` (image, expressions, threshold) -> JSON; the
scene lab's ``/lab_scene``, ``/lab_check``, ``/lab_object``; ``/failures`` (upload) and
``/failure_case``. Errors reach the page as short messages; tracebacks go to the server log.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from webapp import build_app, failure_inputs, launch, load_results, read_examples, serving  # noqa: E402,F401


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MMI referring segmentation demo (Gradio).")
    p.add_argument("--checkpoint", default="weights/mmi_demo.pt", help="inference checkpoint (mmi-inference/1)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--results", default=None,
                   help="per-expression results JSON for the failure-case tab (default: the shipped model's, "
                        "assets/results/synref_val_shipped.json)")
    p.add_argument("--data-root", default=None, help="data root holding the images of --results (synthetic results "
                   "need none: their images are regenerated from the seed)")
    p.add_argument("--cache-size", type=int, default=8, help="images whose features are kept")
    p.add_argument("--regions", choices=("peak", "all"), default="peak",
                   help="peak (default): each mask keeps only its region holding the highest probability, as an "
                        "expression names one object (an inference aid: mmi/regions.py); all: every region above "
                        "the threshold, the method's own masks")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="auto (default): bf16 autocast where the CPU computes it natively (AVX-512 BF16 or AMX) "
                        "or the GPU supports it, float32 elsewhere; off: float32 always")
    serving.add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mmi.engine.checkpoint import CheckpointError
    from mmi.predictor import Predictor

    try:  # who may use it and the limits, checked before anything is loaded or bound
        limits, credentials = serving.from_args(args)
    except serving.ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.cache_size,
                                              cache_bytes=int(args.cache_mb * 2**20), regions=args.regions,
                                              amp=args.amp)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    launch(build_app(predictor, args.results, args.data_root, checkpoint=args.checkpoint), args.host, args.port,
           limits=limits, credentials=credentials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
