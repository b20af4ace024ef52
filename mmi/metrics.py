"""Referring-segmentation metrics: overall IoU, mean IoU and Prec@X.

Definitions (the same words are written into every results JSON, see ``DEFINITIONS``):

- per expression: I = |pred AND gt|, U = |pred OR gt| in pixels at the original image
  resolution; IoU = I / U, and IoU = 0 when U = 0 (both masks empty);
- overall IoU (oIoU) = sum of I / sum of U over all expressions (LAVT, ReLA);
- mean IoU (mIoU) = mean of the per-expression IoU (VLT, MCN, CRIS);
- Prec@X = share of expressions with IoU >= X, for X in 0.5, 0.6, 0.7, 0.8, 0.9.

All values are fractions in [0, 1]; tables print them as percentages.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

PREC_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)

DEFINITIONS: dict[str, str] = {
    "IoU": "per expression: |pred AND gt| / |pred OR gt| in pixels at the original image resolution; "
           "0 when the union is empty",
    "oIoU": "overall IoU: sum of intersections / sum of unions over all expressions",
    "mIoU": "mean IoU: mean of the per-expression IoU (an empty union counts as 0)",
    "Prec@X": "share of expressions with IoU >= X",
    "pred": "pixel is foreground when sigmoid(logit) > threshold, after bilinear upsampling of the logits "
            "to the S x S canvas and undoing the letterbox",
    "scale": "all values are fractions in [0, 1]",
}


def intersection_union(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """Pixel counts (I, U) of two binary masks of the same (H, W) shape (nonzero = foreground)."""
    if isinstance(pred, torch.Tensor):
        pred = pred.detach().cpu().numpy()
    if isinstance(gt, torch.Tensor):
        gt = gt.detach().cpu().numpy()
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def iou(intersection: int, union: int) -> float:
    """I / U, 0.0 when U = 0."""
    return float(intersection) / float(union) if union > 0 else 0.0


def prec_key(x: float) -> str:
    """``Prec@0.5`` etc."""
    return f"Prec@{x:g}"


def summarize(intersections: Sequence[int], unions: Sequence[int],
              thresholds: Sequence[float] = PREC_THRESHOLDS) -> dict[str, float]:
    """Totals of per-expression (I, U) pairs: ``count``, ``oIoU``, ``mIoU`` and ``Prec@X``
    (see the module docstring). No expressions: every metric is 0.0 and count 0."""
    inter = np.asarray(intersections, dtype=np.float64)
    union = np.asarray(unions, dtype=np.float64)
    if inter.shape != union.shape or inter.ndim != 1:
        raise ValueError(f"intersections {inter.shape} and unions {union.shape} must be equal-length 1-D")
    if np.any(inter > union) or np.any(inter < 0):
        raise ValueError("every intersection must lie in [0, union]")
    n = int(inter.size)
    ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    out: dict[str, float] = {
        "count": n,
        "oIoU": float(inter.sum() / union.sum()) if union.sum() > 0 else 0.0,
        "mIoU": float(ious.mean()) if n else 0.0,
    }
    for x in thresholds:
        out[prec_key(x)] = float(np.count_nonzero(ious >= x) / n) if n else 0.0
    return out


class IoUAccumulator:
    """Collects per-expression (I, U) and summarises them, optionally per group (e.g. expression type)."""

    def __init__(self, thresholds: Sequence[float] = PREC_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.inter: list[int] = []
        self.union: list[int] = []
        self.groups: list[str | None] = []

    def __len__(self) -> int:
        return len(self.inter)

    def add(self, intersection: int, union: int, group: str | None = None) -> float:
        """Record one expression; returns its IoU."""
        self.inter.append(int(intersection))
        self.union.append(int(union))
        self.groups.append(group)
        return iou(intersection, union)

    def add_masks(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, group: str | None = None) -> tuple[int, int, float]:
        """Record one expression from its masks; returns (I, U, IoU)."""
        i, u = intersection_union(pred, gt)
        return i, u, self.add(i, u, group)

    def summary(self) -> dict[str, float]:
        return summarize(self.inter, self.union, self.thresholds)

    def by_group(self) -> dict[str, dict[str, float]]:
        """Totals per group name (expressions without a group are left out)."""
        names = sorted({g for g in self.groups if g is not None})
        out = {}
        for name in names:
            idx = [k for k, g in enumerate(self.groups) if g == name]
            out[name] = summarize([self.inter[k] for k in idx], [self.union[k] for k in idx], self.thresholds)
        return out


def format_table(rows: Iterable[tuple[str, dict[str, float]]], thresholds: Sequence[float] = PREC_THRESHOLDS) -> str:
    """A plain-text table: one row per (name, summary), metrics in percent."""
    keys = ["oIoU", "mIoU"] + [prec_key(x) for x in thresholds]
    rows = list(rows)
    width = max([len("set")] + [len(name) for name, _ in rows])
    head = f"{'set':<{width}}  {'count':>6}  " + "  ".join(f"{k:>8}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, s in rows:
        lines.append(f"{name:<{width}}  {int(s['count']):>6}  " + "  ".join(f"{100 * s[k]:>8.2f}" for k in keys))
    return "\n".join(lines)
