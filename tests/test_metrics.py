"""mmi.metrics against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmi.metrics import DEFINITIONS, IoUAccumulator, format_table, intersection_union, iou, summarize


def test_intersection_union_by_hand():
    gt = np.zeros((4, 5), np.uint8)
    gt[0:2, 0:3] = 1  # 6 px
    pred = np.zeros((4, 5), np.uint8)
    pred[1:3, 1:4] = 1  # 6 px, overlap rows 1, cols 1-2 -> 2 px
    assert intersection_union(pred, gt) == (2, 10)
    assert iou(2, 10) == pytest.approx(0.2)
    # tensors and non-0/1 values are accepted (nonzero = foreground)
    assert intersection_union(torch.from_numpy(pred * 255), torch.from_numpy(gt).bool()) == (2, 10)


def test_empty_prediction_and_empty_union():
    gt = np.zeros((3, 3), np.uint8)
    gt[1, 1] = 1
    empty = np.zeros((3, 3), np.uint8)
    assert intersection_union(empty, gt) == (0, 1)  # empty prediction: IoU 0
    assert intersection_union(empty, empty) == (0, 0)  # empty union
    assert iou(0, 0) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((2, 3)), np.zeros((3, 2)))


def test_summarize_by_hand():
    # IoUs: 8/10 = 0.8, 1/4 = 0.25, 0/0 -> 0 (empty union), 9/10 = 0.9, 6/10 = 0.6
    inter = [8, 1, 0, 9, 6]
    union = [10, 4, 0, 10, 10]
    s = summarize(inter, union)
    assert s["count"] == 5
    assert s["oIoU"] == pytest.approx(24 / 34)
    assert s["mIoU"] == pytest.approx((0.8 + 0.25 + 0 + 0.9 + 0.6) / 5)
    assert s["Prec@0.5"] == pytest.approx(3 / 5)
    assert s["Prec@0.6"] == pytest.approx(3 / 5)  # >= : 0.6 counts at 0.6
    assert s["Prec@0.7"] == pytest.approx(2 / 5)
    assert s["Prec@0.8"] == pytest.approx(2 / 5)  # 0.8 counts at 0.8
    assert s["Prec@0.9"] == pytest.approx(1 / 5)


def test_oiou_weights_large_objects_miou_does_not():
    s = summarize([100, 0], [100, 1])  # a perfect large object, a missed tiny one
    assert s["oIoU"] == pytest.approx(100 / 101)
    assert s["mIoU"] == pytest.approx(0.5)


def test_summarize_rejects_bad_input_and_handles_empty():
    with pytest.raises(ValueError):
        summarize([3], [2])
    with pytest.raises(ValueError):
        summarize([1, 2], [3])
    s = summarize([], [])
    assert s["count"] == 0 and s["oIoU"] == 0.0 and s["mIoU"] == 0.0


def test_accumulator_groups_and_table():
    acc = IoUAccumulator()
    a = np.zeros((2, 2), np.uint8)
    a[0] = 1
    assert acc.add_masks(a, a, "spatial")[2] == 1.0
    assert acc.add(1, 4, "colour") == 0.25
    acc.add(0, 0, "spatial")
    groups = acc.by_group()
    assert set(groups) == {"spatial", "colour"}
    assert groups["spatial"]["count"] == 2 and groups["spatial"]["mIoU"] == pytest.approx(0.5)
    assert groups["spatial"]["oIoU"] == pytest.approx(1.0)  # 2/2; the empty union adds nothing
    assert acc.summary()["oIoU"] == pytest.approx(3 / 6)
    table = format_table([("all", acc.summary())])
    assert "oIoU" in table and "50.00" in table
    assert "empty" in DEFINITIONS["mIoU"] and ">=" in DEFINITIONS["Prec@X"]
