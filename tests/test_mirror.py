"""The mirrored test-time view (mmi/mirror.py) and its use in evaluation's probabilities."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmi.engine.evaluate import probabilities
from mmi.mirror import Mirror
from mmi.text import Vocabulary

WORDS = ["the", "left", "right", "leftmost", "rightmost", "star", "left-hand"]


def test_pairs_in_the_vocabulary_swap_both_ways_and_lone_words_are_flagged():
    vocab = Vocabulary(WORDS)
    m = Mirror(vocab)
    ix = vocab.index
    assert m.perm[ix["left"]] == ix["right"] and m.perm[ix["right"]] == ix["left"]
    assert m.perm[ix["leftmost"]] == ix["rightmost"] and m.perm[ix["rightmost"]] == ix["leftmost"]
    assert m.perm[ix["star"]] == ix["star"] and m.perm[ix["left-hand"]] == ix["left-hand"]
    assert m.swapped == ["left", "leftmost", "right", "rightmost"]
    assert m.unpaired.tolist() == [ix["left-hand"]]  # "right-hand" is not in the vocabulary
    words = torch.tensor([[ix["the"], ix["leftmost"], ix["star"]],
                          [ix["the"], ix["left-hand"], ix["star"]],
                          [ix["star"], ix["right"], 0]])
    mirrored, usable = m.words(words)
    assert mirrored.tolist() == [[ix["the"], ix["rightmost"], ix["star"]],
                                 [ix["the"], ix["left-hand"], ix["star"]],
                                 [ix["star"], ix["left"], 0]]
    assert usable.tolist() == [True, False, True]


def test_average_flips_the_mirrored_map_back_and_keeps_the_plain_map_where_unusable():
    plain = torch.zeros(2, 3, 4)
    mirrored = torch.zeros(2, 3, 4)
    mirrored[:, :, 0] = 1.0  # the mirrored frame's left column is the plain frame's right one
    out = Mirror(Vocabulary(WORDS)).average(plain, mirrored, torch.tensor([True, False]))
    assert torch.equal(out[0, :, 3], torch.full((3,), 0.5)) and out[0, :, :3].abs().sum() == 0
    assert torch.equal(out[1], plain[1])


class _Recorder(torch.nn.Module):
    """Logits at stride 4 from the image's first channel plus a term from the first word;
    every call's inputs kept."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, batch):
        self.calls.append({k: v.clone() for k, v in batch.items()})
        logits = F.avg_pool2d(batch["image"][:, :1], 4) + 0.1 * batch["words"][:, :1, None, None].float()
        return {"logits": logits}


def test_probabilities_with_a_mirror_average_the_plain_and_the_mirrored_view():
    vocab = Vocabulary(WORDS)
    ix = vocab.index
    torch.manual_seed(0)
    image = torch.randn(2, 3, 16, 16)
    words = torch.tensor([[ix["leftmost"], ix["star"]], [ix["left-hand"], ix["star"]]])
    batch = {"image": image, "words": words, "word_mask": torch.ones_like(words)}
    model = _Recorder()
    plain = probabilities(model, batch, torch.device("cpu"))
    assert len(model.calls) == 1
    both = probabilities(model, batch, torch.device("cpu"), mirror=Mirror(vocab))
    assert len(model.calls) == 3
    second = model.calls[2]
    assert torch.equal(second["image"], image.flip(-1))
    assert second["words"].tolist() == [[ix["rightmost"], ix["star"]], [ix["left-hand"], ix["star"]]]

    def view(img, ids):
        logits = F.avg_pool2d(img[:, :1], 4) + 0.1 * ids[:, :1, None, None].float()
        return torch.sigmoid(F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False))[:, 0]

    expected0 = (view(image, words)[0] + view(image.flip(-1), second["words"])[0].flip(-1)) / 2
    assert torch.allclose(both[0], expected0, atol=1e-6)
    assert not torch.allclose(both[0], plain[0], atol=1e-3)  # the mirrored view changed it
    assert torch.equal(both[1], plain[1])  # "left-hand" has no partner: the plain view alone


def test_evaluation_refuses_a_flip_it_cannot_make(tmp_path):
    """A vocabulary without any left/right pair cannot ask the mirrored question."""
    from mmi.engine.checkpoint import save_inference
    from mmi.engine.config import ConfigError
    from mmi.engine.evaluate import run_eval_only
    from mmi.model import build_model

    path = str(tmp_path / "no_sides.pt")
    vocab = Vocabulary(["the", "star"])
    save_inference(path, build_model("tiny", len(vocab)), vocab, meta={})
    with pytest.raises(ConfigError, match="no pair of directional words"):
        run_eval_only(path, "synref", "val", str(tmp_path), flip=True, progress=False)


def test_mirror_views_script_scores_what_evaluation_scores(tiny_checkpoint, tmp_path):
    """scripts/mirror_views.py, from one pair of runs per batch: its plain view is evaluate()'s,
    its mean is evaluate(mirror=...)'s, to the last pixel; the mirrored view alone differs."""
    import importlib.util
    from pathlib import Path

    from mmi.data import build_dataset
    from mmi.data.synthetic.__main__ import main as generate
    from mmi.engine.checkpoint import load_inference
    from mmi.engine.evaluate import evaluate

    assert generate(["--out", str(tmp_path), "--images", "12", "--seed", "5", "--workers", "1", "--quiet"]) == 0
    spec = importlib.util.spec_from_file_location("mirror_views", Path(__file__).parents[1] / "scripts" / "mirror_views.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model, vocab, _ = load_inference(tiny_checkpoint)
    mirror = Mirror(vocab)
    assert mirror.swapped == ["left", "right"] and len(mirror.unpaired) == 1  # "leftmost" without "rightmost"
    ds = build_dataset("synref", str(tmp_path), "val", model.image_size, vocab, model.t_max, train=False)
    thr = 0.449  # the untrained model's probabilities lie within 0.448-0.450: masks neither empty nor full
    accs = script.score_split(model, mirror, ds, "off", batch_size=4, threshold=thr)
    cpu = torch.device("cpu")
    for regions in ("all", "peak"):
        plain = evaluate(model, ds, cpu, threshold=thr, batch_size=4, records=False, regions=regions)["totals"]
        mean = evaluate(model, ds, cpu, threshold=thr, batch_size=4, records=False, regions=regions,
                        mirror=mirror)["totals"]
        assert 0 < plain["oIoU"] < 1 and 0 < mean["oIoU"] < 1
        assert accs[f"plain_{regions}"].summary() == plain
        assert accs[f"mean_{regions}"].summary() == mean
    assert accs["mirrored_all"].summary() != accs["plain_all"].summary()
