"""Cross-modal attention layers of the decoder.

``MutualAttention`` is M3Att [paper core]: one attention matrix A between words and
pixels, normalised along both axes. Softmax over pixels gives LAV (one vision vector per
word); softmax over words gives VAL (one language vector per pixel). The fusion of the
two into the pixel stream is a reconstruction (the paper's equations were lost):

- ``fusion="product"`` (default, METHOD.md): F_m = VAL . LAV^T / sqrt(C), (B, HW, T): for
  each pixel, how well the language it reads matches what each word sees; padded columns
  zeroed; a linear layer over the T word slots maps it to C channels.
- ``fusion="order_free"``: each pixel gathers the LAV vectors of the words it reads
  (with its VAL weights) and its VAL vector; both enter through one linear layer, so no
  weight is tied to a word position.

``GenericAttention`` (``attention="generic_lav"``) is the paper's baseline [paper]: the
generic attention "highlights the most relevant image region for each word", so words
query pixels, the softmax runs over pixels and the output is LAV alone (one vision vector
per word, a single-modal feature). [reconstruction] It reaches the pixel stream through
the same fusion as ``MutualAttention``, with each pixel's own feature X W_l in place of
VAL (product: F_m = (X W_l) . LAV^T / sqrt(C)), so that the ablation "+ mutual attention"
differs by VAL alone. It has the same parameters as ``MutualAttention`` (W_l reads pixels
instead of words) and no VAL map.

``PixelQueryAttention`` (``attention="pixel_query"``) is the decoder's earlier baseline,
kept for old checkpoints and configs: ordinary cross-attention in which pixels query
words and the attended words are added to the pixel stream. That output is one language
vector per pixel, i.e. a VAL path, so it is *not* the paper's generic attention. Its
``lav`` map, for drawing only, is the same score matrix normalised over pixels. Stored
configs that say ``attention="generic"`` (written before the rename) mean this layer
(``presets.LEGACY_ATTENTION``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fusion import PixelLanguageGate


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax of ``scores`` along ``dim`` over positions where ``mask`` is True.

    ``mask`` broadcasts against ``scores``. Masked positions get exactly 0; a slice with
    no valid position gets all zeros (not NaN).
    """
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=dim)
    return out.nan_to_num(0.0)


class FFN(nn.Module):
    """Post-norm feed-forward block: LN(x + W2 relu(W1 x))."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.net(x)))


class MutualAttention(nn.Module):
    """M3Att: words and pixels attend to each other through one matrix.

    Arguments:
        dim: C. heads: attention heads (d = C / heads). t_max: T, the word slots (used by
        the ``product`` fusion). fusion: "product" | "order_free".
    """

    def __init__(self, dim: int, heads: int, t_max: int, fusion: str = "product", dropout: float = 0.1, ffn_dim: int | None = None,
                 gate: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"C={dim} is not divisible by heads={heads}")
        if fusion not in ("product", "order_free"):
            raise ValueError(f"unknown fusion {fusion!r}: use 'product' or 'order_free'")
        self.dim, self.heads, self.t_max, self.fusion = dim, heads, t_max, fusion
        self.q = nn.Linear(dim, dim)  # W_q on words
        self.k = nn.Linear(dim, dim)  # W_k on pixels
        self.v = nn.Linear(dim, dim)  # W_v on pixels  -> LAV
        self.l = nn.Linear(dim, dim)  # W_l on words   -> VAL
        if fusion == "product":
            self.fuse = nn.Linear(t_max, dim)
        else:
            self.fuse = nn.Linear(2 * dim, dim)
        self.gate = PixelLanguageGate(dim) if gate else None  # multiplicative VAL fusion (fusion.py)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim or 4 * dim, dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.heads, self.dim // self.heads).transpose(1, 2)  # (B, h, N, d)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        B, h, N, d = x.shape
        return x.transpose(1, 2).reshape(B, N, h * d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, lang: torch.Tensor, word_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """x: pixels (B, HW, C); pos: (B or 1, HW, C); lang: words (B, T, C); word_mask: (B, T).

        Returns the new pixel features (B, HW, C) and ``{"lav": (B, h, T, HW) softmax over
        pixels, zero for padded words; "val": (B, h, T, HW) softmax over real words}``.
        """
        B, T, C = lang.shape
        if T != self.t_max and self.fusion == "product":
            raise ValueError(f"expected {self.t_max} word slots, got {T}")
        d = C // self.heads
        q, k = self._split(self.q(lang)), self._split(self.k(x + pos))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # A: (B, h, T, HW)
        words = word_mask[:, None, :, None]  # (B, 1, T, 1)
        lav_w = torch.softmax(scores, dim=-1) * words.to(scores.dtype)  # over HW; padded rows 0
        val_w = masked_softmax(scores, words, dim=2)  # over T, (B, h, T, HW)
        lav = self._merge(lav_w @ self._split(self.v(x)))  # (B, T, C)
        val = self._merge(val_w.transpose(-1, -2) @ self._split(self.l(lang)))  # (B, HW, C)
        if self.fusion == "product":
            fm = val @ lav.transpose(1, 2) / math.sqrt(C)  # (B, HW, T)
            fm = fm * word_mask[:, None, :].to(fm.dtype)
            out = self.fuse(fm)
        else:
            read = self._merge(val_w.transpose(-1, -2) @ self._split(lav))  # (B, HW, C) LAV read by each pixel
            out = self.fuse(torch.cat([read, val], dim=-1))
        if self.gate is not None:
            out = out + self.gate(x, val)
        x = self.norm(x + self.drop(out))
        return self.ffn(x), {"lav": lav_w, "val": val_w}


class PixelQueryAttention(nn.Module):
    """Pixels query words (softmax over words), values are words [reconstruction; not the
    paper's baseline: its output is a VAL-like language vector per pixel]."""

    def __init__(self, dim: int, heads: int, t_max: int, fusion: str = "product", dropout: float = 0.1, ffn_dim: int | None = None,
                 gate: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"C={dim} is not divisible by heads={heads}")
        self.dim, self.heads = dim, heads
        self.q = nn.Linear(dim, dim)  # on pixels
        self.k = nn.Linear(dim, dim)  # on words
        self.v = nn.Linear(dim, dim)  # on words
        self.out = nn.Linear(dim, dim)
        self.gate = PixelLanguageGate(dim) if gate else None  # multiplicative fusion of the attended words
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim or 4 * dim, dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, lang: torch.Tensor, word_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Same shapes as ``MutualAttention.forward``; the dict holds only ``lav``."""
        B, HW, C = x.shape
        h, d = self.heads, C // self.heads
        q = self.q(x + pos).view(B, HW, h, d).transpose(1, 2)  # (B, h, HW, d)
        k = self.k(lang).view(B, -1, h, d).transpose(1, 2)  # (B, h, T, d)
        v = self.v(lang).view(B, -1, h, d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, HW, T)
        w = masked_softmax(scores, word_mask[:, None, None, :], dim=-1)
        out = (w @ v).transpose(1, 2).reshape(B, HW, C)
        res = self.out(out)
        if self.gate is not None:
            res = res + self.gate(x, out)
        x = self.norm(x + self.drop(res))
        with torch.no_grad():
            lav_w = torch.softmax(scores.transpose(-1, -2), dim=-1) * word_mask[:, None, :, None].to(scores.dtype)
        return self.ffn(x), {"lav": lav_w}


class GenericAttention(MutualAttention):
    """The paper's generic attention [paper]: words query pixels, softmax over pixels,
    output LAV (B, T, C) alone; fused into the pixel stream like M3Att with the pixel's
    own feature X W_l in place of VAL [reconstruction] (module docstring).

    Arguments as :class:`MutualAttention`. ``gate`` (the multiplicative VAL fusion,
    ``word_gate``) is refused: this layer has no VAL for it to gate.
    """

    def __init__(self, dim: int, heads: int, t_max: int, fusion: str = "product", dropout: float = 0.1, ffn_dim: int | None = None,
                 gate: bool = False):
        if gate:
            raise ValueError("word_gate fuses each pixel's VAL into the pixel stream; attention='generic_lav' has no VAL "
                             "(it is the paper's LAV-only baseline): set word_gate=false")
        super().__init__(dim, heads, t_max, fusion=fusion, dropout=dropout, ffn_dim=ffn_dim, gate=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, lang: torch.Tensor, word_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Shapes as ``MutualAttention.forward``; the dict holds only ``lav`` (B, h, T, HW)."""
        B, T, C = lang.shape
        if T != self.t_max and self.fusion == "product":
            raise ValueError(f"expected {self.t_max} word slots, got {T}")
        d = C // self.heads
        q, k = self._split(self.q(lang)), self._split(self.k(x + pos))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, T, HW)
        real = word_mask[:, None, :].to(scores.dtype)  # (B, 1, T)
        lav_w = torch.softmax(scores, dim=-1) * real[..., None]  # over HW; padded rows 0
        lav = self._merge(lav_w @ self._split(self.v(x)))  # (B, T, C)
        own = self.l(x)  # (B, HW, C): the pixel's own feature where M3Att has VAL
        if self.fusion == "product":
            fm = own @ lav.transpose(1, 2) / math.sqrt(C)  # (B, HW, T)
            out = self.fuse(fm * real)
        else:
            # no VAL weights to read LAV with: every pixel reads the mean LAV of the real words
            read = (lav * real.transpose(1, 2)).sum(1, keepdim=True) / real.sum(-1, keepdim=True).clamp(min=1)
            out = self.fuse(torch.cat([read.expand(-1, x.shape[1], -1), own], dim=-1))
        x = self.norm(x + self.drop(out))
        return self.ffn(x), {"lav": lav_w}


ATTENTION = {"mutual": MutualAttention, "generic_lav": GenericAttention, "pixel_query": PixelQueryAttention}
