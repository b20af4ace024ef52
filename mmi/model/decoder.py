"""The mutual decoder: L cross-modal attention layers with Iterative Multi-Modal
Interaction (IMI) between them.

IMI [paper idea, reconstruction detail]: after layer i the word features are re-derived
from the current multi-modal features X^(i+1) (B, HW, C):

    P     = X^(i+1) W_p                                   (B, HW, C)
    ctx_t = sum_p softmax_p((L_t W_a) . P_p / sqrt(C)) P_p   context pooled for each word
    R     = softmax_t'((L_t W_q) . (ctx_t' W_k) / sqrt(C))   (B, T, T), real words only
    dL_t  = sum_t' R_tt' V_t'
    L^(i+1) = LN(L^(i) + g_i dL)                           g_i a learnable gate

so deeper layers read a view of the sentence informed by the image. With ``imi=False``
every layer reads the encoder's F_t. The values V (``imi_values``):

- ``"language"`` (the paper presets) [paper]: V = L^(i) W_v, the language features
  themselves; the multi-modal context only decides how they are reorganised (the paper:
  an attention matrix "for reorganizing the language features").
- ``"context"`` [reconstruction, earlier form]: V = ctx W_v, the pooled multi-modal
  context, which adds vision content to the words. Stored configs without the key
  rebuild this form (``presets.LEGACY``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import ATTENTION, masked_softmax

IMI_VALUES = ("language", "context")


class LanguageUpdate(nn.Module):
    """One IMI step: (X (B,HW,C), L (B,T,C), word_mask (B,T)) -> new L (B,T,C).

    ``values``: "language" (V = L W_v) [paper] or "context" (V = ctx W_v) [reconstruction]."""

    def __init__(self, dim: int, gate_init: float = 0.1, values: str = "language"):
        super().__init__()
        if values not in IMI_VALUES:
            raise ValueError(f"unknown imi_values {values!r}: use one of {list(IMI_VALUES)}")
        self.values = values
        self.p = nn.Linear(dim, dim)
        self.a = nn.Linear(dim, dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, lang: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        p = self.p(x)
        pool = torch.softmax(self.a(lang) @ p.transpose(1, 2) / math.sqrt(C), dim=-1)  # (B, T, HW)
        ctx = pool @ p  # (B, T, C)
        r = masked_softmax(self.q(lang) @ self.k(ctx).transpose(1, 2) / math.sqrt(C), word_mask[:, None, :], dim=-1)
        delta = r @ self.v(lang if self.values == "language" else ctx)
        out = self.norm(lang + self.gate * delta)
        return out * word_mask[..., None].to(out.dtype)


class MutualDecoder(nn.Module):
    """Stack of ``layers`` attention layers (``attention`` = "mutual" | "generic_lav" |
    "pixel_query", attention.py), with IMI between consecutive layers when ``imi`` is True
    (its values: ``imi_values``, module docstring)."""

    def __init__(self, dim: int, heads: int, t_max: int, layers: int = 2, attention: str = "mutual", imi: bool = True,
                 fusion: str = "product", dropout: float = 0.1, gate: bool = False, imi_values: str = "language"):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"unknown attention {attention!r}: use one of {sorted(ATTENTION)}")
        if layers < 1:
            raise ValueError("the decoder needs at least one layer")
        cls = ATTENTION[attention]
        self.layers = nn.ModuleList(cls(dim, heads, t_max, fusion=fusion, dropout=dropout, gate=gate) for _ in range(layers))
        self.updates = nn.ModuleList(LanguageUpdate(dim, values=imi_values) for _ in range(layers - 1)) if imi else None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, lang: torch.Tensor, word_mask: torch.Tensor,
                layer_outputs: list | None = None) -> tuple[torch.Tensor, list[dict]]:
        """x (B, HW, C), pos (B or 1, HW, C), lang F_t (B, T, C), word_mask (B, T).

        Returns the final multi-modal pixel features (B, HW, C) and one attention dict per layer.
        When ``layer_outputs`` is a list, each layer's output (B, HW, C) is appended to it
        (deep supervision).
        """
        maps = []
        for i, layer in enumerate(self.layers):
            x, att = layer(x, pos, lang, word_mask)
            maps.append(att)
            if layer_outputs is not None:
                layer_outputs.append(x)
            if self.updates is not None and i < len(self.updates):
                lang = self.updates[i](x, lang, word_mask)
        return x, maps
