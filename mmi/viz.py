"""Overlays and heatmaps for the demo and for reports, and the mask files for annotators
(PNG masks, a COCO file with RLE or polygons, the overlay).

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

# Mask colours: eight colours whose pairwise CIELAB distance (CIE76) stays at least 23 for
# normal vision and under simulated protanopia, deuteranopia and tritanopia (Machado et al.
# 2009; tests/test_viz.py); picked from the Okabe-Ito and Paul Tol palettes. Outlines are
# drawn over a dark halo, so the light ones show on light backgrounds too. More than eight
# expressions reuse colours; the number drawn on each mask tells them apart.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 119, 187), (230, 159, 0), (102, 204, 238), (170, 51, 119), (221, 204, 119), (204, 51, 17),
    (238, 102, 119), (255, 255, 255),
)
# Ground truth against prediction (failure cases, scene lab): blue-cyan solid against
# orange dashed, a pair that colour-blind eyes tell apart, and not by colour alone.
TRUTH_COLOR = (102, 204, 238)
PREDICTION_COLOR = (230, 159, 0)
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


def quantize_png(path: str) -> None:
    """Rewrite the PNG at ``path`` with a 256-colour palette (median cut, optimised): the repo's
    figures and screenshots at about a third of the bytes."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


# ----------------------------------------------------------------------------- the app's views

def _halo_contours(out: np.ndarray, mask: np.ndarray, rgb: Sequence[int], thickness: int, dashed: bool = False) -> None:
    """Outline ``mask`` on ``out`` in ``rgb`` over a dark halo (in place); dashed: 2 on, 1 off."""
    contours, _ = cv2.findContours(np.asarray(mask).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return
    c = tuple(int(v) for v in rgb[:3])
    if not dashed:
        cv2.drawContours(out, contours, -1, (20, 20, 20), thickness + 2, lineType=cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, c, thickness, lineType=cv2.LINE_AA)
        return
    dash = max(6, 4 * thickness)
    for cont in contours:
        pts = cont[:, 0, :]
        pieces = [pts[i : i + dash + 1] for i in range(0, len(pts), int(dash * 1.6))]
        for colour, t in (((20, 20, 20), thickness + 2), (c, thickness)):
            cv2.polylines(out, [p.reshape(-1, 1, 2) for p in pieces if len(p) > 1], False, colour, t, lineType=cv2.LINE_AA)


def _label(out: np.ndarray, mask: np.ndarray, text: str, rgb: Sequence[int], scale: float) -> None:
    """``text`` in a box of colour ``rgb`` at the centre of the mask's largest region."""
    m = np.asarray(mask).astype(np.uint8)
    n, lab, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    ys, xs = np.nonzero(lab == big)
    k = int(np.argmin((xs - cents[big][0]) ** 2 + (ys - cents[big][1]) ** 2))  # a pixel of the region itself
    x, y = int(xs[k]), int(ys[k])
    th = max(1, int(round(scale * 2)))
    (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    x0 = int(np.clip(x - tw // 2 - 3, 0, max(0, out.shape[1] - tw - 6)))
    y0 = int(np.clip(y - tht // 2 - 3, 0, max(0, out.shape[0] - tht - base - 6)))
    c = tuple(int(v) for v in rgb[:3])
    cv2.rectangle(out, (x0, y0), (x0 + tw + 6, y0 + tht + base + 6), c, -1)
    cv2.rectangle(out, (x0, y0), (x0 + tw + 6, y0 + tht + base + 6), (20, 20, 20), 1)
    ink = (0, 0, 0) if sum(c) > 380 else (255, 255, 255)
    cv2.putText(out, text, (x0 + 3, y0 + tht + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, th, cv2.LINE_AA)


def draw_masks(image: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[Sequence[int]],
               fill: float = 0.25, labels: Sequence[str] | None = None, dashed: Sequence[bool] | None = None) -> np.ndarray:
    """The evidence view: each mask filled lightly (opacity ``fill``, 0 for none), then every
    outline over a dark halo (so overlapping masks stay visible), then each label (e.g. the
    expression's number) at its mask's centre. The image's own colours show through."""
    out = image.astype(np.float32)
    for m, c in zip(masks, colors):
        m = np.asarray(m).astype(bool)
        if m.shape != image.shape[:2]:
            raise ValueError(f"mask of shape {m.shape} does not match the image {image.shape[:2]}")
        if fill > 0:
            out[m] = (1 - fill) * out[m] + fill * np.asarray(c[:3], np.float32)
    out = np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))
    thickness = max(2, round(max(image.shape[:2]) / 300))
    for i, (m, c) in enumerate(zip(masks, colors)):
        _halo_contours(out, m, c, thickness, bool(dashed[i]) if dashed else False)
    if labels:
        scale = max(0.4, max(image.shape[:2]) / 1400)
        for m, c, t in zip(masks, colors, labels):
            if t:
                _label(out, m, t, c, scale)
    return out


def truth_and_prediction(image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, fill: float = 0.15) -> np.ndarray:
    """Ground truth (blue-cyan, solid) and prediction (orange, dashed) as outlines with a
    light fill, over the image's own colours."""
    masks, colors, dashed = [], [], []
    if gt is not None:
        masks.append(gt), colors.append(TRUTH_COLOR), dashed.append(False)
    masks.append(pred), colors.append(PREDICTION_COLOR), dashed.append(True)
    return draw_masks(image, masks, colors, fill, dashed=dashed)


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) uint8 turbo colours, scaled to the map's own range."""
    h = np.nan_to_num(np.asarray(heat, np.float32))
    lo, hi = float(h.min()), float(h.max())
    h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    return cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[:, :, ::-1]


TURBO_CSS = "linear-gradient(to right, " + ", ".join(
    hex_color(cv2.applyColorMap(np.array([[v]], np.uint8), cv2.COLORMAP_TURBO)[0, 0, ::-1]) for v in range(0, 256, 32)
) + ", " + hex_color(cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_TURBO)[0, 0, ::-1]) + ")"


def data_uri(image: np.ndarray, fmt: str = ".jpg", quality: int = 85) -> str:
    """An RGB image as a ``data:`` URI (for HTML views)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError("could not encode an image")
    import base64

    mime = "jpeg" if fmt == ".jpg" else fmt.strip(".")
    return f"data:image/{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def mask_polygons(mask: np.ndarray, min_points: int = 3) -> list[list[float]]:
    """COCO polygons ([x0, y0, x1, y1, ...] per outer boundary, pixel centres) of a binary
    mask; holes are not represented (use RLE for exact masks)."""
    contours, _ = cv2.findContours(np.asarray(mask).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= min_points:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def coco_document(preds: Sequence["Prediction"], file_name: str = "image.png", polygons: bool = False,
                  image_id: int = 1) -> dict:
    """A COCO instances file of one image: one category per expression (named by it), one
    annotation per non-empty mask (segmentation as RLE, or polygons; bbox, area, iscrowd 0,
    plus the expression, its confidence and threshold). ``pycocotools.coco.COCO`` loads it.
    Expressions whose mask is empty keep their category and are listed in ``info``."""
    from pycocotools import mask as mask_utils

    from .predictor import rle_encode

    if not preds:
        raise ValueError("no predictions to export")
    h, w = preds[0].size
    cats, anns, empty = [], [], []
    for i, p in enumerate(preds, 1):
        cats.append({"id": i, "name": p.expression, "supercategory": "referring expression"})
        if not p.area:
            empty.append(p.expression)
            continue
        rle = rle_encode(p.mask)
        box = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        seg = mask_polygons(p.mask) if polygons else rle
        if polygons and not seg:
            seg = rle  # a mask of single pixels has no polygon of 3 points: keep it exact
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": i, "segmentation": seg,
                     "area": int(p.area), "bbox": [round(float(v), 2) for v in box], "iscrowd": 0,
                     "expression": p.expression, "tokens": p.token_text(), "confidence": round(float(p.confidence), 4),
                     "threshold": float(p.threshold), "regions": int(p.regions)})
    return {"info": {"description": "MMI referring segmentation", "segmentation": "polygons" if polygons else "rle",
                     "empty_expressions": empty},
            "images": [{"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)}],
            "annotations": anns, "categories": cats}


def write_exports(folder: str, preds: Sequence["Prediction"], overlay: np.ndarray | None = None,
                  polygons: bool = False, file_name: str = "image.png") -> list[str]:
    """For annotators: ``mask_XX_<slug>.png`` (0/255, original size) per expression, a COCO
    file (``coco_rle.json``, or ``coco_polygons.json`` with ``polygons``), ``overlay.png``
    when given, and ``masks.zip`` of them all. Returns [zip, COCO file, overlay]."""
    pngs = []
    for i, p in enumerate(preds, 1):
        slug = re.sub(r"[^a-z0-9]+", "_", p.expression.lower())[:40].strip("_") or "expression"
        path = os.path.join(folder, f"mask_{i:02d}_{slug}.png")
        mask_png(p.mask, path)
        pngs.append(path)
    coco_path = os.path.join(folder, "coco_polygons.json" if polygons else "coco_rle.json")
    with open(coco_path, "w", encoding="utf8") as f:
        json.dump(coco_document(preds, file_name, polygons), f)
    extra = [coco_path]
    if overlay is not None:
        over = os.path.join(folder, "overlay.png")
        if not cv2.imwrite(over, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {over}")
        extra.append(over)
    zip_path = os.path.join(folder, "masks.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for path in pngs + extra:
            z.write(path, os.path.basename(path))
    return [zip_path] + extra
