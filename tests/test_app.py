"""The Gradio app on a real server (in-process, a free loopback port, one per module), called
with gradio_client: every endpoint, the exports loaded by pycocotools, bad input."""
from __future__ import annotations

import json
import os
import socket
import zipfile

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402
from mmi.predictor import Predictor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def connect(url: str) -> Client:
    """A client (its own session) with patient timeouts: the CI machine is small and shared."""
    return Client(url, verbose=False, httpx_kwargs={"timeout": 300})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(h: int = 60, w: int = 80) -> np.ndarray:
    img = np.full((h, w, 3), 190, np.uint8)
    img[h // 5 : h // 2, w // 8 : w // 2] = (220, 30, 30)
    img[h // 2 :, w // 2 :] = (30, 30, 220)
    return img


class Counting:
    """Counts the decoder calls of a model (a model call = a decode)."""

    def __init__(self, model):
        self.calls, self._decode = 0, model.decode
        model.decode = self

    def __call__(self, *a, **k):
        self.calls += 1
        return self._decode(*a, **k)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    counter = Counting(predictor.model)
    demo = app.build_app(predictor)
    port = free_port()
    app.launch(demo, "127.0.0.1", port, block=False, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    yield url, connect(url), predictor, counter
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


def path_of(f) -> str:
    return f if isinstance(f, str) else f["path"]


# ----------------------------------------------------------------------------- /segment

def test_segment_api_gives_a_mask_and_word_heatmaps_per_expression(server, files):
    _, client, predictor, _ = server
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


@pytest.mark.parametrize("key, text, message", [
    (None, "the red cube", "No image"),
    ("rgb", "", "No expression"),
    ("rgb", "\n   \n\n", "No expression"),
    ("rgb", "😀😀 !!\n...", "None of the lines has a word"),
    ("text", "the red cube", "notes.txt is not an image"),
])
def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(server, files, key, text, message):
    _, client, _, _ = server
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
    _, client, predictor, _ = server
    out = client.predict(handle_file(files[key]), text, 0.5, api_name="/segment")
    assert (out["height"], out["width"]) == size
    for e in out["expressions"]:
        assert tuple(e["mask_rle"]["size"]) == size
        assert 1 <= len(e["tokens"]) <= predictor.t_max
    if key == "rgb":
        assert out["expressions"][0]["truncated"] and len(out["expressions"][0]["dropped"]) == 200 - predictor.t_max
    if key == "rgba":
        assert all(any(e["unknown"]) for e in out["expressions"])


# ----------------------------------------------------------------------------- the Segment tab

def test_segment_ui_gives_overlay_legend_words_heatmaps_and_exports(server, files):
    _, client, predictor, _ = server
    exprs = ["the red cube", "a zorblax ball" + " cube" * 30]
    overlay, shown, legend, table, importance, heatmaps, downloads, status = client.predict(
        handle_file(files["rgb"]), "\n".join(exprs) + "\n\n", 0.5, "layer 1", 0.25, "RLE", True,
        api_name="/segment_ui")
    assert cv2.imread(path_of(overlay)).shape[:2] == (60 * 4, 80 * 4)  # small images shown enlarged (at most 4x)
    assert [c[1] for c in shown["choices"]] == ["1", "2"] and shown["value"] == ["1", "2"]
    assert "the red cube" in legend and '<mark class="unk">?zorblax</mark>' in legend and "cut: " in legend
    assert table["headers"] == ["#", "expression", "as read", "flag", "conf.", "area %", "regions"]
    rows = table["data"]
    assert [r[1] for r in rows] == exprs and "?zorblax" in rows[1][2] and "[cut" in rows[1][2]
    assert "unknown: zorblax" in rows[1][3]
    # heatmaps: one section per expression, content words shown, function words folded
    assert heatmaps.count("<section") == 2 and "<details><summary>function words (the)" in heatmaps
    assert 'data-word="red"' in heatmaps and "colour scale" in heatmaps
    assert importance.count("data-word=") == 3 + predictor.t_max  # a bar per word
    assert "heatmaps of decoder layer 1" in status and "unknown word(s) zorblax" in status
    zip_path, coco_path, overlay_png = (path_of(f) for f in downloads)
    assert os.path.basename(coco_path) == "coco_rle.json" and os.path.basename(overlay_png) == "overlay.png"
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(z.namelist())
        assert names == ["coco_rle.json", "mask_01_the_red_cube.png", "mask_02_a_zorblax_ball_cube_cube_cube_cube_cube.png",
                         "overlay.png"]
        pngs = [cv2.imdecode(np.frombuffer(z.read(n), np.uint8), cv2.IMREAD_GRAYSCALE) for n in names[1:3]]
    assert all(p.shape == (60, 80) for p in pngs)


def test_the_coco_file_loads_in_pycocotools_and_matches_the_png_masks(server, files, tmp_path):
    from pycocotools.coco import COCO

    _, client, _, _ = server
    img = np.full((90, 120, 3), 120, np.uint8)
    cv2.imwrite(str(tmp_path / "s.png"), img)
    exprs = ["the red cube", "the big green thing at the top", "leftmost small circle"]
    for fmt in ("RLE", "polygons"):
        *_, downloads, _ = client.predict(handle_file(files["rgb"]), "\n".join(exprs), 0.3, "layer 2", 0.25, fmt, False,
                                          api_name="/segment_ui")
        zip_path, coco_path = path_of(downloads[0]), path_of(downloads[1])
        coco = COCO(coco_path)
        doc = json.load(open(coco_path))
        assert [c["name"] for c in doc["categories"]] == exprs
        assert doc["images"] == [{"id": 1, "file_name": "scene.png", "height": 60, "width": 80}]
        with zipfile.ZipFile(zip_path) as z:
            pngs = {n: cv2.imdecode(np.frombuffer(z.read(n), np.uint8), cv2.IMREAD_GRAYSCALE) > 0
                    for n in sorted(z.namelist()) if n.startswith("mask_")}
        by_cat = {a["category_id"]: a for a in coco.loadAnns(coco.getAnnIds(imgIds=[1]))}
        assert by_cat, "the tiny model marked nothing at threshold 0.3"
        for i, png in enumerate(pngs.values(), 1):
            if i not in by_cat:
                assert not png.any() and exprs[i - 1] in doc["info"]["empty_expressions"]
                continue
            ann = by_cat[i]
            m = coco.annToMask(ann).astype(bool)
            assert ann["area"] == png.sum() and ann["iscrowd"] == 0 and len(ann["bbox"]) == 4
            if fmt == "RLE":
                assert np.array_equal(m, png)
            else:
                assert isinstance(ann["segmentation"], (list, dict))
                assert np.count_nonzero(m & png) / np.count_nonzero(m | png) > 0.6  # polygons approximate


def test_redraw_changes_threshold_layer_visibility_without_a_model_call(server, files):
    url, _, predictor, counter = server
    client = connect(url)  # its own session: the kept result belongs to it
    out = client.predict(handle_file(files["rgb"]), "the red cube\na blue ball", 0.5, "layer 2", 0.25, "RLE", True,
                         api_name="/segment_ui")
    calls, encodes = counter.calls, predictor.encode_calls
    overlay, shown, legend, table, importance, heatmaps, downloads, status = client.predict(
        0.2, "layer 1", 0.0, ["2"], "RLE", api_name="/redraw")
    assert counter.calls == calls and predictor.encode_calls == encodes  # no decoder, no encoder call
    assert "re-drawn from the kept result (no model call)" in status and "threshold 0.20" in status
    assert "heatmaps of decoder layer 1" in status and "1 shown" in status
    assert "(hidden)" in legend.split('data-expr="2"')[0]  # expression 1 hidden
    areas = [r[5] for r in table["data"]]
    before = [r[5] for r in out[3]["data"]]
    assert all(a >= b for a, b in zip(areas, before))  # a lower threshold never shrinks a mask


def test_errors_in_the_tab_keep_the_previous_result(server):
    url, _, _, _ = server
    client = connect(url)
    out = client.predict(None, "the red cube", 0.5, "layer 2", 0.25, "RLE", True, api_name="/segment_ui")
    status = out[-1]
    assert "Could not finish segmenting" in status and "No image" in status and "previous result" in status


def test_word_importance_equals_segmenting_the_expression_without_the_word(server, files):
    _, client, predictor, _ = server
    text = "the red cube on the left"
    out = client.predict(handle_file(files["rgb"]), text + "\nred", 0.5, api_name="/word_importance")
    words = out["expressions"][0]["words"]
    tokens = predictor.vocab.encode(text, predictor.t_max).tokens
    assert [w["word"] for w in words] == tokens and out["expressions"][1]["words"] == []
    rgb = scene()
    full = predictor.predict(rgb, [text])[0]
    lb = full.letterbox

    def canvas_mask(p):
        return p.canvas_prob[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] > 0.5

    for j, w in enumerate(words):
        without = predictor.predict(rgb, [" ".join(tokens[:j] + tokens[j + 1 :])])[0]
        a, b = canvas_mask(full), canvas_mask(without)
        union = np.count_nonzero(a | b)
        assert w["iou"] == pytest.approx(np.count_nonzero(a & b) / union if union else 1.0, abs=0.02)


# ----------------------------------------------------------------------------- scene lab

def test_scene_lab_gives_the_worlds_verdicts_and_ground_truth(server):
    from mmi.data.synthetic.parse import check
    from webapp.scenelab import lab_scene

    _, client, _, _ = server
    image, truth, suggested, about = client.predict(7, "crowded (7-9)", 0, False, api_name="/lab_scene")
    scene_, rgb, masks = lab_scene(7, "crowded (7-9)", 0, False)
    assert 7 <= len(scene_.objects) <= 9 and f"{len(scene_.objects)} objects" in about
    first = suggested.splitlines()[0]
    assert check(scene_, first).kind == "unique"
    absent = next(c for c in ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
                  if all(o.colour != c for o in scene_.objects))
    text = "\n".join([first, "the object", "the cheetah", f"the {absent} thing"])
    truth, pred, table, status, legend = client.predict(7, "crowded (7-9)", 0, False, text, 0.5, api_name="/lab_check")
    verdicts = [r[2] for r in table["data"]]
    assert verdicts[0].startswith(f"names object {check(scene_, first).objects[0] + 1} (")
    assert verdicts[1] == f"ambiguous: matches {len(scene_.objects)} objects"
    assert verdicts[2].startswith("outside the world's grammar: 'cheetah'")
    assert verdicts[3] == "names no object"
    assert 0.0 <= float(table["data"][0][3]) <= 1.0 and table["data"][1][3] == ""
    assert cv2.imread(path_of(truth)).shape == cv2.imread(path_of(pred)).shape
    assert "1 name one object, 1 ambiguous, 1 name no object, 1 outside the grammar" in status
    # clicking an object: its shortest expressions, each naming it
    z = 0
    ys, xs = np.nonzero(masks[z])
    listing = client.predict(7, "crowded (7-9)", 0, False, int(xs[len(xs) // 2]), int(ys[len(ys) // 2]),
                             api_name="/lab_object")
    assert listing.startswith(f"**Object {z + 1}**")
    quoted = [line.split("“")[1].rstrip("”") for line in listing.splitlines() if "“" in line]
    assert quoted and all(check(scene_, q).objects == (z,) for q in quoted)
    kept = client.predict(7, "sparse (3-5)", 8, False, api_name="/lab_scene")  # an error keeps the scene shown
    assert "sparse (3-5) scenes hold 3 to 5 objects" in kept[3] and "Could not finish" in kept[3]


def test_unseen_pairs_give_a_compositional_scene(server):
    from mmi.data.synthetic.scene import HELD_OUT
    from webapp.scenelab import lab_scene

    scene_, _, _ = lab_scene(3, "any (3-9 objects)", 0, True)
    assert scene_.held_out and all(scene_.objects[z].combo in HELD_OUT for z in scene_.held_out)
    _, client, _, _ = server
    assert "never seen in training" in client.predict(3, "any (3-9 objects)", 0, True, api_name="/lab_scene")[3]


# ----------------------------------------------------------------------------- failure cases

def test_failure_cases_from_an_uploaded_results_file(server, tmp_path, tiny_checkpoint):
    try:
        import fixtures_refer as fx
    except ImportError:
        from tests import fixtures_refer as fx
    from mmi.engine.evaluate import run_eval_only

    url, _, predictor, _ = server
    root = str(tmp_path / "data")
    fx.write_refer_fixture(root)
    results = str(tmp_path / "eval.json")
    run_eval_only(tiny_checkpoint, "refcoco", "val", root, out=results, workers=0, device="cpu", batch_size=4)
    records = json.load(open(results))["records"]
    session = connect(url)
    table, pick, types, summary = session.predict(handle_file(results), api_name="/failures")  # State stays on the server
    ious = [r[1] for r in table["data"]]
    assert len(ious) == len(records) and ious == sorted(ious) and "eval.json" in summary
    worst = min(records, key=lambda r: (r["iou"], r["expression"]))
    assert table["data"][0][3] == worst["expression"]
    choice = pick["value"] if isinstance(pick, dict) else pick
    compare, info, heat = session.predict(choice, root, "layer 2", api_name="/failure_case")
    img = cv2.imread(path_of(compare))
    assert img.shape[0] / worst["height"] == img.shape[1] / worst["width"] >= 1
    assert f"IoU {worst['iou']:.3f}" in info and "(not available)" not in info
    assert heat.count("<section") == 1
    lo = sorted(ious)[len(ious) // 2]
    filt, _, counted = session.predict([], lo, 1.0, api_name="/failures_filter")
    assert all(r[1] >= lo - 1e-6 for r in filt["data"]) and f"of {len(records)} expressions" in counted
    bad = tmp_path / "bad.json"
    bad.write_text('{"records": []}')
    with pytest.raises(AppError, match="has no 'records' list"):
        session.predict(handle_file(str(bad)), api_name="/failures")


def test_shipped_results_open_without_a_data_folder(server):
    _, client, _, _ = server
    path = os.path.join(ROOT, "assets", "results", "synref_val_shipped.json")
    assert os.path.getsize(path) < 1_000_000
    doc = json.load(open(path))
    assert doc["synthetic"]["seed"] is not None and all("gt_rle" in r and "rle" in r for r in doc["records"])
    table, pick, types, summary = client.predict(api_name="/failures_shipped")
    assert len(table["data"]) == len(doc["records"]) and "synref_val_shipped.json" in summary
    assert set(types["choices"][i][0] for i in range(len(types["choices"]))) == {r["type"] for r in doc["records"]}
    filt, pick, _ = client.predict(["ordinal"], 0.0, 1.0, api_name="/failures_filter")
    assert filt["data"] and all(r[2] == "ordinal" for r in filt["data"])
    choice = pick["value"] if isinstance(pick, dict) else pick
    assert "· ordinal ·" in choice
    compare, info, _ = client.predict(choice, "", "layer 2", api_name="/failure_case")
    assert "(not available)" not in info and cv2.imread(path_of(compare)) is not None


def test_a_regenerated_synthetic_image_equals_the_written_file(tmp_path):
    from mmi.data.synthetic import SynthConfig, generate_image
    from mmi.data.synthetic.exporter import encode_image
    from webapp.failures import failure_inputs

    config = SynthConfig()
    g = generate_image(0, 11, config)
    folder = tmp_path / "images" / "synref"
    folder.mkdir(parents=True)
    (folder / g.file_name).write_bytes(encode_image(g.image, config))
    z = g.refs[0][0]
    rec = {"expression": "x", "iou": 0.0, "file_name": g.file_name, "ann_id": g.image_id * 100 + z}
    header = {"dataset": "synref", "synthetic": {"seed": 0, "config": {"name": "synref", "image_format": "jpg"}}}
    from_file, _ = failure_inputs(rec, {"dataset": "synref"}, str(tmp_path))
    made, gt = failure_inputs(rec, header, "")
    assert np.array_equal(from_file, made) and np.array_equal(gt, g.masks[z])
    with pytest.raises(ValueError, match="no synthetic seed to regenerate it"):
        failure_inputs(rec, {"dataset": "synref"}, "")


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


def test_failure_view_says_when_the_results_averaged_the_mirrored_view(tiny_checkpoint, tmp_path):
    """A results file of --eval-only --flip: the recomputed prediction is the plain view's, and
    the description says so; without the flag it says nothing of it."""
    from mmi.predictor import rle_encode
    from webapp.common import Context, ModelInfo, Results, Workdir
    from webapp.failures import failure_view

    img = scene(30, 40)
    cv2.imwrite(str(tmp_path / "a.png"), img[:, :, ::-1])
    gt = np.zeros((30, 40), bool)
    gt[5:15, 10:30] = True
    rec = {"expression": "the red cube", "iou": 0.1, "type": "attribute", "file_name": "a.png",
           "gt_rle": rle_encode(gt), "rle": rle_encode(gt)}
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    ctx = Context(predictor, ModelInfo(predictor), Workdir(), Results(), ["layer 1"])
    _, text, _ = failure_view(ctx, [rec], {"threshold": 0.5, "flip": True}, "1", str(tmp_path), "layer 1")
    assert "mirrored view (`--flip`)" in text and "is the plain view's" in text
    _, text, _ = failure_view(ctx, [rec], {"threshold": 0.5}, "1", str(tmp_path), "layer 1")
    assert "mirrored" not in text


# ----------------------------------------------------------------------------- what the model knows

def test_the_page_says_what_the_model_knows(tiny_checkpoint, tmp_path):
    from webapp.common import ModelInfo
    from webapp.segment import example_rows

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    info = ModelInfo(predictor)
    assert "trained on **fixture**" in info.summary() and "shapes world only" not in info.summary()
    marked = info.mark("the red cheetah\n\nleftmost circle")
    assert '<mark class="unk" title="not in the vocabulary">?cheetah</mark>' in marked and "1 unknown word(s)" in marked
    assert "2. " in marked and "?leftmost" not in marked
    predictor.meta = {"dataset": "synref", "epoch": 11, "val": {"oIoU": 0.42, "count": 600}}
    synth = ModelInfo(predictor).summary()
    assert "knows the synthetic shapes world only" in synth and "--checkpoint" in synth and "oIoU 42.0" in synth
    predictor.meta = {"dataset": "synref", "average_of": [{"file": "a.pt"}, {"file": "b.pt"}]}
    assert "the mean of 2 runs' weights" in ModelInfo(predictor).summary()
    from webapp.common import Context, Results, Workdir

    folder = tmp_path / "examples"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), scene())
    (folder / "examples.json").write_text(json.dumps([
        {"file_name": "a.png", "expressions": ["the red cube", "the purple cheetah", "a blue ball"]},
        {"file_name": "a.png", "expressions": ["the cheetah"]}]))
    ctx = Context(predictor, info, Workdir(), Results(), ["layer 1"], examples_dir=str(folder))
    rows, labels = example_rows(ctx)  # examples keep only the lines in the model's own words
    assert rows == [[str(folder / "a.png"), "the red cube\na blue ball"]] and labels == ["1: the red cube / a blue ball"]


def test_the_page_and_the_legend_say_which_regions_a_mask_keeps(tiny_checkpoint):
    """app.py --regions peak (the default) or all: the page says which; a mask whose map had
    several regions is flagged as ambiguous (all) or as the most probable one kept (peak)."""
    from mmi.predictor import Prediction
    from webapp.common import ModelInfo
    from webapp.segment import flags_of

    assert app.parse_args([]).regions == "peak" and app.parse_args(["--regions", "all"]).regions == "all"
    peak = ModelInfo(Predictor.from_checkpoint(tiny_checkpoint, regions="peak")).summary()
    every = ModelInfo(Predictor.from_checkpoint(tiny_checkpoint)).summary()
    assert "keeps only its most probable region" in peak and "`--regions all`" in peak
    assert "every region above the threshold (`--regions peak`" in every
    pred = Prediction(expression="x", mask=np.ones((4, 4), bool), canvas_prob=np.ones((4, 4), np.float32),
                      letterbox=None, threshold=0.5, tokens=["x"], unknown=[False], dropped=[], confidence=0.9,
                      area=16, regions=3)
    assert ("multi", "3 regions: ambiguous?") in flags_of(pred)
    pred.region_mode = "peak"
    assert ("multi", "3 regions found, the most probable kept") in flags_of(pred)


def test_the_page_says_when_the_model_runs_in_bf16(tiny_checkpoint):
    """app.py --amp auto (the default: bf16 where the CPU computes it), bf16 or off."""
    from webapp.common import ModelInfo

    assert app.parse_args([]).amp == "auto" and app.parse_args(["--amp", "off"]).amp == "off"
    with pytest.raises(SystemExit):
        app.parse_args(["--amp", "fp16"])
    assert "computed in bf16" in ModelInfo(Predictor.from_checkpoint(tiny_checkpoint, amp="bf16")).summary()
    assert "bf16" not in ModelInfo(Predictor.from_checkpoint(tiny_checkpoint, amp="off")).summary()


def test_main_reports_a_bad_checkpoint(tmp_path, capsys):
    assert app.main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
