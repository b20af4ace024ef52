"""Shared fixtures: a tiny inference checkpoint (the ``tiny`` preset, a small vocabulary)."""
from __future__ import annotations

import pytest
import torch

TINY_SENTENCES = [
    "the red cube on the left", "a blue ball right of the green square", "the big green thing at the top",
    "leftmost small circle", "the second heart from the bottom",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Path of an ``mmi-inference/1`` checkpoint of ``build_model("tiny", ...)`` (seeded weights)."""
    from mmi.engine.checkpoint import save_inference
    from mmi.model import build_model
    from mmi.text import Vocabulary

    vocab = Vocabulary.from_sentences(TINY_SENTENCES)
    torch.manual_seed(0)
    model = build_model("tiny", len(vocab))
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    save_inference(path, model, vocab, meta={"dataset": "fixture", "epoch": 0})
    return path
