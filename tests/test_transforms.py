"""Letterbox, its inverse and the tensor conversion.

Round-trip bound measured here: a blob mask letterboxed (down to 0.43x or up to 2.6x),
mapped back with ``Letterbox.inverse`` and thresholded at 0.5 agrees with the original
on >= 99% of pixels, and every disagreeing pixel lies within 2 px of the mask boundary.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from mmi.data.transforms import PAD_COLOR, Letterbox, letterbox, letterbox_mask, to_image, to_tensor


def _blob(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((((yy - h * 0.45) / (h * 0.3)) ** 2 + ((xx - w * 0.55) / (w * 0.25)) ** 2) <= 1).astype(np.uint8)


def _near_edge(m: np.ndarray, px: int) -> np.ndarray:
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return (cv2.dilate(m, k) - cv2.erode(m, k)) > 0


@pytest.mark.parametrize("h,w,s", [(200, 300, 128), (300, 200, 96), (160, 120, 416), (97, 131, 96)])
def test_mask_round_trip(h, w, s):
    m = _blob(h, w)
    lb = Letterbox.fit(h, w, s)
    lm = letterbox_mask(m, lb)
    assert lm.shape == (s, s) and lm.dtype == np.uint8 and set(np.unique(lm)) <= {0, 1}
    assert abs(lm.sum() - m.sum() * lb.scale**2) <= 0.05 * m.sum() * lb.scale**2 + 4
    back = lb.inverse(lm.astype(np.float32))
    assert back.shape == (h, w) and back.dtype == np.float32
    wrong = (back >= 0.5) != (m > 0)
    assert wrong.mean() <= 0.01, wrong.mean()
    assert not (wrong & ~_near_edge(m, 2)).any()


def test_inverse_from_low_resolution_and_tensors():
    m = _blob(120, 200)
    lb = Letterbox.fit(120, 200, 128)
    lm = letterbox_mask(m, lb).astype(np.float32)
    quarter = cv2.resize(lm, (32, 32), interpolation=cv2.INTER_AREA)  # a stride-4 prediction
    back = lb.inverse(torch.from_numpy(quarter)[None, None])
    assert back.shape == (120, 200)
    assert ((back >= 0.5) == (m > 0)).mean() >= 0.98
    with pytest.raises(ValueError, match="square"):
        lb.inverse(np.zeros((32, 16), np.float32))


@pytest.mark.parametrize(
    "h,w,s,new_hw,pad",
    [
        (30, 90, 60, (20, 60), (20, 0)),  # wide: pad top/bottom
        (90, 30, 60, (60, 20), (0, 20)),  # tall: pad left/right
        (1, 100, 32, (1, 32), (15, 0)),  # 1 x N
        (100, 1, 32, (32, 1), (0, 15)),  # N x 1
        (1, 1, 16, (16, 16), (0, 0)),
        (64, 64, 64, (64, 64), (0, 0)),
    ],
)
def test_letterbox_shapes_and_padding(h, w, s, new_hw, pad):
    img = np.full((h, w, 3), (10, 200, 30), np.uint8)
    canvas, lb = letterbox(img, s)
    assert canvas.shape == (s, s, 3) and canvas.dtype == np.uint8
    assert (lb.new_h, lb.new_w) == new_hw and (lb.pad_y, lb.pad_x) == pad
    inside = np.zeros((s, s), bool)
    inside[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = True
    assert (canvas[inside] == (10, 200, 30)).all()
    assert (canvas[~inside] == PAD_COLOR).all()
    assert lb.inverse(inside.astype(np.float32)).min() > 0.99  # all of the image maps back inside


def test_letterbox_keeps_left_right_and_top_bottom():
    img = np.zeros((40, 100, 3), np.uint8)
    img[:, :50, 0] = 255  # left half red
    img[:20, :, 2] = 255  # top half blue
    canvas, lb = letterbox(img, 50)
    row = lb.pad_y + lb.new_h // 2
    assert canvas[row, 5, 0] == 255 and canvas[row, 45, 0] == 0
    assert canvas[lb.pad_y + 1, 25, 2] == 255 and canvas[lb.pad_y + lb.new_h - 2, 25, 2] == 0


def test_letterbox_dict_round_trip():
    lb = Letterbox.fit(37, 211, 64)
    d = json.loads(json.dumps(lb.to_dict()))
    assert Letterbox.from_dict(d) == lb
    with pytest.raises(ValueError, match="pad_x"):
        Letterbox.from_dict({k: v for k, v in d.items() if k != "pad_x"})


def test_bad_inputs():
    with pytest.raises(ValueError, match="H, W, 3"):
        letterbox(np.zeros((10, 10), np.uint8), 32)
    with pytest.raises(ValueError, match="empty"):
        letterbox(np.zeros((0, 10, 3), np.uint8), 32)
    with pytest.raises(ValueError, match="differs"):
        letterbox_mask(np.zeros((10, 12), np.uint8), Letterbox.fit(12, 10, 32))


def test_to_tensor_normalises_and_inverts():
    canvas, _ = letterbox(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8), 32)
    x = to_tensor(canvas)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x[:, 0, 0].abs().max() < 0.02  # the padding colour is the mean
    np.testing.assert_array_equal(to_image(x), canvas)


def test_normalize_uint8_gives_the_numbers_of_to_tensor():
    """The uint8 transfer path normalises on the device: the same float32 values as the loader's
    to_tensor, for each input normalisation."""
    import numpy as np
    import torch

    from mmi.data import normalize_uint8, to_tensor
    from mmi.data.transforms import NORMS

    rng = np.random.default_rng(0)
    canvases = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    raw = torch.stack([torch.from_numpy(np.ascontiguousarray(c.transpose(2, 0, 1))) for c in canvases])
    for norm in (None, *NORMS.values()):
        ref = torch.stack([to_tensor(c, norm) for c in canvases])
        out = normalize_uint8(raw, norm)
        assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert not torch.equal(normalize_uint8(raw, NORMS["unit"]), normalize_uint8(raw, NORMS["imagenet"]))
