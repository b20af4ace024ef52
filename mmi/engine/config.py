"""Run configuration: defaults, JSON files, command-line overrides, validation.

A config file (``configs/*.json``) is a partial nested dict merged onto :data:`DEFAULTS`;
every key it names must exist there (``model.overrides`` excepted: those are checked
against the model preset). Command-line overrides are ``key=value`` pairs with dotted keys::

    python train.py --config configs/demo_synref.json --set optim.lr=0.001 data.batch_size=8 \\
        model.overrides.imi=false optim.milestones=[30,40] output=runs/x

A value is read as JSON when it parses (numbers, true/false/null, lists, quoted strings)
and as a plain string otherwise. The resolved config is written to ``<output>/config.json``.

Optimiser presets (``optim.preset``; the explicit keys of a config win over the preset):

- ``paper``: Adam, lr 0.005, step decay x0.1 at epochs 40 and 45, 1 warm-up epoch. The
  paper states "lr 0.005 with a step decay schedule"; the milestones and the warm-up are a
  reconstruction (VLT's milestones; lr 0.005 with Adam needs a warm-up to start stably).
- ``vlt``: Adam, lr 1e-3, x0.1 at epochs 40 and 45, no warm-up (VLT's public code).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Sequence

from .precision import fp16_refusal

OPTIM_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"name": "adam", "lr": 0.005, "schedule": "step", "milestones": [40, 45], "gamma": 0.1,
              "warmup_epochs": 1, "warmup_iters": 0},
    "vlt": {"name": "adam", "lr": 0.001, "schedule": "step", "milestones": [40, 45], "gamma": 0.1,
            "warmup_epochs": 0, "warmup_iters": 0},
}

DEFAULTS: dict[str, Any] = {
    "model": {
        "preset": "demo",            # paper_darknet53 | paper_swin_b | demo | tiny
        "overrides": {},             # any model setting (attention, imi, lfr, decoder_layers, image_size, ...)
    },
    "data": {
        "dataset": "synref",         # refcoco | refcoco+ | refcocog | synref | synref_long
        "root": "data",
        "split_by": None,            # unc | google | umd; None: the dataset's default
        "image_dir": None,           # None: <root>/images/train2014 (COCO) or <root>/images/<dataset>
        "t_max": None,               # None: 15, 20 for refcocog and synref_long
        "batch_size": 8,             # per process (GPU); the total is batch_size x world size
        "workers": 2,
        "train_split": "train",
        "val_split": "val",
        "val_max_items": None,       # evaluate only the first N expressions of val (None: all)
        "uint8_transfer": False,     # training batches leave the loader as uint8 and are normalised on
                                     # the device: a quarter of the bytes per image, the same numbers
        "persistent_workers": True,  # the training loader's processes live across epochs instead of
                                     # starting anew each epoch: the same batches (off with a memo
                                     # keyed by name, whose names the workers would not see grow)
    },
    "optim": {
        "preset": None,              # paper | vlt | None; see the module docstring
        "name": "adam",              # adam | adamw
        "lr": 0.001,
        "weight_decay": 0.0,
        "schedule": "step",          # step | constant | cosine (over all epochs, after the warm-up)
        "final_factor": 0.0,         # cosine: lr multiplier reached at the last step
        "cosine_over": "steps",      # cosine: over the run's steps, or "time": over train.time_budget_min
        "milestones": [40, 45],      # epochs at which lr is multiplied by gamma
        "gamma": 0.1,
        "warmup_epochs": 0,          # linear warm-up, in epochs ...
        "warmup_iters": 0,           # ... or in iterations (the larger of the two wins)
        "warmup_factor": 0.001,      # lr multiplier at the first warm-up step
        "grad_clip": 0.0,            # max global grad norm; 0 disables
        "backbone_lr_mult": 1.0,     # lr of a trained backbone = lr x this (0.1: fine-tune it gently)
    },
    "train": {
        "epochs": 50,
        "amp": "off",                # off | bf16 | fp16 (fp16 uses a GradScaler) | auto (precision.py)
        "channels_last": False,      # NHWC memory format on CUDA (helps convolutional backbones)
        "seed": 0,
        "device": "auto",            # auto | cpu | cuda
        "max_steps_per_epoch": None, # cap the steps of each epoch (CPU runs, smoke tests)
        "time_budget_min": None,     # stop (saving last.pt) after this many minutes
        "val_every": 1,              # validate every N epochs; 0 disables validation and best.pt
        "save_every_steps": 0,       # also write last.pt every N optimiser steps (0: per epoch only)
        "log_every": 10,             # steps between log.jsonl lines
        "cache_backbone_gb": 0.0,    # with model.overrides.frozen_backbone (or backbone_frozen_blocks): memo the
                                     # outputs of the fixed backbone (or of its fixed blocks), GB of RAM, fp16
        "feature_cache_file": None,  # ... read at the start and written after each epoch (feature_cache.py)
        "cache_by_name": True,       # ... and the training loader skips decoding the images the memo holds
                                     # (named by file, size, mtime, S and scaling; exact: the same batches)
        "init_from": None,           # a checkpoint (inference or training) whose weights and vocabulary start a new run
        "sync_bn": False,            # SyncBatchNorm across GPUs (CUDA only)
        "find_unused_parameters": False,
        "deterministic": False,      # deterministic cuDNN/cuBLAS kernels (slower; for exact GPU comparisons)
    },
    "word_vectors": {
        "source": "spacy",           # glove | spacy | random
        "glove": None,               # path of a GloVe text file when source is glove
    },
    "eval": {"threshold": 0.5, "batch_size": 8},
    "output": "runs/default",
}

AMP_MODES = ("off", "bf16", "fp16", "auto")


class ConfigError(ValueError):
    """A bad config: unknown key, wrong value, missing path. The message names the key or path."""


def _merge(base: dict, extra: dict, prefix: str = "") -> dict:
    """``extra`` merged onto ``base`` (copies); unknown keys raise ConfigError."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        name = f"{prefix}{key}"
        if name == "model.overrides":
            if not isinstance(value, dict):
                raise ConfigError(f"config key 'model.overrides' must be an object, got {value!r}")
            out[key] = {**out.get(key, {}), **copy.deepcopy(value)}
        elif key not in base:
            known = ", ".join(sorted(f"{prefix}{k}" for k in base))
            raise ConfigError(f"unknown config key '{name}' (known here: {known})")
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{name}' must be an object, got {value!r}")
            out[key] = _merge(base[key], value, prefix=f"{name}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """JSON when it parses, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form key=value (e.g. optim.lr=0.001)")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override of '{part}'")
        node[parts[-1]] = parse_value(value)
    return out


def load_config(path: str | None, overrides: Sequence[str] | dict = ()) -> dict:
    """DEFAULTS <- the JSON file at ``path`` (may be None) <- overrides (``key=value`` pairs or a
    nested dict); validated without touching the file system (see :func:`check_paths`)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            with open(path, encoding="utf8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        data.pop("_comment", None)
        cfg = apply_layer(cfg, data)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    cfg = apply_layer(cfg, extra)
    validate(cfg)
    return cfg


def apply_layer(cfg: dict, layer: dict) -> dict:
    """Merge one layer (a config file or the overrides) onto ``cfg``. When the layer names
    ``optim.preset``, the preset's values are applied first and the layer's other keys win."""
    preset = layer.get("optim", {}).get("preset") if isinstance(layer.get("optim"), dict) else None
    if preset is not None:
        if preset not in OPTIM_PRESETS:
            raise ConfigError(f"config key 'optim.preset': unknown optimiser preset {preset!r}; "
                              f"choose one of {sorted(OPTIM_PRESETS)}")
        cfg = copy.deepcopy(cfg)
        cfg["optim"].update(copy.deepcopy(OPTIM_PRESETS[preset]))
    return _merge(cfg, layer)


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {message}")


def validate(cfg: dict) -> None:
    """Value checks that need no files: names, ranges, the model preset and its overrides."""
    from ..data.refer import DatasetError, check_name
    from ..model import PRESETS, resolve_config

    m, d, o, t = cfg["model"], cfg["data"], cfg["optim"], cfg["train"]
    _require(m["preset"] in PRESETS, "model.preset", f"unknown model preset {m['preset']!r}; choose one of {sorted(PRESETS)}")
    _require(m["overrides"].get("backbone_weights", "") is not None, "model.overrides.backbone_weights",
             "null is not accepted in a run config: say \"random\" to train the backbone from scratch, or name a file")
    try:
        resolve_config(m["preset"], 2, **model_overrides(cfg))  # raises on an unknown setting
    except ValueError as e:
        raise ConfigError(f"config key 'model.overrides': {e}") from None
    try:
        check_name(d["dataset"], d["split_by"])
    except DatasetError as e:
        raise ConfigError(f"config key 'data.dataset'/'data.split_by': {e}") from None
    if "t_max" in m["overrides"] and d["t_max"] is not None:
        _require(m["overrides"]["t_max"] == d["t_max"], "data.t_max",
                 f"{d['t_max']} differs from model.overrides.t_max {m['overrides']['t_max']}")
    for key in ("batch_size",):
        _require(isinstance(d[key], int) and d[key] >= 1, f"data.{key}", f"must be a positive integer, got {d[key]!r}")
    _require(isinstance(d["workers"], int) and d["workers"] >= 0, "data.workers", f"must be >= 0, got {d['workers']!r}")
    _require(isinstance(d["uint8_transfer"], bool), "data.uint8_transfer", f"must be true or false, got {d['uint8_transfer']!r}")
    _require(isinstance(d["persistent_workers"], bool), "data.persistent_workers",
             f"must be true or false, got {d['persistent_workers']!r}")
    _require(o["name"] in ("adam", "adamw"), "optim.name", f"unknown optimiser {o['name']!r}; choose adam or adamw")
    _require(isinstance(o["lr"], (int, float)) and o["lr"] > 0, "optim.lr", f"must be a positive number, got {o['lr']!r}")
    _require(isinstance(o["backbone_lr_mult"], (int, float)) and o["backbone_lr_mult"] >= 0, "optim.backbone_lr_mult",
             f"must be a number >= 0, got {o['backbone_lr_mult']!r}")
    _require(o["schedule"] in ("step", "constant", "cosine"), "optim.schedule",
             f"unknown schedule {o['schedule']!r}; choose step, constant or cosine")
    _require(o["cosine_over"] in ("steps", "time"), "optim.cosine_over",
             f"choose steps or time, got {o['cosine_over']!r}")
    if o["cosine_over"] == "time":
        _require(o["schedule"] == "cosine", "optim.cosine_over", "'time' needs optim.schedule=cosine")
        _require(isinstance(t["time_budget_min"], (int, float)) and t["time_budget_min"] > 0, "train.time_budget_min",
                 "optim.cosine_over=time needs a positive time budget (minutes): the cosine ends when it is spent")
    _require(isinstance(o["final_factor"], (int, float)) and 0 <= o["final_factor"] <= 1, "optim.final_factor",
             f"must be a number in [0, 1], got {o['final_factor']!r}")
    _require(isinstance(o["milestones"], list) and all(isinstance(x, int) for x in o["milestones"]),
             "optim.milestones", f"must be a list of epoch numbers, got {o['milestones']!r}")
    _require(isinstance(t["epochs"], int) and t["epochs"] >= 1, "train.epochs", f"must be a positive integer, got {t['epochs']!r}")
    _require(t["amp"] in AMP_MODES, "train.amp", f"unknown mode {t['amp']!r}; choose one of {list(AMP_MODES)}")
    _require(t["device"] in ("auto", "cpu", "cuda"), "train.device", f"choose auto, cpu or cuda, got {t['device']!r}")
    _require(t["max_steps_per_epoch"] is None or (isinstance(t["max_steps_per_epoch"], int) and t["max_steps_per_epoch"] >= 1),
             "train.max_steps_per_epoch", "must be null or a positive integer")
    _require(isinstance(t["val_every"], int) and t["val_every"] >= 0, "train.val_every", "must be an integer >= 0")
    _require(isinstance(t["deterministic"], bool), "train.deterministic", f"must be true or false, got {t['deterministic']!r}")
    _require(isinstance(t["cache_by_name"], bool), "train.cache_by_name", f"must be true or false, got {t['cache_by_name']!r}")
    if refusal := fp16_refusal(t["amp"], t["device"], "config"):  # "auto": the trainer checks the device it gets
        raise ConfigError(refusal)
    src = cfg["word_vectors"]["source"]
    _require(src in ("glove", "spacy", "random"), "word_vectors.source", f"choose glove, spacy or random, got {src!r}")
    if src == "glove":
        _require(bool(cfg["word_vectors"]["glove"]), "word_vectors.glove", "a GloVe file path is needed when source is glove")
    thr = cfg["eval"]["threshold"]
    _require(isinstance(thr, (int, float)) and 0 < thr < 1, "eval.threshold", f"must lie in (0, 1), got {thr!r}")
    _require(isinstance(cfg["output"], str) and cfg["output"], "output", "must be a folder path")


def model_overrides(cfg: dict) -> dict:
    """The model overrides with ``t_max`` filled in from the data settings when the model does not set it."""
    from ..data import default_t_max

    over = dict(cfg["model"]["overrides"])
    if "t_max" not in over:
        over["t_max"] = cfg["data"]["t_max"] if cfg["data"]["t_max"] is not None else default_t_max(cfg["data"]["dataset"])
    return over


def check_paths(cfg: dict, splits: Sequence[str] | None = None, resume: bool = False) -> None:
    """Files the run needs exist (data root, dataset folder, annotations, refs, images, GloVe,
    and the backbone weights unless ``resume``: a resumed run takes them from its checkpoint).

    Raises ConfigError naming the first missing path and the config key that points at it.
    """
    from ..data.refer import check_name, default_image_dir

    d = cfg["data"]
    root, name = d["root"], d["dataset"]
    split_by = check_name(name, d["split_by"])
    image_dir = d["image_dir"] or default_image_dir(root, name)
    checks = [
        ("data.root", root, True),
        ("data.root/data.dataset", os.path.join(root, name), True),
        ("data.root/data.dataset", os.path.join(root, name, "instances.json"), False),
        ("data.split_by", os.path.join(root, name, f"refs({split_by}).p"), False),
        ("data.image_dir" if d["image_dir"] else "data.root", image_dir, True),
    ]
    if cfg["word_vectors"]["source"] == "glove":
        checks.append(("word_vectors.glove", cfg["word_vectors"]["glove"], False))
    if cfg["train"]["init_from"] and not resume:
        checks.append(("train.init_from", cfg["train"]["init_from"], False))
    for key, path, is_dir in checks:
        ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
        if not ok:
            what = "folder" if is_dir else "file"
            raise ConfigError(f"config key '{key}': {what} not found: {path}")
    if not resume:
        check_backbone_weights(cfg)


def check_backbone_weights(cfg: dict) -> None:
    """The backbone weights file of the model (its preset's, or ``model.overrides.backbone_weights``)
    exists; else a ConfigError naming the key, the file, where such weights come from, and
    how to train from random initialisation instead."""
    from ..backbones import WEIGHTS_HELP
    from ..model import resolve_config

    mc = resolve_config(cfg["model"]["preset"], 2, **model_overrides(cfg))
    weights = mc["backbone_weights"]
    if weights in (None, "random", "default") or os.path.isfile(weights):
        return
    key = ("model.overrides.backbone_weights" if "backbone_weights" in cfg["model"]["overrides"]
           else f"model.preset ({cfg['model']['preset']}'s backbone_weights)")
    raise ConfigError(f"config key '{key}': {mc['backbone']} weights file not found: {weights}. Where such weights "
                      f"come from: {WEIGHTS_HELP[mc['backbone']]}. Put the file there, or pass its path with --set "
                      f"model.overrides.backbone_weights=PATH (--set model.overrides.backbone_weights=random trains "
                      f"the backbone from scratch, which the paper does not)")


def save_config(cfg: dict, path: str) -> None:
    """Write the resolved config as indented JSON (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf8") as f:
        json.dump(cfg, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
