"""The region selector (mmi/model/select.py) and the model's select switches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmi.engine.trainer import load_init
from mmi.model import build_model, build_model_from_config
from mmi.model.select import SUPPRESS, RegionSelector, _region_shares, label_regions


def _batch(B: int = 2, S: int = 64, T: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(B, 3, S, S, generator=g), "words": torch.randint(2, 20, (B, T), generator=g),
            "word_mask": torch.ones(B, T, dtype=torch.bool), "mask": (torch.rand(B, 1, S, S, generator=g) > 0.7).float()}


def _two_blobs(left: float = 2.0, right: float = 3.0, size: int = 16) -> torch.Tensor:
    """(1, 1, size, size) logits: -3 everywhere, a 2x2 blob on the left and a 2x3 one on the right."""
    lg = torch.full((1, 1, size, size), -3.0)
    lg[0, 0, 6:8, 2:4] = left
    lg[0, 0, 6:8, 10:13] = right
    return lg


def _inputs(C: int = 8, h: int = 4, size: int = 16, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, h, size, size, generator=g), torch.randn(1, C, size // 4, size // 4, generator=g),
            torch.randn(1, C, generator=g))


def test_regions_are_8_connected_components_of_positive_logits():
    lg = torch.full((3, 1, 8, 8), -1.0)
    lg[0, 0, 1, 1] = lg[0, 0, 2, 2] = 1.0  # touching at a corner: one region
    lg[1, 0, 1, 1] = lg[1, 0, 5, 5] = 1.0  # apart: two
    (n0, lab0), (n1, lab1), (n2, lab2) = label_regions(lg)
    assert (n0, n1, n2) == (1, 2, 0) and lab2 is None
    assert lab1[1, 1] != lab1[5, 5] and lab1[0, 0] == 0


def test_the_kept_region_is_unchanged_and_the_others_are_dropped():
    torch.manual_seed(0)
    sel = RegionSelector(dim=8, hidden_channels=4).eval()
    lg = _two_blobs()
    out = sel(lg, *_inputs())
    kept = out > 0
    left, right = lg > 0, lg > 0
    left[..., 8:], right[..., :8] = False, False
    assert torch.equal(kept, left) or torch.equal(kept, right)  # exactly one of the two regions
    assert torch.equal(out[kept], lg[kept]) and torch.equal(out[lg <= 0], lg[lg <= 0])
    assert torch.all(out[(lg > 0) & ~kept] == SUPPRESS)
    one = lg.clone()
    one[..., 8:] = -3.0
    assert torch.equal(sel(one, *_inputs()), one)  # a single region: as it was


def test_the_choice_follows_the_scores(monkeypatch):
    sel = RegionSelector(dim=8, hidden_channels=4).eval()
    lg = _two_blobs(left=2.0, right=3.0)
    for scores, side in (([5.0, 0.0], slice(0, 8)), ([0.0, 5.0], slice(8, 16))):
        monkeypatch.setattr(sel, "scores", lambda x, *rest, s=scores: torch.tensor(s)[None])
        kept = sel(lg, *_inputs()) > 0
        assert kept[..., side].sum() > 0 and kept.sum() == kept[..., side].sum()


def test_region_features_describe_each_region():
    sel = RegionSelector(dim=8, hidden_channels=4)
    lg = _two_blobs(left=2.0, right=3.0)
    (n, labels), = label_regions(lg)
    hidden, grid, sentence = _inputs()
    x = sel.region_features(lg[0, 0], labels, n, hidden[0], grid[0], sentence[0])
    assert x.shape == (2, 4 + 8 + 11 + 8)
    geo = x[:, 12:23]
    left = 0 if labels[6, 2] == 1 else 1
    assert geo[left, 0] == 2.0 and geo[1 - left, 0] == 3.0  # highest logit
    assert geo[left, 2] == -1.0 and geo[1 - left, 2] == 0.0  # below the map's peak
    assert torch.isclose(geo[left, 3].exp() * 256, torch.tensor(4.0))  # area share
    assert geo[left, 4] < 0.25 < 0.5 < geo[1 - left, 4]  # centre x
    assert torch.allclose(geo[:, 10], torch.tensor(2.0)) and torch.equal(x[:, 23:], sentence.expand(2, -1))
    # the hidden features averaged over the region (same grid: exact)
    m = torch.from_numpy(labels == left + 1).float()
    assert torch.allclose(x[left, :4], (hidden[0] * m).sum((1, 2)) / m.sum())


@pytest.mark.parametrize("size", [(16, 16), (8, 4), (32, 32), (5, 7)])
def test_region_shares_are_the_regions_masks_resized_by_area(size):
    """_region_shares counts each cell's share with one bincount (or resizes the masks where the
    grid does not divide the map): the same as interpolate(mode="area") of each region's mask."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (32, 32), generator=g)
    masks = torch.stack([(labels == r).float() for r in range(1, 4)])
    expected = F.interpolate(masks[:, None], size=size, mode="area")[:, 0]
    assert torch.allclose(_region_shares(labels.flatten(), 3, 32, 32, size), expected, atol=1e-6)


def test_the_loss_targets_the_region_overlapping_the_mask_best():
    torch.manual_seed(0)
    sel = RegionSelector(dim=8, hidden_channels=4)
    lg = _two_blobs()
    target = torch.zeros(1, 1, 64, 64)
    target[..., 24:32, 8:16] = 1  # the left blob, at 4x
    opt = torch.optim.Adam(sel.parameters(), lr=0.01)
    for _ in range(30):
        loss, count = sel.loss(lg, *_inputs(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert count == 1 and loss.item() < 0.05
    kept = sel.eval()(lg, *_inputs()) > 0
    assert kept[..., :8].sum() == 4 and kept[..., 8:].sum() == 0
    # nothing to learn from: one region, or no region touching the target
    far = torch.zeros_like(target)
    far[..., 56:, 56:] = 1
    for logits, mask in ((lg.clamp(max=-1), target), (lg, far)):
        zero, count = sel.loss(logits, *_inputs(), mask)
        assert count == 0 and zero.item() == 0.0 and zero.requires_grad


def _fit(sel: RegionSelector, examples) -> RegionSelector:
    """Train ``sel`` (Adam, lr 3e-3) one step per example (logits, hidden, grid, sentence, target,
    keyword inputs); returned in eval mode."""
    opt = torch.optim.Adam(sel.parameters(), lr=0.003)
    for lg, hidden, grid, sentence, target, extra in examples:
        loss, _ = sel.loss(lg, hidden, grid, sentence, target, **extra)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sel.eval()


def test_a_selector_learns_to_keep_the_leftmost_region():
    """Trained on random scenes of 2-4 blobs whose target is always the leftmost, it keeps the
    leftmost on scenes it has not seen (the geometry and the regions' attention carry it)."""
    torch.manual_seed(0)

    def scene(g):
        lg = torch.full((1, 1, 24, 24), -3.0)
        n = int(torch.randint(2, 5, (1,), generator=g))
        cols = torch.randperm(5, generator=g)[:n] * 5 + 1
        for c in cols.tolist():
            r = int(torch.randint(1, 20, (1,), generator=g))
            lg[0, 0, r : r + 3, c : c + 3] = float(torch.rand(1, generator=g) * 4 + 0.5)
        target = torch.zeros(1, 1, 96, 96)
        c = int(cols.min())
        rows = (lg[0, 0, :, c] > 0).nonzero()[:, 0]
        target[..., 4 * int(rows.min()) : 4 * int(rows.max() + 1), 4 * c : 4 * (c + 3)] = 1
        return lg, target, c

    def examples(g):
        for _ in range(300):
            lg, target, _ = scene(g)
            yield (lg, *_inputs(size=24, seed=int(torch.randint(0, 1000, (1,), generator=g))), target, {})

    sel = _fit(RegionSelector(dim=8, hidden_channels=4), examples(torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(99)
    right = 0
    for i in range(40):
        lg, _, c = scene(g)
        kept = (sel(lg, *_inputs(size=24, seed=i)) > 0)[0, 0]
        right += int(kept[:, c].any() and kept.nonzero()[:, 1].min() == c)
    assert right >= 36


def test_the_model_selects_out_of_training_only():
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=8, select_regions=True)
    torch.nn.init.normal_(model.refiner.out.weight, std=0.5)
    batch = _batch(B=3)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert set(out) >= {"logits", "selected_from", "coarse_logits"}
    for b, (n, _) in enumerate(label_regions(out["selected_from"])):
        assert label_regions(out["logits"][b : b + 1])[0][0] == min(n, 1)
    # the predictor's path: one image's features, several expressions
    batch["image"] = batch["image"][:1].expand(3, -1, -1, -1)
    with torch.no_grad():
        whole = model(batch)["logits"]
        one = model.decode(model.encode_image(batch["image"][:1]), batch["words"], batch["word_mask"])["logits"]
    assert torch.allclose(whole, one, atol=1e-5)
    model.train()
    out = model(batch)
    assert "selected_from" not in out and "select_inputs" not in out and out["loss"].requires_grad


def test_select_only_trains_the_selector_alone(monkeypatch):
    torch.manual_seed(0)
    model = build_model("tiny", 20, select_regions=True, select_only=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.selector.training and not model.mask_head.training and not model.decoder.training
    assert all(p.requires_grad == n.startswith("selector.") for n, p in model.named_parameters())
    # the mask head's map holds two regions in every expression, the target the left one
    head = model.mask_head.forward

    def two_regions(*args, **kwargs):
        coarse, hidden = head(*args, **kwargs)
        return _two_blobs().expand_as(coarse).contiguous(), hidden

    monkeypatch.setattr(model.mask_head, "forward", two_regions)
    batch = _batch(B=4)
    batch["mask"] = torch.zeros(4, 1, 64, 64)
    batch["mask"][..., 24:32, 8:16] = 1
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        out = model(batch)
        assert out["select_count"] == 4 and set(k for k in out if k.startswith("loss")) == {"loss", "loss_select"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("selector.") for k in changed)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("selector."))


def test_a_selector_trains_beside_the_rest_of_the_network():
    """Without select_only the selector's loss is added to the others; its inputs are detached,
    so it changes nothing else (the mask head's gradients are the same with and without it)."""
    def grads(select: bool) -> tuple[dict, dict]:
        torch.manual_seed(0)  # the selector is built last: every other weight starts the same
        model = build_model("tiny", 20, refine_channels=8, select_regions=select).train()
        out = model(_batch())
        out["loss"].backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, g0 = grads(False)
    joint, g1 = grads(True)
    assert "loss_select" in joint and "select_count" in joint
    assert torch.allclose(joint["loss"], plain["loss"] + joint["loss_select"])
    for name, g in g0.items():
        assert torch.allclose(g, g1[name], atol=1e-6), name


def test_select_settings_are_checked_and_old_checkpoints_build_without_it():
    with pytest.raises(ValueError, match="select_only trains the region selector alone"):
        build_model("tiny", 20, select_only=True)
    with pytest.raises(ValueError, match="select_regions must be true or false"):
        build_model("tiny", 20, select_regions="yes")
    with pytest.raises(ValueError, match="set one of them"):
        build_model("tiny", 20, refine_channels=8, refine_only=True, select_regions=True, select_only=True)
    stored = dict(build_model("tiny", 20, refine_channels=8).config)
    for key in ("select_regions", "select_only"):
        stored.pop(key)
    assert build_model_from_config(stored).selector is None
    # a checkpoint without a selector initialises a model that has one: the selector stays new
    old = build_model("tiny", 20, refine_channels=8).state_dict()
    model = build_model("tiny", 20, refine_channels=8, select_regions=True)
    assert load_init(model, old) == ["selector"]
    assert torch.equal(model.refiner.out.weight, old["refiner.out.weight"])
    # the selector works with the mask head's own logits too (no refiner)
    plain = build_model("tiny", 20, select_regions=True).eval()
    with torch.no_grad():
        out = plain(_batch())
    assert out["logits"].shape == (2, 1, 16, 16) and "coarse_logits" not in out
    assert F.interpolate(out["logits"], size=4).shape == (2, 1, 4, 4)


def test_padded_batches_score_as_each_expression_alone():
    """scores() of B padded expressions equals each expression's scores alone (lab and model agree)."""
    torch.manual_seed(0)
    sel = RegionSelector(dim=8, hidden_channels=4, context=True, words=True, maps=2).eval()
    d_in = 4 + 8 + 11 + 8
    xs = [torch.randn(n, d_in) for n in (2, 4)]
    for x in xs:
        x[:, 4 + 8 + 4 : 4 + 8 + 10] = torch.rand(x.shape[0], 6)  # centre and box in [0, 1]
    grid, words = torch.randn(2, 8, 4, 4), torch.randn(2, 5, 8)
    maps = [torch.randn(len(r), 5, 8 * 2) for r in xs]  # map_features of each expression
    word_mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    x, mapped = torch.zeros(2, 4, d_in), torch.zeros(2, 4, 5, 8 * 2)
    pad = torch.ones(2, 4, dtype=torch.bool)
    for b, r in enumerate(xs):
        x[b, : len(r)], mapped[b, : len(r)], pad[b, : len(r)] = r, maps[b], False
    with torch.no_grad():
        both = sel.scores(x, pad, grid, words, word_mask, mapped)
        for b, r in enumerate(xs):
            alone = sel.scores(r, None, grid[b : b + 1], words[b : b + 1], word_mask[b : b + 1], maps[b])
            assert alone.shape == (len(r),) and torch.allclose(both[b, : len(r)], alone, atol=1e-5)
        # the words a padded position holds are not read; a sentence with no words still scores
        changed = words.clone()
        changed[0, 3:] = 100.0
        changed_maps = mapped.clone()
        changed_maps[0, :, 3:] = 100.0
        assert torch.allclose(sel.scores(x, pad, grid, changed, word_mask, changed_maps), both, atol=1e-5)
        assert torch.isfinite(sel.scores(x, pad, grid, words, torch.zeros_like(word_mask), mapped)).all()
    with pytest.raises(ValueError, match="grid"):
        sel.scores(xs[0], None, None, words[:1], word_mask[:1], maps[0])


def _two_candidates(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, 32, 32) logits of two like regions (left, right) and the target mask of one side."""
    lg = torch.full((1, 1, 32, 32), -3.0)
    lg[0, 0, 14:18, 4:8] = lg[0, 0, 14:18, 24:28] = 2.0
    target = torch.zeros(1, 1, 32, 32)
    target[..., 14:18, (4, 24)[side] : (8, 28)[side]] = 1
    return lg, target


def _learned_choice(sel: RegionSelector, scene, steps: int) -> float:
    """Train ``sel`` on ``steps`` scenes (``scene(g)`` -> (side, grid (1, 8, 8, 8), keyword inputs));
    the share of 40 new ones where it keeps the target's region alone."""
    hidden, sentence = torch.zeros(1, 4, 32, 32), torch.zeros(1, 8)

    def examples(g):
        for _ in range(steps):
            side, grid, extra = scene(g)
            lg, target = _two_candidates(side)
            yield lg, hidden, grid, sentence, target, extra

    _fit(sel, examples(torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(99)
    right = 0
    with torch.no_grad():
        for _ in range(40):
            side, grid, extra = scene(g)
            kept = (sel(_two_candidates(side)[0], hidden, grid, sentence, **extra) > 0)[0, 0]
            right += int(kept[:, (4, 24)[side]].any() and not kept[:, (24, 4)[side]].any())
    return right / 40


def test_with_context_it_learns_a_choice_that_lies_outside_the_regions():
    """Two candidate regions; the target is the one nearer a marker that only the decoder's grid
    shows (no region holds it): the selector with ``context`` learns it, the plain one cannot."""
    def scene(g):
        grid = torch.randn(1, 8, 8, 8, generator=g) * 0.1
        side = int(torch.randint(0, 2, (1,), generator=g))
        col = int(torch.randint(0, 2, (1,), generator=g)) + (0 if side == 0 else 6)
        grid[0, 0, int(torch.randint(0, 8, (1,), generator=g)), col] = 3.0  # the marker
        return side, grid, {}

    torch.manual_seed(0)
    assert _learned_choice(RegionSelector(dim=8, hidden_channels=4, context=True), scene, 250) >= 0.9
    torch.manual_seed(0)
    assert _learned_choice(RegionSelector(dim=8, hidden_channels=4), scene, 250) <= 0.75


def test_select_context_words_and_maps_reach_the_model_and_are_checked():
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=8, select_regions=True, select_context=True, select_words=True,
                        select_maps=True)
    assert model.selector.context and model.selector.words and model.selector.maps == 2 * 2  # layers x heads
    torch.nn.init.normal_(model.refiner.out.weight, std=0.5)
    batch = _batch(B=3)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    for b, (n, _) in enumerate(label_regions(out["selected_from"])):
        assert label_regions(out["logits"][b : b + 1])[0][0] == min(n, 1)
    model.train()
    assert model(batch)["loss"].requires_grad
    for key in ("select_context", "select_words", "select_maps"):
        with pytest.raises(ValueError, match=f"{key} is an input of the region selector"):
            build_model("tiny", 20, **{key: True})
        with pytest.raises(ValueError, match=f"{key} must be true or false"):
            build_model("tiny", 20, select_regions=True, **{key: "yes"})


def test_with_maps_it_keeps_the_region_a_word_attends_to():
    """Two candidate regions, nothing telling them apart but where the first word's LAV mass lies
    (the decoder's attention maps): the selector with ``maps`` learns to keep that region."""
    T, M = 4, 2
    words, word_mask = torch.randn(1, T, 8), torch.ones(1, T, dtype=torch.bool)

    def scene(g):
        side = int(torch.randint(0, 2, (1,), generator=g))
        lav = torch.softmax(torch.randn(M, T, 64, generator=g), -1).view(M, T, 8, 8)
        lav[:, 0] = 0.0
        lav[:, 0, 3:5, (1, 6)[side]] = 0.5  # the first word looks at the target
        val = torch.softmax(torch.randn(M, T, 8, 8, generator=g), 1)
        return side, torch.zeros(1, 8, 8, 8), {"words": words, "word_mask": word_mask,
                                              "maps": torch.stack([lav, val])[None]}

    torch.manual_seed(0)
    sel = RegionSelector(dim=8, hidden_channels=4, maps=M)
    assert _learned_choice(sel, scene, 150) >= 0.9
    lg = _two_candidates(0)[0]
    with pytest.raises(ValueError, match="attention maps"):
        sel(lg, torch.zeros(1, 4, 32, 32), torch.zeros(1, 8, 8, 8), torch.zeros(1, 8), words, word_mask)
