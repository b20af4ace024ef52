"""The run folder (``cfg["output"]``): refuse to overwrite a run, resume-if-present, clean-up.

- A new run (no ``--resume``) into a folder that already holds a run (any of
  :data:`RUN_FILES`) stops before any work with a :class:`ConfigError` naming the folder
  and the choices: ``--resume <output>/last.pt``, ``--resume auto``, another ``output``, or
  ``--overwrite`` (which removes the earlier run's files first: nothing of it is mixed into
  the new run's ``log.jsonl``).
- ``--resume auto``: resume from ``<output>/last.pt`` when it exists, else start fresh (a
  folder holding only ``config.json`` / ``log.jsonl`` is then the same run restarted before
  its first save). This is what an elastic restart under ``torchrun --max-restarts N`` needs:
  the restarted workers get the same command line.

Rank 0 decides and every rank receives the decision (:meth:`Trainer` broadcasts it), so a
folder visible to one node only cannot split the ranks.
"""
from __future__ import annotations

import os
import shutil

from .config import ConfigError

RUN_FILES = ("config.json", "log.jsonl", "last.pt", "best.pt", "curves.png")
RUN_DIRS = ("tb",)
AUTO = "auto"


def existing_run_files(out: str) -> list[str]:
    """The files of :data:`RUN_FILES` present in ``out``."""
    return [f for f in RUN_FILES if os.path.isfile(os.path.join(out, f))]


def resolve_start(out: str, resume: str | None, overwrite: bool = False) -> str | None:
    """The checkpoint to resume from (None: a fresh run) for ``--resume`` (a path, ``"auto"``
    or None) into ``out``; raises :class:`ConfigError` for a fresh run into a folder that holds a
    run unless ``overwrite``. With ``overwrite`` the earlier run's files are removed."""
    if resume == AUTO:
        last = os.path.join(out, "last.pt")
        return last if os.path.isfile(last) else None
    if resume:
        return resume
    found = existing_run_files(out)
    if found and not overwrite:
        raise ConfigError(
            f"output folder {out} already holds a run ({', '.join(found)}); a new run would replace it. Choose one: "
            f"--resume {os.path.join(out, 'last.pt')} to continue it, --resume auto (continue when last.pt exists, "
            f"else start), another folder (--set output=...), or --overwrite to replace it")
    if found:
        for f in found:
            os.unlink(os.path.join(out, f))
        for d in RUN_DIRS:
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    return None
