"""Generate images and write them in the refer-toolkit layout::

    <out>/<name>/instances.json      COCO style: images, annotations (compressed RLE of the
                                     visible part, counts as str), categories (the shapes)
    <out>/<name>/refs(unc).p         protocol-2 pickle of a list of plain dicts
    <out>/images/<name>/<file_name>  one JPEG (or PNG) per image

Ids: image_id = index + 1; ann_id = image_id * 100 + z (z: the object's layer, so every
object of every image has an annotation); ref_id and sent_id count from 0 in image
order. Each sentence dict carries the extra key ``type`` (attribute, position, extreme,
relation, ordinal); the refer toolkit ignores it.

Everything is a function of (seed, index): image ``index`` uses the random streams
``[seed, index, 0]`` (scene) and ``[seed, index, 1]`` (expressions), so any number of
worker processes writes the same bytes.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Any, Optional

import cv2
import numpy as np

from ...text import tokenize
from .expressions import TYPES, Expression, describe_scene
from .renderer import render
from .scene import HELD_OUT, SPLIT_FRACTIONS, Scene, sample_scene, split_of
from .shapes import SHAPES

CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
CATEGORY_ID = {s: i + 1 for i, s in enumerate(SHAPES)}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``width`` x ``height`` is the base image size (aspect varies)."""

    name: str = "synref"
    long: bool = False
    width: int = 320
    height: int = 240
    image_format: str = "jpg"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got '{self.image_format}'")
        if self.width < 128 or self.height < 96:
            raise ValueError(f"image size {self.width}x{self.height} is too small: at least 128x96")


@dataclass
class GeneratedImage:
    """One image: scene, pixels (H, W, 3) uint8 RGB, visible masks (N, H, W) bool and
    the referred objects with their expressions."""

    index: int
    image_id: int
    file_name: str
    scene: Scene
    image: np.ndarray
    masks: np.ndarray
    refs: list[tuple[int, list[Expression]]]


def ann_id_of(image_id: int, z: int) -> int:
    return image_id * 100 + z


def generate_image(seed: int, index: int, config: SynthConfig = SynthConfig()) -> GeneratedImage:
    """Image ``index`` of the data set with ``seed`` (a pure function of its arguments)."""
    split = split_of(index)
    scene_rng = np.random.default_rng([seed, index, 0])
    expr_rng = np.random.default_rng([seed, index, 1])
    for _ in range(20):
        scene = sample_scene(scene_rng, config.width, config.height, split)
        refs = describe_scene(scene, expr_rng, long=config.long)
        if refs:
            break
    else:
        raise RuntimeError(f"image {index} (seed {seed}): no describable scene in 20 attempts")
    image, masks = render(scene)
    file_name = f"{config.name}_{index:06d}.{config.image_format}"
    return GeneratedImage(index, index + 1, file_name, scene, image, masks, refs)


def encode_image(image: np.ndarray, config: SynthConfig) -> bytes:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if config.image_format == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError("cv2 could not encode the image")
    return buf.tobytes()


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of an (H, W) mask, ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _work(args: tuple[int, int, SynthConfig, str]) -> dict[str, Any]:
    """Generate one image, write its file, return its annotations (plain data)."""
    seed, index, config, image_dir = args
    g = generate_image(seed, index, config)
    with open(os.path.join(image_dir, g.file_name), "wb") as f:
        f.write(encode_image(g.image, config))
    from pycocotools import mask as mask_utils

    anns = []
    for o in g.scene.objects:
        rle = encode_mask(g.masks[o.z])
        box = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        anns.append({"id": ann_id_of(g.image_id, o.z), "image_id": g.image_id, "category_id": CATEGORY_ID[o.shape],
                     "segmentation": [rle], "area": int(g.masks[o.z].sum()), "bbox": [float(v) for v in box],
                     "iscrowd": 0})
    refs = [{"z": z, "sentences": [(e.text, e.type) for e in exprs]} for z, exprs in g.refs]
    return {"image": {"id": g.image_id, "file_name": g.file_name, "height": g.scene.height, "width": g.scene.width},
            "split": g.scene.split, "annotations": anns, "refs": refs}


def _init_worker() -> None:
    cv2.setNumThreads(1)


def write_dataset(out: str, n_images: int, seed: int, config: SynthConfig = SynthConfig(),
                  workers: Optional[int] = None, progress: bool = True) -> dict[str, Any]:
    """Generate ``n_images`` images into ``out`` (layout in the module doc).

    Returns a summary: counts per split and expression type, seconds and images/s.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    workers = max(1, int(workers or os.cpu_count() or 1))
    data_dir = os.path.join(out, config.name)
    image_dir = os.path.join(out, "images", config.name)
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    jobs = [(seed, i, config, image_dir) for i in range(n_images)]
    start = time.perf_counter()
    from tqdm import tqdm

    bar = dict(total=n_images, desc=f"{config.name}", unit="img", disable=not progress, file=sys.stderr)
    if workers == 1:
        _init_worker()
        records = [r for r in tqdm(map(_work, jobs), **bar)]
    else:
        with get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers, _init_worker) as pool:
            chunk = max(1, min(16, n_images // (workers * 8)))
            records = [r for r in tqdm(pool.imap(_work, jobs, chunksize=chunk), **bar)]
    seconds = time.perf_counter() - start

    instances, refs, stats = _assemble(records, seed, config)
    _write_atomic(os.path.join(data_dir, "instances.json"),
                  json.dumps(instances, separators=(",", ":")).encode("utf8"))
    _write_atomic(os.path.join(data_dir, "refs(unc).p"), pickle.dumps(refs, protocol=2))
    stats.update(seconds=round(seconds, 2), images_per_second=round(n_images / max(seconds, 1e-9), 1),
                 workers=workers, out=os.path.abspath(out))
    return stats


def _assemble(records: list[dict], seed: int, config: SynthConfig) -> tuple[dict, list[dict], dict]:
    """instances.json content, the refs list and counts. Strings are interned so the
    pickle's bytes do not depend on which process built them."""
    s = sys.intern
    images, anns, refs = [], [], []
    sent_id = 0
    per_split: dict[str, Counter] = {k: Counter() for k in SPLIT_FRACTIONS}
    types: Counter = Counter()
    for rec in records:
        im = rec["image"]
        images.append(im)
        anns.extend(rec["annotations"])
        split = s(rec["split"])
        per_split[split]["images"] += 1
        cat = {a["id"]: a["category_id"] for a in rec["annotations"]}
        for r in rec["refs"]:
            ann_id = ann_id_of(im["id"], r["z"])
            sentences = []
            for text, kind in r["sentences"]:
                tokens = [s(t) for t in tokenize(text)]
                sentences.append({"sent_id": sent_id, "sent": s(" ".join(tokens)), "raw": s(text),
                                  "tokens": tokens, "type": s(kind)})
                sent_id += 1
                types[kind] += 1
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": im["id"], "split": split,
                         "category_id": cat[ann_id], "file_name": s(im["file_name"]),
                         "sent_ids": [x["sent_id"] for x in sentences], "sentences": sentences})
            per_split[split]["refs"] += 1
            per_split[split]["sentences"] += len(sentences)
    info = {"description": f"synthetic referring world '{config.name}'", "seed": seed, "images": len(images),
            "config": asdict(config), "held_out": [list(c) for c in HELD_OUT]}
    instances = {"info": info, "images": images, "annotations": anns, "categories": CATEGORIES}
    stats = {"images": len(images), "refs": len(refs), "sentences": sent_id,
             "splits": {k: dict(v) for k, v in per_split.items()}, "types": {k: types[k] for k in TYPES}}
    return instances, refs, stats


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
