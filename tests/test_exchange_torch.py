"""PyTorch -> safetensors -> npcnn and back: the same logits and input gradients in float64 (to 1e-10).

The PyTorch nets are written here the way a PyTorch user writes them (not through npcnn), trained
a few Adam steps on random data in train mode (so BatchNorm's running statistics and batch count
move), then compared in eval mode on pixel-space images: npcnn's :class:`Classifier` normalises
inside, the PyTorch side normalises by hand. The imported run folder is then put through
``npcnn export``, ``npcnn report`` and an analysis stage.
"""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from npcnn.classifier import Classifier
from npcnn.cli import main
from npcnn.data import Normalization
from npcnn.exchange import load_weights, save_weights
from npcnn.models import seed_cnn
from npcnn.nn import NLLLoss
from npcnn.optim import Adam
from npcnn.runs import Run

MEAN, STD = 0.1307, 0.3081
TOL = 1e-10
MEASURED = {}


def torch_net(batchnorm):
    """The reference net as a PyTorch user writes it (float64 here)."""
    nn = torch.nn

    def bn():
        return [nn.BatchNorm2d(32)] if batchnorm else []

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), *bn(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), *bn(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1)).double()


def trained_torch_net(batchnorm, steps=3, seed=0):
    torch.manual_seed(seed)
    net = torch_net(batchnorm)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        x = (torch.rand(32, 1, 28, 28, dtype=torch.float64) - MEAN) / STD
        y = torch.randint(0, 10, (32,))
        opt.zero_grad()
        torch.nn.functional.nll_loss(net(x), y).backward()
        opt.step()
    return net.eval()


def torch_logits_and_gradient(net, pixels, grad_logits):
    """PyTorch's logits (the layer before LogSoftmax) and d sum(grad_logits * logits) / d pixels."""
    x = torch.tensor(pixels, requires_grad=True)
    logits = net[:-1]((x - MEAN) / STD)
    logits.backward(torch.from_numpy(grad_logits))
    return logits.detach().numpy(), x.grad.numpy()


def images(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)), rng.normal(size=(n, 10))


def max_rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def compare(clf, net, label, dtype=np.float64, tol=TOL):
    """npcnn's classifier against the PyTorch net (float64) on the same pixels: max relative differences."""
    pixels, grad_logits = images()
    want_logits, want_grad = torch_logits_and_gradient(net, pixels, grad_logits)
    logits, grad = clf.logits(pixels.astype(dtype)), clf.input_gradient(pixels.astype(dtype), grad_logits)
    assert logits.dtype == dtype and grad.dtype == dtype
    MEASURED[label] = (max_rel(logits, want_logits), max_rel(grad, want_grad))
    print(f"{label}: logits rel diff {MEASURED[label][0]:.1e}, input gradient rel diff {MEASURED[label][1]:.1e}")
    assert MEASURED[label][0] <= tol and MEASURED[label][1] <= tol


@pytest.mark.parametrize("batchnorm", [False, True])
def test_pytorch_to_npcnn_gives_pytorchs_logits_and_input_gradients(batchnorm, tmp_path):
    net = trained_torch_net(batchnorm)
    path = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(path))                # what a PyTorch user runs
    model, info = load_weights(path, "seed-cnn-bn" if batchnorm else "seed-cnn")
    assert info["dtype"] == "float64" and model[0].weight.dtype == np.float64
    if batchnorm:
        assert int(model[3].num_batches_tracked) == 3
    compare(Classifier(model, Normalization(MEAN, STD)), net, f"torch->npcnn bn={batchnorm}")


@pytest.mark.parametrize("batchnorm", [False, True])
def test_npcnn_to_pytorch_gives_npcnns_logits_and_input_gradients(batchnorm, tmp_path):
    model = seed_cnn(batchnorm=batchnorm, dtype=np.float64, rng=5)
    opt, loss = Adam(model.parameters(), lr=1e-3), NLLLoss()
    rng = np.random.default_rng(2)
    for _ in range(3):                                    # a few training steps in npcnn (train mode)
        x, y = (rng.random((32, 1, 28, 28)) - MEAN) / STD, rng.integers(0, 10, 32)
        opt.zero_grad()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
    path = tmp_path / "net.safetensors"
    save_weights(path, model.eval(), Normalization(MEAN, STD), model_name="seed-cnn-bn" if batchnorm else "seed-cnn")
    net = torch_net(batchnorm)
    net.load_state_dict(load_file(str(path)), strict=True)   # what a PyTorch user runs
    net.eval()
    if batchnorm:
        assert int(net[3].num_batches_tracked) == 3
    compare(Classifier(model, Normalization(MEAN, STD)), net, f"npcnn->torch bn={batchnorm}")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A PyTorch BatchNorm net imported with `npcnn import-torch` (as a float32 run folder, the default: the
    float64 path is held to 1e-10 above, through the same load_weights)."""
    folder = tmp_path_factory.mktemp("imported")
    net = trained_torch_net(True, seed=7)
    path = folder / "net.safetensors"
    save_file(net.state_dict(), str(path), metadata={"mean": str(MEAN), "std": str(STD)})
    out = folder / "run"
    assert main(["import-torch", str(path), "--model", "seed-cnn-bn", "--out", str(out)]) == 0
    return net, path, out


def test_the_imported_run_folder_holds_pytorchs_net(imported):
    net, path, out = imported
    run = Run.open(out)                                   # what every stage opens
    assert sorted(os.listdir(out)) == ["classification_report.png", "config.json", "confusion_matrix.png",
                                       "history.json", "metrics.json", "model.npz", "samples.json", "samples.png"]
    config = run.config
    assert config["imported"]["model"] == "seed-cnn-bn" and config["batchnorm"] is True
    assert config["normalization"] == {"mean": MEAN, "std": STD}   # from the file's metadata
    assert config["imported"]["normalization_from"] == "the file's metadata"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["parameters"] == 799_206
    assert len(run.sample_indices()) == 10
    assert run.classifier.dtype == np.float32
    compare(run.classifier, net, "import-torch run folder (float32)", np.float32, 1e-5)


def test_the_imported_run_folder_works_with_the_other_stages(imported, tmp_path, capsys):
    net, _, out = imported
    assert main(["report", str(out)]) == 0
    assert "Test accuracy" in (out / "report.html").read_text()
    assert main(["saliency", str(out), "--indices", "0", "--no-progress"]) == 0
    assert (out / "saliency").is_dir()
    back = tmp_path / "back.safetensors"
    assert main(["export", str(out), "--safetensors", str(back)]) == 0
    state = load_file(str(back))
    torch_net(True).float().load_state_dict(state, strict=True)   # round trip: PyTorch -> npcnn -> PyTorch
    for k, v in net.state_dict().items():     # the same weights, in the run's float32
        assert state[k].dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32), k
        assert torch.equal(state[k], v.to(state[k].dtype)), k


def test_import_refuses_a_folder_that_holds_a_run(imported, capsys):
    _, path, out = imported
    assert main(["import-torch", str(path), "--model", "seed-cnn-bn", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
