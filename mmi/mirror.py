"""Mirrored test-time view [practice, an inference aid the paper does not have; off by default].

The image flipped left-right with the expression's directional words swapped ("the leftmost
star" -> "the rightmost star") asks the same question of the mirrored scene; its answer,
flipped back, is averaged with the plain one. Both views run the whole network, so it costs
twice the time.

Sound where a mirrored scene is as likely as the scene itself and mirroring changes nothing
but the directional words: nearly so in the synthetic world (the mirrored view alone scores
within 0.3 oIoU of the plain one on every split: README, ``scripts/mirror_views.py``),
approximately in photographs (text in a scene reads backwards, "his left hand" stays his).
An expression holding a directional word whose partner is not in the vocabulary (say
"leftmost" without "rightmost") cannot be mirrored: it keeps the plain view alone.
"""
from __future__ import annotations

import torch

from .text import Vocabulary

#: words swapped in the mirrored view (each pair both ways)
MIRROR_PAIRS = (("left", "right"), ("leftmost", "rightmost"), ("left-most", "right-most"),
                ("left-hand", "right-hand"), ("lefthand", "righthand"))


class Mirror:
    """The word-id map of the mirrored view for one vocabulary.

    ``perm`` (V,): each word's id in the mirrored expression; ``unpaired`` (K,): ids of
    directional words whose partner the vocabulary lacks.
    """

    def __init__(self, vocab: Vocabulary):
        perm = torch.arange(len(vocab))
        unpaired = []
        for a, b in MIRROR_PAIRS:
            ia, ib = vocab.index.get(a), vocab.index.get(b)
            if ia is not None and ib is not None:
                perm[ia], perm[ib] = ib, ia
            else:
                unpaired += [i for i in (ia, ib) if i is not None]
        self.perm = perm
        self.unpaired = torch.tensor(unpaired, dtype=torch.long)
        self.swapped = sorted(vocab.words[i] for i in range(len(vocab)) if perm[i] != i)

    def words(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """words (B, T) ids -> (mirrored ids (B, T), usable (B,) bool: False where a word
        without a partner makes the mirrored expression mean something else)."""
        perm = self.perm.to(words.device)
        usable = ~torch.isin(words, self.unpaired.to(words.device)).any(dim=1)
        return perm[words], usable

    def average(self, plain: torch.Tensor, mirrored: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """plain and mirrored (B, ..., W) maps of the two views, the mirrored one still in its
        own (flipped) frame -> their mean in the plain frame; rows not ``usable`` keep the plain map."""
        back = mirrored.flip(-1)
        keep = usable.view(-1, *([1] * (plain.dim() - 1))).to(plain.device)
        return torch.where(keep, (plain + back) / 2, plain)
