"""Image once, many expressions: what ``app.py`` and ``bench/`` call.

:class:`Predictor` letterboxes an image to the model's S x S input, runs the language-free
part (backbone and vision encoder, ``model.encode_image``) once, and decodes every
expression of a request together as one batch against those features (batch 1,
broadcast). The features of the last few images are kept in a small LRU cache keyed by
a hash of the image's content (pixels, shape and dtype), so a second request on the same
image only runs the decoder. The cache is bounded in count (``cache_size``) and in bytes
(``cache_bytes``, default 256 MB); the least recently used images are dropped first. A lock around the model and the cache makes one predictor
safe to share between threads (a web server's workers).

Per expression it returns a :class:`Prediction`:

- ``mask``: (H, W) bool at the original size: the probability map (logits (S/4, S/4), S/2 with a refiner ->
  bilinear to S x S -> sigmoid -> :meth:`Letterbox.inverse`) ``> threshold``, exactly as
  evaluation does; with ``regions="peak"`` (the predictor's, or the call's) only its region
  holding the highest probability (:mod:`mmi.regions`, as ``--eval-only --regions peak``).
- ``prob``: (H, W) float32 probabilities at the original size. Kept when H x W is at most
  ``FULL_RES_PIXELS`` (16.7 MP), recomputed on access for larger images (an 8000 x 8000
  float map is 256 MB).
- ``confidence``: the mean foreground probability over the pixels of the predicted mask,
  measured on the model's canvas (S x S, padding excluded); 0.0 for an empty mask. It is
  size independent and cheap; 1.0 means every masked pixel was predicted with certainty.
- ``area``: pixels in ``mask``; ``regions``: connected components of the thresholded map
  before any is dropped (8-connected; on the original size up to ``FULL_RES_PIXELS``, on the
  canvas crop above), a hint of ambiguity when more than 1; ``region_mode``: ``all`` or ``peak``.
- ``tokens``, ``unknown``, ``dropped``: the words as the model saw them (from
  :meth:`Vocabulary.encode`): unknown words mapped to ``<unk>``, words cut off at T.
- ``attention``: per decoder layer ``{"lav": (heads, T, H, W), "val": (heads, T, H, W)}``,
  raw weights on the stride-16 grid for the real words only (``val`` absent for generic_lav/pixel_query
  attention). :meth:`Prediction.word_maps` averages the heads and maps them to the
  original image, or to a capped display size for large images.

Images may be PIL images or numpy arrays: greyscale becomes RGB, an alpha channel is
composited on white, 16-bit data is scaled to 8 bits (value / 257), float data in [0, 1]
is scaled by 255. Any size from 1 x 1 up to ``MAX_PIXELS`` works: the model input is
always S x S.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .data.transforms import Letterbox, letterbox, normalization, to_tensor
from .engine.precision import autocast, resolve_amp
from .regions import check_mode, keep_regions, split_regions
from .text import Vocabulary

FULL_RES_PIXELS = 4096 * 4096
MAX_PIXELS = 120_000_000
MAX_EXPRESSIONS = 32
DEFAULT_CACHE_BYTES = 256 * 2**20  # the feature cache's memory bound (alongside its count)
DISPLAY_SIDE = 1024


# ----------------------------------------------------------------------------- images

def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer or float data of any range -> uint8 (see the module docstring)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        top = float(np.nanmax(a)) if a.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0
        return np.clip(np.nan_to_num(a.astype(np.float32) * scale), 0, 255).round().astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"unsupported image data type {a.dtype}")
    top = int(a.max()) if a.size else 0
    if a.dtype == np.uint16 or 255 < top <= 65535:
        return ((a.astype(np.uint32) + 128) // 257).clip(0, 255).astype(np.uint8)
    if top <= 255:
        return a.clip(0, 255).astype(np.uint8)
    return (a.astype(np.float64) * (255.0 / top)).round().astype(np.uint8)


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        return np.asarray(_composite_on_white(im))
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("="))
        return np.repeat(_scale_to_uint8(a)[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def to_rgb(image: Any) -> np.ndarray:
    """A PIL image or numpy array -> (H, W, 3) uint8 RGB (contiguous).

    ValueError names what is wrong: no image, an empty or unsupported array, too many pixels.
    """
    if image is None:
        raise ValueError("no image given")
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"image of {image.width}x{image.height} pixels is too large (limit {MAX_PIXELS:,} pixels)")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image has no pixels ({image.width}x{image.height})")
        out = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
            raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {tuple(image.shape)}")
        if a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"image has no pixels (shape {tuple(image.shape)})")
        if a.shape[0] * a.shape[1] > MAX_PIXELS:
            raise ValueError(f"image of {a.shape[1]}x{a.shape[0]} pixels is too large (limit {MAX_PIXELS:,} pixels)")
        a = _scale_to_uint8(a)
        if a.ndim == 2:
            out = np.repeat(a[:, :, None], 3, axis=2)
        elif a.shape[2] == 3:
            out = a
        else:  # grey + alpha or RGBA
            mode = "LA" if a.shape[2] == 2 else "RGBA"
            out = np.asarray(_composite_on_white(Image.fromarray(np.ascontiguousarray(a), mode)))
    else:
        raise ValueError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    return np.ascontiguousarray(out)


def load_image(path: str) -> np.ndarray:
    """Read an image file (EXIF orientation applied) -> (H, W, 3) uint8 RGB.

    ValueError naming the file when it is missing or not an image PIL can read."""
    name = os.path.basename(os.fspath(path))
    if not os.path.isfile(path):
        raise ValueError(f"image file not found: {name}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{name}: {im.width}x{im.height} pixels is too large (limit {MAX_PIXELS:,} pixels)")
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return to_rgb(im)
    except Image.DecompressionBombError as e:  # PIL refuses before decoding: the header's size is too large
        raise ValueError(f"{name} is too large: {_bomb_size(e)} (limit {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image that can be read (expected PNG, JPEG, WebP, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{name} could not be decoded as an image (truncated or corrupt: {e})") from None


def _bomb_size(e: Exception) -> str:
    """The pixel count in PIL's DecompressionBombError message ("Image size (N pixels) ...")."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(m.group(1)):,} pixels" if m else "too many pixels"


def feature_bytes(obj: Any) -> int:
    """Bytes held by the tensors / arrays in a (nested) dict, list or tuple of features."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(feature_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(feature_bytes(v) for v in obj)
    return 0


def image_key(rgb: np.ndarray) -> str:
    """Content hash of an image array: pixels, shape and dtype."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{rgb.shape}|{rgb.dtype}".encode())
    h.update(memoryview(np.ascontiguousarray(rgb)).cast("B"))
    return h.hexdigest()


def display_size(h: int, w: int, max_side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(h, w) scaled down so the longer side is at most ``max_side`` (never enlarged)."""
    s = min(1.0, max_side / max(h, w))
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def canvas_to_image(maps: np.ndarray, lb: Letterbox, out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(N, h, w) maps over the S x S canvas (h = w) -> (N, H', W') over the image: bilinear
    to S, padding cropped, bilinear to ``out_hw`` (default the original (H, W))."""
    maps = np.asarray(maps, dtype=np.float32)
    n, s = maps.shape[0], lb.size
    out_h, out_w = out_hw or (lb.orig_h, lb.orig_w)
    parts = []
    for start in range(0, n, 256):  # cv2 resizes up to 512 channels at once
        chunk = maps[start : start + 256].transpose(1, 2, 0)
        if chunk.shape[0] != s:
            chunk = cv2.resize(chunk, (s, s), interpolation=cv2.INTER_LINEAR).reshape(s, s, -1)
        crop = np.ascontiguousarray(chunk[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w])
        if crop.shape[:2] != (out_h, out_w):
            crop = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR).reshape(out_h, out_w, -1)
        parts.append(crop)
    if len(parts) == 1 and parts[0].shape[2] == 1:  # one map: no copy (an 8000 x 8000 map is 256 MB)
        return parts[0].reshape(1, out_h, out_w)
    return np.ascontiguousarray(np.concatenate(parts, axis=2).transpose(2, 0, 1))


def rle_encode(mask: np.ndarray) -> dict:
    """COCO RLE of an (H, W) binary mask with ``counts`` as a str (the evaluation's format)."""
    from .engine.evaluate import rle_encode as _encode

    return _encode(mask)


# ----------------------------------------------------------------------------- results

@dataclass
class Prediction:
    """One expression's result on one image (see the module docstring for each field).

    mask (H, W) bool; canvas_prob (S, S) float32; attention: per layer ``lav`` / ``val``
    (heads, T, H, W) on the stride-16 grid, T = len(tokens).
    """

    expression: str
    mask: np.ndarray
    canvas_prob: np.ndarray
    letterbox: Letterbox
    threshold: float
    tokens: list[str]
    unknown: list[bool]
    dropped: list[str]
    confidence: float
    area: int
    regions: int
    attention: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)
    region_mode: str = "all"
    _prob: np.ndarray | None = field(default=None, repr=False)

    @property
    def prob(self) -> np.ndarray:
        """(H, W) float32 foreground probabilities at the original size."""
        if self._prob is not None:
            return self._prob
        return canvas_to_image(self.canvas_prob[None], self.letterbox)[0]

    @property
    def truncated(self) -> bool:
        return bool(self.dropped)

    @property
    def size(self) -> tuple[int, int]:
        return self.letterbox.orig_h, self.letterbox.orig_w

    def token_text(self) -> str:
        """The tokens as the model saw them: ``?word`` for unknown words and the dropped
        tail as ``[cut: ...]``."""
        words = [f"?{t}" if u else t for t, u in zip(self.tokens, self.unknown)]
        text = " ".join(words)
        if self.dropped:
            tail = " ".join(self.dropped[:5]) + (" ..." if len(self.dropped) > 5 else "")
            text += f" [cut {len(self.dropped)} word(s): {tail}]"
        return text

    def word_maps(self, layer: int = -1, kind: str = "lav", size: tuple[int, int] | None = None) -> np.ndarray:
        """(T, h, w) float32 maps of decoder ``layer`` (heads averaged) over the image.

        kind ``lav``: where each word looks (sums to 1 over pixels); ``val``: how much each
        pixel reads each word (sums to 1 over words). size: (h, w), default the original
        (H, W); pass :func:`display_size` for large images.
        """
        if not self.attention:
            raise ValueError("this prediction was made without attention maps")
        att = self.attention[layer]
        if kind not in att:
            raise ValueError(f"no {kind!r} maps in this model's attention (has {sorted(att)})")
        grid = att[kind].float().mean(0).numpy()  # (T, H, W)
        return canvas_to_image(grid, self.letterbox, size)

    def to_json(self, attention: bool = True, decimals: int = 4) -> dict:
        """JSON-safe dict: the mask as COCO RLE and, when asked, per layer and word the
        head-averaged LAV / VAL grids (stride-16, over the S x S canvas; ``letterbox`` maps
        them to the image)."""
        out = {
            "expression": self.expression, "tokens": list(self.tokens), "unknown": list(self.unknown),
            "dropped": list(self.dropped), "truncated": self.truncated, "token_text": self.token_text(),
            "confidence": round(float(self.confidence), decimals), "area": int(self.area),
            "area_fraction": round(self.area / max(1, self.mask.size), 6), "regions": int(self.regions),
            "region_mode": self.region_mode,
            "threshold": float(self.threshold), "size": [int(v) for v in self.size],
            "mask_rle": rle_encode(self.mask), "letterbox": self.letterbox.to_dict(),
        }
        if attention:
            layers = []
            for i, att in enumerate(self.attention):
                grids = {k: np.round(v.float().mean(0).numpy(), decimals) for k, v in att.items()}
                words = [{"word": w, **{k: g[j].tolist() for k, g in grids.items()}} for j, w in enumerate(self.tokens)]
                layers.append({"layer": i + 1, "grid": list(next(iter(att.values())).shape[-2:]), "words": words})
            out["attention"] = layers
        return out


# ----------------------------------------------------------------------------- predictor

class Predictor:
    """Runs one MMI model on images and lists of expressions (thread safe).

    Arguments:
        model: an MMI network (``encode_image`` / ``decode``). vocab: its Vocabulary.
        device: ``cpu``, ``cuda`` or a torch.device. cache_size: images whose features are kept.
        meta: the checkpoint's meta dict (shown by the app).
        channels_last: run the convolutions in channels-last memory format (same results;
            about 2x faster for the mask head on a CPU, which runs once per expression).
        regions: ``all`` (the method's masks) or ``peak`` (each mask's region holding the
            highest probability only: :mod:`mmi.regions`); a call's ``regions`` overrides it.
        amp: ``off`` (float32), ``bf16`` (autocast) or ``auto`` (bf16 where the device computes
            it natively: a CPU with AVX-512 BF16 or AMX, a CUDA GPU with bf16; else off:
            :mod:`mmi.engine.precision`). ``self.amp`` is the one in use.
    """

    def __init__(self, model: torch.nn.Module, vocab: Vocabulary, device: str | torch.device = "cpu",
                 cache_size: int = 8, meta: dict | None = None, channels_last: bool = True,
                 cache_bytes: int | None = DEFAULT_CACHE_BYTES, regions: str = "all", amp: str = "off"):
        self.regions = check_mode(regions)
        self.device = torch.device(device)
        if amp not in ("off", "bf16", "auto"):
            raise ValueError(f"amp must be one of off, bf16, auto; got {amp!r}")
        self.amp = resolve_amp(amp, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.vocab, self.meta = vocab, dict(meta or {})
        self.image_size, self.t_max = int(model.image_size), int(model.t_max)
        self.cache_size = int(cache_size)
        self.cache_bytes = None if cache_bytes is None else int(cache_bytes)  # None: bounded by count only
        self._cache_sizes: dict[str, int] = {}
        self._cached_bytes = 0  # sum of _cache_sizes, kept as entries come and go
        self.norm = normalization(self.model.config)
        self._cache: OrderedDict[str, tuple[dict, Letterbox]] = OrderedDict()
        self._lock = threading.RLock()
        self.encode_calls = 0  # images encoded (cache misses), for tests and the benchmark
        # each expression tokenised once for its check and its decoding, and again only when it
        # has left the last 256 asked for (an Encoded is read, never changed)
        self._encode = functools.lru_cache(maxsize=256)(lambda expr: self.vocab.encode(expr, self.t_max))

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", cache_size: int = 8,
                        cache_bytes: int | None = DEFAULT_CACHE_BYTES, regions: str = "all",
                        amp: str = "off") -> "Predictor":
        """Load an inference (or training) checkpoint with ``weights_only=True``."""
        from .engine.checkpoint import load_inference

        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is available")
        model, vocab, meta = load_inference(path, map_location="cpu")
        return cls(model, vocab, device, cache_size, meta, cache_bytes=cache_bytes, regions=regions, amp=amp)

    @property
    def num_layers(self) -> int:
        """Decoder layers (each has its own LAV / VAL maps)."""
        return len(self.model.decoder.layers)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cache_sizes.clear()
            self._cached_bytes = 0

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the cached image features now."""
        with self._lock:
            return self._cached_bytes

    def check_expressions(self, expressions: str | Sequence[str]) -> list[str]:
        """The expressions of a request, validated: a str is split into lines (blank lines
        dropped); ValueError when none is left, one is blank, one has no readable word or
        there are more than ``MAX_EXPRESSIONS``."""
        if isinstance(expressions, str):
            exprs = [line.strip() for line in expressions.splitlines() if line.strip()]
            if not exprs:
                raise ValueError("no expression given: type at least one expression (one per line)")
        else:
            exprs = [str(e).strip() if e is not None else "" for e in expressions]
            if not exprs:
                raise ValueError("no expression given: pass at least one expression")
            for i, e in enumerate(exprs, 1):
                if not e:
                    raise ValueError(f"expression {i} is empty")
        if len(exprs) > MAX_EXPRESSIONS:
            raise ValueError(f"{len(exprs)} expressions in one request; the limit is {MAX_EXPRESSIONS}")
        for i, e in enumerate(exprs, 1):
            if not self._encode(e).tokens:
                raise ValueError(f"expression {i} ({e[:40]!r}) has no words (only punctuation or symbols)")
        return exprs

    def features(self, rgb: np.ndarray) -> tuple[dict, Letterbox]:
        """Image features for an (H, W, 3) uint8 image, from the cache when present."""
        key = image_key(rgb)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            canvas, lb = letterbox(rgb, self.image_size)
            x = to_tensor(canvas, self.norm)[None].to(self.device).contiguous(memory_format=self.memory_format)
            with torch.inference_mode(), autocast(self.device, self.amp):
                feats = self.model.encode_image(x)
            self.encode_calls += 1
            size = feature_bytes(feats)
            if self.cache_size > 0 and (self.cache_bytes is None or size <= self.cache_bytes):
                self._cache[key] = (feats, lb)
                self._cache_sizes[key] = size
                self._cached_bytes += size
            # bounded in count and in bytes: the least recently used images go first
            while self._cache and (len(self._cache) > self.cache_size or
                                   (self.cache_bytes is not None and self._cached_bytes > self.cache_bytes)):
                old, _ = self._cache.popitem(last=False)
                self._cached_bytes -= self._cache_sizes.pop(old, 0)
            return feats, lb

    def predict(self, image: Any, expressions: str | Sequence[str], threshold: float = 0.5,
                attention: bool = True, regions: str | None = None) -> list[Prediction]:
        """Segment every expression on ``image`` (PIL, numpy or a file path).

        ``expressions``: a list, or one str with one expression per line. Returns one
        :class:`Prediction` per expression, in order. ValueError on bad input.
        """
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        regions = self.regions if regions is None else check_mode(regions)
        exprs = self.check_expressions(expressions)
        rgb = load_image(image) if isinstance(image, (str, os.PathLike)) else to_rgb(image)
        encoded = [self._encode(e) for e in exprs]
        words, word_mask = torch.stack([e.ids for e in encoded]), torch.stack([e.mask for e in encoded])
        S = self.image_size
        with self._lock:
            feats, lb = self.features(rgb)
            with torch.inference_mode(), autocast(self.device, self.amp):
                out = self.model.decode(feats, words.to(self.device), word_mask.to(self.device),
                                        return_attention=attention)
                logits = F.interpolate(out["logits"].float(), size=(S, S), mode="bilinear", align_corners=False)
                probs = torch.sigmoid(logits)[:, 0].cpu().numpy()
                maps = [{k: v.float().cpu() for k, v in m.items()} for m in out.get("attention", [])]
        return [self._result(exprs[i], probs[i], lb, float(threshold), encoded[i],
                             [{k: v[i, :, : len(encoded[i].tokens)].clone() for k, v in m.items()} for m in maps],
                             regions)
                for i in range(len(exprs))]

    def _result(self, expr: str, canvas_prob: np.ndarray, lb: Letterbox, threshold: float, enc, attention,
                regions: str = "all") -> Prediction:
        crop = canvas_prob[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
        fg = crop > threshold
        prob = canvas_to_image(canvas_prob[None], lb)[0]
        mask = prob > threshold
        full = mask.size <= FULL_RES_PIXELS
        if full:
            mask, found = split_regions(mask, prob, regions)
            fg = keep_regions(fg, crop, regions)
        else:  # regions counted on the canvas crop (one labelling for the count and the kept region)
            fg, found = split_regions(fg, crop, regions)
            mask = keep_regions(mask, prob, regions)
        confidence = float(crop[fg].mean()) if fg.any() else 0.0
        return Prediction(expression=expr, mask=mask, canvas_prob=canvas_prob, letterbox=lb, threshold=threshold,
                          tokens=list(enc.tokens), unknown=list(enc.unknown), dropped=list(enc.dropped),
                          confidence=confidence, area=int(np.count_nonzero(mask)), regions=found,
                          attention=attention, region_mode=regions, _prob=prob if full else None)

    # ------------------------------------------------------------------ additive: the app's re-rendering

    def rethreshold(self, pred: Prediction, threshold: float) -> Prediction:
        """``pred`` at another threshold, from its kept probabilities (no model call)."""
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if float(threshold) == pred.threshold:
            return pred
        enc = _Enc(pred.tokens, pred.unknown, pred.dropped)
        return self._result(pred.expression, pred.canvas_prob, pred.letterbox, float(threshold), enc, pred.attention,
                            pred.region_mode)

    def word_ablation(self, image: Any, expressions: str | Sequence[str], max_batch: int = 64) -> list[dict]:
        """Which words mattered: per expression, the probability map of the expression and
        of each variant with one word removed, decoded together (batches of at most
        ``max_batch`` rows) on the cached image features, without attention.

        Returns per expression ``{"expression", "tokens", "full": (h, w) float16, "variants":
        (T, h, w) float16}`` over the letterboxed image region of the canvas (padding cut);
        an expression of one word has no variant (``(0, h, w)``). Compare the masks with
        :func:`ablation_ious`."""
        exprs = self.check_expressions(expressions)
        rgb = load_image(image) if isinstance(image, (str, os.PathLike)) else to_rgb(image)
        encoded = [self._encode(e) for e in exprs]
        rows: list[list[int]] = []
        spans = []
        for enc in encoded:
            ids = [int(v) for v, m in zip(enc.ids.tolist(), enc.mask.tolist()) if m]
            start = len(rows)
            rows.append(ids)
            if len(ids) > 1:
                rows.extend(ids[:j] + ids[j + 1 :] for j in range(len(ids)))
            spans.append((start, len(rows)))
        T = self.t_max
        words = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for r, ids in enumerate(rows):
            words[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[r, : len(ids)] = True
        S = self.image_size
        outs = []
        with self._lock:
            feats, lb = self.features(rgb)
            with torch.inference_mode(), autocast(self.device, self.amp):
                for a in range(0, len(rows), max_batch):
                    out = self.model.decode(feats, words[a : a + max_batch].to(self.device),
                                            mask[a : a + max_batch].to(self.device), return_attention=False)
                    logits = F.interpolate(out["logits"].float(), size=(S, S), mode="bilinear", align_corners=False)
                    prob = torch.sigmoid(logits)[:, 0, lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
                    outs.append(prob.cpu().to(torch.float16).numpy())
        probs = np.concatenate(outs)
        return [{"expression": e, "tokens": list(enc.tokens), "full": probs[a], "variants": probs[a + 1 : b]}
                for e, enc, (a, b) in zip(exprs, encoded, spans)]


@dataclass
class _Enc:
    tokens: list
    unknown: list
    dropped: list


def ablation_ious(item: dict, threshold: float = 0.5) -> list[float]:
    """IoU between an expression's mask and the mask with each word removed (one per token;
    1.0 when both are empty); [] for a one-word expression."""
    full = item["full"] > threshold
    out = []
    for v in item["variants"]:
        m = v > threshold
        union = np.count_nonzero(full | m)
        out.append(float(np.count_nonzero(full & m) / union) if union else 1.0)
    return out
