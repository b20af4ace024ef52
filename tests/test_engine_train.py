"""The training loop on the tiny preset and the refer-layout fixture: exact resume (at an
epoch boundary and mid-epoch), NaN stop, outputs, evaluation records."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch

from mmi.engine.checkpoint import CheckpointError, load_inference, load_training
from mmi.engine.config import load_config
from mmi.engine.evaluate import evaluate
from mmi.engine.trainer import NonFiniteLossError, build_optimizer, lr_factor, train

try:
    import fixtures_refer as fx
except ImportError:  # tests/ imported as a package
    from tests import fixtures_refer as fx

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("refer"))
    fx.write_refer_fixture(path)
    return path


def _cfg(root: str, out: str, *extra: str) -> dict:
    # dropout 0.1 so that the restored torch RNG matters; batch 1 -> 3 steps per epoch
    return load_config(None, ["model.preset=tiny", "model.overrides.dropout=0.1", "data.dataset=refcoco",
                              f"data.root={root}", "data.batch_size=1", "data.workers=0", "train.epochs=2",
                              f"output={out}", "word_vectors.source=random", "train.log_every=1",
                              "optim.lr=0.003", "optim.warmup_iters=2", "optim.milestones=[1]", *extra])


def _assert_same_state(a: str, b: str) -> None:
    ca, cb = load_training(a), load_training(b)
    assert ca["epoch"] == cb["epoch"] and ca["step"] == cb["step"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][name], sb[k][name])
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"]


def test_resume_at_epoch_boundary_is_exact(root, tmp_path):
    straight = train(_cfg(root, str(tmp_path / "a")), progress=False)
    assert straight["epoch"] == 2 and straight["step"] == 6
    train(_cfg(root, str(tmp_path / "b"), "train.epochs=1"), progress=False)
    assert load_training(str(tmp_path / "b" / "last.pt"))["epoch"] == 1
    train(_cfg(root, str(tmp_path / "b")), resume=str(tmp_path / "b" / "last.pt"), progress=False)
    _assert_same_state(str(tmp_path / "a" / "last.pt"), str(tmp_path / "b" / "last.pt"))
    # and the weights did move during training
    init = train(_cfg(root, str(tmp_path / "c"), "train.epochs=1", "train.max_steps_per_epoch=1"), progress=False)
    assert init["step"] == 1
    c, a = load_training(str(tmp_path / "c" / "last.pt")), load_training(str(tmp_path / "a" / "last.pt"))
    assert any(not torch.equal(c["model"][k], a["model"][k]) for k in a["model"])

    # outputs of the straight run
    out = tmp_path / "a"
    for name in ("config.json", "log.jsonl", "last.pt", "best.pt", "curves.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in lines if r["kind"] == "val"] == [1, 2]
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 0.003
    # warm-up over 2 steps then x0.1 from epoch 1 (the milestone) on
    lrs = [r["lr"] for r in lines if r["kind"] == "train"]
    assert lrs[0] == pytest.approx(0.003 * 0.001) and lrs[2] == pytest.approx(0.003)
    assert lrs[3] == pytest.approx(0.0003)
    # the checkpoint loads as an inference model too
    model, vocab, meta = load_inference(str(out / "best.pt"))
    assert meta["dataset"] == "refcoco" and len(vocab) == model.config["vocab_size"]


def test_resume_mid_epoch_is_exact(root, tmp_path):
    train(_cfg(root, str(tmp_path / "a")), progress=False)
    # a time budget of 0 minutes stops after the first step and saves last.pt mid-epoch
    first = train(_cfg(root, str(tmp_path / "b"), "train.time_budget_min=0"), progress=False)
    assert first["stopped_early"] and first["step"] == 1
    ck = load_training(str(tmp_path / "b" / "last.pt"))
    assert ck["epoch"] == 0 and ck["step_in_epoch"] == 1
    train(_cfg(root, str(tmp_path / "b")), resume=str(tmp_path / "b" / "last.pt"), progress=False)
    _assert_same_state(str(tmp_path / "a" / "last.pt"), str(tmp_path / "b" / "last.pt"))


def test_backbone_lr_mult_gives_the_backbone_its_own_group():
    from mmi.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 30)
    o = load_config(None, ["optim.lr=0.01"])["optim"]
    assert o["backbone_lr_mult"] == 1.0
    one = build_optimizer(model, o)
    assert len(one.param_groups) == 1 and len(one.param_groups[0]["params"]) == len(list(model.parameters()))
    two = build_optimizer(model, dict(o, backbone_lr_mult=0.0))
    head, bb = two.param_groups
    assert head["lr"] == pytest.approx(0.01) and bb["lr"] == 0.0
    assert {id(p) for p in bb["params"]} == {id(p) for p in model.backbone.parameters()}
    assert len(head["params"]) + len(bb["params"]) == len(list(model.parameters()))
    # one step at backbone lr 0: the backbone's weights stay, the rest moves
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    two.step()
    moved = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert moved and all(not k.startswith("backbone.") for k in moved)
    assert len(moved) == len(head["params"])


def test_resume_with_a_backbone_group_is_exact(root, tmp_path):
    extra = ("optim.backbone_lr_mult=0.5",)
    train(_cfg(root, str(tmp_path / "a"), *extra), progress=False)
    ck = load_training(str(tmp_path / "a" / "last.pt"))
    lrs = [g["lr"] for g in ck["optimizer"]["param_groups"]]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(0.5 * lrs[0])
    train(_cfg(root, str(tmp_path / "b"), "train.time_budget_min=0", *extra), progress=False)
    train(_cfg(root, str(tmp_path / "b"), *extra), resume=str(tmp_path / "b" / "last.pt"), progress=False)
    _assert_same_state(str(tmp_path / "a" / "last.pt"), str(tmp_path / "b" / "last.pt"))
    # resuming it with one group instead of two is refused, naming the checkpoint and the setting
    with pytest.raises(CheckpointError, match="last.pt: its optimiser state does not fit.*backbone_lr_mult"):
        train(_cfg(root, str(tmp_path / "b"), "train.epochs=3"), resume=str(tmp_path / "b" / "last.pt"), progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(root, tmp_path, monkeypatch):
    from mmi.model import MMI

    out = str(tmp_path / "nan")
    train(_cfg(root, out, "train.epochs=1"), progress=False)
    before = load_training(os.path.join(out, "last.pt"))
    forward = MMI.forward

    def poisoned(self, batch, return_attention=False):
        res = forward(self, batch, return_attention)
        if self.training:
            res["loss"] = res["loss"] * float("nan")
        return res

    monkeypatch.setattr(MMI, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 2.*last.pt \\(epoch 1\\)"):
        train(_cfg(root, out), resume=os.path.join(out, "last.pt"), progress=False)
    after = load_training(os.path.join(out, "last.pt"))
    assert after["epoch"] == 1 and after["step"] == before["step"]
    assert all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])
    assert "non-finite loss" in open(os.path.join(out, "log.jsonl")).read()


def test_lr_factor_warmup_and_steps():
    o = {"warmup_iters": 0, "warmup_epochs": 1, "warmup_factor": 0.0, "schedule": "step", "milestones": [2, 3], "gamma": 0.1}
    assert [lr_factor(s, 4, o) for s in (0, 2, 4, 7)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert lr_factor(8, 4, o) == pytest.approx(0.1) and lr_factor(12, 4, o) == pytest.approx(0.01)
    assert lr_factor(12, 4, dict(o, schedule="constant")) == 1.0


def test_evaluate_records_match_totals(root, tmp_path):
    from mmi.data import build_dataset
    from mmi.model import build_model
    from mmi.text import Vocabulary

    torch.manual_seed(0)
    model = build_model("tiny", 30).eval()
    ds = build_dataset("refcoco", root, "testB", 64, Vocabulary(["square", "small"]), 8, train=False)
    res = evaluate(model, ds, torch.device("cpu"), threshold=0.5, batch_size=2)
    assert res["count"] == len(ds) == 3 and res["missing"] == 0
    recs = res["records"]
    assert sorted(r["index"] for r in recs) == [0, 1, 2]
    from pycocotools import mask as mask_utils

    for r in recs:
        gt = ds.original_mask(r["index"])
        pred = mask_utils.decode({"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()})
        assert pred.shape == gt.shape == (r["height"], r["width"])
        assert int((pred & (gt > 0)).sum()) == r["intersection"]
        assert int((pred | (gt > 0)).sum()) == r["union"]
    total_i, total_u = sum(r["intersection"] for r in recs), sum(r["union"] for r in recs)
    assert res["totals"]["oIoU"] == pytest.approx(total_i / total_u if total_u else 0.0)


def test_evaluate_with_one_region_kept_scores_the_peak_region(root, monkeypatch):
    """evaluate(regions="peak"): each record's mask is the region of the all-regions mask that
    holds the highest probability; the totals are recomputed from those masks."""
    from pycocotools import mask as mask_utils

    import mmi.engine.evaluate as evaluate_module
    from mmi.data import build_dataset
    from mmi.model import build_model
    from mmi.regions import count_regions
    from mmi.text import Vocabulary

    def two_blobs(model, batch, device, amp="off", channels_last=False, mirror=None):
        size = batch["image"].shape[-1]
        prob = torch.zeros(len(batch["meta"]), size, size)
        prob[:, 8:40, 8:40] = 0.7  # a large region
        prob[:, 48:56, 48:56] = 0.9  # a small one holding the peak
        return prob

    monkeypatch.setattr(evaluate_module, "probabilities", two_blobs)
    model = build_model("tiny", 30).eval()
    ds = build_dataset("refcoco", root, "testB", 64, Vocabulary(["square", "small"]), 8, train=False)
    every = evaluate(model, ds, torch.device("cpu"), batch_size=2)
    peak = evaluate(model, ds, torch.device("cpu"), batch_size=2, regions="peak")

    def decode(r):
        return mask_utils.decode({"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}).astype(bool)

    for a, b in zip(every["records"], peak["records"]):
        ma, mb = decode(a), decode(b)
        assert count_regions(ma) == 2 and count_regions(mb) == 1
        assert (mb <= ma).all() and 0 < mb.sum() < ma.sum() / 4
        gt = ds.original_mask(b["index"]) > 0
        assert b["intersection"] == int((mb & gt).sum()) and b["union"] == int((mb | gt).sum())
    total_i, total_u = (sum(r[k] for r in peak["records"]) for k in ("intersection", "union"))
    assert peak["totals"]["oIoU"] == pytest.approx(total_i / total_u)
    with pytest.raises(ValueError, match="regions must be one of"):
        evaluate(model, ds, torch.device("cpu"), batch_size=2, regions="largest")


def test_lr_factor_cosine_after_warmup():
    o = {"warmup_iters": 4, "warmup_epochs": 0, "warmup_factor": 0.0, "schedule": "cosine", "milestones": [],
         "gamma": 0.1, "final_factor": 0.1}
    assert lr_factor(2, 10, o, 24) == pytest.approx(0.5)  # warm-up
    assert lr_factor(4, 10, o, 24) == pytest.approx(1.0)  # peak right after it
    assert lr_factor(14, 10, o, 24) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert lr_factor(24, 10, o, 24) == pytest.approx(0.1) and lr_factor(30, 10, o, 24) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        lr_factor(5, 10, o)


def test_amp_auto_follows_the_cpu_flags(monkeypatch):
    from mmi.engine import precision

    cpu = torch.device("cpu")
    assert isinstance(precision.cpu_flags(), frozenset)  # the real /proc/cpuinfo reader
    assert precision.resolve_amp("off", cpu) == "off" and precision.resolve_amp("bf16", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.resolve_amp("auto", cpu) == "off"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.resolve_amp("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision.resolve_amp("auto", cpu) == "bf16"
    lin = torch.nn.Linear(4, 4)
    with precision.autocast(cpu, "bf16"):
        assert lin(torch.ones(2, 4)).dtype == torch.bfloat16
    with precision.autocast(cpu, "off"):
        assert lin(torch.ones(2, 4)).dtype == torch.float32


def test_lr_factor_cosine_over_time_progress():
    o = {"warmup_iters": 4, "warmup_epochs": 0, "warmup_factor": 0.0, "schedule": "cosine", "milestones": [],
         "gamma": 0.1, "final_factor": 0.1}
    # the warm-up stays in steps; the cosine follows the fraction of the budget spent, not the step
    assert lr_factor(2, 10, o, None, progress=0.0) == pytest.approx(0.5)
    assert lr_factor(100, 10, o, None, progress=0.5) == pytest.approx(0.55)
    assert lr_factor(5, 10, o, None, progress=1.0) == pytest.approx(0.1)
    assert lr_factor(5, 10, o, None, progress=3.0) == pytest.approx(0.1)  # past the budget: the final factor


def test_cosine_over_time_needs_a_budget(root, tmp_path):
    from mmi.engine.config import ConfigError

    with pytest.raises(ConfigError, match="time_budget_min"):
        _cfg(root, str(tmp_path / "a"), "optim.schedule=cosine", "optim.cosine_over=time")
    with pytest.raises(ConfigError, match="optim.cosine_over"):
        _cfg(root, str(tmp_path / "a"), "optim.cosine_over=time", "train.time_budget_min=1")  # schedule step
    with pytest.raises(ConfigError, match="optim.cosine_over"):
        _cfg(root, str(tmp_path / "a"), "optim.schedule=cosine", "optim.cosine_over=minutes")


def test_cosine_over_time_ends_the_run_with_validation(root, tmp_path):
    """At the budget's end the run closes its partial epoch: validation, best.pt, lr at the final factor."""
    out = str(tmp_path / "t")
    s = train(_cfg(root, out, "train.epochs=1000", "optim.schedule=cosine", "optim.cosine_over=time",
                   "optim.final_factor=0.05", "optim.warmup_iters=0", "train.time_budget_min=0.02"),
              progress=False)
    assert s["stopped_early"] and s["signal"] is None
    rows = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))]
    events = [r.get("message") for r in rows if r["kind"] == "event"]
    assert "time budget reached (end of the cosine)" in events
    assert [r for r in rows if r["kind"] == "val"], "the schedule's end is validated"
    assert os.path.exists(os.path.join(out, "best.pt"))
    ck = load_training(os.path.join(out, "last.pt"))
    assert ck["meta"]["time_progress"] == pytest.approx(1.0)
    lr = ck["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.003 * 0.05, rel=1e-3)


def test_init_from_starts_a_new_run_from_a_checkpoint(root, tmp_path):
    """train.init_from: a fresh run (new optimiser, step 0) with another checkpoint's weights and
    vocabulary, e.g. its backbone frozen; a checkpoint of another architecture is refused by name."""
    from mmi.engine.checkpoint import export_inference
    from mmi.engine.config import ConfigError
    from mmi.engine.trainer import Trainer

    train(_cfg(root, str(tmp_path / "a"), "train.epochs=1"), progress=False)
    export_inference(str(tmp_path / "a" / "last.pt"), str(tmp_path / "a.pt"))
    src = load_inference(str(tmp_path / "a.pt"))
    tr = Trainer(_cfg(root, str(tmp_path / "b"), f"train.init_from={tmp_path / 'a.pt'}",
                      "model.overrides.frozen_backbone=true"), progress=False)
    assert tr.state.step == 0 and tr.vocab.words == src[1].words
    for k, v in src[0].state_dict().items():
        assert torch.equal(tr.model.state_dict()[k], v), k
    assert all(not p.requires_grad for p in tr.model.backbone.parameters())
    with pytest.raises(ConfigError, match="train.init_from"):
        Trainer(_cfg(root, str(tmp_path / "c"), f"train.init_from={tmp_path / 'a.pt'}", "model.overrides.dim=48",
                     "model.overrides.heads=2"), progress=False)
    with pytest.raises(ConfigError, match="train.init_from"):
        Trainer(_cfg(root, str(tmp_path / "d"), f"train.init_from={tmp_path / 'missing.pt'}"), progress=False)


def test_init_from_gives_a_trained_model_a_refiner_and_trains_it_alone(root, tmp_path):
    """train.init_from with refine_channels and refine_only: the checkpoint (no refiner) loads
    with the refiner left at its own start (logged as init_new), the refiner's weights are all
    that train, and every other weight and BatchNorm statistic ends as the checkpoint's; a
    checkpoint that lacks more than the refiner is still refused."""
    from mmi.engine.checkpoint import export_inference
    from mmi.engine.config import ConfigError

    train(_cfg(root, str(tmp_path / "a"), "train.epochs=1"), progress=False)
    export_inference(str(tmp_path / "a" / "last.pt"), str(tmp_path / "a.pt"))
    src = load_inference(str(tmp_path / "a.pt"))[0].state_dict()
    out = str(tmp_path / "r")
    done = train(_cfg(root, out, f"train.init_from={tmp_path / 'a.pt'}", "train.epochs=1",
                      "model.overrides.refine_channels=4", "model.overrides.refine_only=true"), progress=False)
    assert done["step"] > 0
    start = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))][0]
    assert start["init_new"] == ["refiner"]
    state = load_training(os.path.join(out, "last.pt"))["model"]
    for k, v in src.items():
        assert torch.equal(state[k], v), k
    refiner = {k: v for k, v in state.items() if k.startswith("refiner.")}
    assert refiner and not torch.equal(refiner["refiner.out.weight"], torch.zeros_like(refiner["refiner.out.weight"]))
    with pytest.raises(ConfigError, match="train.init_from"):  # a refiner-less model cannot load a refiner
        train(_cfg(root, str(tmp_path / "x"), f"train.init_from={os.path.join(out, 'last.pt')}"), progress=False)


def test_a_finished_time_budget_run_resumes_to_nothing(root, tmp_path):
    """A run whose cosine over time has ended is complete: --resume trains no further step."""
    out = str(tmp_path / "t")
    extra = ("train.epochs=1000", "optim.schedule=cosine", "optim.cosine_over=time", "optim.warmup_iters=0",
             "train.time_budget_min=0.01")
    first = train(_cfg(root, out, *extra), progress=False)
    again = train(_cfg(root, out, *extra), resume="auto", progress=False)
    assert again["step"] == first["step"] and not again["stopped_early"]
    rows = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))]
    assert rows[-2].get("message") == "time budget already spent"


def test_uint8_transfer_trains_the_same_weights(root, tmp_path):
    """data.uint8_transfer: batches leave the loader as uint8 and are normalised in the step;
    the trained state is bitwise that of the float path (also with batch 2, where collate stacks)."""
    a = train(_cfg(root, str(tmp_path / "a"), "data.batch_size=2"), progress=False)
    b = train(_cfg(root, str(tmp_path / "b"), "data.batch_size=2", "data.uint8_transfer=true"), progress=False)
    assert a["step"] == b["step"] > 0
    _assert_same_state(str(tmp_path / "a" / "last.pt"), str(tmp_path / "b" / "last.pt"))
    assert json.load(open(tmp_path / "b" / "config.json"))["data"]["uint8_transfer"] is True


def test_persistent_loader_workers_train_the_same_weights(root, tmp_path, monkeypatch):
    """data.persistent_workers (the default): one training loader whose worker processes live
    for the whole run, the epoch travelling with each index, and one validation loader kept
    between validations; the trained state and the validations are those of loaders made anew
    each epoch and of no workers at all, also when each epoch stops early
    (train.max_steps_per_epoch) and when a run resumes mid-epoch."""
    import mmi.engine.evaluate as evaluate_module
    import mmi.engine.trainer as trainer_module

    made = {"train": [], "val": []}
    original = trainer_module.DataLoader

    def counted(kind):
        class Counted(original):
            def __init__(self, *args, **kwargs):
                made[kind].append(bool(kwargs.get("persistent_workers")))
                super().__init__(*args, **kwargs)
        return Counted

    monkeypatch.setattr(trainer_module, "DataLoader", counted("train"))
    monkeypatch.setattr(evaluate_module, "DataLoader", counted("val"))

    def run(name, *extra, resume=None):
        for v in made.values():
            v.clear()
        # seed 2: the fixture's objects draw other expressions in each epoch (with seed 0 they happen not to)
        out = tmp_path / name
        summary = train(_cfg(root, str(out), "train.epochs=3", "train.max_steps_per_epoch=2", "train.seed=2", *extra),
                        resume=resume, progress=False)
        vals = [r["oIoU"] for r in map(json.loads, open(out / "log.jsonl")) if r["kind"] == "val"]
        return summary, vals

    _, vals = run("none")  # no worker processes: the validation loader is kept all the same
    assert made == {"train": [False] * 3, "val": [False]} and len(vals) == 3
    assert run("anew", "data.workers=2", "data.persistent_workers=false")[1] == vals
    assert made == {"train": [False] * 3, "val": [False] * 3}
    assert run("kept", "data.workers=2")[1] == vals
    assert made == {"train": [True], "val": [True]}  # one loader of each for three epochs
    for name in ("anew", "kept"):
        _assert_same_state(str(tmp_path / "none" / "last.pt"), str(tmp_path / name / "last.pt"))
    first, _ = run("resumed", "data.workers=2", "train.time_budget_min=0")
    assert first["stopped_early"] and first["step"] == 1
    run("resumed", "data.workers=2", resume=str(tmp_path / "resumed" / "last.pt"))
    _assert_same_state(str(tmp_path / "none" / "last.pt"), str(tmp_path / "resumed" / "last.pt"))


def test_train_lines_say_how_much_time_went_waiting_for_the_loader(root, tmp_path, monkeypatch):
    """Each train line of the log reports, since the previous one, the images/s over the
    wall-clock and the share of it spent waiting for the loader: near 1 with a loader that
    takes 1 s an item (a tiny step takes far less, even on a busy machine), far lower with the plain one."""
    from mmi.data import RefDataset

    def lines(out):
        return [r for r in map(json.loads, open(out / "log.jsonl")) if r["kind"] == "train"]

    train(_cfg(root, str(tmp_path / "plain"), "train.epochs=1"), progress=False)
    plain = lines(tmp_path / "plain")
    slow_item = RefDataset.__getitem__

    def slow(self, index):
        time.sleep(1.0)
        return slow_item(self, index)

    monkeypatch.setattr(RefDataset, "__getitem__", slow)
    train(_cfg(root, str(tmp_path / "slow"), "train.epochs=1"), progress=False)
    slowed = lines(tmp_path / "slow")
    assert len(plain) == len(slowed) == 3
    for r in plain + slowed:
        assert 0 <= r["data_wait"] <= 1 and 0 < r["window_images_per_s"]
    assert min(r["data_wait"] for r in slowed) > 0.5
    assert max(r["window_images_per_s"] for r in slowed) < 1.0
    assert sum(r["data_wait"] for r in plain) < sum(r["data_wait"] for r in slowed) / 2


def test_partly_frozen_backbone_trains_its_late_blocks_from_a_memo_file(root, tmp_path):
    """backbone_frozen_blocks with a feature-cache file: the fixed blocks keep their weights and
    statistics, the later ones learn, and the memo written is of the fixed blocks (a second run
    reads every image from it)."""
    from mmi.engine.trainer import Trainer
    from mmi.model.feature_cache import FeatureCache

    memo = str(tmp_path / "memo.pt")
    extra = ("model.overrides.backbone_frozen_blocks=2", "train.cache_backbone_gb=0.01",
             f"train.feature_cache_file={memo}", "train.epochs=1", "model.overrides.dropout=0.0")
    tr = Trainer(_cfg(root, str(tmp_path / "a"), *extra), progress=False)
    before = {k: v.clone() for k, v in tr.model.backbone.state_dict().items()}
    tr.fit()
    after = tr.model.backbone.state_dict()
    fixed = [k for k in before if k.startswith(("stem.", "stage8."))]
    assert fixed and all(torch.equal(before[k], after[k]) for k in fixed)
    assert not torch.equal(before["stage16.0.weight"], after["stage16.0.weight"])
    cache = FeatureCache(10**8)
    n = cache.load(memo, tr.model.memoised_part())
    assert n == tr.model.feature_cache.misses > 0 and len(cache.entry(next(iter(cache.store)))) == 1  # f8 only
    again = Trainer(_cfg(root, str(tmp_path / "b"), *extra), progress=False)
    again.fit()
    assert again.model.feature_cache.misses == 0 and again.model.feature_cache.hits > 0


def test_memo_by_name_skips_loading_memoised_images_and_trains_the_same(root, tmp_path, monkeypatch):
    """train.cache_by_name: once the memo holds an image, the training loader names it instead of
    decoding and letterboxing it; the run is the same as one that loads every image (weights,
    optimiser state), and a run that reads the saved memo file loads no training image at all."""
    from mmi.data.dataset import RefDataset

    loaded = []
    canvas = RefDataset._canvas

    def counting(self, image_id):
        loaded.append((self.split, self.train))
        return canvas(self, image_id)

    monkeypatch.setattr(RefDataset, "_canvas", counting)
    memo = str(tmp_path / "memo.pt")
    common = ("model.overrides.frozen_backbone=true", "train.cache_backbone_gb=0.01", "train.epochs=3",
              "data.batch_size=2")
    train(_cfg(root, str(tmp_path / "plain"), *common, "train.cache_by_name=false"), progress=False)
    plain = sum(1 for split, is_train in loaded if is_train)
    loaded.clear()
    train(_cfg(root, str(tmp_path / "named"), *common, f"train.feature_cache_file={memo}"), progress=False)
    named = sum(1 for split, is_train in loaded if is_train)
    _assert_same_state(str(tmp_path / "plain" / "last.pt"), str(tmp_path / "named" / "last.pt"))
    assert 0 < named < plain  # epoch 1 loads each image once; epochs 2-3 load none
    # from the saved memo (its fp16 maps from the first step, so compared with a run reading a copy)
    copy = str(tmp_path / "copy.pt")
    shutil.copyfile(memo, copy)
    loaded.clear()
    train(_cfg(root, str(tmp_path / "again"), *common, f"train.feature_cache_file={memo}"), progress=False)
    assert not any(is_train for split, is_train in loaded) and loaded  # validation still loads its images
    train(_cfg(root, str(tmp_path / "again_plain"), *common, f"train.feature_cache_file={copy}",
               "train.cache_by_name=false"), progress=False)
    _assert_same_state(str(tmp_path / "again_plain" / "last.pt"), str(tmp_path / "again" / "last.pt"))


def test_memo_loader_bench_runs_both_modes_on_a_toy_run(root, tmp_path, capsys):
    """bench/bench_memo_loader.py on a tiny run's config and memo file: a row per mode and round,
    every image served by the memo in both, the memo file left as it was."""
    import importlib.util

    from mmi.engine.config import save_config

    memo = str(tmp_path / "memo.pt")
    cfg = _cfg(root, str(tmp_path / "first"), "model.overrides.frozen_backbone=true", "train.cache_backbone_gb=0.01",
               f"train.feature_cache_file={memo}", "train.epochs=1", "data.batch_size=2")
    train(cfg, progress=False)
    before = os.path.getmtime(memo)
    path = str(tmp_path / "cfg.json")
    save_config(cfg, path)
    spec = importlib.util.spec_from_file_location("bench_memo_loader", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_memo_loader.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--config", path, "--steps", "2", "--rounds", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["content", "name"]
    assert all(r["images"] == r["memo_hits"] > 0 and r["cpu_ms_per_image"] > 0 for r in rows)
    assert "| name |" in capsys.readouterr().out and os.path.getmtime(memo) == before


def test_curves_leave_out_a_loss_the_run_does_not_compute(tmp_path):
    """plot_curves: a run whose LFR loss is logged as 0 throughout (LFR off, or refine_only)
    gets no LFR line; one with LFR gets it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmi.engine.runlog import plot_curves

    def labels(lfr_values):
        log = tmp_path / "log.jsonl"
        log.write_text("".join(json.dumps({"kind": "train", "epoch": 1, "step": i + 1, "loss": 0.5, "loss_mask": 0.4,
                                           "loss_lfr": v}) + "\n" for i, v in enumerate(lfr_values)))
        seen = []
        original = plt.Axes.legend

        def spy(ax, *a, **k):
            seen.extend(line.get_label() for line in ax.get_lines())
            return original(ax, *a, **k)

        plt.Axes.legend = spy
        try:
            plot_curves(str(log), str(tmp_path / "c.png"))
        finally:
            plt.Axes.legend = original
        assert (tmp_path / "c.png").stat().st_size > 0
        return seen

    assert labels([0.0, 0.0, 0.0]) == ["loss", "mask BCE"]
    assert labels([0.3, 0.2, 0.1]) == ["loss", "mask BCE", "LFR"]
