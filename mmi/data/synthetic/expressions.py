"""Referring expressions for the objects of a scene, checked by the resolver.

Five expression types (the ``type`` key of every sentence):

* ``attribute``: "the small purple star" (attributes only);
* ``position``: "the square at the top right" (absolute region of the image);
* ``extreme``: "the leftmost green object", "the biggest circle";
* ``relation``: "the triangle below the red circle", "the star between the two squares";
* ``ordinal``: "the second square from the left".

Default set: every description is minimal: dropping any attribute or modifier would no
longer pick out the target (the resolver says so), and the spatial types need at least two
objects matching the head words, so the spatial words are necessary. The only redundant
word allowed is the shape noun ("the red circle" where "the red one" would do), and only
when no other word becomes redundant with it. Long set
(``long=True``): a minimal core is extended with further true facts (attributes, a region,
a relation, a richer landmark) towards 8 to 18 words (at most 20; shorter when no extension
keeps it unique); its type is the core's. In both sets
each description resolves to exactly its target under the strict, nominal and lenient
readings (:func:`~.resolver.resolves_uniquely`); expressions that do not are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations
from typing import Callable, Optional, Sequence

import numpy as np

from ...text import tokenize
from .language import realise
from .resolver import (ATTRIBUTES, EXTREMES, REGIONS, SIDES, Desc, Relation, in_region, is_minimal, related,
                       resolve, resolves_to_set, resolves_uniquely)
from .scene import Scene, SceneObject

TYPES = ("attribute", "position", "extreme", "relation", "ordinal")
TYPE_WEIGHTS = {"attribute": 1.0, "position": 1.8, "extreme": 1.1, "relation": 1.5, "ordinal": 1.5}
MAX_WORDS = {False: 15, True: 20}
LONG_MIN_WORDS = 8
_ATTR_WEIGHT = {"shape": 3.0, "colour": 3.0, "size": 1.2, "pattern": 1.0}


@dataclass
class Expression:
    """A checked description, its English text and its type (one of TYPES)."""

    desc: Desc
    text: str
    type: str


class _Gen:
    """Description search for one scene (one random stream)."""

    def __init__(self, scene: Scene, rng: np.random.Generator, long: bool, required: Sequence[str] = ()):
        self.scene, self.rng, self.long, self.required = scene, rng, long, tuple(required)
        self.objs = scene.objects
        self._landmarks: dict[int, Optional[Desc]] = {}

    # ------------------------------------------------------------------ helpers

    def heads(self, t: SceneObject, max_size: int, by_size: bool = False, exclude: Sequence[str] = ()) -> list[Desc]:
        """Head descriptions (attribute subsets of ``t`` that contain the required ones),
        in a weighted random order (shape and colour preferred); by_size: smallest first."""
        free = [a for a in ATTRIBUTES if a not in self.required and a not in exclude]
        subsets = [tuple(self.required) + c for k in range(0, max_size - len(self.required) + 1)
                   for c in combinations(free, k)]
        keys = []
        for s in subsets:
            w = float(np.prod([_ATTR_WEIGHT[a] for a in s])) if s else 0.6
            keys.append((len(s) if by_size else 0, -self.rng.random() ** (1.0 / w)))
        order = sorted(range(len(subsets)), key=lambda i: keys[i])
        return [Desc(**{a: getattr(t, a) for a in subsets[i]}) for i in order]

    def count(self, head: Desc) -> int:
        return len(resolve(self.scene, head))

    def ok(self, d: Desc, t: SceneObject) -> bool:
        """Unique under every reading, and minimal."""
        return resolves_uniquely(self.scene, d, t.z) and is_minimal(self.scene, d, t.z, keep=self.required)

    def _shuffled(self, items: Sequence) -> list:
        return [items[i] for i in self.rng.permutation(len(items))]

    def landmark(self, o: SceneObject) -> Optional[Desc]:
        """The minimal attribute description of ``o`` (at most 2 attributes), or None."""
        if o.z not in self._landmarks:
            self._landmarks[o.z] = None
            saved, self.required = self.required, ()
            for d in self.heads(o, 2, by_size=True):
                if d.attributes() and (d.shape or d.colour) and resolves_uniquely(self.scene, d, o.z) \
                        and is_minimal(self.scene, d, o.z):
                    self._landmarks[o.z] = d
                    break
            self.required = saved
        return self._landmarks[o.z]

    # ------------------------------------------------------------------ one per type

    def attribute(self, t: SceneObject) -> Optional[Desc]:
        for d in self.heads(t, 3, by_size=True):
            if d.attributes() and self.ok(d, t):
                return d
        return None

    def position(self, t: SceneObject) -> Optional[Desc]:
        regions = self._shuffled([r for r in REGIONS if in_region(self.scene, t, r, -1.0)])
        for head in self.heads(t, 2):
            if self.count(head) < 2:
                continue
            for r in regions:
                d = replace(head, region=r)
                if self.ok(d, t):
                    return d
        return None

    def extreme(self, t: SceneObject) -> Optional[Desc]:
        for side in self._shuffled(EXTREMES):
            excl = ("size",) if side in ("big", "small") else ()
            for head in self.heads(t, 2, exclude=excl):
                if self.count(head) >= 2 and self.ok(replace(head, extreme=side), t):
                    return replace(head, extreme=side)
        return None

    def ordinal(self, t: SceneObject) -> Optional[Desc]:
        for side in self._shuffled(SIDES):
            for head in self.heads(t, 2):
                if self.count(head) < 3:
                    continue
                for k in (2, 3):
                    d = replace(head, ordinal=(k, side))
                    if self.ok(d, t):
                        return d
        return None

    def relation(self, t: SceneObject) -> Optional[Desc]:
        options: list[Relation] = []
        for o in self.objs:
            if o.z == t.z or self.landmark(o) is None:
                continue
            for kind in ("left_of", "right_of", "above", "below", "near"):
                if related(t, kind, [o], -1.0):
                    options.append(Relation(kind, (self.landmark(o),)))
        for a, b in combinations(self.objs, 2):
            if t.z in (a.z, b.z) or not related(t, "between", [a, b], -1.0):
                continue
            plural = self._plural(a, b)
            if plural is not None and self.rng.random() < 0.6:
                options.append(Relation("between", (plural,)))
            elif self.landmark(a) is not None and self.landmark(b) is not None:
                options.append(Relation("between", (self.landmark(a), self.landmark(b))))
        options = self._shuffled(options)
        for head in self.heads(t, 2):
            if self.count(head) < 2:
                continue
            for rel in options:
                d = replace(head, relation=rel)
                if self.ok(d, t):
                    return d
        return None

    def _plural(self, a: SceneObject, b: SceneObject) -> Optional[Desc]:
        """'the two squares': attributes shared by a and b that match exactly them."""
        for d in self.heads(a, 2, by_size=True):
            attrs = d.attributes()
            if attrs and all(getattr(b, k) == v for k, v in attrs.items()) and (d.shape or d.colour):
                d2 = replace(d, count=2)
                if resolves_to_set(self.scene, d, (a.z, b.z)):
                    return d2
        return None

    # ------------------------------------------------------------------ long set

    def extend(self, d: Desc, t: SceneObject) -> Desc:
        """Add true facts about ``t`` to ``d`` while it stays unique and <= 20 words."""
        steps: list[Callable[[Desc], Optional[Desc]]] = [self._more_attributes, self._add_region,
                                                          self._add_relation, self._richer_landmark]
        goal = int(self.rng.integers(LONG_MIN_WORDS, 19))
        for step in self._shuffled(steps) * 2:
            if _words(realise(d, self.rng)) >= goal:
                break
            new = step(d)
            if new is not None and resolves_uniquely(self.scene, new, t.z) and _words(realise(new, self.rng)) <= 18:
                d = new
        return d

    def _target(self, d: Desc) -> SceneObject:
        return self.objs[next(iter(resolve(self.scene, d)))]

    def _more_attributes(self, d: Desc) -> Optional[Desc]:
        t = self._target(d)
        missing = [a for a in ATTRIBUTES if getattr(d, a) is None
                   and not (a == "size" and d.extreme in ("big", "small"))]
        if not missing:
            return None
        a = missing[int(self.rng.integers(len(missing)))]
        return replace(d, **{a: getattr(t, a)})

    def _add_region(self, d: Desc) -> Optional[Desc]:
        if d.region is not None:
            return None
        t = self._target(d)
        side = d.extreme or (d.ordinal[1] if d.ordinal else None)
        regions = [r for r in REGIONS if in_region(self.scene, t, r, -1.0) and (side is None or side not in r)]
        return replace(d, region=self._shuffled(regions)[0]) if regions else None

    def _add_relation(self, d: Desc) -> Optional[Desc]:
        if d.relation is not None:
            return None
        t = self._target(d)
        rel = self.relation(t)
        return replace(d, relation=rel.relation) if rel is not None else None

    def _richer_landmark(self, d: Desc) -> Optional[Desc]:
        if d.relation is None or d.relation.kind == "between":
            return None
        lm = d.relation.landmarks[0]
        o = self.objs[next(iter(resolve(self.scene, lm)))]
        extra = self._more_attributes(lm) if self.rng.random() < 0.5 else self._add_region(lm)
        if extra is None or not resolves_uniquely(self.scene, extra, o.z):
            return None
        return replace(d, relation=Relation(d.relation.kind, (extra,)))


def _words(text: str) -> int:
    return len(tokenize(text))


def describe_object(scene: Scene, target: int, rng: np.random.Generator, n: int, long: bool = False,
                    required: Sequence[str] = (), gen: Optional[_Gen] = None) -> list[Expression]:
    """Up to ``n`` expressions of distinct types for object ``target`` (z index).

    ``required``: attributes every head must name (the compositional split uses
    ("colour", "shape")). Returns fewer (or none) when no valid description exists.
    """
    gen = gen or _Gen(scene, rng, long, required)
    t = scene.objects[target]
    w = np.array([TYPE_WEIGHTS[k] for k in TYPES])
    order = [TYPES[i] for i in np.argsort(-rng.random(len(TYPES)) ** (1.0 / w), kind="stable")]
    out: list[Expression] = []
    for kind in order:
        if len(out) >= n:
            break
        d = getattr(gen, kind)(t)
        if d is None:
            continue
        if d.shape is None and rng.random() < 0.6:
            # the natural head noun, unless it makes another word redundant
            noun = replace(d, shape=t.shape)
            if resolves_uniquely(scene, noun, target) and is_minimal(scene, noun, target, keep=("shape", *required)):
                d = noun
        if long:
            d = gen.extend(d, t)
        for _ in range(4):
            text = realise(d, rng)
            if _words(text) <= MAX_WORDS[long]:
                break
        else:
            continue
        if not resolves_uniquely(scene, d, target):
            raise AssertionError(f"generated description does not resolve to object {target}: {d}")
        out.append(Expression(d, text, kind))
    return out


def describe_scene(scene: Scene, rng: np.random.Generator, long: bool = False) -> list[tuple[int, list[Expression]]]:
    """Referred objects and their expressions: [(z, [Expression, ...]), ...].

    Compositional scenes refer to their held-out objects only, always naming colour and
    shape; other scenes refer to 2 to 4 objects (fewer when the scene allows no more).
    """
    if scene.split == "compositional":
        targets, required, want = list(scene.held_out), ("colour", "shape"), len(scene.held_out)
    else:
        targets = [int(i) for i in rng.permutation(len(scene.objects))]
        required, want = (), int(rng.integers(2, 5))
    gen = _Gen(scene, rng, long, required)
    refs = []
    for z in targets:
        if len(refs) >= want:
            break
        n = int(rng.choice([1, 2, 3], p=[0.2, 0.45, 0.35]))
        exprs = describe_object(scene, z, rng, n, long=long, required=required, gen=gen)
        if exprs:
            refs.append((z, exprs))
    return refs
