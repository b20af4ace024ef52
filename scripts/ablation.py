"""The paper's ablation (its Table I) on the synthetic world, through train.py.

Variants, each trained with the same data, steps, batch and seeds, then evaluated on the
same split with ``train.py --eval-only`` (oIoU, mIoU, Prec@X at the original resolution):

    baseline   the paper's generic attention (``generic_lav``: words query pixels, LAV only), no IMI, no LFR
    +mutual    mutual attention (M3Att)
    +IMI       generic attention + IMI
    +LFR       generic attention + LFR
    all        mutual attention + IMI + LFR (the full MMI)

    python scripts/ablation.py --seeds 0 1 --epochs 2 --steps 1681 --image-size 192 --out runs/ablation_e3

Every variant runs with ``word_gate`` off: it is a second VAL path (attention.py), so with
it on "+ mutual attention" would not differ from the baseline by VAL alone. IMI takes its
values from the language features and LFR its target from the word features before dropout
(the paper's forms). ``--legacy`` repeats the README's earlier table instead: the
pixels-query-words baseline (``pixel_query``), the recipe's ``word_gate``, IMI values from
the pooled context and the LFR target after dropout.

The recipe is that of ``--config`` (default: the shipped model's, configs/demo_synref.json),
shortened by the flags to fit a 2-core CPU: the README's table is two epochs of 1,681
steps of batch 16 at S=192.

Runs whose results JSON already exists are not repeated, so an interrupted ablation
resumes where it stopped; a run in ``--out`` of another budget, seed or recipe stops the
script with a message instead of being reported as this one's. Prints two markdown tables,
the metrics and the oIoU by expression type, each as mean ± half the range over seeds, and
writes ``<out>/summary.json``.
The last column of the first, "oIoU - baseline", pairs runs by seed (each variant's oIoU
minus the baseline's with the same seed), which separates a module's effect from the
seed's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from statistics import mean

SWITCHES = {  # (attention is mutual, imi, lfr)
    "baseline": (False, False, False),
    "+mutual": (True, False, False),
    "+IMI": (False, True, False),
    "+LFR": (False, False, True),
    "all": (True, True, True),
}


def variants(legacy: bool = False) -> dict[str, dict]:
    """The model overrides of each variant. The paper's ablation by default; ``legacy``: the
    settings of the README's earlier runs (pixels-query-words baseline, word gate as the
    recipe says, IMI values from the pooled context, LFR target after dropout)."""
    generic = "pixel_query" if legacy else "generic_lav"
    extra = dict(imi_values="context", lfr_target="dropout") if legacy else dict(word_gate=False, imi_values="language", lfr_target="clean")
    return {name: dict(attention="mutual" if mutual else generic, imi=imi, lfr=lfr, **extra)
            for name, (mutual, imi, lfr) in SWITCHES.items()}


VARIANTS = variants()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mmi.data.synthetic.expressions import TYPES  # noqa: E402
from mmi.engine.config import load_config  # noqa: E402


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def config_overrides(path: str) -> dict:
    """The recipe's own model overrides (frozen backbone, Dice, language_norm, ...); the
    variant's switches and ``--image-size`` are applied on top."""
    return dict(load_config(os.path.join(ROOT, path))["model"]["overrides"] or {})


def model_settings(preset: str, over: dict, stored: bool = False) -> dict | None:
    """Every model setting ``over`` gives on ``preset``; a ``stored`` run's overrides are read
    as a checkpoint's config is (``presets.legacy_config``: missing new keys take their
    earlier values, "generic" is the pixels-query-words layer). None when they do not resolve."""
    from mmi.model.presets import legacy_config, resolve_config

    if stored:
        over = legacy_config({**over, "attention": over.get("attention", "mutual")})
    try:
        return resolve_config(preset, 2, **over)
    except ValueError:
        return None


def same_budget(out: str, over: dict, seed: int, args) -> None:
    """Refuse a finished run of another budget or recipe in ``out``: its result would be
    reported as if it were this one's."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        cfg = json.load(f)
    preset = cfg["model"].get("preset") or load_config(os.path.join(ROOT, args.config))["model"]["preset"]
    want = {"epochs": args.epochs, "steps per epoch": args.steps, "seed": seed, "model overrides": over}
    have = {"epochs": cfg["train"]["epochs"], "steps per epoch": cfg["train"]["max_steps_per_epoch"],
            "seed": cfg["train"]["seed"], "model overrides": cfg["model"]["overrides"]}
    settings = model_settings(preset, over)
    if settings is not None and model_settings(preset, have["model overrides"], stored=True) == settings:
        have["model overrides"] = over  # the same network, written before settings were added or renamed
    diff = [f"{k}: {have[k]} there, {want[k]} asked" for k in want if have[k] != want[k]]
    if diff:
        raise SystemExit(f"{out} holds a run of another budget or recipe ({'; '.join(diff)}); "
                         f"pass another --out")


def one(variant: str, seed: int, recipe: dict, args) -> dict:
    """Train and evaluate one variant with one seed, unless done; its eval JSON."""
    out = os.path.join(args.out, f"{variant.strip('+')}_s{seed}")
    result = os.path.join(out, f"eval_{args.split}.json")
    over = dict(recipe, **variants(args.legacy)[variant], image_size=args.image_size)
    same_budget(out, over, seed, args)
    if not os.path.exists(result):
        milestones = [args.epochs - 1] if args.epochs > 1 else []  # lr x0.1 for the last epoch
        # --resume auto: a run stopped before its evaluation (a crash, SIGTERM) continues
        run([sys.executable, "train.py", "--config", args.config, "--no-progress", "--resume", "auto", "--set",
             f"model.overrides={json.dumps(over)}", f"train.seed={seed}", f"train.epochs={args.epochs}",
             f"train.max_steps_per_epoch={args.steps}", "train.time_budget_min=null", "train.val_every=0",
             "train.save_every_steps=0", f"optim.milestones={json.dumps(milestones)}", "optim.lr=0.001",
             "optim.warmup_iters=100",
             f"data.workers={args.workers}", f"data.root={args.data_root}", f"output={out}"])
        run([sys.executable, "train.py", "--eval-only", "--checkpoint", os.path.join(out, "last.pt"),
             "--dataset", "synref", "--split", args.split, "--data-root", args.data_root, "--out", result,
             "--max-items", str(args.max_items), "--workers", str(args.workers)])
    with open(result) as f:
        return json.load(f)


METRICS = ("oIoU", "mIoU", "Prec@0.5", "Prec@0.7", "Prec@0.9")


def spread(fractions: list[float]) -> dict:
    """Percentages over seeds: mean, min, max and each run's value."""
    vals = [100 * x for x in fractions]
    return {"mean": mean(vals), "min": min(vals), "max": max(vals), "runs": vals}


def table(summary: dict, columns, cell) -> str:
    """Markdown table, one row per variant, cells ``mean ± half-range``."""
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for v in summary:
        cells = [f"{c['mean']:.2f} ± {(c['max'] - c['min']) / 2:.2f}" for c in (cell(v, k) for k in columns)]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo_synref.json")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=400, help="at most this many steps per epoch")
    ap.add_argument("--epochs", type=int, default=1, help="with more than one, lr x0.1 in the last")
    ap.add_argument("--image-size", type=int, default=192)
    ap.add_argument("--max-items", type=int, default=1000, help="evaluate the first N expressions of the split")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--legacy", action="store_true",
                    help="the README's earlier runs: pixels-query-words baseline, word gate, old IMI values and LFR target")
    ap.add_argument("--out", default="runs/ablation")
    args = ap.parse_args()
    recipe = config_overrides(args.config)
    rows = {v: [one(v, s, recipe, args) for s in args.seeds] for v in args.variants}
    print(f"\nsynref/{args.split} (first {args.max_items} expressions), {args.epochs} epoch(s) of at most "
          f"{args.steps} steps x batch 16, "
          f"S={args.image_size}, seeds {args.seeds}; mean ± half-range over seeds\n")
    types = [t for t in TYPES if all(t in r.get("by_type", {}) for res in rows.values() for r in res)]
    paired = "baseline" in rows  # each run minus the baseline run of the same seed
    columns = METRICS + ("oIoU - baseline",) if paired else METRICS
    summary = {}
    for v, res in rows.items():
        summary[v] = {key: spread([r["totals"][key] for r in res]) for key in METRICS}
        summary[v]["by_type"] = {t: spread([r["by_type"][t]["oIoU"] for r in res]) for t in types}
        if paired:
            summary[v]["oIoU - baseline"] = spread([r["totals"]["oIoU"] - b["totals"]["oIoU"]
                                                    for r, b in zip(res, rows["baseline"])])
    print(table(summary, columns, lambda v, k: summary[v][k]))
    if types:
        print("\noIoU by expression type\n")
        print(table(summary, types, lambda v, t: summary[v]["by_type"][t]))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"args": vars(args), "variants": variants(args.legacy), "results": summary}, f, indent=1)


if __name__ == "__main__":
    main()
