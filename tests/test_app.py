"""The Gradio app on a real server (in-process, a free loopback port), called with gradio_client."""
from __future__ import annotations

import json
import os
import socket
import zipfile

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402
from mmi.predictor import Predictor  # noqa: E402



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(h: int = 60, w: int = 80) -> np.ndarray:
    img = np.full((h, w, 3), 190, np.uint8)
    img[h // 5 : h // 2, w // 8 : w // 2] = (220, 30, 30)
    img[h // 2 :, w // 2 :] = (30, 30, 220)
    return img


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    demo = app.build_app(predictor)
    port = free_port()
    app.launch(demo, "127.0.0.1", port, block=False, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    yield url, Client(url, verbose=False), predictor
    demo.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rgb = scene()
    paths = {"rgb": d / "scene.png", "grey": d / "grey.png", "rgba": d / "rgba.png", "deep": d / "deep16.png",
             "tiny": d / "one.png", "huge": d / "huge.png", "text": d / "notes.txt"}
    cv2.imwrite(str(paths["rgb"]), rgb[:, :, ::-1])
    cv2.imwrite(str(paths["grey"]), rgb[:, :, 0])
    cv2.imwrite(str(paths["rgba"]), np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 128, np.uint8)]))
    cv2.imwrite(str(paths["deep"]), rgb[:, :, 0].astype(np.uint16) * 257)
    cv2.imwrite(str(paths["tiny"]), rgb[:1, :1])
    huge = np.full((8000, 8000, 3), 200, np.uint8)
    huge[1000:5000, 2000:6000] = (30, 30, 220)
    cv2.imwrite(str(paths["huge"]), huge, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    paths["text"].write_text("this is not an image")
    return {k: str(v) for k, v in paths.items()}


def rle_mask(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_segment_api_gives_a_mask_and_word_heatmaps_per_expression(server, files):
    _, client, predictor = server
    exprs = ["the red cube on the left", "a blue ball", "the big green thing at the top"]
    out = client.predict(handle_file(files["rgb"]), "\n".join(exprs), 0.5, api_name="/segment")
    assert (out["height"], out["width"]) == (60, 80)
    assert [e["expression"] for e in out["expressions"]] == exprs
    direct = predictor.predict(scene(), exprs)
    for e, p in zip(out["expressions"], direct):
        assert np.array_equal(rle_mask(e["mask_rle"]), p.mask)  # the PNG round trip is lossless
        assert e["tokens"] == p.tokens and e["area"] == p.area
        assert len(e["attention"]) == predictor.num_layers
        for layer in e["attention"]:
            assert [w["word"] for w in layer["words"]] == e["tokens"]
            for w in layer["words"]:
                assert np.array(w["lav"]).shape == np.array(w["val"]).shape == tuple(layer["grid"])
                assert abs(np.array(w["lav"]).sum() - 1) < 1e-2  # softmax over pixels, heads averaged


def test_segment_ui_outputs_overlay_gallery_table_and_downloads(server, files):
    _, client, predictor = server
    exprs = ["the red cube", "a zorblax ball" + " cube" * 30]
    overlay, gallery, table, downloads, status = client.predict(
        handle_file(files["rgb"]), "\n".join(exprs) + "\n\n", 0.5, "layer 1", api_name="/segment_ui")
    labels = [a["label"] for a in overlay["value"]["annotations"]]  # an update carrying the colours
    assert labels == ["1. the red cube", "2. " + exprs[1][:57] + "..."]
    assert sorted(overlay["color_map"]) == sorted(labels) and len(set(overlay["color_map"].values())) == 2
    n_words = 3 + predictor.t_max
    captions = [g["caption"] for g in gallery]
    assert len(captions) == 2 * n_words
    assert captions[:2] == ["1. the · LAV: where it looks", "1. the · VAL: pixels reading it"]
    assert any("?zorblax" in c for c in captions)
    rows = table["data"]
    assert [r[1] for r in rows] == exprs
    assert "?zorblax" in rows[1][2] and "[cut" in rows[1][2]
    assert "heatmaps of decoder layer 1" in status and "unknown word(s) zorblax" in status
    zip_path = next(p for p in downloads if p.endswith(".zip"))
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(z.namelist())
        assert names == ["mask_01_the_red_cube.png", "mask_02_a_zorblax_ball_cube_cube_cube_cube_cube.png",
                         "masks_coco_rle.json"]
        doc = json.loads(z.read("masks_coco_rle.json"))
        png = cv2.imdecode(np.frombuffer(z.read(names[0]), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert [d["expression"] for d in doc] == exprs
    assert np.array_equal(png > 0, rle_mask(doc[0]["segmentation"]))
    assert png.shape == (60, 80)


@pytest.mark.parametrize("key, text, message", [
    (None, "the red cube", "No image"),
    ("rgb", "", "No expression"),
    ("rgb", "\n   \n\n", "No expression"),
    ("rgb", "😀😀 !!\n...", "None of the lines has a word"),
    ("text", "the red cube", "notes.txt is not an image"),
])
def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(server, files, key, text, message):
    _, client, _ = server
    image = handle_file(files[key]) if key else None
    with pytest.raises(AppError) as err:
        client.predict(image, text, 0.5, api_name="/segment")
    assert message in str(err.value) and "Traceback" not in str(err.value)
    ok = client.predict(handle_file(files["rgb"]), "the red cube", 0.5, api_name="/segment")
    assert len(ok["expressions"]) == 1


@pytest.mark.parametrize("key, text, size", [
    ("grey", "the red cube", (60, 80)),
    ("rgba", "der rote Würfel links\n红色的立方体", (60, 80)),
    ("deep", "the red cube 😀", (60, 80)),
    ("tiny", "the red cube", (1, 1)),
    ("huge", "the blue square", (8000, 8000)),
    ("rgb", " ".join(["red"] * 200), (60, 80)),
])
def test_odd_images_and_expressions_get_results(server, files, key, text, size):
    _, client, predictor = server
    out = client.predict(handle_file(files[key]), text, 0.5, api_name="/segment")
    assert (out["height"], out["width"]) == size
    for e in out["expressions"]:
        assert tuple(e["mask_rle"]["size"]) == size
        assert 1 <= len(e["tokens"]) <= predictor.t_max
    if key == "rgb":
        assert out["expressions"][0]["truncated"] and len(out["expressions"][0]["dropped"]) == 200 - predictor.t_max
    if key == "rgba":
        assert all(any(e["unknown"]) for e in out["expressions"])


def test_failure_case_view_reads_the_evaluation_json(server, tmp_path, tiny_checkpoint):
    try:
        import fixtures_refer as fx
    except ImportError:
        from tests import fixtures_refer as fx
    from mmi.engine.evaluate import run_eval_only

    url, client, predictor = server
    root = str(tmp_path / "data")
    fx.write_refer_fixture(root)
    results = str(tmp_path / "eval.json")
    run_eval_only(tiny_checkpoint, "refcoco", "val", root, out=results, workers=0, device="cpu", batch_size=4)
    records = json.load(open(results))["records"]
    session = Client(url, verbose=False)
    table, pick = session.predict(results, api_name="/failures")  # the State outputs stay on the server
    ious = [r[1] for r in table["data"]]
    assert len(ious) == len(records) and ious == sorted(ious)
    worst = min(records, key=lambda r: (r["iou"], r["expression"]))
    assert table["data"][0][2] == worst["expression"]
    compare, info, gallery = session.predict(pick["value"] if isinstance(pick, dict) else pick, root, "layer 2",
                                             api_name="/failure_case")
    img = cv2.imread(compare if isinstance(compare, str) else compare["path"])
    assert img.shape[:2] == (worst["height"], worst["width"])
    assert f"IoU {worst['iou']:.3f}" in info and "(not available)" not in info
    assert len(gallery) == 2 * len(predictor.vocab.encode(worst["expression"], predictor.t_max).tokens)
    with pytest.raises(AppError, match="results file not found"):
        session.predict(str(tmp_path / "missing.json"), api_name="/failures")


def test_main_reports_a_bad_checkpoint(tmp_path, capsys):
    assert app.main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_failure_record_without_a_dataset_uses_the_json_ground_truth(tmp_path):
    from mmi.predictor import rle_encode

    img = scene(30, 40)
    cv2.imwrite(str(tmp_path / "a.png"), img[:, :, ::-1])
    gt = np.zeros((30, 40), bool)
    gt[5:15, 10:30] = True
    rec = {"expression": "x", "iou": 0.1, "file_name": "a.png", "gt_rle": rle_encode(gt)}
    rgb, got = app.failure_inputs(rec, {}, str(tmp_path))
    assert np.array_equal(rgb, img) and np.array_equal(got, gt)
    rgb, got = app.failure_inputs({**rec, "gt_rle": None}, {}, str(tmp_path))
    assert got is None
    with pytest.raises(ValueError, match="b.png not found under the image root"):
        app.failure_inputs({**rec, "file_name": "b.png"}, {}, str(tmp_path))


def test_overlay_colours():
    from mmi import viz

    img = np.full((20, 20, 3), 100, np.uint8)
    gt, pred = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    gt[2:10, 2:10], pred[6:16, 6:16] = True, True
    out = viz.compare_masks(img, gt, pred, alpha=1.0).astype(int)
    assert tuple(out[4, 4]) == viz.GT_COLOR and tuple(out[13, 13]) == viz.PRED_COLOR
    assert out[8, 8, 0] > 200 and out[8, 8, 1] > 200 and out[8, 8, 2] < 50  # both: yellow
    two = viz.overlay_masks(img, [gt, pred], alpha=1.0, outline=False)
    assert tuple(two[4, 4]) == viz.color(0) and tuple(two[13, 13]) == viz.color(1) and tuple(two[0, 19]) == (100,) * 3
    heat = viz.heatmap_overlay(img, np.outer(np.arange(20), np.ones(20)).astype(np.float32))
    assert heat.shape == img.shape and not np.array_equal(heat[0], heat[19])
