"""Torch dataset over one split of a refer-layout dataset.

Training (``train=True``): one item per referred object (ref); each epoch draws one of
its expressions, deterministically from (seed, epoch, index): call ``set_epoch(e)``
before each epoch (DataLoader workers copy the dataset, so create the loader's iterator
after ``set_epoch``), or read it through :class:`EpochItems`, whose keys ``(epoch, index)``
carry the epoch to the workers' copies (the trainer does, so its workers may persist).
Evaluation (``train=False``): one item per expression.

Item::

    {"image": (3, S, S) float32, the letterboxed image scaled as the model expects
              (``normalization``: ImageNet mean/std by default, RGB/255 for Darknet),
     "words": (T,) long, "word_mask": (T,) bool, "mask": (1, S, S) float32 in {0, 1},
     "meta": {index, ref_id, sent_id, ann_id, image_id, expression, file_name,
              orig_hw: (H, W), letterbox: Letterbox.to_dict()}}

Unreadable images: nothing is checked up front. When an image fails to decode in
``__getitem__`` a warning is logged, the image is remembered as bad and counted in
``dataset.skipped`` (distinct bad images seen by this process; DataLoader workers keep
their own counts), and the next index whose image is readable is returned instead;
``meta["index"]`` always names the item actually returned, so an evaluator can notice
the substitution. Every other data error is a ``DatasetError``.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..text import Vocabulary
from .refer import DatasetError, ImageError, Refer, check_name, sentence_text
from .transforms import LETTERBOX_VERSION, Letterbox, Norm, letterbox, letterbox_mask, to_tensor

log = logging.getLogger(__name__)

DEFAULT_T_MAX = {"refcoco": 15, "refcoco+": 15, "refcocog": 20, "synref": 15, "synref_long": 20}


def default_t_max(name: str) -> int:
    """Words per expression: 15 for RefCOCO/RefCOCO+/synref, 20 for RefCOCOg/synref_long."""
    return DEFAULT_T_MAX.get(name, 15)


class _LRU:
    """A small least-recently-used cache."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.data: OrderedDict = OrderedDict()

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = make()
        if self.capacity > 0:
            self.data[key] = value
            while len(self.data) > self.capacity:
                self.data.popitem(last=False)
        return value


class RefDataset(Dataset):
    """One split of a :class:`Refer` dataset as letterboxed tensors (see module doc).

    Arguments:
        refer: the loaded dataset.
        split: e.g. ``train``, ``val``, ``testA``, ``testB``, ``test``.
        image_size: S, the canvas side.
        vocab: maps expressions to ids; may be None until :meth:`set_vocab` (e.g. to
            build the vocabulary from :meth:`sentences` first).
        t_max: T, words per expression (pad/truncate).
        train: one item per ref (True) or per expression (False).
        seed: seeds the per-epoch expression draw.
        normalization: (mean, std) of the input scaling, ``transforms.normalization(model.config)``;
            None: ImageNet mean/std.
        uint8: items carry the letterboxed image (3, S, S) and mask (1, S, S) as uint8, left to
            the consumer to normalise (``transforms.normalize_uint8``: the same numbers).
    """

    def __init__(self, refer: Refer, split: str, image_size: int, vocab: Vocabulary | None, t_max: int,
                 train: bool, seed: int = 0, cache_images: int = 16, cache_masks: int = 64,
                 normalization: Norm | None = None, uint8: bool = False):
        self.refer = refer
        self.name = refer.name
        self.split = split
        self.image_size = int(image_size)
        self.vocab = vocab
        self.t_max = int(t_max)
        self.train = bool(train)
        self.seed = int(seed)
        self.normalization = normalization
        self.uint8 = bool(uint8)
        self.epoch = 0
        self.skipped = 0
        self.bad_images: set[int] = set()
        self.ref_ids = refer.ref_ids(split)
        if self.train:
            self._items: list[tuple[int, int]] = [(rid, -1) for rid in self.ref_ids]
        else:
            self._items = [(rid, k) for rid in self.ref_ids for k in range(len(refer.refs[rid]["sentences"]))]
        self.memo_names: frozenset[str] | None = None  # see image_name()
        self.language, self.unmatched = "normal", 0  # evaluation probe: see set_language()
        self._images = _LRU(cache_images)  # image_id -> (canvas (S,S,3) uint8, Letterbox)
        self._masks = _LRU(cache_masks)  # ann_id -> (S,S) uint8

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        return len(self._items)

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the expression of every object (training only)."""
        self.epoch = int(epoch)

    def set_language(self, mode: str) -> None:
        """A probe of whether the model uses the expression (evaluation only); the ground
        truth stays the item's own object.

        - ``normal``: the item's own expression;
        - ``empty``: no words at all;
        - ``mismatched``: the expression of another object in the same image (the next
          ref of that image in ref-id order, the same sentence slot modulo its count);
          items whose image has no other referred object keep their own expression and
          are counted in ``self.unmatched``.
        """
        if mode not in ("normal", "empty", "mismatched"):
            raise ValueError(f"unknown language probe {mode!r}: use normal, empty or mismatched")
        self.language = mode
        self.unmatched = 0
        if mode == "mismatched":
            by_image: dict[int, list[int]] = {}
            for rid in self.ref_ids:
                by_image.setdefault(int(self.refer.refs[rid]["image_id"]), []).append(rid)
            self._other = {}
            for rids in by_image.values():
                rids = sorted(rids)
                for j, rid in enumerate(rids):
                    if len(rids) > 1:
                        self._other[rid] = rids[(j + 1) % len(rids)]
            self.unmatched = sum(1 for rid, _ in self._items if rid not in self._other)

    def _probe_text(self, index: int, text: str) -> str:
        if self.language == "empty":
            return ""
        if self.language == "mismatched":
            rid, k = self._items[index]
            other = self._other.get(rid)
            if other is not None:
                sents = self.refer.refs[other]["sentences"]
                return sentence_text(sents[max(k, 0) % len(sents)])
        return text

    def set_vocab(self, vocab: Vocabulary) -> None:
        self.vocab = vocab

    def sentences(self) -> Iterator[str]:
        """Every expression of this split (all of them, also in training mode)."""
        return self.refer.iter_expressions(self.split)

    def sentence(self, index: int) -> dict:
        """The sentence record item ``index`` uses now (training: this epoch's draw)."""
        rid, k = self._items[index]
        sents = self.refer.refs[rid]["sentences"]
        if k < 0:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            k = int(rng.integers(len(sents)))
        return sents[k]

    def ref(self, index: int) -> dict:
        return self.refer.refs[self._items[index][0]]

    def original_mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 ground truth of item ``index`` at the original image size."""
        return self.refer.ref_mask(self._items[index][0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):
            i = (index + step) % n
            image_id = int(self.ref(i)["image_id"])
            if image_id in self.bad_images:
                continue
            try:
                return self._item(i)
            except ImageError as e:
                self.bad_images.add(image_id)
                self.skipped += 1
                log.warning("skipping unreadable image (%d so far in %s/%s): %s", self.skipped, self.name, self.split, e)
        raise DatasetError(f"no readable image in split '{self.split}' of {self.refer.image_dir}")

    # ------------------------------------------------------------------ internals

    def image_name(self, image_id: int) -> str:
        """A name for the tensor this dataset makes of an image: its file (path, size, modification
        time), S and the input scaling. A feature memo keyed by image content records these names
        (``FeatureCache.index``); when ``memo_names`` (set by the trainer before each epoch) holds
        an item's name, the item skips decoding and letterboxing its image: ``image`` is None and
        ``meta["image_name"]`` names it. A changed file gets another name, so it is loaded again."""
        path = os.path.abspath(self.refer.image_path(image_id))
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        return f"{LETTERBOX_VERSION}|{self.image_size}|{self.normalization}|{path}|{stamp}"

    def _canvas(self, image_id: int) -> tuple[np.ndarray, Letterbox]:
        return self._images.get_or(image_id, lambda: letterbox(self.refer.load_image(image_id), self.image_size))

    def _mask(self, ann_id: int, lb: Letterbox) -> np.ndarray:
        return self._masks.get_or(ann_id, lambda: letterbox_mask(self.refer.ann_mask(ann_id), lb))

    def _item(self, index: int) -> dict[str, Any]:
        if self.vocab is None:
            raise RuntimeError("RefDataset has no vocabulary: pass vocab to build_dataset or call set_vocab()")
        ref = self.ref(index)
        sent = self.sentence(index)
        text = self._probe_text(index, sentence_text(sent))
        image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
        name = self.image_name(image_id) if self.memo_names is not None else None
        if name is not None and name in self.memo_names:  # the model's memo has this image: not loaded
            info = self.refer.image_info(image_id)
            canvas, lb = None, Letterbox.fit(int(info["height"]), int(info["width"]), self.image_size)
        else:
            canvas, lb = self._canvas(image_id)
        mask = self._mask(ann_id, lb)
        enc = self.vocab.encode(text, self.t_max)
        if canvas is None:
            image = None
            target = torch.from_numpy(mask) if self.uint8 else torch.from_numpy(mask).float()
        elif self.uint8:  # normalised by the consumer (transforms.normalize_uint8): a quarter of the bytes
            image, target = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1))), torch.from_numpy(mask)
        else:
            image, target = to_tensor(canvas, self.normalization), torch.from_numpy(mask).float()
        meta = {
            "index": index,
            "ref_id": int(ref["ref_id"]),
            "sent_id": int(sent.get("sent_id", -1)),
            "ann_id": ann_id,
            "image_id": image_id,
            "expression": text,
            "file_name": self.refer.image_info(image_id)["file_name"],
            "orig_hw": (lb.orig_h, lb.orig_w),
            "letterbox": lb.to_dict(),
        }
        if name is not None:
            meta["image_name"] = name
        return {"image": image, "words": enc.ids, "word_mask": enc.mask, "mask": target.unsqueeze(0), "meta": meta}


class EpochItems(Dataset):
    """A training :class:`RefDataset` read by ``(epoch, index)`` keys: the item ``index`` as
    it is in that epoch, also in a DataLoader's worker process that outlives an epoch (its copy
    of the dataset never sees a later ``set_epoch``); the keys come from
    ``mmi.engine.distributed.EpochSampler``."""

    def __init__(self, dataset: RefDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: image (B,3,S,S), words (B,T), word_mask (B,T),
    mask (B,1,S,S); ``meta`` a list of B dicts.

    Items that name their image (``meta["image_name"]``, a dataset with ``memo_names``) add
    ``image_names`` (B strings) and ``image_present`` (B bools); ``image`` then stacks only the
    present items' images, in order (None when no item carries one)."""
    if not items:
        raise ValueError("collate got an empty list of items")
    batch: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in items[0] if k not in ("meta", "image")}
    images = [it["image"] for it in items if it["image"] is not None]
    if all("image_name" in it["meta"] for it in items):
        batch["image_names"] = [it["meta"]["image_name"] for it in items]
        batch["image_present"] = [it["image"] is not None for it in items]
    elif len(images) < len(items):
        raise ValueError("collate got items without an image that do not name it (meta['image_name'])")
    batch["image"] = torch.stack(images) if images else None
    batch["meta"] = [it["meta"] for it in items]
    return batch


_REFER_CACHE: "OrderedDict[tuple, Refer]" = OrderedDict()


def load_refer(root: str, name: str, split_by: str | None = None, image_dir: str | None = None) -> Refer:
    """A :class:`Refer`, shared between splits while its files are unchanged (2 kept)."""
    split_by = check_name(name, split_by)
    root = os.path.abspath(os.fspath(root))
    stamps = []
    for f in ("instances.json", f"refs({split_by}).p"):
        try:
            st = os.stat(os.path.join(root, name, f))
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    key = (root, name, split_by, os.path.abspath(image_dir) if image_dir else None, tuple(stamps))
    if key in _REFER_CACHE:
        _REFER_CACHE.move_to_end(key)
        return _REFER_CACHE[key]
    refer = Refer(root, name, split_by=split_by, image_dir=image_dir)
    _REFER_CACHE[key] = refer
    while len(_REFER_CACHE) > 2:
        _REFER_CACHE.popitem(last=False)
    return refer


def build_dataset(name: str, root: str, split: str, image_size: int, vocab: Vocabulary | None, t_max: int | None,
                  train: bool, image_dir: str | None = None, split_by: str | None = None, seed: int = 0,
                  normalization: Norm | None = None, uint8: bool = False) -> RefDataset:
    """One split of ``name`` under ``root`` as a :class:`RefDataset`.

    name: refcoco, refcoco+, refcocog, synref, synref_long. split_by defaults to unc
    (refcocog: umd); image_dir to <root>/images/train2014 (COCO names) or
    <root>/images/<name> (:func:`refer.default_image_dir`). t_max None: 15, or 20 for refcocog
    and synref_long. normalization: the model's (mean, std), ``transforms.normalization(config)``.
    uint8: items carry the image as (3, S, S) uint8 and the mask as (1, S, S) uint8 (the
    consumer normalises: ``transforms.normalize_uint8``).
    Raises DatasetError naming the missing path / unknown split.
    """
    refer = load_refer(root, name, split_by, image_dir)
    return RefDataset(refer, split, image_size, vocab, default_t_max(name) if t_max is None else t_max, train, seed=seed,
                      normalization=normalization, uint8=uint8)
