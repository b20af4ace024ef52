"""Checkpoint formats, atomic writes, clear errors, RNG state, export."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from mmi.engine import checkpoint as ck
from mmi.engine.checkpoint import (CheckpointError, export_inference, get_rng_state, load_inference, load_training,
                                   save_inference, save_training, set_rng_state)
from mmi.model import build_model
from mmi.text import Vocabulary


@pytest.fixture(scope="module")
def model_vocab():
    torch.manual_seed(0)
    vocab = Vocabulary(["red", "left", "box"])
    return build_model("tiny", len(vocab)), vocab


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_inference_round_trip(model_vocab, tmp_path):
    model, vocab = model_vocab
    path = str(tmp_path / "m.pt")
    save_inference(path, model, vocab, {"dataset": "synref", "val": {"oIoU": 0.5}})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "mmi-inference/1" and raw["vocab"] == vocab.to_list()
    assert set(raw) == {"format", "model", "config", "vocab", "meta"}
    m2, v2, meta = load_inference(path)
    assert v2 == vocab and meta == {"dataset": "synref", "val": {"oIoU": 0.5}}
    assert _same_weights(model, m2) and not m2.training
    assert m2.config == model.config
    assert [f for f in os.listdir(tmp_path) if f != "m.pt"] == []  # no temp file left behind


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "bare_state_dict", "wrong_format", "not_torch", "unsafe_pickle",
                                  "random_bytes", "corrupt_inside_zip"])
def test_bad_files_raise_checkpoint_error_naming_the_file(model_vocab, tmp_path, case):
    model, vocab = model_vocab
    path = str(tmp_path / f"{case}.pt")
    good = str(tmp_path / "good.pt")
    save_inference(good, model, vocab)
    expect = {"missing": "not found", "empty": "empty", "truncated": "cannot read", "bare_state_dict": "not an MMI checkpoint",
              "wrong_format": "unknown checkpoint format", "not_torch": "cannot read", "unsafe_pickle": "(random.Random)",
              "random_bytes": "is corrupt or truncated", "corrupt_inside_zip": "is corrupt"}[case]
    if case == "empty":
        open(path, "wb").close()
    elif case == "truncated":
        data = open(good, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif case == "bare_state_dict":
        torch.save(model.state_dict(), path)
    elif case == "wrong_format":
        torch.save({"format": "something/9", "model": {}, "config": {}, "vocab": []}, path)
    elif case == "not_torch":
        open(path, "w").write("hello, not a checkpoint\n")
    elif case == "unsafe_pickle":
        torch.save({"format": "mmi-inference/1", "obj": random.Random(1)}, path)
    elif case == "random_bytes":
        for seed in range(8):  # several, as torch's error depends on the first bytes
            open(path, "wb").write(np.random.default_rng(seed).integers(0, 256, 4000, dtype=np.uint8).tobytes())
            with pytest.raises(CheckpointError) as err:
                load_inference(path)
            assert "corrupt" in str(err.value) and "other than" not in str(err.value) and "file an issue" not in str(err.value)
    elif case == "corrupt_inside_zip":  # a valid zip whose pickle is garbage
        import zipfile

        with zipfile.ZipFile(good) as z:
            names = z.namelist()
            with zipfile.ZipFile(path, "w") as out:
                for n in names:
                    out.writestr(n, b"\x8c\x00garbage" * 10 if n.endswith("data.pkl") else z.read(n))
    with pytest.raises(CheckpointError) as err:
        load_inference(path)
    text = str(err.value)
    assert path in text and expect in text, text
    assert "file an issue" not in text and not text.rstrip().endswith(":")  # no torch boilerplate, nothing dangling


def test_training_checkpoint_is_not_accepted_for_resume_when_inference(model_vocab, tmp_path):
    model, vocab = model_vocab
    path = str(tmp_path / "inf.pt")
    save_inference(path, model, vocab)
    with pytest.raises(CheckpointError, match="inference checkpoint"):
        load_training(path)


def test_atomic_write_killed_midway_keeps_previous_file(model_vocab, tmp_path, monkeypatch):
    model, vocab = model_vocab
    path = str(tmp_path / "last.pt")
    save_inference(path, model, vocab, {"epoch": 1})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save({"format": "mmi-inference/1", "model": {"x": torch.zeros(1000)}}, f)
        f.truncate(100)  # partial bytes, then the "crash"
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_inference(path, model, vocab, {"epoch": 2})
    monkeypatch.setattr(ck.torch, "save", real_save)
    m2, _, meta = load_inference(path)
    assert meta == {"epoch": 1} and _same_weights(model, m2)
    assert os.listdir(tmp_path) == ["last.pt"]  # the partial temp file was removed


def test_rng_state_round_trip_through_weights_only(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gauss value in the python state
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    set_rng_state(loaded)
    got = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_full_training_checkpoint_and_export(model_vocab, tmp_path):
    model, vocab = model_vocab
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    b = {"image": torch.randn(2, 3, 64, 64), "words": torch.tensor([[2, 3, 0, 0, 0, 0, 0, 0]] * 2),
         "word_mask": torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0]] * 2).bool(), "mask": torch.ones(2, 1, 64, 64)}
    model(b)["loss"].backward()
    opt.step()
    model.eval()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = str(tmp_path / "last.pt")
    save_training(path, model=model, vocab=vocab, optimizer=opt, scheduler=sched, scaler=scaler, epoch=3, step=30,
                  best=0.4, run_config={"output": "x"}, meta={"dataset": "refcoco"})
    raw = torch.load(path, weights_only=True)  # everything inside is weights_only-safe
    assert raw["format"] == "mmi-train/1" and raw["epoch"] == 3 and raw["step"] == 30 and raw["best"] == 0.4
    assert {"python", "numpy", "torch"} <= set(raw["rng"][0])
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(raw["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # a training checkpoint serves inference directly ...
    m2, v2, meta = load_inference(path)
    assert _same_weights(model, m2) and v2 == vocab and meta["epoch"] == 3
    # ... and exports to a smaller inference-only file, fp32 or fp16
    out32, out16 = str(tmp_path / "w32.pt"), str(tmp_path / "w16.pt")
    export_inference(path, out32)
    export_inference(path, out16, half=True)
    assert os.path.getsize(out16) < os.path.getsize(out32) < os.path.getsize(path)
    m32, _, meta32 = load_inference(out32)
    assert _same_weights(model, m32) and meta32["epoch"] == 3 and meta32["dataset"] == "refcoco"
    assert torch.load(out32, weights_only=True)["format"] == "mmi-inference/1"
    m16, _, _ = load_inference(out16)
    w, w16 = model.state_dict(), m16.state_dict()
    assert all(w16[k].dtype == w[k].dtype for k in w)  # cast back to the model's dtypes
    key = next(k for k in w if w[k].is_floating_point() and w[k].numel() > 100)
    assert torch.allclose(w16[key], w[key], atol=1e-2) and not torch.equal(w16[key], w[key])


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(model_vocab, tmp_path, monkeypatch):
    import errno

    model, vocab = model_vocab
    path = str(tmp_path / "last.pt")
    save_inference(path, model, vocab, {"epoch": 1})
    real_open = ck._open_tmp

    class FullDisk:  # a real file that accepts 64 KiB, then fails as a full disk does
        def __init__(self, p):
            self.f, self.left = real_open(p), 65536

        def write(self, data):
            if len(data) > self.left:
                self.f.write(bytes(data)[: self.left])
                self.left = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ck, "_open_tmp", FullDisk)
    with pytest.raises(CheckpointError) as err:
        save_inference(path, model, vocab, {"epoch": 2})
    text = str(err.value)
    assert f"could not write checkpoint {path}: the disk is full (ENOSPC)" in text
    assert "previous last.pt is kept unchanged" in text
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["last.pt"]  # the partial temp file was removed
    monkeypatch.setattr(ck, "_open_tmp", real_open)
    m2, _, meta = load_inference(path)
    assert meta == {"epoch": 1} and _same_weights(model, m2)


_WRITER = r"""
import os, sys, torch
from mmi.engine.checkpoint import atomic_save
path = sys.argv[1]
big = {"format": "mmi-inference/1", "model": {"w": torch.arange(40_000_000, dtype=torch.float32)}, "config": {},
       "vocab": [], "meta": {"n": 0}}
atomic_save({"format": "mmi-inference/1", "model": {"w": torch.ones(10)}, "config": {}, "vocab": [],
             "meta": {"n": 0}}, path)
print("first", flush=True)
for n in range(1, 1000):
    big["meta"]["n"] = n
    atomic_save(big, path)
"""


def test_process_killed_while_writing_leaves_the_previous_file_loadable(tmp_path):
    """A real process writing 160 MB checkpoints in a loop is SIGKILLed while a temporary file
    is being written; the last complete file still loads (weights_only) and the next run's
    clean-up removes the partial file."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = str(tmp_path / "last.pt")
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first"
        deadline = time.time() + 60
        partial = []
        while time.time() < deadline and not partial:  # a temporary file being written, 1 MB or more so far
            partial = [f for f in os.listdir(tmp_path) if f.endswith(".tmp") and os.path.getsize(tmp_path / f) > 2**20]
            time.sleep(0.002)
        assert partial, "the writer never started a second checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert left and os.path.getsize(tmp_path / left[0]) < 160_000_000  # killed in the middle of a write
    obj = torch.load(path, weights_only=True)  # the previous complete file
    assert obj["format"] == "mmi-inference/1"
    n = obj["meta"]["n"]
    w = obj["model"]["w"]
    assert (n == 0 and torch.equal(w, torch.ones(10))) or (n > 0 and w.numel() == 40_000_000 and float(w[-1]) == 39_999_999.0)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):  # the partial file is recognised as such
        ck.read_checkpoint(str(tmp_path / left[0]))
    assert ck.remove_partial_files(str(tmp_path)) == left and os.listdir(tmp_path) == ["last.pt"]


def test_export_backbone_writes_a_state_dict_that_backbone_weights_reads(model_vocab, tmp_path, capsys):
    """``python -m mmi.engine.checkpoint backbone CKPT OUT``: the backbone of a checkpoint, loaded
    back through the ``backbone_weights`` setting, equals the checkpoint's; a checkpoint with no
    backbone in it is refused by name."""
    vocab = model_vocab[1]
    model = build_model("tiny", len(vocab))  # its own: the module's shared model stays as it was
    src, out = str(tmp_path / "m.pt"), str(tmp_path / "bb.pth")
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.5)  # unlike any fresh initialisation
    save_inference(src, model, vocab)
    ck.main(["backbone", src, out])
    assert "backbone tensors of" in capsys.readouterr().out
    other = build_model("tiny", len(vocab), backbone_weights=out)
    assert _same_weights(model.backbone, other.backbone)
    assert not _same_weights(model.vision, other.vision)  # the head is not taken along
    bare = str(tmp_path / "bare.pt")
    ck.atomic_save({"format": "mmi-inference/1", "model": {"head.w": torch.zeros(1)}, "config": model.config,
                    "vocab": vocab.to_list(), "meta": {}}, bare)
    with pytest.raises(SystemExit, match="bare.pt: no backbone weights"):
        ck.main(["backbone", bare, str(tmp_path / "none.pth")])
    assert not os.path.exists(tmp_path / "none.pth")


def test_average_writes_the_mean_of_the_weights(model_vocab, tmp_path, capsys):
    """``python -m mmi.engine.checkpoint average A B --out C``: float tensors are the mean, integer
    buffers the first's; the result loads like any inference checkpoint and names its inputs;
    another network or vocabulary is refused by name."""
    vocab = model_vocab[1]
    torch.manual_seed(1)
    a, b = build_model("tiny", len(vocab)), build_model("tiny", len(vocab))
    with torch.no_grad():
        a.backbone.stem[0][1].num_batches_tracked.fill_(3)
    pa, pb, out = str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), str(tmp_path / "avg.pt")
    save_inference(pa, a, vocab, {"dataset": "synref", "epoch": 4, "val": {"oIoU": 0.5}})
    save_inference(pb, b, vocab, {"dataset": "synref", "epoch": 2})
    ck.main(["average", pa, pb, "--out", out])
    assert "mean of 2 checkpoints" in capsys.readouterr().out
    m, v, meta = load_inference(out)
    assert v == vocab and meta["dataset"] == "synref"
    assert [(x["file"], x["epoch"]) for x in meta["average_of"]] == [(pa, 4), (pb, 2)]
    sa, sb, sm = a.state_dict(), b.state_dict(), m.state_dict()
    for k, t in sm.items():
        if t.is_floating_point():
            assert torch.allclose(t, (sa[k] + sb[k]) / 2, atol=1e-6), k
        else:
            assert torch.equal(t, sa[k]), k
    assert not torch.equal(sm["backbone.stem.0.0.weight"], sa["backbone.stem.0.0.weight"])
    wider = str(tmp_path / "wide.pt")
    save_inference(wider, build_model("tiny", len(vocab), dim=48, heads=2), vocab)
    with pytest.raises(SystemExit, match="wide.pt"):
        ck.main(["average", pa, wider, "--out", str(tmp_path / "x.pt")])
    other = str(tmp_path / "other.pt")
    save_inference(other, b, Vocabulary(["blue", "right", "ball"]))
    with pytest.raises(SystemExit, match="another vocabulary"):
        ck.main(["average", pa, other, "--out", str(tmp_path / "y.pt")])
    with pytest.raises(SystemExit, match="at least two"):
        ck.main(["average", pa, "--out", str(tmp_path / "z.pt")])
    assert not any(os.path.exists(tmp_path / f) for f in ("x.pt", "y.pt", "z.pt"))


def test_module_runs_as_a_command_without_a_runpy_warning():
    """``python -m mmi.engine.checkpoint`` (the documented ``backbone``/``average`` commands) runs
    the module once: the package re-exports its names lazily, so runpy finds it unimported; the
    re-exported names still resolve from ``mmi.engine``."""
    import subprocess
    import sys

    import mmi.engine

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "mmi.engine.checkpoint", "--help"],
                          cwd=root, capture_output=True, text=True, timeout=600)  # a hang guard: a starved
    # machine (the suite at nice 19 beside two training runs) took 90 s to import torch for --help
    assert proc.returncode == 0, proc.stderr
    assert "average" in proc.stdout and "RuntimeWarning" not in proc.stderr
    assert mmi.engine.load_inference is load_inference and mmi.engine.CheckpointError is CheckpointError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmi.engine.nope  # noqa: B018
