"""A memo of a frozen backbone's outputs, keyed by the input image's content.

With ``frozen_backbone`` and no data augmentation, the backbone's outputs for an image
never change during training (nor, with ``backbone_frozen_blocks``, those of its fixed
first blocks: then those are memoised, ``MMI.memoised_part``), so computing them once and
reusing them each epoch is exact up to the storage precision. On a CPU this makes head-only training several
times faster. Outputs are stored on the CPU in fp16 (``dtype``) to halve the memory;
once ``max_bytes`` is reached, new images are computed but not stored.

``save(path, backbone)`` writes the memo to a file and ``load(path, backbone)`` reads it
back (``weights_only=True``), so a later run, or several runs of a comparison, skip the
backbone entirely; the file records a fingerprint of the backbone's weights and is refused
for another backbone. ``python -m mmi.model.feature_cache --config CFG`` fills such a file
for a run's train and val images (``scripts/train_shipped.sh`` does it first).
"""
from __future__ import annotations

import hashlib
import os

import torch
import torch.nn as nn

FORMAT = "mmi-feature-cache/1"


def backbone_fingerprint(backbone: nn.Module) -> str:
    """A short hash of a backbone's parameters and buffers (names, shapes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """``cache(backbone, image (B, 3, S, S)) -> backbone(image)`` (a list of maps: [f8, f16, f32]
    for a whole backbone), computing only images not seen before."""

    def __init__(self, max_bytes: int, dtype: torch.dtype = torch.float16):
        self.max_bytes, self.dtype = int(max_bytes), dtype
        self.store: dict[bytes, list[torch.Tensor]] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.unsaved = 0  # entries added since the last save() or load()

    @staticmethod
    def key(x: torch.Tensor) -> bytes:
        return hashlib.blake2b(x.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).digest()

    def __call__(self, backbone: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
        if backbone.training or torch.is_grad_enabled() and any(p.requires_grad for p in backbone.parameters()):
            raise RuntimeError("FeatureCache serves a frozen backbone in eval mode only")
        keys = [self.key(x) for x in image]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh = {}
        if missing:
            with torch.no_grad():
                out = backbone(image[missing])
            for j, i in enumerate(missing):
                fresh[i] = [f[j] for f in out]
                if self.bytes < self.max_bytes:
                    stored = [f[j].to("cpu", self.dtype) for f in out]
                    self.store[keys[i]] = stored
                    self.bytes += sum(t.numel() * t.element_size() for t in stored)
                    self.unsaved += 1
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        levels = []
        for level in range(len(fresh[missing[0]] if missing else self.store[keys[0]])):
            parts = [fresh[i][level] if i in fresh else self.store[k][level].to(image.device, image.dtype)
                     for i, k in enumerate(keys)]
            levels.append(torch.stack(parts))
        return levels

    def save(self, path: str, backbone: nn.Module) -> int:
        """Write every stored entry to ``path`` (atomically: a temporary file, then a rename).
        Returns the number of entries written."""
        keys = list(self.store)
        if not keys:
            return 0
        levels = [torch.stack([self.store[k][i] for k in keys]) for i in range(len(self.store[keys[0]]))]
        data = {"format": FORMAT, "backbone": backbone_fingerprint(backbone),
                "keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), -1).clone(),
                "levels": levels}
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            torch.save(data, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.unsaved = 0
        return len(keys)

    def load(self, path: str, backbone: nn.Module) -> int:
        """Add the entries of a file written by :meth:`save` (up to ``max_bytes``).

        Raises ValueError naming the file when it is not such a file or was made with
        another backbone. Returns the number of entries added."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or not a torch file
            raise ValueError(f"{path}: not a readable feature cache ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a feature cache file (format {FORMAT!r} expected)")
        if data["backbone"] != backbone_fingerprint(backbone):
            raise ValueError(f"{path}: made with another backbone (weights differ); delete it or pass another file")
        added = 0
        for j, key in enumerate(data["keys"].numpy()):
            k = key.tobytes()
            if self.bytes >= self.max_bytes:
                break
            if k in self.store:
                continue
            # copies: a view would keep the whole loaded file alive beyond max_bytes
            stored = [lv[j].to(self.dtype, copy=True) for lv in data["levels"]]
            self.store[k] = stored
            self.bytes += sum(t.numel() * t.element_size() for t in stored)
            added += 1
        self.unsaved = 0
        return added


def main(argv=None) -> None:
    """Fill a feature-cache file with the backbone outputs of a run's train and val images."""
    import argparse

    from tqdm import tqdm

    from ..data import build_dataset, normalization
    from ..engine.config import load_config
    from ..text import Vocabulary
    from .presets import build_model

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--config", required=True, help="the training config (its model, data and train.feature_cache_file)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, as train.py takes them")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    path = cfg["train"]["feature_cache_file"]
    if not path:
        raise SystemExit("the config sets no train.feature_cache_file")
    over = dict(cfg["model"]["overrides"])
    init = cfg["train"]["init_from"]
    if init:  # the backbone of the run's starting checkpoint (its weights make the cache's fingerprint)
        from ..engine.checkpoint import backbone_state

        model = build_model(cfg["model"]["preset"], 2, **dict(over, backbone_weights="random")).eval()
        model.backbone.load_state_dict(backbone_state(init))
    else:
        model = build_model(cfg["model"]["preset"], 2, **over).eval()
    part = model.memoised_part()
    if part is None:
        raise SystemExit("the config's model trains its whole backbone: nothing to memoise (set "
                         "model.overrides.frozen_backbone or backbone_frozen_blocks)")
    cache = FeatureCache(int(float(cfg["train"]["cache_backbone_gb"]) * 2**30) or 2**62)
    if os.path.exists(path):
        print(f"{path}: {cache.load(path, part)} entries already there")
    d = cfg["data"]
    for split in (d["train_split"], d["val_split"]):
        ds = build_dataset(d["dataset"], d["root"], split, model.image_size, Vocabulary([]), model.t_max, train=False,
                           image_dir=d["image_dir"], split_by=d["split_by"], normalization=normalization(model.config))
        first: dict[int, int] = {}
        for i in range(len(ds)):
            first.setdefault(int(ds.ref(i)["image_id"]), i)
        idx = list(first.values())
        with torch.no_grad():
            for s in tqdm(range(0, len(idx), args.batch), desc=f"{split} images", unit="batch"):
                cache(part, torch.stack([ds[i]["image"] for i in idx[s:s + args.batch]]))
    n = cache.save(path, part)
    print(f"{path}: {n} images, {cache.bytes / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
