"""Mask decoder [paper, practice]: stride-16 multi-modal features to one logit map at stride 4."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SkipLanguageGate(nn.Module):
    """Language on the stride-8 path [practice, optional training aid ``skip_fusion``]:
    skip + W_o(relu(W_x skip) * W_s f_s), 1x1 convolutions, the sentence feature broadcast
    over the stride-8 grid, so the mask head can tell apart neighbouring small objects that
    share a stride-16 cell by what the expression names (colour, shape) rather than only
    by the upsampled stride-16 decision.

    Arguments: channels: C' of the projected skip; dim: C of f_s.
    """

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.vision = nn.Conv2d(channels, channels, 1)
        self.language = nn.Linear(dim, channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, skip: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """skip (B, C', 2H, 2W), sentence f_s (B, C) -> (B, C', 2H, 2W)."""
        return skip + self.out(torch.relu(self.vision(skip)) * self.language(sentence)[:, :, None, None])


class MaskHead(nn.Module):
    """conv3x3-BN-ReLU blocks of ``channels`` (512 in the paper); x2 up to stride 8 where the
    backbone's stride-8 level joins; x2 up to stride 4; a 1x1 conv to one logit.

    Arguments: dim: C of the input; skip_channels: channels of the stride-8 level;
    skip_fusion: gate the stride-8 level with the sentence feature (``SkipLanguageGate``).
    """

    def __init__(self, dim: int, skip_channels: int, channels: int = 512, skip_fusion: bool = False):
        super().__init__()
        self.inp = conv_bn_relu(dim, channels)
        self.skip = conv_bn_relu(skip_channels, channels // 2, k=1)
        self.skip_gate = SkipLanguageGate(channels // 2, dim) if skip_fusion else None
        self.mid = nn.Sequential(conv_bn_relu(channels + channels // 2, channels // 2), conv_bn_relu(channels // 2, channels // 2))
        self.out = nn.Sequential(conv_bn_relu(channels // 2, channels // 4), nn.Conv2d(channels // 4, 1, 1))

    def project_skip(self, f8: torch.Tensor) -> torch.Tensor:
        """The language-free part: the stride-8 level (B, C8, 2H, 2W) projected to (B, channels/2, 2H, 2W).
        The model computes it once per image (``MMI.encode_image``)."""
        return self.skip(f8)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, sentence: torch.Tensor | None = None,
                return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) at stride 16; skip = ``project_skip(f8)``; sentence f_s (B, C), used
        with ``skip_fusion``. Returns logits (B, 1, 4H, 4W), and with ``return_hidden`` also
        the features they are read from, (B, channels/4, 4H, 4W) (what ``MaskRefiner`` reads)."""
        if self.skip_gate is not None:
            if sentence is None:
                raise ValueError("this mask head gates the stride-8 level with the sentence feature: pass sentence")
            skip = self.skip_gate(skip, sentence)
        x = F.interpolate(self.inp(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.mid(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if not return_hidden:
            return self.out(x)
        hidden = self.out[0](x)
        return self.out[1](hidden), hidden
