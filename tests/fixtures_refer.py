"""Writers for a tiny dataset in the real refer layout (used by the data tests).

``write_refer_fixture(root)`` writes::

    root/refcoco/instances.json     4 images, 7 annotations: polygons (one of them in two
                                    parts), a compressed RLE, an uncompressed RLE
    root/refcoco/refs(unc).p        Python-2-style protocol-2 pickle (byte strings),
                                    splits train / val / testA / testB
    root/refcocog/instances.json    the same annotations
    root/refcocog/refs(umd).p       protocol-2 pickle written by Python 3, train / val / test
    root/images/train2014/*.jpg|png images drawn with cv2 (objects filled in colour)

and returns a :class:`ReferFixture` describing what was drawn.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

# image_id -> (file_name, height, width)
IMAGES = {
    1: ("COCO_train2014_000000000001.jpg", 60, 80),
    2: ("COCO_train2014_000000000002.png", 48, 64),
    3: ("COCO_train2014_000000000003.jpg", 40, 30),
    4: ("COCO_train2014_000000000004.png", 32, 32),
}

POLYGONS = {  # ann_id -> (image_id, list of flat polygons)
    101: (1, [[10, 10, 40, 10, 40, 35, 10, 35]]),
    102: (1, [[50, 5, 70, 5, 70, 20, 50, 20], [55, 40, 75, 55, 50, 58]]),  # two parts
    301: (3, [[5, 5, 25, 5, 15, 30]]),
    302: (3, [[2.5, 31.5, 27.5, 31.5, 27.5, 38.5, 2.5, 38.5]]),
    401: (4, [[8, 8, 24, 8, 24, 24, 8, 24]]),
}
RLE_ANNS = {201: 2, 202: 2}  # ann_id -> image_id; arrays drawn in rle_arrays()

# ref_id -> (ann_id, split, sentences)
REFS_UNC = {
    1: (101, "train", ["the red box on the left", "left square"]),
    2: (102, "train", ["two green pieces", "green shape top right", "the café sign"]),
    3: (201, "train", ["blue blob"]),
    4: (202, "val", ["yellow ring", "the ring around"]),
    5: (301, "testA", ["triangle on top", "pointy thing"]),
    6: (302, "testB", ["bottom bar"]),
    7: (401, "testB", ["small square", "the square in the middle"]),
}
REFS_UMD = {
    11: (101, "train", ["a red box that is on the left side of the picture"]),
    12: (201, "train", ["the blue blob near the top"]),
    13: (202, "val", ["a yellow ring around the blob"]),
    14: (301, "test", ["the triangle at the top"]),
    15: (302, "test", ["a bar at the bottom", "bottom bar of the image"]),
}


def rle_arrays() -> dict[int, np.ndarray]:
    """Masks stored as RLE: 201 compressed (a disc), 202 uncompressed (a ring)."""
    _, h, w = IMAGES[2]
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 81).astype(np.uint8)
    r2 = (yy - 24) ** 2 + (xx - 44) ** 2
    ring = ((r2 <= 144) & (r2 >= 49)).astype(np.uint8)
    return {201: disc, 202: ring}


def uncompressed_rle(m: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: column-major run lengths starting with a run of zeros."""
    flat = np.asarray(m, dtype=np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def py2_pickle(obj: Any) -> bytes:
    """Protocol-2 pickle as Python 2 wrote it: ``str`` as byte strings (latin-1)."""
    out = bytearray(b"\x80\x02")

    def emit(o: Any) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            if -(2**31) <= o < 2**31:
                out.extend(b"J" + struct.pack("<i", o))
            else:
                raw = o.to_bytes((o.bit_length() + 8) // 8, "little", signed=True)
                out.extend(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            raw = o.encode("latin1")
            out.extend((b"U" + bytes([len(raw)])) if len(raw) < 256 else (b"T" + struct.pack("<i", len(raw))))
            out.extend(raw)
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        else:
            raise TypeError(f"py2_pickle cannot write {type(o).__name__}")

    emit(obj)
    out.extend(b".")
    return bytes(out)


@dataclass
class ReferFixture:
    root: str
    image_dir: str
    polygons: dict[int, list[list[float]]] = field(default_factory=dict)
    rle: dict[int, np.ndarray] = field(default_factory=dict)
    refs_unc: dict = field(default_factory=lambda: REFS_UNC)
    refs_umd: dict = field(default_factory=lambda: REFS_UMD)

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_dir, IMAGES[image_id][0])


def _refs(table: dict, images_of: dict[int, int]) -> list[dict]:
    refs, sent_id = [], 1000
    for ref_id, (ann_id, split, sents) in table.items():
        sentences = []
        for s in sents:
            sent_id += 1
            sentences.append({"sent_id": sent_id, "sent": s, "raw": s.capitalize() + ".", "tokens": s.split()})
        refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": images_of[ann_id], "split": split,
                     "category_id": 1, "sent_ids": [x["sent_id"] for x in sentences], "sentences": sentences,
                     "file_name": f"ref_{ref_id}.jpg"})
    return refs


def write_refer_fixture(root: str) -> ReferFixture:
    """Write the fixture under ``root`` (see module doc)."""
    image_dir = os.path.join(root, "images", "train2014")
    os.makedirs(image_dir, exist_ok=True)
    arrays = rle_arrays()
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 220, 30), (200, 30, 200)]
    canvases = {i: np.full((h, w, 3), 90, np.uint8) for i, (_, h, w) in IMAGES.items()}
    annotations, images_of = [], {}
    for k, (ann_id, (image_id, polys)) in enumerate(POLYGONS.items()):
        for p in polys:
            pts = np.round(np.array(p, dtype=np.float64).reshape(-1, 2)).astype(np.int32)
            cv2.fillPoly(canvases[image_id], [pts], colours[k % len(colours)])
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                            "segmentation": polys, "area": 0.0, "bbox": [0, 0, 1, 1]})
        images_of[ann_id] = image_id
    for k, (ann_id, image_id) in enumerate(RLE_ANNS.items()):
        canvases[image_id][arrays[ann_id] > 0] = colours[(k + 2) % len(colours)]
        if ann_id == 201:
            rle = mask_utils.encode(np.asfortranarray(arrays[ann_id]))
            seg = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        else:
            seg = uncompressed_rle(arrays[ann_id])
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                            "segmentation": seg, "area": float(arrays[ann_id].sum()), "bbox": [0, 0, 1, 1]})
        images_of[ann_id] = image_id
    for image_id, (fname, _, _) in IMAGES.items():
        ok = cv2.imwrite(os.path.join(image_dir, fname), cv2.cvtColor(canvases[image_id], cv2.COLOR_RGB2BGR))
        assert ok, fname
    instances = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, (f, h, w) in IMAGES.items()],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }
    for name, refs_file, data in (
        ("refcoco", "refs(unc).p", py2_pickle(_refs(REFS_UNC, images_of))),
        ("refcocog", "refs(umd).p", pickle.dumps(_refs(REFS_UMD, images_of), protocol=2)),
    ):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        with open(os.path.join(root, name, "instances.json"), "w", encoding="utf8") as f:
            json.dump(instances, f)
        with open(os.path.join(root, name, refs_file), "wb") as f:
            f.write(data)
    return ReferFixture(root=root, image_dir=image_dir, polygons={a: p for a, (_, p) in POLYGONS.items()}, rle=arrays)


def corrupt_image(fixture: ReferFixture, image_id: int) -> str:
    """Overwrite one image with bytes no decoder reads; returns its path."""
    path = fixture.image_path(image_id)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    return path


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def evil_pickle(command: str) -> bytes:
    """A pickle that runs ``command`` through os.system when loaded with pickle.load."""
    return pickle.dumps([{"ref_id": 1, "payload": _Evil(command)}], protocol=2)
