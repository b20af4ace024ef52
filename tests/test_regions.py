"""mmi.regions: every region of a mask, or the one holding the highest probability."""
from __future__ import annotations

import numpy as np
import pytest

from mmi.regions import bounding_box, keep_regions, label, peak_label, split_regions


def _two_blobs():
    prob = np.zeros((20, 30), np.float32)
    prob[2:12, 2:12] = 0.7    # the larger region, lower probabilities
    prob[14:18, 20:24] = 0.6
    prob[15, 21] = 0.95        # the peak lies in the smaller one
    return prob > 0.5, prob


def test_peak_keeps_the_region_of_the_highest_probability_only():
    mask, prob = _two_blobs()
    kept = keep_regions(mask, prob, "peak")
    assert kept.sum() == 16 and kept[15, 21] and not kept[2:12, 2:12].any()
    assert (kept <= mask).all()
    prob[5, 5] = 0.99  # now the larger one holds it
    kept = keep_regions(mask, prob, "peak")
    assert kept.sum() == 100 and kept[5, 5] and not kept[14:18, 20:24].any()


def test_all_one_region_and_empty_masks_are_returned_as_they_are():
    mask, prob = _two_blobs()
    assert keep_regions(mask, prob, "all") is mask
    one = np.zeros_like(mask)
    one[3:6, 3:6] = True
    assert keep_regions(one, prob, "peak") is one
    empty = np.zeros_like(mask)
    assert not keep_regions(empty, prob, "peak").any()
    diagonal = np.eye(5, dtype=bool)  # 8-connected: one region
    assert keep_regions(diagonal, np.random.default_rng(0).random((5, 5)), "peak").sum() == 5


def test_bad_mode_and_shapes_are_refused():
    mask, prob = _two_blobs()
    with pytest.raises(ValueError, match="regions must be one of all, peak"):
        keep_regions(mask, prob, "largest")
    with pytest.raises(ValueError, match="differ"):
        keep_regions(mask, prob[:10], "peak")


def test_peak_label_reads_the_highest_probability_inside_the_mask():
    """The map's maximum inside the mask, wherever the map's own maximum lies; ties: the first in
    row-major order."""
    prob = np.zeros((6, 8), np.float32)
    prob[1, 1], prob[4, 6], prob[0, 4] = 0.7, 0.8, 0.95  # the map's maximum lies outside the mask
    mask = np.zeros((6, 8), bool)
    mask[0:3, 0:3] = mask[3:6, 5:8] = True
    n, labels = label(mask)
    assert n == 2 and peak_label(labels, mask, prob) == labels[4, 6]
    prob[0, 4] = 0.0  # now inside: the same answer from the map's own maximum
    assert peak_label(labels, mask, prob) == labels[4, 6]
    prob[1, 1] = 0.8  # a tie: the first in row-major order
    assert peak_label(labels, mask, prob) == labels[1, 1]
    with pytest.raises(ValueError, match="differ"):
        peak_label(labels, mask, prob[:, :4])


def test_regions_found_in_the_masks_box_are_the_whole_images():
    """split_regions labels only the box around the mask: the count and the kept region are those
    of labelling the whole image (regions touching the borders, ties of the peak, one pixel)."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = rng.integers(1, 40, 2)
        prob = rng.random((h, w)).astype(np.float32)
        prob = np.round(prob * 8) / 8  # coarse values: ties of the peak are common
        mask = prob > rng.choice([0.5, 0.7, 0.9])
        n_full, labels = label(mask)
        kept, n = split_regions(mask, prob, "peak")
        assert n == n_full
        if n_full >= 2:
            assert np.array_equal(kept, labels == peak_label(labels, mask, prob)), trial
        else:
            assert kept is mask
        every, n_all = split_regions(mask, prob, "all")
        assert every is mask and n_all == n_full
    assert bounding_box(np.zeros((3, 4), bool)) is None
    one = np.zeros((5, 6), bool)
    one[4, 5] = one[1, 2] = True
    assert bounding_box(one) == (1, 5, 2, 6)


def test_bench_regions_times_both_ways_on_masks_they_agree_on(capsys):
    """bench/bench_regions.py: both ways give the same masks (checked before timing), a time each."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_regions.py")
    spec = importlib.util.spec_from_file_location("bench_regions", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    items = bench.masks(4, 60, 80)
    assert [split_regions(m, p, "all")[1] for m, p in items] == [1, 2, 1, 2]
    times = bench.run(items, repeats=1, rounds=2)
    assert set(times) == {bench.WHOLE, bench.BOX} and all(v > 0 for v in times.values())
    assert bench.main(["--size", "80x60", "--masks", "2", "--repeats", "1", "--rounds", "1"]) == 0
    assert "box / whole" in capsys.readouterr().out
