"""Read an English referring expression back into a :class:`~.resolver.Desc`, and check it
against a scene with the world's own resolver.

The grammar is the realiser's (:mod:`.language`): every word and phrase it can write is
known here, with the same meaning. Modifier order is free ("the blue big square" reads as
"the big blue square"); a word the world does not have, or a phrase the realiser never
writes (no noun, two colours, "second" without "from the ..."), is outside the grammar.

- :func:`parse` (text -> Desc, :class:`GrammarError` with a short reason otherwise);
- :func:`check` (scene, text -> :class:`Verdict`: the object it names, ambiguous with N
  objects, names no object, or outside the grammar);
- :func:`shortest_expressions` (scene, object -> the shortest expression of each type
  the generator would write for it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional

import numpy as np

from ...text import tokenize
from .language import (COLOUR_WORDS, EXTREME_ADJ, EXTREME_PHRASES, GENERIC_WORDS, ORDINAL_WORDS, PATTERN_PHRASES,
                       PATTERN_WORDS, REGION_ADJ, REGION_PHRASES, RELATION_PHRASES, SHAPE_WORDS, SIZE_WORDS, realise)
from .resolver import Desc, Relation, resolve
from .scene import Scene


class GrammarError(ValueError):
    """The text is outside the synthetic world's grammar (the message says why)."""


def _lexicon() -> dict[tuple[str, ...], list[tuple[str, object]]]:
    lex: dict[tuple[str, ...], list[tuple[str, object]]] = {}

    def add(phrase: str, slot: str, value: object) -> None:
        lex.setdefault(tuple(tokenize(phrase)), []).append((slot, value))

    for w in ("the", "a", "an"):
        add(w, "det", None)
    add("two", "two", 2)
    for w in ("that is", "which is", "that", "which", "is"):
        add(w, "skip", None)
    add("and", "and", None)
    for shape, forms in SHAPE_WORDS.items():
        for one, many in forms:
            add(one, "shape", (shape, False))
            add(many, "shape", (shape, True))
    for one, many in GENERIC_WORDS:
        add(one, "noun", False)
        add(many, "noun", True)
    add("one", "noun", False)
    for table, slot in ((COLOUR_WORDS, "colour"), (SIZE_WORDS, "size"), (PATTERN_WORDS, "pattern"),
                        (PATTERN_PHRASES, "pattern"), (EXTREME_ADJ, "extreme"), (EXTREME_PHRASES, "extreme"),
                        (REGION_ADJ, "region"), (REGION_PHRASES, "region"), (RELATION_PHRASES, "relation")):
        for value, words in table.items():
            for w in words:
                add(w, slot, value)
    for k, words in ORDINAL_WORDS.items():
        for w in words:
            add(w, "ordinal", k)
    for side in ("left", "right", "top", "bottom"):
        add(f"from the {side}", "from", side)
    return lex


LEXICON = _lexicon()
MAX_PHRASE = max(len(k) for k in LEXICON)
KNOWN_WORDS = frozenset(w for k in LEXICON for w in k)


def unknown_words(text: str) -> list[str]:
    """Words of ``text`` that the synthetic world's grammar never uses."""
    return [w for w in tokenize(text) if w not in KNOWN_WORDS]


def _segmentations(tokens: list[str], start: int = 0) -> Iterator[list[tuple[str, object, str]]]:
    """Every split of ``tokens[start:]`` into lexicon phrases, longest phrases first."""
    if start == len(tokens):
        yield []
        return
    for n in range(min(MAX_PHRASE, len(tokens) - start), 0, -1):
        key = tuple(tokens[start : start + n])
        for slot, value in LEXICON.get(key, ()):
            for rest in _segmentations(tokens, start + n):
                yield [(slot, value, " ".join(key))] + rest


def _noun_phrase(segs: list[tuple[str, object, str]], landmark: bool) -> Desc:
    fields: dict[str, object] = {}
    noun, plural, count, k, side = False, False, 1, None, None
    for slot, value, text in segs:
        if slot in ("det", "skip"):
            continue
        if slot == "two":
            count = 2
        elif slot in ("shape", "noun"):
            if noun:
                raise GrammarError(f"two nouns in one phrase ('{text}')")
            noun = True
            if slot == "shape":
                fields["shape"], plural = value
            else:
                plural = bool(value)
        elif slot == "ordinal":
            if k is not None:
                raise GrammarError("two ordinals")
            k = int(value)
        elif slot == "from":
            side = value
        elif slot in ("colour", "size", "pattern", "extreme", "region"):
            if fields.get(slot) not in (None, value):
                raise GrammarError(f"two {slot}s ('{fields[slot]}' and '{value}')")
            fields[slot] = value
        else:
            raise GrammarError(f"'{text}' cannot stand here")
    if not noun:
        raise GrammarError("no noun: end with a shape or 'object'")
    if (k is None) != (side is None):
        raise GrammarError("an ordinal needs 'second/third ... from the left/right/top/bottom'"
                           if k is not None else "'from the ...' needs an ordinal ('second from the left')")
    if k is not None and fields.get("extreme"):
        raise GrammarError("an ordinal and a superlative together")
    if plural != (count == 2) or (count == 2 and not landmark):
        raise GrammarError("plural only as 'between the two ...'")
    return Desc(**fields, ordinal=(k, side) if k is not None else None, count=count)


def _build(segs: list[tuple[str, object, str]], landmark: bool = False) -> Desc:
    rel_at = next((i for i, s in enumerate(segs) if s[0] == "relation"), None)
    if rel_at is None:
        if any(s[0] == "and" for s in segs):
            raise GrammarError("'and' only in 'between ... and ...'")
        return _noun_phrase(segs, landmark)
    head = _noun_phrase(segs[:rel_at], landmark)
    kind, rest = segs[rel_at][1], segs[rel_at + 1 :]
    if not rest:
        raise GrammarError(f"'{segs[rel_at][2]}' needs an object after it")
    if kind == "between":
        ands = [i for i, s in enumerate(rest) if s[0] == "and"]
        if ands:
            lms = (_build(rest[: ands[0]], True), _build(rest[ands[0] + 1 :], True))
            if any(l.count != 1 for l in lms):
                raise GrammarError("'between A and B' takes one object on each side")
        else:
            lm = _build(rest, True)
            if lm.count != 2:
                raise GrammarError("'between' needs two objects ('the two squares' or 'A and B')")
            lms = (lm,)
    else:
        lm = _build(rest, True)
        if lm.count != 1:
            raise GrammarError(f"'{segs[rel_at][2]}' takes one object")
        lms = (lm,)
    return replace(head, relation=Relation(str(kind), lms))


def parse(text: str) -> Desc:
    """The description ``text`` expresses in the world's grammar; GrammarError otherwise."""
    tokens = tokenize(text or "")
    if not tokens:
        raise GrammarError("no words")
    unknown = [w for w in tokens if w not in KNOWN_WORDS]
    if unknown:
        shown = ", ".join(f"'{w}'" for w in dict.fromkeys(unknown))
        raise GrammarError(f"{shown} {'is not a word' if len(unknown) == 1 else 'are not words'} of the shapes world")
    first: Optional[GrammarError] = None
    for i, segs in enumerate(_segmentations(tokens)):
        if i >= 2000:
            break
        try:
            return _build(segs)
        except GrammarError as e:
            first = first or e
    raise first or GrammarError("the words do not form a phrase of the shapes world")


@dataclass(frozen=True)
class Verdict:
    """``kind``: ``unique`` (``objects`` holds its one object), ``ambiguous`` (several),
    ``none`` (no object) or ``grammar`` (outside the grammar; ``message`` says why).
    ``borderline``: the strict or lenient reading differs from the nominal one."""

    kind: str
    objects: tuple[int, ...]
    message: str
    borderline: bool = False
    desc: Optional[Desc] = None


def describe(scene: Scene, z: int) -> str:
    o = scene.objects[z]
    return f"the {o.size} {o.pattern} {o.colour} {o.shape}"


def check(scene: Scene, text: str) -> Verdict:
    """Which objects of ``scene`` the expression names, by the world's resolver."""
    try:
        d = parse(text)
    except GrammarError as e:
        return Verdict("grammar", (), f"outside the world's grammar: {e}")
    try:
        found = resolve(scene, d, 0.0)
        readings = {resolve(scene, d, s) for s in (-1.0, 1.0)}
    except ValueError as e:
        return Verdict("grammar", (), f"outside the world's grammar: {e}", desc=d)
    borderline = any(r != found for r in readings)
    objs = tuple(sorted(found))
    note = " (borderline: a stricter or looser reading differs)" if borderline else ""
    if not objs:
        return Verdict("none", objs, "names no object" + note, borderline, d)
    if len(objs) > 1:
        return Verdict("ambiguous", objs, f"ambiguous: matches {len(objs)} objects" + note, borderline, d)
    return Verdict("unique", objs, f"names object {objs[0] + 1} ({describe(scene, objs[0])})" + note, borderline, d)


def shortest_expressions(scene: Scene, z: int, seed: int = 0, tries: int = 8) -> dict[str, str]:
    """{type: text}: for each expression type the generator can write for object ``z``,
    its shortest wording among ``tries`` realisations (fewest words besides the article,
    "the ..." preferred, then alphabetical)."""
    from .expressions import TYPES, _Gen, _words

    gen = _Gen(scene, np.random.default_rng([seed, z]), long=False)
    target = scene.objects[z]
    out: dict[str, str] = {}
    for kind in TYPES:
        d = getattr(gen, kind)(target)
        if d is None:
            continue
        texts = {realise(d, np.random.default_rng([seed, z, i])) for i in range(tries)}
        # fewest words not counting the article; "the ..." before "a ..." and none
        out[kind] = min(texts, key=lambda t: (_words(t) - (t.split()[0] in ("the", "a", "an")),
                                              not t.startswith("the "), t))
    return out
