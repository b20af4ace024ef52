"""Overlays and heatmaps for the demo and for reports, and the mask files for annotators.

Images are (H, W, 3) uint8 RGB; masks (H, W) bool (or 0/1) arrays of the image's size;
heatmaps (H, W) float. Heatmaps are coloured with the turbo map scaled to each map's own
range (compare maps by shape, not brightness).
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from .predictor import Prediction

# Distinct, colour-blind-friendly colours (Okabe-Ito, then Tableau), as RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (213, 94, 0), (204, 121, 167), (0, 114, 178),
    (240, 228, 66), (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
GT_COLOR = (0, 200, 0)
PRED_COLOR = (230, 30, 30)


def color(i: int) -> tuple[int, int, int]:
    """The i-th colour of the palette (cycling)."""
    return PALETTE[i % len(PALETTE)]


def hex_color(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3); area averaging when shrinking."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) binary -> (h, w) bool: area fraction >= 0.5 when shrinking, nearest otherwise."""
    h, w = hw
    m = np.asarray(mask)
    if m.shape == (h, w):
        return m.astype(bool)
    if h * w < m.shape[0] * m.shape[1]:  # uint8 keeps an 8000 x 8000 mask at 64 MB
        return cv2.resize(m.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) >= 128
    return cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[Sequence[int]] | None = None,
                  alpha: float = 0.45, outline: bool = True) -> np.ndarray:
    """Blend each mask in its colour over ``image`` (later masks on top) and outline it."""
    out = image.astype(np.float32)
    colors = colors or [color(i) for i in range(len(masks))]
    for m, c in zip(masks, colors):
        m = np.asarray(m).astype(bool)
        if m.shape != image.shape[:2]:
            raise ValueError(f"mask of shape {m.shape} does not match the image {image.shape[:2]}")
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(c[:3], np.float32)
    out = out.round().clip(0, 255).astype(np.uint8)
    if outline:
        thickness = max(1, round(max(image.shape[:2]) / 400))
        for m, c in zip(masks, colors):
            contours, _ = cv2.findContours(np.asarray(m).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(v) for v in c[:3]), thickness)
    return out


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Colour ``heat`` (H, W) with the turbo map, scaled to its own maximum, over ``image``.

    The scaling makes every map readable; compare maps by shape, not by brightness."""
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heatmap of shape {heat.shape} does not match the image {image.shape[:2]}")
    h = np.nan_to_num(heat.astype(np.float32))
    lo, hi = float(h.min()), float(h.max())
    h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    colored = cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[:, :, ::-1]
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(grey, 1 - alpha, colored, alpha, 0)


def compare_masks(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Ground truth against prediction: GT only green, prediction only red, both yellow;
    each outlined in its colour."""
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    both = gt & pred
    out = overlay_masks(image, [gt & ~pred, pred & ~gt, both], [GT_COLOR, PRED_COLOR, (240, 220, 0)], alpha, outline=False)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for m, c in ((gt, GT_COLOR), (pred, PRED_COLOR)):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, c, thickness)
    return out


def mask_png(mask: np.ndarray, path: str) -> None:
    """Write an (H, W) binary mask as an 8-bit PNG (0 and 255)."""
    if not cv2.imwrite(path, np.asarray(mask).astype(np.uint8) * 255):
        raise OSError(f"could not write mask PNG {path}")


def word_heatmaps(rgb: np.ndarray, preds: Sequence["Prediction"], layer: int, side: int = 320,
                  limit: int = 160) -> tuple[list[tuple[np.ndarray, str]], bool]:
    """Gallery items: per expression and word, the LAV then the VAL map of decoder ``layer``
    over the image (longer side ``side``), captioned ``"<i>. <word> · LAV: ..."`` (unknown
    words as ``?word``); at most ``limit`` items. Returns (items, whether some were left out)."""
    from .predictor import display_size

    hw = display_size(*rgb.shape[:2], side)
    small = resize_image(rgb, hw)
    items: list[tuple[np.ndarray, str]] = []
    for i, p in enumerate(preds, 1):
        kinds = [k for k in ("lav", "val") if k in p.attention[layer]]
        maps = {k: p.word_maps(layer, k, hw) for k in kinds}
        for j, (tok, unk) in enumerate(zip(p.tokens, p.unknown)):
            word = f"?{tok}" if unk else tok
            for k in kinds:
                what = "LAV: where it looks" if k == "lav" else "VAL: pixels reading it"
                items.append((heatmap_overlay(small, maps[k][j]), f"{i}. {word} · {what}"))
                if len(items) >= limit:
                    return items, True
    return items, False


def write_mask_files(folder: str, preds: Sequence["Prediction"]) -> list[str]:
    """For annotators: ``mask_XX_<slug>.png`` (0/255, original size) per expression,
    ``masks_coco_rle.json`` (a list of {id, expression, tokens, confidence, area, regions,
    threshold, segmentation: COCO RLE}) for all, and ``masks.zip`` of both.
    Returns [zip path, json path]."""
    from .predictor import rle_encode

    pngs = []
    for i, p in enumerate(preds, 1):
        slug = re.sub(r"[^a-z0-9]+", "_", p.expression.lower())[:40].strip("_") or "expression"
        path = os.path.join(folder, f"mask_{i:02d}_{slug}.png")
        mask_png(p.mask, path)
        pngs.append(path)
    doc = [dict(id=i, expression=p.expression, tokens=p.token_text(), confidence=round(p.confidence, 4), area=p.area,
                regions=p.regions, threshold=p.threshold, segmentation=rle_encode(p.mask))
           for i, p in enumerate(preds, 1)]
    rle_path = os.path.join(folder, "masks_coco_rle.json")
    with open(rle_path, "w", encoding="utf8") as f:
        json.dump(doc, f, indent=1)
    zip_path = os.path.join(folder, "masks.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for path in pngs + [rle_path]:
            z.write(path, os.path.basename(path))
    return [zip_path, rle_path]
