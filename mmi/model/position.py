"""Sine/cosine position encodings (1-D over words, 2-D over the feature grid)."""
from __future__ import annotations

import math

import torch


def sine_1d(length: int, dim: int, device=None) -> torch.Tensor:
    """(length, dim) sinusoidal encoding of positions 0..length-1 (dim must be even)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


def sine_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """(h*w, dim) encoding: the first dim/2 channels encode the row, the rest the column,
    both normalised to [0, 2*pi] so the code does not depend on the grid size."""
    if dim % 4:
        raise ValueError(f"2-D position encoding needs a channel count divisible by 4, got {dim}")
    half = dim // 2
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    freq = 10000.0 ** (torch.arange(0, half, 2, device=device, dtype=torch.float32) / half)

    def enc(v: torch.Tensor) -> torch.Tensor:
        a = v[:, None] / freq[None]
        return torch.stack([a.sin(), a.cos()], dim=2).flatten(1)  # (n, half)

    ey, ex = enc(ys), enc(xs)
    grid = torch.cat([ey[:, None, :].expand(h, w, half), ex[None, :, :].expand(h, w, half)], dim=2)
    return grid.reshape(h * w, dim)
