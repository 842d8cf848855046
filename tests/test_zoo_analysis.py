"""Every zoo net (1x28x28) through the Python API on tiny data: one training step, evaluation, saliency,
FGSM, PGD, occlusion and Grad-CAM (on the last conv block by default), plus one whole training run
by name (run folder written, loaded back, exported as safetensors)."""
import numpy as np
import pytest

from npcnn import analysis
from npcnn.classifier import Classifier
from npcnn.data import Normalization, load_dataset
from npcnn.models import MODELS, INPUT_SHAPES, build_model
from npcnn.nn import Conv2d, NLLLoss, ReLU, Residual
from npcnn.optim import Adam
from npcnn.train import evaluate, fit

ZOO = [n for n in MODELS if INPUT_SHAPES[n] == (1, 28, 28)]


@pytest.fixture(scope="module")
def tiny():
    """64 training digits, 100 test digits (every class), and the training set's normalisation."""
    train_x, train_y = load_dataset("mnist", "train")
    test_x, test_y = load_dataset("mnist", "test")
    return (train_x[:64], train_y[:64]), (test_x[:100], test_y[:100]), Normalization.from_images(train_x[:1000])


@pytest.mark.parametrize("name", ZOO)
def test_every_stage_runs_on_the_zoo_net(name, tiny):
    train, test, norm = tiny
    model = build_model(name, rng=0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    history = fit(model, NLLLoss(), Adam(model.parameters(), lr=1e-3), train, test, 1, 64, normalization=norm,
                  progress=False, log=None)                                   # one step of 64 images
    assert len(history) == 1 and np.isfinite(history.as_dict()["train_loss"][0])
    assert any(not np.array_equal(before[k], v) for k, v in model.state_dict().items())
    result = evaluate(model, *test, normalization=norm)
    assert result.probabilities.shape == (100, 10) and 0 <= result.accuracy <= 1

    clf = Classifier(model, norm)
    images, labels = test[0][:4].astype(np.float32) / 255, test[1][:4].astype(np.int64)
    s = analysis.saliency(clf, images, labels)
    assert s.shape == (4, 28, 28) and np.isfinite(s).all() and s.any()
    for attack in (analysis.fgsm(clf, images, labels, 0.1), analysis.pgd(clf, images, labels, 0.1, steps=2)):
        x = np.asarray(attack.images)
        assert x.reshape(4, 28, 28).shape == (4, 28, 28)
        assert np.abs(x.reshape(4, 28, 28) - images).max() <= 0.1 + 1e-6
    occ = analysis.occlusion(clf, images[:2], labels[:2], patch=10, stride=6)
    assert np.isfinite(np.asarray(occ.probability)).all()

    cam = analysis.grad_cam(clf, images, labels)                  # layer="last": the last conv block
    body = clf.body
    blocks = [i for i, m in enumerate(body) if any(isinstance(c, Conv2d) for c in m.modules())]
    after = blocks[-1] + 1
    expected = after if after < len(body) and isinstance(body[after], ReLU) else blocks[-1]
    assert cam.index == expected, (name, cam.index, cam.layer)
    assert cam.upsampled.shape == (4, 28, 28) and np.isfinite(cam.upsampled).all()
    if name == "small-resnet":
        assert isinstance(body[blocks[-1]], Residual) and cam.layer == f"Residual + ReLU (layer {expected})"


def test_last_is_conv2_on_the_reference_net(tiny):
    clf = Classifier(build_model("seed-cnn"), tiny[2])
    assert analysis.cam.resolve_layer(clf, "last") == analysis.cam.resolve_layer(clf, "conv2")


def test_a_zoo_run_folder_by_name(tiny, tmp_path):
    """train_run with model="lenet5": model.npz records the name, load_classifier rebuilds the net, and the
    run's net exports under its own name."""
    from npcnn.classifier import load_classifier
    from npcnn.exchange.runfolder import export_run
    from npcnn.exchange.weights import load_weights
    from npcnn.experiments.training import TrainConfig, train_run

    _, _, info = load_dataset("mnist", "test", return_info=True)
    train, test, _ = tiny
    metrics = train_run(TrainConfig(model="lenet5", epochs=1), str(tmp_path / "run"), progress=False, log=None,
                        data=(train, test, info))
    assert metrics["model"] == "lenet5" and metrics["parameters"] == 61_706
    clf = load_classifier(str(tmp_path / "run"))
    assert clf.info["model"] == "lenet5" and len(clf.model) == 13
    written = export_run(str(tmp_path / "run"), safetensors=str(tmp_path / "w.safetensors"))
    assert load_weights(written["safetensors"])[1]["model"] == "lenet5"
