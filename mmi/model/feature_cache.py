"""A memo of a frozen backbone's outputs, keyed by the input image's content.

With ``frozen_backbone`` and no data augmentation, the backbone's outputs for an image
never change during training (nor, with ``backbone_frozen_blocks``, those of its fixed
first blocks: then those are memoised, ``MMI.memoised_part``), so computing them once and
reusing them each epoch is exact up to the storage precision. On a CPU this makes head-only training several
times faster. Outputs are stored on the CPU in fp16 (``dtype``) to halve the memory;
once ``max_bytes`` is reached, new images are computed but not stored.

``save(path, backbone)`` writes the memo to a file and ``load(path, backbone)`` reads it
back (``weights_only=True``, memory-mapped), so a later run, or several runs of a comparison,
skip the backbone entirely; the file records a fingerprint of the backbone's weights and is refused
for another backbone; names learned for images already in the file go to a small names file
beside it (``names_path``; runs sharing the memo merge their names one at a time, under
``file_lock``). ``python -m mmi.model.feature_cache --config CFG`` fills such a file
for a run's train and val images (``scripts/train_shipped.sh`` does it first).
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

FORMAT = "mmi-feature-cache/2"
NAMES_FORMAT = "mmi-feature-cache-names/1"  # the names file beside a memo file (FeatureCache.save)
FORMATS = ("mmi-feature-cache/1", FORMAT)  # /1: one tensor per level; /2: the same rows in chunks


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
    for a whole backbone), computing only images not seen before.

    Entries live as rows of chunks: each chunk holds one tensor per level, (R, C_l, H_l, W_l),
    filled ``chunk_rows`` at a time (memory is counted per chunk allocated). A file is the chunks
    themselves, so :meth:`save` copies at most the one chunk being filled (not the whole memo),
    and :meth:`load` memory-maps the file and adopts its chunks without copying them: runs that
    read the same file at once share its pages."""

    def __init__(self, max_bytes: int, dtype: torch.dtype = torch.float16, chunk_rows: int = 256):
        self.max_bytes, self.dtype, self.chunk_rows = int(max_bytes), dtype, int(chunk_rows)
        self.store: dict[bytes, tuple[int, int]] = {}  # key -> (chunk, row)
        self.chunks: list[list[torch.Tensor]] = []  # per chunk, per level (R, C, H, W)
        self.chunk_keys: list[list[bytes]] = []  # per chunk, the key of each filled row
        self.open: int | None = None  # the chunk being filled (allocated rows beyond its keys are free)
        self.index: dict[str, bytes] = {}  # image name -> content key of a stored entry (see __call__)
        self.bytes = 0
        self.hits = self.misses = 0
        self.unsaved = 0  # entries added since the last save() or load()
        self.unsaved_names = 0  # names recorded since then (for entries stored already)
        self.file: str | None = None  # the file last loaded or saved (whose entries are all in the memo)

    @staticmethod
    def key(x: torch.Tensor) -> bytes:
        return hashlib.blake2b(x.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self.store)

    def entry(self, key: bytes) -> list[torch.Tensor]:
        """The stored maps of one image (views), one per level."""
        c, r = self.store[key]
        return [level[r] for level in self.chunks[c]]

    def _add(self, key: bytes, maps: list[torch.Tensor]) -> bool:
        """Store one image's maps (one per level); False when the memo is full."""
        if self.open is None or len(self.chunk_keys[self.open]) == self.chunks[self.open][0].shape[0]:
            size = sum(self.chunk_rows * m.numel() * self.dtype.itemsize for m in maps)
            if self.bytes >= self.max_bytes:
                return False
            self.chunks.append([torch.empty((self.chunk_rows, *m.shape), dtype=self.dtype) for m in maps])
            self.chunk_keys.append([])
            self.open = len(self.chunks) - 1
            self.bytes += size
        row = len(self.chunk_keys[self.open])
        for level, m in zip(self.chunks[self.open], maps):
            level[row].copy_(m)
        self.chunk_keys[self.open].append(key)
        self.store[key] = (self.open, row)
        self.unsaved += 1
        return True

    def names(self) -> frozenset[str]:
        """The image names whose maps are stored (a dataset's ``memo_names``: it then skips loading them)."""
        return frozenset(self.index)

    def __call__(self, backbone: nn.Module, image: torch.Tensor | None, names: list[str] | None = None,
                 present: list[bool] | None = None) -> list[torch.Tensor]:
        """The maps of a batch of B images (a list, one (B, C, H, W) tensor per level).

        Without ``names``, ``image`` is (B, 3, S, S) and each row is keyed by its content. With
        ``names`` (B strings naming each image's file and preprocessing, ``RefDataset.image_name``)
        and ``present`` (B bools), ``image`` holds only the present rows, in order (None when there
        are none): a row that is not present is served from the memo by its name, which must be
        in :attr:`index`; a present row is keyed by its content as before and its name recorded,
        so that the next time the loader can skip it."""
        if backbone.training or torch.is_grad_enabled() and any(p.requires_grad for p in backbone.parameters()):
            raise RuntimeError("FeatureCache serves a frozen backbone in eval mode only")
        if names is None:
            rows, keys = list(range(image.shape[0])), [self.key(x) for x in image]
        else:
            present = [True] * len(names) if present is None else list(present)
            n_rows = 0 if image is None else image.shape[0]
            if len(present) != len(names) or sum(present) != n_rows:
                raise ValueError(f"{len(names)} names, {sum(present)} marked present, {n_rows} image rows")
            rows, keys, r = [], [], 0
            for name, has in zip(names, present):
                if has:
                    rows.append(r)
                    keys.append(self.key(image[r]))
                    r += 1
                else:
                    if name not in self.index:
                        raise KeyError(f"image {name!r} was not loaded and is not in the memo")
                    rows.append(None)
                    keys.append(self.index[name])
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh = {}
        if missing:
            with torch.no_grad():
                out = backbone(image[[rows[i] for i in missing]])
            for j, i in enumerate(missing):
                fresh[i] = [f[j] for f in out]
                if keys[i] not in self.store:  # an image twice in one batch is stored once
                    self._add(keys[i], [f[j].detach().cpu() for f in out])
        if names is not None:
            for name, k in zip(names, keys):
                if k in self.store and self.index.get(name) != k:
                    self.index[name] = k
                    self.unsaved_names += 1  # the file should learn the name too
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if image is not None:
            device, dtype = image.device, image.dtype
        else:
            device, dtype = next(iter(backbone.parameters()), torch.empty(0)).device, torch.float32
        maps = [fresh[i] if i in fresh else [t.to(device, dtype) for t in self.entry(k)] for i, k in enumerate(keys)]
        return [torch.stack([m[level] for m in maps]) for level in range(len(maps[0]))]

    def save(self, path: str, backbone: nn.Module) -> int:
        """Write every stored entry to ``path`` (atomically: a temporary file, then a rename), with
        the names known for them. Returns the number of entries written.

        When no entry was added since this file was written or read (``unsaved`` is 0), and it is
        still there, only new names are to be kept: they go to the small file ``names_path(path)``
        beside it instead (the names it held already kept, so runs sharing one memo add to each
        other's names), and the memo file, gigabytes for a large one, is not rewritten. Returns 0
        then."""
        if not self.store:
            return 0
        fingerprint = backbone_fingerprint(backbone)
        if not self.unsaved and self.file == os.path.abspath(path) and os.path.exists(path):
            if self.unsaved_names:
                with file_lock(names_path(path)):  # another run's names, read and rewritten meanwhile, would be lost
                    names = self._read_names(names_path(path), fingerprint)
                    names.update((n, k) for n, k in self.index.items() if k in self.store)
                    named = sorted(names)
                    _write_atomic({"format": NAMES_FORMAT, "backbone": fingerprint, "names": named,
                                   "name_keys": _key_rows([names[n] for n in named])}, names_path(path))
                self.unsaved_names = 0
            return 0
        chunks, keys = [], []
        for chunk, ck in zip(self.chunks, self.chunk_keys):
            n = len(ck)
            if n:  # a full chunk as it is; the one being filled, its rows so far (a copy of < one chunk)
                chunks.append(chunk if n == chunk[0].shape[0] else [level[:n].clone() for level in chunk])
                keys.extend(ck)
        with file_lock(names_path(path)):
            names = {n: k for n, k in self._read_names(names_path(path), fingerprint).items() if k in self.store}
            names.update((n, k) for n, k in self.index.items() if k in self.store)
            named = sorted(names)
            _write_atomic({"format": FORMAT, "backbone": fingerprint, "keys": _key_rows(keys), "chunks": chunks,
                           "names": named, "name_keys": _key_rows([names[n] for n in named])}, path)
        self.unsaved = self.unsaved_names = 0
        self.file = os.path.abspath(path)
        return len(keys)

    @staticmethod
    def _read_names(path: str, fingerprint: str) -> dict[str, bytes]:
        """The names of a names file (name -> content key); empty when there is none, and, with a
        warning, when it is unreadable or made with another backbone (names only save loading)."""
        if not os.path.exists(path):
            return {}
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or data.get("format") != NAMES_FORMAT:
                raise ValueError(f"format {NAMES_FORMAT!r} expected")
        except Exception as e:
            print(f"warning: {path}: not a names file, ignored ({type(e).__name__}: {e})", flush=True)
            return {}
        if data["backbone"] != fingerprint:
            print(f"warning: {path}: made with another backbone, ignored", flush=True)
            return {}
        return dict(zip(data["names"], (k.tobytes() for k in data["name_keys"].numpy())))

    def load(self, path: str, backbone: nn.Module) -> int:
        """Add the entries of a file written by :meth:`save` (up to ``max_bytes``).

        The file is memory-mapped; a chunk of it whose images are all new, in the memo's dtype and
        within ``max_bytes``, is adopted as it is, any other is copied row by row. Raises
        ValueError naming the file when it is not such a file or was made with another backbone.
        Returns the number of entries added."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # truncated or not a torch file
            raise ValueError(f"{path}: not a readable feature cache ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict) or data.get("format") not in FORMATS:
            raise ValueError(f"{path}: not a feature cache file (format {FORMAT!r} expected)")
        if data["backbone"] != backbone_fingerprint(backbone):
            raise ValueError(f"{path}: made with another backbone (weights differ); delete it or pass another file")
        chunks = data["chunks"] if data["format"] == FORMAT else [data["levels"]]
        keys = [k.tobytes() for k in data["keys"].numpy()]
        if sum(c[0].shape[0] for c in chunks) != len(keys):
            raise ValueError(f"{path}: not a feature cache file ({len(keys)} keys for another number of rows)")
        names = data.get("names", [])
        name_keys = [k.tobytes() for k in data["name_keys"].numpy()] if names else []
        added, first = 0, 0
        for chunk in chunks:
            ck, first = keys[first:first + chunk[0].shape[0]], first + chunk[0].shape[0]
            size = sum(level.numel() * level.element_size() for level in chunk)
            if (all(level.dtype == self.dtype for level in chunk) and self.bytes + size <= self.max_bytes
                    and len(set(ck)) == len(ck) and not any(k in self.store for k in ck)):
                self.chunks.append(chunk)
                self.chunk_keys.append(ck)
                self.store.update((k, (len(self.chunks) - 1, r)) for r, k in enumerate(ck))
                self.bytes += size
                added += len(ck)
                continue
            for r, k in enumerate(ck):
                if k not in self.store:
                    if not self._add(k, [level[r] for level in chunk]):
                        break
                    added += 1
        names = dict(zip(names, name_keys))
        names.update(self._read_names(names_path(path), data["backbone"]))
        self.index.update((n, k) for n, k in names.items() if k in self.store)
        self.unsaved = self.unsaved_names = 0
        self.file = os.path.abspath(path)
        return added


def names_path(path: str) -> str:
    """The names file that goes with the memo file at ``path`` (FeatureCache.save)."""
    return path + ".names"


@contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path + ".lock"`` (created if missing) for the block:
    runs sharing one memo read, merge and rewrite its names one at a time. POSIX ``flock``;
    where there is none (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(data: dict, path: str) -> None:
    """torch.save to a temporary file beside ``path``, then a rename: a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _key_rows(keys: list[bytes]) -> torch.Tensor:
    """(N, 16) uint8: the keys as rows of a tensor (a file holds tensors, not bytes)."""
    return torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), 16).clone() if keys \
        else torch.zeros((0, 16), dtype=torch.uint8)


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
                items = idx[s:s + args.batch]  # named too, so that training can skip loading them
                cache(part, torch.stack([ds[i]["image"] for i in items]),
                      [ds.image_name(int(ds.ref(i)["image_id"])) for i in items], [True] * len(items))
    n = cache.save(path, part)
    print(f"{path}: {n} images written, {len(cache)} held, {len(cache.index)} named, {cache.bytes / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
