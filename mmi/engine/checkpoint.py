"""Checkpoints: atomic writes, the inference-only format and the full training state.

Two formats, both loadable with ``torch.load(..., weights_only=True)`` (only tensors,
numbers, strings, lists and dicts inside):

- inference (``mmi-inference/1``): ``{"format", "model": state_dict, "config": model.config,
  "vocab": [words], "meta": dict}``; what ``app.py``, ``mmi.predictor`` and ``--eval-only`` read.
- training (``mmi-train/1``): the inference keys plus ``optimizer``, ``scheduler``, ``scaler``,
  ``epoch`` (epochs completed), ``step`` (optimiser steps), ``step_in_epoch``, ``rng`` (per
  process: python, numpy, torch, cuda states as tensors and plain lists), ``best`` (best validation oIoU so far) and ``run_config``
  (the resolved run configuration). ``--resume`` reads it.

Every file is written to a temporary file in the same folder (``.<name>.<pid>.<random>.tmp``),
flushed, fsynced and moved into place with ``os.replace``: a process killed midway (even by
SIGKILL) leaves the previous file intact, and at worst a stale temporary file, which the next
run in that folder removes (:func:`remove_partial_files`). A write that fails (a full disk:
ENOSPC, a quota, an I/O error) removes its temporary file and raises :class:`CheckpointError`
saying so; the previous file is kept.
"""
from __future__ import annotations

import errno
import glob
import os
import random
import uuid
import zipfile
from typing import Any

import numpy as np
import torch

INFERENCE_FORMAT = "mmi-inference/1"
TRAIN_FORMAT = "mmi-train/1"


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated or not in a known format."""


# ----------------------------------------------------------------------------- atomic I/O

def _open_tmp(path: str):
    """The temporary file a checkpoint is written to (plain ``open``: the mode follows the umask)."""
    return open(path, "xb")


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed ``write``: torch's zip writer may
    report it as a RuntimeError of its own, and the cause (e.g. ENOSPC) must not be lost."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()

    def __getattr__(self, name: str):  # everything else as the file does
        return getattr(self.f, name)


def _os_error(exc: BaseException, writer: _RecordingWriter | None) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if writer is not None and writer.error is not None:
        return writer.error
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, OSError) else None


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file in the same folder, fsync, replace).

    On an OS error while writing (ENOSPC: the disk is full) the temporary file is removed, the
    previous ``path`` is left as it was and :class:`CheckpointError` says which file could not
    be written and why. Anything else (e.g. KeyboardInterrupt) also removes the temporary file
    and propagates unchanged."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    writer = None
    try:
        with _open_tmp(tmp) as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        err = _os_error(e, writer)
        if err is None:
            raise
        reason = "the disk is full (ENOSPC)" if err.errno == errno.ENOSPC else \
            f"{os.strerror(err.errno) if err.errno else err} ({errno.errorcode.get(err.errno, 'OSError')})"
        kept = (f"the previous {os.path.basename(path)} is kept unchanged" if os.path.exists(path)
                else f"there was no earlier {os.path.basename(path)}")
        raise CheckpointError(f"could not write checkpoint {path}: {reason}; the partial file was removed and {kept}. "
                              f"Free space in {folder} (or choose another output) and resume.") from err
    try:  # make the rename itself durable where the platform allows it
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def remove_partial_files(folder: str) -> list[str]:
    """Remove the temporary files (``.<name>.<pid>.<random>.tmp``) that a process killed while
    writing a checkpoint left in ``folder``; returns their names. Call it only when no other
    process writes to ``folder``."""
    removed = []
    for p in sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), ".*.pt.*.tmp"))):
        try:
            os.unlink(p)
            removed.append(os.path.basename(p))
        except OSError:
            pass
    return removed


_LEGACY_MAGIC = b"\x80\x02\x8a\n"  # the pickle stream of torch's pre-1.6 format starts so


def read_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with a :class:`CheckpointError` naming the file
    when it is missing, truncated, unreadable or not an MMI checkpoint."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint is not a file: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    corrupt = f"cannot read checkpoint {path}: the file is corrupt or truncated"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
        if head != _LEGACY_MAGIC:  # a complete torch file is a zip archive (or the legacy pickle)
            raise CheckpointError(f"{corrupt} (not a complete torch file: no zip directory at its end); "
                                  f"if it was being written when a process died, use the previous checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types here (RuntimeError, UnpicklingError, KeyError, EOFError, ...)
        text = str(e)
        if "Weights only load failed" in text:
            reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0]
            reason = " ".join(reason.split()) if "WeightsUnpickler error:" in text else ""
            if reason.startswith(("Unsupported global", "Unsupported class")) or "GLOBAL" in reason:
                name = reason.split("GLOBAL", 1)[-1].split()[0] if "GLOBAL" in reason else reason
                raise CheckpointError(f"refusing checkpoint {path}: it holds a Python object ({name}) besides tensors "
                                      f"and plain containers, which weights_only=True loading does not run") from None
            raise CheckpointError(f"{corrupt} (its contents do not unpickle: {reason or 'unknown'})") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise CheckpointError(f"{corrupt} (not a readable torch file: {type(e).__name__}"
                              f"{': ' + first if first else ''})") from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"{path} is not an MMI checkpoint (no 'format' key; a bare state_dict?)")
    if obj["format"] not in (INFERENCE_FORMAT, TRAIN_FORMAT):
        raise CheckpointError(f"{path} has unknown checkpoint format {obj['format']!r}; "
                              f"expected {INFERENCE_FORMAT!r} or {TRAIN_FORMAT!r}")
    missing = [k for k in ("model", "config", "vocab") if k not in obj]
    if missing:
        raise CheckpointError(f"{path} ({obj['format']}) lacks key(s) {missing}")
    return obj


# ----------------------------------------------------------------------------- inference

def _state_dict(model: torch.nn.Module, half: bool = False) -> dict[str, torch.Tensor]:
    """CPU copy of the weights (unwrapping DDP); float tensors to fp16 when ``half``."""
    model = getattr(model, "module", model)
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        out[k] = v.clone()
    return out


def save_inference(path: str, model: torch.nn.Module, vocab, meta: dict | None = None, half: bool = False) -> None:
    """Write the inference checkpoint ``{"format": "mmi-inference/1", "model", "config", "vocab", "meta"}``.

    ``vocab`` is a :class:`mmi.text.Vocabulary` (or a list of words); ``meta`` a JSON-safe dict
    (dataset, epoch, metrics, ...). ``half=True`` stores float weights as fp16 (they are cast
    back to fp32 on load).
    """
    model_ = getattr(model, "module", model)
    words = vocab.to_list() if hasattr(vocab, "to_list") else list(vocab)
    atomic_save({"format": INFERENCE_FORMAT, "model": _state_dict(model_, half), "config": dict(model_.config),
                 "vocab": words, "meta": dict(meta or {})}, path)


def model_from_checkpoint(obj: dict, path: str = "<checkpoint>"):
    """Rebuild ``(model, vocab)`` from a loaded checkpoint dict (either format); model in eval mode."""
    from ..model import build_model_from_config
    from ..text import Vocabulary

    try:
        vocab = Vocabulary(obj["vocab"])
        model = build_model_from_config(obj["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its config: {e}") from None
    state = obj["model"]
    ref = model.state_dict()
    state = {k: (v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model config: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, vocab


def load_inference(path: str, map_location: Any = "cpu"):
    """Load ``(model, vocab, meta)`` from an inference or a full training checkpoint; the model is
    in eval mode, on ``map_location`` when that names a device.

    Raises :class:`CheckpointError` naming ``path`` when the file is missing, truncated,
    not a checkpoint or of an unknown format.
    """
    obj = read_checkpoint(path, map_location)
    model, vocab = model_from_checkpoint(obj, os.fspath(path))
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    meta = dict(obj.get("meta") or {})
    if obj["format"] == TRAIN_FORMAT:
        meta.setdefault("epoch", obj.get("epoch"))
        meta.setdefault("step", obj.get("step"))
    return model, vocab, meta


def export_inference(train_ckpt: str, out: str, half: bool = False) -> dict:
    """Write the inference-only checkpoint of a training checkpoint (or re-write an inference
    one); returns its meta."""
    obj = read_checkpoint(train_ckpt)
    meta = dict(obj.get("meta") or {})
    if obj["format"] == TRAIN_FORMAT:
        meta.update(epoch=obj.get("epoch"), step=obj.get("step"), source=os.path.basename(os.fspath(train_ckpt)))
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in obj["model"].items()}
    atomic_save({"format": INFERENCE_FORMAT, "model": state, "config": obj["config"], "vocab": list(obj["vocab"]),
                 "meta": meta}, out)
    return meta


def backbone_state(ckpt: str) -> dict[str, torch.Tensor]:
    """The backbone weights of an MMI checkpoint (inference or training), keyed as the backbone's
    own state dict; :class:`CheckpointError` when it holds none."""
    state = {k[len("backbone."):]: v for k, v in read_checkpoint(ckpt)["model"].items() if k.startswith("backbone.")}
    if not state:
        raise CheckpointError(f"{ckpt}: no backbone weights in it (no 'backbone.*' keys)")
    return state


def export_backbone(ckpt: str, out: str) -> int:
    """Write :func:`backbone_state` of ``ckpt`` as a plain state dict, the form a
    ``backbone_weights`` file path reads; returns the number of tensors."""
    state = backbone_state(ckpt)
    atomic_save(state, out)
    return len(state)


def average_weights(ckpts: list[str], out: str) -> dict:
    """Write the inference checkpoint whose weights are the mean of ``ckpts``' (a weight
    average, "model soup": runs fine-tuned from one starting point land in one basin, where
    their mean is often better than each). Floating-point tensors are averaged in fp32 and
    stored in the first's dtype; integer buffers (BatchNorm's step counts) and the config
    are the first's. :class:`CheckpointError` when the checkpoints differ in keys, shapes or
    vocabulary. Returns the meta written (``average_of``: each input's file, epoch, step, val)."""
    if len(ckpts) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    objs = [read_checkpoint(c) for c in ckpts]
    first = objs[0]
    for path, obj in zip(ckpts[1:], objs[1:]):
        a, b = first["model"], obj["model"]
        if a.keys() != b.keys():
            diff = sorted(set(a) ^ set(b))
            raise CheckpointError(f"{path}: not the network of {ckpts[0]} (keys differ: {diff[:3]}...)")
        shapes = [k for k in a if a[k].shape != b[k].shape]
        if shapes:
            raise CheckpointError(f"{path}: {shapes[0]} is {tuple(b[shapes[0]].shape)}, "
                                  f"{tuple(a[shapes[0]].shape)} in {ckpts[0]}")
        if list(obj["vocab"]) != list(first["vocab"]):
            raise CheckpointError(f"{path}: another vocabulary than {ckpts[0]}'s")
    state = {}
    for k, v in first["model"].items():
        if v.is_floating_point():
            state[k] = (sum(o["model"][k].float() for o in objs) / len(objs)).to(v.dtype)
        else:
            state[k] = v
    metas = [dict(o.get("meta") or {}) for o in objs]
    meta = {key: metas[0][key] for key in ("dataset", "split_by", "word_vectors") if key in metas[0]}
    meta["average_of"] = [{"file": os.fspath(c), "epoch": o.get("epoch", m.get("epoch")),
                           "step": o.get("step", m.get("step")), "val": m.get("val")}
                          for c, o, m in zip(ckpts, objs, metas)]
    atomic_save({"format": INFERENCE_FORMAT, "model": state, "config": first["config"],
                 "vocab": list(first["vocab"]), "meta": meta}, out)
    return meta


# ----------------------------------------------------------------------------- RNG state

def get_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain lists (weights_only safe)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": [str(name), [int(x) for x in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])


# ----------------------------------------------------------------------------- training

def save_training(path: str, *, model: torch.nn.Module, vocab, optimizer, scheduler, scaler, epoch: int, step: int,
                  best: float, run_config: dict, meta: dict | None = None, step_in_epoch: int = 0,
                  rng: list[dict] | None = None) -> None:
    """Write the full training checkpoint (format ``mmi-train/1``, see the module docstring).

    ``epoch``: epochs completed; ``step_in_epoch``: optimiser steps already done in epoch
    ``epoch`` (a mid-epoch save), 0 at an epoch boundary; ``rng``: one :func:`get_rng_state`
    per process (rank order), default this process's.
    """
    model_ = getattr(model, "module", model)
    words = vocab.to_list() if hasattr(vocab, "to_list") else list(vocab)
    atomic_save({
        "format": TRAIN_FORMAT,
        "model": _state_dict(model_),
        "config": dict(model_.config),
        "vocab": words,
        "meta": dict(meta or {}),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": int(epoch),
        "step": int(step),
        "step_in_epoch": int(step_in_epoch),
        "best": float(best),
        "rng": rng if rng is not None else [get_rng_state()],
        "run_config": run_config,
    }, path)


def load_training(path: str, map_location: Any = "cpu") -> dict:
    """The dict of a training checkpoint; :class:`CheckpointError` when ``path`` is not one."""
    obj = read_checkpoint(path, map_location)
    if obj["format"] != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is an inference checkpoint ({obj['format']}); --resume needs a training "
                              f"checkpoint such as RUN/last.pt")
    return obj


def main(argv=None) -> None:
    """``python -m mmi.engine.checkpoint backbone CKPT OUT``: the backbone of a checkpoint as a state
    dict; ``... average CKPT CKPT [...] --out OUT``: the checkpoint of their mean weights."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backbone", help="write a checkpoint's backbone weights as a plain state dict")
    b.add_argument("checkpoint")
    b.add_argument("out")
    a = sub.add_parser("average", help="write the inference checkpoint of the mean of checkpoints' weights")
    a.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one network (training or inference)")
    a.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        if args.command == "backbone":
            n = export_backbone(args.checkpoint, args.out)
            print(f"{args.out}: {n} backbone tensors of {args.checkpoint}")
        else:
            average_weights(args.checkpoints, args.out)
            print(f"{args.out}: the mean of {len(args.checkpoints)} checkpoints' weights")
    except CheckpointError as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
