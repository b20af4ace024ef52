"""The predictor's additions for the app: re-thresholding a kept result, and the word-removal
variants decoded in one batch."""
from __future__ import annotations

import numpy as np
import pytest

from mmi.predictor import Predictor, ablation_ious


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint)


def image() -> np.ndarray:
    img = np.full((50, 70, 3), 180, np.uint8)
    img[10:30, 5:35] = (200, 30, 30)
    return img


def test_rethreshold_equals_predicting_at_that_threshold(predictor):
    exprs = ["the red cube on the left", "a blue ball"]
    kept = predictor.predict(image(), exprs, 0.5)
    calls = predictor.encode_calls
    for thr in (0.2, 0.5, 0.8):
        direct = predictor.predict(image(), exprs, thr)
        for k, d in zip(kept, direct):
            r = predictor.rethreshold(k, thr)
            assert np.array_equal(r.mask, d.mask) and r.area == d.area and r.regions == d.regions
            assert r.confidence == pytest.approx(d.confidence) and r.tokens == d.tokens
    assert predictor.encode_calls == calls  # the image features came from the cache
    with pytest.raises(ValueError, match="threshold must lie in"):
        predictor.rethreshold(kept[0], 1.5)


def test_word_ablation_decodes_every_variant_in_one_batch(predictor):
    calls = []
    decode = predictor.model.decode

    def counting(feats, words, mask, **kw):
        calls.append(tuple(words.shape))
        return decode(feats, words, mask, **kw)

    predictor.model.decode = counting
    try:
        items = predictor.word_ablation(image(), ["the red cube on the left", "red", "a blue ball"])
    finally:
        predictor.model.decode = decode
    assert calls == [(1 + 6 + 1 + 1 + 3, predictor.t_max)]  # expressions and variants together
    assert [it["variants"].shape[0] for it in items] == [6, 0, 3]
    full = predictor.predict(image(), ["the red cube on the left"])[0]
    lb = full.letterbox
    crop = full.canvas_prob[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    assert np.abs(items[0]["full"].astype(np.float32) - crop).max() < 2e-3  # float16 of the same map
    ious = ablation_ious(items[0], 0.5)
    assert len(ious) == 6 and all(0.0 <= v <= 1.0 for v in ious) and ablation_ious(items[1]) == []
