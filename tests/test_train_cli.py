"""train.py end to end (subprocesses): the demo preset at 128 px on a 12-image synthetic set,
a few steps, then --eval-only and --export; bad configs fail before any work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # for `from train import main`

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def synref(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn"))
    res = _run("-m", "mmi.data.synthetic", "--out", root, "--images", "12", "--seed", "3", "--workers", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    return root


def test_demo_train_eval_export(synref, tmp_path):
    out = str(tmp_path / "run")
    res = _run("train.py", "--config", "configs/demo_synref.json", "--no-progress", "--set", f"data.root={synref}",
               "model.overrides.image_size=128", "data.batch_size=4", "data.workers=0", "train.epochs=2",
               "train.max_steps_per_epoch=2", "train.log_every=1", f"output={out}", "data.val_max_items=4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "done: 2 epochs, 4 steps" in res.stdout

    # run folder
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model"]["overrides"]["image_size"] == 128 and cfg["data"]["root"] == synref
    recs = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["images_per_s"] > 0 for r in train_recs)
    vals = [r for r in recs if r["kind"] == "val"]
    assert [r["epoch"] for r in vals] == [1, 2] and all(r["count"] == 4 for r in vals)
    png = open(os.path.join(out, "curves.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for name in ("last.pt", "best.pt"):
        ck = torch.load(os.path.join(out, name), weights_only=True)
        assert ck["format"] == "mmi-train/1" and ck["config"]["image_size"] == 128
        assert ck["run_config"]["output"] == out and ck["vocab"][:2] == ["<pad>", "<unk>"]
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["epoch"] == 2

    # --resume reuses the run's own config; --set extends it by one epoch
    res = _run("train.py", "--resume", os.path.join(out, "last.pt"), "--no-progress", "--set", "train.epochs=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "done: 3 epochs, 6 steps" in res.stdout
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["epoch"] == 3
    res = _run("train.py", "--resume", os.path.join(out, "nothing.pt"))
    assert res.returncode == 2 and "checkpoint not found" in res.stderr

    # evaluation of the training checkpoint, every expression of val, at the original size
    results = str(tmp_path / "results.json")
    res = _run("train.py", "--eval-only", "--checkpoint", os.path.join(out, "best.pt"), "--dataset", "synref",
               "--split", "val", "--data-root", synref, "--threshold", "0.4", "--out", results, "--workers", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "oIoU" in res.stdout and "mIoU" in res.stdout and "Prec@0.9" in res.stdout
    doc = json.load(open(results))
    from mmi.data import build_dataset
    from mmi.text import Vocabulary

    ds = build_dataset("synref", synref, "val", 128, Vocabulary(["x"]), 15, train=False)
    assert doc["count"] == len(ds) == len(doc["records"]) and doc["missing"] == 0 and doc["threshold"] == 0.4
    assert set(doc["totals"]) >= {"oIoU", "mIoU", "Prec@0.5", "Prec@0.9", "count"}
    assert "oIoU" in doc["definitions"] and doc["split_by"] == "unc"
    from pycocotools import mask as mask_utils

    inter = union = 0
    for r in doc["records"]:
        assert {"ref_id", "sent_id", "image_id", "file_name", "expression", "type", "iou", "intersection", "union"} <= set(r)
        m = mask_utils.decode({"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()})
        gt = ds.original_mask(r["index"])
        assert m.shape == gt.shape  # original resolution
        assert int((m & (gt > 0)).sum()) == r["intersection"]
        inter, union = inter + r["intersection"], union + r["union"]
    assert doc["totals"]["oIoU"] == pytest.approx(inter / union if union else 0.0)
    types = {r["type"] for r in doc["records"]}
    assert None not in types and set(doc["by_type"]) == types
    assert sum(t["count"] for t in doc["by_type"].values()) == doc["count"]

    # export: a smaller inference-only file that evaluates identically
    weights = str(tmp_path / "w.pt")
    res = _run("train.py", "--export", os.path.join(out, "best.pt"), "--out", weights)
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.path.getsize(weights) < os.path.getsize(os.path.join(out, "best.pt"))
    assert torch.load(weights, weights_only=True)["format"] == "mmi-inference/1"
    results2 = str(tmp_path / "results2.json")
    res = _run("train.py", "--eval-only", "--checkpoint", weights, "--dataset", "synref", "--split", "val",
               "--data-root", synref, "--threshold", "0.4", "--out", results2, "--workers", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.load(open(results2))["totals"] == doc["totals"]

    # the mirrored view averaged in (--flip): said in the output and the results, every expression kept
    results3 = str(tmp_path / "results3.json")
    res = _run("train.py", "--eval-only", "--checkpoint", weights, "--dataset", "synref", "--split", "val",
               "--data-root", synref, "--threshold", "0.4", "--out", results3, "--workers", "0", "--flip")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mirrored view" in res.stdout
    doc3 = json.load(open(results3))
    assert doc3["flip"] is True and doc["flip"] is False and doc3["count"] == doc["count"]
    assert [r["index"] for r in doc3["records"]] == [r["index"] for r in doc["records"]]


@pytest.mark.parametrize("extra, message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
    (["model.preset=resnet50"], "unknown model preset 'resnet50'"),
    (["data.root=/nonexistent/data"], "folder not found: /nonexistent/data"),
])
def test_bad_config_fails_before_any_work(tmp_path, extra, message):
    out = str(tmp_path / "run")
    from train import main

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--config", "configs/demo_synref.json", "--set", f"output={out}", *extra])
    assert code == 2 and message in err.getvalue()
    assert not os.path.exists(out)  # nothing was created


def test_cli_usage_errors():
    res = _run("train.py", "--eval-only", "--checkpoint", "x.pt")
    assert res.returncode == 2 and "--dataset --split" in res.stderr
    res = _run("train.py", "--eval-only", "--checkpoint", "/no/such.pt", "--dataset", "synref", "--split", "val")
    assert res.returncode == 2 and "checkpoint not found: /no/such.pt" in res.stderr
