"""Vision side of the head: multi-level fusion onto the stride-16 grid, 2-D position
encoding, and the transformer encoder over pixels [paper, practice]."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mask_head import conv_bn_relu
from .position import sine_2d


def coord_map(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """(8, h, w) spatial features of each grid cell, as MCN and VLT concatenate to the
    visual map: x_min, y_min, x_max, y_max, x_center, y_center in [-1, 1], then 1/w, 1/h."""
    xs = torch.linspace(-1, 1, w + 1, device=device)
    ys = torch.linspace(-1, 1, h + 1, device=device)
    x0, x1 = xs[:-1].view(1, w).expand(h, w), xs[1:].view(1, w).expand(h, w)
    y0, y1 = ys[:-1].view(h, 1).expand(h, w), ys[1:].view(h, 1).expand(h, w)
    out = torch.stack([x0, y0, x1, y1, (x0 + x1) / 2, (y0 + y1) / 2, torch.full_like(x0, 1.0 / w), torch.full_like(x0, 1.0 / h)])
    return out if dtype is None else out.to(dtype)


class LevelFusion(nn.Module):
    """Strides 8/16/32 (channels c8, c16, c32) -> one (B, C, S/16, S/16) map: the stride-8
    level is downsampled by a strided conv, the stride-32 level upsampled, all projected
    and concatenated, then mixed by conv3x3-BN-ReLU. With ``coords`` the 8 channels of
    ``coord_map`` join the concatenation, so the pixel tokens themselves (not only the
    attention's position code) say where they are."""

    def __init__(self, in_channels: tuple[int, int, int], dim: int, coords: bool = False):
        super().__init__()
        c8, c16, c32 = in_channels
        self.coords = coords
        self.p8 = conv_bn_relu(c8, dim, k=3, stride=2)
        self.p16 = conv_bn_relu(c16, dim, k=1)
        self.p32 = conv_bn_relu(c32, dim, k=1)
        self.mix = nn.Sequential(conv_bn_relu(3 * dim + (8 if coords else 0), dim), conv_bn_relu(dim, dim))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f8, f16, f32 = feats
        size = f16.shape[-2:]
        a = F.interpolate(self.p8(f8), size=size, mode="bilinear", align_corners=False)
        c = F.interpolate(self.p32(f32), size=size, mode="bilinear", align_corners=False)
        parts = [a, self.p16(f16), c]
        if self.coords:
            B, (H, W) = f16.shape[0], size
            parts.append(coord_map(H, W, f16.device, a.dtype)[None].expand(B, -1, -1, -1))
        return self.mix(torch.cat(parts, dim=1))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer over pixels; the position code is added to queries and keys."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = x + pos
        x = self.norm(x + self.drop(self.attn(qk, qk, x, need_weights=False)[0]))
        return self.norm2(x + self.drop(self.ffn(x)))


class VisionEncoder(nn.Module):
    """Backbone levels -> pixel tokens F_v (B, HW, C) with their position code (1, HW, C)."""

    def __init__(self, in_channels: tuple[int, int, int], dim: int, heads: int, layers: int = 2, dropout: float = 0.1,
                 coords: bool = False):
        super().__init__()
        self.dim = dim
        self.fusion = LevelFusion(in_channels, dim, coords)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, dropout) for _ in range(layers))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        x = self.fusion(feats)
        B, C, H, W = x.shape
        pos = sine_2d(H, W, C, device=x.device).to(x.dtype)[None]
        x = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x, pos)
        return x, pos, (H, W)
