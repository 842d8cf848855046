"""The report's stages called from Python (``npcnn.experiments``): what they return, what they write, and
that a bad setting stops a stage before anything is computed or written. ``reproduce`` calls the same
functions (its records are keyword settings) and never imports the command line.

The run folder holds an untrained net (the stages only read the run's files); the MNIST test set comes
from $NPCNN_DATA, as in CI.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from npcnn import experiments, pipeline
from npcnn.data import Normalization, load_dataset
from npcnn.io import load_npz, write_json
from npcnn.models import save_model, seed_cnn
from npcnn.runs import FORMAT, Run


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    data = os.environ.get("NPCNN_DATA")
    labels = load_dataset("mnist", "test", root=data)[1]
    path = tmp_path_factory.mktemp("experiments") / "run"
    names = [str(c) for c in range(10)]
    save_model(str(path / "model.npz"), seed_cnn(rng=0), Normalization(0.1307, 0.3081), batchnorm=False,
               class_names=names)
    write_json(path / "config.json", {"format": FORMAT, "dataset": "mnist", "data_dir": data, "batchnorm": False,
                                      "class_names": names})
    write_json(path / "samples.json", {"indices": [int(np.flatnonzero(labels == c)[0]) for c in range(10)]})
    return path


@pytest.fixture
def run(base_run, tmp_path):
    """A fresh copy of the run folder for each test."""
    return shutil.copytree(base_run, tmp_path / "run")


def test_occlusion_from_python(run):
    r = experiments.occlusion(run, patch=7, indices=[3, 5], progress=False)
    assert isinstance(r, experiments.inside.OcclusionOutput) and isinstance(r, experiments.StageOutput)
    assert r.folder == str(run / "occlusion")
    assert [os.path.basename(f) for f in r.files] == ["occlusion_test3.png", "occlusion_test5.png",
                                                      "attribution.png", "occlusion.npz"]   # the .npz last
    assert sorted(os.listdir(run / "occlusion")) == sorted(os.path.basename(f) for f in r.files)
    assert all(os.path.getsize(f) > 0 for f in r.files)
    np.testing.assert_array_equal(r.indices, [3, 5])
    assert r.occlusion.patch == (7, 7) and r.occlusion.stride == (2, 2)
    assert r.occlusion.probability.shape == r.occlusion.predicted.shape == (2, 11, 11)   # (28 - 7) // 2 + 1
    z = load_npz(r.files[-1])
    np.testing.assert_array_equal(z["probability"], r.occlusion.probability)
    np.testing.assert_array_equal(z["labels"], r.labels)
    assert z["patch"].tolist() == [7, 7]
    assert r.describe().endswith(f"written to {run / 'occlusion'}")
    # a Run works as well as a path, and a rerun replaces the folder
    r2 = experiments.occlusion(Run.open(run), patch=(6, 8), stride=3, indices=[4], progress=False)
    assert r2.occlusion.probability.shape == (1, 8, 7)
    assert sorted(os.listdir(run / "occlusion")) == ["attribution.png", "occlusion.npz", "occlusion_test4.png"]


def test_class_images_from_python(run):
    r = experiments.class_images(str(run), classes=[3, "7"], steps=2, progress=False)
    np.testing.assert_array_equal(r.attack.targets, [3, 7])
    assert r.attack.history.shape == (2, 2)
    assert [os.path.basename(f) for f in r.files] == ["class_images.png", "class_image_3.png", "class_image_7.png",
                                                      "class_image.npz"]
    assert r.folder == str(run / "attacks") and all(os.path.isfile(f) for f in r.files)
    np.testing.assert_array_equal(load_npz(r.files[-1])["images"], r.attack.images)
    assert r.describe().splitlines()[-1].endswith(f"written to {run / 'attacks'}")


def test_targeted_sweep_from_python(run):
    """One row per beta (sorted, repeats dropped), every array read off the saved images; only the sweep's files."""
    clf = Run.open(run).classifier
    r = experiments.targeted_sweep(run, betas=[1e-2, 0, 1e-2, 1], steps=3, progress=False)
    assert isinstance(r, experiments.adversarial.TargetedSweepOutput)
    np.testing.assert_array_equal(r.betas, [0, 1e-2, 1])
    assert [os.path.basename(f) for f in r.files] == ["targeted_sweep.png", "targeted_sweep_digits.png",
                                                      "targeted_sweep.npz"]   # the .npz last
    assert sorted(os.listdir(run / "attacks")) == sorted(os.path.basename(f) for f in r.files)  # no targeted.npz
    d = load_npz(r.files[-1])
    np.testing.assert_array_equal(d["betas"], [0, 1e-2, 1])
    assert d["sources"].shape == (10, 28, 28) and d["adversarial"].shape == (3, 10, 28, 28)
    assert d["probabilities"].shape == (3, 10, 10) and d["cost"].shape == (3, 3, 10)
    np.testing.assert_array_equal(d["targets"], (d["source_labels"] + 1) % 10)   # the report's pairs
    for k, beta in enumerate(r.betas):
        np.testing.assert_array_equal(d["probabilities"][k], clf.predict_proba(d["adversarial"][k]))
        rows = np.arange(10)
        np.testing.assert_array_equal(d["confidence"][k], d["probabilities"][k][rows, d["targets"]])
        np.testing.assert_array_equal(d["success"][k], d["probabilities"][k].argmax(axis=1) == d["targets"])
        diff = (d["adversarial"][k] - d["sources"]).reshape(10, -1).astype(np.float64)
        np.testing.assert_allclose(d["l2"][k], np.linalg.norm(diff, axis=1), rtol=1e-6)
        np.testing.assert_allclose(d["linf"][k], np.abs(diff).max(axis=1), rtol=1e-6)
        assert r.attacks[k].settings["beta"] == beta
    for key in ("success_rate", "mean_confidence", "mean_l2", "mean_linf"):
        assert d[key].shape == (3,)
    np.testing.assert_allclose(d["mean_l2"], d["l2"].mean(axis=1))
    np.testing.assert_allclose(d["success_rate"], d["success"].mean(axis=1))
    assert float(d["lr"]) == 1e-3 and int(d["steps"]) == 3 and str(d["pairs"]) == "report"
    lines = r.describe().splitlines()
    assert len(lines) == 4 and lines[0].startswith("beta 0: success") and lines[2].startswith("beta 1: success")
    assert lines[-1].endswith(f"written to {run / 'attacks'}")


def test_reproduce_runs_the_sweep_at_pytorchs_step_size():
    from npcnn.analysis.attacks import SWEEP_BETAS

    for quick in (False, True):
        by_name = {s.name: s for s in pipeline.stages("out", "mnist", quick)}
        sweep, targeted = by_name["targeted-sweep"], by_name["targeted"]
        assert sweep.function is experiments.targeted_sweep and sweep.output.endswith("targeted_sweep.npz")
        assert sweep.settings == dict(pairs="report", betas=list(SWEEP_BETAS), steps=1000, lr=1e-3)
        # the step size is recorded: a folder attacked at the old default 0.01 is attacked again
        assert targeted.settings == dict(pairs="all", steps=1000, lr=1e-3)


BAD = [
    ("occlusion", dict(patch=(3, 4, 5)), "--patch takes one or two numbers, got 3"),
    ("occlusion", dict(patch=29), "does not fit"),
    ("occlusion", dict(stride=0), "stride must be a positive"),
    ("occlusion", dict(indices=[10_000]), "index 10000 is out of range"),
    ("inspect", dict(filters=[15, 32]), "filter 32 is out of range"),
    ("inspect", dict(digits=[10]), "digit 10 is out of range"),
    ("saliency", dict(stdev=-1), "--stdev must be >= 0"),
    ("saliency", dict(method="simpson"), "method must be one of"),
    ("class_images", dict(steps=0), "steps must be a positive integer, got 0"),
    ("class_images", dict(classes=["twelve"]), "unknown class 'twelve'"),
    ("class_images", dict(l2=0.1), "--l2 is a regulariser: it applies with --regularized only"),
    ("class_images", dict(regularized=True, jitter=-1), "jitter"),
    ("targeted", dict(beta=-1), "--beta must be >= 0"),
    ("targeted", dict(pairs="some"), "pairs must be 'report' or 'all'"),
    ("targeted_sweep", dict(betas=[]), "--beta takes one or more values, each a number >= 0; got none"),
    ("targeted_sweep", dict(betas=[0, -1e-3]), "--beta must be >= 0, got -0.001"),
    ("targeted_sweep", dict(betas=[0, float("nan")]), "--beta must be >= 0, got nan"),
    ("targeted_sweep", dict(pairs="some"), "pairs must be 'report' or 'all'"),
    ("noise", dict(indices=[]), "--indices: give one or more test-set indices"),
    ("noise", dict(target=0, indices=[3, 10]), "every chosen test image is already of class 0"),
    ("noise", dict(limit=0), "--limit must be positive, got 0"),
    ("noise_sweep", dict(lrs=[]), "--lr takes one or more values, each a number > 0; got none"),
    ("noise_sweep", dict(lrs=[0.001, 0]), "step size (lr) must be positive, got 0"),
    ("noise_sweep", dict(indices=[99999]), "index 99999 is out of range"),
    ("robustness", dict(eps=[0.1, -0.1]), "eps must be >= 0, got -0.1"),
    ("robustness", dict(attack="cw"), "unknown attack 'cw'"),
    ("robustness", dict(variants=["/nonexistent/run"]), "no such run folder"),
]


@pytest.mark.parametrize("stage, settings, message", BAD, ids=[f"{s}-{m}" for s, _, m in BAD])
def test_a_bad_setting_raises_before_anything_is_written(run, stage, settings, message):
    before = sorted(os.listdir(run))
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(experiments, stage)(run, progress=False, **settings)
    assert sorted(os.listdir(run)) == before   # no output folder, no partial folder


def test_settings_are_checked_before_the_run_is_even_opened(tmp_path):
    with pytest.raises(ValueError, match="--patch takes one or two numbers"):
        experiments.occlusion(tmp_path / "missing", patch=[1, 2, 3])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        experiments.targeted(tmp_path / "missing", steps=-5)
    with pytest.raises(ValueError, match="--beta takes one or more values"):
        experiments.targeted_sweep(tmp_path / "missing", betas=[])
    assert not (tmp_path / "missing").exists()


def test_reproduce_records_keyword_settings_and_names_a_failed_stage(tmp_path, monkeypatch):
    import json

    for s in pipeline.stages(str(tmp_path), "mnist", quick=True):
        assert s.function is getattr(experiments, s.function.__name__)
        assert s.key() == json.loads(json.dumps(s.settings))
    failing = pipeline.Stage("occlusion", experiments.occlusion, str(tmp_path / "missing"), str(tmp_path / "x"),
                             dict(patch=7))
    monkeypatch.setattr(pipeline, "stages", lambda *a, **k: [failing])
    with pytest.raises(pipeline.StageFailed, match=r"^stage occlusion failed \(.*no such run folder\); fix the "
                                                   r"cause and rerun the same command"):
        pipeline.reproduce(str(tmp_path / "out"), log=lambda *a: None)
    assert not (tmp_path / "out" / "pipeline.json").exists()   # a failed stage is not recorded as done


def test_the_pipeline_does_not_import_the_command_line():
    code = ("import sys, npcnn.pipeline, npcnn.experiments; npcnn.pipeline.stages('out', 'mnist', True); "
            "print(sorted(m for m in sys.modules if m.startswith('npcnn.cli')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
