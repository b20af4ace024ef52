"""Letterbox to S x S and back, and tensor conversion.

``letterbox`` scales an image by min(S/w, S/h) and centres it on a canvas filled with
the ImageNet mean colour (124, 116, 104), which normalises to about zero.
:class:`Letterbox` records the placement (JSON-safe) so that a prediction on the canvas,
at any square resolution, maps back to the original image with :meth:`Letterbox.inverse`.

Masks (``letterbox_mask``) are resized as a float map, INTER_AREA when shrinking and
bilinear when enlarging, then thresholded at 0.5; padding is 0. The same threshold after
``inverse`` gives back the original mask except near its edges: for a blob of a few
thousand pixels at least 99% of all pixels agree (tests/test_transforms.py measures it).

Training augmentation: none. A horizontal flip would swap "left" and "right", colour
jitter would falsify colour words, and random crops can cut off the referred object or
change which one is "leftmost"; the letterbox itself is the whole training transform.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_COLOR = (124, 116, 104)  # ImageNet mean x 255, rounded
LETTERBOX_VERSION = "letterbox/1"  # names what letterbox() makes of an image; change it when that changes


def _fit(h: int, w: int, size: int) -> tuple[float, int, int, int, int]:
    """scale, new_h, new_w, pad_y, pad_x of an h x w image on a size x size canvas."""
    if h < 1 or w < 1:
        raise ValueError(f"cannot letterbox an empty image of size {h}x{w}")
    scale = min(size / w, size / h)
    new_w = min(size, max(1, int(round(w * scale))))
    new_h = min(size, max(1, int(round(h * scale))))
    return scale, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


@dataclass(frozen=True)
class Letterbox:
    """Placement of an orig_h x orig_w image on a size x size canvas.

    The image occupies rows pad_y : pad_y + new_h and columns pad_x : pad_x + new_w.
    """

    scale: float
    pad_x: int
    pad_y: int
    orig_h: int
    orig_w: int
    size: int

    @classmethod
    def fit(cls, h: int, w: int, size: int) -> "Letterbox":
        scale, _, _, pad_y, pad_x = _fit(h, w, size)
        return cls(scale=scale, pad_x=pad_x, pad_y=pad_y, orig_h=h, orig_w=w, size=size)

    @property
    def new_h(self) -> int:
        return _fit(self.orig_h, self.orig_w, self.size)[1]

    @property
    def new_w(self) -> int:
        return _fit(self.orig_h, self.orig_w, self.size)[2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Letterbox":
        try:
            return cls(scale=float(d["scale"]), pad_x=int(d["pad_x"]), pad_y=int(d["pad_y"]),
                       orig_h=int(d["orig_h"]), orig_w=int(d["orig_w"]), size=int(d["size"]))
        except KeyError as e:
            raise ValueError(f"letterbox dict lacks key {e}") from None

    def inverse(self, m: np.ndarray | torch.Tensor) -> np.ndarray:
        """Map (h, w) values over the S x S canvas (h = w, any resolution) back to the
        original image: (H, W) float32, H = orig_h, W = orig_w.

        Bilinear resize to S, crop the padding, bilinear resize to H x W. Leading axes
        of size 1 (e.g. (1, 1, h, w)) are accepted.
        """
        if isinstance(m, torch.Tensor):
            m = m.detach().float().cpu().numpy()
        m = np.asarray(m, dtype=np.float32)
        while m.ndim > 2 and m.shape[0] == 1:
            m = m[0]
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"Letterbox.inverse expects a square (h, w) map, got shape {tuple(m.shape)}")
        s = self.size
        if m.shape[0] != s:
            m = cv2.resize(m, (s, s), interpolation=cv2.INTER_LINEAR)
        crop = np.ascontiguousarray(m[self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w])
        if crop.shape != (self.orig_h, self.orig_w):
            crop = cv2.resize(crop, (self.orig_w, self.orig_h), interpolation=cv2.INTER_LINEAR)
        return crop.astype(np.float32, copy=False)


def _resize(a: np.ndarray, new_h: int, new_w: int, shrink: bool) -> np.ndarray:
    """cv2.resize that keeps a trailing channel axis even for 1-channel results."""
    out = cv2.resize(a, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if a.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 image -> ((S, S, 3) uint8 canvas, Letterbox), S = size."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"letterbox expects an (H, W, 3) image, got shape {tuple(image.shape)}")
    h, w = image.shape[:2]
    lb = Letterbox.fit(h, w, size)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = PAD_COLOR
    resized = image if (lb.new_h, lb.new_w) == (h, w) else _resize(image, lb.new_h, lb.new_w, lb.scale < 1)
    canvas[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = resized
    return canvas, lb


def letterbox_mask(mask: np.ndarray, lb: Letterbox) -> np.ndarray:
    """(H, W) mask -> (S, S) uint8 in {0, 1} placed like the image.

    Area average when shrinking (bilinear when enlarging) of the float mask, then >= 0.5.
    """
    if mask.shape != (lb.orig_h, lb.orig_w):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the letterboxed image {(lb.orig_h, lb.orig_w)}")
    out = np.zeros((lb.size, lb.size), dtype=np.uint8)
    m = (mask > 0).astype(np.float32)
    if (lb.new_h, lb.new_w) != m.shape:
        m = _resize(m, lb.new_h, lb.new_w, lb.scale < 1)
    out[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = m >= 0.5
    return out


UNIT_MEAN = (0.0, 0.0, 0.0)
UNIT_STD = (1.0, 1.0, 1.0)
NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "unit": (UNIT_MEAN, UNIT_STD)}

Norm = tuple[tuple[float, float, float], tuple[float, float, float]]


def normalization(config: dict | None) -> Norm:
    """(mean, std) of the model's input scaling, from its ``config["input_norm"]``:
    ``"imagenet"`` (ImageNet mean/std: Swin, MobileNetV2) or ``"unit"`` (RGB/255 with no
    mean or std: Darknet weights). A config without the key (a checkpoint written before
    it existed) or ``None`` means ImageNet. Training, evaluation and the predictor all
    read it here."""
    name = (config or {}).get("input_norm", "imagenet")
    if name not in NORMS:
        raise ValueError(f"unknown input_norm {name!r} in the model config: use one of {sorted(NORMS)}")
    return NORMS[name]


@functools.lru_cache(maxsize=8)
def _shift_scale(norm: Norm) -> tuple[np.ndarray, np.ndarray]:
    """(mean x 255, 1 / (std x 255)) of ``norm``, float32 (3,): RGB 0-255 -> normalised."""
    mean, std = norm
    return np.array(mean, np.float32) * 255, 1.0 / (np.array(std, np.float32) * 255)


def _constants(norm: Norm | None) -> tuple[np.ndarray, np.ndarray]:
    return _shift_scale(tuple(map(tuple, norm)) if norm else (IMAGENET_MEAN, IMAGENET_STD))


@functools.lru_cache(maxsize=8)
def _device_constants(norm: Norm | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_constants` as (1, 3, 1, 1) tensors on ``device``, copied there once (not at every step)."""
    return tuple(torch.from_numpy(c).view(1, 3, 1, 1).to(device) for c in _constants(norm))


def to_tensor(canvas: np.ndarray, norm: Norm | None = None) -> torch.Tensor:
    """(S, S, 3) uint8 RGB -> (3, S, S) float32, (RGB/255 - mean) / std with ``norm`` =
    (mean, std) (default ImageNet; :func:`normalization` gives a model's).

    Done in numpy on a channel-first copy: ~30x faster than the same in torch on a
    non-contiguous permuted view."""
    shift, scale = _constants(norm)
    x = canvas.transpose(2, 0, 1).astype(np.float32)
    x -= shift.reshape(3, 1, 1)
    x *= scale.reshape(3, 1, 1)
    return torch.from_numpy(x)


def normalize_uint8(x: torch.Tensor, norm: Norm | None = None) -> torch.Tensor:
    """(B, 3, S, S) uint8 RGB on any device -> float32 normalised as :func:`to_tensor` does it,
    the same float32 operations in the same order, so the same numbers (``data.uint8_transfer``)."""
    shift, scale = _device_constants(tuple(map(tuple, norm)) if norm else None, x.device)
    y = x.float()
    y -= shift
    y *= scale
    return y


def to_image(x: torch.Tensor, norm: Norm | None = None) -> np.ndarray:
    """Inverse of :func:`to_tensor`: (3, S, S) normalised with ``norm`` -> (S, S, 3) uint8 RGB."""
    mean, std = norm or (IMAGENET_MEAN, IMAGENET_STD)
    x = x.detach().cpu().float() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
