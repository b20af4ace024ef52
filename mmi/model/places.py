"""Where each word's object lies from each pixel [practice, optional: ``word_places``].

A relation ("the star left of the red ball") or an ordinal ("the second circle from the left")
asks each pixel where the other objects the sentence names lie from it. The decoder's LAV
maps say where each word looks, but the product fusion reduces each word's LAV to one vector,
so what reaches a pixel is what the words see, not where. This block gives it the where:

    D[t, p]  = for each decoder layer and head, word t's LAV mass in p's own cell, in the
               columns left of p, right of it, in the rows above p and below it   (B, T, HW, 5 L h)
    z[t, p]  = relu(W_d D[t, p])                                                   (B, T, HW, w)
    g[t]     = W_g [F_t ; f_s]  (zero for padded words)                            (B, T, w)
    x'       = x + W_o sum_t g[t] * z[t, p]                                        (B, HW, C)

so each word, read with the sentence, says which of its directions matter (the anchor of
"left of" should lie to the right). ``W_o`` starts at zero: a model given the block computes
what it computed before, and training (``word_places_only``: the block alone, everything
else fixed) can only move it from there. It runs on the decoder's output, before the mask
head; the attention maps it reads are the decoder's, unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn

DIRECTIONS = 5  # own cell, left, right, above, below


class WordPlaces(nn.Module):
    """Arguments: dim: C; maps: L x h, the decoder's layer-heads whose LAV it reads; width: w."""

    def __init__(self, dim: int, maps: int, width: int = 32):
        super().__init__()
        self.embed = nn.Linear(DIRECTIONS * maps, width)
        self.gate = nn.Linear(2 * dim, width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def directions(lav: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """lav (B, M, T, HW), softmax over HW -> D (B, T, HW, 5 M): per cell p, each map's mass
        in p's cell, in the columns left of p's, right of it, in the rows above and below."""
        B, M, T, _ = lav.shape
        H, W = hw
        m = lav.float().view(B, M, T, H, W)
        cols, rows = m.sum(3), m.sum(4)  # (B, M, T, W), (B, M, T, H)
        cc, rc = cols.cumsum(-1), rows.cumsum(-1)
        left, right = cc - cols, cc[..., -1:] - cc
        above, below = rc - rows, rc[..., -1:] - rc
        shape = (B, M, T, H, W)
        d = torch.stack([m, left[..., None, :].expand(shape), right[..., None, :].expand(shape),
                         above[..., None].expand(shape), below[..., None].expand(shape)], -1)  # (B, M, T, H, W, 5)
        return d.permute(0, 2, 3, 4, 1, 5).reshape(B, T, H * W, M * DIRECTIONS)

    def forward(self, x: torch.Tensor, lav: torch.Tensor, hw: tuple[int, int], words: torch.Tensor,
                sentence: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """x (B, HW, C) the decoder's output; lav (B, M, T, HW) its LAV maps (layers and heads
        stacked); words F_t (B, T, C); sentence f_s (B, C); word_mask (B, T) -> x' (B, HW, C)."""
        B, T, _ = words.shape
        z = torch.relu(self.embed(self.directions(lav, hw).to(x.dtype)))  # (B, T, HW, w)
        g = self.gate(torch.cat([words, sentence[:, None].expand(-1, T, -1)], -1))
        g = g * word_mask[..., None].to(g.dtype)  # (B, T, w)
        return x + self.out(torch.einsum("btpw,btw->bpw", z, g))
