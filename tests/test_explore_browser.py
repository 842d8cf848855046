"""`npcnn explore` in a real browser: Debian's Chromium, driven by Playwright, against a real server on
127.0.0.1. It draws with the mouse, waits for the probabilities, checks that the page's rendering of the
strokes is what Python makes of them, switches to the gradient view, clicks conv pixels, shows an
overlay, runs an attack, picks a test image, and finds no console error.

``NPCNN_EXPLORE_SCREENSHOT=path.png`` also saves the final page there (how docs/explore.png was made,
with a trained run)."""
import json
import os
import shutil

import numpy as np
import pytest

from npcnn.classifier import load_classifier
from npcnn.explore import drawing

pytest.importorskip("flask")
pytest.importorskip("playwright")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from test_explore import make_run

    from npcnn.explore import create_app
    from npcnn.explore.server import Server

    run_dir = os.environ.get("NPCNN_EXPLORE_RUN") or make_run(tmp_path_factory.mktemp("explore") / "run")
    server = Server(create_app(str(run_dir)), "127.0.0.1", 0, quiet=True).start()
    yield server, str(run_dir)
    server.stop()


def drag(page, box, points):
    """One stroke with the mouse through ``points`` (canvas units = CSS pixels), 4 moves per segment."""
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0], y0 + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x, y0 + y, steps=4)
    page.mouse.up()


def wait_idle(page, key, count):
    page.wait_for_function(f"() => window.explore.state.{key} >= {count} && window.explore.idle()", timeout=30_000)


def canvas_values(page, selector):
    """The red channel of a canvas, in [0, 1]."""
    data = page.evaluate(f"""() => {{ const c = document.querySelector('{selector}');
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }}""")
    w, h, rgba = data
    return np.asarray(rgba, dtype=np.float64).reshape(h, w, 4)[..., 0] / 255


def test_draw_watch_click_and_fool_in_chromium(served, tmp_path):
    from playwright.sync_api import sync_playwright

    server, run_dir = served
    errors, sent = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: sent.append(json.loads(r.post_data))
                    if r.url.endswith("/api/analyze") else None)
            page.goto(server.url)
            wait_idle(page, "analyses", 1)

            # draw a 7 with the mouse: the probabilities follow
            box = page.locator("#draw").bounding_box()
            n = page.evaluate("window.explore.state.analyses")
            drag(page, box, [(80, 60), (200, 60), (190, 90), (130, 240)])
            drag(page, box, [(110, 150), (190, 150)])
            wait_idle(page, "analyses", n + 2)
            state = page.evaluate("() => ({strokes: window.explore.state.strokes, image: window.explore.state.image,"
                                  " probs: window.explore.state.last.probabilities})")
            assert page.locator("#probs .prob").count() == 10

            # the strokes are the mouse's path, and the page's last request carried them
            strokes = state["strokes"]
            assert len(strokes) == 2 and sent[-1]["strokes"] == strokes
            assert np.allclose(strokes[0][0], (80, 60), atol=1) and np.allclose(strokes[0][-1], (130, 240), atol=1)
            assert np.allclose(strokes[1][-1], (190, 150), atol=1)
            # what the page drew is what Python rasterises, and the preview is the image the net saw
            ink = drawing.rasterize(strokes)
            shown = canvas_values(page, "#draw")
            assert np.abs(shown - ink).mean() < 0.01
            assert ((shown > 0.5) & (ink > 0.5)).sum() / ((shown > 0.5) | (ink > 0.5)).sum() > 0.97
            image = drawing.strokes_to_image(strokes)
            assert np.array_equal(np.float32(state["image"]), image)
            assert np.abs(canvas_values(page, "#input") - image).max() <= 1 / 255 + 1e-9
            clf = load_classifier(run_dir)
            assert np.allclose(state["probs"], clf.predict_proba(image[None])[0], atol=1e-6)
            predicted = int(np.argmax(state["probs"]))
            assert page.locator("#probs .prob.pred .name").inner_text() == clf.class_names[predicted]

            # forward view: click a conv2 pixel -> its products
            tile = page.locator('#layer-3 canvas[data-channel="5"]')
            tile.click(position={"x": 23, "y": 23})   # the middle of the 14 x 14 map, 1px border
            page.wait_for_function("() => window.explore.state.pixels >= 1")
            assert page.evaluate("window.explore.state.pixel") == {"layer": 3, "channel": 5, "row": 7, "col": 7}
            assert "products" in page.locator("#details").inner_text()
            assert page.locator("#rf").is_visible()

            # the backward view: gradients, and where the clicked pixel's gradient comes from
            page.click("#view-backward")
            page.wait_for_function("() => window.explore.state.pixels >= 2")
            assert "gradient of the chosen class" in page.locator("#view-note").inner_text()
            assert "Where it comes from" in page.locator("#details").inner_text()
            page.locator('#layer-0 canvas[data-channel="2"]').click(position={"x": 20, "y": 20})
            page.wait_for_function("() => window.explore.state.pixels >= 3")
            assert "relu1" in page.locator("#details").inner_text()

            # an overlay, and a class picked to explain
            page.select_option("#overlay-method", "grad_cam")
            page.wait_for_function("() => window.explore.state.overlays >= 1")
            n = page.evaluate("window.explore.state.analyses")
            page.select_option("#target", "4")
            wait_idle(page, "analyses", n + 1)
            assert page.evaluate("window.explore.state.last.target") == 4

            # fool it
            page.select_option("#attack-target", "3")
            page.click("#attack")
            page.wait_for_function("() => window.explore.state.attacks >= 1", timeout=60_000)
            assert page.locator("#attack-result").is_visible()
            assert "Adam steps" in page.locator("#attack-text").inner_text()
            adv = page.evaluate("window.explore.state.adversarial")
            assert adv["target"] == 3 and 0 <= np.min(adv["image"]) and np.max(adv["image"]) <= 1

            # a test image from the picker
            n = page.evaluate("window.explore.state.analyses")
            page.fill("#index", "7")
            page.click("#load")
            wait_idle(page, "analyses", n + 1)
            assert "label 7" in page.locator("#sample-note").inner_text()
            page.click("#view-forward")
            page.wait_for_function("() => window.explore.state.pixels >= 4")

            shot = tmp_path / "explore.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("NPCNN_EXPLORE_SCREENSHOT"):
                page.screenshot(path=os.environ["NPCNN_EXPLORE_SCREENSHOT"], full_page=False)
        finally:
            browser.close()
    assert errors == []
    assert shot.stat().st_size > 20_000
