"""Distributed data parallel on the CPU (gloo, two spawned processes).

Gradient check: two processes, each on half of a batch, must give the same averaged
gradients as one process on the whole batch. The model runs in eval mode: in train mode
BatchNorm normalises with the statistics of the local half-batch, so each half's forward
(and so its gradient) differs from the same samples inside the full batch; with the running
statistics (eval mode) every sample's output is independent of the rest of the batch, and
the check isolates what DDP does, the all-reduce of gradients. (The tiny preset has no
dropout; eval mode turns it off anyway.)

The same processes then check the unpadded evaluation sharding (every index gathered once)
and run one epoch of the real Trainer with world size 2 on the refer fixture.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

try:
    import fixtures_refer as fx
except ImportError:  # tests/ imported as a package
    from tests import fixtures_refer as fx

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    B, T = 4, 8
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate((3, 5, 8, 2)):
        mask[b, :n] = True
    words = torch.randint(2, 20, (B, T), generator=g) * mask
    return {"image": torch.randn(B, 3, 64, 64, generator=g), "words": words, "word_mask": mask,
            "mask": (torch.rand(B, 1, 64, 64, generator=g) > 0.5).float()}


def _loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    logits = model({k: batch[k] for k in ("image", "words", "word_mask")})["logits"]
    target = F.interpolate(batch["mask"], size=logits.shape[-2:], mode="area")
    return F.binary_cross_entropy_with_logits(logits, target)  # mean over the local batch


def _model() -> torch.nn.Module:
    from mmi.model import build_model

    torch.manual_seed(0)
    # lfr off: the training-only LFR branch does not run in eval mode, and DDP (without
    # find_unused_parameters) would wait forever for the gradients of its parameters
    return build_model("tiny", 20, lfr=False).eval()


def _worker(rank: int, world: int, port: int, out_dir: str, data_root: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel

    from mmi.engine.distributed import ShardSampler, all_gather_objects, all_reduce_mean, init_distributed

    info = init_distributed("cpu")
    assert info.distributed and info.backend == "gloo" and info.rank == rank
    # 1. gradients of the DDP halves
    model = DistributedDataParallel(_model())
    batch = _batch()
    half = {k: v[rank * 2:(rank + 1) * 2] for k, v in batch.items()}
    _loss(model, half).backward()
    grads = {n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None}
    # 2. unpadded sharding: 5 items over 2 ranks, gathered once each
    shards = all_gather_objects(list(ShardSampler(5, info.rank, info.world_size)))
    mean = all_reduce_mean(torch.tensor([float(rank)]))
    if rank == 0:
        torch.save({"grads": grads, "shards": shards, "mean": mean}, os.path.join(out_dir, "ddp.pt"))
    # 3. one epoch of the Trainer in this world of 2
    from mmi.engine.config import load_config
    from mmi.engine.trainer import train

    cfg = load_config(None, ["model.preset=tiny", "data.dataset=refcoco", f"data.root={data_root}",
                             "data.batch_size=1", "data.workers=0", "train.epochs=1", "train.device=cpu",
                             f"output={os.path.join(out_dir, 'run')}", "word_vectors.source=random"])
    summary = train(cfg, progress=False)
    torch.save(summary, os.path.join(out_dir, f"summary{rank}.pt"))
    from mmi.engine.distributed import exit_process

    exit_process(0)  # as train.py's workers end: without the interpreter's finalisation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    data_root = str(tmp_path / "data")
    fx.write_refer_fixture(data_root)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), data_root), nprocs=2, join=True)

    res = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single = _model()
    _loss(single, _batch()).backward()
    with_grad = {n: p.grad for n, p in single.named_parameters() if p.grad is not None}
    assert set(with_grad) == set(res["grads"]) == {n for n, _ in single.named_parameters()}
    for name, g in with_grad.items():
        assert torch.allclose(res["grads"][name], g, rtol=1e-4, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in with_grad.values())
    assert res["shards"] == [[0, 2, 4], [1, 3]]
    assert res["mean"].item() == pytest.approx(0.5)

    # the distributed Trainer: same summary on both ranks, 2 steps (3 refs, padded to 2 per rank)
    s0 = torch.load(tmp_path / "summary0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "summary1.pt", weights_only=True)
    assert s0 == s1 and s0["step"] == 2 and s0["last_val"]["count"] == 2  # val: 2 expressions, none twice
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["epoch"] == 1
    assert "world_size\": 2" in (tmp_path / "run" / "log.jsonl").read_text()


@pytest.mark.parametrize("world, finalised", [("2", False), ("1", True), ("", True)])
def test_exit_process_skips_finalisation_in_a_group_only(tmp_path, world, finalised):
    """A group's worker exits with its code and its printed output but without the interpreter's
    finalisation (no atexit handler runs: where the gloo abort happened); one process exits as usual."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import atexit, sys; atexit.register(lambda: print('finalised'))\n"
            "from mmi.engine.distributed import exit_process\n"
            "print('done', end=''); sys.stderr.write('err'); exit_process(7)\n")
    env = dict(os.environ, PYTHONPATH=root, WORLD_SIZE=world)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 7, res.stderr
    assert res.stdout == ("donefinalised\n" if finalised else "done") and res.stderr == "err"
