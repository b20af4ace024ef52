"""Scene -> image and per-object visible masks.

The background (gradient, low-frequency noise or a faint texture, plus clutter lines and
specks that are not objects) is drawn from ``scene.background``; objects are drawn bottom
to top with anti-aliased edges. Masks are binary and follow the layer order: an object's
mask is its shape (alpha >= 128) minus the shapes of every object above it. Rendering is
a pure function of the scene.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .scene import Scene, SceneObject
from .shapes import full_mask, rasterise


def visible_masks(scene: Scene) -> np.ndarray:
    """(N, H, W) bool: the visible part of each object, in ``scene.objects`` order."""
    h, w = scene.height, scene.width
    out = np.zeros((len(scene.objects), h, w), dtype=bool)
    covered = np.zeros((h, w), dtype=bool)
    for o in reversed(scene.objects):  # top first
        m = full_mask(o.polygon(), h, w)
        out[o.z] = m & ~covered
        covered |= m
    return out


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image (H, W, 3) uint8 RGB, masks (N, H, W) bool visible parts)."""
    img = background(scene)
    for o in scene.objects:
        _draw_object(img, o)
    if scene.background["kind"] == "noise":
        rng = np.random.default_rng([scene.background["seed"], 1])
        img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return image, visible_masks(scene)


# ----------------------------------------------------------------------------- background

def background(scene: Scene) -> np.ndarray:
    """(H, W, 3) float32 background with clutter, values 0..255."""
    bg = scene.background
    h, w = scene.height, scene.width
    rng = np.random.default_rng(bg["seed"])
    c0, c1 = (np.array(c, dtype=np.float32) for c in bg["colours"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = bg["kind"]
    if kind == "radial":
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        d = np.hypot(xx - cx, yy - cy)
        t = d / max(float(d.max()), 1.0)
    elif kind == "noise":
        gh, gw = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        t = cv2.resize(rng.random((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0.0, 1.0)
    else:  # linear, and the base of texture
        a = rng.uniform(0, 2 * math.pi)
        u = xx * math.cos(a) + yy * math.sin(a)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    if kind == "texture":
        period = rng.uniform(10, 28)
        amp = rng.uniform(6, 14)
        a = rng.uniform(0, math.pi)
        u = (xx * math.cos(a) + yy * math.sin(a)) / period
        v = (-xx * math.sin(a) + yy * math.cos(a)) / period
        style = int(rng.integers(3))
        if style == 0:
            pat = np.sin(2 * math.pi * u)
        elif style == 1:
            pat = np.where((np.floor(u) + np.floor(v)) % 2 == 0, 1.0, -1.0)
        else:
            pat = np.where((np.abs(u - np.round(u)) < 0.06) | (np.abs(v - np.round(v)) < 0.06), 1.0, 0.0)
        img += (amp * pat)[..., None].astype(np.float32)
    _clutter(img, rng, int(bg["clutter"]))
    return img.astype(np.float32)


def _clutter(img: np.ndarray, rng: np.random.Generator, level: int) -> None:
    """Thin lines and specks in muted colours: visual noise that is not an object."""
    if level <= 0:
        return
    h, w = img.shape[:2]
    base = img.mean(axis=(0, 1))
    canvas = np.ascontiguousarray(img)
    for _ in range(level * int(rng.integers(2, 6))):
        shift = rng.uniform(35, 75) * (1 if base.mean() < 128 else -1)
        col = tuple(float(np.clip(base[k] + shift + rng.uniform(-15, 15), 0, 255)) for k in range(3))
        pts = np.stack([rng.uniform(0, w, 3), rng.uniform(0, h, 3)], axis=1)
        pts = np.round(pts * 16).astype(np.int32)
        cv2.polylines(canvas, [pts], False, col, 1, lineType=cv2.LINE_AA, shift=4)
    for _ in range(level * int(rng.integers(8, 25))):
        shift = rng.uniform(30, 70) * (1 if rng.random() < 0.5 else -1)
        col = tuple(float(np.clip(base[k] + shift, 0, 255)) for k in range(3))
        c = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.circle(canvas, c, int(rng.integers(1, 3)), col, -1, lineType=cv2.LINE_AA)
    img[...] = canvas


# ----------------------------------------------------------------------------- objects

def _draw_object(img: np.ndarray, o: SceneObject) -> None:
    h, w = img.shape[:2]
    alpha, (y0, y1, x0, x1) = rasterise(o.polygon(), h, w)
    if alpha.size == 0:
        return
    colour = np.array(o.rgb, dtype=np.float32)
    tint = colour * 0.3 + 255.0 * 0.7
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    a = math.radians(o.pattern_angle)
    u = (xx * math.cos(a) + yy * math.sin(a)) / o.pattern_period
    if o.pattern == "striped":
        weight = ((u % 1.0) < 0.5).astype(np.float32)
    elif o.pattern == "dotted":
        v = (-xx * math.sin(a) + yy * math.cos(a)) / o.pattern_period
        d = np.hypot(u - np.round(u), v - np.round(v))
        weight = np.clip((0.3 - d) * 8.0, 0.0, 1.0)
    elif o.pattern == "outlined":
        k = max(2, int(round(o.scale * 0.16)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        padded = cv2.copyMakeBorder(alpha, k, k, k, k, cv2.BORDER_CONSTANT, value=0)
        weight = cv2.erode(padded, kernel)[k:-k, k:-k].astype(np.float32) / 255.0
    else:
        weight = np.zeros_like(u)
    layer = colour * (1.0 - weight[..., None]) + tint * weight[..., None]
    # gentle top-to-bottom shading
    shade = 1.05 - 0.1 * (yy - o.box[1]) / max(o.box[3] - o.box[1], 1.0)
    layer = layer * np.clip(shade, 0.9, 1.05)[..., None]
    a_ = alpha.astype(np.float32)[..., None] / 255.0
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - a_) + np.clip(layer, 0, 255) * a_
