"""Run configs: merging, overrides, optimiser presets, errors naming the key or path."""
from __future__ import annotations

import glob
import json
import os

import pytest

from mmi.engine.config import (DEFAULTS, OPTIM_PRESETS, ConfigError, check_paths, load_config, model_overrides,
                               parse_overrides, save_config)

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.json")))


def test_parse_overrides_types():
    got = parse_overrides(["optim.lr=0.001", "data.batch_size=8", "model.overrides.imi=false", "optim.milestones=[30,40]",
                           "output=runs/x", "data.split_by=null", "word_vectors.glove=a=b.txt"])
    assert got == {"optim": {"lr": 0.001, "milestones": [30, 40]}, "data": {"batch_size": 8, "split_by": None},
                   "model": {"overrides": {"imi": False}}, "output": "runs/x", "word_vectors": {"glove": "a=b.txt"}}


def test_every_shipped_config_resolves():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"demo_synref.json", "paper_darknet53_refcoco.json", "paper_darknet53_refcoco+.json",
            "paper_darknet53_refcocog_umd.json", "paper_darknet53_refcocog_google.json", "paper_swin_b_refcoco.json"} <= names
    for path in CONFIGS:
        cfg = load_config(path)
        assert set(cfg) == set(DEFAULTS), path
        if "refcocog" in path:
            assert model_overrides(cfg)["t_max"] == 20 and cfg["data"]["dataset"] == "refcocog"
        if "paper_" in path:
            assert cfg["optim"]["lr"] == 0.005 and cfg["data"]["batch_size"] * 4 == 48
    google = load_config(os.path.join(os.path.dirname(CONFIGS[0]), "paper_darknet53_refcocog_google.json"))
    assert google["data"]["split_by"] == "google"


def test_optim_presets_and_explicit_values_win(tmp_path):
    cfg = load_config(None, ["optim.preset=vlt"])
    assert {k: cfg["optim"][k] for k in OPTIM_PRESETS["vlt"]} == OPTIM_PRESETS["vlt"]
    cfg = load_config(None, ["optim.preset=paper", "optim.lr=0.002"])
    assert cfg["optim"]["lr"] == 0.002 and cfg["optim"]["milestones"] == [40, 45] and cfg["optim"]["warmup_epochs"] == 1
    # a file's explicit values win over its own preset, and command-line values over both
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"optim": {"preset": "vlt", "lr": 0.0007}, "train": {"epochs": 3}}))
    cfg = load_config(str(path), ["train.epochs=4"])
    assert cfg["optim"]["lr"] == 0.0007 and cfg["optim"]["milestones"] == [40, 45] and cfg["train"]["epochs"] == 4
    # the saved resolved config reloads to the same thing
    save_config(cfg, str(tmp_path / "run" / "config.json"))
    assert load_config(str(tmp_path / "run" / "config.json")) == cfg


@pytest.mark.parametrize("overrides, key", [
    (["optim.lrr=1"], "optim.lrr"),
    (["trian.epochs=1"], "trian"),
    (["model.preset=resnet"], "model.preset"),
    (["model.overrides.heds=4"], "heds"),
    (["data.dataset=coco"], "data.dataset"),
    (["data.dataset=refcocog", "data.split_by=unc"], "split_by"),
    (["train.amp=fp8"], "train.amp"),
    (["optim.preset=sgd"], "optim.preset"),
    (["data.batch_size=0"], "data.batch_size"),
    (["eval.threshold=1.5"], "eval.threshold"),
    (["optim.backbone_lr_mult=-1"], "optim.backbone_lr_mult"),
    (["word_vectors.source=glove"], "word_vectors.glove"),
    (["optim=0.1"], "optim"),
    (["model.overrides.backbone_weights=null"], "model.overrides.backbone_weights"),
    (["model.preset=paper_darknet53", "model.overrides.backbone_weights=default"], "has no default weights"),
    (["model.overrides.attention=generic"], "ambiguous"),
    (["lr"], "key=value"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert key in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope.json"):
        load_config(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        load_config(str(bad))


def test_check_paths_names_the_missing_path(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path}", "data.dataset=refcoco"])
    with pytest.raises(ConfigError, match=f"data.root/data.dataset.*{tmp_path}/refcoco"):
        check_paths(cfg)
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"refs\(unc\).p"):
        check_paths(cfg)
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(b"")
    with pytest.raises(ConfigError, match="images/train2014"):
        check_paths(cfg)
    (tmp_path / "images" / "train2014").mkdir(parents=True)
    check_paths(cfg)  # complete layout: no error
    cfg = load_config(None, [f"data.root={tmp_path}", "data.dataset=refcoco", "word_vectors.source=glove",
                             "word_vectors.glove=/no/glove.txt"])
    with pytest.raises(ConfigError, match="word_vectors.glove.*/no/glove.txt"):
        check_paths(cfg)


def test_the_second_stage2_config_differs_from_stage2_only_by_the_partly_trained_backbone():
    """configs/demo_synref_stage2_partial.json is the paired twin of demo_synref_stage2.json (README's
    comparison table): a setting changed in one and not the other fails here."""
    folder = os.path.dirname(CONFIGS[0])
    a = load_config(os.path.join(folder, "demo_synref_stage2.json"))
    b = load_config(os.path.join(folder, "demo_synref_stage2_partial.json"))

    def flat(cfg, prefix=""):
        out = {}
        for k, v in cfg.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(a), flat(b)
    differ = {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}
    assert differ == {"model.overrides.frozen_backbone", "model.overrides.backbone_frozen_blocks",
                      "optim.backbone_lr_mult", "train.feature_cache_file", "output"}, differ
    assert fb["model.overrides.backbone_frozen_blocks"] == 7 and not fb["model.overrides.frozen_backbone"]
