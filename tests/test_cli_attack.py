"""``npcnn attack``: the files it writes, and one clear line for every bad input (nothing half-written).

Runs the command in-process (``npcnn.cli.main``) with few steps: these tests check the files and
their meaning (probabilities are exactly ``predict_proba`` of the saved images), not attack
strength, which test_attacks.py covers.
"""
import os

import numpy as np
import pytest
from test_attacks import DATA, trained_run_dir

from npcnn.cli import main
from npcnn.io import load_npz, write_json
from npcnn.runs import FORMAT, Run


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    os.environ.setdefault("NPCNN_DATA", DATA)
    return Run.open(trained_run_dir(tmp_path_factory))


def attack(capsys, *argv):
    code = main(["attack", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_class_image_files(run, capsys):
    code, out, err = attack(capsys, run.path, "class-image", "--steps", 5)
    assert code == 0, err
    d = load_npz(run.file("attacks", "class_image.npz"))
    assert d["images"].shape == (10, 28, 28) and d["probabilities"].shape == (10, 10)
    assert d["cost"].shape == (5, 10)
    np.testing.assert_array_equal(d["targets"], np.arange(10))
    np.testing.assert_array_equal(d["probabilities"], run.classifier.predict_proba(d["images"]))
    for name in ["class_images.png"] + [f"class_image_{c}.png" for c in range(10)]:
        assert os.path.getsize(run.file("attacks", name)) > 0
    assert "class images predicted as their class" in out


def test_targeted_files(run, capsys):
    code, out, err = attack(capsys, run.path, "targeted", "--pairs", "all", "--steps", 2, "--bounds", 0, 1)
    assert code == 0, err
    d = load_npz(run.file("attacks", "targeted.npz"))
    assert d["sources"].shape == (90, 28, 28) and d["adversarial"].shape == (90, 28, 28)
    assert d["probabilities"].shape == (90, 10)
    assert np.all(d["source_labels"] != d["targets"]) and len(set(zip(d["source_labels"], d["targets"]))) == 90
    np.testing.assert_array_equal(d["probabilities"], run.classifier.predict_proba(d["adversarial"]))
    assert d["adversarial"].min() >= 0 and d["adversarial"].max() <= 1  # --bounds 0 1
    np.testing.assert_array_equal(d["bounds"], [0, 1])
    for name in ("targeted_matrix.png", "targeted_pairs.png", "targeted_3_to_4.png"):
        assert os.path.getsize(run.file("attacks", name)) > 0
    assert "success" in out and "mean Linf" in out


def test_targeted_beta_sweep_files(run, capsys):
    code, out, err = attack(capsys, run.path, "targeted", "--beta", 0, 1e-2, 1, "--steps", 5)
    assert code == 0, err
    d = load_npz(run.file("attacks", "targeted_sweep.npz"))
    np.testing.assert_array_equal(d["betas"], [0, 1e-2, 1])
    assert d["adversarial"].shape == (3, 10, 28, 28) and d["probabilities"].shape == (3, 10, 10)
    assert d["l2"].shape == d["linf"].shape == d["success"].shape == (3, 10) and d["mean_l2"].shape == (3,)
    for k in range(3):
        np.testing.assert_array_equal(d["probabilities"][k], run.classifier.predict_proba(d["adversarial"][k]))
    for name in ("targeted_sweep.png", "targeted_sweep_digits.png"):
        assert os.path.getsize(run.file("attacks", name)) > 0
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["beta 0", "beta 0.01", "beta 1"]
    assert lines[3].startswith("targeted sweep (report, 10 pairs, 3 betas")


def test_one_beta_is_the_single_attack_as_before(run, capsys):
    sweep = run.file("attacks", "targeted_sweep.npz")
    before = os.path.getmtime(sweep) if os.path.exists(sweep) else None
    code, out, err = attack(capsys, run.path, "targeted", "--beta", "1e-3", "--steps", 2)
    assert code == 0, err
    d = load_npz(run.file("attacks", "targeted.npz"))
    assert float(d["beta"]) == 1e-3 and float(d["lr"]) == 1e-3 and d["adversarial"].shape == (10, 28, 28)
    assert out.startswith("targeted (report, 10 pairs): success")
    assert (os.path.getmtime(sweep) if os.path.exists(sweep) else None) == before   # the sweep's file untouched


def test_regularized_class_images(run, capsys):
    code, out, err = attack(capsys, run.path, "class-image", "--regularized", "--steps", 5, "--jitter", 1)
    assert code == 0, err
    d = load_npz(run.file("attacks", "class_image_regularized.npz"))
    assert bool(d["regularized"]) and int(d["steps"]) == 5 and int(d["jitter"]) == 1 and int(d["frame"]) == 4
    assert np.all(d["images"][:, :4] == 0) and np.all(d["images"][:, :, -4:] == 0)   # the frame is black
    assert d["other_correlation"].shape == (10,)
    assert d["images"].min() >= 0 and d["images"].max() <= 1 and d["correlation"].shape == (10,)
    np.testing.assert_array_equal(d["probabilities"], run.classifier.predict_proba(d["images"]))
    assert os.path.getsize(run.file("attacks", "class_images_regularized.png")) > 0
    assert "regularised class images predicted as their class; mean correlation" in out


def test_help_states_the_targeted_step_size_and_the_sweep(capsys):
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0.001 targeted, PyTorch's Adam default, as the report gives none" in text
    assert "several values run a sweep instead, e.g. --beta 0 1e-4 1e-3 1e-2 1e-1 1" in text


def test_noise_files(run, capsys):
    """One noise per chosen digit: each digit's own result, its other image, its transfer, all read back."""
    images, labels = run.test_data()
    chosen = [k for k in range(60) if labels[k] != 2][:3] + [int(np.flatnonzero(labels[:60] == 2)[0])]
    code, out, err = attack(capsys, run.path, "noise", "--target", 2, "--indices", *chosen, "--steps", 5,
                            "--limit", 200, "--seed", 4)
    assert code == 0, err
    d = load_npz(run.file("attacks", "noise.npz"))
    clf = run.classifier
    kept = chosen[:3]                                   # the 2 is left out: it is already the target
    assert f"left out (already the target): [{chosen[3]}]" in out
    np.testing.assert_array_equal(d["indices"], kept)
    np.testing.assert_array_equal(d["labels"], labels[kept])
    np.testing.assert_array_equal(d["targets"], [2, 2, 2])
    np.testing.assert_array_equal(d["images"], images[kept] / np.float32(255))
    assert d["noises"].shape == (3, 28, 28) and d["cost"].shape == (5, 3)
    np.testing.assert_array_equal(d["probabilities"], clf.predict_proba(d["adversarial"]))
    np.testing.assert_array_equal(d["other_probabilities"], clf.predict_proba(d["other_adversarial"]))
    np.testing.assert_allclose(d["adversarial"], d["images"] + d["noises"], atol=1e-6)
    np.testing.assert_allclose(d["other_adversarial"], d["other_images"] + d["noises"], atol=1e-6)
    np.testing.assert_array_equal(d["other_images"], images[d["other_indices"]] / np.float32(255))
    assert np.all(d["other_labels"] != d["labels"]) and np.all(d["other_labels"] != 2)
    for k in range(3):
        noisy = clf.predict(images[:200] / np.float32(255) + d["noises"][k])
        assert float(d["transfer_rate"][k]) == pytest.approx(np.mean(noisy[labels[:200] != 2] == 2))
        assert float(d["accuracy_noisy"][k]) == pytest.approx(np.mean(noisy == labels[:200]))
    np.testing.assert_allclose(d["noise_l2"], np.linalg.norm(d["noises"].reshape(3, -1), axis=1), rtol=1e-5)
    for name in ["noise.png"] + [f"noise_{labels[k]}_to_2.png" for k in kept]:
        assert os.path.getsize(run.file("attacks", name)) > 0


def test_noise_default_targets_are_the_next_class(run, capsys):
    images, labels = run.test_data()
    code, out, err = attack(capsys, run.path, "noise", "--indices", 0, 1, 2, "--steps", 3, "--limit", 50)
    assert code == 0, err
    d = load_npz(run.file("attacks", "noise.npz"))
    np.testing.assert_array_equal(d["targets"], (labels[:3] + 1) % 10)
    assert str(d["target_rule"]) == "next"


def test_noise_sweep_files(run, capsys):
    """Several --lr values: one row per step size, sorted; at 5 steps from zero the noise grows with lr."""
    images, labels = run.test_data()
    code, out, err = attack(capsys, run.path, "noise", "--lr", 0.004, 0.001, 0.002, "--indices", 0, 1,
                            "--steps", 5, "--limit", 100)
    assert code == 0, err
    d = load_npz(run.file("attacks", "noise_sweep.npz"))
    clf = run.classifier
    assert d["lrs"].tolist() == [0.001, 0.002, 0.004]
    assert d["noises"].shape == (3, 2, 28, 28) and d["transfer_rate"].shape == (3, 2)
    np.testing.assert_allclose(d["noise_l2"], np.linalg.norm(d["noises"].reshape(3, 2, -1), axis=2), rtol=1e-5)
    assert np.all(np.diff(d["mean_noise_l2"]) > 0)
    for j in range(3):
        adv = d["images"] + d["noises"][j]
        np.testing.assert_allclose(d["probabilities"][j], clf.predict_proba(adv.astype(np.float32)), atol=1e-6)
        noisy = clf.predict(images[:100] / np.float32(255) + d["noises"][j, 1])
        target = int(d["targets"][1])
        assert float(d["transfer_rate"][j, 1]) == pytest.approx(np.mean(noisy[labels[:100] != target] == target))
    np.testing.assert_allclose(d["mean_transfer_rate"], d["transfer_rate"].mean(axis=1))
    for name in ("noise_sweep.png", "noise_sweep_digits.png"):
        assert os.path.getsize(run.file("attacks", name)) > 0
    assert "lr 0.001: noise L2" in out


def test_boundary_files(run, capsys):
    code, out, err = attack(capsys, run.path, "boundary", "--steps", 5, "--pgd-steps", 3, "--tol", 0.01,
                            "--overshoot", 0.1)
    assert code == 0, err
    d = load_npz(run.file("attacks", "boundary.npz"))
    assert (int(d["steps"]), float(d["overshoot"]), float(d["tol"]), int(d["pgd_steps"])) == (5, 0.1, 0.01, 3)
    np.testing.assert_array_equal(d["labels"], np.arange(10))
    np.testing.assert_array_equal(d["pgd_predicted"], run.classifier.predict(d["pgd"]))
    assert out.count(": DeepFool L2") == 10 and "mean DeepFool L2" in out
    for name in ("boundary.png", "boundary_distances.png"):
        assert os.path.getsize(run.file("attacks", name)) > 0


def test_robustness_files(run, capsys):
    code, out, err = attack(capsys, run.path, "robustness", "--eps", 0, 0.3, "--limit", 200)
    assert code == 0, err
    d = load_npz(run.file("attacks", "robustness.npz"))
    assert str(d["attack"]) == "fgsm" and d["accuracy"].shape == (1, 2)
    np.testing.assert_array_equal(d["eps"], [0, 0.3])
    np.testing.assert_array_equal(d["variants"], ["plain"])
    assert d["accuracy"][0, 0] > d["accuracy"][0, 1]
    assert os.path.getsize(run.file("attacks", "robustness.png")) > 0


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A valid run folder holding an untrained net: enough for every argument check."""
    from npcnn.data import Normalization
    from npcnn.models import save_model, seed_cnn

    path = tmp_path_factory.mktemp("fake") / "run"
    save_model(str(path / "model.npz"), seed_cnn(rng=0), Normalization(0.1307, 0.3081), batchnorm=False)
    write_json(str(path / "config.json"), {"format": FORMAT, "dataset": "mnist", "data_dir": DATA, "batchnorm": False})
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["class-image", "--classes", "3", "12"], "unknown class '12'"),
    (["class-image", "--steps", "0"], "steps must be a positive integer, got 0"),
    (["class-image", "--lr", "-0.1"], "step size (lr) must be positive"),
    (["class-image", "--bounds", "1", "0"], "bounds must have low < high"),
    (["class-image", "--bounds", "0.5", "0.5"], "bounds must have low < high"),
    (["class-image", "--beta", "0.1"], "--beta does not apply to `class-image`"),
    (["class-image", "--steps", "3", "--lr", "1e38"], "NaN or infinite at step 2 of 3"),
    (["targeted", "--beta", "-1"], "--beta must be >= 0, got -1"),
    (["targeted", "--beta"], "--beta takes one or more values, each a number >= 0; got none"),
    (["targeted", "--beta", "0", "1e-4", "-0.5"], "--beta must be >= 0, got -0.5"),
    (["class-image", "--beta"], "--beta does not apply to `class-image`"),
    (["targeted", "--steps", "-5"], "steps must be a positive integer"),
    (["noise", "--target", "ten"], "unknown class 'ten'"),
    (["noise", "--indices", "3", "--target", "0"], "every chosen test image is already of class 0"),
    (["noise", "--lr"], "--lr takes one or more values, each a number > 0; got none"),
    (["noise", "--lr", "0.001", "-0.002"], "step size (lr) must be positive, got -0.002"),
    (["targeted", "--lr", "0.001", "0.002"], "--lr takes one value for `targeted` (several only for noise"),
    (["class-image", "--lr"], "--lr takes one value for `class-image`"),
    (["noise", "--indices", "1", "99999"], "index 99999 is out of range"),
    (["boundary", "--overshoot", "-1"], "overshoot must be >= 0"),
    (["boundary", "--tol", "0"], "tol must be > 0"),
    (["boundary", "--pgd-steps", "0"], "pgd_steps must be a positive integer, got 0"),
    (["targeted", "--tol", "0.01"], "--tol does not apply to `targeted` (only to boundary)"),
    (["robustness", "--eps", "0.1", "-0.1"], "eps must be >= 0, got -0.1"),
    (["robustness", "--variants", "/nonexistent/run"], "no such run folder"),
])
def test_bad_input_is_one_clear_line(fake_run, capsys, argv, message):
    code, out, err = attack(capsys, fake_run, *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npcnn: error:"), err
    assert message in lines[0], lines[0]
    assert not os.path.exists(os.path.join(fake_run, "attacks")), "something was written"


def test_run_folder_without_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    code, out, err = attack(capsys, tmp_path, "class-image")
    assert code == 1 and err.strip().startswith("npcnn: error:") and "no model.npz" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "attacks").exists()
    code, out, err = attack(capsys, tmp_path / "missing", "targeted")
    assert code == 1 and "no such run folder" in err


def test_a_damaged_config_json_is_named(fake_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(fake_run, broken)
    (broken / "config.json").write_text('{"format": 1\n"dataset": "mnist"}')
    code, out, err = attack(capsys, broken, "class-image")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("npcnn: error:") and str(broken / "config.json") in err and "not a valid JSON" in err
    assert not (broken / "attacks").exists()


def test_a_run_remembers_where_its_data_came_from(run, tmp_path, monkeypatch, capsys):
    """A run trained from $NPCNN_DATA finds its test set there again without the variable, unless told otherwise."""
    import json
    import shutil

    from npcnn.data import datasets

    moved = tmp_path / "run"
    shutil.copytree(run.path, moved, ignore=shutil.ignore_patterns("attacks", "*.png"))
    config = json.loads((moved / "config.json").read_text())
    assert config["data_path"] == os.path.abspath(DATA)  # recorded at training time
    config.update(data_dir=None, data_source="env")       # as if trained with NPCNN_DATA=... npcnn train
    (moved / "config.json").write_text(json.dumps(config))
    monkeypatch.delenv("NPCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))

    def no_download(*args, **kwargs):
        raise AssertionError("the run should have used its recorded data folder, not a download")

    monkeypatch.setattr(datasets, "download_file", no_download)
    assert Run.open(str(moved)).data_root() == os.path.abspath(DATA)
    code, out, err = attack(capsys, moved, "targeted", "--steps", "2")
    assert code == 0, err
    # told otherwise: $NPCNN_DATA wins over the recorded folder
    monkeypatch.setenv("NPCNN_DATA", str(tmp_path / "elsewhere"))
    os.makedirs(tmp_path / "elsewhere")
    assert Run.open(str(moved)).data_root() is None
    code, out, err = attack(capsys, moved, "targeted", "--steps", "2")
    assert code == 1 and "elsewhere" in err, err
