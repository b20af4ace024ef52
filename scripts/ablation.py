"""The paper's ablation (its Table I) on the synthetic world, through train.py.

Variants, each trained with the same data, steps, batch and seeds, then evaluated on the
same split with ``train.py --eval-only`` (oIoU, mIoU, Prec@X at the original resolution):

    baseline        the paper's generic attention (``generic_lav``: words query pixels, LAV only), no IMI, no LFR
    +mutual         mutual attention (M3Att)
    +IMI            generic attention + IMI
    +LFR            generic attention + LFR
    all             mutual attention + IMI + LFR (the full MMI), ``product`` fusion
    all_order_free  the full MMI with ``order_free`` fusion (the reconstruction's open question)

    python scripts/ablation.py --seeds 0 1 2 --jobs 2 --keep assets/ablation --plot assets/ablation/curves.png

The recipe and budget are those of ``--config`` (default configs/ablation_synref.json: a new
head trained from scratch on the shipped model's frozen stage-1 backbone, 16 rounds of 420
steps of batch 16, a cosine over them, a validation curve on 600 expressions after each
round); the variant's switches and the seed are set on top, and every run is evaluated on
the whole ``--split`` (``--max-items`` for the first N only). ``--jobs 2`` trains two runs at a
time, one torch thread each (two runs of one thread learn more per second of a 2-core CPU
than one of two threads). Every variant runs with ``word_gate`` off: it is a second VAL
path (attention.py), so with it on "+ mutual attention" would not differ from the baseline
by VAL alone. IMI takes its values from the language features and LFR its target from the
word features before dropout (the paper's forms).

``--legacy`` repeats the README's earlier table instead (config configs/demo_synref.json,
S=192 and a step lr schedule set by ``--epochs``/``--steps``, the first 1,000 expressions):
the pixels-query-words baseline (``pixel_query``), the recipe's ``word_gate``, IMI values
from the pooled context and the LFR target after dropout:

    python scripts/ablation.py --legacy --seeds 0 1 --epochs 2 --steps 1681 --out runs/ablation_e2

Resumable: a run whose results exist is not repeated, and an interrupted one continues from
its last checkpoint (``--resume auto``); a run in ``--out`` of another budget, seed or recipe
stops the script with a message instead of being reported as this one's. ``--keep DIR``
copies each finished run's result (its validation curve, its metrics and by-type metrics;
not the per-expression records) to ``DIR/runs/<variant>_s<seed>.json``, which counts as
finished on a machine without ``runs/``, so a table spread over several sessions survives
them. Prints two markdown tables, the metrics and the oIoU by expression type, each as
mean ± half the range over seeds, and writes ``<out>/summary.json`` (and ``DIR/summary.json``).
The column "oIoU - baseline" pairs runs by seed (each variant's oIoU minus the baseline's
with the same seed), which separates a module's effect from the seed's; "oIoU - all" does
the same for the fusion row. A third table tests each paired difference over the seeds (a
paired t-test, two-sided 95%: "higher", "lower" or "not told apart from noise"; none with one
seed), and a fourth gives the by-type oIoU minus the reference's, paired the same way. ``--plot`` draws every run's validation curve on one figure.
``--report`` trains nothing and makes the tables of the runs finished so far (a row's label
names its seeds when some are missing; pairs only over the seeds both runs have). ``--readme
README.md`` also writes the tables into the README between its ``<!-- ablation:NAME -->`` markers,
so the README's tables are the report's and nothing is pasted by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from statistics import mean, stdev

SWITCHES = {  # (attention is mutual, imi, lfr, fusion)
    "baseline": (False, False, False, "product"),
    "+mutual": (True, False, False, "product"),
    "+IMI": (False, True, False, "product"),
    "+LFR": (False, False, True, "product"),
    "all": (True, True, True, "product"),
    "all_order_free": (True, True, True, "order_free"),
}
LEGACY_CONFIG, CONFIG = "configs/demo_synref.json", "configs/ablation_synref.json"
BACKBONE_SOURCE = "assets/recipes/gpu/stage1b.pt"  # whose backbone configs/ablation_synref.json names


def variants(legacy: bool = False) -> dict[str, dict]:
    """The model overrides of each variant. The paper's ablation by default; ``legacy``: the
    settings of the README's earlier runs (pixels-query-words baseline, word gate as the
    recipe says, IMI values from the pooled context, LFR target after dropout)."""
    generic = "pixel_query" if legacy else "generic_lav"
    extra = dict(imi_values="context", lfr_target="dropout") if legacy else dict(word_gate=False, imi_values="language", lfr_target="clean")
    return {name: dict(attention="mutual" if mutual else generic, imi=imi, lfr=lfr, fusion=fusion, **extra)
            for name, (mutual, imi, lfr, fusion) in SWITCHES.items()}


VARIANTS = variants()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mmi.data.synthetic.expressions import TYPES  # noqa: E402
from mmi.engine.config import load_config  # noqa: E402


def run(cmd: list[str], log: str | None = None, threads: int | None = None) -> None:
    """Run ``cmd`` in the repo; its output to ``log`` (appended) when given; ``threads`` torch threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    print("+", " ".join(cmd) + (f"  > {log}" if log else ""), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        return
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


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


def budget(args, seed: int, over: dict) -> dict:
    """What makes two runs the same run: epochs, steps per epoch, seed and model overrides."""
    return {"epochs": args.epochs, "steps per epoch": args.steps, "seed": seed, "model overrides": over}


def same_budget(where: str, have: dict, want: dict, preset: str) -> None:
    """Refuse a finished run of another budget or recipe: its result would be reported as if
    it were this one's. ``have`` is the budget the run at ``where`` recorded."""
    settings = model_settings(preset, want["model overrides"])
    if settings is not None and model_settings(preset, have["model overrides"], stored=True) == settings:
        have = dict(have, **{"model overrides": want["model overrides"]})  # the same network, written before a rename
    diff = [f"{k}: {have[k]} there, {want[k]} asked" for k in want if have[k] != want[k]]
    if diff:
        raise SystemExit(f"{where} holds a run of another budget or recipe ({'; '.join(diff)}); pass another --out")


def run_budget(out: str) -> tuple[dict, str | None] | None:
    """The budget recorded in a run folder's config.json (and its preset), if there is one."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cfg = json.load(f)
    return ({"epochs": cfg["train"]["epochs"], "steps per epoch": cfg["train"]["max_steps_per_epoch"],
             "seed": cfg["train"]["seed"], "model overrides": cfg["model"]["overrides"]}, cfg["model"].get("preset"))


def curve(out: str) -> list[dict]:
    """The run's validation curve from its log: step, minutes of training, oIoU/mIoU/Prec@0.5 (%)."""
    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return []
    rows, start = [], None
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if start is None:
                start = r.get("time")
            if r.get("kind") == "val":
                rows.append({"step": r["step"], "minutes": round((r["time"] - start) / 60, 2),
                             **{k: round(100 * r[k], 2) for k in ("oIoU", "mIoU", "Prec@0.5")}})
    return rows


def record(variant: str, seed: int, want: dict, result: dict, out: str, args) -> dict:
    """What ``--keep`` stores of a finished run: its budget, curve and metrics (no per-expression records)."""
    by_type = {t: {k: v for k, v in m.items() if k in ("count",) + METRICS} for t, m in result.get("by_type", {}).items()}
    return {"variant": variant, "seed": seed, "config": args.config, "budget": want, "split": args.split,
            "max_items": args.max_items, "count": result.get("count"), "curve": curve(out),
            "totals": result["totals"], "by_type": by_type}


_PREPARED = threading.Lock()


def prepare(args, cfg: dict) -> None:
    """Before the first run trains (once, whatever --jobs): the recipe's backbone file, taken from
    the shipped model's stage 1 (``BACKBONE_SOURCE``) when the recipe is this script's own, and its
    feature-cache file, so parallel runs neither compute the backbone nor write the memo twice."""
    with _PREPARED:
        backbone = (cfg["model"]["overrides"] or {}).get("backbone_weights")
        if args.config == CONFIG and backbone and not os.path.exists(os.path.join(ROOT, backbone)):
            run([sys.executable, "-m", "mmi.engine.checkpoint", "backbone", BACKBONE_SOURCE, backbone])
        cache = cfg["train"]["feature_cache_file"]
        if cache and not os.path.exists(os.path.join(ROOT, cache)):
            run([sys.executable, "-m", "mmi.model.feature_cache", "--config", args.config,
                 "--set", f"data.root={args.data_root}"])


def one(variant: str, seed: int, cfg: dict, args) -> dict | None:
    """Train and evaluate one variant with one seed on the recipe ``cfg``, unless done; its result
    ({"totals", "by_type", "curve", ...}), or None with --report when it is not finished."""
    preset = cfg["model"]["preset"]
    name = f"{variant.strip('+')}_s{seed}"
    out = os.path.join(args.out, name)
    result_path = os.path.join(out, f"eval_{args.split}.json")
    over = dict(cfg["model"]["overrides"] or {}, **variants(args.legacy)[variant])
    if args.image_size:
        over["image_size"] = args.image_size
    want = budget(args, seed, over)
    kept = os.path.join(args.keep, "runs", name + ".json") if args.keep else None
    if kept and os.path.exists(kept):
        with open(kept) as f:
            rec = json.load(f)
        same_budget(kept, rec["budget"], want, preset)
        return rec
    found = run_budget(out)
    if found:
        same_budget(out, found[0], want, found[1] or preset)
    if not os.path.exists(result_path):
        if args.report:
            return None
        prepare(args, cfg)
        os.makedirs(out, exist_ok=True)
        log = os.path.join(out, "train.txt") if args.jobs > 1 else None
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
        sets = [f"model.overrides={json.dumps(over)}", f"train.seed={seed}", f"train.epochs={args.epochs}",
                f"train.max_steps_per_epoch={args.steps}", f"data.workers={args.workers}",
                f"data.root={args.data_root}", f"output={out}"]
        if args.legacy:  # the earlier table's schedule: lr 1e-3, x0.1 for the last epoch, no validation
            milestones = [args.epochs - 1] if args.epochs > 1 else []
            sets += ["train.time_budget_min=null", "train.val_every=0", "train.save_every_steps=0",
                     f"optim.milestones={json.dumps(milestones)}", "optim.lr=0.001", "optim.warmup_iters=100"]
        # --resume auto: a run stopped before its evaluation (a crash, SIGTERM) continues
        run([sys.executable, "train.py", "--config", args.config, "--no-progress", "--resume", "auto", "--set", *sets],
            log, threads)
        ev = ["--max-items", str(args.max_items)] if args.max_items else []
        run([sys.executable, "train.py", "--eval-only", "--checkpoint", os.path.join(out, "last.pt"),
             "--dataset", "synref", "--split", args.split, "--data-root", args.data_root, "--out", result_path,
             "--workers", str(args.workers), *ev], log, threads)
    with open(result_path) as f:
        result = json.load(f)
    if kept:
        rec = record(variant, seed, want, result, out, args)
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        with open(kept, "w") as f:
            json.dump(rec, f, indent=1)
        return rec
    return dict(result, curve=curve(out))


METRICS = ("oIoU", "mIoU", "Prec@0.5", "Prec@0.7", "Prec@0.9")


def spread(fractions: list[float]) -> dict:
    """Percentages over seeds: mean, min, max and each run's value."""
    vals = [100 * x for x in fractions]
    return {"mean": mean(vals), "min": min(vals), "max": max(vals), "runs": vals}


# two-sided 95% quantiles of Student's t by degrees of freedom (n seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_test(diffs: list[float]) -> dict:
    """A paired t-test over seeds of one variant's differences from its reference (percentage
    points): ``t`` = mean / (sd / sqrt(n)) and the verdict at 95% (two-sided): "higher" or
    "lower" when |t| exceeds Student's quantile for n - 1 degrees of freedom, else "not told
    apart from noise"; with one seed there is no test. The rule is stated so that a reader can
    apply it to the per-seed columns."""
    n = len(diffs)
    if n < 2:
        return {"n": n, "t": None, "verdict": "one seed: no test"}
    m, sd = mean(diffs), stdev(diffs)
    t = float("inf") if sd == 0 and m != 0 else 0.0 if sd == 0 else m / (sd / n ** 0.5)
    crit = T95.get(n - 1, 1.96)
    verdict = ("higher" if t > 0 else "lower") if abs(t) > crit else "not told apart from noise"
    return {"n": n, "t": t, "critical": crit, "verdict": verdict}


def paired_table(summary: dict, refs=("baseline", "all")) -> str:
    """Markdown table of each variant's paired difference from its reference: mean ± half-range,
    the per-seed differences, t and the 95% verdict."""
    lines = ["| variant | against | oIoU difference | per seed | t (n − 1 dof) | at 95% |", "|---" * 6 + "|"]
    for v, row in summary.items():
        for ref in refs:
            d, test = row.get(f"oIoU - {ref}"), row.get(f"test - {ref}")
            if d is None or test is None:
                continue
            t = "–" if test["t"] is None else f"{test['t']:+.2f} ({test['n'] - 1})"
            lines.append(f"| {v} | {ref} | {d['mean']:+.2f} ± {(d['max'] - d['min']) / 2:.2f} | "
                         + ", ".join(f"{x:+.2f}" for x in d["runs"]) + f" | {t} | {test['verdict']} |")
    return "\n".join(lines)


def table(summary: dict, columns, cell) -> str:
    """Markdown table, one row per variant, cells ``mean ± half-range`` (blank where a row has none)."""
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for v in summary:
        cells = []
        for k in columns:
            c = cell(v, k)
            cells.append("" if c is None else f"{c['mean']:.2f} ± {(c['max'] - c['min']) / 2:.2f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_seed(rows: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Markdown table of each run's oIoU (%) by seed, then its difference from the baseline run of
    the same seed; "–" where a run is not finished."""
    def cell(v, s, minus=None):
        r, b = rows[v].get(s), rows.get("baseline", {}).get(s) if minus else None
        if r is None or (minus and b is None):
            return "–"
        return f"{100 * (r['totals']['oIoU'] - (b['totals']['oIoU'] if minus else 0)):+.2f}" if minus else \
            f"{100 * r['totals']['oIoU']:.2f}"
    head = [f"s{s}" for s in seeds] + [f"− baseline s{s}" for s in seeds]
    lines = ["| variant | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for v in rows:
        lines.append(f"| {v} | " + " | ".join([cell(v, s) for s in seeds] + [cell(v, s, True) for s in seeds]) + " |")
    return "\n".join(lines)


def splice(path: str, blocks: dict[str, str]) -> list[str]:
    """Replace the text between ``<!-- ablation:NAME -->`` and ``<!-- /ablation:NAME -->`` in the file
    at ``path`` with ``blocks[NAME]`` (a markdown table), leaving everything else as it was, so the
    README's tables are the report's. Returns the names replaced; a marker pair the file lacks is
    named on stderr, and a start marker without its end is an error (nothing is written)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    done = []
    for name, table_text in blocks.items():
        start, end = f"<!-- ablation:{name} -->", f"<!-- /ablation:{name} -->"
        i = text.find(start)
        if i < 0:
            print(f"{path}: no {start} marker, table {name!r} not written", file=sys.stderr)
            continue
        j = text.find(end, i)
        if j < 0:
            raise SystemExit(f"{path}: {start} has no {end} after it; nothing written")
        text = text[:i + len(start)] + "\n" + table_text + "\n" + text[j:]
        done.append(name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return done


def plot(rows: dict[str, dict[int, dict]], path: str, title: str) -> None:
    """Every run's validation curve (oIoU against step), one colour per variant, one line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]
    for i, (v, res) in enumerate(rows.items()):
        for seed, r in res.items():
            c = r.get("curve") or []
            if c:
                ax.plot([p["step"] for p in c], [p["oIoU"] for p in c], styles[seed % len(styles)], color=f"C{i}",
                        label=f"{v} (seed {seed})", linewidth=1.4)
    ax.set_xlabel("step (batch 16)")
    ax.set_ylabel("validation oIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help=f"the recipe (default {CONFIG}; with --legacy {LEGACY_CONFIG})")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=None, help="at most this many steps per epoch (default: the config's)")
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's (--legacy: 1; lr x0.1 in the last)")
    ap.add_argument("--image-size", type=int, default=None, help="default: the config's (--legacy: 192)")
    ap.add_argument("--max-items", type=int, default=None,
                    help="evaluate the first N expressions of the split (default: all; --legacy: 1000)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, the CPU's threads shared among them")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--legacy", action="store_true",
                    help="the README's earlier runs: pixels-query-words baseline, word gate, old IMI values and LFR target")
    ap.add_argument("--out", default="runs/ablation_cpu")
    ap.add_argument("--keep", default=None, help="copy each finished run's result to KEEP/runs/ (and the summary to KEEP)")
    ap.add_argument("--plot", default=None, help="draw every run's validation curve to this PNG")
    ap.add_argument("--readme", default=None,
                    help="write the tables into this markdown file between its <!-- ablation:NAME --> and "
                         "<!-- /ablation:NAME --> markers (NAME: totals, by_seed, paired, by_type, by_type-baseline, "
                         "by_type-all)")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: the tables of the runs finished so far (the others named on stderr)")
    args = ap.parse_args()
    args.config = args.config or (LEGACY_CONFIG if args.legacy else CONFIG)
    cfg = load_config(os.path.join(ROOT, args.config))
    if args.legacy:
        args.epochs, args.steps = args.epochs or 1, args.steps or 400
        args.image_size, args.max_items = args.image_size or 192, args.max_items or 1000
    else:
        args.epochs = args.epochs or cfg["train"]["epochs"]
        args.steps = args.steps or cfg["train"]["max_steps_per_epoch"]
    tasks = [(v, s) for s in args.seeds for v in args.variants]  # seed by seed: each seed's table fills first
    failed = []

    def task(vs):
        try:
            return one(vs[0], vs[1], cfg, args)
        except subprocess.CalledProcessError as e:
            failed.append(f"{vs[0]} seed {vs[1]} ({e}; its log: {os.path.join(args.out, vs[0].strip('+') + '_s' + str(vs[1]))})")
            return None

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = dict(zip(tasks, pool.map(task, tasks)))
    if failed:
        raise SystemExit("runs FAILED (finished ones are kept; run again to resume):\n  " + "\n  ".join(failed))
    # {variant: {seed: result}}, finished runs only (--report leaves the others out)
    rows = {v: {s: results[(v, s)] for s in args.seeds if results[(v, s)] is not None} for v in args.variants}
    missing = [f"{v} seed {s}" for v in args.variants for s in args.seeds if results[(v, s)] is None]
    if missing:
        print("not finished, left out of the tables: " + ", ".join(missing), file=sys.stderr)
    rows = {v: res for v, res in rows.items() if res}
    print(f"\nsynref/{args.split} ({f'first {args.max_items}' if args.max_items else 'all'} expressions), "
          f"{args.epochs} epoch(s) of at most {args.steps} steps x batch {cfg['data']['batch_size']}, "
          f"{args.config}, seeds {args.seeds}; mean ± half-range over seeds\n")
    types = [t for t in TYPES if all(t in r.get("by_type", {}) for res in rows.values() for r in res.values())]
    summary = {}
    for v, res in rows.items():
        summary[v] = {key: spread([r["totals"][key] for r in res.values()]) for key in METRICS}
        summary[v]["seeds"] = list(res)
        summary[v]["by_type"] = {t: spread([r["by_type"][t]["oIoU"] for r in res.values()]) for t in types}
        for ref in ("baseline", "all"):  # paired by seed: each run minus the reference run of the same seed
            both = [s for s in res if s in rows.get(ref, {})]
            if both and v != ref and (ref == "baseline" or v == "all_order_free"):
                summary[v][f"oIoU - {ref}"] = spread([res[s]["totals"]["oIoU"] - rows[ref][s]["totals"]["oIoU"]
                                                      for s in both])
                summary[v][f"test - {ref}"] = paired_test(summary[v][f"oIoU - {ref}"]["runs"])
                summary[v][f"by_type - {ref}"] = {
                    t: spread([res[s]["by_type"][t]["oIoU"] - rows[ref][s]["by_type"][t]["oIoU"] for s in both])
                    for t in types}
    label = {v: v if len(res) == len(args.seeds) else f"{v} (seed {', '.join(map(str, res))})" for v, res in rows.items()}
    shown = {label[v]: summary[v] for v in summary}
    paired = tuple(c for c in ("oIoU - baseline", "oIoU - all") if any(c in s for s in summary.values()))
    # the tables, each under a name that --readme looks for between <!-- ablation:NAME --> markers
    blocks = {"totals": ("", table(shown, METRICS + paired, lambda v, k: shown[v].get(k))),
              "by_seed": ("oIoU of each run, and minus the baseline's of the same seed", by_seed(rows, args.seeds))}
    if any("test - baseline" in r or "test - all" in r for r in shown.values()):
        blocks["paired"] = ("Paired by seed (each run minus its reference's run of the same seed), with a paired t-test",
                            paired_table(shown))
    if types:
        blocks["by_type"] = ("oIoU by expression type", table(shown, types, lambda v, t: shown[v]["by_type"][t]))
        for ref in ("baseline", "all"):
            diff = {v: r for v, r in shown.items() if f"by_type - {ref}" in r}
            if diff:
                blocks[f"by_type-{ref}"] = (f"oIoU by expression type minus the {ref}'s (paired by seed)",
                                            table(diff, types, lambda v, t, ref=ref: diff[v][f"by_type - {ref}"][t]))
    for title, text in blocks.values():
        print(f"\n{title}\n\n{text}" if title else text)
    doc = {"args": vars(args), "variants": {v: variants(args.legacy)[v] for v in args.variants}, "results": summary,
           "missing": missing, "curves": {v: {str(s): r.get("curve", []) for s, r in res.items()} for v, res in rows.items()}}
    for folder in {args.out, args.keep} - {None}:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(doc, f, indent=1)
    if args.plot:
        plot(rows, args.plot, f"synref/val, first {cfg['data']['val_max_items']} expressions, during training "
                              f"({args.config})")
    if args.readme:  # last: a README without its end marker stops nothing above
        done = splice(args.readme, {name: text for name, (_, text) in blocks.items()})
        print(f"{args.readme}: {len(done)} table(s) written ({', '.join(done) or 'none'})", file=sys.stderr)


if __name__ == "__main__":
    main()
