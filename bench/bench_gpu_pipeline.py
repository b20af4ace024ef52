"""Where a GPU training step of a config's recipe spends its time: the model step alone (random
batches already on the device) at several batch sizes, against the data loader alone (the
config's dataset, collate and workers, batches copied to the device), each in images/s.

    python bench/bench_gpu_pipeline.py --config configs/demo_synref_gpu.json --data-root DATA \
        --batches 64 128 256 --workers 7 14 --transfers float uint8 --out runs/bench_gpu_pipeline.json

The model step runs as the trainer runs it (autocast of train.amp, channels-last if the config
says so, AdamW, one loss.item() per step: the trainer's per-step sync). If the model step at the
config's batch is much faster than the loader, the loader bounds training; if images/s grows
with the batch, the step is bound by per-kernel launch overhead, not by arithmetic. On a CPU it
runs too (tiny settings) but only ratios between rows mean anything there.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_train import batch as random_batch, device_name, sync, write_json  # noqa: E402
from mmi.data import build_dataset, collate, normalization, normalize_uint8  # noqa: E402
from mmi.engine.config import load_config, model_overrides  # noqa: E402
from mmi.engine.precision import autocast  # noqa: E402
from mmi.model import build_model, resolve_config  # noqa: E402
from mmi.text import Vocabulary  # noqa: E402


def model_step_rate(cfg: dict, b: int, steps: int, device: torch.device, vocab_size: int) -> float:
    """Training images/s of the config's model on random batches of ``b`` already on ``device``."""
    torch.manual_seed(0)
    over = model_overrides(cfg)
    model = build_model(cfg["model"]["preset"], vocab_size, **{**over, "backbone_weights": "random"}).to(device)
    if cfg["train"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    data = random_batch(model, b, device)
    amp = cfg["train"]["amp"] if device.type == "cuda" else "off"
    model.train()
    for i in range(steps + 3):  # three warm-up steps (cudnn.benchmark picks its kernels)
        if i == 3:
            sync(device)
            start = time.perf_counter()
        with autocast(device, amp):
            loss = model(data)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
    sync(device)
    return steps * b / (time.perf_counter() - start)


def loader_rate(cfg: dict, root: str, b: int, workers: int, batches: int, device: torch.device, uint8: bool) -> float:
    """Images/s the config's training loader delivers to ``device`` (pinned, non-blocking copies),
    float32 items or uint8 ones normalised on the device (``data.uint8_transfer``)."""
    mc = resolve_config(cfg["model"]["preset"], 1000, **model_overrides(cfg))
    d = cfg["data"]
    ds = build_dataset(d["dataset"], root, d["train_split"], mc["image_size"], None, mc["t_max"], train=True,
                       image_dir=d.get("image_dir"), split_by=d.get("split_by"), normalization=normalization(mc), uint8=uint8)
    ds.set_vocab(Vocabulary.from_sentences(ds.sentences()))
    sampler = RandomSampler(ds, replacement=True, num_samples=(batches + 2) * b)  # never runs out on a small split
    loader = DataLoader(ds, batch_size=b, sampler=sampler, num_workers=workers, collate_fn=collate, drop_last=True,
                        pin_memory=device.type == "cuda")
    it = iter(loader)
    for i in range(batches + 2):  # two warm-up batches (worker start-up)
        if i == 2:
            sync(device)
            start = time.perf_counter()
        item = next(it)
        image = item["image"].to(device, non_blocking=True)
        if uint8:
            normalize_uint8(image, normalization(mc))
        item["mask"].to(device, non_blocking=True).float()
    sync(device)
    return batches * b / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo_synref_gpu.json")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--steps", type=int, default=30, help="timed model steps per batch size")
    ap.add_argument("--workers", type=int, nargs="+", default=[7, 14])
    ap.add_argument("--transfers", nargs="+", default=["float", "uint8"], choices=["float", "uint8"],
                    help="how the loader's batches travel (data.uint8_transfer)")
    ap.add_argument("--loader-batches", type=int, default=40, help="timed loader batches per worker count")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="runs/bench_gpu_pipeline.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, as train.py's (data.batch_size sets the loader's batch)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = load_config(args.config, args.set)
    b0 = int(cfg["data"]["batch_size"])
    rows = []
    for b in args.batches:
        rate = model_step_rate(cfg, b, args.steps, device, 1000)
        rows.append({"part": "model step (random batch on the device)", "batch": b, "workers": None,
                     "images_per_s": round(rate, 1)})
        print(rows[-1], flush=True)
    for transfer in args.transfers:
        for w in args.workers:
            rate = loader_rate(cfg, args.data_root, b0, w, args.loader_batches, device, transfer == "uint8")
            rows.append({"part": f"data loader to the device, {transfer}", "batch": b0, "workers": w,
                         "images_per_s": round(rate, 1)})
            print(rows[-1], flush=True)
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}; CPU cores {os.cpu_count()}; config {args.config}")
    print("| part | batch | loader workers | images/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['batch']} | {r['workers'] if r['workers'] is not None else '-'} | {r['images_per_s']} |")
    write_json(args.out, {"device": name, "torch": torch.__version__, "cpu_count": os.cpu_count(),
                          "config": args.config, "rows": rows})


if __name__ == "__main__":
    main()
