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


def keep_regions(mask: np.ndarray, prob: np.ndarray, mode: str = "all") -> np.ndarray:
    """``mask`` (H, W) bool as it is (``all``), or only its 8-connected region that holds the
    highest probability of ``prob`` (H, W) inside ``mask`` (``peak``; ties: the first in
    row-major order). An empty mask stays empty."""
    if mode not in MODES:
        raise ValueError(f"regions must be one of {', '.join(MODES)}, got {mode!r}")
    return mask if mode == "all" else split_regions(mask, prob, mode)[0]


def split_regions(mask: np.ndarray, prob: np.ndarray, mode: str = "all") -> tuple[np.ndarray, int]:
    """(:func:`keep_regions`'s mask, the number of 8-connected regions of ``mask`` before any
    was dropped), from one labelling."""
    if mode not in MODES:
        raise ValueError(f"regions must be one of {', '.join(MODES)}, got {mode!r}")
    if not mask.any():
        return mask, 0
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if mode == "all" or n <= 2:  # background and at most one region
        return mask, int(n) - 1
    if mask.shape != prob.shape:
        raise ValueError(f"mask {mask.shape} and probabilities {prob.shape} differ")
    peak = int(np.argmax(np.where(mask, prob, -np.inf)))
    return labels == labels.flat[peak], int(n) - 1
