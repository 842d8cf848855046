"""`npcnn explore`: the drawing pipeline, the JSON API against the Python API on the same pixels, and the
error cases (4xx JSON naming the problem, the server still serving). The browser test is
test_explore_browser.py."""
import base64
import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest

from npcnn.analysis import feature_maps, grad_cam, occlusion, saliency
from npcnn.analysis.attacks import targeted
from npcnn.classifier import load_classifier
from npcnn.data import Normalization, load_dataset
from npcnn.explore import drawing
from npcnn.explore.api import ATTACK, OCCLUSION, MAX_BODY, Explorer
from npcnn.explore.trace import conv_pixel, trace
from npcnn.io import write_json
from npcnn.models import save_model, seed_cnn
from npcnn.runs import FORMAT

flask = pytest.importorskip("flask")

STROKES = [[[100, 50], [150, 60], [160, 120], [120, 200], [110, 230]], [[90, 150], [190, 150]]]


def make_run(path, data=None):
    """A run folder around a randomly initialised reference net (enough to check every number)."""
    data = data or os.environ.get("NPCNN_DATA")
    path.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in range(10)]
    save_model(str(path / "model.npz"), seed_cnn(rng=0), Normalization(0.1307, 0.3081), batchnorm=False,
               class_names=names)
    write_json(path / "config.json", {"format": FORMAT, "dataset": "mnist", "data_dir": data, "batchnorm": False,
                                      "class_names": names})
    labels = load_dataset("mnist", "test", root=data)[1]
    write_json(path / "samples.json", {"indices": [int(np.flatnonzero(labels == c)[0]) for c in range(10)]})
    return path


def snapshot(folder):
    return {p: os.stat(os.path.join(folder, p)).st_mtime_ns for p in sorted(os.listdir(folder))}


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """The server computes with BLAS held to one thread; the Python side of every comparison does too, so that
    both sum in the same order whatever BLAS kernel and thread count the machine has (with the default threads
    OpenBLAS's Haswell kernels round conv2 differently in the last bit)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("explore") / "run")


@pytest.fixture(scope="module")
def client(run_dir):
    from npcnn.explore import create_app

    return create_app(str(run_dir)).test_client()


@pytest.fixture(scope="module")
def clf(run_dir):
    return load_classifier(str(run_dir))


@pytest.fixture(scope="module")
def digit():
    """A test digit with faint noise everywhere (0.95 x + uniform(0, 0.05)): on exact black every max-pool window
    holds four nearly equal values, and which wins, so where the gradient goes, would be decided by rounding,
    which differs between the fast path and the readable layers and between BLAS kernels."""
    images, _ = load_dataset("mnist", "test", root=os.environ.get("NPCNN_DATA"))
    noise = np.random.default_rng(0).uniform(0, 0.05, images[0].shape)
    return (0.95 * images[0] / 255 + noise).astype(np.float32)


def post(client, route, body):
    r = client.post(route, data=json.dumps(body), content_type="application/json")
    return r.status_code, r.get_json()


def b64(text, shape):
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


# ------------------------------------------------------------------ drawing -> MNIST style


def test_a_drawing_becomes_an_mnist_style_image():
    img = drawing.strokes_to_image(STROKES)
    assert img.shape == (28, 28) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 1 and img.max() == 1
    rows, cols = np.nonzero(img)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 == 20     # fits MNIST's 20 x 20 box
    cy, cx = drawing.center_of_mass(img)
    assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5                      # centred by mass
    assert 0 < np.mean((img > 0) & (img < 1)) < np.mean(img > 0)               # anti-aliased edges
    # drawn elsewhere, or half as big with a pen half as wide: the same digit, up to the resampling's rounding
    moved = [[[x - 40, y + 20] for x, y in s] for s in STROKES]
    assert np.abs(drawing.strokes_to_image(moved) - img).max() < 1e-6
    small = [[[x / 2 + 5, y / 2 + 130] for x, y in s] for s in STROKES]
    assert np.abs(drawing.to_mnist(drawing.rasterize(small, width=drawing.BRUSH / 2)) - img).mean() < 0.03
    assert not drawing.strokes_to_image([]).any() and not drawing.strokes_to_image([[]]).any()


def test_the_pen_and_the_resampling():
    ink = drawing.rasterize([[[140, 140]]], width=20)                  # a dot of radius 10
    assert ink[140, 140] == 1 and ink[140, 160] == 0
    assert abs(ink.sum() - np.pi * 100) / (np.pi * 100) < 0.02            # its area
    line = drawing.rasterize([[[20, 100.5], [200, 100.5]]], width=10)
    assert np.all(line[96:105, 30:190] == 1) and not line[:90].any()
    a = drawing.area_matrix(280, 20)
    assert np.allclose(a.sum(axis=1), 1) and np.allclose(a.sum(axis=0), 20 / 280)


# ------------------------------------------------------------------ the API equals the Python API


def test_analyze_equals_the_python_api(client, clf, digit):
    code, r = post(client, "/api/analyze", {"image": digit.tolist(), "target": None})
    assert code == 200
    p = clf.predict_proba(digit[None])[0]
    assert np.array_equal(np.float32(r["probabilities"]), p) and r["prediction"] == int(p.argmax())
    assert r["target"] == r["prediction"] and np.array_equal(np.float32(r["image"]), digit)
    names = [layer["name"] for layer in r["layers"]]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    maps = feature_maps(clf, digit[None])
    assert np.array_equal(np.float32(r["layers"][0]["activation"]), maps["conv1"][0])
    assert np.array_equal(np.float32(r["layers"][3]["activation"]), maps["conv2"][0])
    logits = clf.logits(digit[None])[0]
    assert np.allclose(r["layers"][-1]["activation"], logits, rtol=1e-5, atol=1e-5)
    onehot = np.eye(10, dtype=np.float32)[[r["target"]]]
    assert np.allclose(r["input_gradient"], clf.input_gradient(digit[None], onehot)[0], rtol=1e-4, atol=1e-6)
    assert np.array_equal(np.float32(r["layers"][-1]["gradient"]), onehot[0])        # dS/dlogits
    # Grad-CAM's channel weights are the spatial means of dS/d(relu2 output): the same backward pass
    cam = grad_cam(clf, digit[None], r["target"], layer=4)
    assert np.allclose(np.mean(r["layers"][4]["gradient"], axis=(1, 2)), cam.weights[0], rtol=1e-5, atol=1e-7)
    # every layer, against npcnn.explore.trace called directly (the server holds BLAS to one thread, so the
    # GEMMs may round differently in the last bit)
    t = trace(clf, digit)
    for i, layer in enumerate(r["layers"]):
        assert np.allclose(layer["activation"], t.activations[i], rtol=1e-5, atol=1e-6)
        assert np.allclose(layer["gradient"], t.gradients[i], rtol=1e-5, atol=1e-7)


def test_a_finite_difference_confirms_a_layer_gradient(clf, digit):
    t = trace(clf, digit, target=3)
    body = clf.body.layers
    fc1 = t.activations[7]
    unit = int(np.argmax(np.abs(t.gradients[7]) * (fc1 > 0)))
    eps = 1e-2
    ends = []
    for s in (1, -1):
        h = fc1.copy()[None]
        h[0, unit] += s * eps
        for layer in body[8:]:
            h = layer.forward(h)
        ends.append(float(h[0, 3]))
    assert np.isclose((ends[0] - ends[1]) / (2 * eps), t.gradients[7][unit], rtol=1e-3, atol=1e-5)


def test_base64_answers_hold_the_same_numbers(client, digit):
    _, lists = post(client, "/api/analyze", {"image": digit.tolist(), "target": 7})
    _, packed = post(client, "/api/analyze", {"image": digit.tolist(), "target": 7, "encoding": "base64"})
    for a, b in zip(lists["layers"], packed["layers"]):
        assert np.array_equal(np.float32(a["activation"]), b64(b["activation"], a["shape"]))
        assert np.array_equal(np.float32(a["gradient"]), b64(b["gradient"], a["shape"]))
    assert np.array_equal(np.float32(lists["input_gradient"]), b64(packed["input_gradient"], (28, 28)))


def test_strokes_are_turned_into_the_image_python_makes(client, clf):
    code, r = post(client, "/api/analyze", {"strokes": STROKES})
    assert code == 200
    img = drawing.strokes_to_image(STROKES)
    assert np.array_equal(np.float32(r["image"]), img)
    assert np.array_equal(np.float32(r["probabilities"]), clf.predict_proba(img[None])[0])


@pytest.mark.parametrize("layer, pixel", [("conv1", (5, 14, 13)), ("conv2", (7, 6, 7)), (0, (0, 0, 0)),
                                          (3, (31, 13, 0))])
def test_a_conv_pixel_is_its_products_forward_and_backward(client, clf, digit, layer, pixel):
    c, row, col = pixel
    code, r = post(client, "/api/pixel", {"image": digit.tolist(), "target": 2, "layer": layer, "channel": c,
                                          "row": row, "col": col})
    assert code == 200, r
    t = trace(clf, digit, 2)
    index = {"conv1": 0, "conv2": 3}.get(layer, layer)
    assert r["value"] == pytest.approx(float(t.activations[index][c, row, col]))
    assert r["sum"] == pytest.approx(r["value"], rel=1e-5, abs=1e-5)
    assert np.allclose(np.multiply(r["kernel"], r["patch"]), r["products"])
    assert r["gradient"] == pytest.approx(float(t.gradients[index][c, row, col]))
    assert r["comes_from"]["gradient"] == pytest.approx(r["gradient"], rel=1e-4, abs=1e-7)
    r0, r1, c0, c1 = r["receptive_field"]
    size = 3 if index == 0 else 8
    assert r1 - r0 <= size and c1 - c0 <= size and 0 <= r0 < r1 <= 28 and 0 <= c0 < c1 <= 28
    p = conv_pixel(clf, t, index, c, row, col)
    assert set(r) == set(p) | {"target"} and r["receptive_field"] == list(p["receptive_field"])
    assert np.allclose(r["products"], p["products"], rtol=1e-5, atol=1e-7)
    if p["comes_from"]["products"] is None:          # a ReLU that is off, or a pool window it did not win
        assert r["comes_from"]["products"] is None and r["gradient"] == 0
    else:
        assert np.allclose(r["comes_from"]["products"], p["comes_from"]["products"], rtol=1e-4, atol=1e-7)


def test_overlays_equal_the_analysis_functions(client, clf, digit):
    _, r = post(client, "/api/overlay", {"image": digit.tolist(), "target": 4, "method": "occlusion"})
    expect = occlusion(clf, digit[None], 4, **OCCLUSION).attribution[0]
    assert np.allclose(r["map"], expect, atol=1e-6) and r["signed"]
    _, r = post(client, "/api/overlay", {"image": digit.tolist(), "target": 4, "method": "saliency"})
    assert np.allclose(r["map"], saliency(clf, digit[None], 4)[0])
    _, r = post(client, "/api/overlay", {"image": digit.tolist(), "target": None, "method": "grad_cam"})
    assert np.allclose(r["map"], grad_cam(clf, digit[None], r["target"], layer="conv2").upsampled[0], atol=1e-6)


def test_attack_is_the_librarys_targeted_attack(client, clf, digit):
    code, r = post(client, "/api/attack", {"image": digit.tolist(), "target": 3, "steps": 60})
    assert code == 200
    expect = targeted(clf, digit[None], [3], steps=60, lr=ATTACK["lr"], beta=ATTACK["beta"], bounds=(0, 1),
                      progress=False)
    adv = np.float32(r["image"])
    assert np.allclose(adv, expect.images[0], atol=1e-6) and 0 <= adv.min() and adv.max() <= 1
    assert np.allclose(r["probabilities"], clf.predict_proba(adv[None])[0], atol=1e-6)
    assert np.allclose(np.float32(r["perturbation"]), adv - digit, atol=1e-6)
    assert len(r["history"]) == 60 and r["success"] == (r["prediction"] == 3)


def test_samples_are_picked_by_index(client, run_dir):
    r = client.get("/api/sample?source=samples&index=4").get_json()
    assert r["label"] == 4 and np.asarray(r["image"]).shape == (28, 28)
    r = client.get("/api/sample?source=test&index=0").get_json()
    assert r["test_index"] == 0 and r["count"] == 10_000
    for query, status in [("source=test&index=10000", 404), ("source=samples&index=-1", 404),
                          ("source=../etc&index=0", 400), ("index=abc", 400)]:
        res = client.get(f"/api/sample?{query}")
        assert res.status_code == status and "error" in res.get_json(), query


def test_the_page_and_info_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and b"explore.js" in page.data
    assert client.get("/explore.js").status_code == 200 and client.get("/explore.css").status_code == 200
    info = client.get("/api/info").get_json()
    assert info["classes"] == [str(c) for c in range(10)] and info["layers"][3]["type"] == "Conv2d"
    assert client.get("/static/../../model.npz").status_code == 404
    assert client.get("/model.npz").status_code == 404


# ------------------------------------------------------------------ errors


GOOD = np.zeros((28, 28)).tolist()


@pytest.mark.parametrize("route, body, status, words", [
    ("/api/analyze", {"image": np.zeros((27, 28)).tolist()}, 400, "28 x 28"),
    ("/api/analyze", {"image": np.zeros((28, 28, 1)).tolist()}, 400, "got shape [28, 28, 1]"),
    ("/api/analyze", {"image": [[0] * 28] * 27 + [[0] * 27]}, 400, "28 rows of 28"),
    ("/api/analyze", {"image": [["a"] * 28] * 28}, 400, "28 rows of 28"),
    ("/api/analyze", {"image": [[float("nan")] * 28] * 28}, 400, "NaN"),
    ("/api/analyze", {"image": [[1.5] * 28] * 28}, 400, "[0, 1]"),
    ("/api/analyze", {"image": [[-0.1] * 28] * 28}, 400, "[0, 1]"),
    ("/api/analyze", {"image": GOOD, "target": 10}, 400, "unknown class 10"),
    ("/api/analyze", {"image": GOOD, "target": "3"}, 400, "class number"),
    ("/api/analyze", {"image": GOOD, "target": True}, 400, "class number"),
    ("/api/analyze", {"image": GOOD, "encoding": "xml"}, 400, "encoding"),
    ("/api/analyze", {"image": GOOD, "path": "/etc/passwd"}, 400, "unknown field 'path'"),
    ("/api/analyze", {}, 400, "either"),
    ("/api/analyze", [1, 2], 400, "JSON object"),
    ("/api/analyze", {"strokes": [[[1, 2, 3]]]}, 400, "stroke 0"),
    ("/api/analyze", {"strokes": [[[1e9, 2]]]}, 400, "far outside"),
    ("/api/analyze", {"strokes": "abc"}, 400, "list of strokes"),
    ("/api/attack", {"image": GOOD}, 400, "target must be a class number"),
    ("/api/attack", {"image": GOOD, "target": -1}, 400, "unknown class -1"),
    ("/api/attack", {"image": GOOD, "target": 1, "steps": 10**6}, 400, "steps"),
    ("/api/pixel", {"image": GOOD, "layer": "fc1", "channel": 0, "row": 0, "col": 0}, 400, "conv layer"),
    ("/api/pixel", {"image": GOOD, "layer": "conv2", "channel": 0, "row": 14, "col": 0}, 400, "row"),
    ("/api/overlay", {"image": GOOD, "method": "lime"}, 400, "unknown method"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(client, route, body, status, words):
    code, r = post(client, route, body)
    assert code == status and words in r["error"], r
    assert post(client, "/api/analyze", {"image": GOOD, "encoding": "base64"})[0] == 200      # still serving


def test_bad_bodies_and_methods(client):
    r = client.post("/api/analyze", data=b"{not json", content_type="application/json")
    assert r.status_code == 400 and "not valid JSON" in r.get_json()["error"]
    r = client.post("/api/analyze", data=b"x" * (MAX_BODY + 1), content_type="application/json")
    assert r.status_code == 413 and "larger than" in r.get_json()["error"]
    r = client.get("/api/analyze")
    assert r.status_code == 405 and "error" in r.get_json()
    assert post(client, "/api/analyze", {"image": GOOD, "encoding": "base64"})[0] == 200


def test_a_real_server_refuses_big_bodies_and_keeps_serving(run_dir):
    from npcnn.explore import create_app
    from npcnn.explore.server import Server

    before = snapshot(run_dir)
    server = Server(create_app(str(run_dir)), quiet=True).start()
    try:
        assert server.host == "127.0.0.1"

        def call(route, data):
            req = urllib.request.Request(server.url + route, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as res:
                    return res.status, json.loads(res.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        code, r = call("api/analyze", json.dumps({"image": [[0.5] * 28] * 28 * 300}).encode())   # ~1.2 MB
        assert code == 413 and "error" in r
        code, r = call("api/analyze", json.dumps({"image": [[2] * 28] * 28}).encode())
        assert code == 400 and "[0, 1]" in r["error"]
        code, r = call("api/analyze", json.dumps({"strokes": STROKES, "target": 1, "encoding": "base64"}).encode())
        assert code == 200 and r["target"] == 1
    finally:
        server.stop()
    assert snapshot(run_dir) == before            # the run folder is only read


def test_the_explorer_needs_a_run_folder(tmp_path):
    with pytest.raises(ValueError, match="no such run folder"):
        Explorer(str(tmp_path / "nothing"))


def test_the_command_line_parses_its_flags():
    from npcnn.cli import build_parser

    args = build_parser().parse_args(["explore", "RUN", "--port", "0", "--no-browser"])
    assert (args.run_dir, args.port, args.host, args.no_browser) == ("RUN", 0, "127.0.0.1", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["explore", "RUN", "--port", "70000"])


def test_the_strongest_gradient_pixels_are_traced_back_exactly(clf, digit):
    t = trace(clf, digit, target=5)
    for index in (0, 3):
        c, row, col = (int(v) for v in np.unravel_index(np.argmax(np.abs(t.gradients[index])), t.activations[index].shape))
        p = conv_pixel(clf, t, index, c, row, col)
        f = p["comes_from"]
        assert p["gradient"] != 0 and [s["factor"] for s in f["path"]] == [1.0] * len(f["path"])
        assert f["via_name"] == ("conv2" if index == 0 else "fc1")
        assert f["gradient"] == pytest.approx(p["gradient"], rel=1e-4)
        assert f["sum"] == pytest.approx(float(np.sum(f["products"])), rel=1e-5)


def test_a_batchnorm_net_is_traced_through_its_batchnorms():
    from npcnn.classifier import Classifier

    model = seed_cnn(batchnorm=True, rng=1)
    for m in model.modules():
        if hasattr(m, "running_var"):
            m.running_var[...] = np.linspace(0.5, 2, m.running_var.size)
    clf = Classifier(model, Normalization(0.1307, 0.3081))
    t = trace(clf, drawing.strokes_to_image(STROKES), target=3)
    p = conv_pixel(clf, t, 4, *(int(v) for v in np.unravel_index(np.argmax(np.abs(t.gradients[4])), (32, 14, 14))))
    assert [s["name"] for s in p["comes_from"]["path"]] == ["relu2", "pool2", "bn2", "flatten"]
    assert p["comes_from"]["gradient"] == pytest.approx(p["gradient"], rel=1e-4) and p["gradient"] != 0
