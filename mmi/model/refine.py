"""Boundary refinement at stride 2 [practice, optional: ``refine_channels``].

The mask head predicts at stride 4 from features no finer than stride 8, so an object's
outline is placed to within a stride-8 cell (8 px at S=256) and then interpolated. The
refiner reads the image itself at stride 2 and corrects the upsampled logits there:

    low = stem(image)                                            (B, c, S/2, S/2), once per image
    up  = bilinear(logits, S/2);  h = bilinear(hidden, S/2)      hidden: the mask head's last features
    refined = up + out(dw-blocks(conv1x1([low, h, up])))         (B, 1, S/2, S/2)

``out`` starts at zero, so a refiner added to a trained model begins as the identity (the
stride-4 logits, upsampled) and training can only move it from there. The blocks are
depthwise-separable (a 3x3 depthwise conv, the second dilated by 2, each followed by a 1x1
conv), so the per-expression cost stays well below the mask head's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mask_head import conv_bn_relu


class _SeparableBlock(nn.Module):
    """x + pw(dw(x)): a 3x3 depthwise conv (dilation ``d``) and a 1x1 conv, each BN-ReLU."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels,
                                          bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.pw = conv_bn_relu(channels, channels, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.dw(x))


class MaskRefiner(nn.Module):
    """Arguments: hidden_channels: channels of the mask head's last features (its
    ``channels // 4``); channels: c, the width of the stem and of the blocks."""

    def __init__(self, hidden_channels: int, channels: int = 16):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, channels, 3, stride=2), conv_bn_relu(channels, channels))
        self.inp = conv_bn_relu(channels + hidden_channels + 1, channels, k=1)
        self.blocks = nn.Sequential(_SeparableBlock(channels, 1), _SeparableBlock(channels, 2))
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S), normalised as the backbone's input -> low (B, c, S/2, S/2)."""
        return self.stem(image)

    def forward(self, low: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """low (B or 1, c, S/2, S/2) from :meth:`encode`; hidden (B, h, S/4, S/4) and logits
        (B, 1, S/4, S/4) from the mask head -> refined logits (B, 1, S/2, S/2)."""
        size = low.shape[-2:]
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        h = F.interpolate(hidden, size=size, mode="bilinear", align_corners=False)
        if low.shape[0] != up.shape[0]:
            low = low.expand(up.shape[0], -1, -1, -1)
        x = self.inp(torch.cat([low.to(h.dtype), h, up.to(h.dtype)], dim=1))
        return up + self.out(self.blocks(x)).to(up.dtype)
