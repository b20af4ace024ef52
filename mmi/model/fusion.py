"""Multiplicative vision-language fusion blocks [practice, optional].

Attention layers mix language into the pixel stream additively: after a softmax over
words, a pixel that matches no word still receives a convex mix of word features, and
"does this pixel match the expression" has to be computed later by ReLU layers. The works
MMI builds on fuse multiplicatively instead (VLT and MCN multiply vision features by the
sentence feature; LAVT multiplies them by a per-pixel language feature), which turns the
match into a bilinear form the network gets for free. Two such blocks, both residual:

- ``PixelLanguageGate``: x + W_o(relu(W_x x) * W_l l_p) for a per-pixel language
  feature l_p (the VAL output in M3Att, the attended words in ``pixel_query`` attention; the paper's
  ``generic_lav`` has no VAL and refuses it);
- ``SentenceFusion``: the same with the sentence feature f_s broadcast over pixels, applied
  to the encoder output before the decoder.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class PixelLanguageGate(nn.Module):
    """(x (B, N, C), lang (B, N, C) or (B, 1, C)) -> the residual term (B, N, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.vision = nn.Linear(dim, dim)
        self.language = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.vision(x)) * self.language(lang))


class SentenceFusion(nn.Module):
    """Pixels (B, HW, C) and the sentence feature f_s (B, C) -> LN(x + gate(x, f_s)) (B, HW, C)."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.gate = PixelLanguageGate(dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.gate(x, sentence[:, None, :])))
