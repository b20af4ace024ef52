"""The vocabulary of the synthetic world and the geometry of its shapes.

Every shape is a polygon around the origin (image axes: x right, y down). A shape of
*size* ``s`` is scaled so that its area equals a disc of radius ``s`` (equal-area
scaling), so "the biggest object" compares like with like across shapes.

Masks are rasterised once, with cv2's anti-aliased polygon fill: the alpha (0..255) is
used to blend the image and ``alpha >= 128`` is the binary mask, so image and mask come
from the same polygon.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
# hue (degrees) of each colour name; saturated, value high: clearly distinct from the
# low-saturation backgrounds and from each other.
COLOUR_HUES = {
    "red": 0.0, "orange": 29.0, "yellow": 55.0, "green": 125.0,
    "cyan": 186.0, "blue": 228.0, "purple": 276.0, "pink": 322.0,
}
COLOURS = tuple(COLOUR_HUES)
SIZES = ("small", "medium", "large")
# equal-area radius s, as a fraction of min(W, H); the gaps between classes keep the
# size words unambiguous.
SIZE_RANGES = {"small": (0.055, 0.068), "medium": (0.083, 0.098), "large": (0.118, 0.138)}
PATTERNS = ("solid", "striped", "dotted", "outlined")
PATTERN_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
# rotation range (degrees, +-) per shape, small enough that a square never reads as a
# diamond and a cross never reads as an "x".
MAX_ROTATION = {"circle": 0.0, "square": 15.0, "triangle": 20.0, "star": 36.0, "hexagon": 30.0,
                "diamond": 12.0, "cross": 15.0, "heart": 20.0}

_SHIFT = 4  # sub-pixel bits for cv2.fillPoly


def _regular(n: int, start_deg: float, radius: float = 1.0) -> np.ndarray:
    a = np.deg2rad(start_deg + np.arange(n) * 360.0 / n)
    return np.stack([np.cos(a), np.sin(a)], axis=1) * radius


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(points, -90.0)
    inner_pts = _regular(points, -90.0 + 180.0 / points, inner)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _cross(w: float = 0.34) -> np.ndarray:
    return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                     (-w, w), (-1, w), (-1, -w), (-w, -w)], dtype=np.float64)


def _heart(n: int = 72) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


_UNIT = {
    "circle": _regular(64, 0.0),
    "square": _regular(4, 45.0),
    "triangle": _regular(3, -90.0),
    "star": _star(),
    "hexagon": _regular(6, 0.0),
    "diamond": np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], dtype=np.float64),
    "cross": _cross(),
    "heart": _heart(),
}
# unit polygons rescaled to the area of the unit disc
UNIT_POLYGONS = {k: v * math.sqrt(math.pi / _polygon_area(v)) for k, v in _UNIT.items()}


def polygon(shape: str, cx: float, cy: float, size: float, rotation: float) -> np.ndarray:
    """(P, 2) float vertices of ``shape`` centred at (cx, cy), equal-area radius ``size``
    pixels, rotated by ``rotation`` degrees (clockwise on screen)."""
    if shape not in UNIT_POLYGONS:
        raise ValueError(f"unknown shape '{shape}': expected one of {SHAPES}")
    a = math.radians(rotation)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return UNIT_POLYGONS[shape] @ rot.T * size + np.array([cx, cy])


def extent(shape: str, size: float, rotation: float) -> tuple[float, float]:
    """Half width and half height of the rotated shape's bounding box, in pixels."""
    p = polygon(shape, 0.0, 0.0, size, rotation)
    return float(np.abs(p[:, 0]).max()), float(np.abs(p[:, 1]).max())


def rasterise(poly: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Anti-aliased alpha of a polygon in its clipped bounding box.

    Returns (alpha (h, w) uint8 in 0..255, (y0, y1, x0, x1)) with the crop inside the
    (height, width) image. An empty crop has zero size.
    """
    x0 = max(int(math.floor(poly[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(poly[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(poly[:, 0].max())) + 2, width)
    y1 = min(int(math.ceil(poly[:, 1].max())) + 2, height)
    alpha = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.uint8)
    if alpha.size:
        pts = np.round((poly - np.array([x0, y0])) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(alpha, [pts], 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    return alpha, (y0, y1, x0, x1)


def full_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels of the whole (unoccluded) shape."""
    alpha, (y0, y1, x0, x1) = rasterise(poly, height, width)
    m = np.zeros((height, width), dtype=bool)
    m[y0:y1, x0:x1] = alpha >= 128
    return m


def hsv_rgb(hue_deg: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, min(max(sat, 0.0), 1.0), min(max(val, 0.0), 1.0))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))
