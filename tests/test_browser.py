"""A real browser: headless Debian Chromium driven by Playwright against one server (the
tiny checkpoint): unknown words marked while typing, Shift+Enter runs, outlines with a light
fill by default, show/hide, re-drawing without a model call, an error that keeps the previous
result, the scene lab's verdicts and object listing, a results file uploaded to the failure
tab, an example in one click, and a 420 px wide page without horizontal overflow.
Screenshots go to test-artifacts/ (gitignored)."""
from __future__ import annotations

import json
import os
import socket

import cv2
import numpy as np
import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
import app  # noqa: E402
from mmi import viz  # noqa: E402
from mmi.predictor import Predictor  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
T = 90_000  # ms; the CI machine is small and shared


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    examples = tmp_path_factory.mktemp("examples")  # in the tiny model's own words
    img = np.full((90, 120, 3), 170, np.uint8)
    img[10:40, 10:50] = (40, 40, 210)
    cv2.imwrite(str(examples / "one.png"), img)
    (examples / "examples.json").write_text(json.dumps(
        [{"file_name": "one.png", "expressions": ["the red cube on the left", "a purple cheetah", "the blue ball"]}]))
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    calls = {"decode": 0}
    decode = predictor.model.decode

    def counting(*a, **k):
        calls["decode"] += 1
        return decode(*a, **k)

    predictor.model.decode = counting
    demo = app.build_app(predictor, examples_dir=str(examples))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, "127.0.0.1", port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", calls
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium (make browser)"
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def open_page(browser, url, width=1280):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.goto(url, wait_until="domcontentloaded", timeout=T)
    page.locator("#model-info").wait_for(timeout=T)
    return page


def overlay_pixels(page) -> np.ndarray:
    from urllib.parse import urljoin

    src = page.locator("#overlay img").get_attribute("src", timeout=T)
    if src.startswith("data:"):
        import base64

        body = base64.b64decode(src.split(",", 1)[1])
    else:
        body = page.request.get(urljoin(page.url, src)).body()
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_segment_tab(served, browser, tmp_path):
    from playwright.sync_api import expect

    url, calls = served
    image = str(tmp_path / "scene.png")
    img = np.full((120, 160, 3), 190, np.uint8)
    img[20:60, 20:80] = (30, 30, 220)
    cv2.imwrite(image, img)
    page = open_page(browser, url)
    try:
        expect(page.locator("#model-info")).to_contain_text("What this model knows", timeout=T)
        page.locator("#image input[type=file]").set_input_files(image, timeout=T)
        box = page.locator("#expressions textarea")
        box.fill("the red cheetah on the left\nthe blue thing")
        expect(page.locator("#words mark.unk")).to_have_text("?cheetah", timeout=T)  # marked before running
        box.press("Shift+Enter")  # keyboard submit
        legend = page.locator("#legend")
        expect(legend).to_contain_text("the red cheetah on the left", timeout=T)
        expect(legend.locator("mark.unk")).to_have_text("?cheetah")  # and after
        expect(page.locator("#status")).to_contain_text("2 expression(s) on a 160x120 image", timeout=T)
        # outlines over a light fill by default: mask interiors keep the image's colours
        assert page.locator("#opacity input[type=number]").input_value() == "0.25"
        shown = overlay_pixels(page).astype(int)
        assert shown.shape[:2] == (480, 640)
        outline = np.all(shown == viz.color(0), axis=2).sum()
        painted = np.any(np.abs(shown - cv2.resize(img[:, :, ::-1], (640, 480)).astype(int)) > 3, axis=2).sum()
        if outline:  # the tiny model's first mask may be empty
            assert outline < 0.5 * painted
        # show/hide and the layer re-draw the kept result: no model call
        before = calls["decode"]
        page.locator("#shown label").filter(has_text="1.").first.click()
        expect(page.locator("#status")).to_contain_text("re-drawn from the kept result (no model call)", timeout=T)
        expect(page.locator("#legend [data-expr='1']")).to_contain_text("(hidden)", timeout=T)
        expect(page.locator("#status")).to_contain_text("1 shown")
        page.locator("#layer input").click()
        page.get_by_role("option", name="layer 1").click()
        expect(page.locator("#status")).to_contain_text("heatmaps of decoder layer 1", timeout=T)
        expect(page.locator("#heatmaps section")).to_have_count(2)
        assert calls["decode"] == before
        # an error keeps the previous result
        box.fill("")
        page.locator("#run").click()
        expect(page.locator("#status")).to_contain_text("Could not finish segmenting", timeout=T)
        expect(page.locator("#status")).to_contain_text("previous result is still shown")
        expect(legend).to_contain_text("the red cheetah on the left")
        page.screenshot(path=os.path.join(ARTIFACTS, "browser_segment.png"), full_page=True)
    finally:
        page.close()


def test_scene_lab_verdicts_and_object_listing(served, browser):
    from playwright.sync_api import expect

    from webapp.scenelab import lab_scene

    url, _ = served
    page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="Scene lab").click()
        expect(page.locator("#lab-about")).to_contain_text("Scene of seed 1", timeout=T)
        page.locator("#lab-expressions textarea").fill("the object\nthe cheetah")
        page.locator("#lab-check").click()
        verdicts = page.locator("#lab-verdicts-html")
        expect(verdicts).to_contain_text("ambiguous: matches", timeout=T)
        expect(verdicts).to_contain_text("outside the world's grammar: 'cheetah' is not a word of the shapes world")
        # click inside object 1 of the scene
        scene, rgb, masks = lab_scene(1, "any (3-9 objects)", 0, False)
        ys, xs = np.nonzero(masks[0])
        k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        img = page.locator("#lab-scene img")
        img.wait_for(timeout=T)
        page.wait_for_function("document.querySelector('#lab-scene img').naturalWidth > 0", timeout=T)
        nw, nh, cw, ch = img.evaluate("e => [e.naturalWidth, e.naturalHeight, e.clientWidth, e.clientHeight]")
        r = min(cw / nw, ch / nh)  # object-fit: contain
        ox, oy = (cw - nw * r) / 2, (ch - nh * r) / 2
        kx = nw / scene.width  # the scene is shown enlarged
        img.click(position={"x": ox + (xs[k] + 0.5) * kx * r, "y": oy + (ys[k] + 0.5) * kx * r})
        expect(page.locator("#lab-click")).to_contain_text("Object 1", timeout=T)
        expect(page.locator("#lab-click")).to_contain_text("Shortest expressions")
        page.screenshot(path=os.path.join(ARTIFACTS, "browser_lab.png"), full_page=True)
    finally:
        page.close()


def test_failure_tab_opens_the_shipped_results_and_an_upload(served, browser, tmp_path):
    from playwright.sync_api import expect

    url, _ = served
    with open(os.path.join(ROOT, "assets", "results", "synref_val_shipped.json"), encoding="utf8") as f:
        doc = json.load(f)
    doc["records"] = doc["records"][:5]
    small = tmp_path / "five_records.json"
    small.write_text(json.dumps(doc))
    page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="Failure cases").click()
        expect(page.locator("#fail-summary")).to_contain_text("synref_val_shipped.json", timeout=T)
        page.locator("#fail-upload input[type=file]").set_input_files(str(small), timeout=T)
        expect(page.locator("#fail-summary")).to_contain_text("five_records.json: synref / val, 5 expressions",
                                                              timeout=T)
        worst = min(doc["records"], key=lambda r: (r["iou"], r["expression"]))
        expect(page.locator("#fail-info")).to_contain_text(worst["expression"], timeout=T)
        expect(page.locator("#fail-info")).not_to_contain_text("(not available)")
        expect(page.locator("#fail-view img")).to_be_visible(timeout=T)
        page.screenshot(path=os.path.join(ARTIFACTS, "browser_failures.png"), full_page=True)
    finally:
        page.close()


def test_an_example_runs_in_one_click_and_the_page_fits_420_px(served, browser):
    from playwright.sync_api import expect

    first = "the red cube on the left"
    page = open_page(browser, served[0], width=420)
    try:
        # the label keeps only the lines in the model's own words, separated by " / "
        page.locator("#examples").get_by_text("1: the red cube on the left / the blue ball", exact=False).first.click(
            timeout=T)
        expect(page.locator("#legend")).to_contain_text(first, timeout=T)
        expect(page.locator("#legend")).not_to_contain_text("cheetah")
        expect(page.locator("#status")).to_contain_text("model run in", timeout=T)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 421, f"the page is {width} px wide at a 420 px viewport"
        page.screenshot(path=os.path.join(ARTIFACTS, "browser_420px.png"), full_page=True)
    finally:
        page.close()
