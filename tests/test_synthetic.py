"""The synthetic referring world: determinism, masks, expressions, splits, loader."""
from __future__ import annotations

import json
import os
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mmi.data.pickle_safe import load_refs
from mmi.data.synthetic import (HELD_OUT, TYPES, Desc, Relation, Scene, SceneObject, SynthConfig, ann_id_of,
                                generate_image, resolve, resolves_uniquely, write_dataset)
from mmi.data.synthetic.__main__ import main as cli_main
from mmi.data.synthetic.examples import write_examples
from mmi.data.synthetic.scene import MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS
from mmi.text import Vocabulary, tokenize

N_IMAGES = 40
SEED = 3
CONFIG = SynthConfig(width=200, height=150)
LONG = SynthConfig(name="synref_long", long=True, width=200, height=150, image_format="png")
SHAPES_SET = {"circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart"}
SPLITS = {"train", "val", "testA", "testB", "compositional"}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' numpy-2 notice
ASSETS = os.path.join(os.path.dirname(__file__), "..", "assets", "examples")


def _files(root: str, config: SynthConfig) -> dict[str, bytes]:
    out = {}
    for sub in (config.name, os.path.join("images", config.name)):
        for f in sorted(os.listdir(os.path.join(root, sub))):
            with open(os.path.join(root, sub, f), "rb") as fh:
                out[os.path.join(sub, f)] = fh.read()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Default set with 1 and 2 workers, another seed, and the long set (PNG)."""
    roots = {k: str(tmp_path_factory.mktemp(k)) for k in ("a", "b", "c", "long")}
    stats = write_dataset(roots["a"], N_IMAGES, SEED, CONFIG, workers=1, progress=False)
    write_dataset(roots["b"], N_IMAGES, SEED, CONFIG, workers=2, progress=False)
    write_dataset(roots["c"], N_IMAGES, SEED + 1, CONFIG, workers=1, progress=False)
    write_dataset(roots["long"], N_IMAGES, SEED, LONG, workers=2, progress=False)
    gens = {i: generate_image(SEED, i, CONFIG) for i in range(N_IMAGES)}
    long_gens = {i: generate_image(SEED, i, LONG) for i in range(N_IMAGES)}
    return {"roots": roots, "stats": stats, "gens": gens, "long_gens": long_gens}


def _load(root: str, config: SynthConfig) -> tuple[dict, list]:
    with open(os.path.join(root, config.name, "instances.json"), encoding="utf8") as f:
        inst = json.load(f)
    return inst, load_refs(os.path.join(root, config.name, "refs(unc).p"))


def test_deterministic_across_workers_and_seeds(data):
    a, b, c = (_files(data["roots"][k], CONFIG) for k in "abc")
    assert len(a) == N_IMAGES + 2
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), "same seed, 1 vs 2 workers: files differ"
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k]]
    assert "synref/instances.json" in differ and "synref/refs(unc).p" in differ
    assert sum(k.startswith("images") for k in differ) == N_IMAGES, "another seed must give other images"


def test_masks_round_trip(data):
    """Every annotation's RLE decodes to the generator's own mask of that object."""
    inst, _ = _load(data["roots"]["a"], CONFIG)
    by_image = {im["id"]: im for im in inst["images"]}
    assert len(by_image) == N_IMAGES
    n_anns = 0
    for ann in inst["annotations"]:
        im = by_image[ann["image_id"]]
        g = data["gens"][im["id"] - 1]
        z = ann["id"] - ann_id_of(im["id"], 0)
        assert g.file_name == im["file_name"] and (im["height"], im["width"]) == g.masks.shape[1:]
        seg = ann["segmentation"]  # [rle]: what the refer toolkit's getMask decodes and sums
        assert isinstance(seg, list) and len(seg) == 1 and isinstance(seg[0]["counts"], str)
        decoded = mask_utils.decode(seg).sum(axis=2)
        assert np.array_equal(decoded.astype(bool), g.masks[z])
        assert ann["area"] == int(g.masks[z].sum()) and ann["iscrowd"] == 0
        o = g.scene.objects[z]
        assert o.visible_area == ann["area"], "scene sampler and renderer disagree on the visible part"
        assert o.visible_area >= MIN_VISIBLE_PIXELS and o.visible_area >= MIN_VISIBLE_FRACTION * o.full_area
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(g.masks[z])
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        n_anns += 1
    assert n_anns == sum(len(g.scene.objects) for g in data["gens"].values())
    # masks of one image are disjoint (layer order) and the PNG pixels are the rendered ones
    for i, g in data["long_gens"].items():
        assert g.masks.sum(axis=0).max() <= 1
        path = os.path.join(data["roots"]["long"], "images", LONG.name, g.file_name)
        img = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(img, g.image)


@pytest.mark.parametrize("key,config", [("a", CONFIG), ("long", LONG)])
def test_expressions_resolve_to_their_object(data, key, config):
    inst, refs = _load(data["roots"][key], config)
    gens = data["gens" if key == "a" else "long_gens"]
    by_ref = {}
    for r in refs:
        by_ref.setdefault(r["image_id"], []).append(r)
    n = 0
    for i, g in gens.items():
        written = by_ref.get(g.image_id, [])
        assert len(written) == len(g.refs) >= 1
        for r, (z, exprs) in zip(written, g.refs):
            assert r["ann_id"] == ann_id_of(g.image_id, z) and r["split"] == g.scene.split
            assert [s["raw"] for s in r["sentences"]] == [e.text for e in exprs]
            assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
            for s, e in zip(r["sentences"], exprs):
                assert s["type"] == e.type and s["tokens"] == tokenize(e.text)
                _assert_words_name_desc(e.text, e.desc)
                assert resolve(g.scene, e.desc) == {z}, (e.text, e.desc)
                assert resolves_uniquely(g.scene, e.desc, z), e.text
                n += 1
    assert n == sum(len(r["sentences"]) for r in refs) > N_IMAGES


def _assert_words_name_desc(text: str, d: Desc) -> None:
    """Every attribute and modifier of ``d`` (and of its landmarks) has its words in ``text``."""
    from mmi.data.synthetic import language as L

    padded = f" {text} "

    def has(options) -> bool:
        return any(f" {w} " in padded for w in options)

    if d.colour:
        assert has(L.COLOUR_WORDS[d.colour]), (text, d.colour)
    if d.shape:
        assert has([w for pair in L.SHAPE_WORDS[d.shape] for w in pair]), (text, d.shape)
    if d.size:
        assert has(L.SIZE_WORDS[d.size]), (text, d.size)
    if d.pattern:
        assert has(L.PATTERN_WORDS[d.pattern] + L.PATTERN_PHRASES.get(d.pattern, ())), (text, d.pattern)
    if d.region:
        assert has(L.REGION_ADJ[d.region] + L.REGION_PHRASES[d.region]), (text, d.region)
    if d.extreme:
        assert has(L.EXTREME_ADJ[d.extreme] + L.EXTREME_PHRASES.get(d.extreme, ())), (text, d.extreme)
    if d.ordinal:
        assert has(L.ORDINAL_WORDS[d.ordinal[0]]) and f"from the {d.ordinal[1]}" in text, (text, d.ordinal)
    if d.relation:
        assert has(L.RELATION_PHRASES[d.relation.kind]), (text, d.relation.kind)
        for lm in d.relation.landmarks:
            _assert_words_name_desc(text, lm)


def test_lengths_types_and_splits(data):
    _, refs = _load(data["roots"]["a"], CONFIG)
    _, long_refs = _load(data["roots"]["long"], LONG)
    lens = [len(s["tokens"]) for r in refs for s in r["sentences"]]
    long_lens = [len(s["tokens"]) for r in long_refs for s in r["sentences"]]
    assert 1 <= min(lens) and max(lens) <= 15
    assert max(long_lens) <= 20 and np.mean(long_lens) > np.mean(lens) + 3
    assert {r["split"] for r in refs} == SPLITS
    for rs in (refs, long_refs):
        types = Counter(s["type"] for r in rs for s in r["sentences"])
        assert set(types) == set(TYPES), types
    assert all(1 <= len(r["sentences"]) <= 3 for r in refs)
    # several objects per image are referred
    per_image = Counter(r["image_id"] for r in refs if r["split"] != "compositional")
    assert np.mean(list(per_image.values())) >= 2


def test_compositional_holdout(data):
    held = set(HELD_OUT)
    seen_comp = 0
    for gens in (data["gens"], data["long_gens"]):
        for g in gens.values():
            combos = {o.combo for o in g.scene.objects}
            if g.scene.split != "compositional":
                assert not combos & held, (g.scene.split, combos & held)
                continue
            seen_comp += 1
            for z, exprs in g.refs:
                o = g.scene.objects[z]
                assert o.combo in held
                for e in exprs:  # the held-out pair is named
                    assert (e.desc.colour, e.desc.shape) == o.combo
    assert seen_comp >= 2


def test_refs_pickle_is_plain_builtins(data):
    path = os.path.join(data["roots"]["a"], CONFIG.name, "refs(unc).p")
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80\x02", "expected a protocol-2 pickle"
    refs = load_refs(path)  # refuses every global

    def check(x):
        assert type(x) in (dict, list, str, int, float), type(x)
        if isinstance(x, dict):
            for k, v in x.items():
                check(k), check(v)
        elif isinstance(x, list):
            for v in x:
                check(v)

    check(refs)
    keys = {"ref_id", "ann_id", "image_id", "split", "category_id", "file_name", "sent_ids", "sentences"}
    assert all(set(r) == keys for r in refs)
    assert all(set(s) == {"sent_id", "sent", "raw", "tokens", "type"} for r in refs for s in r["sentences"])
    # the indices the refer toolkit builds are consistent
    inst, _ = _load(data["roots"]["a"], CONFIG)
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    assert len({r["ref_id"] for r in refs}) == len(refs) and len(anns) == len(inst["annotations"])
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids)
    for r in refs:
        ann = anns[r["ann_id"]]
        assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"]
        assert r["file_name"] == images[r["image_id"]]["file_name"] and cats[r["category_id"]] in SHAPES_SET
        assert all(s["sent"] == " ".join(s["tokens"]) for s in r["sentences"])


def test_loader_reads_the_set(data):
    """build_dataset (the refer-layout loader) gives the generator's masks."""
    from mmi.data import build_dataset

    root = data["roots"]["a"]
    ds = build_dataset("synref", root, "train", image_size=64, vocab=None, t_max=None, train=False)
    ds.set_vocab(Vocabulary.from_sentences(ds.sentences()))
    checked = 0
    for i in range(0, len(ds), 7):
        item = ds[i]
        meta = item["meta"]
        g = data["gens"][meta["image_id"] - 1]
        z = meta["ann_id"] - ann_id_of(meta["image_id"], 0)
        assert np.array_equal(ds.original_mask(i).astype(bool), g.masks[z])
        assert meta["orig_hw"] == g.masks.shape[1:] and item["mask"].shape == (1, 64, 64)
        assert item["mask"].sum() > 0
        checked += 1
    assert checked >= 5
    for split in ("val", "testA", "testB", "compositional"):
        assert len(build_dataset("synref", root, split, 64, None, None, train=False)) > 0
    long_ds = build_dataset("synref_long", data["roots"]["long"], "train", 64, None, None, train=True)
    assert long_ds.t_max == 20 and len(long_ds) > 0


def _obj(z: int, shape: str, colour: str, cx: float, cy: float, scale: float = 10.0, size: str = "medium") -> SceneObject:
    return SceneObject(z=z, shape=shape, colour=colour, size=size, pattern="solid", cx=cx, cy=cy, scale=scale,
                       rotation=0.0, rgb=(0, 0, 0), pattern_angle=0.0, pattern_period=6.0,
                       box=(cx - scale, cy - scale, cx + scale, cy + scale))


def test_resolver_semantics():
    objs = [_obj(0, "square", "red", 40, 100), _obj(1, "star", "blue", 150, 100), _obj(2, "square", "red", 260, 100),
            _obj(3, "circle", "red", 150, 30), _obj(4, "square", "green", 165, 100, scale=16.0, size="large")]
    scene = Scene(300, 200, "train", objs, {})
    assert resolve(scene, Desc(shape="square")) == {0, 2, 4}
    assert resolves_uniquely(scene, Desc(shape="square", extreme="left"), 0)
    assert resolves_uniquely(scene, Desc(shape="square", ordinal=(2, "left")), 4)
    assert resolves_uniquely(scene, Desc(shape="square", region="right"), 2)
    assert resolves_uniquely(scene, Desc(extreme="big"), 4)
    assert resolves_uniquely(scene, Desc(shape="circle", relation=Relation("above", (Desc(shape="star"),))), 3)
    two = Desc(shape="square", colour="red", count=2)
    assert resolves_uniquely(scene, Desc(shape="star", relation=Relation("between", (two,))), 1)
    # a landmark that is not unique refers to nothing; near-ties are rejected by the margins
    assert resolve(scene, Desc(relation=Relation("above", (Desc(colour="red", shape="square"),)))) == frozenset()
    assert resolve(scene, Desc(colour="red", extreme="top")) == {3}
    # star and circle share x (a tie: no third from the left); the green square is 15 px away
    assert resolve(scene, Desc(ordinal=(3, "left"))) == frozenset()
    assert resolve(scene, Desc(ordinal=(3, "left")), slack=1.0) == {1, 3, 4}
    # a second square 10 px (< margin) right of the leftmost: nominally leftmost, not unambiguous
    near = Scene(300, 200, "train", objs + [_obj(5, "square", "red", 50, 160)], {})
    assert resolve(near, Desc(shape="square", extreme="left")) == {0}
    assert not resolves_uniquely(near, Desc(shape="square", extreme="left"), 0)
    assert resolve(near, Desc(shape="square", extreme="left"), slack=1.0) == {0, 5}
    with pytest.raises(ValueError, match="unknown region"):
        resolve(scene, Desc(region="upstairs"))


def test_cli_and_examples(tmp_path, capsys):
    assert cli_main(["--out", str(tmp_path / "d"), "--images", "3", "--seed", "1", "--workers", "1", "--quiet",
                     "--size", "160x120", "--format", "png"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 3 and os.path.isfile(tmp_path / "d" / "synref" / "refs(unc).p")
    assert len(os.listdir(tmp_path / "d" / "images" / "synref")) == 3
    with pytest.raises(SystemExit):
        cli_main(["--out", str(tmp_path / "e"), "--size", "big"])
    # the shipped examples are what the script writes
    entries = write_examples(str(tmp_path / "ex"))
    with open(os.path.join(ASSETS, "examples.json"), encoding="utf8") as f:
        assert json.load(f) == entries
    for e in entries:
        assert 3 <= len(e["expressions"]) <= 4 and len(e["types"]) == len(e["expressions"])
        with open(os.path.join(ASSETS, e["file_name"]), "rb") as a, open(tmp_path / "ex" / e["file_name"], "rb") as b:
            assert a.read() == b.read()
