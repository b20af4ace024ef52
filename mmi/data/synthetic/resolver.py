"""The symbolic resolver: which objects of a scene a referring description picks out.

A :class:`Desc` is a parsed referring expression: head attributes (shape, colour, size
class, fill pattern) plus at most one of each modifier, applied in this order:

1. attributes filter the objects;
2. ``relation``: keep objects in relation to the landmark(s) (``left_of``, ``right_of``,
   ``above``, ``below``, ``near``, ``between``); a landmark is itself a Desc that must
   resolve to exactly ``count`` objects (a definite description), else nothing matches;
3. ``region``: keep objects whose centre lies in an absolute region of the image
   (``left``, ``top right``, ``center`` ...);
4. ``extreme`` (``left``, ``right``, ``top``, ``bottom``, ``big``, ``small``) or
   ``ordinal`` ((k, side): k-th from the left/right/top/bottom) selects among the rest.

Every geometric test has a margin scaled by ``slack``: -1 is strict (only clear cases),
+1 lenient (also borderline cases), 0 the nominal reading. Extremes and ordinals read
position by centre *and* by the near edge of the box: strict needs both to agree,
lenient accepts either. An expression is kept only when strict, nominal and lenient
readings all give exactly its target (:func:`resolves_uniquely`), so a borderline or
edge-versus-centre ambiguity never reaches the data set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

from .scene import Scene, SceneObject

ATTRIBUTES = ("shape", "colour", "size", "pattern")
REGIONS = ("left", "right", "top", "bottom", "center", "top left", "top right", "bottom left", "bottom right")
EXTREMES = ("left", "right", "top", "bottom", "big", "small")
SIDES = ("left", "right", "top", "bottom")
RELATIONS = ("left_of", "right_of", "above", "below", "near", "between")

# margins at |slack| = 1
REGION_BAND, REGION_MARGIN = 0.38, 0.06  # "left": centre x < 0.38 W (+- 0.06 W)
CENTER_BAND, CENTER_MARGIN = 0.17, 0.05  # "center": |x - 0.5| < 0.17 W and the same in y
POS_MARGIN = 0.045  # extremes and ordinals: fraction of the image side
SIZE_MARGIN = math.log(1.15)  # "biggest": 15 % larger equal-area radius
CONE_DEG, CONE_MARGIN = 45.0, 20.0  # "above": direction within 45 deg of straight up
NEAR_FACTOR, NEAR_MARGIN = 1.8, 0.3  # "near": centre distance < 1.8 (s_a + s_b)
BETWEEN_T, BETWEEN_D = (0.15, 0.85), 0.28  # projection on the segment, distance / length
BETWEEN_MARGIN_T, BETWEEN_MARGIN_D = 0.07, 0.08


@dataclass(frozen=True)
class Relation:
    kind: str
    landmarks: tuple["Desc", ...]


@dataclass(frozen=True)
class Desc:
    """A referring description. ``count`` is 2 for a plural landmark ("the two squares")."""

    shape: Optional[str] = None
    colour: Optional[str] = None
    size: Optional[str] = None
    pattern: Optional[str] = None
    relation: Optional[Relation] = None
    region: Optional[str] = None
    extreme: Optional[str] = None
    ordinal: Optional[tuple[int, str]] = None
    count: int = 1

    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ATTRIBUTES if getattr(self, k) is not None}

    def components(self) -> list[str]:
        """Names of the fields that are set (attributes and modifiers)."""
        return [f.name for f in fields(self) if f.name != "count" and getattr(self, f.name) is not None]

    def without(self, name: str) -> "Desc":
        return replace(self, **{name: None})


def matches_attributes(o: SceneObject, d: Desc) -> bool:
    return all(getattr(o, k) == v for k, v in d.attributes().items())


def resolve(scene: Scene, desc: Desc, slack: float = 0.0) -> frozenset[int]:
    """The z indices of the objects ``desc`` picks out under the reading ``slack``."""
    cand = [o for o in scene.objects if matches_attributes(o, desc)]
    if desc.relation is not None:
        cand = _apply_relation(scene, cand, desc.relation, slack)
    if desc.region is not None:
        cand = [o for o in cand if in_region(scene, o, desc.region, slack)]
    if desc.extreme is not None:
        cand = _extreme(scene, cand, desc.extreme, slack)
    if desc.ordinal is not None:
        cand = _ordinal(scene, cand, desc.ordinal, slack)
    return frozenset(o.z for o in cand)


def resolves_uniquely(scene: Scene, desc: Desc, target: int) -> bool:
    """True when the strict, nominal and lenient readings all give exactly ``{target}``."""
    want = frozenset((target,))
    return all(resolve(scene, desc, s) == want for s in (-1.0, 0.0, 1.0))


def resolves_to_set(scene: Scene, desc: Desc, targets: Sequence[int]) -> bool:
    want = frozenset(targets)
    return all(resolve(scene, desc, s) == want for s in (-1.0, 0.0, 1.0))


def is_minimal(scene: Scene, desc: Desc, target: int, keep: Sequence[str] = ()) -> bool:
    """True when dropping any one component (except those in ``keep``) would no longer
    pick out ``target`` unambiguously: every word of the expression is needed."""
    return not any(resolves_uniquely(scene, desc.without(c), target) for c in desc.components() if c not in keep)


# ----------------------------------------------------------------------------- geometry

def in_region(scene: Scene, o: SceneObject, region: str, slack: float) -> bool:
    x, y = o.cx / scene.width, o.cy / scene.height
    if region == "center":
        lim = CENTER_BAND + slack * CENTER_MARGIN
        return abs(x - 0.5) < lim and abs(y - 0.5) < lim
    lim = REGION_BAND + slack * REGION_MARGIN
    tests = {"left": x < lim, "right": x > 1 - lim, "top": y < lim, "bottom": y > 1 - lim}
    parts = region.split()
    if any(p not in tests for p in parts):
        raise ValueError(f"unknown region '{region}': expected one of {REGIONS}")
    return all(tests[p] for p in parts)


def _keys(scene: Scene, o: SceneObject, side: str) -> tuple[float, ...]:
    """Values that are smallest for the object nearest ``side``: centre, then near edge,
    as fractions of the image side; for big/small the log equal-area radius."""
    w, h = scene.width, scene.height
    if side == "left":
        return (o.cx / w, o.box[0] / w)
    if side == "right":
        return (-o.cx / w, -o.box[2] / w)
    if side == "top":
        return (o.cy / h, o.box[1] / h)
    if side == "bottom":
        return (-o.cy / h, -o.box[3] / h)
    if side == "big":
        return (-math.log(o.scale),)
    if side == "small":
        return (math.log(o.scale),)
    raise ValueError(f"unknown extreme '{side}': expected one of {EXTREMES}")


def _extreme(scene: Scene, cand: list[SceneObject], side: str, slack: float) -> list[SceneObject]:
    if len(cand) <= 1:
        return cand
    m = abs(slack) * (SIZE_MARGIN if side in ("big", "small") else POS_MARGIN)
    keys = {o.z: _keys(scene, o, side) for o in cand}
    out = []
    for o in cand:
        others = [keys[p.z] for p in cand if p.z != o.z]
        wins = [keys[o.z][k] <= min(v[k] for v in others) + (m if slack >= 0 else -m) for k in range(len(keys[o.z]))]
        if (any(wins) if slack >= 0 else all(wins)):
            out.append(o)
    return out


def _ordinal(scene: Scene, cand: list[SceneObject], ordinal: tuple[int, str], slack: float) -> list[SceneObject]:
    k, side = ordinal
    if side not in SIDES:
        raise ValueError(f"unknown ordinal side '{side}': expected one of {SIDES}")
    m = abs(slack) * POS_MARGIN
    keys = {o.z: _keys(scene, o, side) for o in cand}
    out = []
    for o in cand:
        ok = []
        for j in range(2):
            v = keys[o.z][j]
            before_sure = sum(1 for p in cand if p.z != o.z and keys[p.z][j] < v - m)
            before_maybe = sum(1 for p in cand if p.z != o.z and keys[p.z][j] < v + m)
            if slack >= 0:
                ok.append(before_sure <= k - 1 <= before_maybe)
            else:
                ok.append(before_sure == k - 1 == before_maybe)
        if (any(ok) if slack >= 0 else all(ok)):
            out.append(o)
    return out


def related(o: SceneObject, kind: str, lms: Sequence[SceneObject], slack: float) -> bool:
    """Whether ``o`` stands in relation ``kind`` to the landmark(s) ``lms``."""
    if any(o.z == l.z for l in lms):
        return False
    if kind == "between":
        a, b = lms
        ab = (b.cx - a.cx, b.cy - a.cy)
        n2 = ab[0] ** 2 + ab[1] ** 2
        if n2 < 1e-6:
            return False
        t = ((o.cx - a.cx) * ab[0] + (o.cy - a.cy) * ab[1]) / n2
        dist = abs((o.cx - a.cx) * ab[1] - (o.cy - a.cy) * ab[0]) / n2  # as a fraction of |ab|
        lo, hi = BETWEEN_T[0] - slack * BETWEEN_MARGIN_T, BETWEEN_T[1] + slack * BETWEEN_MARGIN_T
        return lo < t < hi and dist < BETWEEN_D + slack * BETWEEN_MARGIN_D
    (l,) = lms
    dx, dy = o.cx - l.cx, o.cy - l.cy
    if kind == "near":
        return math.hypot(dx, dy) < (NEAR_FACTOR + slack * NEAR_MARGIN) * (o.scale + l.scale)
    direction = {"left_of": (-1.0, 0.0), "right_of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}.get(kind)
    if direction is None:
        raise ValueError(f"unknown relation '{kind}': expected one of {RELATIONS}")
    dist = math.hypot(dx, dy)
    if dist < 1e-6:
        return False
    cos = (dx * direction[0] + dy * direction[1]) / dist
    return cos > math.cos(math.radians(CONE_DEG + slack * CONE_MARGIN))


def _apply_relation(scene: Scene, cand: list[SceneObject], rel: Relation, slack: float) -> list[SceneObject]:
    groups = []
    for lm in rel.landmarks:
        ids = resolve(scene, lm, slack)
        if len(ids) != lm.count:
            return []  # a definite landmark that is missing or ambiguous refers to nothing
        groups.append([scene.objects[i] for i in sorted(ids)])
    lms = [o for g in groups for o in g]
    need = 2 if rel.kind == "between" else 1
    if len(lms) != need:
        raise ValueError(f"relation '{rel.kind}' needs {need} landmark object(s), the description gives {len(lms)}")
    return [o for o in cand if related(o, rel.kind, lms, slack)]
