"""Training and evaluation throughput of a preset: samples/s per device in fp32 and bf16,
peak GPU memory, evaluation images/s. Random inputs of the preset's size (data loading
excluded: it is measured by the training log's images_per_s).

    python bench/bench_train.py --preset paper_darknet53 --batch 12 --steps 20 [--device cuda]
    python bench/bench_train.py --preset demo --batch 16 --steps 5 --device cpu   # ratios only on a CPU

Prints a table and writes JSON (``--out``). On a CPU quote only ratios between rows of one
run; absolute times are meaningful on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmi.model import build_model  # noqa: E402


def batch(model, b: int, device: torch.device) -> dict:
    S, T = model.image_size, model.t_max
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, 1, S, S)
    mask[:, :, S // 4 : S // 2, S // 3 : 2 * S // 3] = 1
    words = torch.randint(2, 1000, (b, T), generator=g)
    return {"image": torch.randn(b, 3, S, S, generator=g).to(device), "words": words.to(device),
            "word_mask": (torch.arange(T)[None] < torch.randint(3, T + 1, (b, 1), generator=g)).to(device),
            "mask": mask.to(device)}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(preset: str, b: int, steps: int, amp: str, device: torch.device, channels_last: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(preset, 1000, backbone_weights=None).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    data = batch(model, b, device)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else nullcontext
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            sync(device)
            start = time.perf_counter()
        with ctx():
            loss = model(data)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    train = steps * b / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model.eval()
    with torch.no_grad(), ctx():
        model(data)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(data)
        sync(device)
    evaluation = steps * b / (time.perf_counter() - start)
    return {"preset": preset, "amp": amp, "batch": b, "train_samples_per_s": round(train, 2),
            "eval_images_per_s": round(evaluation, 2), "peak_gib": None if peak is None else round(peak, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper_darknet53")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--amp", nargs="+", default=["off", "bf16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", default="runs/bench_train.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = [measure(args.preset, args.batch, args.steps, amp, device, args.channels_last) for amp in args.amp]
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print("| preset | amp | batch | train samples/s | eval images/s | peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['amp']} | {r['batch']} | {r['train_samples_per_s']} | {r['eval_images_per_s']} | {r['peak_gib']} |")
    write_json(args.out, {"device": name, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
