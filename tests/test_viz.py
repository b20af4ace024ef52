"""Overlay colours and drawing (mmi.viz): a colour-blind-safe palette with no near-duplicates,
outlines over a light fill, ground truth against prediction."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mmi import viz

# Machado, Oliveira and Fernandes (2009), severity 1.0, on linear RGB
CVD = {
    "normal": np.eye(3),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]),
}


def lab(rgb, m):
    c = np.asarray(rgb, float) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lin = np.clip(lin @ m.T, 0, 1)
    xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize("vision", list(CVD))
def test_palette_has_no_near_duplicates_for_any_vision(vision):
    pairs = itertools.combinations(viz.PALETTE, 2)
    closest = min(np.linalg.norm(lab(a, CVD[vision]) - lab(b, CVD[vision])) for a, b in pairs)
    assert closest >= 20, f"two palette colours are {closest:.1f} apart (CIE76) under {vision}"
    t, p = lab(viz.TRUTH_COLOR, CVD[vision]), lab(viz.PREDICTION_COLOR, CVD[vision])
    assert np.linalg.norm(t - p) >= 30
    assert len(set(viz.PALETTE)) == len(viz.PALETTE) >= 8


def test_draw_masks_outlines_over_a_light_fill():
    img = np.full((60, 60, 3), 100, np.uint8)
    a, b = np.zeros((60, 60), bool), np.zeros((60, 60), bool)
    a[10:40, 10:40], b[25:55, 25:55] = True, True
    out = viz.draw_masks(img, [a, b], [viz.color(0), viz.color(1)], fill=0.25).astype(int)
    # the interior keeps most of the image's own colour; the outline is the mask colour
    assert np.abs(out[18, 18] - 100).max() <= 0.25 * 155 + 1 and tuple(out[18, 18]) != viz.color(0)
    assert any(tuple(out[10 + k, 25]) == viz.color(0) for k in range(-2, 3))
    # the second mask's outline is drawn over the first one's fill: overlaps stay visible
    assert any(tuple(out[25 + k, 32]) == viz.color(1) for k in range(-2, 3))
    bare = viz.draw_masks(img, [a], [viz.color(0)], fill=0.0)
    assert tuple(bare[25, 25]) == (100, 100, 100)  # no fill: the object's colour untouched
    with pytest.raises(ValueError, match="does not match the image"):
        viz.draw_masks(img, [np.zeros((5, 5), bool)], [viz.color(0)])


def test_truth_and_prediction_are_solid_and_dashed_outlines():
    img = np.full((80, 80, 3), 120, np.uint8)
    gt, pred = np.zeros((80, 80), bool), np.zeros((80, 80), bool)
    gt[10:50, 10:50], pred[30:70, 30:70] = True, True
    out = viz.truth_and_prediction(img, gt, pred, fill=0.0)
    edge_gt = [tuple(out[10 + k, x]) for x in range(12, 48) for k in (-1, 0, 1)]
    edge_pred = [tuple(out[70 + k, x]) for x in range(32, 68) for k in (-2, -1, 0, 1)]
    assert viz.TRUTH_COLOR in edge_gt and viz.PREDICTION_COLOR in edge_pred
    runs = [any(tuple(out[70 + k, x]) == viz.PREDICTION_COLOR for k in (-2, -1, 0, 1)) for x in range(32, 68)]
    assert not all(runs)  # dashed: gaps along the edge
    assert tuple(out[40, 40]) == (120, 120, 120)  # inside both, no fill: the image itself


def test_compare_masks_and_heatmap_overlay():
    img = np.full((20, 20, 3), 100, np.uint8)
    gt, pred = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    gt[2:10, 2:10], pred[6:16, 6:16] = True, True
    out = viz.compare_masks(img, gt, pred, alpha=1.0).astype(int)
    assert tuple(out[4, 4]) == viz.GT_COLOR and tuple(out[13, 13]) == viz.PRED_COLOR
    heat = viz.heatmap_overlay(img, np.outer(np.arange(20), np.ones(20)).astype(np.float32))
    assert heat.shape == img.shape and not np.array_equal(heat[0], heat[19])
    assert viz.TURBO_CSS.startswith("linear-gradient(to right, #")


def test_quantize_png_keeps_size_and_colours_within_a_palette(tmp_path):
    """viz.quantize_png (figures and screenshots): the same size, at most 256 colours, and the
    picture kept (a smooth gradient stays within a few levels of the original)."""
    import cv2
    from PIL import Image

    y, x = np.mgrid[0:120, 0:160]
    rgb = np.stack([x * 255 // 159, y * 255 // 119, (x + y) * 255 // 278], -1).astype(np.uint8)
    path = str(tmp_path / "g.png")
    cv2.imwrite(path, rgb[..., ::-1])
    viz.quantize_png(path)
    im = Image.open(path)
    assert im.mode == "P" and im.size == (160, 120)
    back = np.asarray(im.convert("RGB")).astype(int)
    assert len(np.unique(back.reshape(-1, 3), axis=0)) <= 256
    assert np.abs(back - rgb).mean() < 4
