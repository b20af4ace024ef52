"""Boundary refinement at stride 2 [practice, optional: ``refine_channels``].

The mask head predicts at stride 4 from features no finer than stride 8, so an object's
outline is placed to within a stride-8 cell (8 px at S=256) and then interpolated. The
refiner reads the image itself at stride 2 and corrects the upsampled logits there:

    low = stem(image)                                            (B, c, S/2, S/2), once per image
    up  = bilinear(logits, S/2);  h = bilinear(hidden, S/2)      hidden: the mask head's last features
    refined = up + out(dw-blocks(conv1x1([low, h, up])))         (B, 1, S/2, S/2)

``out`` starts at zero, so a refiner added to a trained model begins as the identity (the
stride-4 logits, upsampled) and training can only move it from there. The blocks are
depthwise-separable (a 3x3 depthwise conv, the second dilated by 2, each followed by a 1x1
conv), so the per-expression cost stays well below the mask head's.

Out of training (``crop``, on by default), each expression's correction is computed only in
the box of the stride-4 cells whose logit exceeds ``ROI_LOGIT`` (a probability of ~2%), grown
by ``ROI_MARGIN`` cells; outside it the refined logits are the upsampled ones (no such cell:
no correction). The box's inputs are exactly the full maps' (the upsampling is cropped
with a one-cell border), only its convolutions pad at the box's edge, at least 16 px of S
from any such cell: the far field, where a trained refiner leaves the background as it is.
An object covers a small part of the canvas, so this costs a fraction of the full map's
work, and the cost of each added expression stays small (BENCHMARKS.md, "Predictor").

``context`` (``refine_context``, off by default) gives the refiner two more inputs, both read
from the whole coarse map of the expression (before any box is cut) and not differentiated:

    rel  = max(up - max(logits), -REL_FLOOR) / REL_FLOOR     how far below the map's peak
    peak = the 8-connected region of logits > 0 that holds the peak, at stride 4, repeated 2x

Its own receptive field is local (8 px of S), so alone it cannot tell the object asked for from
a look-alike elsewhere; with these it can learn when a second region (a weaker look-alike, a
stray fragment) is to be dropped and when it is part of the answer, which the hard rule of
``regions="peak"`` (mmi/regions.py) cannot. It also learned to raise the region around the
peak of an unsure map (every logit below ``ROI_LOGIT``) into a mask, which the box, keyed to
``ROI_LOGIT``, leaves out: on val 45 of 5,235 masks differ from the full map's (oIoU 77.62
against 77.82; ``scripts/check_refine_box.py``). A box that also held the cells within
``REL_FLOOR`` of the peak matched the full map (2 masks differ) but made the predictor's
8-expression request 2.1-2.4x a 1-expression one, over its goal of 2 (BENCHMARKS.md), so the
box stays keyed to ``ROI_LOGIT`` alone.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..regions import keep_regions
from .mask_head import conv_bn_relu

ROI_LOGIT = -4.0  # cells above this logit (sigmoid ~0.018) are where a correction may matter
ROI_MARGIN = 4    # stride-4 cells added around them: 16 px of S, twice the refiner's reach (8 px of S)
REL_FLOOR = 8.0   # ``context``: logits this far below the map's peak all read as -1


class _SeparableBlock(nn.Module):
    """x + pw(dw(x)): a 3x3 depthwise conv (dilation ``d``) and a 1x1 conv, each BN-ReLU."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels,
                                          bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.pw = conv_bn_relu(channels, channels, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.dw(x))


def _up2_crop(x: torch.Tensor, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """``interpolate(x, scale_factor=2, bilinear)[..., 2*y0:2*y1, 2*x0:2*x1]`` without the rest:
    x (B, C, h, w) cropped to the box plus a one-cell border (what bilinear reads), upsampled,
    then cut to the box. Equal to the full map's values (tested)."""
    h, w = x.shape[-2:]
    ys, xs = max(y0 - 1, 0), max(x0 - 1, 0)
    part = x[..., ys : min(y1 + 1, h), xs : min(x1 + 1, w)]
    up = F.interpolate(part, scale_factor=2, mode="bilinear", align_corners=False)
    oy, ox = 2 * (y0 - ys), 2 * (x0 - xs)
    return up[..., oy : oy + 2 * (y1 - y0), ox : ox + 2 * (x1 - x0)]


class MaskRefiner(nn.Module):
    """Arguments: hidden_channels: channels of the mask head's last features (its
    ``channels // 4``); channels: c, the width of the stem and of the blocks.
    ``crop``: out of training, refine each expression in the box around its coarse mask
    (module docstring); False computes the full map, as in training. ``context``: the two
    inputs read from the whole coarse map (module docstring)."""

    def __init__(self, hidden_channels: int, channels: int = 16, context: bool = False):
        super().__init__()
        self.crop = True
        self.context = bool(context)
        self.stem = nn.Sequential(conv_bn_relu(3, channels, 3, stride=2), conv_bn_relu(channels, channels))
        self.inp = conv_bn_relu(channels + hidden_channels + 1 + 2 * self.context, channels, k=1)
        self.blocks = nn.Sequential(_SeparableBlock(channels, 1), _SeparableBlock(channels, 2))
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S), normalised as the backbone's input -> low (B, c, S/2, S/2)."""
        return self.stem(image)

    def forward(self, low: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """low (B or 1, c, S/2, S/2) from :meth:`encode`; hidden (B, h, S/4, S/4) and logits
        (B, 1, S/4, S/4) from the mask head -> refined logits (B, 1, S/2, S/2)."""
        size = low.shape[-2:]
        if tuple(size) != (2 * logits.shape[-2], 2 * logits.shape[-1]):
            raise ValueError(f"the refiner's image features {tuple(size)} are not twice the logits' "
                             f"{tuple(logits.shape[-2:])}")
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if low.shape[0] != up.shape[0]:
            low = low.expand(up.shape[0], -1, -1, -1)
        ctx = self._context(logits, up) if self.context else None
        if self.training or not self.crop:
            h = F.interpolate(hidden, size=size, mode="bilinear", align_corners=False)
            return up + self._correction(low, h, up, ctx)
        out = up.clone()
        for b in range(up.shape[0]):
            cells = (logits[b, 0] > ROI_LOGIT).nonzero()
            if not len(cells):
                continue
            (y0, x0), (y1, x1) = cells.min(0).values.tolist(), cells.max(0).values.tolist()
            H, W = logits.shape[-2:]
            y0, x0 = max(y0 - ROI_MARGIN, 0), max(x0 - ROI_MARGIN, 0)
            y1, x1 = min(y1 + 1 + ROI_MARGIN, H), min(x1 + 1 + ROI_MARGIN, W)
            box = (slice(b, b + 1), slice(None), slice(2 * y0, 2 * y1), slice(2 * x0, 2 * x1))
            h = _up2_crop(hidden[b : b + 1], y0, y1, x0, x1)
            out[box] = up[box] + self._correction(low[box], h, up[box], None if ctx is None else ctx[box])
        return out

    @staticmethod
    def _context(logits: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """logits (B, 1, h, w), up (B, 1, 2h, 2w) -> [rel, peak] (B, 2, 2h, 2w), no gradient
        (module docstring). The peak region is labelled on the CPU (cv2), as regions.py does."""
        with torch.no_grad():
            top = logits.flatten(1).amax(1).view(-1, 1, 1, 1)
            rel = ((up - top).clamp(min=-REL_FLOOR) / REL_FLOOR).float()
            coarse = logits[:, 0].float().cpu().numpy()
            peak = np.stack([keep_regions(c > 0, c, "peak") for c in coarse]).astype(np.float32)
            peak = torch.from_numpy(peak).to(up.device)[:, None].repeat_interleave(2, 2).repeat_interleave(2, 3)
        return torch.cat([rel, peak], dim=1)

    def _correction(self, low: torch.Tensor, h: torch.Tensor, up: torch.Tensor,
                    ctx: torch.Tensor | None = None) -> torch.Tensor:
        """low, h, up (and ``context``'s ctx) on the same stride-2 window -> the correction to ``up`` there."""
        parts = [low.to(h.dtype), h, up.to(h.dtype)] + ([] if ctx is None else [ctx.to(h.dtype)])
        x = self.inp(torch.cat(parts, dim=1))
        return self.out(self.blocks(x)).to(up.dtype)
