"""Shared checkpoint reading and key checking for the backbones.

Every PyTorch file is read with ``torch.load(..., weights_only=True)``. A bad file raises
:class:`WeightsError` (a ``ValueError``) whose message names the file and what is wrong:
the missing keys, the unexpected keys, or the keys whose shapes differ.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

_WRAPPER_KEYS = ("model", "state_dict")
_MAX_LISTED = 12


class WeightsError(ValueError):
    """A weights file that cannot be loaded into a backbone (the message names the file)."""


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def check_file(path: str | os.PathLike[str]) -> str:
    """Return ``path`` as a string; raise FileNotFoundError naming it when it is not a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path!r}")
    return path


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a PyTorch state dict: plain, or under a ``'model'`` / ``'state_dict'`` key.

    A leading ``module.`` (from DistributedDataParallel) is stripped from every key.
    Returns ``{key: tensor}``; raises :class:`WeightsError` naming the file when the file
    is not a loadable state dict.
    """
    path = check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, disallowed globals ...
        raise WeightsError(f"{path}: not a loadable PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key[len("module."):] if key.startswith("module.") else key
        state[name] = value
    return state


def load_checked(
    module: nn.Module,
    state: Mapping[str, Tensor],
    path: str,
    optional_prefixes: tuple[str, ...] = (),
) -> None:
    """Copy ``state`` into ``module`` after checking keys and shapes.

    Keys of ``module`` that start with one of ``optional_prefixes``, and every
    ``num_batches_tracked`` counter, may be absent (they keep their current values).
    Raises :class:`WeightsError` naming ``path`` and the missing, unexpected or
    wrongly-shaped keys.
    """
    own = module.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [
        k
        for k in own
        if k not in state and not k.endswith("num_batches_tracked") and not k.startswith(optional_prefixes)
    ]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_listing(shapes)}")
    if problems:
        name = type(module).__name__
        raise WeightsError(f"{path}: does not fit {name}: " + "; ".join(problems))
    merged = dict(own)
    for key, value in state.items():
        merged[key] = value.to(dtype=own[key].dtype)
    module.load_state_dict(merged, strict=True)
