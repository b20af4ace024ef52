"""Backbones made of a chain of blocks, with their first blocks optionally kept fixed.

A :class:`BlockChain` runs ``blocks()[0], blocks()[1], ...`` in order and returns the
outputs of the blocks listed in ``taps`` (strides 8, 16, 32). ``freeze_blocks(n)`` keeps
the first ``n`` blocks fixed (no gradients; BatchNorm in eval mode, so its statistics stay
those of the weights loaded) while the rest train: a *partly trained* backbone. The fixed
part's outputs never change, so a FeatureCache can memoise them (``frozen_part()`` is the
module to memoise, ``forward_from`` runs the trained blocks from its outputs), and a step
pays only for the trained blocks. On MobileNetV2 the blocks after ``features[6]`` (strides
16 and 32) hold 97% of the parameters and, at S=256, run on 16x16 and 8x8 grids.
"""
from __future__ import annotations

from torch import Tensor, nn


class _FrozenPrefix(nn.Module):
    """The first ``n`` blocks of a chain, as a module of its own (not registered in the
    chain, so its state dict keys are unaffected): image -> [taps among them..., x], where
    the trailing x, the input of block n, is left out when block n-1 is itself a tap."""

    def __init__(self, blocks: list[nn.Module], taps: tuple[int, ...]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.taps = taps
        self.train(False)

    def train(self, mode: bool = True) -> "_FrozenPrefix":
        # the blocks are fixed: they stay in eval mode whatever the caller asks
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                outs.append(x)
        if not self.blocks or len(self.blocks) - 1 not in self.taps:
            outs.append(x)
        return outs


class BlockChain(nn.Module):
    """Base class: subclasses define ``blocks()`` and ``taps`` (indices of the blocks whose
    outputs are returned, strides 8, 16, 32 in that order)."""

    taps: tuple[int, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.frozen_blocks = 0

    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def freeze_blocks(self, n: int) -> None:
        """Keep ``blocks()[:n]`` fixed (weights and BatchNorm statistics); train the rest."""
        blocks = self.blocks()
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < len(blocks):
            raise ValueError(f"frozen blocks must be an integer in [0, {len(blocks) - 1}] for this backbone "
                             f"({len(blocks)} blocks; all of them fixed is frozen_backbone), got {n!r}")
        self.frozen_blocks = n
        for i, block in enumerate(blocks):
            block.requires_grad_(i >= n)
        self.train(self.training)

    def train(self, mode: bool = True) -> "BlockChain":
        super().train(mode)
        for block in self.blocks()[: self.frozen_blocks]:
            block.eval()
        return self

    def frozen_part(self) -> nn.Module:
        """The fixed blocks as one module (image (B,3,S,S) -> a list of maps) for a memo."""
        return _FrozenPrefix(self.blocks()[: self.frozen_blocks], self.taps)

    def forward_from(self, parts: list[Tensor]) -> list[Tensor]:
        """``frozen_part()``'s outputs -> [f8, f16, f32], running the trained blocks."""
        n = self.frozen_blocks
        outs, x = list(parts), parts[-1]
        if n == 0 or n - 1 not in self.taps:
            outs.pop()
        for i, block in enumerate(self.blocks()[n:], start=n):
            x = block(x)
            if i in self.taps:
                outs.append(x)
        return outs

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B,3,S,S) -> [f8, f16, f32]."""
        return self.forward_from(self.frozen_part()(x) if self.frozen_blocks else [x])
