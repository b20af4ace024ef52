"""Evaluation at the original image resolution: oIoU, mIoU, Prec@X and per-expression records.

Per expression: logits (1, S/4, S/4) (S/2 with a refiner) -> bilinear upsampling to S x S -> sigmoid (with
``mirror``, averaged with the mirrored view's: :mod:`mmi.mirror`) ->
``Letterbox.inverse`` (crop the padding, resize to H x W) -> ``> threshold`` -> (with
``regions="peak"``, only the region holding the highest probability: :mod:`mmi.regions`) ->
compared with the ground truth at H x W (``dataset.original_mask``). Metric definitions: :mod:`mmi.metrics`.

Distributed: each process takes an unpadded shard of the indices (:class:`ShardSampler`);
the records are gathered and de-duplicated by dataset index, so every expression counts once.

Results JSON (``write_results``)::

    {"checkpoint", "dataset", "split", "split_by", "threshold", "regions", "flip", "image_size", "count",
     "backbone_weights": what the backbone started from ("random" or {file, sha256, ...}),
     "missing": expressions not evaluated (unreadable images), "totals": {count, oIoU, mIoU, Prec@X},
     "by_type": {type: totals} (when the dataset gives expression types), "definitions": {...},
     "records": [{index, ref_id, sent_id, ann_id, image_id, file_name, expression, type, iou,
                  intersection, union, height, width, rle: {"size": [H, W], "counts": str}}]}
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..data import Letterbox, collate
from ..metrics import DEFINITIONS, IoUAccumulator, format_table
from ..mirror import Mirror
from ..regions import check_mode, keep_regions
from .config import ConfigError
from .distributed import DistInfo, ShardSampler, all_gather_objects
from .precision import autocast, fp16_refusal


def probabilities(model: torch.nn.Module, batch: dict, device: torch.device, amp: str = "off",
                  channels_last: bool = False, mirror: Mirror | None = None) -> torch.Tensor:
    """Foreground probabilities (B, S, S) on the letterboxed canvas, float32 on the CPU.
    With ``mirror``, the mean of the plain view and the mirrored one (:mod:`mmi.mirror`)."""
    image = batch["image"].to(device, non_blocking=True)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    words, word_mask = batch["words"].to(device), batch["word_mask"].to(device)

    def view(img: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, amp):
            logits = model({"image": img, "words": ids, "word_mask": word_mask})["logits"]
        size = img.shape[-1]
        logits = F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[:, 0]

    probs = view(image, words)
    if mirror is not None:
        ids, usable = mirror.words(words)
        probs = mirror.average(probs, view(image.flip(-1), ids), usable)
    return probs.cpu()


def rle_encode(mask: np.ndarray) -> dict:
    """COCO RLE of an (H, W) binary mask, ``counts`` as a str (JSON-safe)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _expression_type(dataset: Any, meta: dict) -> str | None:
    if meta.get("type") is not None:
        return str(meta["type"])
    for getter in ("sentence", "ref"):
        fn = getattr(dataset, getter, None)
        if fn is None:
            continue
        t = fn(meta["index"]).get("type")
        if t is not None:
            return str(t)
    return None


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which finishes its step
    and saves (a worker dead of Ctrl-C would fail the next batch)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def default_results_path(checkpoint: str, name: str) -> str:
    """Where ``--eval-only`` writes without ``--out``: beside a checkpoint that lies in a run
    folder (one holding ``config.json`` or ``log.jsonl``), else ``runs/eval/<checkpoint
    name>_<name>``; never beside a shipped model in ``weights/``."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if any(os.path.isfile(os.path.join(folder, f)) for f in ("config.json", "log.jsonl")):
        return os.path.join(folder, name)
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return os.path.join("runs", "eval", f"{stem}_{name}")


def evaluate(model: torch.nn.Module, dataset: Any, device: torch.device, *, threshold: float = 0.5,
             batch_size: int = 8, workers: int = 0, amp: str = "off", records: bool = True,
             max_items: int | None = None, dist_info: DistInfo | None = None, progress: bool = False,
             channels_last: bool = False, loaders: dict | None = None, regions: str = "all",
             mirror: Mirror | None = None) -> dict:
    """Evaluate every expression of ``dataset`` (a non-training :class:`RefDataset`).

    ``regions``: ``all`` (the thresholded mask as it is) or ``peak`` (:func:`mmi.regions.keep_regions`).
    ``mirror``: average each prediction with its mirrored view's (:mod:`mmi.mirror`; twice the time).
    ``loaders``: a dict the caller keeps between calls (validation during training): the loader
    is made at the first call and kept there, its worker processes alive for the next calls
    (empty the dict to end them).
    Returns ``{"totals", "by_type", "count", "missing", "records", "seconds"}``; ``records``
    (with RLE masks when ``records`` is True) is complete on every process.
    """
    check_mode(regions)  # before any work
    info = dist_info or DistInfo(device=device)
    n = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    key = (id(dataset), n, batch_size, workers, info.rank, info.world_size)
    loader = loaders.get(key) if loaders is not None else None
    if loader is None:
        data = dataset if n == len(dataset) else Subset(dataset, range(n))
        loader = DataLoader(data, batch_size=batch_size, sampler=ShardSampler(n, info.rank, info.world_size),
                            num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
                            worker_init_fn=ignore_stop_signals if workers else None,
                            persistent_workers=bool(workers) and loaders is not None,
                            generator=torch.Generator())  # its start draws a seed: not from the global RNG
        if loaders is not None:
            loaders[key] = loader
    sampler = loader.sampler
    was_training = model.training
    model.eval()
    start = time.time()
    local: list[dict] = []
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(sampler), desc="eval", unit="expr", dynamic_ncols=True)
    try:
        for batch in loader:
            probs = probabilities(model, batch, device, amp, channels_last, mirror)
            for p, meta in zip(probs, batch["meta"]):
                lb = Letterbox.from_dict(meta["letterbox"])
                prob = lb.inverse(p.numpy())
                pred = keep_regions(prob > threshold, prob, regions)
                gt = dataset.original_mask(meta["index"]) != 0
                if gt.shape != pred.shape:
                    raise RuntimeError(f"ground truth {gt.shape} and prediction {pred.shape} differ for item {meta['index']}")
                inter = int(np.count_nonzero(pred & gt))
                union = int(np.count_nonzero(pred | gt))
                rec = {k: meta[k] for k in ("index", "ref_id", "sent_id", "ann_id", "image_id", "file_name", "expression")}
                rec.update(type=_expression_type(dataset, meta), iou=inter / union if union else 0.0,
                           intersection=inter, union=union, height=int(gt.shape[0]), width=int(gt.shape[1]))
                if records:
                    rec["rle"] = rle_encode(pred)
                local.append(rec)
            if bar is not None:
                bar.update(len(batch["meta"]))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    merged: dict[int, dict] = {}
    for part in all_gather_objects(local):
        for rec in part:
            merged.setdefault(rec["index"], rec)  # substituted items (bad images) count once
    recs = [merged[i] for i in sorted(merged)]
    acc = IoUAccumulator()
    for r in recs:
        acc.add(r["intersection"], r["union"], r["type"])
    return {"totals": acc.summary(), "by_type": acc.by_group(), "count": len(recs), "missing": n - len(recs),
            "records": recs, "seconds": round(time.time() - start, 2)}


def results_table(name: str, result: dict) -> str:
    """The totals (and the per-type rows) as a text table, metrics in percent."""
    rows = [(name, result["totals"])] + [(f"  {t}", s) for t, s in result["by_type"].items()]
    return format_table(rows)


def write_results(path: str, result: dict, header: dict) -> None:
    """Write the results JSON (see the module docstring) atomically."""
    doc = dict(header)
    doc.update(count=result["count"], missing=result["missing"], totals=result["totals"], by_type=result["by_type"],
               definitions=DEFINITIONS, records=result["records"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf8") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def run_eval_only(checkpoint: str, dataset: str, split: str, data_root: str, *, split_by: str | None = None,
                  image_dir: str | None = None, threshold: float = 0.5, out: str | None = None, batch_size: int = 8,
                  workers: int = 2, device: str = "auto", amp: str = "off", max_items: int | None = None,
                  language: str = "normal", progress: bool = True, regions: str = "all", flip: bool = False) -> dict:
    """``train.py --eval-only``: load a checkpoint (training or inference), evaluate one split,
    print the table, write the results JSON (default: :func:`default_results_path` of
    ``eval_<dataset>_<split>.json``, ``..._<language>.json`` for a language probe:
    ``RefDataset.set_language``)."""
    from ..data import build_dataset, normalization
    from .checkpoint import load_inference
    from .distributed import cleanup, init_distributed

    if not 0 < threshold < 1:
        raise ConfigError(f"--threshold must lie in (0, 1), got {threshold}")
    try:
        check_mode(regions)
    except ValueError as e:
        raise ConfigError(f"--{e}") from None
    info = init_distributed(device)
    if refusal := fp16_refusal(amp, info.device, "eval"):
        cleanup()
        raise ConfigError(refusal)
    try:
        model, vocab, meta = load_inference(checkpoint)
        mirror = Mirror(vocab) if flip else None
        if mirror is not None and not mirror.swapped:
            raise ConfigError("--flip: the checkpoint's vocabulary has no pair of directional words to swap "
                              "(left/right, leftmost/rightmost), so the mirrored view would ask another question")
        model.to(info.device)
        ds = build_dataset(dataset, data_root, split, model.image_size, vocab, model.t_max, train=False,
                           image_dir=image_dir, split_by=split_by, normalization=normalization(model.config))
        ds.set_language(language)
        result = evaluate(model, ds, info.device, threshold=threshold, batch_size=batch_size, workers=workers,
                          amp=amp, records=True, max_items=max_items, dist_info=info, progress=progress,
                          regions=regions, mirror=mirror)
        if info.is_main:
            probe = "" if language == "normal" else f"_{language}"
            out = out or default_results_path(checkpoint, f"eval_{dataset}_{split}{probe}.json")
            header = {"checkpoint": os.path.abspath(checkpoint), "dataset": dataset, "split": split,
                      "split_by": ds.refer.split_by, "threshold": threshold, "regions": regions, "flip": bool(flip),
                      "image_size": model.image_size,
                      "t_max": model.t_max, "checkpoint_meta": meta,
                      "backbone_weights": meta.get("backbone_weights", "not recorded"),
                      "input_norm": model.config.get("input_norm", "imagenet"),
                      "language": language, "language_unmatched": ds.unmatched}
            write_results(out, result, header)
            print(results_table(f"{dataset}/{split}" + (f" ({language} expressions)" if probe else ""), result))
            if result["missing"]:
                print(f"note: {result['missing']} expression(s) not evaluated (unreadable images)")
            kept = "" if regions == "all" else "; one region per expression (the highest probability's)"
            kept += "; each mask the mean of the plain and the mirrored view" if flip else ""
            print(f"threshold {threshold}{kept}; metrics at the original resolution; results: {out}")
            result["out"] = out
        return result
    finally:
        cleanup()
