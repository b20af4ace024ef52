"""Swin-B (torchvision's implementation) returning stages 2, 3, 4 (strides 8, 16, 32).

Each returned map goes through its own LayerNorm and is permuted to NCHW:
(2E, 4E, 8E) channels, (256, 512, 1024) for Swin-B (E = 128). Any input side works:
torchvision pads the feature maps to a multiple of the window inside each attention
block and pads odd sizes before each patch merging (480 -> 120, 60, 30, 15 tokens).

Weights:
    * ``None``: random initialisation. ``"default"`` is refused by ``build_backbone``
      (nothing is installed or downloaded); pass a checkpoint path instead.
    * a torchvision ``SwinTransformer`` state dict (``features.*``, ``norm.*``, ``head.*``).
    * an official Swin release (microsoft/Swin-Transformer): ``{'model': {...}}`` with
      ``patch_embed.*``, ``layers.i.blocks.j.*``, ``layers.i.downsample.*``, ``norm.*``.
      Names are mapped onto torchvision's modules (:func:`official_to_torchvision`).
      Window-12 (384 px) releases need ``window_size=12``.

Classifier ``head.*`` and the computed buffers (``relative_position_index``,
``attn_mask``) are dropped. The final classification ``norm.*`` initialises the stride-32
LayerNorm; the stride-8 and stride-16 LayerNorms start at identity (ones, zeros).

Patch merging: torchvision and the official code both concatenate the 2x2 neighbours as
[x(0::2,0::2), x(1::2,0::2), x(0::2,1::2), x(1::2,1::2)] (rows first, then columns),
so the merging ``reduction``/``norm`` weights are copied without permutation (a test
checks this against an implementation of the official order).
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer

from .loading import WeightsError, load_checked, read_state_dict

_OFFICIAL_BLOCK_PARTS = {
    "norm1": "norm1",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "attn.relative_position_bias_table": "attn.relative_position_bias_table",
    "norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_BLOCK_RE = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_DOWNSAMPLE_RE = re.compile(r"^layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$")
_COMPUTED_BUFFERS = ("relative_position_index", "attn_mask")


class SwinBackbone(nn.Module):
    """Swin Transformer trunk (torchvision modules) with a LayerNorm on each output.

    Arguments:
        embed_dim: E, the patch-embedding channels (128 for Swin-B).
        depths: blocks per stage ((2, 2, 18, 2) for Swin-B).
        num_heads: attention heads per stage ((4, 8, 16, 32) for Swin-B).
        window_size: attention window side (7 for the 224 px releases, 12 for 384 px).
        drop_path: stochastic depth rate of the last block (0.3, as in LAVT).
    Attributes:
        out_channels: (2E, 4E, 8E).
    """

    def __init__(
        self,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 7,
        drop_path: float = 0.3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"SwinBackbone needs four stages, got depths={depths}, num_heads={num_heads}")
        swin = SwinTransformer(
            patch_size=[4, 4],
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=[window_size, window_size],
            stochastic_depth_prob=drop_path,
            num_classes=1,
        )
        # features[0] patch embed; [1],[3],[5],[7] stages; [2],[4],[6] patch merging.
        self.features = swin.features
        self.out_channels: tuple[int, int, int] = (2 * embed_dim, 4 * embed_dim, 8 * embed_dim)
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)
        self.config = {
            "embed_dim": embed_dim,
            "depths": tuple(depths),
            "num_heads": tuple(num_heads),
            "window_size": window_size,
        }
        self.weights_source = "random init"

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B,3,S,S) -> [(B,2E,S/8,S/8), (B,4E,S/16,S/16), (B,8E,S/32,S/32)]."""
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)  # (B, H, W, C) channels-last inside torchvision's Swin
            if i in (3, 5, 7):
                norm = self.out_norms[(i - 3) // 2]
                outs.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return outs


def official_to_torchvision(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official Swin state dict onto :class:`SwinBackbone` keys.

    ``layers.i.blocks.j.X`` -> ``features.(2i+1).j.X'`` (``mlp.fc1``/``mlp.fc2`` ->
    ``mlp.0``/``mlp.3``); ``layers.i.downsample.*`` (end of official stage i) ->
    ``features.(2i+2).*``; ``patch_embed.proj`` -> ``features.0.0``; ``patch_embed.norm``
    -> ``features.0.2``; ``norm`` -> the stride-32 output norm ``out_norms.2``.
    Drops ``head.*`` and computed buffers. Returns (renamed dict, keys it did not know).
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith("head.") or key.rsplit(".", 1)[-1] in _COMPUTED_BUFFERS:
            continue
        if key.startswith("patch_embed.proj."):
            out["features.0.0." + key[len("patch_embed.proj."):]] = value
        elif key.startswith("patch_embed.norm."):
            out["features.0.2." + key[len("patch_embed.norm."):]] = value
        elif key.startswith("norm."):
            out["out_norms.2." + key[len("norm."):]] = value
        elif m := _DOWNSAMPLE_RE.match(key):
            stage, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            out[f"features.{2 * stage + 2}.{part}.{leaf}"] = value
        elif m := _BLOCK_RE.match(key):
            stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            for official, torchvision_name in _OFFICIAL_BLOCK_PARTS.items():
                if rest == official or rest.startswith(official + "."):
                    out[f"features.{2 * stage + 1}.{block}.{torchvision_name}{rest[len(official):]}"] = value
                    break
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    return out, unknown


def torchvision_to_backbone(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ``SwinTransformer`` state dict onto :class:`SwinBackbone` keys.

    ``features.*`` keep their names, ``norm.*`` -> ``out_norms.2.*``; ``head.*`` and the
    ``relative_position_index`` buffers are dropped; anything else is kept (and then
    reported as unexpected by the loader).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("head.") or key.rsplit(".", 1)[-1] in _COMPUTED_BUFFERS:
            continue
        out[("out_norms.2." + key[len("norm."):]) if key.startswith("norm.") else key] = value
    return out


def load_swin_weights(model: SwinBackbone, path: str | os.PathLike[str]) -> str:
    """Load a torchvision or official Swin checkpoint into ``model``; returns the format name.

    Raises :class:`WeightsError` naming the file and the missing / unexpected keys
    (or shape mismatches, e.g. a window size that differs from the checkpoint's).
    """
    path = os.fspath(path)
    state = read_state_dict(path)
    if any(k.startswith("features.") for k in state):
        fmt, mapped = "torchvision", torchvision_to_backbone(state)
    elif any(k.startswith(("patch_embed.", "layers.")) for k in state):
        fmt = "official Swin"
        mapped, unknown = official_to_torchvision(state)
        if unknown:
            raise WeightsError(f"{path}: official Swin checkpoint has unexpected keys {sorted(unknown)[:12]}")
    else:
        raise WeightsError(
            f"{path}: not a Swin checkpoint: no 'features.*' (torchvision) or 'patch_embed.*'/'layers.*' "
            f"(official) keys; first keys {list(state)[:8]}"
        )
    computed = tuple(k for k in model.state_dict() if k.rsplit(".", 1)[-1] in _COMPUTED_BUFFERS)
    try:
        load_checked(model, mapped, path, optional_prefixes=("out_norms.",) + computed)
    except WeightsError as exc:
        raise WeightsError(f"{exc} (read as {fmt} format, model config {model.config})") from exc
    return fmt


def build_swin_b(
    weights: str | os.PathLike[str] | None = "default",
    embed_dim: int = 128,
    depths: Sequence[int] = (2, 2, 18, 2),
    num_heads: Sequence[int] = (4, 8, 16, 32),
    window_size: int = 7,
    drop_path: float = 0.3,
) -> SwinBackbone:
    """Swin-B backbone (or a smaller Swin with the given config).

    ``weights``: ``None``/``"default"`` = random init (no Swin weights offline) or a
    path to a torchvision or official Swin checkpoint.
    """
    model = SwinBackbone(embed_dim, depths, num_heads, window_size, drop_path)
    if weights is not None and weights != "default":
        fmt = load_swin_weights(model, weights)
        model.weights_source = f"{fmt} weights {os.fspath(weights)}"
    return model
