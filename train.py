"""Train, evaluate or export an MMI model.

Train (one GPU or the CPU; resolved config, log.jsonl, last.pt, best.pt, curves.png in the output folder):
    python train.py --config configs/demo_synref.json [--set optim.lr=0.001 data.batch_size=8 ...]
Distributed data parallel, one process per GPU (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE):
    torchrun --nproc_per_node 4 train.py --config configs/paper_darknet53_refcoco.json
Resume exactly where last.pt left off (the run's own config is reused; --set may change e.g. train.epochs):
    python train.py --resume runs/demo_synref/last.pt
Resume if there is something to resume (elastic restarts: every restart gets the same command line):
    torchrun --standalone --nproc_per_node 4 --max-restarts 3 train.py --config X --resume auto
A new run refuses an output folder that already holds a run (--resume, another output, or --overwrite).
SIGTERM / SIGINT: the current step finishes, last.pt is saved (mid-epoch), exit code 143 / 130.
Evaluate (training or inference checkpoint) at the original image resolution:
    python train.py --eval-only --checkpoint runs/x/best.pt --dataset refcoco --split val --data-root data
Export the inference-only checkpoint:
    python train.py --export runs/x/best.pt --out weights/x.pt [--half]

Exit codes: 0 done; 2 a bad config, checkpoint, data set or output folder (a run already there),
or a checkpoint that could not be written (a full disk); 3 a NaN/inf loss; 143 / 130 stopped
by SIGTERM / SIGINT with last.pt saved (128 + the signal number).
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a JSON config (configs/*.json)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, dotted keys, JSON values: optim.lr=0.001 model.overrides.imi=false")
    p.add_argument("--resume", metavar="CKPT|auto",
                   help="continue from a training checkpoint (RUN/last.pt); 'auto': from <output>/last.pt when it "
                        "exists, else start (for torchrun --max-restarts)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an output folder that holds one, removing that run's files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev = p.add_argument_group("evaluation (--eval-only)")
    ev.add_argument("--eval-only", action="store_true")
    ev.add_argument("--checkpoint", help="training or inference checkpoint to evaluate")
    ev.add_argument("--dataset", help="refcoco | refcoco+ | refcocog | synref | synref_long")
    ev.add_argument("--split", help="e.g. val, testA, testB, test")
    ev.add_argument("--data-root", default="data")
    ev.add_argument("--split-by", default=None, help="unc | google | umd (default: the dataset's)")
    ev.add_argument("--image-dir", default=None)
    ev.add_argument("--threshold", type=float, default=0.5, help="probability threshold (VLT/CRIS use 0.35)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    ev.add_argument("--language", choices=["normal", "empty", "mismatched"], default="normal",
                    help="probe: evaluate with no words, or with another object's expression from the same image")
    ev.add_argument("--max-items", type=int, default=None, help="evaluate only the first N expressions")
    ev.add_argument("--regions", choices=["all", "peak"], default="all",
                    help="all: the thresholded mask as it is (the method's); peak: only its region holding the "
                         "highest probability (an inference aid: mmi/regions.py)")
    ev.add_argument("--flip", action="store_true",
                    help="average each prediction with that of the image flipped left-right and the expression's "
                         "left/right words swapped (an inference aid, twice the time: mmi/mirror.py)")
    ex = p.add_argument_group("export")
    ex.add_argument("--export", metavar="CKPT", help="write the inference-only checkpoint of CKPT to --out")
    ex.add_argument("--half", action="store_true", help="store fp16 weights in the export")
    p.add_argument("--out", help="--eval-only: results JSON; --export: the inference checkpoint")
    args = p.parse_args(argv)
    modes = sum([bool(args.eval_only), bool(args.export), bool(args.config or args.resume)])
    if modes != 1:
        p.error("choose one of: --config/--resume (train), --eval-only, --export")
    if args.resume == "auto" and not args.config:
        p.error("--resume auto needs --config (the output folder it looks in comes from the config)")
    if args.overwrite and args.resume:
        p.error("--overwrite starts a new run; it cannot be combined with --resume")
    if args.eval_only:
        missing = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "dataset", "split") if not getattr(args, k)]
        if missing:
            p.error(f"--eval-only needs {' '.join(missing)}")
    if args.export and not args.out:
        p.error("--export needs --out")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mmi.data import DatasetError
    from mmi.engine.checkpoint import CheckpointError, export_inference, load_training
    from mmi.engine.config import ConfigError, apply_layer, load_config, validate, DEFAULTS

    try:
        if args.export:
            meta = export_inference(args.export, args.out, half=args.half)
            print(f"wrote {args.out} (epoch {meta.get('epoch')}, {'fp16' if args.half else 'fp32'} weights)")
            return 0
        if args.eval_only:
            from mmi.engine.evaluate import run_eval_only

            run_eval_only(args.checkpoint, args.dataset, args.split, args.data_root, split_by=args.split_by,
                          image_dir=args.image_dir, threshold=args.threshold, out=args.out, batch_size=args.batch_size,
                          workers=args.workers, device=args.device, amp=args.amp, max_items=args.max_items,
                          language=args.language, progress=not args.no_progress, regions=args.regions,
                          flip=args.flip)
            return 0
        if args.resume and args.resume != "auto" and not args.config:
            saved = load_training(args.resume).get("run_config")
            if not isinstance(saved, dict):
                raise ConfigError(f"{args.resume} holds no run config; pass --config as well")
            cfg = apply_layer(apply_layer(DEFAULTS, saved), _overrides(args.set))
            validate(cfg)
        else:
            cfg = load_config(args.config, args.set)
        from mmi.engine.trainer import NonFiniteLossError, train

        try:
            summary = train(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
        if summary.get("signal"):
            import signal

            if os.environ.get("RANK", "0") == "0":
                last = os.path.join(summary["output"], "last.pt")
                print(f"stopped by {signal.Signals(summary['signal']).name} after step {summary['step']} "
                      f"(epoch {summary['epoch'] + 1}, {summary['step_in_epoch']} steps into it); saved {last}. "
                      f"Continue with: python train.py --resume {last}", file=sys.stderr, flush=True)
            return 128 + int(summary["signal"])  # 143 for SIGTERM, 130 for SIGINT
        if os.environ.get("RANK", "0") == "0":
            print(f"done: {summary['epoch']} epochs, {summary['step']} steps, best val oIoU "
                  f"{100 * max(summary['best_oIoU'], 0):.2f}; outputs in {summary['output']}")
        return 0
    except (ConfigError, CheckpointError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _overrides(pairs: list[str]) -> dict:
    from mmi.engine.config import parse_overrides

    return parse_overrides(pairs)


if __name__ == "__main__":
    from mmi.engine.distributed import exit_process

    exit_process(main())
