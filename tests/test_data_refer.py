"""The refer-layout loader, the restricted unpickler and the torch dataset, on a tiny
real-format fixture (tests/fixtures_refer.py)."""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from mmi.data import DatasetError, Refer, UnsafePickleError, build_dataset, collate, letterbox_mask, load_refs
from mmi.data.pickle_safe import loads_restricted
from mmi.text import Vocabulary, tokenize

try:
    import fixtures_refer as fx
except ImportError:  # tests/ imported as a package
    from tests import fixtures_refer as fx

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fx.write_refer_fixture(str(tmp_path_factory.mktemp("refer")))


@pytest.fixture(scope="module")
def vocab(data):
    return Vocabulary.from_sentences(s for t in (fx.REFS_UNC, fx.REFS_UMD) for _, _, ss in t.values() for s in ss)


@pytest.fixture()
def fresh(tmp_path):
    """A fixture copy a test may damage."""
    return fx.write_refer_fixture(str(tmp_path / "root"))


# ----------------------------------------------------------------------------- pickles

def test_python2_pickle_with_latin1_bytes_loads(tmp_path):
    obj = [{"sent": "the café sign", "ref_id": 7, "big": 2**40, "x": 0.25, "tokens": ["a", "b"]}]
    data = fx.py2_pickle(obj)
    assert pickle.loads(data, encoding="latin1") == obj  # the writer itself is a valid pickle
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # the default ASCII decoding fails, hence the fallback
    assert loads_restricted(data) == obj
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    assert load_refs(path) == obj


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = fx.evil_pickle(f"echo pwned > {marker}")
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(payload)
    with pytest.raises(UnsafePickleError) as e:
        load_refs(bad)
    assert str(bad) in str(e.value) and "system" in str(e.value)
    assert not marker.exists(), "the refused pickle executed its command"
    pickle.loads(payload)  # control: a plain load does run it
    assert marker.read_text().strip() == "pwned"


def test_restricted_unpickler_refuses_persistent_ids():
    with pytest.raises(UnsafePickleError, match="persistent"):
        loads_restricted(b"\x80\x02]q\x00P1\na.", "x.p")


def test_unsafe_refs_file_inside_dataset_is_refused(fresh, tmp_path):
    refs = os.path.join(fresh.root, "refcoco", "refs(unc).p")
    marker = tmp_path / "pwned2"
    with open(refs, "wb") as f:
        f.write(fx.evil_pickle(f"touch {marker}"))
    with pytest.raises(DatasetError, match="refused"):
        Refer(fresh.root, "refcoco")
    assert not marker.exists()


def test_corrupt_refs_file_names_the_path(fresh):
    refs = os.path.join(fresh.root, "refcoco", "refs(unc).p")
    with open(refs, "wb") as f:
        f.write(b"\x80\x02]q\x00(garbage")
    with pytest.raises(DatasetError) as e:
        Refer(fresh.root, "refcoco")
    assert refs in str(e.value)


# ----------------------------------------------------------------------------- masks

def test_polygon_masks_match_pycocotools_and_the_drawing(data):
    refer = Refer(data.root, "refcoco")
    for ann_id in (101, 301, 302, 401):
        image_id, polys = fx.POLYGONS[ann_id]
        _, h, w = fx.IMAGES[image_id]
        got = refer.ann_mask(ann_id)
        want = mask_utils.decode(mask_utils.frPyObjects(polys, h, w)).max(axis=2)
        assert got.shape == (h, w) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
        drawn = np.zeros((h, w), np.uint8)
        cv2.fillPoly(drawn, [np.round(np.array(p).reshape(-1, 2)).astype(np.int32) for p in polys], 1)
        inter, union = (got & drawn).sum(), (got | drawn).sum()
        assert inter / union > 0.8, (ann_id, inter, union)


def test_multi_part_polygon_is_the_union(data):
    refer = Refer(data.root, "refcoco")
    _, polys = fx.POLYGONS[102]
    _, h, w = fx.IMAGES[1]
    parts = [mask_utils.decode(mask_utils.frPyObjects([p], h, w))[:, :, 0] for p in polys]
    assert all(p.sum() > 20 for p in parts) and (parts[0] & parts[1]).sum() == 0
    got = refer.ann_mask(102)
    np.testing.assert_array_equal(got, parts[0] | parts[1])


def test_rle_masks_decode_exactly(data):
    refer = Refer(data.root, "refcoco")
    with open(os.path.join(data.root, "refcoco", "instances.json")) as f:
        segs = {a["id"]: a["segmentation"] for a in json.load(f)["annotations"]}
    assert isinstance(segs[201]["counts"], str) and isinstance(segs[202]["counts"], list)
    for ann_id in (201, 202):
        assert data.rle[ann_id].sum() > 50
        np.testing.assert_array_equal(refer.ann_mask(ann_id), data.rle[ann_id])


# ----------------------------------------------------------------------------- splits

def _count(table, split, per_sentence):
    return sum(len(s) if per_sentence else 1 for _, sp, s in table.values() if sp == split)


def test_split_selection(data, vocab):
    refer = Refer(data.root, "refcoco")
    assert refer.split_by == "unc" and set(refer.splits()) == {"train", "val", "testA", "testB"}
    assert refer.ref_ids("testA") == [5] and refer.ref_ids("testB") == [6, 7]
    with pytest.raises(DatasetError, match="'test' is not a split"):
        refer.ref_ids("test")
    g = Refer(data.root, "refcocog")
    assert g.split_by == "umd" and g.ref_ids("test") == [14, 15]
    with pytest.raises(DatasetError, match="testA"):
        g.ref_ids("testA")
    ds = build_dataset("refcocog", data.root, "test", 32, vocab, None, train=False)
    assert len(ds) == 3 and ds.t_max == 20
    assert build_dataset("refcoco", data.root, "testB", 32, vocab, None, train=False).t_max == 15
    with pytest.raises(DatasetError, match="split_by"):
        Refer(data.root, "refcoco+", split_by="umd")
    with pytest.raises(DatasetError, match="unknown dataset 'coco'"):
        Refer(data.root, "coco")


@pytest.mark.parametrize("split", ["train", "val", "testA", "testB"])
def test_train_one_item_per_ref_eval_one_per_sentence(data, vocab, split):
    tr = build_dataset("refcoco", data.root, split, 32, vocab, 15, train=True)
    ev = build_dataset("refcoco", data.root, split, 32, vocab, 15, train=False)
    assert len(tr) == _count(fx.REFS_UNC, split, False)
    assert len(ev) == _count(fx.REFS_UNC, split, True)
    sents = [ev[i]["meta"]["sent_id"] for i in range(len(ev))]
    assert len(set(sents)) == len(sents)
    assert sorted(ev.sentences()) == sorted(s for _, sp, ss in fx.REFS_UNC.values() if sp == split for s in ss)


def test_set_epoch_redraws_deterministically(data, vocab):
    a = build_dataset("refcoco", data.root, "train", 32, vocab, 15, train=True, seed=3)
    b = build_dataset("refcoco", data.root, "train", 32, vocab, 15, train=True, seed=3)
    i = [r["ref_id"] for r in map(a.ref, range(len(a)))].index(2)  # the ref with 3 expressions
    draws = []
    for e in range(12):
        a.set_epoch(e)
        b.set_epoch(e)
        x = a[i]["meta"]["expression"]
        assert x == a[i]["meta"]["expression"] == b[i]["meta"]["expression"]
        draws.append(x)
    assert set(draws) <= set(fx.REFS_UNC[2][2]) and len(set(draws)) >= 2
    a.set_epoch(0)
    assert a[i]["meta"]["expression"] == draws[0]


def test_item_contents(data, vocab):
    ds = build_dataset("refcoco", data.root, "train", 48, vocab, 15, train=False)
    item = ds[2]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["words"].shape == (15,) and item["words"].dtype == torch.long
    assert item["word_mask"].dtype == torch.bool
    assert item["mask"].shape == (1, 48, 48) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    meta = item["meta"]
    assert set(meta) >= {"index", "ref_id", "sent_id", "ann_id", "image_id", "expression", "file_name", "orig_hw", "letterbox"}
    assert meta["index"] == 2 and meta["orig_hw"] == fx.IMAGES[meta["image_id"]][1:]
    n = int(item["word_mask"].sum())
    assert [vocab.words[j] for j in item["words"][:n]] == tokenize(meta["expression"])
    from mmi.data import Letterbox
    lb = Letterbox.from_dict(meta["letterbox"])
    full = ds.original_mask(2)
    assert full.shape == meta["orig_hw"]
    np.testing.assert_array_equal(item["mask"][0].numpy(), letterbox_mask(full, lb))
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 48, 48) and batch["mask"].shape == (3, 1, 48, 48)
    assert [m["index"] for m in batch["meta"]] == [0, 1, 2]


def test_items_the_memo_names_skip_their_image_and_collate_keeps_the_rest_in_order(fresh, vocab):
    """With ``memo_names``, every item names its image (file, size, mtime, S, scaling); an item
    whose name is there carries no image but the same mask and letterbox; collate stacks the
    images present, in order, and says which items have one; touching the file renames it."""
    ds = build_dataset("refcoco", fresh.root, "train", 48, vocab, 15, train=False)
    first = {}
    for i in range(len(ds)):
        first.setdefault(int(ds.ref(i)["image_id"]), i)
    (a, b), other = list(first.values())[:2], [i for i in range(len(ds)) if i not in first.values()]
    idx = [a, b, next(i for i in other if ds.ref(i)["image_id"] == ds.ref(a)["image_id"])]  # images 1, 2, 1
    plain = [ds[i] for i in idx]
    ds.memo_names = frozenset()
    named = [ds[i] for i in idx]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(plain, named))
    names = [it["meta"]["image_name"] for it in named]
    assert names[0] == names[2] != names[1]
    assert all(n.startswith("letterbox/1|48|") and it["meta"]["file_name"] in n for n, it in zip(names, named))
    assert names[0] != build_dataset("refcoco", fresh.root, "train", 64, vocab, 15, train=False).image_name(
        named[0]["meta"]["image_id"])  # another S: another tensor, another name
    ds.memo_names = frozenset([names[1]])
    items = [ds[i] for i in idx]
    assert [it["image"] is None for it in items] == [False, True, False]
    for a, b in zip(plain, items):
        assert torch.equal(a["mask"], b["mask"]) and a["meta"]["letterbox"] == b["meta"]["letterbox"]
    batch = collate(items)
    assert batch["image_names"] == names and batch["image_present"] == [True, False, True]
    assert torch.equal(batch["image"], torch.stack([plain[0]["image"], plain[2]["image"]]))
    assert collate([items[1], items[1]])["image"] is None
    path = os.path.join(ds.refer.image_dir, named[1]["meta"]["file_name"])
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ds[idx[1]]["image"] is not None  # the file changed: its old name no longer matches
    with pytest.raises(ValueError, match="do not name it"):
        collate([dict(items[1], meta={"index": 0}), plain[0]])


def test_corrupt_image_is_skipped_and_counted(fresh, vocab, caplog):
    path = fx.corrupt_image(fresh, 4)
    ds = build_dataset("refcoco", fresh.root, "testB", 32, vocab, 15, train=False)
    assert [ds.ref(i)["image_id"] for i in range(len(ds))] == [3, 4, 4]
    with caplog.at_level(logging.WARNING):
        item = ds[1]
    assert item["meta"]["index"] == 0 and item["meta"]["image_id"] == 3
    assert ds.skipped == 1 and path in caplog.text
    assert ds[2]["meta"]["index"] == 0 and ds.skipped == 1  # known bad: skipped quietly


def test_wrong_image_size_is_skipped(fresh, vocab):
    cv2.imwrite(fresh.image_path(3), np.zeros((5, 5, 3), np.uint8))
    ds = build_dataset("refcoco", fresh.root, "testB", 32, vocab, 15, train=False)
    assert ds[0]["meta"]["image_id"] == 4 and ds.skipped == 1


# ----------------------------------------------------------------------------- missing files

def _remove(root, rel):
    p = os.path.join(root, rel)
    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    return p


@pytest.mark.parametrize("rel", ["refcoco", "refcoco/instances.json", "refcoco/refs(unc).p", "images/train2014"])
def test_missing_files_raise_dataset_error_naming_the_path(fresh, vocab, rel):
    path = _remove(fresh.root, rel)
    with pytest.raises(DatasetError) as e:
        build_dataset("refcoco", fresh.root, "train", 32, vocab, 15, train=True)
    assert path in str(e.value) and "expected layout" in str(e.value)


def test_missing_root_and_google_refs(tmp_path, data, vocab):
    with pytest.raises(DatasetError, match="data root not found"):
        build_dataset("refcoco", str(tmp_path / "nowhere"), "train", 32, vocab, 15, train=True)
    with pytest.raises(DatasetError, match=r"refs\(google\)\.p"):
        build_dataset("refcocog", data.root, "train", 32, vocab, 20, train=True, split_by="google")


def test_split_without_refs(fresh, vocab):
    refs = load_refs(os.path.join(fresh.root, "refcoco", "refs(unc).p"))
    with open(os.path.join(fresh.root, "refcoco", "refs(unc).p"), "wb") as f:
        pickle.dump([r for r in refs if r["split"] != "testA"], f, protocol=2)
    with pytest.raises(DatasetError, match="split 'testA' has no refs") as e:
        build_dataset("refcoco", fresh.root, "testA", 32, vocab, 15, train=False)
    assert "refs(unc).p" in str(e.value)


def test_synthetic_layout_and_extra_splits(fresh, vocab):
    root = fresh.root
    os.makedirs(os.path.join(root, "synref"))
    shutil.copy(os.path.join(root, "refcoco", "instances.json"), os.path.join(root, "synref"))
    refs = load_refs(os.path.join(root, "refcoco", "refs(unc).p"))
    refs[4]["split"], refs[5]["split"] = "compositional", "novel"
    with open(os.path.join(root, "synref", "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    with pytest.raises(DatasetError) as e:
        build_dataset("synref", root, "train", 32, vocab, None, train=True)
    assert os.path.join(root, "images", "synref") in str(e.value)
    shutil.copytree(fresh.image_dir, os.path.join(root, "images", "synref"))
    assert len(build_dataset("synref", root, "compositional", 32, vocab, None, train=False)) == 2
    assert len(build_dataset("synref", root, "novel", 32, vocab, None, train=False)) == 1
    with pytest.raises(DatasetError, match="'nosuch' is not a split"):
        build_dataset("synref", root, "nosuch", 32, vocab, None, train=False)


def test_list_of_rle_parts_is_the_union_and_mixed_lists_are_refused():
    from pycocotools import mask as mask_utils

    from mmi.data.refer import decode_segmentation

    a = np.zeros((12, 10), dtype=np.uint8)
    b = np.zeros((12, 10), dtype=np.uint8)
    a[1:4, 1:5] = 1
    b[6:11, 3:9] = 1
    parts = []
    for m in (a, b):
        rle = mask_utils.encode(np.asfortranarray(m))
        parts.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    assert np.array_equal(decode_segmentation(parts, 12, 10), a | b)
    with pytest.raises(ValueError, match="mixes polygons"):
        decode_segmentation([[1, 1, 5, 1, 5, 5], parts[0]], 12, 10)


def test_language_probes_keep_the_target_and_change_the_words(data, vocab):
    ds = build_dataset("refcoco", data.root, "train", 32, vocab, 15, train=False)
    normal = [ds[i] for i in range(len(ds))]
    ds.set_language("empty")
    for i, item in enumerate(ds):
        assert item["meta"]["expression"] == "" and not item["word_mask"].any()
        assert torch.equal(item["mask"], normal[i]["mask"])
    ds.set_language("mismatched")
    by_image = {}
    for it in normal:
        by_image.setdefault(it["meta"]["image_id"], set()).add(it["meta"]["ref_id"])
    for i, item in enumerate(ds):
        own = normal[i]["meta"]
        assert torch.equal(item["mask"], normal[i]["mask"]) and item["meta"]["ref_id"] == own["ref_id"]
        other_exprs = {it["meta"]["expression"] for it in normal
                       if it["meta"]["image_id"] == own["image_id"] and it["meta"]["ref_id"] != own["ref_id"]}
        if len(by_image[own["image_id"]]) > 1:
            assert item["meta"]["expression"] in other_exprs
        else:
            assert item["meta"]["expression"] == own["expression"]
    assert ds.unmatched == sum(len(by_image[it["meta"]["image_id"]]) == 1 for it in normal) < len(ds)
    with pytest.raises(ValueError, match="unknown language probe"):
        ds.set_language("shuffled")


# ----------------------------------------------------------------------------- image roots and input scaling

@pytest.mark.parametrize("tree", ["images/train2014", "images/mscoco/images/train2014"])
def test_both_image_trees_are_found_without_flags(tmp_path, vocab, tree):
    """``<root>/images/train2014`` and the refer toolkit's own ``<root>/images/mscoco/images/train2014``."""
    root = tmp_path / "refer" / "data"
    fixture = fx.write_refer_fixture(str(root))
    want = root.joinpath(*tree.split("/"))
    if tree != "images/train2014":
        want.parent.mkdir(parents=True)
        shutil.move(fixture.image_dir, want)
    assert not (root / "images" / "train2014").exists() or tree == "images/train2014"
    ds = build_dataset("refcoco", str(root), "train", 32, vocab, 15, train=False)
    assert ds.refer.image_dir == str(want)
    assert ds[0]["image"].shape == (3, 32, 32)


def test_missing_image_tree_names_the_plain_folder(tmp_path, vocab):
    root = tmp_path / "root"
    fixture = fx.write_refer_fixture(str(root))
    shutil.rmtree(fixture.image_dir)
    with pytest.raises(DatasetError, match=r"images[/\\]train2014"):
        build_dataset("refcoco", str(root), "train", 32, vocab, 15, train=False)


def test_darknet_model_sees_rgb_over_255(data, vocab):
    from mmi.data import normalization
    from mmi.model import resolve_config

    darknet = resolve_config("paper_darknet53", 10)
    assert darknet["input_norm"] == "unit" and normalization(darknet) == ((0, 0, 0), (1, 1, 1))
    assert resolve_config("paper_swin_b", 10)["input_norm"] == "imagenet"
    assert normalization({"preset": "demo"}) == normalization(None) == normalization(resolve_config("demo", 10))
    ds = build_dataset("refcoco", data.root, "train", 32, vocab, 15, train=False, normalization=normalization(darknet))
    plain = build_dataset("refcoco", data.root, "train", 32, vocab, 15, train=False)
    canvas, _ = ds._canvas(int(ds.ref(0)["image_id"]))
    expect = torch.from_numpy(canvas.astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(ds[0]["image"], expect, atol=1e-6)
    assert not torch.allclose(plain[0]["image"], expect, atol=0.1)  # ImageNet mean/std otherwise
