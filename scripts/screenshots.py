"""Screenshots of each tab of the demo for the README (headless Debian Chromium via Playwright):

    python scripts/screenshots.py [--checkpoint weights/mmi_demo.pt] [--out assets/screenshots] [--regions peak|all]
                                  [--amp auto|bf16|off]

Serves the app in-process on a free loopback port, runs the first example on the Segment
tab, checks a few expressions in the Scene lab, opens the shipped results in the Failure
cases tab, and the Segment tab at 420 px; writes segment.png, segment_evidence.png,
scene_lab.png, failures.png and segment_420px.png (PNG, 256 colours)."""
from __future__ import annotations

import argparse
import os
import socket
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def save(page_or_locator, path: str, **kw) -> None:
    from mmi import viz

    page_or_locator.screenshot(path=path, **kw)
    viz.quantize_png(path)
    print(path, os.path.getsize(path) // 1024, "KB")


def app_defaults():
    """app.py's defaults (--regions, --amp), so that the screenshots show what the app shows."""
    import app

    return app.parse_args([])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=os.path.join(HERE, "weights", "mmi_demo.pt"))
    p.add_argument("--out", default=os.path.join(HERE, "assets", "screenshots"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    defaults = app_defaults()
    p.add_argument("--regions", choices=("peak", "all"), default=defaults.regions, help="as app.py's --regions")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default=defaults.amp, help="as app.py's --amp")
    args = p.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    import app
    from mmi.predictor import Predictor

    os.makedirs(args.out, exist_ok=True)
    predictor = Predictor.from_checkpoint(args.checkpoint, regions=args.regions, amp=args.amp)
    demo = app.build_app(predictor, checkpoint=args.checkpoint)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, "127.0.0.1", port, block=False, quiet=True)
    url, t = f"http://127.0.0.1:{port}/", 120_000
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=t)
            page.locator("#examples").get_by_text("1: ", exact=False).first.click(timeout=t)
            expect(page.locator("#status")).to_contain_text("model run in", timeout=t)
            page.locator("#expressions textarea").fill(page.locator("#expressions textarea").input_value()
                                                       + "\nthe purple cheetah")
            page.locator("#run").click()
            expect(page.locator("#status")).to_contain_text("5 expression(s)", timeout=t)
            page.wait_for_timeout(1000)
            page.evaluate("window.scrollTo(0, 0)")
            save(page, os.path.join(args.out, "segment.png"), full_page=True,
                 clip={"x": 0, "y": 0, "width": 1280, "height": 1250})
            save(page.locator("#importance").locator(".."), os.path.join(args.out, "segment_evidence.png"))
            page.get_by_role("tab", name="Scene lab").click()
            expect(page.locator("#lab-about")).to_contain_text("Scene of seed", timeout=t)
            box = page.locator("#lab-expressions textarea")
            box.fill(box.input_value() + "\nthe object\nthe red cheetah")
            page.locator("#lab-check").click()
            expect(page.locator("#lab-status")).to_contain_text("outside the grammar", timeout=t)
            page.wait_for_timeout(1000)
            save(page, os.path.join(args.out, "scene_lab.png"), full_page=True)
            page.get_by_role("tab", name="Failure cases").click()
            expect(page.locator("#fail-info")).to_contain_text("IoU", timeout=t)
            page.wait_for_timeout(1000)
            save(page, os.path.join(args.out, "failures.png"), full_page=True)
            page.set_viewport_size({"width": 420, "height": 1000})
            page.get_by_role("tab", name="Segment").click()
            page.wait_for_timeout(1500)
            page.evaluate("window.scrollTo(0, 0)")
            save(page, os.path.join(args.out, "segment_420px.png"), full_page=True,
                 clip={"x": 0, "y": 0, "width": 420, "height": 2400})
            browser.close()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
