"""spaCy's string hash (MurmurHash64A, seed 1, over UTF-8 bytes), in pure Python.

spaCy stores its word-vector table keyed by this hash (``vocab/key2row``); computing it
for the few thousand words of our vocabulary avoids reading the 10 MB string table.
"""
from __future__ import annotations

_M = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1


def murmurhash64a(data: bytes, seed: int = 1) -> int:
    n = len(data)
    h = (seed ^ (n * _M)) & _MASK
    end = n - n % 8
    for i in range(0, end, 8):
        k = int.from_bytes(data[i : i + 8], "little")
        k = (k * _M) & _MASK
        k ^= k >> 47
        k = (k * _M) & _MASK
        h ^= k
        h = (h * _M) & _MASK
    rest = data[end:]
    if rest:
        h ^= int.from_bytes(rest, "little")
        h = (h * _M) & _MASK
    h ^= h >> 47
    h = (h * _M) & _MASK
    h ^= h >> 47
    return h


def hash_string(s: str) -> int:
    return murmurhash64a(s.encode("utf8"), 1)
