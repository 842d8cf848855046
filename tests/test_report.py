"""`npcnn reproduce --quick` end to end, and the HTML report it writes, checked as a page and in Chromium."""
import base64
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

import numpy as np

from npcnn.io import load_npz
from npcnn.pipeline import stages
from npcnn.report import ReportError, build_report, sweep_sentence, write_report
from npcnn.report.boundary import boundary_sentence
from npcnn.report.noise import noise_sentence, noise_sweep_sentence
from npcnn.report.training import adversarial_sentence

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECTIONS = ["setup", "training", "inside", "deeper", "attacks", "defense", "beyond"]


def npcnn(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "npcnn.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kwargs)


class PageParser(HTMLParser):
    """Collects ids, images, scripts and external references of a page."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.external, self.scripts, self.accuracies = [], [], [], 0, {}
        self._acc = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        if tag == "strong" and attrs.get("class") == "acc":
            self._acc = attrs["data-variant"]

    def handle_data(self, data):
        if self._acc:
            self.accuracies[self._acc] = data
            self._acc = None


def parse(page):
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "mnist"
    result = npcnn("reproduce", "--quick", "--defend", "--out", out, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_reproduce_quick_writes_every_section(reproduced):
    out, result = reproduced
    page = (out / "report.html").read_text(encoding="utf-8")
    p = parse(page)
    assert [s for s in SECTIONS if s in p.ids] == SECTIONS
    assert "not run" not in page.replace("not run:</strong> the speed benchmark", "")
    assert p.scripts == 0 and p.external == []  # self-contained: nothing to fetch
    for line in ("[train]", "[inspect]", "[occlusion]", "[saliency]", "[cam]", "[class-image-regularized]", "[embedding]", "[ablation]",
                 "[examples]", "[channels]", "[class-image]", "[targeted]",
                 "[targeted-sweep]", "[noise]", "[noise-sweep]", "[boundary]", "[defend]", "[defense]", "[defend-saliency]", "[defend-class-image]",
                 "[defend-targeted]", "[robustness]", "[report]"):
        assert line in result.stdout


def test_embedded_figures_are_pngs_and_match_the_stages(reproduced):
    out, _ = reproduced
    p = parse((out / "report.html").read_text(encoding="utf-8"))
    for src in p.images:
        assert src.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert image.shape[0] > 20 and image.shape[1] > 20
    plain = out / "plain"
    expected = (
        sum(1 for v in ("plain", "batchnorm", "adversarial") for f in ("loss", "accuracy", "confusion_matrix", "samples")
            if (out / v / f"{f}.png").is_file())
        + 1  # comparison.png
        + len(glob.glob(str(plain / "inspect" / "*.png")))
        + len(glob.glob(str(plain / "occlusion" / "*.png")))
        + len(glob.glob(str(plain / "saliency" / "*.png")))
        + 1  # cam/cam.png (the per-image figures stay in the folder)
        + 4  # deeper/: embedding_tsne.png, ablation_conv2.png, top_conv2.png, channels_conv2.png
        + len(glob.glob(str(plain / "attacks" / "*.png")))
        + 1  # adversarial/defense/defense_curves.png
        + 2 * 3  # standard and robust side by side: class images, saliency, targeted pairs
    )
    assert (out / "adversarial" / "defense" / "defense_curves.png").is_file()
    for rel in ("attacks/class_images.png", "saliency/saliency.png", "attacks/targeted_pairs.png"):
        assert (plain / rel).is_file() and (out / "adversarial" / rel).is_file(), rel
    assert len(p.images) == expected


def test_numbers_on_the_page_come_from_the_run_files(reproduced):
    out, _ = reproduced
    page = (out / "report.html").read_text(encoding="utf-8")
    p = parse(page)
    for variant in ("plain", "batchnorm", "adversarial"):
        metrics = json.loads((out / variant / "metrics.json").read_text())
        assert p.accuracies[variant] == f"{100 * metrics['test_accuracy']:.2f} %"
        assert f"{metrics['parameters']:,}" in page
    assert "799,078" in page and "10,014" in page
    # --defend: the FGSM-trained net, its settings said, and a curve of its own in the robustness plot
    a = json.loads((out / "adversarial" / "metrics.json").read_text())["adversarial"]
    assert a["method"] == "pgd" and a["steps"] == 5 and a["step_size"] == 0.1   # pipeline.ROBUST_TRAINING
    assert f"<p>{adversarial_sentence(a)}</p>" in page
    assert load_npz(out / "plain" / "attacks" / "robustness.npz")["accuracy"].shape[0] == 3
    assert "<th>adversarially trained</th>" in page
    history = json.loads((out / "plain" / "history.json").read_text())
    assert f"{history['test_loss'][-1]:.4f}" in page
    # section 4: the targeted attack's step size said, the sweep's table and sentence read off its arrays
    assert page.count("1,000 Adam steps of 0.001 (PyTorch's Adam default: the report gives no step size)") == 2
    d = load_npz(out / "plain" / "attacks" / "targeted_sweep.npz")
    assert d["betas"].tolist() == [0, 1e-4, 1e-3, 1e-2, 1e-1, 1] and d["adversarial"].shape == (6, 10, 28, 28)
    l2, rate = d["l2"].mean(axis=1), d["success"].mean(axis=1)
    assert all(f"<td>{m:.3f}</td>" in page for m in l2)
    assert f"<p class='sweep'>{sweep_sentence(d['betas'], l2, rate)}</p>" in page
    assert page.index("<h4>Beside it: the penalty") > page.index("alt=\"targeted pairs\"")   # the report's first
    # the learned noise: one per digit, then its step size swept, each with its sentence read off the arrays
    d = load_npz(out / "plain" / "attacks" / "noise.npz")
    assert d["noises"].shape == (10, 28, 28) and np.all(d["targets"] == (d["labels"] + 1) % 10)
    assert f"<p class='lesson'>{noise_sentence(d)}</p>" in page
    s = load_npz(out / "plain" / "attacks" / "noise_sweep.npz")
    assert s["lrs"].tolist() == [0.0005, 0.001, 0.002, 0.005, 0.01] and s["noises"].shape == (5, 10, 28, 28)
    assert f"<p class='lesson'>{noise_sweep_sentence(s)}</p>" in page
    assert "0.005 (the report's)" in page
    assert page.index("<h4>Beside it: the noise's size swept") > page.index('alt="noise"')
    b = load_npz(out / "plain" / "attacks" / "boundary.npz")
    assert f"<p class='lesson'>{boundary_sentence(b)}</p>" in page
    assert all(f"<td>{v:.3f}</td>" in page for v in b["deepfool_l2"])


def test_the_noise_sentences_say_what_the_arrays_show():
    d = {"lrs": np.array([0.0005, 0.001, 0.005]), "mean_noise_l2": np.array([4.0, 8.0, 40.0]),
         "mean_transfer_rate": np.array([0.16, 0.9, 1.0]), "mean_success_rate": np.array([1.0, 1.0, 1.0]),
         "report_lr": 0.005}
    assert noise_sweep_sentence(d) == (
        "The step size sets the noise's size: mean L2 4.0 at lr 0.0005 and 40.0 at lr 0.005; the transfer rate goes "
        "from 16.00 % to 100.00 %. Up to lr 0.0005 (L2 4.0) the noise fools 100.00 % of its own digits but fewer "
        "than half of the other images: the report's \"it predicted the correct classes most of the time\"; at the "
        "report's lr 0.005 (L2 40.0) it is 100.00 %.")
    d["mean_transfer_rate"] = np.array([0.6, 0.9, 1.0])
    assert "fewer than half" not in noise_sweep_sentence(d)
    probs = np.eye(10)[[1, 2, 3]]
    n = {"labels": np.array([0, 1, 2]), "targets": np.array([1, 2, 3]), "probabilities": probs,
         "other_probabilities": np.eye(10)[[1, 5, 3]], "transfer_rate": np.array([0.95, 1.0, 0.99])}
    assert noise_sentence(n) == ("3 of 3 digits reach their target and 2 of 3 other images do; on the test set the "
                                 "noises turn 95.00 % to 100.00 % of the images into their target (mean 98.00 %), so "
                                 "at this size a noise learned on one digit is a universal one: it fools almost every "
                                 "image.")
    n["transfer_rate"] = np.array([0.1, 0.2, 0.3])
    assert noise_sentence(n).endswith("so most images keep their class: the noise is specific to the digit it was "
                                      "learned on.")


def test_the_sweep_sentence_says_what_the_arrays_show():
    betas = np.array([0, 1e-4, 1e-2, 1])
    text = sweep_sentence(betas, np.array([5.0, 4.95, 3.0, 0.5]), np.array([1, 1, 0.8, 0]))
    assert text == ("The closer the image must stay, the less it moves: mean L2 goes from 5.00 at beta 0 to 0.50 at "
                    "beta 1 (never rising), and every pair reaches its target up to beta 0.0001, 0.00 % at beta 1; "
                    "at the report's beta 0.0001 it is 4.95, -1.0 % against no penalty.")
    text = sweep_sentence(betas[1:], np.array([3.0, 3.1, 0.5]), np.array([0.5, 0.5, 0]))
    assert "(not monotone in this run), and the success rate goes from 50.00 % to 0.00 %." in text
    assert "report's beta" not in text   # no beta 0 to compare with
    assert "every pair reaches its target at every beta" in sweep_sentence(betas, np.ones(4), np.ones(4))


def test_report_opens_in_chromium_with_every_image_loaded(reproduced, tmp_path):
    from playwright.sync_api import sync_playwright

    out, _ = reproduced
    shot = out / "report.png"
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "report.html").as_uri())
            widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.id)")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert widths and all(w > 0 for w in widths)
    assert headings == SECTIONS
    assert errors == []
    assert shot.stat().st_size > 10_000
    print(f"full-page screenshot: {shot}")


def test_reproduce_reuses_finished_stages(reproduced):
    out, _ = reproduced
    before = (out / "report.html").stat().st_mtime_ns
    result = npcnn("reproduce", "--quick", "--defend", "--out", out, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("reused") == len(stages(str(out), "mnist", quick=True, defend=True))   # every stage
    assert (out / "report.html").stat().st_mtime_ns >= before


# ------------------------------------------------------------------------- partial and bad directories


def test_partial_run_folder_renders_with_placeholders(tmp_path):
    from npcnn.experiments import TrainConfig, train_run

    run = tmp_path / "run"
    train_run(TrainConfig(limit=500, epochs=1), run, progress=False, log=None)
    page = build_report(run)
    assert page.count("not run") >= 7
    assert "npcnn occlusion" in page and "npcnn attack" in page
    assert [s for s in SECTIONS if f"id='{s}'" in page] == SECTIONS
    path = write_report(run)
    assert os.path.isfile(path)


@pytest.mark.parametrize("setup, message", [
    ("empty", "no npcnn run here"),
    ("foreign", "no npcnn run here"),
    ("old", "format"),
    ("missing", "no such directory"),
])
def test_bad_directories_give_one_clear_line(tmp_path, setup, message):
    target = tmp_path / "d"
    if setup != "missing":
        target.mkdir()
    if setup == "foreign":
        (target / "notes.txt").write_text("hello")
    if setup == "old":
        (target / "config.json").write_text(json.dumps({"dataset": "mnist"}))
    with pytest.raises(ReportError, match=message):
        build_report(target)
    result = npcnn("report", target, timeout=120)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (target / "report.html").exists()


def test_unknown_dataset_is_rejected():
    result = npcnn("reproduce", "--dataset", "cifar-10", "--quick", timeout=120)
    assert result.returncode == 2
    assert re.search(r"invalid choice: 'cifar-10'", result.stderr)
    assert "Traceback" not in result.stderr
