"""The training loop: one process per GPU (or one CPU process), resumable exactly.

Reproducibility: the model is initialised from ``train.seed`` on every rank; the data order
is a function of (seed, epoch) (``DistributedSampler``, also with one process) and the
expression drawn per object a function of (seed, epoch, index) (the dataset); the RNG states
of every rank go into each checkpoint. So ``--resume`` from ``last.pt`` (written at each
epoch's end, optionally every N steps, then at the exact sample position) reaches the same
weights as an uninterrupted run.

Outputs in ``cfg["output"]``: ``config.json`` (resolved), ``log.jsonl``, ``last.pt``, ``best.pt``
(by validation oIoU), ``curves.png``; see :mod:`mmi.engine.checkpoint` for the files' contents.
A new run refuses a folder that holds a run; ``resume="auto"`` resumes from its ``last.pt``
when there is one (:mod:`mmi.engine.output`).

SIGTERM / SIGINT during :meth:`Trainer.fit`: the handler only sets a flag; the current step
finishes, every rank learns of the flag (an all-reduce after each step) and all of them save
``last.pt`` at that exact sample position (mid-epoch), log an event and return with
``summary["signal"]`` set; ``train.py`` then exits with 128 + the signal number (143 for
SIGTERM, 130 for SIGINT). A second SIGINT interrupts at once.
"""
from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..data import EpochItems, build_dataset, collate, normalization, normalize_uint8
from ..model import build_model, build_model_from_config, resolve_config
from ..text import Vocabulary, word_vectors
from .checkpoint import (CheckpointError, get_rng_state, load_training, read_checkpoint, remove_partial_files,
                         save_training, set_rng_state)
from .config import ConfigError, check_paths, model_overrides, save_config
from .distributed import (DistInfo, EpochSampler, all_gather_objects, all_reduce_max_list,
                          all_reduce_mean, barrier, broadcast_object, cleanup, init_distributed)
from .output import AUTO, resolve_start
from .evaluate import evaluate, ignore_stop_signals
from .precision import autocast, fp16_refusal, resolve_amp
from .runlog import RunLogger, plot_curves


@dataclass
class _Window:
    """The steps since the log's last train line: when it began, how many, and the seconds
    spent waiting for the loader's next batch."""

    start: float
    steps: int = 0
    waited: float = 0.0

    def report(self, now: float, batch: int) -> dict[str, float]:
        """``window_images_per_s`` (images over the window's wall-clock: the steps, the waits
        for data, the log and any save) and ``data_wait`` (the share of that time spent waiting
        for the loader: near 0 when the step bounds the run, near 1 when the loader does)."""
        span = max(1e-9, now - self.start)
        return {"window_images_per_s": round(self.steps * batch / span, 2),
                "data_wait": round(min(1.0, self.waited / span), 3)}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without overwriting the last good checkpoint."""


def set_deterministic() -> None:
    """Deterministic kernels where torch has them (``train.deterministic``): cuDNN without
    autotuning, cuBLAS with a fixed workspace; ops without a deterministic CUDA kernel (e.g.
    bilinear upsampling's backward) warn and stay as they are."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_init(model: torch.nn.Module, state: dict) -> list[str]:
    """Load ``train.init_from``'s weights into ``model``; a refiner, region selector or word-places
    block the checkpoint lacks (a trained model given one) keeps its own initialisation. Returns the names of the modules
    left so; any other missing or unexpected key is a RuntimeError, as in a strict load."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = [k for k in missing if k.startswith(("refiner.", "selector.", "places."))]
    if unexpected or len(new) != len(missing):
        model.load_state_dict(state)  # raises, naming the keys
    return sorted({k.split(".")[0] for k in new})


def lr_factor(step: int, iters_per_epoch: int, optim: dict, total_steps: int | None = None,
              progress: float | None = None) -> float:
    """Multiplier of the base lr after ``step`` optimiser steps: linear warm-up from
    ``warmup_factor`` over max(warmup_iters, warmup_epochs x iters_per_epoch) steps, times
    ``gamma`` per milestone epoch passed (schedule ``step``), or times a half cosine from 1
    after the warm-up to ``final_factor`` at ``total_steps`` (schedule ``cosine``). With
    ``progress`` (0..1, the fraction of a time budget spent: ``optim.cosine_over=time``) the
    cosine runs over that fraction instead of over steps; the warm-up stays in steps."""
    factor = 1.0
    warm = max(int(optim["warmup_iters"]), int(round(float(optim["warmup_epochs"]) * iters_per_epoch)))
    if step < warm:
        w0 = float(optim["warmup_factor"])
        factor = w0 + (1.0 - w0) * step / warm
    if optim["schedule"] == "step":
        epoch = step // max(1, iters_per_epoch)
        factor *= float(optim["gamma"]) ** sum(epoch >= m for m in optim["milestones"])
    elif optim["schedule"] == "cosine":
        if progress is not None:
            t = min(1.0, max(0.0, float(progress)))
        elif total_steps is None:
            raise ValueError("the cosine schedule needs total_steps (or progress)")
        else:
            t = min(1.0, max(0, step - warm) / max(1, total_steps - warm))
        end = float(optim["final_factor"])
        factor *= end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    return factor


def build_optimizer(model: torch.nn.Module, optim: dict) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters. With ``backbone_lr_mult`` other than 1
    the trainable backbone parameters form a second group at ``lr * backbone_lr_mult``;
    group 0 is always the rest of the network. With 1 there is one group, as in checkpoints
    written before the option existed."""
    lr, mult = float(optim["lr"]), float(optim["backbone_lr_mult"])
    in_backbone = {id(p) for p in model.backbone.parameters()} if mult != 1.0 else set()
    head, backbone = [], []
    for p in model.parameters():
        if p.requires_grad:
            (backbone if id(p) in in_backbone else head).append(p)
    groups = [{"params": head, "lr": lr}] + ([{"params": backbone, "lr": lr * mult}] if backbone else [])
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, weight_decay=float(optim["weight_decay"]))


@dataclass
class _State:
    epoch: int = 0           # epochs completed
    step: int = 0            # optimiser steps done
    step_in_epoch: int = 0   # steps done inside epoch ``epoch``
    best: float = -1.0       # best validation oIoU
    last_val: dict = field(default_factory=dict)


class Trainer:
    """Builds everything a run needs from a resolved config, then :meth:`fit` trains it."""

    def __init__(self, cfg: dict, resume: str | None = None, progress: bool = True, overwrite: bool = False):
        """``resume``: a training checkpoint, ``"auto"`` (``<output>/last.pt`` when it exists,
        else a fresh run) or None (a fresh run: refused when ``output`` holds a run, unless
        ``overwrite``, which removes that run's files first)."""
        self.cfg, self.progress = cfg, progress
        # fail before any work, naming the missing path; "auto" without a last.pt is a fresh run
        resuming = bool(resume) and (resume != AUTO or os.path.exists(os.path.join(cfg["output"], "last.pt")))
        check_paths(cfg, resume=resuming)
        t, d = cfg["train"], cfg["data"]
        self.vectors = "from checkpoint"
        self.init_new: list[str] = []  # modules train.init_from's checkpoint lacks (load_init)
        self.info: DistInfo = init_distributed(t["device"])
        self.device = self.info.device
        self.out = cfg["output"]
        if refusal := fp16_refusal(t["amp"], self.device, "train"):
            raise ConfigError(refusal)
        if t["deterministic"]:
            set_deterministic()
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        asked = resume
        resume, self.partial_removed = self._resolve_start(resume, overwrite)
        self.signal = 0  # set by the SIGTERM/SIGINT handler during fit()
        ckpt = load_training(resume) if resume else None
        # train.init_from (a new run only): weights and vocabulary of another checkpoint
        self.init = read_checkpoint(t["init_from"]) if t["init_from"] and not ckpt else None
        self.state = _State()
        set_seed(int(t["seed"]))  # the same initial weights on every rank

        over = model_overrides(cfg)
        # on resume the checkpoint's architecture wins (and so its S and T)
        self._build_data(ckpt["config"] if ckpt else resolve_config(cfg["model"]["preset"], 2, **over), ckpt)
        self._build_model(over, ckpt)
        self.init = None  # only the set-up needs it

        self.sampler = DistributedSampler(self.train_ds, num_replicas=self.info.world_size, rank=self.info.rank,
                                          shuffle=True, seed=int(t["seed"]), drop_last=False)
        self._epoch_sampler = EpochSampler(self.sampler)  # (epoch, index) keys, the resumed epoch's skip: _loader
        self._persistent_loader: DataLoader | None = None  # see _loader (data.persistent_workers)
        self._val_loaders: dict = {}  # validation's loader, its processes kept between validations (evaluate)
        bs = int(d["batch_size"])
        # drop a last partial batch (BatchNorm cannot train on a batch of 1) unless that empties the epoch
        self.drop_last = len(self.sampler) >= bs
        full = len(self.sampler) // bs if self.drop_last else math.ceil(len(self.sampler) / bs)
        cap = t["max_steps_per_epoch"]
        self.iters_per_epoch = max(1, min(full, cap) if cap else full)

        o = cfg["optim"]
        self.optimizer = build_optimizer(self.model, o)
        ipe = self.iters_per_epoch
        total = ipe * int(t["epochs"])
        # optim.cosine_over=time: the loop sets self.progress (fraction of the time budget spent)
        self.by_time = o["schedule"] == "cosine" and o["cosine_over"] == "time"
        self.progress_spent = 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, ipe, o, total, self.progress_spent if self.by_time else None))
        self.amp = resolve_amp(t["amp"], self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

        if ckpt:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except ValueError as e:  # another number or size of parameter groups
                raise CheckpointError(
                    f"{resume}: its optimiser state does not fit this run ({e}); resume with the "
                    f"optim.backbone_lr_mult and model.overrides.frozen_backbone it was trained with") from None
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.state = _State(int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt.get("step_in_epoch", 0)),
                                float(ckpt.get("best", -1.0)), dict(ckpt.get("meta", {}).get("val") or {}))
            self.progress_spent = float(ckpt.get("meta", {}).get("time_progress", 0.0))  # cosine_over=time
            rng = ckpt["rng"]
            set_rng_state(rng[min(self.info.rank, len(rng) - 1)])
        else:
            set_seed(int(t["seed"]) + 1000 * self.info.rank)  # distinct dropout draws per rank

        self.logger = RunLogger(self.out, enabled=self.info.is_main)
        if self.info.is_main:
            os.makedirs(self.out, exist_ok=True)
            save_config(cfg, os.path.join(self.out, "config.json"))
            self.logger.log("event", self.state.epoch, self.state.step,
                            message="resume" if ckpt else "start", world_size=self.info.world_size,
                            step_in_epoch=self.state.step_in_epoch, resume=resume if ckpt else None,
                            resume_auto=asked == AUTO, partial_files_removed=self.partial_removed,
                            device=str(self.device), vocab=len(self.vocab), word_vectors=self.vectors,
                            backbone_weights=self.backbone_weights, amp=self.amp, init_new=self.init_new,
                            train_items=len(self.train_ds), iters_per_epoch=self.iters_per_epoch)

    # ------------------------------------------------------------------ set-up

    def _resolve_start(self, resume: str | None, overwrite: bool) -> tuple[str | None, list[str]]:
        """Rank 0 looks at the output folder (refusal, ``auto``, ``overwrite``, stale partial
        files) and every rank receives its decision, so all ranks start alike."""
        decision: tuple = ("ok", None, [])
        if self.info.is_main:
            try:
                path = resolve_start(self.out, resume, overwrite)
                decision = ("ok", path, remove_partial_files(self.out) if os.path.isdir(self.out) else [])
            except ConfigError as e:
                decision = ("error", str(e), [])
        decision = broadcast_object(decision)
        if decision[0] == "error":
            raise ConfigError(decision[1])
        return decision[1], decision[2]

    def _build_data(self, mc: dict, ckpt: dict | None) -> None:
        """Train (and val) datasets at the model's S and T; the vocabulary from the training
        expressions (fresh run) or the checkpoint (resume)."""
        t, d = self.cfg["train"], self.cfg["data"]
        self.norm = normalization(mc)
        common = dict(image_dir=d["image_dir"], split_by=d["split_by"], normalization=self.norm)
        self.train_ds = build_dataset(d["dataset"], d["root"], d["train_split"], mc["image_size"], None, mc["t_max"],
                                      train=True, seed=int(t["seed"]), uint8=bool(d["uint8_transfer"]), **common)
        self.val_ds = None
        if t["val_every"] > 0:
            self.val_ds = build_dataset(d["dataset"], d["root"], d["val_split"], mc["image_size"], None, mc["t_max"],
                                        train=False, **common)
        source = ckpt or self.init
        self.vocab = Vocabulary(source["vocab"]) if source else Vocabulary.from_sentences(self.train_ds.sentences())
        for ds in (self.train_ds, self.val_ds):
            if ds is not None:
                ds.set_vocab(self.vocab)

    def _build_model(self, over: dict, ckpt: dict | None) -> None:
        """The model (word vectors on a fresh run, weights on resume), on the device, DDP-wrapped
        when distributed: ``self.model`` the bare module, ``self.ddp`` what the loop calls."""
        t = self.cfg["train"]
        if ckpt:
            model = build_model_from_config(ckpt["config"])
            model.load_state_dict(ckpt["model"])
            self.vectors = ckpt.get("meta", {}).get("word_vectors", "from checkpoint")
            self.backbone_weights = ckpt.get("meta", {}).get("backbone_weights", "not recorded")
        elif self.init:
            model = build_model(self.cfg["model"]["preset"], len(self.vocab), **dict(over, backbone_weights="random"))
            try:
                self.init_new = load_init(model, self.init["model"])
            except RuntimeError as e:
                raise ConfigError(f"config key 'train.init_from': the weights of {t['init_from']} do not fit the "
                                  f"architecture of model.preset/model.overrides ({str(e).splitlines()[0]}); "
                                  f"give the overrides it was trained with") from None
            meta = self.init.get("meta") or {}
            self.vectors = f"from {t['init_from']}"
            self.backbone_weights = {"init_from": t["init_from"], "was": meta.get("backbone_weights", "not recorded")}
        else:
            model = build_model(self.cfg["model"]["preset"], len(self.vocab), **over)
            self.backbone_weights = model.backbone_weights_record  # "random" or {file, sha256, ...}
            wv = self.cfg["word_vectors"]
            table, self.vectors = word_vectors(self.vocab, dim=model.config["word_dim"],
                                               glove=wv["glove"] if wv["source"] == "glove" else None,
                                               spacy=wv["source"] == "spacy")
            model.set_word_vectors(table)
        model.to(self.device)
        if model.memoised_part() is not None and float(t["cache_backbone_gb"]) > 0:
            from ..model.feature_cache import FeatureCache

            model.feature_cache = FeatureCache(int(float(t["cache_backbone_gb"]) * 2**30))
            path = t["feature_cache_file"]
            if path and os.path.exists(path):
                try:
                    n = model.feature_cache.load(path, model.memoised_part())
                    print(f"feature cache: {n} images from {path}", flush=True)
                except ValueError as e:
                    print(f"warning: feature cache not used: {e}", flush=True)
        self.channels_last = bool(t["channels_last"]) and self.device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.info.distributed and t["sync_bn"] and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.ddp = model
        if self.info.distributed:
            self.ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                               find_unused_parameters=bool(t["find_unused_parameters"]))

    # ------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        d = self.cfg["data"]
        return {"dataset": d["dataset"], "split_by": self.train_ds.refer.split_by, "epoch": self.state.epoch,
                "step": self.state.step, "val": self.state.last_val, "word_vectors": self.vectors,
                "backbone_weights": self.backbone_weights, "time_progress": self.progress_spent,
                "output": self.out}

    def save(self, name: str) -> str:
        """Write ``<out>/<name>`` (full training state). Collective: call on every rank."""
        rng = all_gather_objects(get_rng_state())
        path = os.path.join(self.out, name)
        error = None
        if self.info.is_main:
            try:
                save_training(path, model=self.model, vocab=self.vocab, optimizer=self.optimizer,
                              scheduler=self.scheduler, scaler=self.scaler, epoch=self.state.epoch, step=self.state.step,
                              best=self.state.best, run_config=self.cfg, meta=self._meta(),
                              step_in_epoch=self.state.step_in_epoch, rng=rng)
            except CheckpointError as e:  # e.g. a full disk: the previous file is kept
                error = str(e)
                self.logger.log("event", self.state.epoch, self.state.step, message="save failed", detail=error)
        error = broadcast_object(error)  # every rank stops alike
        if error:
            raise CheckpointError(error)
        return path

    # ------------------------------------------------------------------ loop

    def _loader(self, epoch: int, skip_steps: int) -> DataLoader:
        """The training loader for ``epoch`` from its ``skip_steps``-th batch on; each index
        carries its epoch (``EpochSampler`` -> ``EpochItems``). With worker processes and
        ``data.persistent_workers``, one loader for the run whose processes live across epochs
        (in GPU leg c, 15 processes, each epoch's first step came 4.7-6.4 s after the validation,
        their start part of it); otherwise one loader per epoch."""
        self.train_ds.set_epoch(epoch)
        cache = self.model.feature_cache
        # a model that reads every image (a refiner) cannot have the memo leave them out of the batch
        by_name = cache is not None and self.cfg["train"]["cache_by_name"] and not self.model.reads_images
        if by_name:  # workers copy the dataset when the iterator starts: the names memoised so far
            self.train_ds.memo_names = cache.names()
        bs = int(self.cfg["data"]["batch_size"])
        workers = int(self.cfg["data"]["workers"])
        self._epoch_sampler.set_epoch(epoch, skip_steps * bs)
        persistent = bool(workers) and self.cfg["data"]["persistent_workers"] and not by_name
        if persistent and self._persistent_loader is not None:
            return self._persistent_loader
        # the workers' seeds from a generator of their own: the global RNG untouched
        gen = torch.Generator().manual_seed(int(self.cfg["train"]["seed"]) * 100003 + (0 if persistent else epoch))
        loader = DataLoader(EpochItems(self.train_ds), batch_size=bs, sampler=self._epoch_sampler, num_workers=workers,
                            collate_fn=collate, drop_last=self.drop_last, pin_memory=self.device.type == "cuda",
                            worker_init_fn=ignore_stop_signals if workers else None, persistent_workers=persistent,
                            generator=gen)
        if persistent:
            self._persistent_loader = loader
        return loader

    def _step(self, batch: dict) -> torch.Tensor:
        """One optimiser step; returns the rank-averaged (loss, loss_mask, loss_lfr)."""
        t, o = self.cfg["train"], self.cfg["optim"]
        image = batch["image"]  # None when the memo serves every image (data.collate)
        if image is not None:
            image = image.to(self.device, non_blocking=True)
            if image.dtype == torch.uint8:  # data.uint8_transfer: normalised here, on the device
                image = normalize_uint8(image, self.norm)
            if self.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
        inputs = {"image": image, "words": batch["words"].to(self.device), "word_mask": batch["word_mask"].to(self.device),
                  "mask": batch["mask"].to(self.device, non_blocking=True).float()}
        if "image_names" in batch:
            inputs.update(image_names=batch["image_names"], image_present=batch["image_present"])
        with autocast(self.device, self.amp):
            out = self.ddp(inputs)
        loss = out["loss"]
        zero = torch.zeros((), device=loss.device)
        parts = torch.stack([loss.detach().float(), out.get("loss_mask", zero).detach().float(),
                             out.get("loss_lfr", zero).detach().float()])
        parts = all_reduce_mean(parts)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # checked after the backward is queued, not before: the check waits for the GPU, and the
        # backward's kernels are launched meanwhile (the step is launch-bound at small batches)
        if not bool(torch.isfinite(parts).all()):
            return parts  # the caller stops the run before any weight changes
        if float(o["grad_clip"]) > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(o["grad_clip"]))
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return parts

    def _non_finite(self, parts: torch.Tensor, epoch: int) -> NonFiniteLossError:
        last = os.path.join(self.out, "last.pt")
        where = f"{last} (epoch {self.state.epoch})" if os.path.exists(last) else "none yet (no last.pt written)"
        msg = (f"non-finite loss at epoch {epoch + 1}, step {self.state.step + 1}: loss={parts[0].item()}, "
               f"loss_mask={parts[1].item()}, loss_lfr={parts[2].item()}. Training stopped; the weights were not "
               f"updated with it and the last good checkpoint is {where}. Try a lower optim.lr, a warm-up "
               f"(optim.warmup_epochs), optim.grad_clip, or train.amp=off.")
        self.logger.log("event", epoch, self.state.step, message="non-finite loss", detail=msg)
        return NonFiniteLossError(msg)

    def validate(self, epoch: int) -> dict:
        t = self.cfg["train"]
        res = evaluate(self.model, self.val_ds, self.device, threshold=float(self.cfg["eval"]["threshold"]),
                       batch_size=int(self.cfg["eval"]["batch_size"]), workers=int(self.cfg["data"]["workers"]),
                       amp=self.amp, records=False, max_items=self.cfg["data"]["val_max_items"], dist_info=self.info,
                       channels_last=self.channels_last,
                       loaders=self._val_loaders if self.cfg["data"]["persistent_workers"] else None)
        return res["totals"]

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal = signum  # acted on after the current step
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _stop_requested(self, over_budget: bool) -> bool:
        """Collective: True on every rank when any rank is over the time budget or got a signal
        (``self.signal`` then holds that signal on every rank). With ``optim.cosine_over=time``
        it also sets ``self.progress_spent`` (the largest fraction of the budget spent on any
        rank), which the next scheduler step reads: every rank gets the same lr."""
        progress = 0.0
        if self.by_time:
            progress = min(1.0, (time.time() - self.budget_start) / (60 * float(self.cfg["train"]["time_budget_min"])))
        over, sig, progress = all_reduce_max_list([float(over_budget), float(self.signal), progress], self.device)
        self.signal = int(sig)
        if self.by_time:
            self.progress_spent = max(self.progress_spent, progress)
        return bool(over) or self.signal != 0

    def _stopped_by_signal(self, epoch: int) -> None:
        name = signal.Signals(self.signal).name
        self.logger.log("event", epoch, self.state.step, message=f"stopped by {name}", signal=self.signal,
                        step_in_epoch=self.state.step_in_epoch, checkpoint=os.path.join(self.out, "last.pt"))

    def fit(self) -> dict:
        """Train from the current state to ``train.epochs``; returns a summary dict. SIGTERM and
        SIGINT stop it after the current step with ``last.pt`` saved (see the module docstring)."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._fit()
        finally:
            self._persistent_loader = None  # its worker processes end with it
            self._val_loaders.clear()
            for sig, old in handlers.items():
                signal.signal(sig, old)

    def _fit(self) -> dict:
        t = self.cfg["train"]
        epochs, budget = int(t["epochs"]), t["time_budget_min"]
        start_time = time.time()
        if self.by_time:  # a resumed leg continues the budget (and the cosine) where the last one stopped
            if self.progress_spent >= 1.0:  # its cosine has ended: the run is complete, nothing to train
                self.logger.log("event", self.state.epoch, self.state.step, message="time budget already spent")
                return self.finish(False)
            start_time -= self.progress_spent * 60 * float(budget)
        self.budget_start = start_time
        stopped_early = False
        bs = int(self.cfg["data"]["batch_size"]) * self.info.world_size
        first_epoch = self.state.epoch
        while self.state.epoch < epochs and not stopped_early:
            epoch = self.state.epoch
            if epoch > first_epoch and self._stop_requested(False):  # a signal during the last validation or save
                stopped_early = True
                self._stopped_by_signal(epoch)
                break
            skip = self.state.step_in_epoch
            bar = None
            if self.progress and self.info.is_main:
                from tqdm import tqdm

                bar = tqdm(total=self.iters_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}",
                           dynamic_ncols=True, leave=False)
            sums, count, tick = np.zeros(3), 0, time.time()
            window = _Window(tick)  # what the log reports since its last train line
            self.ddp.train()
            asked = time.time()  # from here to the batch's arrival: waiting for the loader (its start included)
            batches = iter(self._loader(epoch, skip) if skip < self.iters_per_epoch else [])
            while True:
                batch = next(batches, None)
                if batch is None:
                    break
                window.waited += time.time() - asked
                parts = self._step(batch)
                if not bool(torch.isfinite(parts).all()):
                    if bar is not None:
                        bar.close()
                    raise self._non_finite(parts, epoch)
                self.state.step += 1
                self.state.step_in_epoch += 1
                vals = parts.tolist()
                sums += vals
                count += 1
                speed = bs / max(1e-9, time.time() - tick)
                tick = time.time()
                window.steps += 1
                if bar is not None:
                    bar.set_postfix(loss=f"{vals[0]:.4f}", img_s=f"{speed:.1f}")
                    bar.update(1)
                if self.state.step % max(1, int(t["log_every"])) == 0 or self.state.step_in_epoch == 1:
                    self.logger.log("train", epoch + 1, self.state.step, loss=vals[0], loss_mask=vals[1],
                                    loss_lfr=vals[2], lr=self.lr_used, images_per_s=round(speed, 2),
                                    **window.report(tick, bs))
                    window = _Window(tick)
                if t["save_every_steps"] and self.state.step % int(t["save_every_steps"]) == 0:
                    self.save("last.pt")
                if self._stop_requested(budget is not None and time.time() - start_time > 60 * float(budget)):
                    stopped_early = True
                    break
                if self.state.step_in_epoch >= self.iters_per_epoch:
                    break
                asked = time.time()
            if bar is not None:
                bar.close()
            if count:
                m = sums / count
                self.logger.log("epoch", epoch + 1, self.state.step, loss=m[0], loss_mask=m[1], loss_lfr=m[2])
            if stopped_early and self.signal:
                # also after an epoch's last step: the resumed run validates and closes the epoch
                self.save("last.pt")  # mid-epoch: --resume continues from this sample on
                self._stopped_by_signal(epoch + 1)
                break
            schedule_end = stopped_early and self.by_time  # the cosine over time has reached its end
            if stopped_early and not schedule_end and self.state.step_in_epoch < self.iters_per_epoch:
                self.save("last.pt")  # mid-epoch: --resume continues from this sample on
                self.logger.log("event", epoch + 1, self.state.step, message="time budget reached")
                break
            if schedule_end:  # the run is complete: close the partial epoch with validation and best.pt
                self.progress_spent = 1.0  # the budget may run out between the last step's lr update and this check
                for g, lam, base in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, self.scheduler.base_lrs):
                    g["lr"] = base * lam(self.scheduler.last_epoch)
                self.logger.log("event", epoch + 1, self.state.step, message="time budget reached (end of the cosine)",
                                step_in_epoch=self.state.step_in_epoch)
            self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
            is_val = self.val_ds is not None and ((epoch + 1) % int(t["val_every"]) == 0 or epoch + 1 == epochs
                                                  or schedule_end)
            improved = False
            if is_val:
                self.state.last_val = self.validate(epoch)
                self.logger.log("val", epoch + 1, self.state.step, **self.state.last_val)
                improved = self.state.last_val["oIoU"] > self.state.best
                if improved:
                    self.state.best = self.state.last_val["oIoU"]
                if self.info.is_main and self.progress:
                    v = self.state.last_val
                    print(f"epoch {epoch + 1}: val oIoU {100 * v['oIoU']:.2f}  mIoU {100 * v['mIoU']:.2f}  "
                          f"Prec@0.5 {100 * v['Prec@0.5']:.2f}" + ("  (best)" if improved else ""), flush=True)
            self.save("last.pt")
            if improved:
                self.save("best.pt")
            self._save_feature_cache()
        return self.finish(stopped_early)

    def _save_feature_cache(self) -> None:
        """Write the backbone memo to ``train.feature_cache_file`` (main rank) when it grew (only
        its names file when names alone are new: FeatureCache.save)."""
        cache, path = self.model.feature_cache, self.cfg["train"]["feature_cache_file"]
        if cache is None or not path or not (cache.unsaved or cache.unsaved_names) or not self.info.is_main:
            return
        try:
            cache.save(path, self.model.memoised_part())
        except OSError as e:  # a full disk must not stop the run: the memo is only a speed-up
            print(f"warning: could not write the feature cache {path}: {e}", flush=True)

    def finish(self, stopped_early: bool) -> dict:
        if self.info.is_main:
            self.logger.log("event", self.state.epoch, self.state.step, message="end", stopped_early=stopped_early,
                            signal=(self.signal or None) if stopped_early else None)
            self.logger.close()
            try:
                plot_curves(self.logger.path, os.path.join(self.out, "curves.png"))
            except Exception as e:  # a plot must never lose a finished run
                print(f"warning: could not draw {self.out}/curves.png: {e}")
        return {"epoch": self.state.epoch, "step": self.state.step, "best_oIoU": self.state.best,
                "last_val": self.state.last_val, "stopped_early": stopped_early, "output": self.out,
                "signal": (self.signal or None) if stopped_early else None, "step_in_epoch": self.state.step_in_epoch}


def train(cfg: dict, resume: str | None = None, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run training for a resolved config (see :mod:`mmi.engine.config`); the process group is
    torn down at the end. ``resume``: a checkpoint, ``"auto"`` or None (see :class:`Trainer`).
    Raises :class:`NonFiniteLossError` on a NaN/inf loss, :class:`ConfigError` for a new run
    into a folder holding a run. ``summary["signal"]`` is set when SIGTERM/SIGINT stopped it."""
    try:
        summary = Trainer(cfg, resume=resume, progress=progress, overwrite=overwrite).fit()
        # every rank finishes before any tears the group down: a gloo peer whose connections
        # close while the main rank still writes its outputs aborts the process (SIGABRT)
        barrier()
        return summary
    finally:
        cleanup()
