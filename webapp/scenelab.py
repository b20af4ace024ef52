"""The Scene lab tab: a fresh scene of the synthetic world, checked with the world's own
resolver.

A scene is a pure function of (seed, objects, count, unseen pairs): the world's sampler
(:func:`mmi.data.synthetic.sample_scene`) with the split that has those properties
(sparse = testB's 3-5 objects, crowded = testA's 7-9, unseen colour-shape pairs =
compositional). Each typed expression gets a verdict (:func:`mmi.data.synthetic.parse.check`):
the object it names, ambiguous, names no object, or outside the grammar; the model's mask is
drawn beside the ground truth, with the IoU where the expression names one object.
Clicking an object lists the shortest expression of each type the generator would write
for it. APIs: ``/lab_scene``, ``/lab_check``, ``/lab_object``.
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Any

import cv2
import gradio as gr
import numpy as np
import pandas as pd

from mmi import viz
from mmi.data.synthetic import describe_scene, render, sample_scene
from mmi.data.synthetic.parse import check, describe, shortest_expressions
from mmi.data.synthetic.scene import HELD_OUT

from .common import Context, esc, friendly, keep_on_error, swatch, view_size

DENSITIES = {"any (3-9 objects)": ("val", (3, 9)), "sparse (3-5)": ("testB", (3, 5)), "crowded (7-9)": ("testA", (7, 9))}
VERDICT_HEADERS = ["#", "expression", "verdict", "IoU"]
WIDTH, HEIGHT = 320, 240
_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
_LOCK = threading.Lock()


def lab_scene(seed: Any, density: Any, count: Any, unseen: Any):
    """(scene, image (H, W, 3), masks (N, H, W)) for the lab's settings (cached)."""
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"the seed must be a whole number, got {seed!r}") from None
    if not 0 <= seed < 2 ** 31:
        raise ValueError("the seed must lie in 0 .. 2147483647")
    if density not in DENSITIES:
        density = next(iter(DENSITIES))
    split, (lo, hi) = DENSITIES[density]
    if unseen:
        split = "compositional"
    count = int(count or 0)
    if count and not lo <= count <= hi:
        raise ValueError(f"{density} scenes hold {lo} to {hi} objects; choose a count in that range or 0 (any)")
    key = (seed, split, lo, hi, count)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    for attempt in range(300):
        rng = np.random.default_rng([seed, attempt])
        scene = sample_scene(rng, WIDTH, HEIGHT, split)
        if lo <= len(scene.objects) <= hi and (not count or len(scene.objects) == count):
            break
    else:
        raise ValueError(f"no {density} scene with {count} objects found for seed {seed}; try another seed or count")
    image, masks = render(scene)
    with _LOCK:
        _CACHE[key] = (scene, image, masks)
        while len(_CACHE) > 32:
            _CACHE.popitem(last=False)
    return scene, image, masks


def suggested(scene, seed: int, n: int = 4) -> list[str]:
    """Expressions the generator writes for this scene (one per referred object first)."""
    refs = describe_scene(scene, np.random.default_rng([seed, 7]))
    out: list[str] = []
    for depth in range(3):
        for _, exprs in refs:
            if depth < len(exprs) and len(out) < n:
                out.append(exprs[depth].text)
    return out


def big(image: np.ndarray, masks: np.ndarray | None = None):
    """The scene (and masks) at display size (small scenes enlarged, see view_size)."""
    hw = view_size(*image.shape[:2])
    if masks is None:
        return viz.resize_image(image, hw)
    return viz.resize_image(image, hw), np.stack([viz.resize_mask(m, hw) for m in masks]) if len(masks) else masks


def numbered(scene, image: np.ndarray) -> np.ndarray:
    """The (display-size) scene with each object's number (z + 1) at the top left of its box,
    white on black, for the verdicts ("names object 3")."""
    out = image.copy()
    k = image.shape[1] / scene.width
    scale = max(0.45, image.shape[1] / 1300)
    th = max(1, int(round(scale * 2)))
    for o in scene.objects:
        text = f"#{o.z + 1}"
        (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
        x0 = int(np.clip(o.box[0] * k - 4, 0, out.shape[1] - tw - 4))
        y0 = int(np.clip(o.box[1] * k - 4, 0, out.shape[0] - tht - base - 4))
        cv2.rectangle(out, (x0, y0), (x0 + tw + 4, y0 + tht + base + 4), (0, 0, 0), -1)
        cv2.putText(out, text, (x0 + 2, y0 + tht + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th, cv2.LINE_AA)
    return out


def new_scene(seed: Any, density: Any, count: Any, unseen: Any) -> tuple:
    """(scene image, numbered image, suggested expressions, description)."""
    scene, image, masks = lab_scene(seed, density, count, unseen)
    held = [f"{scene.objects[z].colour} {scene.objects[z].shape}" for z in scene.held_out]
    about = (f"Scene of seed {int(seed)}: {len(scene.objects)} objects, {scene.width}x{scene.height} px"
             + (f"; colour-shape pairs never seen in training: {', '.join(held)}" if held else "")
             + ". Click an object to see how the generator would name it.")
    return big(image), numbered(scene, big(image)), "\n".join(suggested(scene, int(seed))), about


def check_scene(ctx: Context, seed: Any, density: Any, count: Any, unseen: Any, text: Any, threshold: Any) -> tuple:
    """(truth image, prediction image, verdict table, summary) of the typed expressions."""
    scene, image, masks = lab_scene(seed, density, count, unseen)
    lines = [l.strip() for l in str(text or "").splitlines() if l.strip()]
    if not lines:
        raise ValueError("No expression: type at least one expression, one per line.")
    thr = 0.5 if threshold is None else float(threshold)
    readable = [l for l in lines if ctx.predictor.vocab.encode(l, ctx.predictor.t_max).tokens]
    preds = {l: p for l, p in zip(readable, ctx.predictor.predict(image, readable, thr, attention=False))} \
        if readable else {}
    truth_masks, truth_colors, truth_dash, truth_labels, rows = [], [], [], [], []
    for i, line in enumerate(lines, 1):
        v = check(scene, line)
        colour = viz.color(i - 1)
        for z in v.objects:
            truth_masks.append(masks[z]), truth_colors.append(colour)
            truth_dash.append(v.kind != "unique"), truth_labels.append(str(i))
        p = preds.get(line)
        iou = ""
        if v.kind == "unique" and p is not None:
            gt = masks[v.objects[0]]
            union = np.count_nonzero(gt | p.mask)
            iou = round(float(np.count_nonzero(gt & p.mask) / union) if union else 0.0, 3)
        rows.append([i, line, v.message, iou])
    shown = big(image)
    hw = shown.shape[:2]
    truth = viz.draw_masks(numbered(scene, shown), [viz.resize_mask(m, hw) for m in truth_masks], truth_colors,
                           fill=0.2, labels=truth_labels, dashed=truth_dash)
    order = [i for i, l in enumerate(lines, 1) if l in preds]
    pred_img = viz.draw_masks(shown, [viz.resize_mask(preds[lines[i - 1]].mask, hw) for i in order],
                              [viz.color(i - 1) for i in order], fill=0.25, labels=[str(i) for i in order])
    kinds = [r[2] for r in rows]
    unique = [r for r in rows if r[3] != ""]
    summary = (f"{len(lines)} expression(s): {sum(k.startswith('names object') for k in kinds)} name one object, "
               f"{sum(k.startswith('ambiguous') for k in kinds)} ambiguous, "
               f"{sum(k.startswith('names no object') for k in kinds)} name no object, "
               f"{sum(k.startswith('outside') for k in kinds)} outside the grammar."
               + (f" Mean IoU where the truth is one object: {np.mean([r[3] for r in unique]):.3f}." if unique else "")
               + " Truth: solid outline = the object named; dashed = every object an ambiguous expression matches.")
    legend = "".join(f"<div>{swatch(r[0])} {esc(r[1])} — <b>{esc(r[2])}</b>"
                     + (f" · IoU {r[3]:.3f}" if r[3] != "" else "") + "</div>" for r in rows)
    return truth, pred_img, pd.DataFrame(rows, columns=VERDICT_HEADERS), summary, \
        f'<div class="mmi-legend" id="lab-legend">{legend}</div>'


def object_at(seed: Any, density: Any, count: Any, unseen: Any, x: Any, y: Any) -> str:
    """Markdown: the object at pixel (x, y) of the scene (its own size, not the enlarged
    view) and the shortest expression of each type."""
    scene, image, masks = lab_scene(seed, density, count, unseen)
    x, y = int(x), int(y)
    if not (0 <= x < scene.width and 0 <= y < scene.height):
        raise ValueError(f"({x}, {y}) is outside the {scene.width}x{scene.height} scene")
    hit = [z for z in range(len(masks)) if masks[z][y, x]]
    if not hit:  # the nearest object centre within its size
        d = [((o.cx - x) ** 2 + (o.cy - y) ** 2) ** 0.5 / o.scale for o in scene.objects]
        if min(d) > 1.5:
            return "No object there: click on a shape."
        hit = [int(np.argmin(d))]
    z = hit[-1]
    exprs = shortest_expressions(scene, z)
    held = " (a colour-shape pair never seen in training)" if scene.objects[z].combo in set(HELD_OUT) else ""
    lines = [f"**Object {z + 1}**: {describe(scene, z)}{held}. Shortest expressions the generator would write:"]
    lines += [f"- *{k}*: “{t}”" for k, t in exprs.items()] or ["- none: no expression names it unambiguously"]
    return "\n".join(lines)


def build(ctx: Context) -> None:
    gr.Markdown("A fresh scene from the synthetic world the model was trained on, with ground truth. Type "
                "expressions (one per line): each gets the world's verdict (the object it names, ambiguous, "
                "names no object, or outside the world's grammar), and the model's mask beside the truth.")
    with gr.Row():
        seed = gr.Number(value=1, precision=0, label="Seed", elem_id="lab-seed", minimum=0)
        density = gr.Radio(list(DENSITIES), value=next(iter(DENSITIES)), label="Objects", elem_id="lab-density")
        count = gr.Slider(0, 9, value=0, step=1, label="Exact count (0 = any)", elem_id="lab-count")
        unseen = gr.Checkbox(value=False, label="Unseen colour-shape pairs", elem_id="lab-unseen")
        make = gr.Button("New scene", elem_id="lab-new")
    about = gr.Markdown(elem_id="lab-about")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            scene_img = gr.Image(label="Scene (click an object)", type="numpy", interactive=False, elem_id="lab-scene")
            clicked = gr.Markdown(elem_id="lab-click")
        with gr.Column(scale=1, min_width=300):
            text = gr.Textbox(label="Expressions, one per line (Shift+Enter checks)", lines=4, elem_id="lab-expressions")
            threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold")
            go = gr.Button("Check and segment", variant="primary", elem_id="lab-check")
            status = gr.Markdown(elem_id="lab-status")
            legend = gr.HTML(elem_id="lab-verdicts-html")
    with gr.Row(equal_height=False):
        truth = gr.Image(label="Ground truth (numbers = objects; solid: named, dashed: ambiguous)", type="numpy",
                         interactive=False, elem_id="lab-truth", min_width=300)
        pred = gr.Image(label="Model's masks", type="numpy", interactive=False, elem_id="lab-pred", min_width=300)
    table = gr.Dataframe(headers=VERDICT_HEADERS, label="Verdicts", interactive=False, wrap=True,
                         elem_id="lab-verdicts", elem_classes=["mmi-table"])
    settings = [seed, density, count, unseen]

    scene_out = [scene_img, truth, text, about]
    make_ui = keep_on_error("making the scene", len(scene_out), len(scene_out) - 1)(new_scene)
    make.click(make_ui, settings, scene_out, api_name="lab_scene")
    check_out = [truth, pred, table, status, legend]
    check_ui = keep_on_error("checking the expressions", len(check_out), 3)(functools.partial(check_scene, ctx))
    go.click(check_ui, settings + [text, threshold], check_out, api_name="lab_check")
    text.submit(check_ui, settings + [text, threshold], check_out, api_visibility="private")

    def on_select(s, d, c, u, evt: gr.SelectData):
        x, y = evt.index if isinstance(evt.index, (list, tuple)) else (0, 0)
        scene, image, _ = lab_scene(s, d, c, u)
        k = view_size(*image.shape[:2])[1] / scene.width  # the scene is shown enlarged
        return object_at(s, d, c, u, float(x) / k, float(y) / k)

    scene_img.select(keep_on_error("finding the object", 1, 0)(on_select), settings, clicked, api_visibility="private")
    hidden_x, hidden_y = gr.Number(visible=False), gr.Number(visible=False)
    gr.Button(visible=False).click(friendly("finding the object")(object_at), settings + [hidden_x, hidden_y], clicked,
                                   api_name="lab_object")
    first = next(iter(DENSITIES))
    ctx.on_load.append((lambda: make_ui(1, first, 0, False), None, scene_out))
