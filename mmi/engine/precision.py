"""Which mixed precision a run uses: ``train.amp`` = off | bf16 | fp16 | auto.

``auto`` picks bf16 where the hardware computes it natively and full precision elsewhere:

- CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and later), else off;
- CPU: bf16 when the processor has AVX-512 BF16 or AMX-BF16 instructions (read from
  ``/proc/cpuinfo``; oneDNN then runs bf16 matrix products natively, and autocast keeps
  the losses, softmaxes and norms in fp32), else off: emulated bf16 is slower than fp32.

fp16 is never chosen by ``auto``: on a CPU the LSTM has no fp16 kernel.
"""
from __future__ import annotations

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
