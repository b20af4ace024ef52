"""scripts/gpu_check.py --cpu-dry-run: the GPU check's steps at toy sizes on the CPU, so the
script that proves the CUDA path cannot rot while no GPU is at hand."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the torchrun worker through /proc")


def test_gpu_check_cpu_dry_run_passes_every_step(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "scripts/gpu_check.py", "--cpu-dry-run", "--out", str(out), "--work", str(work),
                             "--wheels", str(tmp_path / "no_wheels")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:  # the script and the torchrun it started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    report = json.loads((out / "gpu_check.json").read_text())
    failed = {k: v.get("error") for k, v in report["steps"].items() if not v["ok"]}
    assert res.returncode == 0 and report["ok"], (failed, res.stdout[-3000:], res.stderr[-3000:])
    steps = report["steps"]
    assert list(steps) == ["install", "environment", "bench_train", "data", "train_kill_resume", "fp16",
                           "eval_gpu_vs_cpu", "predictor"]
    assert report["mode"] == "cpu-dry-run" and steps["install"]["missing_before"] == []  # the test env has them all
    assert steps["environment"]["torch"] and steps["environment"]["cuda_available"] is False  # the CPU dry run
    rows = steps["bench_train"]["rows"]
    assert [r["amp"] for r in rows] == ["off", "bf16"] and all(r["train_samples_per_s"] > 0 for r in rows)
    # the worker was SIGKILLed after a mid-epoch save; torchrun restarted it; it resumed by itself
    tkr = steps["train_kill_resume"]
    assert [e[0] for e in tkr["killed_run"]] == ["start", "resume", "end"]
    assert tkr["kill"]["after_step"] >= 3 and tkr["bitwise_equal"] and tkr["max_abs_diff_resumed_vs_straight"] == 0.0
    resume = next(e for e in tkr["killed_run"] if e[0] == "resume")
    assert resume[1] >= 2 and resume[2] > 0  # resumed mid-epoch from a save every 2 steps
    assert steps["fp16"]["refused_on_cpu"] and steps["fp16"]["exit_code"] == 2
    ev = steps["eval_gpu_vs_cpu"]
    assert 0 < ev["count"] <= 8 and ev["oIoU_abs_diff"] == 0.0 and ev["identical_expressions"] == ev["count"]
    assert steps["predictor"]["mask_iou_gpu_vs_cpu"] == [1.0, 1.0, 1.0]
    assert (out / "bench_train.json").is_file() and (out / "logs" / "train_killed.txt").is_file()
    assert sorted(os.listdir(work)) == ["data", "eval_cpu.json", "eval_cuda.json", "runs"]
