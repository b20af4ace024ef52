"""Language encoder: word embeddings and a bidirectional LSTM [paper]."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class LanguageFeatures(tuple):
    """``(F_t (B, T, C), f_s (B, C))``, unpacked as a pair, with ``.clean``: F_t before the
    output dropout (what the LFR target is built from [paper presets], lfr.py)."""

    clean: torch.Tensor

    def __new__(cls, words: torch.Tensor, sentence: torch.Tensor, clean: torch.Tensor) -> "LanguageFeatures":
        out = super().__new__(cls, (words, sentence))
        out.clean = clean
        return out


class LanguageEncoder(nn.Module):
    """Word ids to per-word features F_t and a sentence feature f_s.

    Arguments:
        vocab_size: V. word_dim: embedding size (300, the GloVe size). dim: C, the output
        size; each LSTM direction has C/2 units. norm: LayerNorm on F_t and f_s.
    """

    def __init__(self, vocab_size: int, dim: int, word_dim: int = 300, dropout: float = 0.1, norm: bool = False):
        super().__init__()
        if dim % 2:
            raise ValueError(f"language feature size must be even, got {dim}")
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.lstm = nn.LSTM(word_dim, dim // 2, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        # optional LayerNorm of F_t and f_s: LSTM states start small (|h| ~ 0.1) beside the
        # layer-normed pixel tokens (|x_c| ~ 1), which leaves the cross-modal terms tiny
        self.norm_words = nn.LayerNorm(dim) if norm else None
        self.norm_sentence = nn.LayerNorm(dim) if norm else None

    def forward(self, words: torch.Tensor, word_mask: torch.Tensor) -> LanguageFeatures:
        """words: (B, T) long; word_mask: (B, T) bool, True for real words.

        Returns F_t (B, T, C), zero at padded words, and f_s (B, C): the final forward
        state and the final backward state (the state after reading the first word).
        A sentence with no words gives zeros. The result also carries ``.clean``, F_t
        before the output dropout (:class:`LanguageFeatures`).
        """
        B, T = words.shape
        x = self.drop(self.embed(words))
        lengths = word_mask.sum(1)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        sent = torch.cat([h[0], h[1]], dim=1)
        if self.norm_words is not None:
            out, sent = self.norm_words(out), self.norm_sentence(sent)
        feats = out * word_mask.unsqueeze(-1).to(out.dtype)
        sent = sent * (lengths > 0).to(out.dtype)[:, None]
        return LanguageFeatures(self.drop(feats), sent, feats)
