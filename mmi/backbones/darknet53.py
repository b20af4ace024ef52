"""Darknet-53, the YOLOv3 backbone, returning its last three stages (strides 8, 16, 32).

Layout (``base_channels`` b = 32 in the original): a 3x3 conv to b channels, then five
stages, each a stride-2 3x3 conv doubling the channels followed by ``depths`` =
(1, 2, 8, 8, 4) residual blocks (1x1 conv to half the channels, 3x3 conv back, plus the
input). Every conv is conv (no bias) + BatchNorm + LeakyReLU(0.1): 52 convs in all.
Outputs: stages 3, 4, 5 with 8b, 16b, 32b channels (256, 512, 1024).

Weights:
    * ``None``: random initialisation. ``"default"`` is refused by ``build_backbone``
      (there is no default file); pass the COCO-pretrained file's path instead.
    * a Darknet ``.weights`` file (``darknet53.conv.74``, ``yolov3.weights``, ...): the
      backbone's convs are read in cfg order and any data after them (the YOLOv3 head)
      is ignored.
    * a PyTorch state dict of this module (plain, or under ``'model'``/``'state_dict'``).
"""
from __future__ import annotations

import os
import zipfile
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .loading import WeightsError, check_file, load_checked, read_state_dict

DARKNET53_DEPTHS = (1, 2, 8, 8, 4)


class ConvBNLeaky(nn.Module):
    """Conv (no bias) + BatchNorm + LeakyReLU(0.1); 'same' padding.  (B,Cin,H,W) -> (B,Cout,H/s,W/s)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """x + conv3x3(conv1x1(x)), the 1x1 halving the channels.  (B,C,H,W) -> (B,C,H,W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = ConvBNLeaky(channels, channels // 2, 1)
        self.expand = ConvBNLeaky(channels // 2, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(self.reduce(x))


class Darknet53(nn.Module):
    """Darknet-53 trunk.

    Arguments:
        base_channels: channels of the first conv (32 in the original; smaller for tests).
        depths: residual blocks in each of the five stages ((1, 2, 8, 8, 4) originally).
    Attributes:
        out_channels: (8b, 16b, 32b), the channels of the stride 8, 16, 32 maps.
    """

    def __init__(self, base_channels: int = 32, depths: Sequence[int] = DARKNET53_DEPTHS) -> None:
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if len(depths) != 5 or min(depths) < 1:
            raise ValueError(f"Darknet53 needs five stage depths >= 1, got {depths}")
        if base_channels < 1:
            raise ValueError(f"Darknet53 base_channels must be >= 1, got {base_channels}")
        self.base_channels = base_channels
        self.depths = depths
        self.stem = ConvBNLeaky(3, base_channels, 3)
        stages = []
        c = base_channels
        for depth in depths:
            blocks: list[nn.Module] = [ConvBNLeaky(c, 2 * c, 3, stride=2)]
            c *= 2
            blocks += [Residual(c) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, int, int] = (8 * base_channels, 16 * base_channels, 32 * base_channels)
        self.weights_source = "random init"

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B,3,S,S) -> [(B,8b,S/8,S/8), (B,16b,S/16,S/16), (B,32b,S/32,S/32)]."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                outs.append(x)
        return outs

    def darknet_convs(self) -> list[ConvBNLeaky]:
        """The convs in the order of the darknet53 cfg (and of a ``.weights`` file)."""
        convs = [self.stem]
        for stage in self.stages:
            convs.append(stage[0])
            for block in list(stage)[1:]:
                convs += [block.reduce, block.expand]
        return convs


def _darknet_arrays(conv: ConvBNLeaky) -> list[Tensor]:
    """The tensors of one conv in Darknet file order (BN: bias, scale, mean, var; then weights)."""
    return [conv.bn.bias, conv.bn.weight, conv.bn.running_mean, conv.bn.running_var, conv.conv.weight]


def read_darknet_header(path: str, data: bytes) -> tuple[tuple[int, int, int, int], int]:
    """Parse a ``.weights`` header -> ((major, minor, revision, seen), header size in bytes).

    ``seen`` is an int64 when ``major*10 + minor >= 2``, else an int32. Raises
    :class:`WeightsError` naming the file when the header is short or implausible.
    """
    if len(data) < 16:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a Darknet .weights header (needs 16+)")
    major, minor, revision = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
    if not (0 <= major < 1000 and 0 <= minor < 1000 and 0 <= revision < 1_000_000):
        raise WeightsError(
            f"{path}: not a Darknet .weights header (major={major}, minor={minor}, revision={revision}); "
            "expected small non-negative version numbers"
        )
    if major * 10 + minor >= 2:
        seen, size = int(np.frombuffer(data, dtype="<i8", count=1, offset=12)[0]), 20
    else:
        seen, size = int(np.frombuffer(data, dtype="<i4", count=1, offset=12)[0]), 16
    if len(data) < size:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a Darknet header of {size} bytes")
    return (major, minor, revision, seen), size


def load_darknet_weights(model: Darknet53, path: str | os.PathLike[str]) -> int:
    """Load a Darknet ``.weights`` binary into ``model``; returns the float32 values left unread.

    Reads the header, then for each of the model's convs in cfg order: BN bias, BN scale,
    running mean, running variance, conv weights. Trailing data (a YOLOv3 head) is
    ignored. Raises :class:`WeightsError` (a ValueError) naming the file and the expected
    and found float counts when the file is too short.
    """
    path = check_file(path)
    with open(path, "rb") as fh:
        data = fh.read()
    _, offset = read_darknet_header(path, data)
    convs = model.darknet_convs()
    expected = sum(t.numel() for conv in convs for t in _darknet_arrays(conv))
    found = (len(data) - offset) // 4
    if found < expected:
        raise WeightsError(
            f"{path}: truncated Darknet weights for Darknet53(base_channels={model.base_channels}, "
            f"depths={model.depths}): expected {expected} float32 values for its {len(convs)} convs "
            f"after the {offset}-byte header, found {found}"
        )
    values = np.frombuffer(data, dtype="<f4", count=expected, offset=offset)
    pos = 0
    with torch.no_grad():
        for conv in convs:
            for tensor in _darknet_arrays(conv):
                n = tensor.numel()
                tensor.copy_(torch.from_numpy(values[pos : pos + n].copy()).view_as(tensor))
                pos += n
    return found - expected


def _is_torch_file(path: str) -> bool:
    """True for PyTorch's zip format or its legacy pickle format (starts with a pickle opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def build_darknet53(
    weights: str | os.PathLike[str] | None = "default",
    base_channels: int = 32,
    depths: Sequence[int] = DARKNET53_DEPTHS,
) -> Darknet53:
    """Darknet-53 backbone (strides 8/16/32, 8b/16b/32b channels).

    ``weights``: ``None`` or ``"default"`` = random init (no COCO weights offline); a path
    to a Darknet ``.weights`` file or to a PyTorch state dict of :class:`Darknet53`.
    """
    model = Darknet53(base_channels=base_channels, depths=depths)
    if weights is None or weights == "default":
        return model
    path = check_file(weights)
    if _is_torch_file(path):
        load_checked(model, read_state_dict(path), path)
        model.weights_source = f"state dict {path}"
    else:
        left = load_darknet_weights(model, path)
        model.weights_source = f"darknet weights {path}" + (f" ({left} trailing values ignored)" if left else "")
    return model
