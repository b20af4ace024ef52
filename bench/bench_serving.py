"""Load on the demo server: N concurrent ``gradio_client`` users, each sending a fresh image
with 4 expressions to ``/segment`` in a loop.

    python bench/bench_serving.py --checkpoint weights/mmi_demo.pt [--users 1,4,16,32] [--seconds 60]
                                  [--soak 300] [--out runs/bench_serving.json]
    python bench/bench_serving.py --quick        # 1 and 2 users, 7 s each: checks that it works

It starts ``app.py`` itself on 127.0.0.1 (loopback only; there is no host option) on a free
port, with a random password in ``MMI_APP_PASSWORD`` (the clients log in, so the password
path is measured too) and ``--max-queue`` large enough for the users, and stops it at the
end. Everything is bounded: ``--seconds`` per level, ``--max-requests`` per level, and
``--time-limit`` for the whole run (the levels left are skipped, the server stopped).

Images: synthetic-world scenes (320 x 240) with the generator's own expressions, made
before the clock starts; each request changes a few pixels so its content hash is new
(every request is a cache miss: backbone, encoder and decoder run).

Per level: requests/s (completed requests over the level's wall time), median and p95
latency (client side, upload included), errors (must be 0) and the server's memory (RSS
sampled every second from /proc; its peak over the level). ``--soak S`` then runs the
last level for S more seconds and reports the RSS of the first and last minute (flat:
no leak).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
HOST = "127.0.0.1"  # loopback only, on purpose


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB (0 when gone)."""
    vals = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in vals:
                    vals[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return vals["VmRSS"], vals["VmHWM"]


class Sampler(threading.Thread):
    """The server's RSS every ``every`` seconds: [(time, MiB)]."""

    def __init__(self, pid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.samples.append((time.time(), rss_mb(self.pid)[0]))
            self.stopped.wait(self.every)

    def between(self, t0: float, t1: float) -> list[float]:
        return [mb for t, mb in list(self.samples) if t0 <= t <= t1]


def make_pool(n: int, seed: int = 0) -> list[tuple[np.ndarray, list[str]]]:
    """n synthetic scenes (BGR for cv2) with 4 of the generator's expressions each."""
    from mmi.data.synthetic import describe_scene, render, sample_scene

    pool = []
    rng = np.random.default_rng(seed)
    while len(pool) < n:
        scene = sample_scene(rng, 320, 240, "val")
        refs = describe_scene(scene, rng)
        exprs = [e.text for _, es in refs for e in es[:2]][:4]
        if len(exprs) == 4:
            image, _ = render(scene)
            pool.append((np.ascontiguousarray(image[:, :, ::-1]), exprs))
    return pool


def start_server(args, password: str, port: int, max_users: int) -> subprocess.Popen:
    env = dict(os.environ, MMI_APP_PASSWORD=password, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    env.pop("MMI_APP_PASSWORD_FILE", None)
    cmd = [sys.executable, os.path.join(ROOT, "app.py"), "--checkpoint", args.checkpoint, "--host", HOST,
           "--port", str(port), "--max-queue", str(max(64, 2 * max_users))] + args.server_args.split()
    log = open(os.path.join(args.workdir, "server.log"), "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} (see server.log)")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # it answers (a login page or 401): up
        except (urllib.error.URLError, OSError):
            time.sleep(1.0)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


def run_level(url: str, auth, n_users: int, seconds: float, max_requests: int, pool, workdir: str,
              counter: list, timeout: float) -> dict:
    """n_users threads in a loop for ``seconds`` (or ``max_requests`` in all)."""
    from gradio_client import Client, handle_file

    clients = [Client(url, auth=auth, verbose=False, httpx_kwargs={"timeout": timeout}) for _ in range(n_users)]
    lat, errors, lock = [], [], threading.Lock()
    issued = [0]
    start = time.time()
    deadline = start + seconds

    def user(u: int, client):
        folder = os.path.join(workdir, f"u{u}")
        os.makedirs(folder, exist_ok=True)
        while time.time() < deadline:
            with lock:
                if issued[0] >= max_requests:
                    return
                issued[0] += 1
                counter[0] += 1
                k = counter[0]
            bgr, exprs = pool[k % len(pool)]
            img = bgr.copy()
            img[0, :8] = np.frombuffer(k.to_bytes(8, "little"), np.uint8)[:, None]  # new content: a cache miss
            path = os.path.join(folder, f"img_{k % 4}.png")
            cv2.imwrite(path, img)
            t0 = time.time()
            try:
                out = client.predict(handle_file(path), "\n".join(exprs), 0.5, api_name="/segment")
                if len(out["expressions"]) != 4:
                    raise RuntimeError(f"{len(out['expressions'])} results for 4 expressions")
                with lock:
                    lat.append(time.time() - t0)
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=user, args=(u, c), daemon=True) for u, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + timeout + 30)
    wall = time.time() - start
    lat.sort()
    return {"users": n_users, "seconds": round(wall, 1), "requests": len(lat), "errors": len(errors),
            "error_examples": sorted(set(errors))[:5], "requests_per_s": round(len(lat) / wall, 3),
            "median_s": round(statistics.median(lat), 3) if lat else None,
            "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
            "start": start, "end": start + wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "weights", "mmi_demo.pt"))
    p.add_argument("--users", default="1,4,16,32", help="concurrent users per level, comma separated")
    p.add_argument("--seconds", type=float, default=60, help="length of each level")
    p.add_argument("--max-requests", type=int, default=5000, help="requests per level at most")
    p.add_argument("--soak", type=float, default=0, help="seconds more at the last level, memory sampled")
    p.add_argument("--time-limit", type=float, default=1800, help="the whole run at most (s); then it stops")
    p.add_argument("--request-timeout", type=float, default=120)
    p.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for the server to answer")
    p.add_argument("--server-args", default="", help="more app.py flags, e.g. '--model-concurrency 2'")
    p.add_argument("--quick", action="store_true", help="1 and 2 users, 7 s each, no soak (a check that it works)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.seconds, args.soak, args.time_limit = "1,2", 7.0, 0.0, min(args.time_limit, 900)
    levels = [int(u) for u in args.users.split(",") if u.strip()]
    if not levels or min(levels) < 1 or max(levels) > 256:
        p.error("--users: 1 to 256 users per level")
    t_begin = time.time()
    args.workdir = tempfile.mkdtemp(prefix="mmi_bench_serving_")
    password = secrets.token_urlsafe(16)
    port = free_port()
    url = f"http://{HOST}:{port}/"
    pool = make_pool(64)
    proc = start_server(args, password, port, max(levels))
    sampler = Sampler(proc.pid)
    results, soak = [], None
    try:
        wait_ready(proc, url, timeout=min(args.start_timeout, args.time_limit))
        sampler.start()
        counter = [0]
        idle = rss_mb(proc.pid)[0]
        for i, n in enumerate(levels):
            left = args.time_limit - (time.time() - t_begin)
            if left < args.seconds + 30:
                print(f"time limit: skipping {levels[i:]} users", file=sys.stderr)
                break
            r = run_level(url, ("mmi", password), n, args.seconds, args.max_requests, pool, args.workdir, counter,
                          args.request_timeout)
            mem = sampler.between(r["start"], r["end"])
            r["rss_peak_mb"] = round(max(mem), 1) if mem else None
            r["rss_end_mb"] = round(rss_mb(proc.pid)[0], 1)
            results.append(r)
            print(f"{n:>3} users: {r['requests']} requests, {r['requests_per_s']:.2f}/s, median {r['median_s']} s, "
                  f"p95 {r['p95_s']} s, errors {r['errors']}, peak RSS {r['rss_peak_mb']} MiB", file=sys.stderr)
        if args.soak > 0 and results and len(results) == len(levels):
            left = args.time_limit - (time.time() - t_begin) - 30
            seconds = min(args.soak, left)
            if seconds >= 60:
                r = run_level(url, ("mmi", password), levels[-1], seconds, 10**9, pool, args.workdir, counter,
                              args.request_timeout)
                mem = sampler.between(r["start"], r["end"])
                first = sampler.between(r["start"], r["start"] + 60)
                last = sampler.between(r["end"] - 60, r["end"])
                soak = dict(r, rss_first_minute_mb=round(statistics.median(first), 1) if first else None,
                            rss_last_minute_mb=round(statistics.median(last), 1) if last else None,
                            rss_peak_mb=round(max(mem), 1) if mem else None)
            else:
                print("time limit: no soak", file=sys.stderr)
    finally:
        sampler.stopped.set()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version()},
              "checkpoint": args.checkpoint, "server_args": args.server_args, "idle_rss_mb": round(idle, 1),
              "levels": [{k: v for k, v in r.items() if k not in ("start", "end")} for r in results],
              "soak": soak and {k: v for k, v in soak.items() if k not in ("start", "end")},
              "server_log": os.path.join(args.workdir, "server.log")}
    print("| users | requests | req/s | median s | p95 s | peak RSS MiB | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["levels"]:
        print(f"| {r['users']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['median_s']} | {r['p95_s']} | "
              f"{r['rss_peak_mb']} | {r['errors']} |")
    if soak:
        print(f"\nsoak: {soak['users']} users for {soak['seconds']} s, {soak['requests']} requests, "
              f"{soak['errors']} errors; RSS first minute {soak['rss_first_minute_mb']} MiB, "
              f"last minute {soak['rss_last_minute_mb']} MiB, peak {soak['rss_peak_mb']} MiB")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    errors = sum(r["errors"] for r in report["levels"]) + (soak["errors"] if soak else 0)
    return 1 if errors or not results else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # gradio_client's background threads would keep the process alive (server already stopped)
