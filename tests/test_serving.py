"""Serving the demo to a team (``webapp.serving``): the password, the refusal to serve a
network address without one, the limits (upload size, queue length, model calls at once),
the feature cache's byte bound, decompression bombs and what the log holds.

One in-process server on a free loopback port with a password and tight limits; nothing
binds any other address (the refusal is checked before launch)."""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
import warnings
import zlib

import cv2
import numpy as np
import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError, AuthenticationError  # noqa: E402

import app  # noqa: E402
from mmi.predictor import Predictor, feature_bytes, load_image  # noqa: E402
from webapp import serving  # noqa: E402

USER, PASSWORD = "annotator", "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header says width x height (8-bit RGB) with a token of pixel data: PIL
    reads the size without decoding, as it does for a real compressed bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                + chunk(b"IEND", b""))


def scene(seed: int, h: int = 60, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 190, np.uint8)
    img[h // 5 : h // 2, w // 8 : w // 2] = rng.integers(0, 255, 3)
    return img


# ----------------------------------------------------------------------------- refusal to start

class NoLaunch:
    """Stands in for ``app.launch``: records the call, binds nothing."""

    def __init__(self):
        self.calls = []

    def __call__(self, demo, host, port, **kw):
        self.calls.append((host, port, kw))


@pytest.fixture
def no_launch(monkeypatch):
    fake = NoLaunch()
    monkeypatch.setattr(app, "launch", fake)
    monkeypatch.delenv(serving.PASSWORD_ENV, raising=False)
    monkeypatch.delenv(serving.PASSWORD_FILE_ENV, raising=False)
    return fake


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "demo.example.org"])
def test_a_network_address_without_a_password_refuses_to_start(no_launch, tiny_checkpoint, capsys, host):
    assert app.main(["--checkpoint", tiny_checkpoint, "--host", host]) == 2
    err = capsys.readouterr().err
    assert f"refusing to serve on {host} without a password" in err
    assert "--allow-no-password" in err and serving.PASSWORD_ENV in err and "--password-file" in err
    assert no_launch.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_password(no_launch, tiny_checkpoint, host):
    assert app.main(["--checkpoint", tiny_checkpoint, "--host", host]) == 0
    assert no_launch.calls[0][0] == host and no_launch.calls[0][2]["credentials"] is None


def test_a_password_or_the_flag_lets_a_network_address_start(no_launch, tiny_checkpoint, monkeypatch, tmp_path):
    assert app.main(["--checkpoint", tiny_checkpoint, "--host", "0.0.0.0", "--allow-no-password"]) == 0
    monkeypatch.setenv(serving.PASSWORD_ENV, "s3cret")
    assert app.main(["--checkpoint", tiny_checkpoint, "--host", "0.0.0.0", "--max-queue", "5"]) == 0
    kw = no_launch.calls[-1][2]
    assert kw["credentials"] == [("mmi", "s3cret")] and kw["limits"].max_queue == 5
    monkeypatch.delenv(serving.PASSWORD_ENV)
    f = tmp_path / "pw"
    f.write_text("# team\nann:one\nlead:two:with:colons\n")
    assert app.main(["--checkpoint", tiny_checkpoint, "--host", "0.0.0.0", "--password-file", str(f)]) == 0
    assert no_launch.calls[-1][2]["credentials"] == [("ann", "one"), ("lead", "two:with:colons")]


def test_the_password_is_never_a_flag_and_bad_sources_are_reported(no_launch, tiny_checkpoint, tmp_path, capsys):
    for argv in (["--password", "visible-in-ps"], ["--password=visible-in-ps"], ["--passw", "visible-in-ps"]):
        with pytest.raises(SystemExit):
            app.parse_args(argv)
        err = capsys.readouterr().err
        assert "visible-in-ps" not in err, argv
        assert "never given on the command line" in err or "ambiguous option: --passw" in err, argv
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    assert app.main(["--checkpoint", tiny_checkpoint, "--password-file", str(empty)]) == 2
    assert "holds no password" in capsys.readouterr().err
    assert app.main(["--checkpoint", tiny_checkpoint, "--password-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the password file" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.write_text("ann:one\njustapassword\n")
    assert app.main(["--checkpoint", tiny_checkpoint, "--password-file", str(bad)]) == 2
    assert "line 2: expected 'user:password'" in capsys.readouterr().err
    assert app.main(["--checkpoint", tiny_checkpoint, "--max-queue", "0"]) == 2
    assert "--max-queue must be at least 1" in capsys.readouterr().err
    assert no_launch.calls == []
    assert serving.read_credentials(None, "mmi", {serving.PASSWORD_ENV: "pw"}) == [("mmi", "pw")]
    assert serving.read_credentials(None, "mmi", {}) is None


# ----------------------------------------------------------------------------- images and the cache

def test_a_decompression_bomb_is_too_large_not_unreadable(tmp_path):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 20000, 20000)
    with pytest.raises(ValueError) as err:
        load_image(str(bomb))
    assert "bomb.png is too large" in str(err.value) and "400,000,000 pixels" in str(err.value)
    assert "not an image" not in str(err.value)
    big = tmp_path / "big.png"  # above our limit, below PIL's bomb error (a warning only)
    png_header_only(big, 11000, 11000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning
        with pytest.raises(ValueError, match="big.png: 11000x11000 pixels is too large"):
            load_image(str(big))


def test_the_feature_cache_is_bounded_in_bytes_as_well_as_in_count(tiny_checkpoint):
    probe = Predictor.from_checkpoint(tiny_checkpoint)
    one = feature_bytes(probe.features(scene(0))[0])
    assert one > 0 and probe.cache_nbytes == one
    p = Predictor.from_checkpoint(tiny_checkpoint, cache_size=8, cache_bytes=int(2.5 * one))
    for i in range(4):
        p.features(scene(i))
    assert len(p._cache) == 2 and p.cache_nbytes == 2 * one <= p.cache_bytes  # count alone would keep 4
    calls = p.encode_calls
    p.features(scene(3))
    assert p.encode_calls == calls  # the newest is kept
    p.features(scene(0))
    assert p.encode_calls == calls + 1  # the oldest was dropped
    tight = Predictor.from_checkpoint(tiny_checkpoint, cache_size=8, cache_bytes=one - 1)
    tight.features(scene(0))
    tight.features(scene(0))
    assert tight.encode_calls == 2 and tight.cache_nbytes == 0  # one image over the bound is not kept


# ----------------------------------------------------------------------------- a server with a password and limits

class InFlight:
    """Wraps the predictor's model entry points: counts calls running at once, and can hold
    them until the test opens ``gate`` (to fill the queue)."""

    def __init__(self, predictor):
        self.now = self.peak = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        for name in ("predict", "word_ablation"):
            setattr(predictor, name, self.wrap(getattr(predictor, name)))

    def wrap(self, fn):
        def run(*a, **k):
            with self._lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            try:
                self.gate.wait(timeout=120)
                return fn(*a, **k)
            finally:
                with self._lock:
                    self.now -= 1
        return run


LIMITS = serving.Limits(max_upload_mb=0.05, max_queue=2, model_concurrency=1, log_requests=True)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    inflight = InFlight(predictor)
    demo = app.build_app(predictor)
    port = free_port()
    app.launch(demo, "127.0.0.1", port, block=False, quiet=True, limits=LIMITS, credentials=[(USER, PASSWORD)])
    url = f"http://127.0.0.1:{port}/"
    yield url, inflight, demo
    demo.close()


def connect(url: str, auth=(USER, PASSWORD)) -> Client:
    return Client(url, auth=auth, verbose=False, httpx_kwargs={"timeout": 300})


@pytest.fixture(scope="module")
def small_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "small.png"
    cv2.imwrite(str(path), scene(1))
    return str(path)


def test_without_the_password_the_client_is_refused(server, small_png):
    url = server[0]
    with pytest.raises(AuthenticationError) as err:
        connect(url, auth=None).predict(handle_file(small_png), "the red cube", 0.5, api_name="/segment")
    assert "401" in str(err.value) or "auth" in str(err.value).lower() or "login" in str(err.value).lower()
    with pytest.raises(ValueError, match="Could not login"):
        connect(url, auth=(USER, "wrong"))
    out = connect(url).predict(handle_file(small_png), "the red cube", 0.5, api_name="/segment")
    assert (out["height"], out["width"]) == (60, 80)


def test_every_model_event_is_in_one_limited_group(server):
    demo = server[2]
    named = {f.api_name: f for f in demo.fns.values() if isinstance(f.api_name, str)}
    for api in serving.MODEL_APIS:
        assert named[api].concurrency_id == serving.MODEL_GROUP and named[api].concurrency_limit == 1
    assert named["lab_scene"].concurrency_id != serving.MODEL_GROUP  # no model call: not held up
    grouped = [f for f in demo.fns.values() if f.concurrency_id == serving.MODEL_GROUP]
    assert len(grouped) > len(serving.MODEL_APIS)  # Shift+Enter in the Segment tab and the scene lab share it


def test_an_upload_over_the_limit_gets_a_message_and_the_server_keeps_serving(server, small_png, tmp_path):
    url = server[0]
    noisy = tmp_path / "noisy.png"
    cv2.imwrite(str(noisy), np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    assert os.path.getsize(noisy) > LIMITS.max_upload_bytes
    client = connect(url)
    with pytest.raises(ValueError) as err:  # raised by gradio_client's own size check
        client.predict(handle_file(str(noisy)), "the red cube", 0.5, api_name="/segment")
    # gradio_client checks the limit the server announces; a raw upload gets 413 "maximum allowed size"
    assert "exceeds the maximum file size of 52428 bytes" in str(err.value) or "maximum allowed size" in str(err.value)
    out = client.predict(handle_file(small_png), "the red cube", 0.5, api_name="/segment")
    assert len(out["expressions"]) == 1


def test_an_image_sent_inline_is_held_to_the_servers_upload_limit(server, small_png):
    """A ``data:`` URL image never passes Gradio's upload check: the tabs hold it to the limits
    the server was launched with (kept on the app's context, one per app, not a process global)."""
    import base64

    from webapp.common import Workdir, image_file

    demo = server[2]
    assert demo.mmi_context.limits is LIMITS
    small = "data:image/png;base64," + base64.b64encode(open(small_png, "rb").read()).decode()
    big = "data:image/png;base64," + "A" * (LIMITS.max_upload_bytes * 4 // 3 + 8)
    path = image_file({"url": small}, Workdir(), LIMITS)
    assert open(path, "rb").read() == open(small_png, "rb").read()
    with pytest.raises(ValueError, match="the image sent inline is over the upload limit of 0.05 MB"):
        image_file({"url": big}, Workdir(), LIMITS)
    assert image_file({"url": big}, Workdir()) is not None  # an app not served: no limit of its own


def test_a_bomb_through_the_app_is_reported_as_too_large(server, tmp_path):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 20000, 20000)
    with pytest.raises(AppError) as err:
        connect(server[0]).predict(handle_file(str(bomb)), "the red cube", 0.5, api_name="/segment")
    assert "too large" in str(err.value) and "not an image" not in str(err.value)


def test_a_full_queue_gets_a_message_model_calls_stay_limited_and_the_server_keeps_serving(server, small_png, caplog):
    url, inflight, _ = server
    clients = [connect(url) for _ in range(6)]
    inflight.peak = 0
    inflight.gate.clear()  # the first model call holds until the queue has refused someone
    caplog.set_level(logging.INFO, logger="mmi.app")
    try:
        jobs = [c.submit(handle_file(small_png), "the red cube on the left", 0.5, api_name="/segment") for c in clients]
        jobs.append(clients[0].submit(handle_file(small_png), "a blue ball", 0.5, api_name="/word_importance"))
        deadline = time.monotonic() + 120
        while not any(j.done() for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        inflight.gate.set()
        outcomes = []
        for j in jobs:
            try:
                j.result(timeout=300)
                outcomes.append("ok")
            except Exception as e:  # noqa: BLE001
                outcomes.append(str(e))
    finally:
        inflight.gate.set()
    full = [o for o in outcomes if "Queue is full" in o]
    assert full and "ok" in outcomes, outcomes
    assert all(o == "ok" or "Queue is full" in o for o in outcomes), outcomes
    assert inflight.peak == 1  # concurrency 1 across /segment and /word_importance
    out = connect(url).predict(handle_file(small_png), "the red cube", 0.5, api_name="/segment")
    assert len(out["expressions"]) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any("endpoint=segment " in m and "outcome=ok" in m for m in lines)
    assert not any("red cube" in m or "blue ball" in m for m in lines)  # no expressions in the log
