"""The shipped checkpoint: what the demo loads on a fresh machine."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
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


def test_shipped_model_draws_the_same_masks_in_bf16():
    """bf16 (the app's choice where the CPU computes it) against float32, every example expression."""
    exact = Predictor.from_checkpoint(str(CKPT), cache_size=1)
    fast = Predictor.from_checkpoint(str(CKPT), cache_size=1, amp="bf16")
    n = 0
    for ex in json.loads((EXAMPLES / "examples.json").read_text()):
        image = load_image(str(EXAMPLES / ex["file_name"]))
        for p, q in zip(exact.predict(image, ex["expressions"], attention=False),
                        fast.predict(image, ex["expressions"], attention=False)):
            assert (p.mask & q.mask).sum() >= 0.9 * (p.mask | q.mask).sum(), p.expression
            n += 1
    assert n >= 20


def test_shipped_refiner_draws_the_same_masks_in_its_boxes_as_on_the_full_map():
    """The refiner's per-expression box (MaskRefiner.crop, the default out of training) against
    the full map it was trained on: the same mask, pixel for pixel, for every example expression
    (on the whole val split all but 45 of 5,235, unsure maps whose peak region the refiner
    raises outside the box: README, "The shipped checkpoint")."""
    full = Predictor.from_checkpoint(str(CKPT), cache_size=1)
    full.model.refiner.crop = False
    boxed = Predictor.from_checkpoint(str(CKPT), cache_size=1)
    assert boxed.model.refiner.crop
    n = 0
    for ex in json.loads((EXAMPLES / "examples.json").read_text()):
        image = load_image(str(EXAMPLES / ex["file_name"]))
        for p, q in zip(full.predict(image, ex["expressions"], attention=False),
                        boxed.predict(image, ex["expressions"], attention=False)):
            assert np.array_equal(p.mask, q.mask), p.expression
            n += 1
    assert n >= 20


def test_shipped_model_beats_the_language_probes_on_unseen_scenes(tmp_path):
    """On a small synthetic set of a seed never used for training, the shipped model scores far
    above what it gets with no words or with another object's expression, and lower without its
    region selector, and lower still without its boundary refiner."""
    from mmi.data import build_dataset
    from mmi.data.synthetic.__main__ import main as generate
    from mmi.engine.evaluate import evaluate

    assert generate(["--out", str(tmp_path), "--images", "200", "--seed", "987", "--workers", "1", "--quiet"]) == 0
    model, vocab, _ = load_inference(str(CKPT))
    ds = build_dataset("synref", str(tmp_path), "val", model.image_size, vocab, model.t_max, train=False)
    assert len(ds) >= 30
    scores, totals = {}, {}
    for probe in ("normal", "empty", "mismatched"):
        ds.set_language(probe)
        totals[probe] = evaluate(model, ds, torch.device("cpu"), threshold=0.5, batch_size=16, records=False,
                                 max_items=90)["totals"]
        scores[probe] = totals[probe]["oIoU"]
    assert scores["normal"] > 0.3, scores
    assert scores["empty"] < scores["normal"] / 3 and scores["mismatched"] < scores["normal"] / 2, scores
    ds.set_language("normal")
    # the region selector: without it (every region of the refined mask) oIoU 75.2 -> 71.4, mIoU
    # 82.4 -> 80.7, Prec@0.5 89.3 -> 86.9 on these 84 expressions (the app's peak rule on top of it: 75.2)
    model.selector = None
    r = evaluate(model, ds, torch.device("cpu"), threshold=0.5, batch_size=16, records=False, max_items=90)["totals"]
    s = totals["normal"]
    assert s["oIoU"] > r["oIoU"] + 0.02 and s["mIoU"] > r["mIoU"] + 0.01, (s, r)
    # the boundary refiner with its context inputs, neither with a selector: without it (the mask head's
    # own logits) oIoU 71.4 -> 67.0, mIoU 80.7 -> 74.1, Prec@0.9 60.7 -> 33.3 (the refiner before
    # refine_context: 69.3, 77.9, 54.8)
    model.refiner = None
    c = evaluate(model, ds, torch.device("cpu"), threshold=0.5, batch_size=16, records=False, max_items=90)["totals"]
    assert r["oIoU"] > c["oIoU"] + 0.02 and r["mIoU"] > c["mIoU"] + 0.04 and r["Prec@0.9"] > c["Prec@0.9"] + 0.1, (r, c)


def test_a_config_without_the_newer_settings_rebuilds_the_same_network():
    """Checkpoints written before a setting existed lack its key: build_model_from_config fills it
    from LEGACY. The shipped model was trained with the LEGACY values (context IMI values,
    dropout LFR target, ImageNet input), so its config stripped of those keys must rebuild the
    same network: strict load, identical outputs."""
    from mmi.model import build_model_from_config
    from mmi.model.presets import LEGACY

    raw = torch.load(CKPT, map_location="cpu", weights_only=True)
    model, vocab, _ = load_inference(str(CKPT))
    assert {k: model.config[k] for k in LEGACY} == LEGACY
    old_style = {k: v for k, v in raw["config"].items() if k not in LEGACY}
    rebuilt = build_model_from_config(old_style)
    assert {k: rebuilt.config[k] for k in LEGACY} == LEGACY
    rebuilt.load_state_dict(raw["model"], strict=True)
    rebuilt.eval()
    batch = _probe_batch(model, vocab)
    with torch.no_grad():
        assert torch.equal(model(batch)["logits"], rebuilt(batch)["logits"])


def _probe_batch(model, vocab) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, model.image_size, model.image_size, generator=g)
    ids, mask, _ = vocab.encode_batch(["the small red circle", "the leftmost square below the blue star"], model.t_max)
    return {"image": image, "words": ids, "word_mask": mask}


def test_shipped_checkpoint_outputs_are_pinned():
    """The shipped weights give the outputs recorded when they were shipped (same input, same
    numbers): a change to the model code that alters what the demo shows fails here."""
    model, vocab, _ = load_inference(str(CKPT))
    with torch.no_grad():
        out = model(_probe_batch(model, vocab), return_attention=True)
    assert out["logits"].shape[-1] == model.image_size // 2  # the refiner's stride 2
    for logits, recorded in ((out["selected_from"], RECORDED), (out["coarse_logits"], RECORDED_COARSE)):
        assert logits.mean().item() == pytest.approx(recorded["mean"], abs=1e-3)
        assert logits.std().item() == pytest.approx(recorded["std"], abs=1e-3)
        for (b, y, x), value in recorded["logits"]:
            assert logits[b, 0, y, x].item() == pytest.approx(value, abs=1e-3)
    # the region selector's choice: of expression 1's 45 regions on this noise image, one is kept
    logits, kept = out["logits"], out["logits"][1, 0] > 0
    assert logits.mean().item() == pytest.approx(RECORDED_SELECTED["mean"], abs=1e-3)
    assert logits.std().item() == pytest.approx(RECORDED_SELECTED["std"], abs=1e-3)
    assert int(kept.sum()) == RECORDED_SELECTED["kept"] and int((out["selected_from"][1, 0] > 0).sum()) == 633
    box = kept.nonzero()
    assert (box.min(0).values.tolist(), box.max(0).values.tolist()) == RECORDED_SELECTED["box"]
    assert torch.equal(logits[1, 0][kept], out["selected_from"][1, 0][kept])
    assert torch.equal(logits[0], out["selected_from"][0])  # expression 0: no region, nothing to choose
    last = out["attention"][-1]
    assert last["lav"][0, 0, 1, 3, 4].item() == pytest.approx(RECORDED_COARSE["lav"], abs=1e-4)
    assert last["val"][1, 2, 0, 7, 7].item() == pytest.approx(RECORDED_COARSE["val"], abs=1e-4)


# the region selector's output: recorded from weights/mmi_demo.pt when it was shipped with its
# region selector (stage 4), 2026-11-27 night (OMP_NUM_THREADS=1)
RECORDED_SELECTED = {"mean": -9.344813346862793, "std": 4.789756774902344, "kept": 323, "box": ([81, 10], [108, 36])}
# the refined logits the selector chooses from (out["selected_from"]): recorded from
# weights/mmi_demo.pt when it was shipped with its refiner and the refiner's context inputs
# (refine_context), 2026-11-27 evening (OMP_NUM_THREADS=1); stage 4 trains the selector alone, so
# they are unchanged; the refiner works in each
# expression's box (MaskRefiner.crop): expression 1's box is the whole map, expression 0 has none
# (its logits are the upsampled coarse ones)
RECORDED = {"mean": -9.146985054016113, "std": 4.778083324432373,
            "logits": [((0, 20, 40), -12.633234024047852), ((1, 80, 10), -7.9806928634643555),
                       ((1, 127, 127), -6.970694065093994), ((0, 64, 64), -13.896568298339844),
                       ((1, 70, 50), -2.264206886291504)]}
# the mask head's own logits: recorded from the checkpoint shipped before the refiner (2026-11-27
# morning); stage 3 trains the refiner alone, so they, and the attention maps, are unchanged
RECORDED_COARSE = {"mean": -9.000885009765625, "std": 5.0541887283325195,
                   "logits": [((0, 10, 20), -12.254447937011719), ((1, 40, 5), -4.595381259918213),
                              ((1, 63, 63), -7.827942371368408), ((0, 32, 32), -13.609394073486328)],
                   "lav": 0.0028219064697623253, "val": 0.15354503691196442}
