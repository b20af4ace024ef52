"""Run logs: JSON lines in ``<out>/log.jsonl``, TensorBoard when installed, a PNG of the curves.

Every line of ``log.jsonl`` is one JSON object with ``kind`` (``train`` | ``epoch`` | ``val``
| ``event``), ``epoch``, ``step`` (optimiser steps so far) and ``time`` (unix seconds), plus:
train: ``loss``, ``loss_mask``, ``loss_lfr``, ``lr``, ``images_per_s`` (of the step logged),
``window_images_per_s`` and ``data_wait`` (since the previous train line: images/s over its
wall-clock, and the share of it spent waiting for the loader's next batch); epoch: the epoch's mean
losses; val: ``oIoU``, ``mIoU``, ``Prec@X``, ``count``; event: ``message``.
A resumed run appends to the same file; :func:`read_log` keeps the last line per (kind, step).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any


class RunLogger:
    """Appends JSON lines (and TensorBoard scalars when the package is present); a no-op off rank 0."""

    def __init__(self, out_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "log.jsonl")
        self.tb = None
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            try:  # optional: TensorBoard is not a dependency
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except Exception:  # ImportError, or tensorboard missing underneath
                self.tb = None

    def log(self, kind: str, epoch: int, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "epoch": int(epoch), "step": int(step), "time": round(time.time(), 3)}
        for k, v in values.items():
            rec[k] = _json_value(v)
        with open(self.path, "a", encoding="utf8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("kind", "epoch", "step", "time") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _json_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no nan/inf
    return v


def read_log(path: str) -> list[dict]:
    """The records of a log.jsonl; for a resumed run, the last record of each (kind, step, epoch)
    wins. Raises ValueError naming the line when one is not JSON."""
    records: dict[tuple, dict] = {}
    with open(path, encoding="utf8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line: {e}") from None
            key = (rec.get("kind"), rec.get("step"), rec.get("epoch"), rec.get("message"))
            records.pop(key, None)
            records[key] = rec
    return sorted(records.values(), key=lambda r: (r.get("step", 0), r.get("time", 0)))


def plot_curves(log_path: str, out_png: str) -> str:
    """Loss (per logged step) and validation oIoU / mIoU (per epoch) from ``log_path`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_log(log_path)
    train = [r for r in recs if r["kind"] == "train" and isinstance(r.get("loss"), (int, float))]
    val = [r for r in recs if r["kind"] == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], label="loss", lw=1)
        if all(isinstance(r.get("loss_mask"), (int, float)) for r in train):
            ax.plot(steps, [r["loss_mask"] for r in train], label="mask BCE", lw=1)
        # a run without LFR (lfr off, or refine_only) logs 0: no line for it
        if all(isinstance(r.get("loss_lfr"), (int, float)) for r in train) and any(r["loss_lfr"] for r in train):
            ax.plot(steps, [r["loss_lfr"] for r in train], label="LFR", lw=1)
        ax.legend()
    ax.set_xlabel("step")
    ax.set_title("training loss")
    ax = axes[1]
    if val:
        epochs = [r["epoch"] for r in val]
        for key, style in (("oIoU", "o-"), ("mIoU", "s-"), ("Prec@0.5", "^--")):
            ax.plot(epochs, [100 * r[key] for r in val], style, label=key, ms=3)
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title("validation")
    fig.tight_layout()
    tmp = out_png + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
