"""Realiser: a :class:`~.resolver.Desc` to an English referring expression.

Templates with alternatives (synonyms, "the"/"a", adjective or prepositional phrase,
word order) drawn from a random generator. The realiser only chooses words; what the
words mean is fixed by the resolver, so every alternative names the same thing.
"""
from __future__ import annotations

import numpy as np

from .resolver import Desc

SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("disk", "disks"), ("disc", "discs"), ("ball", "balls")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "hexagon": (("hexagon", "hexagons"),),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs"), ("plus", "pluses")),
    "heart": (("heart", "hearts"),),
}
GENERIC_WORDS = (("object", "objects"), ("shape", "shapes"), ("thing", "things"))
COLOUR_WORDS = {
    "red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
    "cyan": ("cyan", "turquoise"), "blue": ("blue",), "purple": ("purple", "violet"), "pink": ("pink", "magenta"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium", "medium-sized", "mid-sized"),
              "large": ("large", "big")}
PATTERN_WORDS = {"solid": ("solid", "plain"), "striped": ("striped", "stripy"), "dotted": ("dotted", "spotted"),
                 "outlined": ("outlined",)}
PATTERN_PHRASES = {"striped": ("with stripes",), "dotted": ("with dots", "with polka dots"),
                   "outlined": ("with a thick outline",)}
EXTREME_ADJ = {"left": ("leftmost",), "right": ("rightmost",), "top": ("topmost", "highest", "uppermost"),
               "bottom": ("lowest", "bottommost"), "big": ("biggest", "largest"), "small": ("smallest", "tiniest")}
EXTREME_PHRASES = {
    "left": ("furthest to the left", "farthest to the left", "closest to the left edge"),
    "right": ("furthest to the right", "farthest to the right", "closest to the right edge"),
    "top": ("closest to the top", "nearest the top"),
    "bottom": ("closest to the bottom", "nearest the bottom"),
}
ORDINAL_WORDS = {2: ("second", "2nd"), 3: ("third", "3rd")}
REGION_ADJ = {"left": ("left",), "right": ("right",), "top": ("top", "upper"), "bottom": ("bottom", "lower"),
              "center": ("middle", "central"), "top left": ("top left", "upper left"),
              "top right": ("top right", "upper right"), "bottom left": ("bottom left", "lower left"),
              "bottom right": ("bottom right", "lower right")}
REGION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side", "in the left part"),
    "right": ("on the right", "at the right", "on the right side", "in the right part"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "center": ("in the middle", "in the center", "in the centre"),
}
for _r in ("top left", "top right", "bottom left", "bottom right"):
    _v, _h = _r.split()
    _u = {"top": "upper", "bottom": "lower"}[_v]
    REGION_PHRASES[_r] = (f"at the {_r}", f"in the {_r} corner", f"in the {_u} {_h}", f"on the {_r}")
RELATION_PHRASES = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
    "near": ("next to", "beside", "near", "close to"),
    "between": ("between", "in between"),
}


def _pick(rng: np.random.Generator, options: tuple) -> str:
    return options[int(rng.integers(len(options)))]


def _lex(rng: np.random.Generator, lex: dict, table: dict, key: str):
    """The word for ``key``, chosen once per expression: one object's colour is never
    "pink" in one phrase and "magenta" in the next."""
    if (id(table), key) not in lex:
        lex[(id(table), key)] = _pick(rng, table[key])
    return lex[(id(table), key)]


def noun_phrase(d: Desc, rng: np.random.Generator, top: bool = True, lex: dict | None = None) -> str:
    """Realise ``d``. ``top`` False for landmarks (always "the", no "a"); ``lex`` the
    words already chosen in this expression."""
    lex = {} if lex is None else lex
    plural = d.count > 1
    pre: list[str] = []
    post: list[str] = []
    if plural:
        det = "the two"
    elif d.extreme is not None or d.ordinal is not None or not top:
        det = "the"
    else:
        det = _pick(rng, ("the",) * 8 + ("a", ""))
    if d.ordinal is not None:
        k, side = d.ordinal
        if rng.random() < 0.6:
            pre.append(_pick(rng, ORDINAL_WORDS[k]))
            ord_post = f"from the {side}"
        else:
            ord_post = f"{_pick(rng, ORDINAL_WORDS[k])} from the {side}"
    else:
        ord_post = ""
    ext_post = ""
    if d.extreme is not None:
        if d.extreme in EXTREME_PHRASES and rng.random() < 0.35:
            ext_post = _pick(rng, EXTREME_PHRASES[d.extreme])
        else:
            pre.append(_pick(rng, EXTREME_ADJ[d.extreme]))
    region_post = ""
    if d.region is not None:
        if not pre and rng.random() < 0.3:
            pre.append(_pick(rng, REGION_ADJ[d.region]))
        else:
            region_post = _pick(rng, REGION_PHRASES[d.region])
    if d.size is not None:
        pre.append(_lex(rng, lex, SIZE_WORDS, d.size))
    pattern_post = ""
    if d.pattern is not None:
        if d.pattern in PATTERN_PHRASES and rng.random() < 0.3:
            pattern_post = _pick(rng, PATTERN_PHRASES[d.pattern])
        else:
            pre.append(_lex(rng, lex, PATTERN_WORDS, d.pattern))
    if d.colour is not None:
        pre.append(_lex(rng, lex, COLOUR_WORDS, d.colour))
    if d.shape is not None:
        noun = _lex(rng, lex, SHAPE_WORDS, d.shape)[1 if plural else 0]
    elif pre and not plural and det == "the" and rng.random() < 0.3:
        noun = "one"
    else:
        noun = _pick(rng, GENERIC_WORDS)[1 if plural else 0]
    if det == "a" and (pre or [noun])[0][0] in "aeiou":
        det = "an"
    words = [det, *pre, noun, pattern_post, ord_post, ext_post, region_post]
    if d.relation is not None:
        if any(words[-4:]):  # "the heart on the right that is left of the star"
            words.append(_pick(rng, ("that is", "that is", "which is", "")))
        words.append(_relation_phrase(d, rng, lex))
    return " ".join(w for w in words if w)


def _relation_phrase(d: Desc, rng: np.random.Generator, lex: dict) -> str:
    rel = d.relation
    head = _pick(rng, RELATION_PHRASES[rel.kind])
    if rel.kind == "between" and len(rel.landmarks) == 2:
        a, b = (noun_phrase(l, rng, top=False, lex=lex) for l in rel.landmarks)
        return f"{head} {a} and {b}"
    return f"{head} {noun_phrase(rel.landmarks[0], rng, top=False, lex=lex)}"


def realise(d: Desc, rng: np.random.Generator) -> str:
    """One English expression for ``d`` (lower case, no punctuation)."""
    return noun_phrase(d, rng, top=True)
