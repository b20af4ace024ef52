"""The word-places block (mmi/model/places.py) and the model's word_places switches."""
from __future__ import annotations

import pytest
import torch

from mmi.engine.trainer import load_init
from mmi.model import build_model
from mmi.model.places import WordPlaces


def _batch(B: int = 2, S: int = 64, T: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(B, 3, S, S, generator=g), "words": torch.randint(2, 20, (B, T), generator=g),
            "word_mask": torch.arange(T)[None].expand(B, -1) < torch.tensor([[5], [8]])[:B],
            "mask": (torch.rand(B, 1, S, S, generator=g) > 0.7).float()}


def test_directions_say_where_each_words_mass_lies_from_each_cell():
    """A word looking at one cell, (row 1, column 2) of a 3 x 4 grid: from each cell its mass lies
    in that cell, left, right, above or below, by columns and rows."""
    lav = torch.zeros(1, 1, 2, 12)
    lav[0, 0, 0, 1 * 4 + 2] = 1.0  # word 0: one cell; word 1 (padding): nothing
    d = WordPlaces.directions(lav, (3, 4)).view(2, 3, 4, 5)  # own, left, right, above, below
    assert d[0, 1, 2].tolist() == [1, 0, 0, 0, 0]
    assert d[0, 1, 0].tolist() == [0, 0, 1, 0, 0]  # the mass is right of column 0
    assert d[0, 2, 3].tolist() == [0, 1, 0, 1, 0]  # left of column 3, above row 2
    assert d[0, 0, 2].tolist() == [0, 0, 0, 0, 1]
    assert not d[1].any()
    full = torch.softmax(torch.randn(2, 3, 4, 12), -1)  # every cell: own + left + right = the whole column span
    d = WordPlaces.directions(full, (3, 4)).view(2, 4, 12, 3, 5)
    cols = full.view(2, 3, 4, 3, 4).sum(3).permute(0, 2, 3, 1)  # (B, T, W, M): each column's mass
    assert torch.allclose(d[..., 1] + d[..., 2], (1 - cols)[:, :, None].expand(-1, -1, 3, -1, -1).reshape(2, 4, 12, 3),
                          atol=1e-6)


def test_a_new_block_leaves_the_model_as_it_was():
    """Its output layer starts at zero: a trained model given the block draws the same logits."""
    torch.manual_seed(0)
    plain = build_model("tiny", 20, refine_channels=4).eval()
    given = build_model("tiny", 20, refine_channels=4, word_places=True).eval()
    assert load_init(given, plain.state_dict()) == ["places"]
    with torch.no_grad():
        a, b = plain(_batch()), given(_batch())
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["coarse_logits"], b["coarse_logits"])


def test_word_places_only_trains_the_block_alone_through_the_fixed_head():
    """Only the block's weights get gradients and change; its loss is the mask head's and the
    refiner's masks, reached through them while they stay fixed (and in eval mode)."""
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=4, word_places=True, word_places_only=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.trains_alone == "places" and not model.mask_head.training and not model.refiner.training
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        out = model(_batch())
        assert set(k for k in out if k.startswith("loss")) == {"loss", "loss_mask", "loss_mask_coarse"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert {"places.out.weight", "places.embed.weight", "places.gate.weight"} <= changed
    assert all(k.startswith("places.") for k in changed)
    model.eval()
    with torch.no_grad():
        moved = model(_batch())["logits"]
        model.places.out.weight.zero_()
        model.places.out.bias.zero_()
        assert not torch.equal(moved, model(_batch())["logits"])  # what it learned reaches the masks


def test_word_places_settings_are_checked():
    with pytest.raises(ValueError, match="word_places_only trains the word-places block alone"):
        build_model("tiny", 20, word_places_only=True)
    with pytest.raises(ValueError, match="each train one part alone"):
        build_model("tiny", 20, refine_channels=4, refine_only=True, word_places=True, word_places_only=True)
    with pytest.raises(ValueError, match="word_places must be true or false"):
        build_model("tiny", 20, word_places="yes")


def test_word_places_and_a_selector_reading_the_maps_share_them():
    """The decoder's maps are stacked once for both readers: the block's LAV and the selector's."""
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=4, word_places=True, select_regions=True, select_maps=True)
    torch.nn.init.normal_(model.places.out.weight, std=0.5)
    model.eval()
    with torch.no_grad():
        out = model(_batch(), return_attention=True)
        model.places.out.weight.zero_()
        plain = model(_batch())
    assert out["logits"].shape == out["selected_from"].shape == (2, 1, 32, 32)
    assert not torch.equal(out["coarse_logits"], plain["coarse_logits"])  # the block's output reached the head
    model.train()
    select = model._decode(model.encode_image(_batch()["image"]), _batch()["words"], _batch()["word_mask"],
                           model.language(_batch()["words"], _batch()["word_mask"]), False)[0]["select_inputs"]
    assert select["maps"].shape == (2, 2, 2 * 2, 8, 4, 4)  # LAV and VAL of 2 layers x 2 heads, T, 4 x 4 grid
