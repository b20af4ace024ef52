"""The shipped checkpoint: what the demo loads on a fresh machine."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from mmi.engine.checkpoint import INFERENCE_FORMAT, load_inference
from mmi.predictor import Predictor, load_image

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "weights" / "mmi_demo.pt"
EXAMPLES = ROOT / "assets" / "examples"


def test_shipped_checkpoint_is_small_inference_only_and_self_contained():
    assert CKPT.is_file(), f"{CKPT} is missing"
    assert os.path.getsize(CKPT) < 25 * 2**20
    raw = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert raw["format"] == INFERENCE_FORMAT
    assert not any(k in raw for k in ("optimizer", "scheduler", "scaler"))
    model, vocab, meta = load_inference(str(CKPT))
    assert model.config["preset"] == "demo" and not model.training
    assert len(vocab) == model.config["vocab_size"]


def test_shipped_model_reads_the_example_expressions():
    pred = Predictor.from_checkpoint(str(CKPT), cache_size=2)
    ex = json.loads((EXAMPLES / "examples.json").read_text())[0]
    image = load_image(str(EXAMPLES / ex["file_name"]))
    out = pred.predict(image, ex["expressions"], attention=True)
    assert len(out) == len(ex["expressions"])
    for p in out:
        assert p.mask.shape == image.shape[:2] and p.mask.dtype == bool
        assert not any(p.unknown), (p.expression, p.tokens)  # every example word is in the vocabulary
        assert len(p.attention) == pred.num_layers and p.attention[-1]["val"].shape[1] == len(p.tokens)
    probs = np.stack([p.canvas_prob for p in out])
    # different expressions on the same image give different maps: the words reach the mask
    assert max(np.abs(probs[0] - probs[i]).max() for i in range(1, len(out))) > 0.05


def test_shipped_model_beats_the_language_probes_on_unseen_scenes(tmp_path):
    """On a small synthetic set of a seed never used for training, the shipped model scores far
    above what it gets with no words or with another object's expression."""
    from mmi.data import build_dataset
    from mmi.data.synthetic.__main__ import main as generate
    from mmi.engine.evaluate import evaluate

    assert generate(["--out", str(tmp_path), "--images", "200", "--seed", "987", "--workers", "1", "--quiet"]) == 0
    model, vocab, _ = load_inference(str(CKPT))
    ds = build_dataset("synref", str(tmp_path), "val", model.image_size, vocab, model.t_max, train=False)
    assert len(ds) >= 30
    scores = {}
    for probe in ("normal", "empty", "mismatched"):
        ds.set_language(probe)
        scores[probe] = evaluate(model, ds, torch.device("cpu"), threshold=0.5, batch_size=16, records=False,
                                 max_items=90)["totals"]["oIoU"]
    assert scores["normal"] > 0.3, scores
    assert scores["empty"] < scores["normal"] / 3 and scores["mismatched"] < scores["normal"] / 2, scores
