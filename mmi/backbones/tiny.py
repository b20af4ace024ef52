"""A tiny CNN backbone for fast tests: five stride-2 conv-BN-ReLU layers.

Outputs 16, 32, 64 channels at strides 8, 16, 32 (with the default ``width=16``).
No pretrained weights exist for it: ``weights="default"`` and ``None`` both mean random
initialisation; a path loads a state dict written from this module.
"""
from __future__ import annotations

import os

from torch import nn

from .blocks import BlockChain
from .loading import load_checked, read_state_dict


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(BlockChain):
    """Five stride-2 conv-BN-ReLU layers; the last three give strides 8, 16, 32.

    Arguments:
        width: channels of the stride-8 map; the stride-16 and stride-32 maps have
            2x and 4x as many (``out_channels = (width, 2*width, 4*width)``).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"TinyBackbone width must be >= 1, got {width}")
        half = max(1, width // 2)
        self.stem = nn.Sequential(_conv_bn_relu(3, half), _conv_bn_relu(half, width))
        self.stage8 = _conv_bn_relu(width, width)
        self.stage16 = _conv_bn_relu(width, 2 * width)
        self.stage32 = _conv_bn_relu(2 * width, 4 * width)
        self.out_channels: tuple[int, int, int] = (width, 2 * width, 4 * width)
        self.weights_source = "random init"

    taps = (1, 2, 3)

    def blocks(self) -> list[nn.Module]:
        """x (B,3,S,S) -> [(B,C1,S/8,S/8), (B,C2,S/16,S/16), (B,C3,S/32,S/32)] through these."""
        return [self.stem, self.stage8, self.stage16, self.stage32]


def build_tiny(weights: str | os.PathLike[str] | None = "default", width: int = 16) -> TinyBackbone:
    """Tiny backbone; ``weights`` is ``None``/``"default"`` (random init) or a state-dict path."""
    model = TinyBackbone(width=width)
    if weights is not None and weights != "default":
        path = os.fspath(weights)
        load_checked(model, read_state_dict(path), path)
        model.weights_source = f"file {path}"
    return model
