"""Distributed set-up from the environment torchrun sets, and the few collectives we need.

``torchrun --nproc_per_node N train.py ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``
(and ``MASTER_ADDR``/``MASTER_PORT``); a plain ``python train.py`` sets none of them and runs
as a single process. NCCL on GPUs, gloo on the CPU. There is no ``--local_rank`` argument.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator, NoReturn

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass
class DistInfo:
    """Where this process sits: rank, local_rank, world_size, device and backend (None: single process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` when CUDA is available (or asked for), else the CPU."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if preference == "cuda":
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Read RANK / LOCAL_RANK / WORLD_SIZE; start the process group when WORLD_SIZE > 1
    (NCCL on CUDA, gloo on the CPU) and pin this process to its GPU."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 0, 1, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        try:
            dist.init_process_group(**kwargs)
        except RuntimeError as e:
            if _env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                raise RuntimeError(
                    f"{e}\nThis worker group was restarted by torchrun, whose rendezvous store the workers share "
                    f"without a per-restart prefix: the restarted group can read the previous group's addresses. "
                    f"Run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment.") from e
            raise
    return DistInfo(rank, local_rank, world, dev, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``. A worker of a multi-process group (``WORLD_SIZE`` > 1, as torchrun
    sets) skips the interpreter's finalisation, its streams flushed: call it once the outputs
    are written and the process group torn down. With torch 2.14 a gloo worker whose peer still
    held its connections aborted in that finalisation ("terminate called without an active
    exception", SIGABRT, no Python frame) in about 1 exit of 20, failing a finished run;
    ``bench/bench_gloo_exit.py`` counts both exits (BENCHMARKS.md)."""
    if _env_int("WORLD_SIZE", 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over processes (a copy; ``t`` itself when single-process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def all_reduce_max_list(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of ``values`` over processes (one all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` when single-process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class ShardSampler(Sampler[int]):
    """Unpadded sharding for evaluation: rank r gets indices r, r + world, r + 2 world, ...

    Unlike DistributedSampler nothing is repeated to even out the shards, so gathering the
    shards gives every index exactly once.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class EpochSampler(Sampler[tuple[int, int]]):
    """``(epoch, index)`` keys for the indices of ``sampler`` in this epoch, the first ``skip``
    left out (``set_epoch``; to resume mid-epoch: ``sampler``'s order is a function of (seed,
    epoch), so the skipped part is the part already trained on). The training loop's one
    sampler; ``mmi.data.EpochItems`` reads its keys, so a loader's worker processes that
    outlive an epoch still read each item as it is in the epoch of its key."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler, self.epoch, self.skip = sampler, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)
        self.sampler.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for k, i in enumerate(self.sampler):
            if k >= self.skip:
                yield self.epoch, i

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)
