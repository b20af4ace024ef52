"""The boundary refiner (mmi/model/refine.py) and the model's refine switches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmi.model import build_model, build_model_from_config
from mmi.model.refine import MaskRefiner


def _batch(B: int = 2, S: int = 64, T: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(B, 3, S, S, generator=g), "words": torch.randint(2, 20, (B, T), generator=g),
            "word_mask": torch.ones(B, T, dtype=torch.bool), "mask": (torch.rand(B, 1, S, S, generator=g) > 0.7).float()}


def _full_and_boxed(r: MaskRefiner, low, hidden, logits) -> tuple[torch.Tensor, torch.Tensor]:
    """The refiner's logits on the whole map (as in training) and in each expression's box."""
    with torch.no_grad():
        r.crop = False
        full = r(low, hidden, logits)
        r.crop = True
        return full, r(low, hidden, logits)


def test_a_new_refiner_is_the_identity_at_stride_2():
    """Its last conv starts at zero: the refined logits are the mask head's, upsampled to S/2."""
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=8).eval()
    out = model(_batch())
    assert out["logits"].shape == (2, 1, 32, 32) and out["coarse_logits"].shape == (2, 1, 16, 16)
    up = F.interpolate(out["coarse_logits"], size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(out["logits"], up)


def test_the_refiner_reads_the_image():
    """Once trained away from zero, two images with the same coarse logits can refine differently:
    the correction depends on the stem's view of the image."""
    torch.manual_seed(0)
    r = MaskRefiner(hidden_channels=4, channels=8).eval()
    torch.nn.init.normal_(r.out.weight)
    hidden, logits = torch.randn(1, 4, 8, 8), torch.randn(1, 1, 8, 8)
    a = r(r.encode(torch.randn(1, 3, 32, 32)), hidden, logits)
    b = r(r.encode(torch.randn(1, 3, 32, 32)), hidden, logits)
    assert a.shape == (1, 1, 16, 16) and not torch.allclose(a, b)


@pytest.mark.parametrize("context", [False, True])
def test_one_image_serves_many_expressions(context):
    """encode_image once, decode B expressions (the predictor's path) = the batched forward."""
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=8, refine_context=context).eval()
    torch.nn.init.normal_(model.refiner.out.weight, std=0.1)
    batch = _batch(B=3)
    batch["image"] = batch["image"][:1].expand(3, -1, -1, -1)
    with torch.no_grad():
        whole = model(batch)["logits"]
        feats = model.encode_image(batch["image"][:1])
        assert feats["low"].shape == (1, 8, 32, 32)
        one = model.decode(feats, batch["words"], batch["word_mask"])["logits"]
    assert torch.allclose(whole, one, atol=1e-5)


@pytest.mark.parametrize("context", [False, True])
def test_refine_only_trains_the_refiner_alone(context):
    """Only the refiner's weights get gradients and change; the rest of the network, BatchNorm
    statistics included, stays as it was (it stays in eval mode when the model trains)."""
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=8, refine_only=True, refine_context=context)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.refiner.training and not model.mask_head.training and not model.decoder.training
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        out = model(_batch())
        assert set(k for k in out if k.startswith("loss")) == {"loss", "loss_mask"}  # no LFR, no coarse term
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("refiner.") for k in changed)
    assert "refiner.out.weight" in changed and any("running_mean" in k for k in changed)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("refiner."))


def test_training_with_a_refiner_supervises_both_masks():
    torch.manual_seed(0)
    model = build_model("tiny", 20, refine_channels=8).train()
    out = model(_batch())
    assert {"loss_mask", "loss_mask_coarse", "loss_lfr"} <= set(out)
    expected = out["loss_mask"] + out["loss_mask_coarse"] + model.lfr_weight * out["loss_lfr"]
    assert torch.allclose(out["loss"], expected)


def test_refine_settings_are_checked():
    with pytest.raises(ValueError, match="refine_only"):
        build_model("tiny", 20, refine_only=True)
    with pytest.raises(ValueError, match="refine_channels"):
        build_model("tiny", 20, refine_channels=-1)
    model = build_model("tiny", 20, refine_channels=4).eval()
    # the trainer's memo keyed by name skips loading images: not for a model that reads them
    assert model.reads_images and not build_model("tiny", 20).reads_images
    with pytest.raises(ValueError, match="refiner reads the image"):
        model.encode_image(None, names=["a"], present=[False])


def test_the_cropped_upsampling_equals_the_full_maps():
    """_up2_crop: the box of a x2 bilinear upsampling, computed from the box (plus a one-cell
    border) alone, equals the full upsampled map there, at the map's edges too."""
    from mmi.model.refine import _up2_crop

    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    full = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    for y0, y1, x0, x1 in ((3, 7, 2, 5), (0, 4, 0, 10), (8, 12, 6, 10), (0, 12, 0, 10), (5, 6, 9, 10)):
        assert torch.allclose(_up2_crop(x, y0, y1, x0, x1), full[..., 2 * y0 : 2 * y1, 2 * x0 : 2 * x1], atol=1e-6)


def test_the_cropped_refiner_equals_the_full_map_near_the_mask():
    """Out of training, each expression is refined in the box around its coarse mask: the same
    logits as the full map's inside the box away from its edge, the upsampled coarse logits
    outside it, and no correction at all for an expression whose logits are all below ROI_LOGIT."""
    from mmi.model.refine import ROI_LOGIT

    torch.manual_seed(0)
    r = MaskRefiner(hidden_channels=4, channels=8).eval()
    torch.nn.init.normal_(r.out.weight, std=0.1)
    low = r.encode(torch.randn(1, 3, 64, 64))
    hidden = torch.randn(3, 4, 16, 16)
    logits = torch.full((3, 1, 16, 16), -8.0)
    logits[0, 0, 6:9, 7:10] = 3.0   # an object in the middle
    logits[1, 0, 0:2, 14:16] = 1.0  # one at the corner
    full, cropped = _full_and_boxed(r, low, hidden, logits)
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    # expression 0: box = cells 2..12 x 3..13 (margin 4) -> stride 2 rows 4..26, cols 6..28;
    # the blocks reach 4 px, so rows 8..22 and cols 10..24 see no edge of the box
    assert torch.allclose(cropped[0, :, 8:22, 10:24], full[0, :, 8:22, 10:24], atol=1e-5)
    assert torch.equal(cropped[0, :, :4], up[0, :, :4]) and torch.equal(cropped[0, :, :, 28:], up[0, :, :, 28:])
    assert not torch.equal(cropped[0], up[0])
    # expression 1, at the map's corner: the box reaches the map's edges, where both pad alike
    assert torch.allclose(cropped[1, :, 0:4, 24:32], full[1, :, 0:4, 24:32], atol=1e-5)
    # expression 2: nothing above ROI_LOGIT, so no correction
    assert (logits[2] <= ROI_LOGIT).all() and torch.equal(cropped[2], up[2])


def test_the_context_inputs_name_the_peak_region_and_the_distance_below_it():
    """refine_context: rel is 0 at the map's peak, -1 at or below REL_FLOOR under it; peak marks
    the 8-connected region above 0 that holds the highest logit (not a weaker look-alike), at
    stride 2; an expression with nothing above 0 has no peak region."""
    from mmi.model.refine import REL_FLOOR

    logits = torch.full((2, 1, 8, 8), -20.0)
    logits[0, 0, 1:3, 1:3] = 2.0   # a weaker look-alike
    logits[0, 0, 5:7, 4:7] = 5.0   # the peak's region
    logits[0, 0, 6, 6] = 6.0
    logits[1, 0, 3, 3] = -1.0      # nothing above 0
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    ctx = MaskRefiner._context(logits, up)
    assert ctx.shape == (2, 2, 16, 16) and not ctx.requires_grad
    rel, peak = ctx[:, 0], ctx[:, 1]
    assert torch.allclose(rel, ((up[:, 0] - logits.flatten(1).amax(1).view(2, 1, 1)).clamp(min=-REL_FLOOR)) / REL_FLOOR)
    assert rel.max() <= 0 and rel.min() == -1
    expected = torch.zeros(8, 8)
    expected[5:7, 4:7] = 1
    assert torch.equal(peak[0], expected.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert peak[1].sum() == 0


def test_a_context_refiner_crops_as_its_full_map_and_its_inputs_matter():
    """With refine_context, the box gives the full map's logits near the mask (the context is
    read from the whole coarse map before the crop), and the added inputs change the
    correction: a look-alike outside the peak's region is refined differently."""
    torch.manual_seed(0)
    r = MaskRefiner(hidden_channels=4, channels=8, context=True).eval()
    torch.nn.init.normal_(r.out.weight, std=0.1)
    low = r.encode(torch.randn(1, 3, 64, 64))
    hidden = torch.zeros(1, 4, 16, 16).expand(2, -1, -1, -1)
    logits = torch.full((2, 1, 16, 16), -8.0)
    logits[:, 0, 6:9, 7:10] = 3.0
    logits[0, 0, 7, 8] = 5.0        # expression 0: this object is the peak
    logits[1, 0, 12:14, 2:4] = 6.0  # expression 1: another object is, and this one is a look-alike
    full, cropped = _full_and_boxed(r, low, hidden, logits)
    assert torch.allclose(cropped[0, :, 8:22, 10:24], full[0, :, 8:22, 10:24], atol=1e-5)
    inside = (slice(None), slice(14, 16), slice(16, 18))  # a pixel of the shared object away from the peak cell
    assert not torch.allclose(full[0][inside], full[1][inside], atol=1e-3)


def test_refine_context_needs_a_refiner_and_a_checkpoint_without_it_builds_none():
    with pytest.raises(ValueError, match="refine_context is an input of the refiner"):
        build_model("tiny", 20, refine_context=True)
    with pytest.raises(ValueError, match="refine_context must be true or false"):
        build_model("tiny", 20, refine_channels=8, refine_context="yes")
    model = build_model("tiny", 20, refine_channels=8, refine_context=True)
    assert model.refiner.context and model.refiner.inp[0].in_channels == 8 + 32 // 4 + 1 + 2
    stored = dict(build_model("tiny", 20, refine_channels=8).config)
    stored.pop("refine_context")
    assert not build_model_from_config(stored).refiner.context
