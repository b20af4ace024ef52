"""Read the refer toolkit's ``refs(*).p`` pickles without executing code.

A refs file is a list of dicts whose values are str, int, float, lists and dicts. None
of those needs a global to rebuild, so the unpickler below refuses *every* global
(``find_class``) and every persistent id (``persistent_load``). A pickle that asks for
anything, e.g. ``os.system`` through ``__reduce__``, raises :class:`UnsafePickleError`
naming the file and the global before anything is called.

The original RefCOCO files are Python 2 protocol-2 pickles: their byte strings are
decoded as ASCII first and, when that fails, as latin-1.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global or a persistent object; nothing was executed."""


class _RefusingUnpickler(pickle.Unpickler):
    """Unpickler that builds only built-in containers and scalars."""

    def __init__(self, file: io.BufferedIOBase, path: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self._path}: refused to load global '{module}.{name}': refs pickles may only "
            "hold lists, dicts, strings and numbers (this file may try to execute code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._path}: refused persistent id {pid!r}: refs pickles may not use persistent ids")


def loads_restricted(data: bytes, path: str = "<bytes>") -> Any:
    """Unpickle ``data`` allowing only built-in containers and scalars.

    Raises UnsafePickleError when a global or persistent id is asked for, ValueError
    (naming ``path``) when the bytes are not a readable pickle.
    """
    last_error: Exception | None = None
    for encoding in ("ASCII", "latin1"):
        try:
            return _RefusingUnpickler(io.BytesIO(data), path, encoding).load()
        except UnsafePickleError:
            raise
        except UnicodeDecodeError as e:  # a Python 2 byte string that is not ASCII
            last_error = e
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
                KeyError, AttributeError, MemoryError, OverflowError) as e:
            raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    raise ValueError(f"{path}: not a readable pickle ({last_error})")


def load_refs(path: str | os.PathLike) -> Any:
    """Load a refs pickle from ``path`` (see :func:`loads_restricted`)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return loads_restricted(data, path)
