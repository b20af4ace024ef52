"""How often a finished two-process gloo group fails at exit, with the interpreter's normal
exit and with the exit ``train.py`` gives torchrun workers (``mmi.engine.distributed.exit_process``).

    python bench/bench_gloo_exit.py [--runs 40] [--modes interpreter,hard] [--out runs/bench_gloo_exit.json]

Each run is ``torchrun --standalone --nproc_per_node 2`` of a small worker (this file with
``--worker``): a DDP linear model, 30 gloo steps, a broadcast, then rank 0 lags up to 50 ms
(writing a checkpoint, as the trainer's main rank writes its outputs) before both tear the
process group down and exit. A run fails when torchrun exits non-zero; the failures' last
lines are kept. With torch 2.14 on 2 cores a worker whose peer still held its connections
aborted after ``destroy_process_group`` ("terminate called without an active exception",
SIGABRT in the interpreter's finalisation), which is what ``exit_process`` skips.
This is a count of a rare event: report the runs with the failures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(mode: str) -> None:
    import random

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, ROOT)
    from mmi.engine.distributed import exit_process

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(torch.nn.Linear(64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(30):
        loss = model(torch.randn(8, 64)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    box = [{"step": 30}]
    dist.broadcast_object_list(box, src=0)
    if rank == 0:
        time.sleep(random.random() * 0.05)
        with tempfile.TemporaryDirectory() as d:
            torch.save(model.module.state_dict(), os.path.join(d, "last.pt"))
    dist.destroy_process_group()
    if mode == "hard":
        exit_process(0)
    sys.exit(0)


def run(mode: str) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--monitor-interval",
           "0.1", os.path.abspath(__file__), "--worker", mode]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    return res.returncode == 0, "\n".join(line for line in out.splitlines() if "terminate" in line or "exitcode" in line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=40, help="torchrun groups per mode")
    p.add_argument("--modes", default="interpreter,hard", help="comma-separated: interpreter, hard")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_gloo_exit.json"))
    p.add_argument("--worker", choices=["interpreter", "hard"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
    import torch

    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - {"interpreter", "hard"}:
        p.error(f"unknown --modes {sorted(unknown)}")
    results = {m: {"runs": 0, "failed": 0, "failures": []} for m in modes}
    t0 = time.time()
    for i in range(args.runs):  # the modes interleaved: a slow spell of the machine hits both
        for m in modes:
            ok, lines = run(m)
            r = results[m]
            r["runs"] += 1
            if not ok:
                r["failed"] += 1
                r["failures"].append({"run": i, "lines": lines})
        print(f"{i + 1}/{args.runs}: " + ", ".join(f"{m} {results[m]['failed']} failed" for m in modes), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "minutes": round((time.time() - t0) / 60, 1),
              "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    for m in modes:
        print(f"{m:12s} {results[m]['failed']} of {results[m]['runs']} runs failed")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
