"""The synthetic world's grammar read back (mmi.data.synthetic.parse): every generated
expression parses to a description that resolves to its own target; verdicts on a scene."""
from __future__ import annotations

import pytest

from mmi.data.synthetic import SynthConfig, generate_image, resolves_uniquely
from mmi.data.synthetic.parse import GrammarError, check, parse, shortest_expressions, unknown_words


@pytest.mark.parametrize("long", [False, True])
def test_every_generated_expression_parses_back_to_its_target(long):
    n = 0
    for index in range(25):
        g = generate_image(0, index, SynthConfig(long=long))
        for z, exprs in g.refs:
            for e in exprs:
                assert resolves_uniquely(g.scene, parse(e.text), z), e.text
                n += 1
    assert n > 60


@pytest.mark.parametrize("text, reason", [
    ("the cheetah", "'cheetah' is not a word"),
    ("red", "no noun"),
    ("the second square", "an ordinal needs"),
    ("the red blue square", "two colours"),
    ("the squares", "plural only"),
    ("the star between the circle", "'between' needs two objects"),
])
def test_text_outside_the_grammar_says_why(text, reason):
    with pytest.raises(GrammarError, match=reason):
        parse(text)


def test_verdicts_on_a_scene():
    g = generate_image(0, 3)
    scene = g.scene
    assert check(scene, "the object").kind == "ambiguous"
    assert check(scene, "the object").message == f"ambiguous: matches {len(scene.objects)} objects"
    assert check(scene, "a cheetah").kind == "grammar" and "outside the world's grammar" in check(scene, "a cheetah").message
    z, exprs = g.refs[0]
    v = check(scene, exprs[0].text)
    assert v.kind == "unique" and v.objects == (z,) and v.message.startswith(f"names object {z + 1}")
    absent = next(c for c in ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
                  if all(o.colour != c for o in scene.objects))
    assert check(scene, f"the {absent} object").kind == "none"
    assert unknown_words("The red CUBE, left!") == ["cube"]


def test_shortest_expressions_name_their_object():
    g = generate_image(0, 5)
    for z in range(len(g.scene.objects)):
        for kind, text in shortest_expressions(g.scene, z).items():
            assert check(g.scene, text).objects == (z,), (kind, text)
