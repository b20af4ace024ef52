"""Which mixed precision a run uses: ``train.amp`` = off | bf16 | fp16 | auto.

``auto`` picks bf16 where the hardware computes it natively and full precision elsewhere:

- CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and later), else off;
- CPU: bf16 when the processor has AVX-512 BF16 or AMX-BF16 instructions (read from
  ``/proc/cpuinfo``; oneDNN then runs bf16 matrix products natively, and autocast keeps
  the losses, softmaxes and norms in fp32), else off: emulated bf16 is slower than fp32.

fp16 is never chosen by ``auto``: on a CPU the LSTM has no fp16 kernel, and asking for it
off CUDA is refused (:func:`fp16_refusal`: the messages of the config check, the trainer
and ``--eval-only``, in one place).
"""
from __future__ import annotations

import contextlib
import functools

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    return any(f in cpu_flags() for f in CPU_BF16_FLAGS)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``amp`` with ``auto`` replaced by what ``device`` supports (see the module doc)."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "off"
    return "off"


def fp16_refusal(amp: str, device: str | torch.device, where: str) -> str | None:
    """The message refusing fp16 (with loss scaling) off a CUDA device, None when ``amp`` runs
    on ``device``. ``device``: the device, or ``"auto"`` (not decided yet: nothing refused);
    ``where``: ``"config"`` (train.device as configured), ``"train"`` (the run's device) or
    ``"eval"`` (``--amp`` of ``--eval-only``)."""
    if amp != "fp16" or device == "auto" or torch.device(device).type == "cuda":
        return None
    if where == "eval":
        return f"--amp fp16 needs a CUDA device, the evaluation runs on {device}; use --amp bf16 or off"
    on = f" and train.device is {str(device)!r}" if where == "config" else f", this run is on {device}"
    return f"config key 'train.amp': fp16 (with loss scaling) needs a CUDA device{on}; use train.amp=bf16 or off on the CPU"


def autocast(device: torch.device, amp: str):
    """The autocast context of ``amp`` (off | bf16 | fp16 | auto) on ``device``; a null context for off."""
    amp = resolve_amp(amp, device)
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
