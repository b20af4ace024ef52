"""Qualitative figures: image, expressions, predicted masks and the per-word LAV and VAL
heatmaps of one decoder layer, for the shipped examples and for failure cases.

    python scripts/figures.py --checkpoint weights/mmi_demo.pt --out assets/figures \
        [--results runs/demo_synref/eval_synref_testA.json --data-root data --failures 1]

Per figure: the overlay of every expression's mask (one colour each, legend below); for
the focus expression, ground truth against prediction when known (green truth, red
prediction, yellow both); then one column per word of the focus expression: the LAV map
("where this word looks", softmax over pixels) and the VAL map ("which pixels read this
word", softmax over words), heads averaged, each scaled to its own maximum.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi import viz  # noqa: E402
from mmi.predictor import Predictor, load_image  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def draw(predictor: Predictor, rgb: np.ndarray, expressions: list[str], focus: int, layer: int, title: str,
         out: str, gt: np.ndarray | None = None) -> dict:
    """Write one figure to ``out``; returns the focus expression's IoU (when ``gt``) and tokens."""
    preds = predictor.predict(rgb, expressions)
    p = preds[focus]
    words = [f"?{t}" if u else t for t, u in zip(p.tokens, p.unknown)]
    ncols = max(len(words), 3)
    cell = 2.3
    aspect = rgb.shape[0] / rgb.shape[1]
    fig, axes = plt.subplots(3, ncols, figsize=(cell * ncols, 3 * (cell * aspect + 0.45) + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    colors = [viz.color(i) for i in range(len(preds))]
    axes[0, 0].imshow(viz.overlay_masks(rgb, [q.mask for q in preds], colors))
    axes[0, 0].set_title("all expressions", fontsize=8)
    handles = [Patch(color=np.array(c) / 255, label=f"{i + 1}. {q.expression}") for i, (q, c) in enumerate(zip(preds, colors))]
    axes[0, 1].legend(handles=handles, loc="center left", fontsize=7, frameon=False)
    info = {"expression": p.expression, "tokens": p.token_text(), "confidence": round(p.confidence, 3),
            "regions": p.regions}
    if gt is not None:
        inter, union = int((gt & p.mask).sum()), int((gt | p.mask).sum())
        info["iou"] = round(inter / union, 3) if union else 0.0
        axes[0, ncols - 1].imshow(viz.compare_masks(rgb, gt, p.mask))
        axes[0, ncols - 1].set_title(f"focus {focus + 1}: truth (green) vs prediction (red)\nIoU {info['iou']:.2f}", fontsize=7)
    else:
        axes[0, ncols - 1].imshow(viz.heatmap_overlay(rgb, p.prob))
        axes[0, ncols - 1].set_title(f"focus {focus + 1}: probability", fontsize=8)
    for kind, row in (("lav", 1), ("val", 2)):
        if kind not in p.attention[layer]:
            continue
        maps = p.word_maps(layer, kind)
        for j, w in enumerate(words):
            axes[row, j].imshow(viz.heatmap_overlay(rgb, maps[j]))
            axes[row, j].set_title(f"{kind.upper()}: {w}", fontsize=8)
    fig.suptitle(f"{title}\nfocus: \"{p.expression}\" (decoder layer {layer % len(p.attention) + 1}; "
                 "LAV = where the word looks, VAL = pixels reading the word)", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.86, wspace=0.05, hspace=0.3)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    viz.quantize_png(out)  # a third of the bytes: the repo travels to a lent GPU within a size limit
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "weights", "mmi_demo.pt"))
    ap.add_argument("--examples", default=os.path.join(ROOT, "assets", "examples"))
    ap.add_argument("--count", type=int, default=3, help="figures from the shipped examples")
    ap.add_argument("--results", help="per-expression results JSON of train.py --eval-only (for failure cases)")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--failures", type=int, default=1)
    ap.add_argument("--layer", type=int, default=-1, help="decoder layer of the heatmaps (-1: the last)")
    ap.add_argument("--out", default=os.path.join(ROOT, "assets", "figures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    report = []
    with open(os.path.join(args.examples, "examples.json")) as f:
        examples = json.load(f)
    for k, ex in enumerate(examples[: args.count], 1):
        rgb = load_image(os.path.join(args.examples, ex["file_name"]))
        focus = k % len(ex["expressions"])
        out = os.path.join(args.out, f"example_{k}.png")
        info = draw(predictor, rgb, ex["expressions"], focus, args.layer, f"{ex['file_name']} (shipped example)", out)
        report.append({"figure": out, "source": ex["file_name"], "type": ex["types"][focus], **info})
    if args.results:
        from mmi.data.dataset import load_refer

        with open(args.results) as f:
            res = json.load(f)
        refer = load_refer(args.data_root, res["dataset"], res.get("split_by"))
        worst = sorted((r for r in res["records"] if r["union"] > 0), key=lambda r: r["iou"])[: args.failures]
        for k, r in enumerate(worst, 1):
            rgb = refer.load_image(r["image_id"])
            others = [s for rid in refer.ref_ids(res["split"]) if refer.refs[rid]["image_id"] == r["image_id"]
                      and rid != r["ref_id"] for s in refer.refs[rid]["sentences"][:1]]
            exprs = [r["expression"]] + [s.get("sent", "") for s in others[:2]]
            gt = refer.ref_mask(r["ref_id"]).astype(bool)
            out = os.path.join(args.out, f"failure_{k}.png")
            info = draw(predictor, rgb, exprs, 0, args.layer, f"failure case: {res['dataset']}/{res['split']} "
                        f"ref {r['ref_id']} ({r.get('type')})", out, gt)
            report.append({"figure": out, "source": r["file_name"], "type": r.get("type"), **info})
    for r in report:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
