"""The symbolic scene: objects with shape, colour, size class, fill pattern, centre,
rotation and layer order, and how scenes are sampled.

Splits (assigned by image index, the same for every seed and N; see :func:`split_of`):

* ``train`` 76 %, ``val`` 7 %, ``testA`` 6 %, ``testB`` 6 %, ``compositional`` 5 %.
* ``testA`` = crowded scenes (7 to 9 objects, many distractors); ``testB`` = sparse
  scenes (3 to 5 objects); train, val and compositional scenes hold 3 to 9 objects.
* :data:`HELD_OUT` (colour, shape) combinations never occur in a train, val, testA or
  testB image. Every ``compositional`` image holds at least one of them (with a
  distractor of the same colour and one of the same shape) and only those objects are
  referred to there.

Objects are placed one by one (placement order = layer order, bottom first). A
placement is refused when it would leave any object below it with less than
:data:`MIN_VISIBLE_FRACTION` of its area or fewer than :data:`MIN_VISIBLE_PIXELS`
pixels visible; the mask of an object is its visible part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .shapes import (COLOUR_HUES, COLOURS, MAX_ROTATION, PATTERN_WEIGHTS, PATTERNS, SHAPES, SIZE_RANGES, SIZES,
                     extent, full_mask, hsv_rgb, polygon)

HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"), ("yellow", "star"), ("green", "circle"),
    ("cyan", "heart"), ("blue", "hexagon"), ("purple", "square"),
)
SPLIT_FRACTIONS = {"train": 0.76, "val": 0.07, "testA": 0.06, "testB": 0.06, "compositional": 0.05}
OBJECT_COUNTS = {"testA": (7, 9), "testB": (3, 5)}  # others: (3, 9)
MIN_VISIBLE_FRACTION = 0.5
MIN_VISIBLE_PIXELS = 80
BACKGROUNDS = ("linear", "radial", "noise", "texture")


def _split_cycle(period: int = 100) -> tuple[str, ...]:
    """Splits of ``period`` consecutive images, interleaved evenly (largest deficit first)."""
    credit = {s: 0.0 for s in SPLIT_FRACTIONS}
    out = []
    for _ in range(period):
        for s, f in SPLIT_FRACTIONS.items():
            credit[s] += f
        pick = max(credit, key=lambda s: credit[s])
        credit[pick] -= 1.0
        out.append(pick)
    return tuple(out)


_CYCLE = _split_cycle()


def split_of(index: int) -> str:
    """The split of image ``index`` (a fixed interleaving with the fractions above)."""
    return _CYCLE[index % len(_CYCLE)]


@dataclass
class SceneObject:
    """One object. ``z`` is its layer (0 = bottom) and its index in ``Scene.objects``;
    (cx, cy) its centre and ``scale`` its equal-area radius, in pixels; ``box`` the
    full shape's (x0, y0, x1, y1); areas in pixels."""

    z: int
    shape: str
    colour: str
    size: str
    pattern: str
    cx: float
    cy: float
    scale: float
    rotation: float
    rgb: tuple[int, int, int]
    pattern_angle: float
    pattern_period: float
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    full_area: int = 0
    visible_area: int = 0

    def polygon(self) -> np.ndarray:
        return polygon(self.shape, self.cx, self.cy, self.scale, self.rotation)

    @property
    def combo(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass
class Scene:
    """A symbolic scene of ``width`` x ``height`` pixels; ``objects`` bottom to top;
    ``held_out`` the z of objects with a held-out (colour, shape) combination."""

    width: int
    height: int
    split: str
    objects: list[SceneObject]
    background: dict
    held_out: tuple[int, ...] = field(default_factory=tuple)


def image_size(rng: np.random.Generator, width: int, height: int) -> tuple[int, int]:
    """Base size with the aspect varied by up to +-12 % per side (even numbers)."""
    w = int(round(width * rng.uniform(0.88, 1.12) / 2)) * 2
    h = int(round(height * rng.uniform(0.88, 1.12) / 2)) * 2
    return max(w, 32), max(h, 32)


def _object_spec(rng: np.random.Generator, colour: str, shape: str) -> dict:
    size = SIZES[int(rng.integers(len(SIZES)))]
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=PATTERN_WEIGHTS))]
    return {"colour": colour, "shape": shape, "size": size, "pattern": pattern}


def _pick_combo(rng: np.random.Generator, colours: list[str], shapes: list[str], exclude: set) -> tuple[str, str]:
    combos = [(c, s) for c in colours for s in shapes if (c, s) not in exclude]
    if not combos:
        combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in exclude]
    return combos[int(rng.integers(len(combos)))]


def _specs(rng: np.random.Generator, n: int, compositional: bool) -> tuple[list[dict], int]:
    """Attribute sets of the objects, and how many leading specs are held-out targets."""
    held = set(HELD_OUT)
    specs: list[dict] = []
    n_targets = 0
    if compositional:
        chosen = [HELD_OUT[i] for i in rng.choice(len(HELD_OUT), size=1 + int(rng.random() < 0.3), replace=False)]
        for c, s in chosen:
            for _ in range(1 + int(rng.random() < 0.25)):
                specs.append(_object_spec(rng, c, s))
        n_targets = len(specs)
        for c, s in chosen:  # a same-colour and a same-shape distractor make both words necessary
            specs.append(_object_spec(rng, c, _pick_combo(rng, [c], [x for x in SHAPES if x != s], held)[1]))
            specs.append(_object_spec(rng, _pick_combo(rng, [x for x in COLOURS if x != c], [s], held)[0], s))
        n = min(max(n, len(specs)), 9)
    k_shapes = int(rng.integers(2, max(3, min(5, n)) + 1))
    k_colours = int(rng.integers(2, max(3, min(5, n)) + 1))
    shape_pool = [SHAPES[i] for i in rng.choice(len(SHAPES), size=k_shapes, replace=False)]
    colour_pool = [COLOURS[i] for i in rng.choice(len(COLOURS), size=k_colours, replace=False)]
    while len(specs) < n:
        c, s = _pick_combo(rng, colour_pool, shape_pool, held)
        specs.append(_object_spec(rng, c, s))
    return specs, n_targets


def _make_object(rng: np.random.Generator, spec: dict, width: int, height: int) -> SceneObject:
    lo, hi = SIZE_RANGES[spec["size"]]
    scale = rng.uniform(lo, hi) * min(width, height)
    rot = float(rng.uniform(-1, 1) * MAX_ROTATION[spec["shape"]])
    hue = COLOUR_HUES[spec["colour"]] + rng.uniform(-4, 4)
    rgb = hsv_rgb(hue, rng.uniform(0.72, 0.95), rng.uniform(0.82, 1.0))
    return SceneObject(z=-1, shape=spec["shape"], colour=spec["colour"], size=spec["size"], pattern=spec["pattern"],
                       cx=0.0, cy=0.0, scale=float(scale), rotation=rot, rgb=rgb,
                       pattern_angle=float(rng.uniform(0, 180)), pattern_period=float(rng.uniform(5.0, 8.0)))


def _place(rng: np.random.Generator, obj: SceneObject, placed: list[SceneObject], full: list[np.ndarray],
           visible: list[np.ndarray], width: int, height: int, tries: int = 40) -> np.ndarray | None:
    """Find a centre for ``obj`` that keeps every object below it visible enough; returns
    its (H, W) bool mask (and sets obj.cx, obj.cy, obj.box) or None."""
    hw, hh = extent(obj.shape, obj.scale, obj.rotation)
    if 2 * hw + 4 >= width or 2 * hh + 4 >= height:
        return None
    for _ in range(tries):
        if placed and rng.random() < 0.3:  # next to an existing object: makes occlusion and "next to" common
            other = placed[int(rng.integers(len(placed)))]
            ang = rng.uniform(0, 2 * math.pi)
            dist = (other.scale + obj.scale) * rng.uniform(0.9, 1.8)
            cx, cy = other.cx + dist * math.cos(ang), other.cy + dist * math.sin(ang)
            if not (hw + 2 <= cx <= width - hw - 2 and hh + 2 <= cy <= height - hh - 2):
                continue
        else:
            cx = rng.uniform(hw + 2, width - hw - 2)
            cy = rng.uniform(hh + 2, height - hh - 2)
        m = full_mask(polygon(obj.shape, cx, cy, obj.scale, obj.rotation), height, width)
        ok = True
        for j, (f, v) in enumerate(zip(full, visible)):
            left = int(np.count_nonzero(v & ~m))
            if left < MIN_VISIBLE_PIXELS or left < MIN_VISIBLE_FRACTION * int(np.count_nonzero(f)):
                ok = False
                break
        if ok:
            obj.cx, obj.cy = float(cx), float(cy)
            p = obj.polygon()
            obj.box = (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))
            return m
    return None


def _background(rng: np.random.Generator) -> dict:
    hue = rng.uniform(0, 360)
    v0 = rng.uniform(0.3, 0.95)
    v1 = float(np.clip(v0 + rng.uniform(-0.35, 0.35), 0.22, 0.97))
    return {
        "kind": BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        "colours": [list(hsv_rgb(hue, rng.uniform(0.0, 0.18), v0)),
                    list(hsv_rgb(hue + rng.uniform(-60, 60), rng.uniform(0.0, 0.18), v1))],
        "clutter": int(rng.integers(0, 3)),
        "seed": int(rng.integers(2 ** 31)),
    }


def sample_scene(rng: np.random.Generator, width: int, height: int, split: str, max_attempts: int = 50) -> Scene:
    """A scene for ``split`` of about ``width`` x ``height`` pixels (see module doc).

    Raises RuntimeError when no valid scene was found (image too small for the objects).
    """
    if split not in SPLIT_FRACTIONS:
        raise ValueError(f"unknown split '{split}': expected one of {list(SPLIT_FRACTIONS)}")
    w, h = image_size(rng, width, height)
    lo, hi = OBJECT_COUNTS.get(split, (3, 9))
    compositional = split == "compositional"
    for _ in range(max_attempts):
        specs, n_targets = _specs(rng, int(rng.integers(lo, hi + 1)), compositional)
        objs = [_make_object(rng, s, w, h) for s in specs]
        required = set(range(n_targets))
        order = rng.permutation(len(objs))
        placed: list[SceneObject] = []
        full: list[np.ndarray] = []
        visible: list[np.ndarray] = []
        failed = False
        for i in order:
            m = _place(rng, objs[i], placed, full, visible, w, h)
            if m is None:
                if int(i) in required:
                    failed = True
                    break
                continue
            for v in visible:
                v &= ~m
            objs[i].z = len(placed)
            placed.append(objs[i])
            full.append(m)
            visible.append(m.copy())
        if failed or len(placed) < lo:
            continue
        for o, f, v in zip(placed, full, visible):
            o.full_area, o.visible_area = int(np.count_nonzero(f)), int(np.count_nonzero(v))
        held = tuple(o.z for o in placed if o.combo in set(HELD_OUT))
        return Scene(w, h, split, placed, _background(rng), held)
    raise RuntimeError(f"could not place {lo}+ objects in a {w}x{h} image after {max_attempts} attempts")
