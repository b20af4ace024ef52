"""Loader for the refer-toolkit layout shared by RefCOCO, RefCOCO+, RefCOCOg and the
synthetic sets::

    <root>/<name>/instances.json        COCO-style images, annotations, categories
    <root>/<name>/refs(<split_by>).p    pickled list of refs (read with pickle_safe)
    <image_dir>/<file_name>             image_dir defaults to <root>/images/train2014 for
                                        the COCO names, <root>/images/<name> otherwise

For the COCO names the refer toolkit's own tree, ``<root>/images/mscoco/images/train2014``,
is found too when ``<root>/images/train2014`` is absent: ``--data-root refer/data`` works
without ``--image-dir``.

A ref is ``{ref_id, ann_id, image_id, split, category_id, sentences: [{sent_id, sent,
raw, tokens}]}``. Masks come from the annotation's ``segmentation``: polygons (several
parts are merged into one mask), compressed RLE (``counts`` a string) or uncompressed
RLE (``counts`` a list), all decoded by pycocotools.

Every missing piece (dataset folder, instances.json, refs file, image folder, an unknown
name, split_by or split, a split without refs) raises one :class:`DatasetError` that
names the path or value and prints the expected layout.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Iterator, NoReturn

import numpy as np

from .pickle_safe import UnsafePickleError, load_refs

COCO_NAMES = ("refcoco", "refcoco+", "refcocog")
SYNTHETIC_NAMES = ("synref", "synref_long")

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "synref": "unc", "synref_long": "unc"}

# (name, split_by) -> the splits that protocol defines.
SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco", "google"): ("train", "val"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}
SYNTHETIC_SPLITS = ("train", "val", "testA", "testB", "compositional")


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or malformed. The message names the path."""


class ImageError(RuntimeError):
    """One image could not be read (missing, corrupt, or not the size instances.json says)."""


def is_synthetic(name: str) -> bool:
    """True for the synthetic sets (``synref``, ``synref_long`` and other ``synref*``)."""
    return name in SYNTHETIC_NAMES or name.startswith("synref")


COCO_IMAGE_DIRS = (("images", "train2014"), ("images", "mscoco", "images", "train2014"))


def default_image_dir(root: str, name: str) -> str:
    """For the COCO names the first of ``<root>/images/train2014`` and the refer toolkit's
    ``<root>/images/mscoco/images/train2014`` that exists (the former when neither does, so
    the error names it); ``<root>/images/<name>`` otherwise."""
    if name in COCO_NAMES:
        for parts in COCO_IMAGE_DIRS:
            path = os.path.join(root, *parts)
            if os.path.isdir(path):
                return path
        return os.path.join(root, *COCO_IMAGE_DIRS[0])
    return os.path.join(root, "images", name)


def expected_layout(root: str, name: str, split_by: str, image_dir: str) -> str:
    """The layout the loader expects, with this dataset's paths filled in."""
    return (
        "expected layout (refer toolkit):\n"
        f"  {os.path.join(root, name, 'instances.json')}   COCO-style images/annotations\n"
        f"  {os.path.join(root, name, f'refs({split_by}).p')}   pickled list of refs\n"
        f"  {image_dir}{os.sep}<file_name>   one file per image in instances.json\n"
        "names: refcoco, refcoco+ (split_by unc; refcoco also google), refcocog (umd or google), "
        "synref, synref_long (unc)"
    )


def check_name(name: str, split_by: str | None) -> str:
    """Validate ``name`` and ``split_by``; returns the split_by to use."""
    if name not in COCO_NAMES and not is_synthetic(name):
        raise DatasetError(
            f"unknown dataset '{name}': expected one of {', '.join(COCO_NAMES + SYNTHETIC_NAMES)}"
        )
    split_by = split_by or DEFAULT_SPLIT_BY.get(name, "unc")
    if name in COCO_NAMES and (name, split_by) not in SPLITS:
        allowed = sorted(sb for (n, sb) in SPLITS if n == name)
        raise DatasetError(f"dataset '{name}' has no split_by '{split_by}': expected one of {allowed}")
    return split_by


class Refer:
    """Refs, annotations and images of one dataset in the refer layout.

    Arguments:
        root: the data root (holds ``<name>/`` and ``images/``).
        name: ``refcoco``, ``refcoco+``, ``refcocog``, ``synref``, ``synref_long``.
        split_by: ``unc`` / ``google`` / ``umd``; default per name (refcocog: umd).
        image_dir: folder holding the images; default see :func:`default_image_dir`.
    """

    def __init__(self, root: str, name: str, split_by: str | None = None, image_dir: str | None = None):
        self.root = os.fspath(root)
        self.name = name
        self.split_by = check_name(name, split_by)
        self.image_dir = os.fspath(image_dir) if image_dir else default_image_dir(self.root, name)
        self.data_dir = os.path.join(self.root, name)
        self.instances_path = os.path.join(self.data_dir, "instances.json")
        self.refs_path = os.path.join(self.data_dir, f"refs({self.split_by}).p")
        for what, path, is_dir in (
            ("data root", self.root, True),
            ("dataset folder", self.data_dir, True),
            ("annotation file", self.instances_path, False),
            ("refs file", self.refs_path, False),
            ("image folder", self.image_dir, True),
        ):
            if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
                self._fail(f"{what} not found: {path}")

        self.images, self.anns = self._read_instances()
        self.refs: dict[int, dict] = {}
        self._read_refs()

    # ------------------------------------------------------------------ reading

    def _fail(self, message: str) -> NoReturn:
        raise DatasetError(f"{message}\n{expected_layout(self.root, self.name, self.split_by, self.image_dir)}")

    def _read_instances(self) -> tuple[dict[int, dict], dict[int, dict]]:
        try:
            with open(self.instances_path, encoding="utf8") as f:
                inst = json.load(f)
        except (OSError, ValueError) as e:
            self._fail(f"unreadable annotation file {self.instances_path}: {e}")
        if not isinstance(inst, dict) or not isinstance(inst.get("images"), list) or not isinstance(inst.get("annotations"), list):
            self._fail(f"{self.instances_path}: expected a JSON object with 'images' and 'annotations' lists")
        images, anns = {}, {}
        for i, im in enumerate(inst["images"]):
            missing = [k for k in ("id", "file_name", "height", "width") if k not in im]
            if missing:
                self._fail(f"{self.instances_path}: images[{i}] lacks {missing}")
            images[int(im["id"])] = im
        for i, ann in enumerate(inst["annotations"]):
            missing = [k for k in ("id", "image_id", "segmentation") if k not in ann]
            if missing:
                self._fail(f"{self.instances_path}: annotations[{i}] lacks {missing}")
            anns[int(ann["id"])] = ann
        return images, anns

    def _read_refs(self) -> None:
        try:
            refs = load_refs(self.refs_path)
        except UnsafePickleError as e:
            raise DatasetError(str(e)) from None
        except (OSError, ValueError) as e:
            self._fail(str(e))
        if not isinstance(refs, list):
            self._fail(f"{self.refs_path}: expected a list of refs, got {type(refs).__name__}")
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict):
                self._fail(f"{self.refs_path}: ref #{i} is a {type(ref).__name__}, expected a dict")
            missing = [k for k in ("ref_id", "ann_id", "image_id", "split", "sentences") if k not in ref]
            if missing:
                self._fail(f"{self.refs_path}: ref #{i} lacks {missing}")
            if int(ref["ann_id"]) not in self.anns:
                self._fail(f"{self.refs_path}: ref {ref['ref_id']} names ann_id {ref['ann_id']}, absent from {self.instances_path}")
            if int(ref["image_id"]) not in self.images:
                self._fail(f"{self.refs_path}: ref {ref['ref_id']} names image_id {ref['image_id']}, absent from {self.instances_path}")
            if not ref["sentences"]:
                continue  # a ref without expressions can be neither trained nor evaluated
            self.refs[int(ref["ref_id"])] = ref

    # ------------------------------------------------------------------ splits

    def splits(self) -> list[str]:
        """Splits present in the refs file, in first-seen order."""
        seen: dict[str, None] = {}
        for ref in self.refs.values():
            seen.setdefault(str(ref["split"]), None)
        return list(seen)

    def allowed_splits(self) -> tuple[str, ...]:
        """Splits this dataset's protocol defines (synthetic sets: also any split present)."""
        if is_synthetic(self.name):
            return tuple(dict.fromkeys(SYNTHETIC_SPLITS + tuple(self.splits())))
        return SPLITS[(self.name, self.split_by)]

    def ref_ids(self, split: str) -> list[int]:
        """Ref ids of ``split`` in the refs file's order. DatasetError when the split is
        unknown for this dataset or has no refs."""
        allowed = self.allowed_splits()
        if split not in allowed:
            self._fail(f"split '{split}' is not a split of {self.name} ({self.split_by}): expected one of {list(allowed)}")
        ids = [rid for rid, ref in self.refs.items() if ref["split"] == split]
        if not ids:
            self._fail(f"split '{split}' has no refs in {self.refs_path} (present: {self.splits()})")
        return ids

    def sentences(self, ref_id: int) -> list[dict]:
        return list(self.refs[ref_id]["sentences"])

    def iter_expressions(self, split: str) -> Iterator[str]:
        """Every expression of ``split``."""
        for rid in self.ref_ids(split):
            for s in self.refs[rid]["sentences"]:
                yield sentence_text(s)

    # ------------------------------------------------------------------ masks, images

    def image_info(self, image_id: int) -> dict:
        return self.images[int(image_id)]

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_dir, self.images[int(image_id)]["file_name"])

    def ann_mask(self, ann_id: int) -> np.ndarray:
        """(H, W) uint8 in {0, 1}: the annotation's mask; parts merged by union."""
        ann = self.anns[int(ann_id)]
        im = self.images[int(ann["image_id"])]
        try:
            return decode_segmentation(ann["segmentation"], int(im["height"]), int(im["width"]))
        except (ValueError, TypeError, KeyError) as e:
            raise DatasetError(f"{self.instances_path}: annotation {ann_id} has an unreadable segmentation: {e}") from None

    def ref_mask(self, ref_id: int) -> np.ndarray:
        """(H, W) uint8 ground truth of one ref."""
        return self.ann_mask(self.refs[int(ref_id)]["ann_id"])

    def load_image(self, image_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB. ImageError when unreadable or not the annotated size."""
        import cv2

        path = self.image_path(image_id)
        im = self.images[int(image_id)]
        img = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
        if img is None:
            raise ImageError(f"cannot read image {path} (missing or corrupt)")
        h, w = img.shape[:2]
        if (h, w) != (int(im["height"]), int(im["width"])):
            raise ImageError(f"image {path} is {h}x{w} but {self.instances_path} says {im['height']}x{im['width']}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def sentence_text(sentence: dict) -> str:
    """The expression of a sentence record: ``sent``, else ``raw``, else the tokens joined."""
    for key in ("sent", "raw"):
        if isinstance(sentence.get(key), str) and sentence[key].strip():
            return sentence[key]
    return " ".join(sentence.get("tokens", []))


def decode_segmentation(seg: Any, h: int, w: int) -> np.ndarray:
    """(H, W) uint8 in {0, 1} from COCO polygons, compressed or uncompressed RLE, or a list
    of RLE parts (the form the refer toolkit's ``getMask`` reads; the synthetic world writes it).

    Polygons: a list of flat ``[x0, y0, x1, y1, ...]`` lists; parts with fewer than three
    points are dropped and the rest are merged (union).
    """
    from pycocotools import mask as mask_utils

    if isinstance(seg, list) and seg and all(isinstance(p, dict) for p in seg):
        # a list of RLE parts (what the refer toolkit's getMask reads): union of the parts
        return np.max(np.stack([decode_segmentation(p, h, w) for p in seg]), axis=0)
    if isinstance(seg, list):
        bad = [type(p).__name__ for p in seg if not isinstance(p, (list, tuple))]
        if bad:
            raise ValueError(f"segmentation list mixes polygons with {bad[0]} items")
        polys = [[float(v) for v in p] for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            return np.zeros((h, w), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg, dict) and "counts" in seg:
        size = [int(v) for v in seg.get("size", (h, w))]
        if size != [h, w]:
            raise ValueError(f"RLE size {size} differs from the image size {[h, w]}")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed
            rle = mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, h, w)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unknown segmentation type {type(seg).__name__}")
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(rle)
    if m.ndim == 3:
        m = m.max(axis=2)
    return np.ascontiguousarray(m, dtype=np.uint8)
