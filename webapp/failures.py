"""The Failure cases tab: the per-expression results of ``train.py --eval-only``, worst IoU
first, filtered by expression type and IoU range; ground truth and prediction as outlines
in colour-blind-safe colours (blue-cyan solid, orange dashed), the view beside the list.

Results come from an upload, from ``--results``, or by default from the shipped model's own
validation results (``assets/results/synref_val_shipped.json``, written by
``scripts/ship_results.py``). Images and ground truth: from the dataset under the data root
when it is there; else, for the synthetic world, regenerated from the seed recorded in the
results (the world is a pure function of (seed, index)), with the ground truth mask stored
in the record. APIs: ``/failures`` (upload), ``/failures_shipped``, ``/failures_filter``,
``/failure_case``.
"""
from __future__ import annotations

import functools
import json
import os
import re
import threading
from typing import Any

import cv2
import gradio as gr
import numpy as np
import pandas as pd

from mmi import viz
from mmi.predictor import load_image

from .common import SHIPPED_RESULTS, Context, esc, friendly, log, parse_layer, view_size
from .segment import heatmaps_html

FAIL_HEADERS = ["rank", "IoU", "type", "expression"]
_REFERS: dict[tuple, Any] = {}
_REFERS_LOCK = threading.Lock()
_SYNTH: dict[tuple, Any] = {}
SYNTH_NAME = re.compile(r"^(?P<name>synref[\w\-]*)_(?P<index>\d+)\.(?P<ext>jpg|png)$")


def load_results(path: Any) -> tuple[dict, list[dict]]:
    """The evaluation results JSON -> (header, records sorted worst IoU first)."""
    if isinstance(path, dict):
        path = path.get("path")
    path = str(path or "").strip()
    if not path:
        raise ValueError("Choose a results JSON (written by train.py --eval-only) to open.")
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"results file not found: {path}")
    try:
        with open(path, encoding="utf8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{name} is not a readable JSON file: {str(e)[:200]}") from None
    records = doc.get("records") if isinstance(doc, dict) else doc
    if not isinstance(records, list) or not records:
        raise ValueError(f"{name} has no 'records' list (expected the JSON of train.py --eval-only)")
    for i, r in enumerate(records):
        missing = [k for k in ("expression", "iou") if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"{name}: record {i} lacks {missing}")
        try:
            float(r["iou"])
        except (TypeError, ValueError):
            raise ValueError(f"{name}: record {i} has a non-numeric IoU {r['iou']!r}") from None
    header = {k: v for k, v in doc.items() if k != "records"} if isinstance(doc, dict) else {}
    return header, sorted(records, key=lambda r: (float(r["iou"]), str(r["expression"])))


def _refer(data_root: str, header: dict):
    """The dataset's Refer loader (cached) or None when the header/root do not give one."""
    if not data_root or not header.get("dataset"):
        return None
    key = (os.path.abspath(data_root), header["dataset"], header.get("split_by"))
    with _REFERS_LOCK:
        if key not in _REFERS:
            from mmi.data.refer import DatasetError, Refer

            try:
                _REFERS[key] = Refer(data_root, header["dataset"], header.get("split_by"))
            except DatasetError as e:
                log.info("no refer loader for %s: %s", key, e)
                _REFERS[key] = None
        return _REFERS[key]


def regenerate(header: dict, file_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, visible masks) of a synthetic image, regenerated from the seed and config in
    the results header (``synthetic``) and the index in its file name; None when the header
    does not say how. JPEG images go through the same encoder, so the pixels equal the file's."""
    synth = header.get("synthetic") if isinstance(header, dict) else None
    m = SYNTH_NAME.match(os.path.basename(file_name or ""))
    if not isinstance(synth, dict) or "seed" not in synth or not m:
        return None
    from mmi.data.synthetic import SynthConfig, generate_image
    from mmi.data.synthetic.exporter import encode_image

    fields = {k: v for k, v in (synth.get("config") or {}).items() if k in SynthConfig.__dataclass_fields__}
    config = SynthConfig(**fields)
    key = (int(synth["seed"]), int(m.group("index")), config)
    with _REFERS_LOCK:
        hit = _SYNTH.get(key)
    if hit is not None:
        return hit
    g = generate_image(int(synth["seed"]), int(m.group("index")), config)
    if g.file_name != os.path.basename(file_name):
        raise ValueError(f"regenerating {file_name} gave {g.file_name}: the results header's config does not match")
    data = np.frombuffer(encode_image(g.image, config), np.uint8)
    image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with _REFERS_LOCK:
        if len(_SYNTH) > 16:
            _SYNTH.clear()
        _SYNTH[key] = (image, g.masks)
    return image, g.masks


def failure_inputs(rec: dict, header: dict, data_root: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(image RGB, ground truth (H, W) bool or None) of one record: the dataset under
    ``data_root``, an image file there, or the synthetic world regenerated by seed."""
    from mmi.data.refer import decode_segmentation

    seg = next((rec[k] for k in ("gt_rle", "gt", "annotation_rle", "segmentation") if rec.get(k)), None)
    refer = _refer(data_root, header)
    if refer is not None and rec.get("image_id") is not None and int(rec["image_id"]) in refer.images:
        rgb = refer.load_image(rec["image_id"])
        gt = refer.ref_mask(rec["ref_id"]).astype(bool) if rec.get("ref_id") is not None else None
        return rgb, gt
    name = rec.get("file_name") or ""
    candidates = [os.path.join(data_root or "", name),
                  os.path.join(data_root or "", "images", str(header.get("dataset", "")), name)]
    path = next((c for c in candidates if name and data_root and os.path.isfile(c)), None)
    if path is not None:
        rgb = load_image(path)
        gt = decode_segmentation(seg, *rgb.shape[:2]).astype(bool) if seg is not None else None
        return rgb, gt
    made = regenerate(header, name)
    if made is not None:
        rgb, masks = made
        if seg is not None:
            gt = decode_segmentation(seg, *rgb.shape[:2]).astype(bool)
        elif rec.get("ann_id") is not None and 0 <= int(rec["ann_id"]) % 100 < len(masks):
            gt = masks[int(rec["ann_id"]) % 100]
        else:
            gt = None
        return rgb, gt
    raise ValueError(f"image {name or '(no file_name)'} not found under the image root {data_root or '(none given)'}, "
                     "and the results file has no synthetic seed to regenerate it")


def filtered(records: list[dict], types: Any, lo: Any, hi: Any) -> list[tuple[int, dict]]:
    """(rank in the whole list, record) of the records of the chosen types within [lo, hi]."""
    lo = 0.0 if lo is None else float(lo)
    hi = 1.0 if hi is None else float(hi)
    if lo > hi:
        lo, hi = hi, lo
    chosen = set(types or [])
    return [(i, r) for i, r in enumerate(records, 1)
            if lo - 1e-9 <= float(r["iou"]) <= hi + 1e-9 and (not chosen or str(r.get("type", "(none)")) in chosen)]


def choice_of(rank: int, r: dict) -> str:
    return f"{rank}. IoU {float(r['iou']):.3f} · {r.get('type', '')} · {str(r['expression'])[:60]}"


def list_view(records: list[dict], types: Any, lo: Any, hi: Any) -> tuple:
    rows = filtered(records, types, lo, hi)
    table = pd.DataFrame([[i, round(float(r["iou"]), 4), r.get("type", ""), r["expression"]] for i, r in rows],
                         columns=FAIL_HEADERS)
    choices = [choice_of(i, r) for i, r in rows]
    pick = gr.Dropdown(choices=choices, value=choices[0] if choices else None)
    return table, pick, f"{len(rows)} of {len(records)} expressions match the filter."


def open_results(path: Any) -> tuple:
    """(table, pick, records, header, types, summary) of a results file."""
    header, records = load_results(path)
    types = sorted({str(r.get("type", "(none)")) for r in records})
    table, pick, count = list_view(records, [], 0.0, 1.0)
    name = os.path.basename(str(path.get("path") if isinstance(path, dict) else path))
    metrics = header.get("totals") or header.get("metrics") or {}
    about = f"**{esc(name)}**: {header.get('dataset', '?')} / {header.get('split', '?')}, {len(records)} expressions"
    if header.get("evaluated") and header["evaluated"] != len(records):
        about += f" (of {header['evaluated']} evaluated)"
    if isinstance(metrics, dict) and metrics.get("oIoU") is not None:
        about += f"; oIoU {100 * float(metrics['oIoU']):.2f}, mIoU {100 * float(metrics.get('mIoU', 0)):.2f}"
    if header.get("checkpoint"):
        about += f"; checkpoint {esc(os.path.basename(str(header['checkpoint'])))}"
    return table, pick, records, header, gr.CheckboxGroup(choices=types, value=[]), about + ". " + count


def failure_view(ctx: Context, records: list[dict], header: dict, choice: Any, data_root: Any, layer_choice: Any):
    """(truth against prediction, description, heatmaps) of the chosen record."""
    from mmi.data.refer import decode_segmentation

    if not records:
        raise ValueError("Open a results JSON first.")
    m = re.match(r"\s*(\d+)", str(choice or ""))
    if not m or not 1 <= int(m.group(1)) <= len(records):
        raise ValueError("Choose an expression from the list.")
    rank = int(m.group(1))
    rec = records[rank - 1]
    rgb, gt = failure_inputs(rec, header or {}, str(data_root or ctx.data_root or "").strip())
    pred = decode_segmentation(rec["rle"], *rgb.shape[:2]).astype(bool) if rec.get("rle") else None
    thr = float((header or {}).get("threshold", 0.5))
    now = ctx.predictor.predict(rgb, [rec["expression"]], thr, regions=(header or {}).get("regions", "all"))
    hw = view_size(*rgb.shape[:2])
    base = viz.resize_image(rgb, hw)
    pred_mask = pred if pred is not None else now[0].mask
    compare = viz.truth_and_prediction(base, viz.resize_mask(gt, hw) if gt is not None else None,
                                       viz.resize_mask(pred_mask, hw))
    heat = heatmaps_html(rgb, now, parse_layer(layer_choice, ctx.predictor.num_layers))
    text = (f"**#{rank}** IoU {float(rec['iou']):.3f} — *{rec.get('type', '')}* — “{esc(rec['expression'])}” — "
            f"{esc(rec.get('file_name', ''))}\n\n"
            f"<span style='color:{viz.hex_color(viz.TRUTH_COLOR)}'>■</span> solid blue-cyan: ground truth"
            f"{'' if gt is not None else ' (not available)'}; "
            f"<span style='color:{viz.hex_color(viz.PREDICTION_COLOR)}'>■</span> dashed orange: prediction"
            f"{' (from the results file)' if pred is not None else ' (recomputed)'}. "
            f"Words now: {esc(now[0].token_text())}; confidence {now[0].confidence:.3f}.")
    if gt is not None:
        inter, union = np.count_nonzero(gt & now[0].mask), np.count_nonzero(gt | now[0].mask)
        text += f" IoU of this checkpoint: {inter / union if union else 0.0:.3f}."
    if (header or {}).get("flip"):
        text += (" The results file averaged each prediction with its mirrored view (`--flip`); what is "
                 "recomputed here, the words, confidence, IoU and attention, is the plain view's.")
    return compare, text, heat


def build(ctx: Context) -> None:
    layers = ctx.layers
    default = ctx.results_path or (SHIPPED_RESULTS if os.path.isfile(SHIPPED_RESULTS) else None)
    gr.Markdown("The per-expression results of `train.py --eval-only`, worst IoU first. The shipped model's own "
                "validation results open by default; upload another results file to explore it.")
    with gr.Row():
        upload = gr.File(label="Results JSON (upload)", file_types=[".json"], type="filepath", elem_id="fail-upload",
                         scale=2, height=110)
        shipped = gr.Button("Open the shipped model's validation results", elem_id="fail-shipped", scale=1)
    with gr.Accordion("Images from a data folder on the server (optional)", open=False):
        root = gr.Textbox(value=ctx.data_root or "", label="Data / image root (synthetic results need none)")
    summary = gr.Markdown(elem_id="fail-summary")
    with gr.Row():
        types = gr.CheckboxGroup([], label="Expression types (none ticked = all)", elem_id="fail-types", scale=2)
        lo = gr.Slider(0, 1, value=0, step=0.05, label="IoU from", elem_id="fail-lo", scale=1)
        hi = gr.Slider(0, 1, value=1, step=0.05, label="IoU to", elem_id="fail-hi", scale=1)
    records, header = gr.State([]), gr.State({})
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            pick = gr.Dropdown([], label="Expression (worst IoU first)", elem_id="fail-pick")
            fail_tab = gr.Dataframe(headers=FAIL_HEADERS, label="Records (click a row)", interactive=False, wrap=True,
                                    elem_id="fail-table", elem_classes=["mmi-table"], max_height=520)
        with gr.Column(scale=1, min_width=300):
            compare = gr.Image(label="Ground truth (solid blue-cyan) and prediction (dashed orange)", type="numpy",
                               interactive=False, elem_id="fail-view")
            info = gr.Markdown(elem_id="fail-info")
            fail_layer = gr.Dropdown(layers, value=layers[-1], label="Heatmap layer")
            with gr.Accordion("Per-word attention (recomputed)", open=False):
                heat = gr.HTML(elem_id="fail-heatmaps")

    load_out = [fail_tab, pick, records, header, types, summary]
    load_ui = friendly("opening the results")(open_results)
    upload.upload(load_ui, [upload], load_out, api_name="failures")
    shipped.click(lambda: load_ui(default), None, load_out, api_name="failures_shipped")
    filt = friendly("filtering")(list_view)
    for ev in (types.input, lo.release, hi.release):
        ev(filt, [records, types, lo, hi], [fail_tab, pick, summary], api_visibility="private")
    gr.Button(visible=False).click(filt, [records, types, lo, hi], [fail_tab, pick, summary], api_name="failures_filter")
    show = friendly("showing the failure case")(functools.partial(failure_view, ctx))
    view_inputs = [records, header, pick, root, fail_layer]
    pick.change(show, view_inputs, [compare, info, heat], api_name="failure_case")
    fail_layer.input(show, view_inputs, [compare, info, heat], api_visibility="private")

    def select_row(evt: gr.SelectData, table: Any, recs: list[dict]):
        i = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        rank = int(table.iloc[int(i), 0]) if hasattr(table, "iloc") else int(table["data"][int(i)][0])
        return choice_of(rank, recs[rank - 1])

    fail_tab.select(select_row, [fail_tab, records], pick, api_visibility="private")
    if default:
        ctx.on_load.append((lambda: load_ui(default), None, load_out))
