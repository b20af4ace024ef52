"""The Segment tab: an image and expressions in; the evidence out.

- overlay: outlines over a light fill (opacity control), a number on each mask, one
  colour per expression from a colour-blind-safe palette, show/hide per expression;
- legend and table flag empty masks and masks of several regions, and unknown words;
- which words mattered: the IoU between each expression's mask and its mask with one
  word removed, every variant decoded in one batch on the cached image features;
- heatmaps grouped per expression in its mask colour, content words first, function
  words folded away, with a colour scale;
- exports: PNG masks, a COCO file (RLE or polygons) and the overlay, zipped.

Layer, threshold, opacity and visibility re-draw the kept result (:class:`common.Results`)
without running the model. APIs: ``/segment`` (JSON), ``/word_importance`` (JSON),
``/segment_ui`` and ``/redraw`` (the tab's own events).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from mmi import viz
from mmi.predictor import Prediction, ablation_ious, display_size

from .common import (FUNCTION_WORDS, HEAT_SIDE, Context, Result, esc, friendly, image_file,
                     keep_on_error, label_for, parse_layer, read_examples, read_request, swatch, view_size)

TABLE_HEADERS = ["#", "expression", "as read", "flag", "conf.", "area %", "regions"]
API_SNIPPET = '''from gradio_client import Client, handle_file
from pycocotools import mask as mask_utils

client = Client("{url}")
result = client.predict(handle_file("assets/examples/example_1.png"),
                        "the large plus sign\\nthe leftmost medium object", 0.5, api_name="/segment")
for e in result["expressions"]:
    rle = dict(e["mask_rle"], counts=e["mask_rle"]["counts"].encode())
    mask = mask_utils.decode(rle).astype(bool)          # (H, W) at the original size
    print(e["expression"], e["token_text"], e["confidence"], mask.sum(), e["regions"])

# which words mattered: IoU of each expression's mask with the mask without that word
print(client.predict(handle_file("assets/examples/example_1.png"), "the large plus sign", 0.5,
                     api_name="/word_importance"))
'''


# ----------------------------------------------------------------------------- APIs

def segment_json(ctx: Context, image: Any, text: Any, threshold: float) -> dict:
    """The ``/segment`` API result: ``{"height", "width", "threshold", "layers", "skipped",
    "expressions": [Prediction.to_json()]}`` (masks as COCO RLE at the original size, per
    layer and word the head-averaged LAV / VAL grids)."""
    rgb, exprs, skipped = read_request(ctx.predictor, image_file(image, ctx.workdir, ctx.limits), text)
    threshold = 0.5 if threshold is None else float(threshold)
    preds = ctx.predictor.predict(rgb, exprs, threshold)
    return {"height": int(rgb.shape[0]), "width": int(rgb.shape[1]), "threshold": threshold,
            "layers": ctx.predictor.num_layers, "skipped": skipped, "expressions": [p.to_json() for p in preds]}


def importance_json(ctx: Context, image: Any, text: Any, threshold: float) -> dict:
    """The ``/word_importance`` API: per expression and word, the IoU between the
    expression's mask and its mask with that word removed (low = the word mattered)."""
    rgb, exprs, skipped = read_request(ctx.predictor, image_file(image, ctx.workdir, ctx.limits), text)
    threshold = 0.5 if threshold is None else float(threshold)
    items = ctx.predictor.word_ablation(rgb, exprs)
    out = []
    for it in items:
        ious = ablation_ious(it, threshold)
        out.append({"expression": it["expression"], "words": [{"word": w, "iou": round(v, 4)}
                                                              for w, v in zip(it["tokens"], ious)]})
    return {"threshold": threshold, "skipped": skipped, "expressions": out}


# ----------------------------------------------------------------------------- views

def flags_of(p: Prediction) -> list[tuple[str, str]]:
    """(css class, text) flags of a result: empty, several regions, unknown words, cut."""
    out = []
    if p.area == 0:
        out.append(("empty", f"empty: nothing above {p.threshold:.2f}"))
    elif p.regions > 1:
        out.append(("multi", f"{p.regions} regions: ambiguous?" if p.region_mode == "all"
                    else f"{p.regions} regions found, the most probable kept"))
    unk = [t for t, u in zip(p.tokens, p.unknown) if u]
    if unk:
        out.append(("unknown", "unknown: " + ", ".join(unk[:4])))
    if p.truncated:
        out.append(("cut", f"cut: {len(p.dropped)} word(s)"))
    return out


def marked_tokens(p: Prediction) -> str:
    words = [f'<mark class="unk">?{esc(t)}</mark>' if u else esc(t) for t, u in zip(p.tokens, p.unknown)]
    if p.dropped:
        words.append(f"<em>[cut {len(p.dropped)}]</em>")
    return " ".join(words)


def legend_html(preds: list[Prediction], shown: set[int]) -> str:
    rows = []
    for i, p in enumerate(preds, 1):
        flags = "".join(f' <span class="flag {c}">{esc(t)}</span>' for c, t in flags_of(p))
        hidden = "" if i in shown else ' hidden-expr'
        state = "" if i in shown else " <em>(hidden)</em>"
        rows.append(f'<div class="row{hidden}" data-expr="{i}">{swatch(i)}<span><b>{esc(p.expression)}</b>{state}'
                    f'<br><small>read as: {marked_tokens(p)} · confidence {p.confidence:.2f}</small>{flags}</span></div>')
    return f'<div class="mmi-legend" id="legend-body">{"".join(rows)}</div>'


def table_of(preds: list[Prediction]) -> pd.DataFrame:
    rows = [[i, p.expression, p.token_text(), "; ".join(t for _, t in flags_of(p)) or "ok", round(p.confidence, 3),
             round(100 * p.area / p.mask.size, 2), p.regions] for i, p in enumerate(preds, 1)]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def heatmaps_html(rgb: np.ndarray, preds: list[Prediction], layer: int) -> str:
    """Per expression (in its mask colour): content words first, then the function words
    in a folded block; per word the LAV and the VAL map side by side, full caption."""
    hw = display_size(*rgb.shape[:2], HEAT_SIDE)
    small = viz.resize_image(rgb, hw)
    grey = np.repeat(np.asarray(np.dot(small[..., :3], [0.299, 0.587, 0.114]), np.uint8)[..., None], 3, axis=2)
    out = ['<div class="mmi-heat">',
           f'<div class="scale">colour scale: <span>low</span><span class="bar" style="background:{viz.TURBO_CSS}"></span>'
           "<span>high</span> — each map is scaled to its own range (compare shapes, not brightness). "
           "<b>LAV</b>: where the word looks (sums to 1 over pixels); <b>VAL</b>: which pixels read the word "
           "(each pixel's share of its attention). "
           f"Decoder layer {layer + 1}.</div>"]
    for i, p in enumerate(preds, 1):
        kinds = [k for k in ("lav", "val") if k in p.attention[layer]]
        maps = {k: p.word_maps(layer, k, hw) for k in kinds}
        content, function = [], []
        for j, (tok, unk) in enumerate(zip(p.tokens, p.unknown)):
            word = f"?{tok}" if unk else tok
            imgs = "".join(
                f'<img alt="{k.upper()} {esc(word)}" title="{k.upper()}: {esc(word)}" '
                f'src="{viz.data_uri((0.45 * grey + 0.55 * viz.colorize(maps[k][j])).astype(np.uint8))}">'
                for k in kinds)
            fig = (f'<figure data-word="{esc(word)}"><div class="pair">{imgs}</div>'
                   f'<figcaption><b>{esc(word)}</b> (word {j + 1}) — {" | ".join(k.upper() for k in kinds)}'
                   "</figcaption></figure>")
            (function if tok in FUNCTION_WORDS else content).append(fig)
        colour = viz.hex_color(viz.color(i - 1))
        block = [f'<section style="border-color:{colour}" data-expr="{i}"><h4>{swatch(i)} {esc(p.expression)}</h4>',
                 f'<div class="grid">{"".join(content) or "<em>no content words</em>"}</div>']
        if function:
            names = ", ".join(esc(f"?{t}" if u else t) for t, u in zip(p.tokens, p.unknown) if t in FUNCTION_WORDS)
            block.append(f'<details><summary>function words ({names})</summary><div class="grid">'
                         f'{"".join(function)}</div></details>')
        block.append("</section>")
        out.extend(block)
    out.append("</div>")
    return "".join(out)


def importance_html(items: list[dict] | None, threshold: float) -> str:
    if items is None:
        return "<div class='mmi-bars'><em>Not measured for this result (tick “Measure which words mattered” " \
               "and press Segment).</em></div>"
    out = ["<div class='mmi-bars'><p>For each word: the IoU between the expression's mask and the mask with that "
           "word removed. The bar is 1 − IoU: <b>how much removing the word changed the answer</b>. All variants "
           "were decoded in one batch on the cached image features; attention maps say where the model looked, "
           "this says what changed its answer.</p>"]
    for i, it in enumerate(items, 1):
        colour = viz.hex_color(viz.color(i - 1))
        out.append(f"<section data-expr='{i}'><div>{swatch(i)} <b>{esc(it['expression'])}</b></div>")
        ious = ablation_ious(it, threshold)
        if not ious:
            out.append("<div><em>one word: nothing to remove</em></div>")
        for w, v in zip(it["tokens"], ious):
            out.append(f"<div class='word' data-word='{esc(w)}'><span>{esc(w)}</span><span class='track'>"
                       f"<span class='fill' style='display:block;width:{100 * (1 - v):.1f}%;background:{colour}'></span>"
                       f"</span><span>IoU {v:.2f}</span></div>")
        out.append("</section>")
    out.append("</div>")
    return "".join(out)


def views(ctx: Context, key: str, res: Result, threshold: float, layer_choice: Any, opacity: float,
          shown: Any, coco_format: Any, started: float, cached: bool | None = None) -> tuple:
    """(overlay, legend, table, importance, heatmaps, files, status) of a kept result."""
    predictor = ctx.predictor
    threshold = 0.5 if threshold is None else float(threshold)
    opacity = 0.25 if opacity is None else float(np.clip(float(opacity), 0.0, 1.0))
    layer = parse_layer(layer_choice, predictor.num_layers)
    preds = [predictor.rethreshold(p, threshold) for p in res.preds]
    visible = set(range(1, len(preds) + 1)) if shown is None else {int(s) for s in shown if str(s).isdigit()}
    hw = view_size(*res.rgb.shape[:2])
    base = viz.resize_image(res.rgb, hw)
    order = [i for i in range(1, len(preds) + 1) if i in visible]
    overlay = viz.draw_masks(base, [viz.resize_mask(preds[i - 1].mask, hw) for i in order],
                             [viz.color(i - 1) for i in order], fill=opacity, labels=[str(i) for i in order])
    heat_key = ("heat", layer)
    if heat_key not in res.views:
        res.views[heat_key] = heatmaps_html(res.rgb, preds, layer)
    polygons = str(coco_format or "").lower().startswith("poly")
    files = viz.write_exports(ctx.workdir.fresh(), preds, overlay, polygons, res.file_name)
    n_empty = sum(p.area == 0 for p in preds)
    n_multi = sum(p.regions > 1 for p in preds)
    status = (f"{len(preds)} expression(s) on a {res.rgb.shape[1]}x{res.rgb.shape[0]} image; "
              + ("model run in " if cached is not None else "re-drawn from the kept result (no model call) in ")
              + f"{time.time() - started:.2f} s"
              + ("" if cached is None else f" (image features {'from the cache' if cached else 'computed'})")
              + f"; threshold {threshold:.2f}, heatmaps of decoder layer {layer + 1}; {len(order)} shown.")
    if n_empty or n_multi:
        status += f" {n_empty} empty, {n_multi} with several regions (see the legend)."
    notes = list(res.notes)
    for i, p in enumerate(preds, 1):
        unk = [t for t, u in zip(p.tokens, p.unknown) if u]
        if unk:
            notes.append(f"{i}: unknown word(s) {', '.join(unk[:8])} (not in the vocabulary)")
        if p.truncated:
            notes.append(f"{i}: cut to {predictor.t_max} words ({len(p.dropped)} dropped)")
    if notes:
        status += "\n\n" + "\n".join(f"- {esc(n)}" for n in notes)
    return (overlay, legend_html(preds, visible), table_of(preds), importance_html(res.ablation, threshold),
            res.views[heat_key], files, status)


def run(ctx: Context, image: Any, text: Any, threshold: float, layer_choice: Any, opacity: float, coco_format: Any,
        measure: Any) -> tuple:
    """Segment: (key, overlay, shown, legend, table, importance, heatmaps, files, status)."""
    start = time.time()
    path = image_file(image, ctx.workdir, ctx.limits)
    rgb, exprs, notes = read_request(ctx.predictor, path, text)
    parse_layer(layer_choice, ctx.predictor.num_layers)
    calls = ctx.predictor.encode_calls
    thr = 0.5 if threshold is None else float(threshold)
    preds = ctx.predictor.predict(rgb, exprs, thr)
    cached = ctx.predictor.encode_calls == calls
    ablation = ctx.predictor.word_ablation(rgb, exprs) if measure else None
    name = os.path.basename(path) if isinstance(path, str) and path else "image.png"
    res = Result(rgb, preds, notes, ablation, file_name=name if "." in name else name + ".png")
    key = ctx.results.put(res)
    choices = [(label_for(i, p.expression, 40), str(i)) for i, p in enumerate(preds, 1)]
    shown = gr.CheckboxGroup(choices=choices, value=[c[1] for c in choices])
    v = views(ctx, key, res, thr, layer_choice, opacity, None, coco_format, start, cached)
    return (key, v[0], shown, *v[1:])


def redraw(ctx: Context, key: Any, threshold: float, layer_choice: Any, opacity: float, shown: Any,
           coco_format: Any) -> tuple:
    """Re-draw the kept result (no model call): same outputs as :func:`run`, key and
    visibility unchanged."""
    start = time.time()
    res = ctx.results.get(key)
    v = views(ctx, key, res, threshold, layer_choice, opacity, shown, coco_format, start)
    return (gr.skip(), v[0], gr.skip(), *v[1:])


# ----------------------------------------------------------------------------- the tab

def example_rows(ctx: Context) -> tuple[list[list[str]], list[str]]:
    """Examples in the model's own words (lines with unknown words dropped) and labels."""
    rows, labels = [], []
    for path, text in read_examples(ctx.examples_dir):
        lines = ctx.info.own_words(text.splitlines())
        if lines:
            rows.append([path, "\n".join(lines)])
            text = " / ".join(lines)
            labels.append(f"{len(rows)}: " + (text if len(text) <= 52 else text[:50].rsplit(" ", 1)[0] + " …"))
    return rows, labels


def build(ctx: Context) -> None:
    """The Segment tab's components and events (inside a ``gr.Tab``)."""
    predictor, info = ctx.predictor, ctx.info
    rows, labels = example_rows(ctx)
    placeholder = rows[0][1] if rows else "\n".join(info.own_words(["the red circle", "the leftmost square"])) \
        or "one expression per line"
    layers = ctx.layers
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            image = gr.Image(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard", "webcam"],
                             elem_id="image", height=260)
            if rows:
                ex_slot = gr.Group()
            text = gr.Textbox(label="Expressions, one per line (Shift+Enter runs)", lines=3, max_lines=12,
                              placeholder=placeholder, elem_id="expressions")
            words = gr.HTML(info.mark(""), elem_id="words")
            run_btn = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Row():
                threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold", elem_id="threshold")
                layer = gr.Dropdown(layers, value=layers[-1], label="Heatmap layer", elem_id="layer")
            with gr.Row():
                opacity = gr.Slider(0.0, 1.0, value=0.25, step=0.05, label="Fill opacity (outlines always)",
                                    elem_id="opacity")
                measure = gr.Checkbox(value=True, label="Measure which words mattered", elem_id="measure")
        with gr.Column(scale=1, min_width=300):
            status = gr.Markdown(elem_id="status")
            overlay = gr.Image(label="Masks: outlines, light fill, numbered", type="numpy", interactive=False,
                               elem_id="overlay", format="png")
            shown = gr.CheckboxGroup([], label="Show", elem_id="shown")
            legend = gr.HTML(elem_id="legend")
    table = gr.Dataframe(headers=TABLE_HEADERS, label="Expressions", interactive=False, wrap=True,
                         elem_id="table", elem_classes=["mmi-table"])
    with gr.Accordion("Which words mattered (mask IoU with each word removed)", open=True):
        importance = gr.HTML(elem_id="importance")
    with gr.Accordion("Per-word attention (heatmaps)", open=True):
        heatmaps = gr.HTML(elem_id="heatmaps")
    with gr.Row():
        coco_format = gr.Radio(["RLE", "polygons"], value="RLE", label="COCO segmentation", elem_id="coco-format",
                               scale=1)
        files = gr.File(label="Downloads: masks.zip (PNG masks, COCO file, overlay), COCO file, overlay PNG",
                        file_count="multiple", elem_id="files", scale=3)
    with gr.Accordion("Use from Python (the API)", open=False, elem_id="api-snippet"):
        gr.Markdown("Every result is also an API call (see also “Use via API” at the bottom of the page).")
        gr.Code(API_SNIPPET.format(url="http://127.0.0.1:7860/"), language="python")
    key = gr.State("")

    outputs = [key, overlay, shown, legend, table, importance, heatmaps, files, status]
    n, at = len(outputs), len(outputs) - 1
    ui = keep_on_error("segmenting", n, at)(functools.partial(run, ctx))
    again = keep_on_error("re-drawing", n, at)(functools.partial(redraw, ctx))
    inputs = [image, text, threshold, layer, opacity, coco_format, measure]
    # preprocess=False: the image arrives as its uploaded file, read by the predictor (see image_file).
    # Events that run the model get their concurrency from webapp.serving.apply_limits (one group).
    run_btn.click(ui, inputs, outputs, api_name="segment_ui", preprocess=False)
    text.submit(ui, inputs, outputs, api_visibility="private", preprocess=False)
    redraw_inputs = [key, threshold, layer, opacity, shown, coco_format]
    redraw_kw = dict(concurrency_limit=4, show_progress="minimal")
    threshold.release(again, redraw_inputs, outputs, api_name="redraw", **redraw_kw)
    for ev in (layer.input, opacity.release, shown.input, coco_format.input):
        ev(again, redraw_inputs, outputs, api_visibility="private", **redraw_kw)
    text.change(info.mark, [text], [words], api_visibility="private", show_progress="hidden",
                trigger_mode="always_last", queue=False)
    if rows:
        with ex_slot:  # right under the image: reachable without scrolling
            ex = gr.Examples(rows, [image, text], example_labels=labels, label="Examples (click one to run it)",
                             examples_per_page=6, elem_id="examples")
        ex.load_input_event.then(ui, inputs, outputs, api_visibility="private", preprocess=False)

    api_out = gr.JSON(visible=False)
    gr.Button(visible=False).click(friendly("segmenting")(functools.partial(segment_json, ctx)),
                                   [image, text, threshold], api_out, api_name="segment",
                                   preprocess=False)
    gr.Button(visible=False).click(friendly("measuring the words")(functools.partial(importance_json, ctx)),
                                   [image, text, threshold], api_out, api_name="word_importance",
                                   preprocess=False)
