"""The predictor: original-size masks, batching, the feature cache, token reports,
thread safety, input normalisation and bad input."""
from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mmi.predictor import FULL_RES_PIXELS, Predictor, display_size, image_key, to_rgb
from mmi.regions import count_regions

EXPRS = ["the red cube on the left", "a blue ball", "the big green thing at the top"]


def scene(h: int = 48, w: int = 72, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 200, np.uint8)
    img[h // 4 : h // 2, w // 8 : w // 3] = (220, 30, 30)
    img[h // 2 :, w // 2 :] = rng.integers(0, 255, (h - h // 2, w - w // 2, 3), dtype=np.uint8)
    return img


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, cache_size=3)


def test_masks_maps_and_scores_at_the_original_size(predictor):
    img = scene(37, 101)
    preds = predictor.predict(img, EXPRS)
    assert [p.expression for p in preds] == EXPRS
    L, heads = predictor.num_layers, predictor.model.config["heads"]
    for p in preds:
        assert p.mask.shape == (37, 101) and p.mask.dtype == bool
        assert p.prob.shape == (37, 101) and p.prob.dtype == np.float32
        assert ((p.prob > 0.5) == p.mask).all()
        assert p.area == int(p.mask.sum())
        assert p.regions == count_regions(p.mask)
        fg = p.canvas_prob[p.letterbox.pad_y : p.letterbox.pad_y + p.letterbox.new_h,
                           p.letterbox.pad_x : p.letterbox.pad_x + p.letterbox.new_w]
        expected = fg[fg > 0.5].mean() if (fg > 0.5).any() else 0.0
        assert p.confidence == pytest.approx(float(expected), abs=1e-6)
        T = len(p.tokens)
        assert len(p.attention) == L
        for layer in range(L):
            lav = p.attention[layer]["lav"]
            assert lav.shape[:2] == (heads, T)
            assert torch.allclose(lav.flatten(2).sum(-1), torch.ones(heads, T), atol=1e-4)  # softmax over pixels
            for kind in ("lav", "val"):
                assert p.word_maps(layer, kind).shape == (T, 37, 101)
                assert p.word_maps(layer, kind, (10, 20)).shape == (T, 10, 20)


def test_batched_expressions_equal_one_by_one(predictor):
    img = scene(seed=1)
    together = predictor.predict(img, EXPRS)
    for expr, batched in zip(EXPRS, together):
        alone = predictor.predict(img, [expr])[0]
        np.testing.assert_allclose(batched.canvas_prob, alone.canvas_prob, atol=1e-5)
        np.testing.assert_allclose(batched.prob, alone.prob, atol=1e-5)
        for a, b in zip(batched.attention, alone.attention):
            assert torch.allclose(a["lav"], b["lav"], atol=1e-5) and torch.allclose(a["val"], b["val"], atol=1e-5)


def test_cache_reuses_features_and_gives_identical_results(tiny_checkpoint, monkeypatch):
    pred = Predictor.from_checkpoint(tiny_checkpoint, cache_size=2)
    calls = []
    original = pred.model.encode_image
    monkeypatch.setattr(pred.model, "encode_image", lambda x: calls.append(x.shape) or original(x))
    a, b, c = scene(seed=2), scene(seed=3), scene(seed=4)
    first = pred.predict(a, EXPRS[:2])
    again = pred.predict(a.copy(), EXPRS[:2])  # same content, another array
    assert len(calls) == 1 and pred.encode_calls == 1
    for x, y in zip(first, again):
        assert np.array_equal(x.canvas_prob, y.canvas_prob) and np.array_equal(x.mask, y.mask)
    pred.predict(Image.fromarray(a), EXPRS[2:])  # a PIL image of the same pixels hits too
    assert len(calls) == 1
    pred.predict(b, EXPRS[:1])
    pred.predict(c, EXPRS[:1])  # evicts a (cache of 2)
    assert len(calls) == 3
    pred.predict(a, EXPRS[:1])
    assert len(calls) == 4
    assert image_key(a) != image_key(a[:, :-1]) and image_key(a) != image_key(a.astype(np.uint16))


def test_each_expression_is_tokenised_once_and_kept(tiny_checkpoint, monkeypatch):
    """The check of a request and its decoding share one tokenisation; an expression asked for
    again is not tokenised again, and its results are the same."""
    pred = Predictor.from_checkpoint(tiny_checkpoint)
    seen = []
    original = pred.vocab.encode
    monkeypatch.setattr(pred.vocab, "encode", lambda s, t: seen.append(s) or original(s, t))
    first = pred.predict(scene(seed=5), EXPRS[:3])
    assert seen == EXPRS[:3]
    again = pred.predict(scene(seed=5), EXPRS[:3] + EXPRS[:1])
    assert seen == EXPRS[:3]
    for x, y in zip(first, again):
        assert np.array_equal(x.mask, y.mask) and x.tokens == y.tokens
    with pytest.raises(ValueError, match="has no words"):
        pred.predict(scene(seed=5), ["?!"])
    assert pred.word_ablation(scene(seed=5), EXPRS[:1])[0]["tokens"] == first[0].tokens and seen[-1] == "?!"


def test_unknown_and_truncated_words_are_reported(predictor):
    long_expr = " ".join(["red"] * 5 + ["zorblax"] + ["cube"] * 20)
    p = predictor.predict(scene(), [long_expr])[0]
    T = predictor.t_max
    assert len(p.tokens) == T and p.truncated and len(p.dropped) == 26 - T
    assert p.unknown == [False] * 5 + [True] + [False] * (T - 6)
    text = p.token_text()
    assert "?zorblax" in text and f"[cut {26 - T} word(s)" in text
    assert p.attention[0]["lav"].shape[1] == T
    short = predictor.predict(scene(), ["the red cube"])[0]
    assert not short.truncated and short.token_text() == "the red cube"


def test_concurrent_threads_match_sequential_results(predictor):
    images = [scene(seed=10), scene(40, 30, seed=11)]
    expected = [[p.canvas_prob for p in predictor.predict(im, EXPRS)] for im in images]
    predictor.clear_cache()
    results, errors = {}, []

    def work(k: int) -> None:
        try:
            for r in range(3):
                i = (k + r) % 2
                results[(k, r)] = (i, [p.canvas_prob for p in predictor.predict(images[i], EXPRS)])
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 12
    for i, probs in results.values():
        for got, want in zip(probs, expected[i]):
            np.testing.assert_allclose(got, want, atol=1e-5)
    assert predictor.encode_calls >= 2


def test_input_normalisation():
    rgb = scene(20, 30)
    grey = rgb[:, :, 0]
    assert np.array_equal(to_rgb(grey), np.repeat(grey[:, :, None], 3, 2))
    assert np.array_equal(to_rgb(Image.fromarray(grey, "L")), to_rgb(grey))
    assert np.array_equal(to_rgb(rgb.astype(np.uint16) * 257), rgb)  # 16-bit scaled to 8-bit
    assert np.array_equal(to_rgb(Image.fromarray(grey.astype(np.uint16) * 257)), to_rgb(grey))  # mode I;16
    assert np.abs(to_rgb(rgb.astype(np.float32) / 255).astype(int) - rgb).max() <= 1
    rgba = np.dstack([rgb, np.zeros((20, 30), np.uint8)])
    rgba[:5, :, 3] = 255
    out = to_rgb(rgba)  # transparent -> white, opaque kept
    assert (out[5:] == 255).all() and np.array_equal(out[:5], rgb[:5])
    assert np.array_equal(to_rgb(Image.fromarray(rgba, "RGBA")), out)
    assert to_rgb(np.zeros((1, 1), bool)).shape == (1, 1, 3)


def test_odd_sizes_and_a_large_image(predictor):
    for shape in [(1, 1, 3), (1, 300), (300, 1, 4), (5, 7)]:
        p = predictor.predict(np.full(shape, 128, np.uint8), ["red cube"])[0]
        assert p.mask.shape == shape[:2]
    h, w = 4200, 4100  # above FULL_RES_PIXELS: prob recomputed on access, regions on the canvas
    assert h * w > FULL_RES_PIXELS
    big = np.zeros((h, w, 3), np.uint8)
    big[: h // 2, : w // 3] = (255, 0, 0)
    p = predictor.predict(big, ["the red cube"])[0]
    assert p.mask.shape == (h, w) and p._prob is None
    assert p.prob.shape == (h, w) and ((p.prob > 0.5) == p.mask).all()
    assert p.area == int(p.mask.sum()) and p.regions >= (1 if p.area else 0)
    assert p.word_maps(-1, "lav", display_size(h, w, 256)).shape == (len(p.tokens), 256, 250)


def test_json_result_round_trips_the_mask(predictor):
    preds = predictor.predict(scene(), EXPRS[:2])
    doc = json.loads(json.dumps([p.to_json() for p in preds]))
    for p, d in zip(preds, doc):
        rle = {"size": d["mask_rle"]["size"], "counts": d["mask_rle"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), p.mask)
        assert len(d["attention"]) == predictor.num_layers
        for layer in d["attention"]:
            assert [w["word"] for w in layer["words"]] == p.tokens
            assert np.array(layer["words"][0]["lav"]).shape == tuple(layer["grid"])


@pytest.mark.parametrize("image, exprs, message", [
    (None, ["red"], "no image"),
    (np.zeros((0, 5, 3), np.uint8), ["red"], "no pixels"),
    (np.zeros((4, 4, 5), np.uint8), ["red"], "got shape (4, 4, 5)"),
    ("not-a-file.png", ["red"], "image file not found: not-a-file.png"),
    (np.zeros((4, 4, 3), np.uint8), [], "no expression"),
    (np.zeros((4, 4, 3), np.uint8), "\n  \n", "no expression"),
    (np.zeros((4, 4, 3), np.uint8), ["red", "  "], "expression 2 is empty"),
    (np.zeros((4, 4, 3), np.uint8), ["red", "😀 !!"], "expression 2 ('😀 !!') has no words"),
    (np.zeros((4, 4, 3), np.uint8), ["red"] * 33, "limit is 32"),
])
def test_bad_input_raises_a_clear_error(predictor, image, exprs, message):
    with pytest.raises(ValueError) as err:
        predictor.predict(image, exprs)
    assert message in str(err.value)


def test_bad_files_threshold_and_device(predictor, tmp_path, tiny_checkpoint):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        predictor.predict(str(txt), ["red"])
    png = tmp_path / "img.png"
    cv2.imwrite(str(png), scene()[:, :, ::-1])
    png.write_bytes(png.read_bytes()[:60])  # truncated
    with pytest.raises(ValueError, match="img.png"):
        predictor.predict(str(png), ["red"])
    with pytest.raises(ValueError, match="threshold"):
        predictor.predict(scene(), ["red"], threshold=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Predictor.from_checkpoint(tiny_checkpoint, device="cuda")


def test_predictor_feeds_the_models_own_input_scaling(tmp_path):
    """A model whose config says ``input_norm="unit"`` (Darknet) gets RGB/255, one without the
    key (an old checkpoint) ImageNet mean/std."""
    from mmi.data.transforms import IMAGENET_MEAN, IMAGENET_STD, letterbox
    from mmi.engine.checkpoint import save_inference
    from mmi.model import build_model
    from mmi.text import Vocabulary

    vocab = Vocabulary.from_sentences(["red cube"])
    rgb = scene(40, 56)
    canvas = letterbox(rgb, 64)[0].astype(np.float32) / 255
    expect = {"unit": canvas, "imagenet": (canvas - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)}
    for norm in ("unit", "imagenet"):
        model = build_model("tiny", len(vocab), input_norm=norm)
        if norm == "imagenet":
            del model.config["input_norm"]  # as stored before the setting existed
        path = str(tmp_path / f"{norm}.pt")
        save_inference(path, model, vocab)
        pred = Predictor.from_checkpoint(path, cache_size=1)
        seen = []
        pred.model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].permute(1, 2, 0).numpy()))
        pred.predict(rgb, ["red cube"], attention=False)
        assert np.allclose(seen[0], expect[norm], atol=1e-5), norm


def test_one_region_kept_on_request_and_by_default(tiny_checkpoint):
    """regions="peak" (the predictor's default or a call's): each mask is the region of the
    thresholded map holding its highest probability, ``regions`` still counts what was found,
    confidence is that region's; rethreshold keeps the mode; "all" leaves the mask alone."""
    from mmi.data.transforms import letterbox
    from mmi.predictor import _Enc

    peak = Predictor.from_checkpoint(tiny_checkpoint, regions="peak")
    S = peak.image_size
    _, lb = letterbox(np.zeros((48, 72, 3), np.uint8), S)
    canvas = np.zeros((S, S), np.float32)
    y0, x0 = lb.pad_y, lb.pad_x
    canvas[y0 + 4 : y0 + 20, x0 + 4 : x0 + 20] = 0.7   # a large region
    canvas[y0 + 24 : y0 + 28, x0 + 40 : x0 + 44] = 0.9  # a small one holding the peak
    enc = _Enc(["x"], [False], [])
    every = peak._result("x", canvas, lb, 0.5, enc, [], "all")
    kept = peak._result("x", canvas, lb, 0.5, enc, [], "peak")
    assert every.regions == kept.regions == 2 and count_regions(kept.mask) == 1
    assert (kept.mask <= every.mask).all() and 0 < kept.area < every.area / 4
    assert kept.confidence == pytest.approx(0.9, abs=1e-6) and every.confidence < 0.8
    assert kept.region_mode == "peak" and kept.to_json(attention=False)["region_mode"] == "peak"
    again = peak.rethreshold(kept, 0.6)  # only the small one is above 0.6 anyway
    assert again.region_mode == "peak" and again.area == kept.area
    low = peak.rethreshold(kept, 0.3)  # the small region a little wider, the large one still dropped
    assert count_regions(low.mask) == 1 and kept.area <= low.area < every.area / 2
    img = scene()
    by_default = peak.predict(img, ["a red thing"], attention=False)[0]
    asked = Predictor.from_checkpoint(tiny_checkpoint).predict(img, ["a red thing"], attention=False, regions="peak")[0]
    assert by_default.region_mode == asked.region_mode == "peak" and np.array_equal(by_default.mask, asked.mask)
    with pytest.raises(ValueError, match="regions must be one of"):
        peak.predict(img, ["a red thing"], regions="largest")
    with pytest.raises(ValueError, match="regions must be one of"):
        Predictor.from_checkpoint(tiny_checkpoint, regions="largest")


def test_precision_is_chosen_checked_and_used(tiny_checkpoint, monkeypatch):
    """amp: off keeps float32; bf16 runs the network under bf16 autocast (features cached in
    bf16: half the bytes) and still returns float32 maps; auto follows the CPU's bf16
    support; anything else is refused."""
    import mmi.engine.precision as precision

    img = scene()
    off = Predictor.from_checkpoint(tiny_checkpoint)
    bf16 = Predictor.from_checkpoint(tiny_checkpoint, amp="bf16")
    assert off.amp == "off" and bf16.amp == "bf16"
    a, b = off.predict(img, EXPRS)[0], bf16.predict(img, EXPRS)[0]
    assert b.canvas_prob.dtype == a.canvas_prob.dtype == np.float32 and b.mask.shape == a.mask.shape
    assert np.abs(a.canvas_prob - b.canvas_prob).max() < 0.05
    assert off.features(img)[0]["pixels"].dtype == torch.float32
    assert bf16.features(img)[0]["pixels"].dtype == torch.bfloat16
    assert bf16.cache_nbytes < 0.6 * off.cache_nbytes
    for has in (True, False):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda has=has: has)
        assert Predictor.from_checkpoint(tiny_checkpoint, amp="auto").amp == ("bf16" if has else "off")
    with pytest.raises(ValueError, match="amp must be one of"):
        Predictor.from_checkpoint(tiny_checkpoint, amp="fp16")


def test_bench_predictor_interleaves_the_cases_and_repeats_hit_the_cache(tiny_checkpoint, monkeypatch):
    """bench/bench_predictor.py: every case timed ``repeats`` times; each "first" on a new image
    (the model encodes it), each "repeat" from the cache; no image is made while the clock runs."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_predictor.py")
    spec = importlib.util.spec_from_file_location("bench_predictor", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pred = Predictor.from_checkpoint(tiny_checkpoint)
    clock = {"running": False, "made_while_running": 0}
    make, timed = bench.image, bench.timed

    def image(*args):
        clock["made_while_running"] += clock["running"]
        return make(*args)

    def timed_flagged(fn):
        clock["running"] = True
        try:
            return timed(fn)
        finally:
            clock["running"] = False

    monkeypatch.setattr(bench, "image", image)
    monkeypatch.setattr(bench, "timed", timed_flagged)
    medians, minima = bench.run(pred, EXPRS[:3], repeats=3, h=40, w=56)
    assert set(medians) == set(minima) == {"first, 1 expr", "repeat, 1 expr", "first, 3 expr", "repeat, 3 expr"}
    assert all(0 < minima[k] <= medians[k] for k in medians)
    assert clock["made_while_running"] == 0
    assert pred.encode_calls == 1 + 2 + 3 * 2  # the warm-up, the two cached images, each round's two new ones


def test_profile_predictor_prints_what_the_extra_expressions_cost(tiny_checkpoint, capsys):
    """bench/profile_predictor.py: two tables (torch operators, Python functions), N minus 1."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "profile_predictor.py")
    spec = importlib.util.spec_from_file_location("profile_predictor", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--checkpoint", tiny_checkpoint, "--amp", "off", "--expressions", "3", "--repeats", "1"]
    assert script.main(args + ["--top", "4"]) == 0
    out = capsys.readouterr().out
    assert "torch operators, self CPU: ms per request, 3 expressions minus 1" in out
    assert "Python functions, cumulative" in out
    assert sum(line.startswith(" ") for line in out.splitlines()) == 8  # 4 rows a table
    # Every row: which entries rank first is timing noise on a tiny model, but a caller's cumulative
    # time always holds its callee's, in each of the two runs.
    assert script.main(args + ["--top", "100000"]) == 0
    python_table = capsys.readouterr().out.split("Python functions, cumulative")[1].splitlines()[1:]
    rows = {line.split()[3]: [float(v) for v in line.split()[:3]] for line in python_table if line.strip()}
    predict = next(v for k, v in rows.items() if k.endswith("(predict)"))
    result = next(v for k, v in rows.items() if k.endswith("(_result)"))
    assert predict[1] >= result[1] > 0 and predict[2] >= result[2] > 0
