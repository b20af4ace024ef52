"""What to keep of a thresholded mask: every region, or the most confident one.

A referring expression names one object, but a thresholded probability map can hold several
8-connected regions (the object and a look-alike, or scattered fragments). ``regions="peak"``
keeps the region holding the map's highest probability and drops the rest: an inference aid
the paper does not have, off unless asked for (``train.py --eval-only --regions peak``, the
predictor's and the app's ``regions``). It cannot help where an object really is in pieces
(an occluded one split in two), which is why it is a switch.

    prob (H, W) float -> mask (H, W) bool = prob > threshold -> keep_regions(mask, prob, mode)
"""
from __future__ import annotations

import cv2
import numpy as np

MODES = ("all", "peak")


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODES`; ValueError naming them otherwise."""
    if mode not in MODES:
        raise ValueError(f"regions must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def count_regions(mask: np.ndarray) -> int:
    """8-connected components of an (H, W) binary mask."""
    return label(mask)[0]


def keep_regions(mask: np.ndarray, prob: np.ndarray, mode: str = "all") -> np.ndarray:
    """``mask`` (H, W) bool as it is (``all``), or only its 8-connected region that holds the
    highest probability of ``prob`` (H, W) inside ``mask`` (``peak``; ties: the first in
    row-major order). An empty mask stays empty."""
    return mask if check_mode(mode) == "all" else split_regions(mask, prob, mode)[0]


def split_regions(mask: np.ndarray, prob: np.ndarray, mode: str = "all") -> tuple[np.ndarray, int]:
    """(:func:`keep_regions`'s mask, the number of 8-connected regions of ``mask`` before any
    was dropped), from one labelling."""
    check_mode(mode)
    if mode != "all" and mask.shape != prob.shape:
        raise ValueError(f"mask {mask.shape} and probabilities {prob.shape} differ")
    box = bounding_box(mask)
    if box is None:
        return mask, 0
    # labelled in the box around the mask: the same regions, a fraction of a full-size image's pixels
    inner = (slice(box[0], box[1]), slice(box[2], box[3]))
    n, labels = label(mask[inner])
    if mode == "all" or n <= 1:
        return mask, n
    kept = np.zeros_like(mask)
    # in the box, row-major order is the image's: ties fall as they would on the whole map
    kept[inner] = labels == peak_label(labels, mask[inner], prob[inner])
    return kept, n


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), the smallest box (ends exclusive) holding every True pixel of an (H, W)
    mask; None for an empty mask."""
    rows = np.flatnonzero(mask.any(1))
    if not len(rows):
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(0))
    return y0, y1, int(cols[0]), int(cols[-1]) + 1


def peak_label(labels: np.ndarray, mask: np.ndarray, prob: np.ndarray) -> int:
    """The label (of :func:`label`'s ``labels``) of the region holding the highest ``prob`` inside
    the non-empty ``mask`` (ties: the first in row-major order)."""
    if mask.shape != prob.shape:
        raise ValueError(f"mask {mask.shape} and probabilities {prob.shape} differ")
    top = int(np.argmax(prob))
    if mask.flat[top]:  # the map's first maximum lies in the mask (mask = prob > t): no masked copy
        return int(labels.flat[top])
    return int(labels.flat[int(np.argmax(np.where(mask, prob, -np.inf)))])


def label(mask: np.ndarray) -> tuple[int, np.ndarray | None]:
    """(regions, labels (H, W) int32 with 0 the background) of an (H, W) binary mask's 8-connected
    regions; (0, None) for an empty mask."""
    if not mask.any():
        return 0, None
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(n) - 1, labels
