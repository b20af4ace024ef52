"""The MMI network: attention normalisation, padding, switches, gradients, overfitting."""
import os
import re
from pathlib import Path

import pytest
import torch

from mmi.model import build_model
from mmi.model.attention import MutualAttention, masked_softmax

V = 30


def make_batch(model, B=3, lengths=(5, 2, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    S, T = model.image_size, model.t_max
    words = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths[:B]):
        words[i, :n] = torch.randint(2, V, (n,), generator=g)
        mask[i, :n] = True
    gt = torch.zeros(B, 1, S, S)
    for i in range(B):
        y, x = (4 * torch.randint(0, S // 8, (2,), generator=g)).tolist()  # stride-4 aligned: hard targets
        gt[i, :, y : y + S // 4, x : x + S // 2] = 1
    return {"image": torch.randn(B, 3, S, S, generator=g), "words": words, "word_mask": mask, "mask": gt}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny", V).eval()


def test_lav_and_val_are_normalised(tiny):
    batch = make_batch(tiny)
    with torch.no_grad():
        out = tiny(batch, return_attention=True)
    m = batch["word_mask"]
    assert len(out["attention"]) == 2
    for att in out["attention"]:
        lav, val = att["lav"], att["val"]  # (B, h, T, H, W)
        assert lav.shape == val.shape == (3, 2, tiny.t_max, 4, 4)
        lav_sum = lav.flatten(3).sum(-1)  # over pixels
        assert torch.allclose(lav_sum[m[:, None].expand_as(lav_sum)], torch.ones(()), atol=1e-5)
        assert (lav_sum[~m[:, None].expand_as(lav_sum)] == 0).all()
        val_sum = val.sum(2)  # over words, per pixel
        assert torch.allclose(val_sum, torch.ones_like(val_sum), atol=1e-5)
        padded = ~m[:, None, :, None, None].expand_as(val)
        assert (val[padded] == 0).all()


def test_padded_words_do_not_change_the_output(tiny):
    batch = make_batch(tiny)
    other = dict(batch, words=batch["words"].clone())
    other["words"][~batch["word_mask"]] = torch.randint(2, V, (int((~batch["word_mask"]).sum()),))
    with torch.no_grad():
        a, b = tiny(batch, return_attention=True), tiny(other, return_attention=True)
    assert not torch.equal(batch["words"], other["words"])
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    for x, y in zip(a["attention"], b["attention"]):
        assert torch.allclose(x["val"], y["val"], atol=1e-6)


def test_order_free_fusion_is_normalised_and_padding_free():
    torch.manual_seed(0)
    layer = MutualAttention(16, 2, t_max=6, fusion="order_free").eval()
    x, pos, lang = torch.randn(2, 9, 16), torch.zeros(1, 9, 16), torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    lang2 = lang.clone()
    lang2[~mask] = torch.randn(int((~mask).sum()), 16)
    (a, att), (b, _) = layer(x, pos, lang, mask), layer(x, pos, lang2, mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(att["val"].sum(2), torch.ones(2, 2, 9), atol=1e-6)


def test_masked_softmax_with_no_valid_position_is_zero():
    s = torch.randn(2, 4)
    m = torch.tensor([[True, False, True, False], [False] * 4])
    out = masked_softmax(s, m, dim=1)
    assert torch.allclose(out[0].sum(), torch.tensor(1.0)) and (out[0, [1, 3]] == 0).all()
    assert (out[1] == 0).all() and not out.isnan().any()


def test_empty_expression_gives_finite_logits(tiny):
    batch = make_batch(tiny, B=2, lengths=(0, 3))
    with torch.no_grad():
        out = tiny(batch, return_attention=True)
    assert torch.isfinite(out["logits"]).all()
    assert (out["attention"][0]["val"][0] == 0).all()


def test_generic_lav_is_the_papers_lav_only_baseline():
    torch.manual_seed(0)
    generic = build_model("tiny", V, attention="generic_lav").eval()
    mutual = build_model("tiny", V, attention="mutual").eval()
    # the same parameters as M3Att (W_l reads the pixel instead of the words): the comparison differs by VAL alone
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.decoder.named_parameters()}  # noqa: E731
    assert shapes(generic) == shapes(mutual)
    batch = make_batch(generic)
    with torch.no_grad():
        out = generic(batch, return_attention=True)
    assert all(set(a) == {"lav"} for a in out["attention"])
    lav = out["attention"][0]["lav"].flatten(-2)  # (B, h, T, HW): words query pixels, softmax over pixels
    real = batch["word_mask"][:, None, :].expand(-1, lav.shape[1], -1)
    assert torch.allclose(lav.sum(-1)[real], torch.ones(int(real.sum())), atol=1e-5)
    assert (lav.sum(-1)[~real] == 0).all()
    assert torch.isfinite(out["logits"]).all()
    # no language vector reaches a pixel except through LAV: with LAV zeroed the words change nothing
    layer = generic.decoder.layers[0]
    x = torch.randn(2, 16, 32)
    pos = torch.zeros(1, 16, 32)
    lang_a, lang_b = torch.randn(2, generic.t_max, 32), torch.randn(2, generic.t_max, 32)
    mask = torch.ones(2, generic.t_max, dtype=torch.bool)
    with torch.no_grad():
        layer.v.weight.zero_()
        layer.v.bias.zero_()
        a, _ = layer(x, pos, lang_a, mask)
        b, _ = layer(x, pos, lang_b, mask)
    assert torch.allclose(a, b, atol=1e-6)


def test_generic_lav_refuses_the_val_gate_and_old_generic_name_is_ambiguous():
    with pytest.raises(ValueError, match="has no VAL"):
        build_model("tiny", V, attention="generic_lav", word_gate=True)
    with pytest.raises(ValueError, match="ambiguous.*generic_lav.*pixel_query"):
        build_model("tiny", V, attention="generic")


def test_pixel_query_attention_has_no_lav_output_path():
    model = build_model("tiny", V, attention="pixel_query").eval()
    assert not any(".l." in n or n.endswith(".l.weight") for n, _ in model.named_parameters())
    with torch.no_grad():
        out = model(make_batch(model), return_attention=True)
    assert all(set(a) == {"lav"} for a in out["attention"])
    assert torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("values", ["language", "context"])
def test_imi_values_language_reorganise_the_words_context_adds_vision(values):
    from mmi.model.decoder import LanguageUpdate

    torch.manual_seed(0)
    update = LanguageUpdate(32, values=values)
    lang = torch.randn(1, 1, 32).expand(2, 6, 32)  # every word the same vector
    mask = torch.ones(2, 6, dtype=torch.bool)
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        out = update(x, lang, mask)
    # values from the words: any mix of identical words is that word, whatever the image;
    # values from the pooled pixels: the image reaches the words
    same = torch.allclose(out[0], out[1], atol=1e-5)
    assert same == (values == "language")


def test_lfr_target_is_built_before_the_output_dropout():
    seen = {}
    for target in ("clean", "dropout"):
        torch.manual_seed(0)
        model = build_model("tiny", V, dropout=0.5, lfr_target=target).train()
        orig = model.lfr.target
        model.lfr.target = lambda words, *a, _o=orig, _t=target: (seen.__setitem__(_t, words.detach()), _o(words, *a))[1]
        batch = make_batch(model, B=3, lengths=(8, 8, 8))
        model(batch)
        seen[target] = seen[target][batch["word_mask"]]
    assert (seen["clean"] == 0).float().mean() < 0.01  # LSTM outputs: no exact zeros
    assert (seen["dropout"] == 0).float().mean() > 0.3  # half of them dropped


def test_stored_configs_without_the_new_keys_rebuild_the_earlier_behaviour():
    from mmi.model import build_model_from_config
    from mmi.model.presets import LEGACY

    new = build_model("tiny", V)
    assert new.config["imi_values"] == "language" and new.config["lfr_target"] == "clean"
    old = {k: v for k, v in new.config.items() if k not in LEGACY}
    old["attention"] = "generic"  # an ablation checkpoint written before the rename
    rebuilt = build_model_from_config(old)
    assert rebuilt.config["attention"] == "pixel_query" and rebuilt.config["imi_values"] == "context"
    assert rebuilt.decoder.updates[0].values == "context" and not rebuilt.lfr.clean_target
    assert rebuilt.config["input_norm"] == "imagenet"
    assert type(rebuilt.decoder.layers[0]).__name__ == "PixelQueryAttention"


def test_lfr_switch_and_eval_mode():
    off = build_model("tiny", V, lfr=False).train()
    assert off.lfr is None
    out = off(make_batch(off))
    assert "loss_lfr" not in out and torch.allclose(out["loss"], out["loss_mask"])

    on = build_model("tiny", V).train()
    calls = []
    on.lfr.register_forward_hook(lambda *a: calls.append(1))
    out = on(make_batch(on))
    assert "loss_lfr" in out and len(calls) == 1
    assert torch.allclose(out["loss"], out["loss_mask"] + 0.1 * out["loss_lfr"])
    on.eval()
    with torch.no_grad():
        out = on(make_batch(on))
    assert len(calls) == 1 and set(out) == {"logits"}


def test_frozen_backbone_gets_no_gradient_and_keeps_bn_statistics():
    model = build_model("tiny", V, frozen_backbone=True).train()
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(make_batch(model))["loss"].backward()
    assert not model.backbone.training and model.decoder.training
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(stats[k], v) for k, v in model.backbone.state_dict().items())
    assert model.mask_head.inp[0].weight.grad is not None


def test_imi_switch_changes_the_decoder():
    on, off = build_model("tiny", V), build_model("tiny", V, imi=False)
    assert on.decoder.updates is not None and len(on.decoder.updates) == 1
    assert off.decoder.updates is None


def test_encode_decode_matches_forward_and_broadcasts(tiny):
    batch = make_batch(tiny)
    with torch.no_grad():
        full = tiny(batch)["logits"]
        one = dict(batch, image=batch["image"][:1].expand(3, -1, -1, -1))
        ref = tiny(one)["logits"]
        feats = tiny.encode_image(batch["image"][:1])
        split = tiny.decode(feats, batch["words"], batch["word_mask"])["logits"]
    assert full.shape == (3, 1, 16, 16)
    assert torch.allclose(split, ref, atol=1e-5)


def test_unknown_override_and_preset_are_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("nope", V)
    with pytest.raises(ValueError, match="attentionz"):
        build_model("tiny", V, attentionz="mutual")
    with pytest.raises(ValueError, match="generic"):
        build_model("tiny", V, attention="other")


SMALL = {
    "tiny": {},
    "demo": dict(backbone_weights=None, image_size=64, dim=32, heads=2, head_channels=32),
    "paper_darknet53": dict(backbone_weights=None, image_size=64, dim=32, heads=2, head_channels=32),
    # no stochastic depth: with B=2 it may drop a block for both samples
    "paper_swin_b": dict(backbone_weights=None, image_size=64, dim=32, heads=2, head_channels=32,
                         backbone_options={"window_size": 12, "drop_path": 0.0}),
}


@pytest.mark.parametrize("preset", list(SMALL))
def test_every_parameter_gets_a_gradient(preset):
    torch.manual_seed(0)
    model = build_model(preset, V, **SMALL[preset]).train()
    batch = make_batch(model, B=2, lengths=(model.t_max, 3))
    model(batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert all(p.requires_grad for p in model.parameters())
    assert not missing, f"{preset}: no gradient for {missing[:10]}"


@pytest.mark.parametrize("attention,fusion", [("mutual", "product"), ("mutual", "order_free"),
                                                ("generic_lav", "product")])
def test_tiny_model_overfits_one_batch(attention, fusion):
    torch.manual_seed(0)
    model = build_model("tiny", V, attention=attention, fusion=fusion).train()
    batch = make_batch(model, B=4, lengths=(5, 2, 7, 3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(250):
        loss = model(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_readme_parameter_counts_are_current():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    from mmi.model.summary import parameter_counts

    for preset, count in parameter_counts(vocab_size=1000).items():
        m = re.search(rf"\|\s*`{preset}`\s*\|[^|\n]*\|\s*([\d,]+)\s*\|", text)
        assert m, f"README has no parameter row for {preset}"
        assert int(m.group(1).replace(",", "")) == count, preset


def test_feature_cache_reuses_frozen_backbone_outputs():
    from mmi.model.feature_cache import FeatureCache

    torch.manual_seed(0)
    model = build_model("tiny", V, frozen_backbone=True).eval()  # eval: the head's BN must not mix the batch
    batch = make_batch(model, B=3)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    plain = model.encode_image(batch["image"])["pixels"]
    model.feature_cache = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    first = model.encode_image(batch["image"])["pixels"]
    swapped = model.encode_image(batch["image"][[2, 0]])["pixels"]
    assert calls == [3, 3]  # the second call with the cache computed nothing
    assert torch.allclose(first, plain, atol=1e-6) and torch.allclose(swapped, first[[2, 0]], atol=1e-6)
    assert model.feature_cache.hits == 2 and model.feature_cache.misses == 3
    out = model.train()(batch)
    out["loss"].backward()
    assert model.mask_head.inp[0].weight.grad is not None


def test_dice_term_is_added_only_when_weighted():
    from mmi.model.mmi import dice_loss

    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :2] = 1
    assert dice_loss(torch.full_like(t, 20.0) * (2 * t - 1), t) < 0.01  # confident and right
    assert dice_loss(torch.full_like(t, -20.0), t) > 0.7  # predicts nothing
    model = build_model("tiny", V, dice_weight=0.5, lfr=False).train()
    out = model(make_batch(model))
    assert torch.allclose(out["loss"], out["loss_mask"] + 0.5 * out["loss_dice"])
    assert "loss_dice" not in build_model("tiny", V, lfr=False).train()(make_batch(model))


def test_language_norm_normalises_real_words_and_keeps_padding_zero():
    torch.manual_seed(0)
    model = build_model("tiny", V, language_norm=True).eval()
    batch = make_batch(model)
    feats, sent = model.language(batch["words"], batch["word_mask"])
    real = feats[batch["word_mask"]]
    assert torch.allclose(real.mean(-1), torch.zeros(len(real)), atol=1e-5)
    assert torch.allclose(real.std(-1, unbiased=False), torch.ones(len(real)), atol=1e-3)
    assert feats[~batch["word_mask"]].abs().sum() == 0
    assert torch.allclose(sent.std(-1, unbiased=False), torch.ones(len(sent)), atol=1e-3)
    empty, empty_sent = model.language(torch.zeros(1, model.t_max, dtype=torch.long), torch.zeros(1, model.t_max, dtype=torch.bool))
    assert empty.abs().sum() == 0 and empty_sent.abs().sum() == 0


@pytest.mark.parametrize("attention", ["mutual", "pixel_query"])
def test_multiplicative_fusion_blocks_train_and_depend_on_the_expression(attention):
    torch.manual_seed(0)
    model = build_model("tiny", V, attention=attention, sentence_fusion=True, word_gate=True).train()
    assert model.sentence_fusion is not None and all(layer.gate is not None for layer in model.decoder.layers)
    batch = make_batch(model, B=2, lengths=(model.t_max, 3))
    model(batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    model.eval()
    feats = model.encode_image(batch["image"][:1])
    words = batch["words"][:1]
    a = model.sentence_fusion(feats["pixels"], model.language(words, batch["word_mask"][:1])[1])
    other = words.clone()
    other[0, 0] = (words[0, 0] + 1) % V
    b = model.sentence_fusion(feats["pixels"], model.language(other, batch["word_mask"][:1])[1])
    assert a.shape == feats["pixels"].shape and not torch.allclose(a, b)
    plain = build_model("tiny", V)
    assert plain.sentence_fusion is None and all(layer.gate is None for layer in plain.decoder.layers)


def test_coord_map_spans_the_grid():
    from mmi.model.vision import coord_map
    c = coord_map(4, 8)
    assert c.shape == (8, 4, 8)
    x0, y0, x1, y1, xc, yc, iw, ih = c
    assert x0[0, 0] == -1 and x1[0, -1] == 1 and y0[0, 0] == -1 and y1[-1, 0] == 1
    assert torch.allclose(x1 - x0, torch.full_like(x0, 2 / 8)) and torch.allclose(y1 - y0, torch.full_like(y0, 2 / 4))
    assert torch.all(xc[:, 1:] > xc[:, :-1]) and torch.all(yc[1:] > yc[:-1])
    assert torch.allclose(iw, torch.full_like(iw, 1 / 8)) and torch.allclose(ih, torch.full_like(ih, 1 / 4))


def test_coord_features_make_pixel_tokens_position_aware():
    torch.manual_seed(0)
    model = build_model("tiny", V, coord_features=True).eval()
    assert model.vision.fusion.mix[0][0].in_channels == 3 * model.vision.dim + 8
    # a uniform image: without coordinates every token would be the same (up to padding effects of 3x3 convs)
    image = torch.zeros(1, 3, model.image_size, model.image_size)
    feats = model.backbone(image)
    with_coords = model.vision.fusion(feats)
    model.vision.fusion.mix[0][0].weight.data[:, -8:] = 0  # cut the coordinate channels
    without = model.vision.fusion(feats)
    assert not torch.allclose(with_coords, without)
    centre = without[..., 1:-1, 1:-1].flatten(2)
    assert torch.allclose(centre, centre[..., :1].expand_as(centre), atol=1e-5)
    model(make_batch(model.train(), B=2))["loss"].backward()


def test_deep_supervision_adds_a_loss_per_layer_and_leaves_inference_alone():
    torch.manual_seed(0)
    model = build_model("tiny", V, aux_weight=0.5, lfr=False, decoder_layers=2).train()
    batch = make_batch(model)
    out = model(batch)
    assert out["loss_aux"] > 0
    assert torch.allclose(out["loss"], out["loss_mask"] + 0.5 * out["loss_aux"])
    out["loss"].backward()
    assert model.aux_head.weight.grad.abs().sum() > 0
    # the aux head reads each decoder layer: the first layer gets a gradient through it alone
    model.zero_grad()
    out = model(batch)
    out["loss_aux"].backward()
    assert model.decoder.layers[0].q.weight.grad.abs().sum() > 0
    assert model.mask_head.inp[0].weight.grad is None  # the aux loss does not pass the mask head
    # inference: the same logits as a model without the aux head and the same weights
    plain = build_model("tiny", V, lfr=False, decoder_layers=2)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_head.")}
    plain.load_state_dict(state)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(batch)["logits"], plain(batch)["logits"])
    assert "loss_aux" not in build_model("tiny", V, lfr=False).train()(batch)


def test_skip_fusion_makes_the_stride8_level_depend_on_the_sentence(tiny):
    torch.manual_seed(0)
    model = build_model("tiny", V, skip_fusion=True).eval()
    head = model.mask_head
    with torch.no_grad():
        head.skip_gate.out.weight.normal_()  # zero-free, so the gate's term shows
        skip = torch.randn(2, head.skip_gate.vision.in_channels, 8, 8)
        x = torch.randn(2, model.config["dim"], 4, 4)
        s1, s2 = torch.randn(2, model.config["dim"]), torch.randn(2, model.config["dim"])
        a, b = head(x, skip, s1), head(x, skip, s2)
    assert a.shape == (2, 1, 16, 16) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="sentence"):
        head(x, skip)
    batch = make_batch(model)
    model.train()
    model(batch)["loss"].backward()
    assert head.skip_gate.language.weight.grad.abs().sum() > 0


def test_feature_cache_file_round_trip_and_refuses_another_backbone(tmp_path):
    from mmi.model.feature_cache import FeatureCache

    torch.manual_seed(0)
    model = build_model("tiny", V, frozen_backbone=True).eval()
    images = make_batch(model, B=3)["image"]
    cache = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    expected = cache(model.backbone, images)
    path = str(tmp_path / "feats.pt")
    assert cache.save(path, model.backbone) == 3 and cache.unsaved == 0
    fresh = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    assert fresh.load(path, model.backbone) == 3
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(1))
    got = fresh(model.backbone, images[[1, 2]])
    assert calls == [] and all(torch.equal(g, e[[1, 2]]) for g, e in zip(got, expected))
    torch.manual_seed(1)
    other = build_model("tiny", V, frozen_backbone=True)
    with pytest.raises(ValueError, match="another backbone"):
        FeatureCache(10**8).load(path, other.backbone)
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="bad.pt: not a readable feature cache"):
        FeatureCache(10**8).load(str(tmp_path / "bad.pt"), model.backbone)


def test_partly_frozen_backbone_memoises_its_fixed_blocks():
    """backbone_frozen_blocks: the fixed blocks' outputs come from the memo (their module runs
    once per image), the trained blocks run every time and get gradients."""
    from mmi.model.feature_cache import FeatureCache

    torch.manual_seed(0)
    model = build_model("tiny", V, backbone_frozen_blocks=2).eval()
    assert model.memoised_part() is not None and build_model("tiny", V).memoised_part() is None
    batch = make_batch(model, B=3)
    calls = {"fixed": 0, "trained": 0}
    model.backbone.stage8.register_forward_hook(lambda m, i, o: calls.__setitem__("fixed", calls["fixed"] + 1))
    model.backbone.stage16.register_forward_hook(lambda m, i, o: calls.__setitem__("trained", calls["trained"] + 1))
    with torch.no_grad():
        plain = model.encode_image(batch["image"])["pixels"]
        model.feature_cache = FeatureCache(max_bytes=10**8, dtype=torch.float32)
        first = model.encode_image(batch["image"])["pixels"]
        again = model.encode_image(batch["image"])["pixels"]
    assert calls == {"fixed": 2, "trained": 3}
    assert torch.allclose(first, plain, atol=1e-6) and torch.allclose(again, plain, atol=1e-6)
    model.train()(batch)["loss"].backward()
    assert model.backbone.stage16[0].weight.grad is not None and model.backbone.stage8[0].weight.grad is None
    with pytest.raises(ValueError, match="frozen_backbone"):
        build_model("tiny", V, backbone_frozen_blocks=2, frozen_backbone=True)
    with pytest.raises(ValueError, match="chain of blocks"):
        build_model("tiny", V, backbone="darknet53", backbone_weights="random", backbone_frozen_blocks=2,
                    backbone_options={"base_channels": 4})


def test_feature_cache_chunks_save_and_load_without_copying_the_memo(tmp_path):
    """Entries fill chunks of ``chunk_rows``; a saved file holds the chunks and a load adopts them
    (all of them here, none copied row by row) with the same maps; the older one-tensor-per-level
    file (format /1) still loads; a memo over ``max_bytes`` stops adding; a second load of the
    same file adds nothing."""
    from mmi.model.feature_cache import FeatureCache

    torch.manual_seed(0)
    model = build_model("tiny", V, frozen_backbone=True).eval()
    images = make_batch(model, B=5)["image"]
    cache = FeatureCache(max_bytes=10**8, dtype=torch.float32, chunk_rows=2)
    expected = cache(model.backbone, images)
    assert len(cache) == 5 and [len(k) for k in cache.chunk_keys] == [2, 2, 1]
    per_row = sum(t[0].numel() * 4 for t in expected)
    assert cache.bytes == 3 * 2 * per_row  # counted per chunk allocated
    path = str(tmp_path / "feats.pt")
    assert cache.save(path, model.backbone) == 5
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == "mmi-feature-cache/2" and [c[0].shape[0] for c in saved["chunks"]] == [2, 2, 1]
    fresh = FeatureCache(max_bytes=10**8, dtype=torch.float32, chunk_rows=2)
    assert fresh.load(path, model.backbone) == 5 and fresh.unsaved == 0
    assert [len(k) for k in fresh.chunk_keys] == [2, 2, 1] and fresh.bytes == 5 * per_row
    got = fresh(model.backbone, images[[4, 0, 3]])
    assert fresh.misses == 0 and all(torch.equal(g, e[[4, 0, 3]]) for g, e in zip(got, expected))
    assert fresh.load(path, model.backbone) == 0 and len(fresh) == 5
    more = fresh(model.backbone, make_batch(model, B=2)["image"] + 1)  # new images go to a new chunk
    assert fresh.misses == 2 and len(fresh.chunk_keys) == 4 and len(more) == len(expected)
    old = str(tmp_path / "old.pt")  # format /1: one (N, C, H, W) tensor per level
    torch.save({"format": "mmi-feature-cache/1", "backbone": saved["backbone"], "keys": saved["keys"],
                "levels": [torch.cat([c[i] for c in saved["chunks"]]) for i in range(len(expected))]}, old)
    legacy = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    assert legacy.load(old, model.backbone) == 5
    assert all(torch.equal(g, e) for g, e in zip(legacy(model.backbone, images), expected))
    small = FeatureCache(max_bytes=3 * per_row, dtype=torch.float32, chunk_rows=2)
    assert small.load(path, model.backbone) == 4 and small.bytes >= small.max_bytes  # copied rows, two chunks
    half = FeatureCache(max_bytes=10**8, dtype=torch.float16)
    assert half.load(path, model.backbone) == 5 and half.chunks[0][0].dtype == torch.float16


def test_feature_cache_serves_named_images_that_were_not_loaded(tmp_path):
    """A batch that names its images (``names``, ``present``) may leave out the rows the memo holds
    by name: the maps are those of the image the name was recorded with; the names survive a
    save and load; an unknown name left out, or rows that do not add up, are refused."""
    from mmi.model.feature_cache import FeatureCache

    torch.manual_seed(0)
    model = build_model("tiny", V, frozen_backbone=True).eval()
    images = make_batch(model, B=3)["image"]
    cache = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    expected = cache(model.backbone, images, ["a", "b", "c"], [True, True, True])
    assert cache.names() == {"a", "b", "c"} and cache.misses == 3
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    got = cache(model.backbone, images[[1]], ["c", "b", "a"], [False, True, False])
    assert calls == [] and all(torch.equal(g, e[[2, 1, 0]]) for g, e in zip(got, expected))
    none = cache(model.backbone, None, ["b", "b"], [False, False])
    assert all(torch.equal(g, e[[1, 1]]) for g, e in zip(none, expected))
    with pytest.raises(KeyError, match="'d' was not loaded"):
        cache(model.backbone, None, ["d"], [False])
    with pytest.raises(ValueError, match="2 names, 1 marked present, 2 image rows"):
        cache(model.backbone, images[:2], ["a", "b"], [True, False])
    path = str(tmp_path / "named.pt")
    cache.save(path, model.backbone)
    fresh = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    fresh.load(path, model.backbone)
    assert fresh.index == cache.index
    with pytest.raises(ValueError, match="need the feature memo"):
        model.encode_image(None, ["a"], [False])  # no memo on the model
    model.feature_cache = fresh
    feats = model.encode_image(None, ["c", "a"], [False, False])
    assert torch.allclose(feats["pixels"], model.encode_image(images[[2, 0]])["pixels"])


def test_feature_cache_keeps_new_names_in_a_small_file_beside_the_memo(tmp_path, capsys):
    """Names learned for entries the memo file holds already go to its names file, not into a
    rewrite of the (large) memo file; two runs sharing the file add to each other's names, one
    at a time (a lock beside the names file); a names file of another backbone or a broken one is ignored with a warning; a new entry
    rewrites the memo file with every name."""
    import threading

    from mmi.model.feature_cache import NAMES_FORMAT, FeatureCache, _key_rows, _write_atomic, file_lock, names_path

    torch.manual_seed(0)
    model = build_model("tiny", V, frozen_backbone=True).eval()
    images = make_batch(model, B=3)["image"]
    path = str(tmp_path / "memo.pt")
    first = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    first(model.backbone, images)  # by content only, as a run without names fills it
    assert first.save(path, model.backbone) == 3
    written = os.stat(path).st_mtime_ns

    def run(names, rows):  # a run that loads the memo and names some of its images
        cache = FeatureCache(max_bytes=10**8, dtype=torch.float32)
        cache.load(path, model.backbone)
        cache(model.backbone, images[rows], names, [True] * len(names))
        assert cache.unsaved == 0 and cache.unsaved_names == len(names)
        return cache

    a, b = run(["a", "b"], [0, 1]), run(["c"], [2])
    saved = []
    with file_lock(names_path(path)):  # another run merging its names: a's save waits for it
        waiting = threading.Thread(target=lambda: saved.append(a.save(path, model.backbone)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not os.path.exists(names_path(path))
    waiting.join(60)
    assert saved == [0] and b.save(path, model.backbone) == 0
    assert os.stat(path).st_mtime_ns == written and os.path.exists(names_path(path))
    both = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    both.load(path, model.backbone)
    assert both.index == {**a.index, **b.index} and set(both.index) == {"a", "b", "c"}
    assert both.save(path, model.backbone) == 0  # nothing new: nothing written
    _write_atomic({"format": NAMES_FORMAT, "backbone": "0" * 32, "names": ["a"],  # another backbone's
                   "name_keys": _key_rows([both.index["a"]])}, names_path(path))
    fresh = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    fresh.load(path, model.backbone)
    assert fresh.names() == frozenset()  # ignored; the memo file itself was never told the names
    assert "memo.pt.names: made with another backbone, ignored" in capsys.readouterr().out
    grown = run(["a"], [0])
    grown(model.backbone, images[:1] * 0.5, ["new"], [True])  # a new entry: the memo file is rewritten
    assert grown.unsaved == 1 and grown.save(path, model.backbone) == 4 and os.stat(path).st_mtime_ns != written
    Path(names_path(path)).write_bytes(b"broken")
    again = FeatureCache(max_bytes=10**8, dtype=torch.float32)
    assert again.load(path, model.backbone) == 4 and again.names() == {"a", "new"}
    assert "memo.pt.names: not a names file, ignored" in capsys.readouterr().out
