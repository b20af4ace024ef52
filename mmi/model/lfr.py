"""Language Feature Reconstruction (LFR), a training-only auxiliary loss [paper form,
reconstruction detail].

Target: [F_t + PE ; f_s] (B, T+1, C) through the projection W_p, summed over the real
words (and the sentence slot) and divided by their number. Reconstruction: the final
multi-modal features through a learnable projection, mean-pooled over pixels.
Distance: mean squared error. The gradient is stopped on the target side so the pair
cannot collapse to a constant; with the target side stopped a learnable W_p would never
be trained, so W_p is a fixed random projection kept in the state dict as a buffer.

Which F_t the target reads (``lfr_target``): ``"clean"`` (the paper presets), the
LSTM's word features before the output dropout [reconstruction, METHOD.md: a target
that dropout does not perturb]; ``"dropout"``, the dropped-out F_t the decoder reads
(the earlier form; stored configs without the key rebuild it, ``presets.LEGACY``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .position import sine_1d


LFR_TARGETS = ("clean", "dropout")


class LanguageReconstruction(nn.Module):
    """The LFR loss. Arguments: dim C, t_max T, seed of the fixed W_p, target (``lfr_target``:
    "clean" | "dropout", module docstring), read by the caller through ``clean_target``."""

    def __init__(self, dim: int, t_max: int, seed: int = 0, target: str = "clean"):
        super().__init__()
        if target not in LFR_TARGETS:
            raise ValueError(f"unknown lfr_target {target!r}: use one of {list(LFR_TARGETS)}")
        self.clean_target = target == "clean"
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w_target", torch.randn(dim, dim, generator=g) / dim**0.5)
        self.register_buffer("pe", sine_1d(t_max + 1, dim))
        self.recon = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def target(self, words: torch.Tensor, sentence: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """words F_t (B, T, C), sentence f_s (B, C), word_mask (B, T) -> (B, C), no gradient."""
        with torch.no_grad():
            T = words.shape[1]
            seq = torch.cat([words + self.pe[:T], sentence[:, None] + self.pe[T]], dim=1) @ self.w_target
            keep = torch.cat([word_mask, word_mask.new_ones(word_mask.shape[0], 1)], dim=1).to(seq.dtype)
            return (seq * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor, words: torch.Tensor, sentence: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """x: final multi-modal features (B, HW, C). Returns the scalar LFR loss."""
        recon = self.recon(x).mean(1)
        return F.mse_loss(recon.float(), self.target(words, sentence, word_mask).float())
