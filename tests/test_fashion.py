"""`npcnn reproduce --quick --dataset fashion-mnist` end to end: Fashion-MNIST's data and class names throughout.

Needs the real Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package (``.ci/run`` installs it) or
``$NPCNN_DATA`` / the cache. Under CI a missing data set is a failure, not a skip.
"""
import html
import json
import os

import numpy as np
import pytest

from npcnn.data import DATASETS, load_fashion_mnist
from test_report import SECTIONS, npcnn, parse

CLASSES = DATASETS["fashion-mnist"].class_names


def _have_fashion():
    try:
        load_fashion_mnist("test", download=False)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not _have_fashion():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST is missing: .ci/run installs Debian's dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not on this machine (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("reproduce") / "fashion"
    result = npcnn("reproduce", "--quick", "--dataset", "fashion-mnist", "--out", out, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_runs_trained_on_fashion_mnist_with_its_class_names(fashion):
    for variant in ("plain", "batchnorm"):
        config = json.loads((fashion / variant / "config.json").read_text())
        metrics = json.loads((fashion / variant / "metrics.json").read_text())
        assert config["dataset"] == "fashion-mnist" and config["class_names"] == list(CLASSES)
        # Fashion-MNIST's training pixels average 0.286 (MNIST's 0.131): the data really is Fashion.
        assert 0.27 < config["normalization"]["mean"] < 0.30
        assert [k for k in metrics["classification_report"] if k in CLASSES] == list(CLASSES)
        assert 0.7 < metrics["test_accuracy"] < 1.0


def test_report_page_names_the_classes_everywhere(fashion):
    page = (fashion / "report.html").read_text(encoding="utf-8")
    p = parse(page)
    assert [s for s in SECTIONS if s in p.ids] == SECTIONS
    assert "Fashion-MNIST" in page
    text = html.unescape(page)
    for name in CLASSES:
        assert text.count(name) >= 2, name   # both variants' classification reports, at least
    assert "not run" not in page.replace("not run:</strong> the speed benchmark", "")


def test_attacks_and_analyses_use_fashion_classes(fashion):
    attacks = fashion / "plain" / "attacks"
    with np.load(attacks / "class_image.npz", allow_pickle=False) as f:
        assert list(f["targets"]) == list(range(10))
        probabilities = f["probabilities"]
    assert probabilities.shape == (10, 10)
    # Gradient ascent on each class's logit: most of the ten images end up predicted as their class.
    assert (probabilities.argmax(1) == np.arange(10)).mean() >= 0.8
    with np.load(attacks / "robustness.npz", allow_pickle=False) as f:
        eps, accuracy, variants = f["eps"], f["accuracy"], list(f["variants"])
    # At eps = 0 the attack changes nothing: the clean test accuracy of each Fashion-MNIST net (reproduce
    # defends by default: the adversarially trained net is the third).
    assert eps[0] == 0 and accuracy.shape == (3, len(eps)) and variants[-1] == "adversarial"
    for row, variant in zip(accuracy, variants):
        assert row[0] == json.loads((fashion / variant / "metrics.json").read_text())["test_accuracy"]
        assert row[-1] < row[0]
