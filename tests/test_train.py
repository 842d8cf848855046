"""The training pipeline: fit/evaluate, examples/train_mnist.py (the loop written out) and ``npcnn train``
run as a user runs them."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from npcnn import NLLLoss, seed_cnn
from npcnn.data import Normalization
from npcnn.io import load_npz
from npcnn.nn.loss import NonFiniteLossError
from npcnn.optim import Adam
from npcnn.train import History, evaluate, fit

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train_mnist.py"
QUICK = ["--limit", "2000", "--epochs", "2", "--seed", "3", "--no-progress"]
RUN_FILES = ["config.json", "history.json", "metrics.json", "model.npz", "samples.json", "loss.png", "accuracy.png",
             "confusion_matrix.png", "classification_report.png", "samples.png"]


CLI_TRAIN = [sys.executable, "-m", "npcnn.cli", "train"]


def run_example(*args, **kwargs):
    return subprocess.run([sys.executable, str(EXAMPLE), *map(str, args)], capture_output=True, text=True,
                          cwd=kwargs.pop("cwd", REPO), **kwargs)


def run_cli(*args, **kwargs):
    return subprocess.run([*CLI_TRAIN, *map(str, args)], capture_output=True, text=True,
                          cwd=kwargs.pop("cwd", REPO), **kwargs)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One real training run on 2,000 MNIST digits for 2 epochs, shared by the tests below."""
    out = tmp_path_factory.mktemp("runs") / "quick"
    result = run_example(*QUICK, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_folder_is_complete_and_well_formed(quick_run):
    out, result = quick_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.npz").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.90  # chance is 0.10
    assert metrics["parameters"] == 799_078 and metrics["neurons"] == 10_014
    assert set(metrics["classification_report"]) >= {str(d) for d in range(10)} | {"accuracy", "macro avg"}
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10_000
    assert np.trace(matrix) / 10_000 == pytest.approx(metrics["test_accuracy"])
    history = json.loads((out / "history.json").read_text())
    assert len(history["test_accuracy"]) == 2 and history["test_accuracy"][-1] == metrics["test_accuracy"]
    assert metrics["train_seconds"] == pytest.approx(sum(history["seconds"]))
    samples = json.loads((out / "samples.json").read_text())
    assert samples["labels"] == list(range(10)) and len(set(samples["indices"])) == 10
    for name in RUN_FILES:
        if name.endswith(".png"):
            image = matplotlib.image.imread(out / name)
            assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, name
    assert "epoch  2/2" in result.stdout and "test accuracy" in result.stdout


def test_saved_model_reproduces_the_reported_accuracy(quick_run):
    from npcnn.classifier import load_classifier
    from npcnn.data import load_mnist

    out, _ = quick_run
    clf = load_classifier(out / "model.npz")
    images, labels = load_mnist("test")
    accuracy = (clf.predict(images / 255.0) == labels).mean()
    assert accuracy == pytest.approx(json.loads((out / "metrics.json").read_text())["test_accuracy"])
    with np.load(out / "model.npz", allow_pickle=False) as f:
        assert "0.weight" in f.files and float(f["meta.mean"]) == pytest.approx(0.1307, abs=2e-3)


def test_interrupted_run_resumes_to_identical_weights(quick_run, tmp_path):
    """``npcnn train``: Ctrl-C after epoch 1 of 2, then --resume: the same weights and history as the
    uninterrupted run of examples/train_mnist.py (the example's loop is the library's, step for step)."""
    reference, _ = quick_run
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([*CLI_TRAIN, *QUICK, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # see each epoch line as it happens
                            # a shell running us in the background ignores SIGINT, and the child would
                            # inherit that; a user's terminal delivers it, so restore the default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("epoch  1/2"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert (out / "checkpoint.npz").is_file() and not (out / "metrics.json").exists()
    assert "Traceback" not in err

    refused = run_cli(*QUICK, "--out", out)  # without --resume: refuses, keeps the checkpoint
    assert refused.returncode != 0 and "--resume" in refused.stderr
    resumed = run_cli(*QUICK, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "epoch  1/2" not in resumed.stdout

    a, b = load_npz(reference / "model.npz"), load_npz(out / "model.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ha = json.loads((reference / "history.json").read_text())
    hb = json.loads((out / "history.json").read_text())
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert ha[key] == hb[key], key


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/nonexistent/mnist"], "does not exist"),
    (["--batch-size", "0"], "positive"),
    (["--lr", "-1"], "positive"),
    (["--epochs", "0"], "positive"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_arguments_give_one_clear_line(tmp_path, args, message):
    out = tmp_path / "run"
    result = run_example(*args, "--out", out, "--no-progress", timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "metrics.json").exists()


def test_damaged_data_directory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"]:
        (data / name).write_bytes(b"\x1f\x8b this is not an MNIST file")
    result = run_example("--data-dir", data, "--out", tmp_path / "run", "--no-progress", timeout=120)
    assert result.returncode == 1
    assert "SHA-256" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_output_folder_that_is_a_file(tmp_path):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    result = run_example("--out", out, "--no-progress", "--limit", "100", timeout=120)
    assert result.returncode == 1
    assert "is a file" in result.stderr and "Traceback" not in result.stderr
    assert out.read_text() == "not a folder"


def test_finished_run_is_not_overwritten(quick_run):
    out, _ = quick_run
    before = (out / "metrics.json").read_text()
    result = run_example(*QUICK, "--out", out)
    assert result.returncode == 1 and "already holds a finished run" in result.stderr
    assert (out / "metrics.json").read_text() == before


# ---------------------------------------------------------------- in-process units


def _toy_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


def test_evaluate_never_changes_the_model():
    model = seed_cnn(batchnorm=True, rng=1)
    images, labels = _toy_data()
    model.train()
    before = model.state_dict()
    result = evaluate(model, images, labels, normalization=Normalization(0.5, 0.3), batch_size=40)
    after = model.state_dict()
    assert model.training  # mode restored
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert result.predictions.shape == (96,) and result.probabilities.shape == (96, 10)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, rtol=1e-5)
    assert result.accuracy == pytest.approx((result.predictions == labels).mean())


def test_fit_is_deterministic_and_returns_history():
    images, labels = _toy_data()
    histories, weights = [], []
    for _ in range(2):
        model = seed_cnn(rng=5)
        history = fit(model, NLLLoss(), Adam(model.parameters()), (images, labels), (images, labels), 2, 32,
                      normalization=Normalization(0.5, 0.3), seed=7, progress=False, log=None)
        histories.append(history)
        weights.append(model.state_dict())
    assert isinstance(histories[0], History) and len(histories[0]) == 2
    assert histories[0].train_loss == histories[1].train_loss
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    assert History.from_dict(histories[0].as_dict()) == histories[0]


def test_non_finite_loss_names_the_batch():
    images, labels = _toy_data()
    model = seed_cnn(rng=0)
    model[0].weight.data[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match="epoch 1, batch 1"):
        fit(model, NLLLoss(), Adam(model.parameters()), (images, labels), (images, labels), 1, 32,
            progress=False, log=None)


def test_fit_rejects_bad_batch_size():
    images, labels = _toy_data()
    model = seed_cnn(rng=0)
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, NLLLoss(), Adam(model.parameters()), (images, labels), (images, labels), 1, 0, log=None)


def test_progress_bars_redraw_rarely_when_written_to_a_log():
    import io

    from npcnn.progress import LOG_INTERVAL, progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, term = io.StringIO(), Terminal()
    to_log = progress_bar(range(3), file=log, mininterval=0.5)
    to_term = progress_bar(range(3), file=term, mininterval=0.5)
    assert to_log.mininterval == LOG_INTERVAL and to_term.mininterval == 0.5
    assert list(to_log) == list(to_term) == [0, 1, 2]
    assert log.getvalue().count("\r") <= 3   # start, (at most one redraw), close


def test_fit_sets_the_scheduled_lr_before_every_step():
    images, labels = _toy_data()
    model = seed_cnn(rng=5)
    optimizer = Adam(model.parameters())
    seen, used = [], []
    step = optimizer.step

    def recording_step():
        used.append(optimizer.lr)
        step()
    optimizer.step = recording_step

    def schedule(t):
        seen.append(t)
        return 1e-3 * t
    fit(model, NLLLoss(), optimizer, (images, labels), (images, labels), 2, 32, normalization=Normalization(0.5, 0.3),
        progress=False, log=None, lr_schedule=schedule)
    batches = -(-len(labels) // 32)
    want = [e + (s + 1) / batches for e in range(2) for s in range(batches)]
    assert seen == pytest.approx(want) and used == pytest.approx([1e-3 * t for t in want])


def test_a_cyclic_run_resumes_only_with_the_epochs_its_schedule_was_laid_out_over(tmp_path):
    from dataclasses import asdict

    from npcnn.experiments.training import RunFolderError, TrainConfig, prepare_folder
    from npcnn.io import write_json

    old = TrainConfig(epochs=4, lr_schedule="cyclic", lr=5e-3)
    write_json(tmp_path / "config.json", asdict(old))
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    assert prepare_folder(str(tmp_path), old, resume=True)["epochs"] == 4
    with pytest.raises(RunFolderError, match="its cyclic lr schedule was laid out over 4"):
        prepare_folder(str(tmp_path), TrainConfig(epochs=6, lr_schedule="cyclic", lr=5e-3), resume=True)
    write_json(tmp_path / "config.json", asdict(TrainConfig(epochs=4)))
    assert prepare_folder(str(tmp_path), TrainConfig(epochs=6), resume=True)["epochs"] == 4   # constant: may grow
