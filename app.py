"""The MMI demo: type expressions, see masks and per-word attention.

    python app.py --checkpoint weights/mmi_demo.pt [--host 127.0.0.1] [--port 7860] [--device cpu|cuda]
                  [--results RUN/eval_synref_val.json --data-root data]

A thin layer on :class:`mmi.predictor.Predictor`. Tab "Segment": one image, one expression
per line; an overlay with one colour and legend entry per expression, per-word LAV / VAL
heatmaps of a chosen decoder layer, a table, and the masks to download (PNG per expression
plus one COCO RLE JSON, zipped). Tab "Failure cases": the per-expression results JSON that
``train.py --eval-only`` writes, worst IoU first, with ground truth against prediction.

API: ``/segment`` (image, expressions, threshold) -> JSON (see :func:`segment_json`).
Errors reach the page as short messages; tracebacks go to the server log only.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse
import atexit
import base64
import functools
import json
import logging
import re
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import gradio as gr
import numpy as np
import pandas as pd

from mmi import viz
from mmi.predictor import Prediction, Predictor, display_size, load_image, to_rgb

log = logging.getLogger("mmi.app")
ROOT = os.path.dirname(os.path.abspath(__file__))
EXAMPLES_DIR = os.path.join(ROOT, "assets", "examples")
OVERLAY_SIDE, HEAT_SIDE, MAX_HEATMAPS = 1024, 320, 160
TABLE_HEADERS = ["#", "expression", "tokens (as the model saw them)", "confidence", "area (px)", "area %", "regions"]
FAIL_HEADERS = ["rank", "IoU", "expression", "file_name", "ref_id", "sent_id"]


def image_file(payload: Any, workdir: "Workdir | None" = None) -> str | None:
    """The file of an image input's raw payload (the events run with ``preprocess=False``
    so that an unreadable upload reaches our own message, not PIL's): a path, a FileData
    dict or a ``data:`` URL (written to ``workdir``)."""
    if payload is None or isinstance(payload, str):
        return payload or None
    get = payload.get if isinstance(payload, dict) else lambda k, d=None: getattr(payload, k, d)
    if get("path"):
        return str(get("path"))
    url = get("url") or ""
    if url.startswith("data:") and "," in url:
        folder = workdir.fresh() if workdir else tempfile.mkdtemp(prefix="mmi_app_")
        path = os.path.join(folder, "pasted_image")
        with open(path, "wb") as f:
            f.write(base64.b64decode(url.split(",", 1)[1]))
        return path
    return None


def friendly(action: str) -> Callable:
    """Handler decorator: input errors (ValueError) become gr.Error with their message;
    anything else is logged with its traceback and shown as a short message."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except ValueError as e:
                raise gr.Error(str(e)[:400]) from None
            except MemoryError:
                log.exception("out of memory while %s", action)
                raise gr.Error(f"Out of memory while {action}; try a smaller image or fewer expressions.") from None
            except Exception as e:
                log.exception("error while %s", action)
                raise gr.Error(f"Something went wrong while {action} ({type(e).__name__}); the server log has the details.") from None

        return run

    return wrap


# ----------------------------------------------------------------------------- segmenting

def parse_layer(choice: Any, num_layers: int) -> int:
    """'layer 2', '2' or 2 -> the 0-based layer index (default the last layer)."""
    if choice in (None, ""):
        return num_layers - 1
    m = re.search(r"\d+", str(choice))
    if not m or not 1 <= int(m.group()) <= num_layers:
        raise ValueError(f"decoder layer {choice!r} does not exist; choose 1 to {num_layers}")
    return int(m.group()) - 1


def read_request(predictor: Predictor, image: Any, text: Any) -> tuple[np.ndarray, list[str], list[str]]:
    """(image RGB, expressions, warnings) of a request; ValueError with a message on bad input."""
    if image is None or (isinstance(image, str) and not image):
        raise ValueError("No image: upload, paste or capture an image first.")
    lines = [line.strip() for line in str(text or "").splitlines()]
    if not any(lines):
        raise ValueError("No expression: type at least one expression, one per line.")
    exprs, notes = [], []
    for i, line in enumerate(lines, 1):
        if not line:
            continue
        if not predictor.vocab.encode(line, predictor.t_max).tokens:
            notes.append(f"line {i} ({line[:30]!r}) has no words and was skipped")
            continue
        exprs.append(line)
    if not exprs:
        raise ValueError("None of the lines has a word the model can read (only punctuation or symbols).")
    exprs = predictor.check_expressions(exprs)
    rgb = to_rgb(image) if isinstance(image, np.ndarray) else load_image(image)
    return rgb, exprs, notes


def notes_for(preds: list[Prediction], t_max: int) -> list[str]:
    notes = []
    for i, p in enumerate(preds, 1):
        unk = [t for t, u in zip(p.tokens, p.unknown) if u]
        if unk:
            notes.append(f"{i}: unknown word(s) {', '.join(unk[:8])} (not in the vocabulary)")
        if p.truncated:
            notes.append(f"{i}: cut to {t_max} words ({len(p.dropped)} dropped)")
    return notes


def label_for(i: int, expr: str) -> str:
    return f"{i}. {expr if len(expr) <= 60 else expr[:57] + '...'}"


class Workdir:
    """Per-request folders for downloads under one temporary folder; old ones are pruned."""

    def __init__(self, keep: int = 40):
        self.root = tempfile.mkdtemp(prefix="mmi_app_")
        self.keep, self._lock = keep, threading.Lock()
        atexit.register(shutil.rmtree, self.root, True)

    def fresh(self) -> str:
        with self._lock:
            subs = sorted((os.path.join(self.root, d) for d in os.listdir(self.root)), key=os.path.getmtime)
            for old in subs[: max(0, len(subs) - self.keep + 1)]:
                shutil.rmtree(old, ignore_errors=True)
            return tempfile.mkdtemp(dir=self.root)


def segment_json(predictor: Predictor, image: Any, text: Any, threshold: float, workdir: Workdir | None = None) -> dict:
    """The ``/segment`` API result: ``{"height", "width", "threshold", "layers", "skipped",
    "expressions": [Prediction.to_json()]}`` (masks as COCO RLE at the original size, per
    layer and word the head-averaged LAV / VAL grids)."""
    rgb, exprs, skipped = read_request(predictor, image_file(image, workdir), text)
    threshold = 0.5 if threshold is None else float(threshold)
    preds = predictor.predict(rgb, exprs, threshold)
    return {"height": int(rgb.shape[0]), "width": int(rgb.shape[1]), "threshold": threshold,
            "layers": predictor.num_layers, "skipped": skipped, "expressions": [p.to_json() for p in preds]}


def segment_ui(predictor: Predictor, workdir: Workdir, image: Any, text: Any, threshold: float, layer_choice: Any):
    """The Segment tab's outputs: overlay, heatmap gallery, table, downloads, status."""
    start = time.time()
    rgb, exprs, skipped = read_request(predictor, image_file(image, workdir), text)
    layer = parse_layer(layer_choice, predictor.num_layers)
    calls = predictor.encode_calls
    preds = predictor.predict(rgb, exprs, 0.5 if threshold is None else float(threshold))
    cached = predictor.encode_calls == calls
    hw = display_size(*rgb.shape[:2], OVERLAY_SIDE)
    base = viz.resize_image(rgb, hw)
    labels = [label_for(i, p.expression) for i, p in enumerate(preds, 1)]
    cmap = {lab: viz.hex_color(viz.color(i)) for i, lab in enumerate(labels)}
    annotated = gr.AnnotatedImage(value=(base, [(viz.resize_mask(p.mask, hw).astype(np.float32), lab)
                                                for p, lab in zip(preds, labels)]), color_map=cmap)
    gallery, cut = viz.word_heatmaps(rgb, preds, layer, HEAT_SIDE, MAX_HEATMAPS)
    table = pd.DataFrame([[i, p.expression, p.token_text(), round(p.confidence, 3), p.area,
                           round(100 * p.area / p.mask.size, 2), p.regions] for i, p in enumerate(preds, 1)],
                         columns=TABLE_HEADERS)
    files = viz.write_mask_files(workdir.fresh(), preds)
    notes = skipped + notes_for(preds, predictor.t_max)
    for n in notes:
        gr.Warning(n)
    status = (f"{len(preds)} expression(s) on a {rgb.shape[1]}x{rgb.shape[0]} image in {time.time() - start:.2f} s"
              f" (image features {'from the cache' if cached else 'computed'}); heatmaps of decoder layer {layer + 1}"
              + (f", first {MAX_HEATMAPS} shown" if cut else "") + ".")
    if notes:
        status += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return annotated, gallery, table, files, status


# ----------------------------------------------------------------------------- failure cases

_REFERS: dict[tuple, Any] = {}
_REFERS_LOCK = threading.Lock()


def load_results(path: str) -> tuple[dict, list[dict]]:
    """The evaluation results JSON -> (header, records sorted worst IoU first)."""
    path = (path or "").strip()
    if not path:
        raise ValueError("Give the path of a results JSON (written by train.py --eval-only).")
    if not os.path.isfile(path):
        raise ValueError(f"results file not found: {path}")
    try:
        with open(path, encoding="utf8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable JSON file: {e}") from None
    records = doc.get("records") if isinstance(doc, dict) else doc
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} has no 'records' list (expected the JSON of train.py --eval-only)")
    for i, r in enumerate(records):
        missing = [k for k in ("expression", "iou") if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"{path}: record {i} lacks {missing}")
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


def failure_inputs(rec: dict, header: dict, data_root: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(image RGB, ground truth (H, W) bool or None) of one record."""
    from mmi.data.refer import decode_segmentation

    refer = _refer(data_root, header)
    if refer is not None and rec.get("image_id") is not None and int(rec["image_id"]) in refer.images:
        rgb = refer.load_image(rec["image_id"])
        gt = refer.ref_mask(rec["ref_id"]).astype(bool) if rec.get("ref_id") is not None else None
        return rgb, gt
    name = rec.get("file_name") or ""
    candidates = [os.path.join(data_root or "", name), os.path.join(data_root or "", "images", str(header.get("dataset", "")), name)]
    path = next((c for c in candidates if name and os.path.isfile(c)), None)
    if path is None:
        raise ValueError(f"image {name or '(no file_name)'} not found under the image root {data_root or '(empty)'}")
    rgb = load_image(path)
    seg = next((rec[k] for k in ("gt_rle", "gt", "annotation_rle", "segmentation") if rec.get(k)), None)
    gt = decode_segmentation(seg, *rgb.shape[:2]).astype(bool) if seg is not None else None
    return rgb, gt


def failure_view(predictor: Predictor, records: list[dict], header: dict, choice: Any, data_root: str, layer_choice: Any):
    """Compare image, description and heatmaps of the chosen record."""
    from mmi.data.refer import decode_segmentation

    if not records:
        raise ValueError("Load a results JSON first.")
    m = re.match(r"\s*(\d+)", str(choice or ""))
    if not m or not 1 <= int(m.group(1)) <= len(records):
        raise ValueError("Choose an expression from the list.")
    rank = int(m.group(1))
    rec = records[rank - 1]
    rgb, gt = failure_inputs(rec, header, (data_root or "").strip())
    pred = decode_segmentation(rec["rle"], *rgb.shape[:2]).astype(bool) if rec.get("rle") else None
    thr = float(header.get("threshold", 0.5))
    now = predictor.predict(rgb, [rec["expression"]], thr)
    hw = display_size(*rgb.shape[:2], OVERLAY_SIDE)
    base = viz.resize_image(rgb, hw)
    pred_mask = pred if pred is not None else now[0].mask
    gt_small = viz.resize_mask(gt, hw) if gt is not None else np.zeros(hw, bool)
    compare = viz.compare_masks(base, gt_small, viz.resize_mask(pred_mask, hw))
    gallery, _ = viz.word_heatmaps(rgb, now, parse_layer(layer_choice, predictor.num_layers), HEAT_SIDE)
    text = (f"**#{rank}** IoU {float(rec['iou']):.3f} — “{rec['expression']}” — {rec.get('file_name', '')}\n\n"
            f"green: ground truth{'' if gt is not None else ' (not available)'}; red: prediction"
            f"{' (from the JSON)' if pred is not None else ' (recomputed)'}; yellow: both. "
            f"Tokens now: {now[0].token_text()}; confidence {now[0].confidence:.3f}.")
    if gt is not None:
        inter, union = np.count_nonzero(gt & now[0].mask), np.count_nonzero(gt | now[0].mask)
        text += f" IoU of this checkpoint: {inter / union if union else 0.0:.3f}."
    return compare, text, gallery


def failure_table(path: str):
    header, records = load_results(path)
    rows = [[i, round(float(r["iou"]), 4), r["expression"], r.get("file_name", ""), r.get("ref_id"), r.get("sent_id")]
            for i, r in enumerate(records, 1)]
    choices = [f"{i}. IoU {float(r['iou']):.3f} · {str(r['expression'])[:60]}" for i, r in enumerate(records, 1)]
    return (pd.DataFrame(rows, columns=FAIL_HEADERS), gr.Dropdown(choices=choices, value=choices[0]),
            records, header)


# ----------------------------------------------------------------------------- the app

def read_examples(folder: str = EXAMPLES_DIR) -> list[list[str]]:
    """[[image path, expressions one per line]] from ``<folder>/examples.json`` (a list of
    ``{"file" or "file_name", "expressions"}``)."""
    path = os.path.join(folder, "examples.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf8") as f:
            items = json.load(f)
        rows = [[os.path.join(folder, it.get("file") or it["file_name"]), "\n".join(it["expressions"])] for it in items]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable examples file %s: %s", path, e)
        return []
    return [r for r in rows if os.path.isfile(r[0])]


def build_app(predictor: Predictor, results: str | None = None, data_root: str | None = None,
              examples_dir: str = EXAMPLES_DIR) -> gr.Blocks:
    """The Blocks app around ``predictor`` (launch it with :func:`launch`)."""
    workdir = Workdir()
    layers = [f"layer {i}" for i in range(1, predictor.num_layers + 1)]
    meta = predictor.meta
    about = ", ".join(f"{k} {meta[k]}" for k in ("dataset", "epoch") if meta.get(k) is not None)
    ui = friendly("segmenting")(functools.partial(segment_ui, predictor, workdir))
    api = friendly("segmenting")(functools.partial(segment_json, predictor, workdir=workdir))
    fail_load = friendly("loading the results")(failure_table)
    fail_show = friendly("showing the failure case")(functools.partial(failure_view, predictor))

    with gr.Blocks(title="MMI referring segmentation") as demo:
        gr.Markdown("## MMI: referring image segmentation\nOne expression per line; each gets its own colour. "
                    f"Model input {predictor.image_size} px, at most {predictor.t_max} words per expression"
                    + (f" ({about})." if about else "."))
        with gr.Tab("Segment"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard", "webcam"])
                    text = gr.Textbox(label="Expressions (one per line)", lines=4, placeholder="the red cube on the left",
                                      elem_id="expressions")
                    with gr.Row():
                        threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold")
                        layer = gr.Dropdown(layers, value=layers[-1], label="Decoder layer for the heatmaps")
                    run = gr.Button("Segment", variant="primary", elem_id="run")
                with gr.Column(scale=1):
                    overlay = gr.AnnotatedImage(label="Masks", elem_id="overlay")
                    status = gr.Markdown(elem_id="status")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Expressions", interactive=False, wrap=True)
            gallery = gr.Gallery(label="Per-word attention: LAV (where the word looks) and VAL (which pixels read it)",
                                 columns=6, height="auto", object_fit="contain")
            files = gr.File(label="Masks: PNG per expression and COCO RLE JSON (masks.zip)", file_count="multiple")
            outputs = [overlay, gallery, table, files, status]
            # preprocess=False: the image arrives as its uploaded file, read by the predictor (see image_file)
            run.click(ui, [image, text, threshold, layer], outputs, api_name="segment_ui", concurrency_limit=2,
                      preprocess=False)
            rows = read_examples(examples_dir)
            if rows:
                ex = gr.Examples(rows, [image, text], label="Examples (click one to run it)")
                ex.load_input_event.then(ui, [image, text, threshold, layer], outputs, api_visibility="private",
                                         preprocess=False)
            api_out = gr.JSON(visible=False)
            gr.Button(visible=False).click(api, [image, text, threshold], api_out, api_name="segment", concurrency_limit=2,
                                           preprocess=False)
        with gr.Tab("Failure cases"):
            gr.Markdown("Open the per-expression results JSON of `train.py --eval-only`; expressions are listed worst "
                        "IoU first. Ground truth comes from the dataset under the image root when it is there.")
            with gr.Row():
                res_path = gr.Textbox(value=results or "", label="Results JSON", scale=3)
                root = gr.Textbox(value=data_root or "", label="Data / image root", scale=2)
                load = gr.Button("Load", scale=1)
            records, header = gr.State([]), gr.State({})
            with gr.Row():
                pick = gr.Dropdown([], label="Expression (worst IoU first)", scale=3)
                fail_layer = gr.Dropdown(layers, value=layers[-1], label="Decoder layer", scale=1)
            with gr.Row():
                compare = gr.Image(label="Ground truth (green) against prediction (red)", type="numpy")
                with gr.Column():
                    info = gr.Markdown()
                    fail_gallery = gr.Gallery(label="Per-word attention (recomputed)", columns=4, height="auto")
            fail_tab = gr.Dataframe(headers=FAIL_HEADERS, label="Records", interactive=False)
            load.click(fail_load, [res_path], [fail_tab, pick, records, header], api_name="failures")
            view_inputs = [records, header, pick, root, fail_layer]
            pick.change(fail_show, view_inputs, [compare, info, fail_gallery], api_name="failure_case")
            fail_layer.change(fail_show, view_inputs, [compare, info, fail_gallery], api_visibility="private")

            def select_row(evt: gr.SelectData, recs: list[dict]):
                i = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
                r = recs[int(i)]
                return f"{int(i) + 1}. IoU {float(r['iou']):.3f} · {str(r['expression'])[:60]}"

            fail_tab.select(select_row, [records], pick, api_visibility="private")
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False) -> None:
    """Serve ``demo`` on ``host:port`` (no share link; our own error messages shown)."""
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=host, server_port=port, share=False, show_error=True, prevent_thread_lock=not block,
                max_file_size="250mb", quiet=quiet, footer_links=[])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MMI referring segmentation demo (Gradio).")
    p.add_argument("--checkpoint", default="weights/mmi_demo.pt", help="inference checkpoint (mmi-inference/1)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--results", default=None, help="per-expression results JSON for the failure-case tab")
    p.add_argument("--data-root", default=None, help="data root holding the images of --results")
    p.add_argument("--cache-size", type=int, default=8, help="images whose features are kept")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mmi.engine.checkpoint import CheckpointError

    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.cache_size)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    launch(build_app(predictor, args.results, args.data_root), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
