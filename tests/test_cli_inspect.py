"""``npcnn inspect | occlusion | saliency``: what they write, and how they fail.

The run folder is built from the library's own writers (save_model,
config.json, samples.json) around a random, sharpened net: the commands only
read those files, and training one would cost most of the time budget.
The MNIST test set comes from $NPCNN_DATA (as in CI).
"""
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from test_features import MEAN, STD, make_classifier

from npcnn.analysis.feature_occlusion import feature_occlusion
from npcnn.analysis.occlusion import occlusion
from npcnn.cli import main
from npcnn.data import Normalization, load_dataset
from npcnn.experiments import TrainConfig
from npcnn.io import load_npz, write_json
from npcnn.models import save_model
from npcnn.runs import FORMAT, Run

OUTPUTS = {"inspect", "occlusion", "saliency"}


@pytest.fixture(scope="session")
def mnist_test():
    return load_dataset("mnist", "test", root=os.environ.get("NPCNN_DATA"))


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, mnist_test):
    out = tmp_path_factory.mktemp("inspect") / "run"
    out.mkdir()
    names = [str(i) for i in range(10)]
    config = TrainConfig(data_dir=os.environ.get("NPCNN_DATA"), epochs=1)
    write_json(out / "config.json", {"format": FORMAT, **asdict(config), "class_names": names,
                                     "normalization": {"mean": MEAN, "std": STD}})
    model = make_classifier(dtype=np.float32).model
    save_model(out / "model.npz", model, Normalization(MEAN, STD), batchnorm=False, class_names=names)
    labels = mnist_test[1]
    indices = [int(np.flatnonzero(labels == c)[3]) for c in range(10)]
    write_json(out / "samples.json", {"indices": indices, "labels": list(range(10))})
    return out


@pytest.fixture
def run(base_run, tmp_path):
    """A fresh copy of the run folder for each test."""
    return shutil.copytree(base_run, tmp_path / "run")


def listing(folder):
    return sorted(os.listdir(folder))


def cli(capsys, *args):
    code = main([str(a) for a in args] + ["--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_occlusion_defaults_to_the_run_samples(run, capsys, mnist_test):
    code, out, err = cli(capsys, "occlusion", run)
    assert code == 0, err
    folder = run / "occlusion"
    files = listing(folder)
    assert "occlusion.npz" in files and "attribution.png" in files
    indices = Run.open(run).sample_indices()
    assert sorted(f for f in files if f.startswith("occlusion_test")) == sorted(f"occlusion_test{i}.png"
                                                                               for i in indices)
    assert set(listing(run)) - {"occlusion"} == {"config.json", "model.npz", "samples.json"}  # nothing else
    z = load_npz(folder / "occlusion.npz")
    assert {"images", "labels", "probability", "predicted", "attribution", "patch", "stride", "fill"} <= set(z)
    images = mnist_test[0][indices] / 255.0
    np.testing.assert_allclose(z["images"], images, atol=1e-7)
    assert z["images"].shape == (10, 28, 28)
    np.testing.assert_array_equal(z["labels"], np.arange(10))
    assert z["probability"].shape == z["predicted"].shape == (10, 10, 10)
    assert z["attribution"].shape == (10, 28, 28)
    assert z["patch"].tolist() == [10, 10] and z["stride"].tolist() == [2, 2] and float(z["fill"]) == 0.0
    r = occlusion(Run.open(run).classifier, z["images"], z["labels"])
    np.testing.assert_allclose(z["probability"], r.probability, atol=1e-6)
    np.testing.assert_array_equal(z["predicted"], r.predicted)
    # Zeiler & Fergus's panels: conv2's strongest map under the patch, and its projection
    f = feature_occlusion(Run.open(run).classifier, z["images"], "conv2")
    assert str(z["feature_layer"]).startswith("conv2 + ReLU")
    np.testing.assert_array_equal(z["feature_channel"], f.channel)
    np.testing.assert_allclose(z["feature_activation"], f.activation, rtol=1e-5)
    assert z["feature_activation"].shape == (10, 10, 10) and z["feature_projection"].shape == (10, 28, 28)
    assert (z["feature_activation"].min(axis=(1, 2)) < z["feature_base_activation"]).all()


def test_occlusion_options_replace_the_previous_results(run, capsys):
    assert cli(capsys, "occlusion", run, "--indices", 7)[0] == 0
    code, out, err = cli(capsys, "occlusion", run, "--patch", 6, 8, "--stride", 3, "--fill", 0.5,
                         "--indices", 5, 11)
    assert code == 0, err
    assert listing(run / "occlusion") == ["attribution.png", "occlusion.npz", "occlusion_test11.png",
                                          "occlusion_test5.png"]
    z = load_npz(run / "occlusion" / "occlusion.npz")
    assert z["probability"].shape == (2, (28 - 6) // 3 + 1, (28 - 8) // 3 + 1)
    assert z["patch"].tolist() == [6, 8] and float(z["fill"]) == 0.5
    assert z["feature_activation"].shape == z["probability"].shape
    assert not [f for f in listing(run) if f.startswith(".")]
    assert cli(capsys, "occlusion", run, "--indices", 5, "--feature-layer", "none")[0] == 0
    assert "feature_activation" not in load_npz(run / "occlusion" / "occlusion.npz")
    assert cli(capsys, "occlusion", run, "--indices", 5, "--feature-layer", "conv1")[0] == 0
    assert str(load_npz(run / "occlusion" / "occlusion.npz")["feature_layer"]).startswith("conv1 + ReLU")


@pytest.mark.parametrize("post", [False, True])
def test_inspect_writes_filters_and_feature_maps(run, capsys, mnist_test, post):
    code, out, err = cli(capsys, "inspect", run, *(["--post-activation"] if post else []))
    assert code == 0, err
    samples = Run.open(run).sample_indices()
    i0, i5 = samples[0], samples[5]  # the default digits 0 and 5
    assert listing(run / "inspect") == sorted([
        "conv1_filters.png", "conv2_filters.png", "feature_maps.npz",
        f"conv1_maps_test{i0}.png", f"conv1_maps_test{i5}.png", f"conv2_maps_test{i0}.png",
        f"conv2_maps_test{i5}.png"])
    z = load_npz(run / "inspect" / "feature_maps.npz")
    np.testing.assert_array_equal(z["indices"], [i0, i5])
    np.testing.assert_array_equal(z["labels"], [0, 5])
    assert z["conv1"].shape == (2, 32, 28, 28) and z["conv2"].shape == (2, 32, 14, 14)
    assert z["conv2_weight"].shape == (5, 32, 3, 3) and z["conv2_filters"].tolist() == [15, 4, 1, 2, 8]
    assert bool(z["post_activation"]) == post and (z["conv1"].min() >= 0) == post


def test_saliency_writes_maps(run, capsys):
    code, out, err = cli(capsys, "saliency", run, "--indices", 3, 9, "--steps", 4, "--samples", 2)
    assert code == 0, err
    assert listing(run / "saliency") == ["saliency.npz", "saliency.png", "saliency_test3.png", "saliency_test9.png"]
    z = load_npz(run / "saliency" / "saliency.npz")
    for key in ("saliency", "smoothgrad", "integrated_gradients", "images"):
        assert z[key].shape == (2, 28, 28), key
    assert int(z["steps"]) == 4 and int(z["samples"]) == 2 and bool(z["abs"])


BAD = [
    (["occlusion", "{empty}"], "no model.npz"),
    (["occlusion", "{missing}"], "no such run folder"),
    (["inspect", "{empty}"], "no model.npz"),
    (["saliency", "{missing}"], "no such run folder"),
    (["occlusion", "{run}", "--patch", "29"], "does not fit"),
    (["occlusion", "{run}", "--feature-layer", "fc1"], "layer must be conv1, conv2"),
    (["occlusion", "{run}", "--patch", "10", "40"], "does not fit"),
    (["occlusion", "{run}", "--patch", "3", "4", "5"], "one or two"),
    (["occlusion", "{run}", "--stride", "0"], "stride must be a positive"),
    (["occlusion", "{run}", "--stride", "-2"], "stride must be a positive"),
    (["occlusion", "{run}", "--indices", "0", "10000"], "index 10000 is out of range"),
    (["occlusion", "{run}", "--indices", "-1"], "index -1 is out of range"),
    (["saliency", "{run}", "--indices", "10000"], "index 10000 is out of range"),
    (["saliency", "{run}", "--stdev", "-1"], "stdev must be >= 0"),
    (["inspect", "{run}", "--digits", "0", "10"], "digit 10 is out of range"),
    (["inspect", "{run}", "--indices", "10000"], "index 10000 is out of range"),
    (["inspect", "{run}", "--filters", "15", "32"], "filter 32 is out of range"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[:1] + a[2:]) + f" [{m}]" for a, m in BAD])
def test_bad_input_is_one_clear_line_and_nothing_written(run, tmp_path, capsys, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = {"run": run, "empty": empty, "missing": tmp_path / "missing"}
    before = {p: listing(p) for p in (run, empty)}
    code, out, err = cli(capsys, *[a.format(**paths) for a in args])
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npcnn: error: ") and message in lines[0], err
    assert "Traceback" not in err + out
    assert {p: listing(p) for p in (run, empty)} == before  # no output folder, no partial folder
    assert not (tmp_path / "missing").exists()


def test_a_failure_while_writing_leaves_the_previous_results(run, capsys, monkeypatch):
    assert cli(capsys, "occlusion", run, "--indices", 1)[0] == 0
    before = listing(run / "occlusion")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("npcnn.io.save_npz", disk_full)
    code, out, err = cli(capsys, "occlusion", run, "--indices", 2, 3)
    assert code == 1 and "No space left on device" in err
    assert listing(run / "occlusion") == before  # the old results, untouched
    assert not [f for f in listing(run) if f.startswith(".")]  # no partial folder
    shutil.rmtree(run / "occlusion")
    code, out, err = cli(capsys, "saliency", run, "--indices", 2, "--steps", 2, "--samples", 1)
    assert code == 1 and not (run / "saliency").exists()
    assert listing(run) == ["config.json", "model.npz", "samples.json"]


def test_exit_code_of_the_real_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "npcnn.cli", "occlusion", str(tmp_path), "--patch", "10"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"npcnn: error: {tmp_path}: no model.npz here; train one with " \
                                    f"`npcnn train --out {tmp_path}`"
