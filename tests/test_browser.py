"""A real browser: headless Debian Chromium driven by Playwright uploads an image, types two
expressions, runs, and finds both in the overlay's legend. The screenshot is saved under
test-artifacts/ (gitignored)."""
from __future__ import annotations

import os
import socket

import cv2
import numpy as np
import pytest
import torch

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
import app  # noqa: E402
from mmi.predictor import Predictor  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")


@pytest.fixture(scope="module")
def url(tiny_checkpoint):
    demo = app.build_app(Predictor.from_checkpoint(tiny_checkpoint))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, "127.0.0.1", port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_upload_type_run_and_read_the_legend(url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium (make browser)"
    image = str(tmp_path / "scene.png")
    img = np.full((120, 160, 3), 190, np.uint8)
    img[20:60, 20:80] = (30, 30, 220)
    cv2.imwrite(image, img)
    exprs = ["the red cube on the left", "a blue ball"]
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(image, timeout=60_000)
            page.locator("#expressions textarea").fill("\n".join(exprs))
            page.locator("#run").click()
            overlay = page.locator("#overlay")
            for i, e in enumerate(exprs, 1):
                expect(overlay.get_by_text(f"{i}. {e}", exact=True)).to_be_visible(timeout=60_000)
            expect(page.locator("#status")).to_contain_text("2 expression(s) on a 160x120 image", timeout=30_000)
            page.screenshot(path=os.path.join(ARTIFACTS, "browser_segment.png"), full_page=True)
        finally:
            browser.close()
    assert os.path.getsize(os.path.join(ARTIFACTS, "browser_segment.png")) > 10_000


def test_an_example_runs_in_one_click(url):
    from playwright.sync_api import expect, sync_playwright

    rows = app.read_examples()
    assert rows, "assets/examples/examples.json lists no readable examples"
    first = rows[0][1].splitlines()[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text(first, exact=False).first.click(timeout=60_000)
            expect(page.locator("#overlay").get_by_text(f"1. {first}", exact=True)).to_be_visible(timeout=60_000)
            page.screenshot(path=os.path.join(ARTIFACTS, "browser_example.png"), full_page=True)
        finally:
            browser.close()
