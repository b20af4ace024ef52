"""The paper presets end to end as a RefCOCO user runs them, shrunk to seconds: the real
configs (configs/paper_*_refcoco.json) on a tiny refer tree laid out as the toolkit keeps
it, with backbone weights written in the real formats (a Darknet ``.weights`` binary, an
official Swin release dict) and a GloVe text file; one training step, a save, a resume, an
evaluation. Also: a paper config without its weights file fails before any work."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmi.engine.checkpoint import load_training
from mmi.engine.config import ConfigError, check_paths, load_config
from mmi.model.presets import PAPER_WEIGHTS

try:
    import fixtures_refer as fx
    from test_backbones import SWIN_SMALL, _darknet_file_arrays, _official_state, _torchvision_swin, _write_darknet
except ImportError:  # tests/ imported as a package
    from tests import fixtures_refer as fx
    from tests.test_backbones import SWIN_SMALL, _darknet_file_arrays, _official_state, _torchvision_swin, _write_darknet

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
DARK_TINY = {"base_channels": 4, "depths": [1, 1, 1, 1, 1]}
SHRINK = ["model.overrides.image_size=64", "model.overrides.dim=32", "model.overrides.heads=2",
          "model.overrides.head_channels=32"]


def _train_main():
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A refer toolkit data folder (images under images/mscoco/images/train2014) and a GloVe file."""
    base = tmp_path_factory.mktemp("paper")
    root = base / "refer" / "data"
    fixture = fx.write_refer_fixture(str(root))
    toolkit = root / "images" / "mscoco" / "images" / "train2014"
    toolkit.parent.mkdir(parents=True)
    shutil.move(fixture.image_dir, toolkit)
    rng = np.random.default_rng(0)
    words = ["the", "red", "Red", "box", "left", "square", "green", "blue", "ring"]
    glove = base / "glove.txt"
    glove.write_text("".join(w + " " + " ".join(f"{x:.4f}" for x in rng.normal(size=300)) + "\n" for w in words))
    return {"root": str(root), "glove": str(glove), "base": base}


def _darknet_file(path: Path) -> Path:
    from mmi.backbones import build_backbone

    torch.manual_seed(1)
    model = build_backbone("darknet53", weights=None, base_channels=DARK_TINY["base_channels"], depths=DARK_TINY["depths"])
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_var.uniform_(0.5, 2.0)
    _write_darknet(path, _darknet_file_arrays(model), extra=17)  # 17 trailing floats stand in for a YOLOv3 head
    return path


def _swin_file(path: Path) -> Path:
    torch.save({"model": _official_state(_torchvision_swin(5))}, path)
    return path


CASES = {
    "paper_darknet53": ("configs/paper_darknet53_refcoco.json", _darknet_file, "darknet.weights", DARK_TINY, "unit"),
    "paper_swin_b": ("configs/paper_swin_b_refcoco.json", _swin_file, "swin_official.pth", dict(SWIN_SMALL), "imagenet"),
}


@pytest.mark.parametrize("preset", list(CASES))
def test_paper_preset_trains_saves_resumes_and_evaluates(preset, tree, tmp_path, monkeypatch, capsys):
    config, write, name, options, norm = CASES[preset]
    weights = write(tmp_path / name)
    out = tmp_path / "run"
    sets = [f"data.root={tree['root']}", f"word_vectors.glove={tree['glove']}", f"output={out}",
            f"model.overrides.backbone_weights={weights}", f"model.overrides.backbone_options={json.dumps(options)}",
            *SHRINK, "data.batch_size=2", "data.workers=0", "train.epochs=1", "train.max_steps_per_epoch=1",
            "train.amp=off", "train.device=cpu", "data.val_max_items=2", "eval.batch_size=2", "train.log_every=1"]
    # what the backbone is fed: RGB/255 for Darknet, ImageNet mean/std for Swin
    from mmi.model.mmi import MMI

    seen = []
    original = MMI.encode_image
    monkeypatch.setattr(MMI, "encode_image", lambda self, image, *rest: (seen.append(image.detach().clone()), original(self, image, *rest))[1])
    main = _train_main()
    assert main(["--config", str(ROOT / config), "--no-progress", "--set", *sets]) == 0
    ckpt = load_training(str(out / "last.pt"))
    assert ckpt["config"]["preset"] == preset and ckpt["config"]["input_norm"] == norm
    assert ckpt["config"]["attention"] == "mutual" and ckpt["config"]["imi_values"] == "language"
    record = ckpt["meta"]["backbone_weights"]
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and record["file"] == str(weights)
    assert record["loaded_as"].startswith("darknet weights" if norm == "unit" else "official Swin weights")
    assert "GloVe" in ckpt["meta"]["word_vectors"]
    images = torch.cat(seen)
    if norm == "unit":
        assert images.min() >= 0 and images.max() <= 1
    else:
        assert images.min() < -0.5  # ImageNet mean/std put dark pixels well below zero

    # resume for one more epoch: the record is carried over, not re-read from the file
    weights.unlink()
    assert main(["--resume", str(out / "last.pt"), "--no-progress", "--set", "train.epochs=2"]) == 0
    resumed = load_training(str(out / "last.pt"))
    assert resumed["epoch"] == 2 and resumed["step"] == 2 and resumed["meta"]["backbone_weights"] == record
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    starts = [r for r in log if r["kind"] == "event" and r["message"] in ("start", "resume")]
    assert [r["backbone_weights"] for r in starts] == [record, record]

    result = tmp_path / "eval.json"
    assert main(["--eval-only", "--checkpoint", str(out / "best.pt"), "--dataset", "refcoco", "--split", "val",
                 "--data-root", tree["root"], "--out", str(result), "--workers", "0", "--device", "cpu"]) == 0
    doc = json.loads(result.read_text())
    assert doc["backbone_weights"] == record and doc["input_norm"] == norm and doc["count"] == 2
    assert "oIoU" in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("paper_*.json")))
def test_paper_config_without_its_weights_fails_before_any_work(config, tree):
    cfg = load_config(str(ROOT / "configs" / config), [f"data.root={tree['root']}", f"word_vectors.glove={tree['glove']}",
                                                       "data.dataset=refcoco", "data.split_by=unc"])
    backbone = "swin_b" if "swin" in config else "darknet53"
    with pytest.raises(ConfigError) as info:
        check_paths(cfg)
    msg = str(info.value)
    assert PAPER_WEIGHTS[backbone] in msg and "Where such weights come from" in msg
    assert ("MCN" in msg) if backbone == "darknet53" else ("swin_base_patch4_window12_384_22k" in msg)
    random = load_config(str(ROOT / "configs" / config), [f"data.root={tree['root']}", f"word_vectors.glove={tree['glove']}",
                                                          "data.dataset=refcoco", "data.split_by=unc",
                                                          "model.overrides.backbone_weights=random"])
    check_paths(random)  # random initialisation only when asked for by name
