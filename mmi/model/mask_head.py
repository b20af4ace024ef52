"""Mask decoder [paper, practice]: stride-16 multi-modal features to one logit map at stride 4."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MaskHead(nn.Module):
    """conv3x3-BN-ReLU blocks of ``channels`` (512 in the paper); x2 up to stride 8 where the
    backbone's stride-8 level joins; x2 up to stride 4; a 1x1 conv to one logit.

    Arguments: dim: C of the input; skip_channels: channels of the stride-8 level.
    """

    def __init__(self, dim: int, skip_channels: int, channels: int = 512):
        super().__init__()
        self.inp = conv_bn_relu(dim, channels)
        self.skip = conv_bn_relu(skip_channels, channels // 2, k=1)
        self.mid = nn.Sequential(conv_bn_relu(channels + channels // 2, channels // 2), conv_bn_relu(channels // 2, channels // 2))
        self.out = nn.Sequential(conv_bn_relu(channels // 2, channels // 4), nn.Conv2d(channels // 4, 1, 1))

    def project_skip(self, f8: torch.Tensor) -> torch.Tensor:
        """The language-free part: the stride-8 level (B, C8, 2H, 2W) projected to (B, channels/2, 2H, 2W).
        The model computes it once per image (``MMI.encode_image``)."""
        return self.skip(f8)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) at stride 16; skip = ``project_skip(f8)``. Returns logits (B, 1, 4H, 4W)."""
        x = F.interpolate(self.inp(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.mid(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(x)
