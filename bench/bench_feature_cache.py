"""Memory and time of the backbone memo's file (``mmi/model/feature_cache.py``): save and load.

    python bench/bench_feature_cache.py [--images 2000] [--size 256] [--out runs/bench_feature_cache.json]
    git show f328654:mmi/model/feature_cache.py > /tmp/fc_old.py
    python bench/bench_feature_cache.py --impl /tmp/fc_old.py     # the same figures for another version

A memo of ``--images`` entries with MobileNetV2's three map shapes at input size ``--size``
((32, S/8, S/8), (96, S/16, S/16), (320, S/32, S/32), fp16; random values, no backbone run) is
filled, saved and loaded, each phase in a fresh process so that the kernel's high-water mark of
the process (``VmHWM``, reset before the phase) gives the phase's peak. Reported per phase, in
units of the memo's size (its bytes): the peak memory the phase added, and, after a load and a
pass that reads every entry (as an epoch does), the private (anonymous) and file-backed
resident memory: file-backed pages are shared by every process that maps the same file, so two
runs reading one memo (``scripts/ablation.py --jobs 2``) hold it once. Times are wall seconds on
this machine (ratios between versions are the comparison; absolute times vary with the disk).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _measured(fn):
    """fn's result, its wall seconds, and the memory status before and after it (peak reset before)."""
    before = _status()
    _reset_peak()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, before, _status()


def _module(impl: str | None):
    if impl is None:
        sys.path.insert(0, ROOT)
        from mmi.model import feature_cache
        return feature_cache
    spec = importlib.util.spec_from_file_location("feature_cache_impl", impl)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def phase(args) -> dict:
    """One phase in this process: 'save' fills a memo and saves it; 'load' loads and reads it."""
    import torch

    torch.set_num_threads(1)
    fc = _module(args.impl)
    torch.manual_seed(0)
    backbone = torch.nn.Conv2d(1, 1, 1)  # only its fingerprint matters (the same in both phases)
    s = args.size
    shapes = [(32, s // 8, s // 8), (96, s // 16, s // 16), (320, s // 32, s // 32)]
    memo = args.images * sum(c * h * w for c, h, w in shapes) * 2
    cache = fc.FeatureCache(2**62)
    if args.phase == "save":
        g = torch.Generator().manual_seed(0)
        keys = []
        for i in range(args.images):
            k = i.to_bytes(16, "little")
            maps = [torch.randn(sh, generator=g) for sh in shapes]
            if hasattr(cache, "_add"):
                cache._add(k, maps)
            else:  # the one-tensor-per-level version: entries were lists of fp16 maps
                cache.store[k] = [m.half() for m in maps]
            keys.append(k)
        n, seconds, before, after = _measured(lambda: cache.save(args.file, backbone))
        return {"phase": "save", "entries": n, "memo_bytes": memo, "seconds": seconds,
                "peak_added": (after["VmHWM"] - before["VmRSS"]) / memo}
    n, seconds, before, loaded = _measured(lambda: cache.load(args.file, backbone))
    t = time.perf_counter()
    total = 0.0
    for k in list(cache.store):
        entry = cache.entry(k) if hasattr(cache, "entry") else cache.store[k]
        total += float(sum(m[0, 0, 0] for m in entry))  # touch every entry, as an epoch does
    read = time.perf_counter() - t
    after = _status()
    return {"phase": "load", "entries": n, "memo_bytes": memo, "seconds": seconds, "read_seconds": read,
            "peak_added": (loaded["VmHWM"] - before["VmRSS"]) / memo,
            "anon_after_read": (after["RssAnon"] - before["RssAnon"]) / memo,
            "file_after_read": (after["RssFile"] - before["RssFile"]) / memo}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--impl", default=None, help="another feature_cache.py to measure (default: this tree's)")
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    ap.add_argument("--phase", choices=("save", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "memo.pt")
        for name in ("save", "load"):
            cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, "--file", path,
                   "--images", str(args.images), "--size", str(args.size)] + (["--impl", args.impl] if args.impl else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"the {name} phase failed:\n{proc.stderr}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        size = os.path.getsize(path)
    memo = results[0]["memo_bytes"]
    print(f"memo: {args.images} images at S={args.size}, {memo / 2**20:.0f} MiB (file {size / 2**20:.0f} MiB); "
          f"implementation: {args.impl or 'this tree'}")
    for r in results:
        extra = (f", after a pass over every entry: private {r['anon_after_read']:.2f}x, "
                 f"file-backed (shared) {r['file_after_read']:.2f}x, read {r['read_seconds']:.2f} s"
                 if r["phase"] == "load" else "")
        print(f"{r['phase']}: {r['seconds']:.2f} s, peak memory added {r['peak_added']:.2f}x the memo{extra}")
    if args.out:
        doc = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
               "args": {k: v for k, v in vars(args).items() if k not in ("phase", "file")}, "results": results}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
