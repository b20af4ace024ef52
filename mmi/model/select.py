"""Region selection [practice, optional: ``select_regions``]: one region per expression, chosen by a
learned scorer.

An expression names one object, but the mask a threshold draws can hold several 8-connected
regions: the object and a look-alike, the target and the anchor of a relation ("left of the
blue square"), two candidates of an ordinal. Before the selector (the shipped model's stage 3)
12.9% of val's expressions had more than one, and keeping the best of them alone would lift val
oIoU from 77.6 to 83.2 (``scripts/region_oracle.py``); the hard rule ``regions="peak"``
(mmi/regions.py: the region of the highest probability) gets 77.9 of it. The selector scores
each region from what the model knows of it and keeps the best:

    regions  the 8-connected components of logits > 0 (the mask of threshold 0.5), per expression
    x_r      [avg(hidden, r), avg(grid, r), geometry(r), f_s]       (D_in,) per region r
             hidden: the mask head's last features (B, h, S/4, S/4); grid: the decoder's output
             (B, C, S/16, S/16); each averaged over the region resized to its grid (area);
             geometry: the region's highest and mean logit, its highest below the map's, log
             of its area share, centre, box (x0, x1, y0, y1, in [0, 1]), the number of regions
    e        = mlp(layernorm(x))             (n, W)
    [maps]   e += sum_t a_rt z_rt,  z_rt = mlp([m_rt, F_t]), a_r = softmax_t(linear(z_r))
             m_rt (MAP_FEATURES x M): what the decoder's M layer-head attention maps say of word t
             and region r: the word's LAV mass inside r, its mean VAL there, where its LAV mass
             lies from r's centre, and its LAV mass left of, right of, above and below r's box
             (map_features: where "the second ... from the left" counts, where the anchor of
             "left of the blue square" is)
    [words]  e += attention(e, F_t)            the regions read the words
    [context] e += attention(e, grid cells + where(cell - r))  the decoder's grid, seen from r
    e        = e + self_attention(e)          the regions see each other (which is leftmost ...)
    score    = linear(relu(e))               (n,)
    out      = logits, with every region but the best's set to at most ``SUPPRESS``

The inputs in brackets are switches (``select_maps``, ``select_words``, ``select_context``), off
in the shipped model. ``scripts/selector_lab.py`` compared them on its stage 3: every design
lands within 0.7 points of the others on val, and the maps' small lead there did not hold on
testA: the selector's evidence is the model's own, which already favoured the wrong object
(README, "What was compared"). They are there for a model that grounds better.

An expression with one region or none is left as it is, and the kept region's logits (and so its
mask at any resolution) are unchanged: only the other regions' go. Its loss is the cross-entropy
towards the region that overlaps the target best (IoU at the logits' resolution); expressions with
fewer than two regions, or none touching the target, add nothing. Its inputs are detached, so in a
model's training it learns beside the rest without changing it, or alone (``select_only``: every
other weight fixed, as the shipped model's stage 4). It chooses out of training only; in training
the logits pass through.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..regions import label

SUPPRESS = -20.0  # the logit a dropped region is held to (sigmoid ~2e-9)
GEOMETRY = 11     # the geometry features of a region (module docstring)
RELATIVE = 6      # where a grid cell lies from a region (_relative)
MAP_FEATURES = 8  # per word, region and attention map (RegionSelector.map_features)


def _relative(geometry: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """geometry (B, n, GEOMETRY) of regions (region_features), size (h, w) of a grid -> (B, n, h*w,
    RELATIVE): where each cell's centre lies from each region, in image widths and heights: from
    its centre (dx, dy) and from its box's edges (x - x0, x - x1, y - y0, y - y1)."""
    xs, ys = _cell_centres(int(size[0]), int(size[1]), geometry.device)
    g = geometry[..., None, :]  # (B, n, 1, GEOMETRY)
    return torch.stack([xs - g[..., 4], ys - g[..., 5], xs - g[..., 6], xs - g[..., 7], ys - g[..., 8], ys - g[..., 9]], -1)


def label_regions(logits: torch.Tensor) -> list[tuple[int, np.ndarray | None]]:
    """logits (B, 1, h, w) -> per expression (n, labels (h, w) int32, 0 the background, or None
    when n == 0): the 8-connected regions of logits > 0, labelled on the CPU (cv2)."""
    return [label(m) for m in (logits[:, 0] > 0).cpu().numpy()]


def loss_target(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mask (B, 1, S, S) -> (B, h, w) bool: the target at the logits' resolution (area, > 0.5)."""
    return F.interpolate(mask.float(), size=size, mode="area")[:, 0] > 0.5


def region_ious(labels: np.ndarray, n: int, target: torch.Tensor) -> torch.Tensor:
    """labels (h, w) with regions 1..n, target (h, w) bool -> (n,) each region's IoU with the
    target (the loss's: the region it aims at is the argmax), from two bincounts."""
    lab = torch.from_numpy(labels).to(target.device).long().flatten()
    t = target.flatten()
    inter = torch.bincount(lab[t], minlength=n + 1)[1:]
    return (inter / (torch.bincount(lab, minlength=n + 1)[1:] + t.sum() - inter)).float()


@functools.lru_cache(maxsize=16)
def _cells(h: int, w: int, gh: int, gw: int, device: torch.device) -> torch.Tensor:
    """(h*w,) the index of the gh x gw grid cell each pixel of an h x w map falls in (the grid
    divides the map); kept per shape: the predictor asks for the same few shapes every time."""
    fy, fx = h // gh, w // gw
    return ((torch.arange(h, device=device) // fy)[:, None] * gw + (torch.arange(w, device=device) // fx)[None, :]).flatten()


@functools.lru_cache(maxsize=16)
def _cell_centres(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(h*w,) each cell's centre x and y of an h x w grid, in [0, 1] (row-major), kept per shape."""
    ys = ((torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h).repeat_interleave(w)
    xs = ((torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w).repeat(h)
    return xs, ys


@functools.lru_cache(maxsize=16)
def _coordinates(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(h*w,) each pixel's column x and row y (row-major, int64), kept per shape."""
    return torch.arange(w, device=device).repeat(h), torch.arange(h, device=device).repeat_interleave(w)


def _region_shares(lab: torch.Tensor, n: int, h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
    """lab (h*w,) region labels 0..n -> (n, H', W'): the share of each cell of an H' x W' grid that
    each region covers (each region's mask resized to the grid with ``interpolate(mode="area")``),
    counted with one bincount where the grid divides the map, else from the masks."""
    gh, gw = int(size[0]), int(size[1])
    if h % gh or w % gw:
        masks = F.one_hot(lab.view(h, w), n + 1)[..., 1:].permute(2, 0, 1).float()
        return F.interpolate(masks[:, None], size=(gh, gw), mode="area")[:, 0]
    cell = _cells(h, w, gh, gw, lab.device)
    counts = torch.bincount(cell * (n + 1) + lab, minlength=gh * gw * (n + 1)).view(gh * gw, n + 1)
    return (counts[:, 1:].T.float() / ((h // gh) * (w // gw))).reshape(n, gh, gw)


class RegionSelector(nn.Module):
    """Arguments: dim: C of the decoder's output and of f_s; hidden_channels: h of the mask head's
    last features; width: W of the region embeddings; heads: of their attention layers; context:
    each region also attends over the decoder's grid, its keys and values told where each cell lies
    from the region (``select_context``: what surrounds a candidate, the anchor of "left of the
    blue square", the other squares of "the second square"); words: each region also attends over
    the words F_t (``select_words``); maps: M, the decoder's layers x heads, to read per word what
    its attention maps say of each region (``select_maps``; 0: off; :meth:`map_features`)."""

    def __init__(self, dim: int, hidden_channels: int, width: int = 64, heads: int = 4,
                 context: bool = False, words: bool = False, maps: int = 0):
        super().__init__()
        d_in = hidden_channels + dim + GEOMETRY + dim
        self.geometry_at = hidden_channels + dim  # where x's geometry starts (region_features)
        self.norm = nn.LayerNorm(d_in)
        self.embed = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(inplace=True), nn.Linear(width, width))
        self.context = bool(context)
        if self.context:
            self.cells = nn.Linear(dim, width)  # no LayerNorm: it makes a quiet cell as loud as an object's
            self.where = nn.Sequential(nn.Linear(RELATIVE, 32), nn.ReLU(inplace=True), nn.Linear(32, width))
            self.look = nn.MultiheadAttention(width, heads, batch_first=True)
        self.words = bool(words)
        if self.words:
            self.word_proj = nn.Linear(dim, width)
            self.read = nn.MultiheadAttention(width, heads, batch_first=True)
        self.maps = int(maps)
        if self.maps:  # per word and region, what the decoder's attention maps say of the region
            self.word_region = nn.Sequential(nn.Linear(MAP_FEATURES * self.maps + dim, width), nn.ReLU(inplace=True),
                                             nn.Linear(width, width))
            self.word_weight = nn.Linear(width, 1)  # which words count for a region
        self.attend = nn.MultiheadAttention(width, heads, batch_first=True)
        self.score = nn.Sequential(nn.ReLU(), nn.Linear(width, 1))

    def region_features(self, logits: torch.Tensor, labels: np.ndarray, n: int, hidden: torch.Tensor,
                        grid: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """One expression: logits (h, w), labels (h, w) with regions 1..n, hidden (h', S/4, S/4),
        grid (C, S/16, S/16), sentence (C,) -> x (n, D_in) (module docstring). Each region's share
        of a feature cell and its statistics are counted from the labels (bincount, scatter), not
        from n full-size masks: the predictor calls this once per expression with several regions."""
        h, w = logits.shape
        dev = logits.device
        lab = torch.from_numpy(labels).to(dev).long().flatten()  # (h*w,)
        pooled = []
        for feats in (hidden, grid):
            share = _region_shares(lab, n, h, w, feats.shape[-2:]).flatten(1)  # (n, h'w')
            pooled.append((share @ feats.flatten(1).float().T) / share.sum(1).clamp(min=1e-6)[:, None])
        lg = logits.float().flatten()
        xs, ys = _coordinates(h, w, dev)
        # each region's pixels per column and per row (two bincounts): its area, centre and box
        cols = torch.bincount(lab * w + xs, minlength=(n + 1) * w).view(n + 1, w)[1:].float()  # (n, w)
        rows = torch.bincount(lab * h + ys, minlength=(n + 1) * h).view(n + 1, h)[1:].float()  # (n, h)
        area = cols.sum(1)
        cx = cols @ torch.arange(w, device=dev, dtype=torch.float32) / area
        cy = rows @ torch.arange(h, device=dev, dtype=torch.float32) / area
        x0, x1 = (cols > 0).float().argmax(1), w - 1 - (cols > 0).flip(1).float().argmax(1)
        y0, y1 = (rows > 0).float().argmax(1), h - 1 - (rows > 0).flip(1).float().argmax(1)
        high = torch.full((n + 1,), -1e9, device=dev).scatter_reduce(0, lab, lg, "amax")[1:]
        mean = torch.bincount(lab, weights=lg, minlength=n + 1)[1:].float() / area
        geo = torch.stack([
            high, mean, high - lg.max(), torch.log(area / (h * w)), cx / w, cy / h,
            x0.float() / w, x1.float() / w, y0.float() / h, y1.float() / h, torch.full_like(area, float(n)),
        ], dim=1)
        return torch.cat([pooled[0], pooled[1], geo, sentence.float()[None].expand(n, -1)], dim=1)

    def map_features(self, labels: np.ndarray, n: int, maps: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """One expression: labels (h, w) with regions 1..n, maps (2, M, T, H', W') the decoder's
        LAV (softmax over cells) and VAL (softmax over words) maps of its M layer-heads, geometry
        (n, GEOMETRY) -> (n, T, MAP_FEATURES * M): per region and word, the word's LAV mass inside
        the region, its mean VAL there, where its LAV mass lies from the region's centre (dx, dy),
        and its LAV mass left of the region's box, right of it, above it and below it (what an
        ordinal counts, where a relation's anchor is)."""
        h, w = labels.shape
        lab = torch.from_numpy(labels).to(maps.device).long().flatten()
        share = _region_shares(lab, n, h, w, maps.shape[-2:]).flatten(1)  # (n, H'W')
        lav, val = maps[0].float().flatten(-2), maps[1].float().flatten(-2)  # (M, T, H'W')
        mass = torch.einsum("nc,mtc->ntm", share, lav)
        mean = torch.einsum("nc,mtc->ntm", share, val) / share.sum(1).clamp(min=1e-6)[:, None, None]
        xs, ys = _cell_centres(int(maps.shape[-2]), int(maps.shape[-1]), maps.device)
        total = lav.sum(-1).clamp(min=1e-6)  # (M, T): 0 for padded words
        cx, cy = (lav @ xs) / total, (lav @ ys) / total  # (M, T)
        dx = cx.T[None] - geometry[:, 4, None, None]  # (n, T, M)
        dy = cy.T[None] - geometry[:, 5, None, None]
        sides = torch.stack([xs[None] < geometry[:, 6, None], xs[None] > geometry[:, 7, None],
                             ys[None] < geometry[:, 8, None], ys[None] > geometry[:, 9, None]], 1).float()  # (n, 4, H'W')
        beside = torch.einsum("nsc,mtc->ntsm", sides, lav).flatten(2)  # (n, T, 4M)
        return torch.cat([mass, mean, dx, dy, beside], dim=-1)

    def scores(self, x: torch.Tensor, pad: torch.Tensor | None = None, grid: torch.Tensor | None = None,
               words: torch.Tensor | None = None, word_mask: torch.Tensor | None = None,
               mapped: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, n, D_in) the regions of B expressions (padded), pad (B, n) True at padding or None,
        grid (B, C, S/16, S/16) (with ``context``), words (B, T, C) and word_mask (B, T) (with
        ``words`` or ``maps``), mapped (B, n, T, MAP_FEATURES * M) (:meth:`map_features`, with ``maps``) -> scores
        (B, n); x (n, D_in) alone -> (n,). In float32 under any autocast (matrices of a few rows:
        bf16 only adds casts)."""
        if x.dim() == 2:
            return self.scores(x[None], None, grid, words, word_mask, None if mapped is None else mapped[None])[0]
        with torch.autocast(x.device.type, enabled=False):
            return self._scores(x.float(), pad, grid, words, word_mask, mapped)

    def _scores(self, x: torch.Tensor, pad: torch.Tensor | None, grid: torch.Tensor | None,
                words: torch.Tensor | None, word_mask: torch.Tensor | None, mapped: torch.Tensor | None) -> torch.Tensor:
        B, n, _ = x.shape
        e = self.embed(self.norm(x))  # (B, n, W)
        if self.context:
            if grid is None:
                raise ValueError("this selector attends over the decoder's grid (context): pass it")
            cells = self.cells(grid.float().flatten(2).transpose(1, 2))  # (B, h*w, W)
            rel = _relative(x[..., self.geometry_at:self.geometry_at + GEOMETRY], grid.shape[-2:])  # (B, n, h*w, RELATIVE)
            keys = (cells[:, None] + self.where(rel)).flatten(0, 1)  # (B*n, h*w, W)
            e = e + self.look(e.reshape(B * n, 1, -1), keys, keys, need_weights=False)[0].view(B, n, -1)
        if self.words:
            if words is None:
                raise ValueError("this selector attends over the words: pass them")
            w = self.word_proj(words.float())
            keep = word_mask.bool() if word_mask is not None else torch.ones(w.shape[:2], dtype=torch.bool, device=w.device)
            keep = keep | ~keep.any(1, keepdim=True)  # a sentence with no words: attend over the padding
            e = e + self.read(e, w, w, key_padding_mask=~keep, need_weights=False)[0]
        if self.maps:
            if mapped is None or words is None:
                raise ValueError("this selector reads the decoder's attention maps and the words: pass them")
            real = (word_mask.bool() if word_mask is not None else torch.ones(words.shape[:2], dtype=torch.bool,
                                                                             device=words.device)).float()
            z = self.word_region(torch.cat([mapped.float(), words.float()[:, None].expand(-1, n, -1, -1)], -1))
            weight = self.word_weight(z)[..., 0].masked_fill(real[:, None] == 0, -1e4).softmax(-1)  # (B, n, T)
            e = e + (weight[..., None] * z).sum(2)
        e = e + self.attend(e, e, e, key_padding_mask=pad, need_weights=False)[0]
        return self.score(e)[..., 0]

    def _score_one(self, b: int, x: torch.Tensor, labels: np.ndarray, n: int, grid: torch.Tensor,
                   words: torch.Tensor | None, word_mask: torch.Tensor | None, maps: torch.Tensor | None) -> torch.Tensor:
        """Expression b's regions x (n, D_in) -> scores (n,), with its grid, words and maps as they are asked for."""
        reads_words = self.words or self.maps
        mapped = None
        if self.maps:
            if maps is None:
                raise ValueError("this selector reads the decoder's attention maps: pass them")
            mapped = self.map_features(labels, n, maps[b], x[:, self.geometry_at:self.geometry_at + GEOMETRY])[None]
        return self.scores(x[None], None, grid[b:b + 1] if self.context else None,
                           words[b:b + 1] if reads_words else None,
                           word_mask[b:b + 1] if reads_words and word_mask is not None else None, mapped)[0]

    def forward(self, logits: torch.Tensor, hidden: torch.Tensor, grid: torch.Tensor, sentence: torch.Tensor,
                words: torch.Tensor | None = None, word_mask: torch.Tensor | None = None,
                maps: torch.Tensor | None = None) -> torch.Tensor:
        """logits (B, 1, h, w), hidden (B, h', S/4, S/4), grid (B, C, S/16, S/16), sentence (B, C),
        words (B, T, C) and word_mask (B, T) (read with ``words``) -> logits (B, 1, h, w) with only
        the best region of each expression left above 0."""
        out = logits
        for b, (n, labels) in enumerate(label_regions(logits)):
            if n < 2:
                continue
            with torch.no_grad():
                x = self.region_features(logits[b, 0], labels, n, hidden[b], grid[b], sentence[b])
                best = int(self._score_one(b, x, labels, n, grid, words, word_mask, maps).argmax()) + 1
            drop = torch.from_numpy((labels > 0) & (labels != best)).to(logits.device)
            if out is logits:
                out = logits.clone()
            out[b, 0] = torch.where(drop, out[b, 0].clamp(max=SUPPRESS), out[b, 0])
        return out

    def loss(self, logits: torch.Tensor, hidden: torch.Tensor, grid: torch.Tensor, sentence: torch.Tensor,
             mask: torch.Tensor, words: torch.Tensor | None = None, word_mask: torch.Tensor | None = None,
             maps: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """The training loss: mask (B, 1, S, S) the target, the rest as in :meth:`forward`. Returns
        (the mean cross-entropy over the expressions that count, their number); with none, a zero
        that still reaches every weight (so a step can run backward)."""
        target = loss_target(mask, logits.shape[-2:])
        losses = []
        for b, (n, labels) in enumerate(label_regions(logits.detach())):
            if n < 2:
                continue
            iou = region_ious(labels, n, target[b])
            if iou.max() <= 0:
                continue
            x = self.region_features(logits[b, 0].detach(), labels, n, hidden[b].detach(), grid[b].detach(),
                                     sentence[b].detach())
            score = self._score_one(b, x, labels, n, grid.detach(), None if words is None else words.detach(), word_mask,
                                    None if maps is None else maps.detach())
            losses.append(F.cross_entropy(score[None], iou.argmax()[None]))
        if not losses:
            return sum(p.sum() for p in self.parameters()) * 0.0, 0
        return torch.stack(losses).mean(), len(losses)
