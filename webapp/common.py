"""What every tab shares: the predictor and what the model knows (:class:`ModelInfo`), the
server-side caches (:class:`Results` of the Segment tab, :class:`Workdir` for downloads),
reading a request and turning errors into messages."""
from __future__ import annotations

import atexit
import base64
import functools
import html
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr
import numpy as np

from mmi import viz
from mmi.predictor import Prediction, Predictor, load_image, to_rgb

log = logging.getLogger("mmi.app")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = os.path.join(ROOT, "assets", "examples")
SHIPPED_RESULTS = os.path.join(ROOT, "assets", "results", "synref_val_shipped.json")
OVERLAY_SIDE, HEAT_SIDE = 1024, 176
# words that carry no content of their own: folded away in the heatmaps by default
FUNCTION_WORDS = frozenset("the a an of to at in on is that which and from with by for it its this".split())

CSS = """
#status .error, .mmi-error { color: #b00020; font-weight: 600; }
.mmi-words mark.unk, .mmi-legend mark.unk { background: #ffd6d6; color: #7a0010; border-radius: 3px; padding: 0 2px; }
.mmi-words .known { color: inherit; }
.mmi-legend { display: flex; flex-direction: column; gap: 4px; }
.mmi-legend .row { display: flex; align-items: flex-start; gap: 8px; line-height: 1.3; }
.mmi-legend .sw, .mmi-heat .sw, .mmi-bars .sw { display: inline-block; min-width: 1.6em; text-align: center; border-radius: 4px;
  font-weight: 700; border: 1px solid #222; padding: 0 3px; }
.mmi-legend .flag { font-size: 0.85em; padding: 0 4px; border-radius: 3px; background: #fff3cd; color: #5c4400; white-space: nowrap; }
.mmi-legend .flag.empty { background: #e8e8e8; color: #333; }
.mmi-legend .hidden-expr { opacity: 0.45; }
.mmi-heat section { border-left: 6px solid; padding-left: 8px; margin: 10px 0; }
.mmi-heat h4 { margin: 2px 0 6px 0; }
.mmi-heat .grid { display: flex; flex-wrap: wrap; gap: 8px; }
.mmi-heat figure { margin: 0; max-width: 100%; }
.mmi-heat figure .pair { display: flex; gap: 2px; }
.mmi-heat figure img { width: 150px; max-width: 48vw; height: auto; display: block; }
.mmi-heat figcaption { font-size: 0.85em; max-width: 302px; overflow-wrap: anywhere; }
.mmi-heat .scale { display: flex; align-items: center; gap: 6px; font-size: 0.85em; flex-wrap: wrap; }
.mmi-heat .scale .bar { width: 180px; height: 12px; border: 1px solid #444; }
.mmi-bars .word { display: grid; grid-template-columns: minmax(4em, 9em) 1fr 7em; gap: 6px; align-items: center; font-size: 0.9em; }
.mmi-bars .track { background: #eee; height: 12px; border-radius: 2px; overflow: hidden; }
.mmi-bars .fill { height: 12px; }
.mmi-bars section { margin: 8px 0; }
.mmi-table table th { word-break: normal !important; overflow-wrap: normal !important; hyphens: none; }
.mmi-table { overflow-x: auto; max-width: 100%; }
@media (max-width: 600px) {
  .gradio-container { padding: 4px !important; }
  .mmi-heat figure img { width: 44vw; }
  .mmi-bars .word { grid-template-columns: 6em 1fr 5.5em; }
}
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def swatch(i: int) -> str:
    """The numbered colour chip of expression ``i`` (1-based), as in the overlay."""
    rgb = viz.color(i - 1)
    ink = "#000" if sum(rgb) > 380 else "#fff"
    return f'<span class="sw" style="background:{viz.hex_color(rgb)};color:{ink}">{i}</span>'


def image_file(payload: Any, workdir: "Workdir | None" = None, limits: "Any | None" = None) -> str | None:
    """The file of an image input's raw payload (the events run with ``preprocess=False``
    so that an unreadable upload reaches our own message, not PIL's): a path, a FileData
    dict or a ``data:`` URL (written to ``workdir``; refused over the upload limit of
    ``limits``, the server's :class:`webapp.serving.Limits`, which Gradio's own check of
    uploaded files does not see)."""
    if payload is None or isinstance(payload, str):
        return payload or None
    get = payload.get if isinstance(payload, dict) else lambda k, d=None: getattr(payload, k, d)
    if get("path"):
        return str(get("path"))
    url = get("url") or ""
    if url.startswith("data:") and "," in url:
        from . import serving

        serving.inline_image_ok(len(url), limits)
        folder = workdir.fresh() if workdir else tempfile.mkdtemp(prefix="mmi_app_")
        path = os.path.join(folder, "pasted_image")
        with open(path, "wb") as f:
            f.write(base64.b64decode(url.split(",", 1)[1]))
        return path
    return None


def message_of(e: BaseException, action: str) -> str:
    """The short message a user sees for an exception (tracebacks go to the log)."""
    if isinstance(e, gr.Error):
        return str(e.message if hasattr(e, "message") else e)[:400]
    if isinstance(e, ValueError):
        return str(e)[:400]
    if isinstance(e, MemoryError):
        log.exception("out of memory while %s", action)
        return f"Out of memory while {action}; try a smaller image or fewer expressions."
    log.exception("error while %s", action)
    return f"Something went wrong while {action} ({type(e).__name__}); the server log has the details."


def friendly(action: str) -> Callable:
    """API handler decorator: any error becomes a gr.Error with a short message."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - every error becomes a message
                raise gr.Error(message_of(e, action)) from None

        return run

    return wrap


def keep_on_error(action: str, n_outputs: int, status_at: int) -> Callable:
    """UI handler decorator: on an error every output keeps its previous value
    (``gr.skip()``) except the status at ``status_at``, which shows the message (it stays
    until the next result), and a warning toast says it too."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                msg = message_of(e, action)
                gr.Warning(msg)
                out = [gr.skip()] * n_outputs
                out[status_at] = f'<span class="mmi-error">Could not finish {esc(action)}:</span> {esc(msg)}' \
                                 "\n\nThe previous result is still shown."
                return tuple(out)

        return run

    return wrap


def parse_layer(choice: Any, num_layers: int) -> int:
    """'layer 2', '2' or 2 -> the 0-based layer index (default the last layer)."""
    if choice in (None, ""):
        return num_layers - 1
    m = re.search(r"\d+", str(choice))
    if not m or not 1 <= int(m.group()) <= num_layers:
        raise ValueError(f"decoder layer {choice!r} does not exist; choose 1 to {num_layers}")
    return int(m.group()) - 1


def read_request(predictor: Predictor, image: Any, text: Any) -> tuple[np.ndarray, list[str], list[str]]:
    """(image RGB, expressions, notes) of a request; ValueError with a message on bad input."""
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


def view_size(h: int, w: int, max_side: int = OVERLAY_SIDE, min_side: int = 560) -> tuple[int, int]:
    """Display size of an image: the longer side at most ``max_side``; small images (the
    synthetic world's 320 px scenes) doubled or more, so outlines and numbers stay legible."""
    from mmi.predictor import display_size

    if max(h, w) >= min_side:
        return display_size(h, w, max_side)
    k = min(4, -(-min_side // max(h, w)))
    return h * k, w * k


def label_for(i: int, expr: str, limit: int = 60) -> str:
    return f"{i}. {expr if len(expr) <= limit else expr[: limit - 3] + '...'}"


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


@dataclass
class Result:
    """A Segment run kept on the server: the image, the predictions at the threshold of
    the run (probabilities and attention inside), and the word-removal maps when measured."""

    rgb: np.ndarray
    preds: list[Prediction]
    notes: list[str]
    ablation: list[dict] | None = None
    file_name: str = "image.png"
    views: dict = field(default_factory=dict)


class Results:
    """The last ``capacity`` Segment results by key (a session keeps only the key), so the
    layer, threshold, opacity and visibility re-render them without running the model."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, result: Result) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = result
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: Any) -> Result:
        with self._lock:
            r = self._items.get(str(key or ""))
            if r is None:
                raise ValueError("No result to re-draw yet (or it has expired): press Segment first.")
            self._items.move_to_end(str(key))
            return r


class ModelInfo:
    """What the loaded model knows: the data set it was trained on and its vocabulary."""

    def __init__(self, predictor: Predictor, checkpoint: str | None = None):
        self.predictor = predictor
        self.meta = predictor.meta
        self.words = sorted(w for w in predictor.vocab.to_list() if w not in ("<pad>", "<unk>"))
        self.known = frozenset(self.words)
        self.dataset = str(self.meta.get("dataset") or "unknown")
        self.synthetic = self.dataset.startswith("synref")
        self.checkpoint = checkpoint

    def unknown(self, text: str) -> list[str]:
        from mmi.text import tokenize

        return [w for w in tokenize(text) if w not in self.known]

    def summary(self) -> str:
        """Markdown: data set, vocabulary size, what to expect, how to load another model."""
        m = self.meta
        bits = [f"trained on **{self.dataset}**"]
        if m.get("epoch") is not None:
            bits.append(f"epoch {m['epoch']}")
        if isinstance(m.get("average_of"), list):
            bits.append(f"the mean of {len(m['average_of'])} runs' weights")
        val = m.get("val") or {}
        if isinstance(val, dict) and val.get("oIoU") is not None:
            bits.append(f"validation oIoU {100 * float(val['oIoU']):.1f} on {val.get('count', '?')} expressions")
        line = (f"**What this model knows:** {', '.join(bits)}; a vocabulary of {len(self.words)} words, "
                f"at most {self.predictor.t_max} words per expression, input {self.predictor.image_size} px"
                + (", computed in bf16." if self.predictor.amp == "bf16" else "."))
        if self.synthetic:
            line += ("\n\n**It knows the synthetic shapes world only** (8 shapes, 8 colours, 3 sizes, 4 fills, "
                     "positions, extremes, ordinals and relations between objects). On photographs, or with words "
                     "outside its vocabulary, its masks mean nothing. To use a model trained on other data: "
                     "`python app.py --checkpoint PATH/TO/model.pt`.")
        else:
            line += "\n\nTo load another model: `python app.py --checkpoint PATH/TO/model.pt`."
        line += " Words the model does not know are marked <mark class='unk'>like this</mark> as you type."
        if self.predictor.regions == "peak":
            line += (" Each mask keeps only its most probable region, as an expression names one object "
                     "(`--regions all` shows every region above the threshold).")
        else:
            line += " Masks show every region above the threshold (`--regions peak` keeps the most probable one)."
        return line

    def vocabulary_markdown(self) -> str:
        return ", ".join(f"`{w}`" for w in self.words)

    def mark(self, text: Any) -> str:
        """HTML: each line's words as the model reads them, unknown ones marked."""
        from mmi.text import tokenize

        lines = [l for l in str(text or "").splitlines() if l.strip()]
        if not lines:
            return '<div class="mmi-words">Type one expression per line; Shift+Enter runs.</div>'
        rows, n_unknown = [], 0
        for i, line in enumerate(lines[:32], 1):
            toks = tokenize(line)
            parts = []
            for t in toks[: self.predictor.t_max]:
                if t in self.known:
                    parts.append(f'<span class="known">{esc(t)}</span>')
                else:
                    n_unknown += 1
                    parts.append(f'<mark class="unk" title="not in the vocabulary">?{esc(t)}</mark>')
            if len(toks) > self.predictor.t_max:
                parts.append(f"<em>[cut {len(toks) - self.predictor.t_max} word(s)]</em>")
            rows.append(f"<div>{i}. {' '.join(parts) or '<em>no words</em>'}</div>")
        head = (f"<div><b>{n_unknown} unknown word(s)</b>: the model reads them as one unknown token.</div>"
                if n_unknown else "<div>All words are in the model's vocabulary.</div>")
        return f'<div class="mmi-words">{head}{"".join(rows)}</div>'

    def own_words(self, expressions: list[str]) -> list[str]:
        """The expressions whose every word the model knows."""
        return [e for e in expressions if e.strip() and not self.unknown(e)]


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


@dataclass
class Context:
    """Everything the tabs share."""

    predictor: Predictor
    info: ModelInfo
    workdir: Workdir
    results: Results
    layers: list[str]
    results_path: str | None = None
    data_root: str | None = None
    examples_dir: str = EXAMPLES_DIR
    on_load: list = field(default_factory=list)  # (fn, inputs, outputs) run when a page opens
    limits: Any = None  # the serving limits (webapp.serving.Limits), set by webapp.launch
