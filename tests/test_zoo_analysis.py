"""Every zoo net (1x28x28) through the Python API on tiny data: one training step, evaluation, saliency,
FGSM, PGD, occlusion and Grad-CAM (on the last conv block by default), plus one whole training run
by name (run folder written, loaded back, exported as safetensors); every stage of the report on a run
folder of each, at the layer names of its own structure; receptive fields through average pools and
residual blocks; guided backprop and deconvolution through the ReLUs inside residual blocks, against Captum."""
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

pytestmark = [pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
              pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations")]


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
        assert isinstance(body[blocks[-1]], Residual) and cam.layer == f"block3 + ReLU (layer {expected})"


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


@pytest.fixture(scope="module")
def zoo_runs(tiny, tmp_path_factory):
    """A run folder per 1x28x28 zoo net, trained one step on 64 digits."""
    from npcnn.experiments.training import TrainConfig, train_run

    _, _, info = load_dataset("mnist", "test", return_info=True)
    train, test, _ = tiny
    root = tmp_path_factory.mktemp("zoo-runs")
    for name in ZOO:
        train_run(TrainConfig(model=name, epochs=1), str(root / name), progress=False, log=None,
                  data=(train, test, info))
    return root


@pytest.mark.parametrize("name", ZOO)
def test_every_report_stage_runs_on_the_zoo_net_by_its_own_layer_names(name, zoo_runs):
    """inspect, occlusion (with Zeiler & Fergus's panels), cam, ablation, dataset examples, channel images and
    the report, each at its default layer "last": the net's last conv layer or residual block, by name."""
    from npcnn import experiments
    from npcnn.analysis.features import conv_layers, layer_name
    from npcnn.report import build_report

    run = str(zoo_runs / name)
    clf = experiments.common.open_run(run).classifier
    last = list(conv_layers(clf))[-1]
    assert layer_name(clf, "last") == last
    assert last == ("block3" if name == "small-resnet" else f"conv{len(conv_layers(clf))}")
    r = experiments.inspect(run, digits=(0,), progress=False)
    assert set(r.maps) == set(conv_layers(clf)) and r.filters["conv2"].shape[0] == 5
    o = experiments.occlusion(run, stride=6, indices=[0, 1], progress=False)
    assert o.feature.projection.shape == (2, 28, 28) and np.isfinite(o.feature.activation).all()
    c = experiments.cam(run, indices=[0, 1], progress=False)
    assert c.maps.grad_cam.layer.startswith(last) and c.maps.grad_cam.upsampled.shape == (2, 28, 28)
    a = experiments.ablation(run, limit=50, progress=False)
    assert a.ablation.layer == last and f"ablation_{last}.png" in " ".join(a.files)
    t = experiments.dataset_examples(run, k=2, limit=50, progress=False)
    assert t.top.layer == last and np.isfinite(t.top.values).all()
    ch = experiments.channel_images(run, steps=3, progress=False)
    assert ch.result.layer.startswith(last) and (zoo_runs / name / "deeper" / f"channels_{last}.png").is_file()
    page = build_report(run)
    assert f"each {last} channel zeroed" in page
    for stage in ("the channel ablation", "the dataset examples", "the channel images", "occlusion"):
        assert f"not run:</strong> {stage}" not in page, stage


def test_receptive_fields_of_the_zoo_nets_follow_their_layers():
    """From the kernels, strides and paddings: LeNet-5's conv2 (5x5, after a 5x5 conv and a 2x2 average pool)
    sees 14x14 pixels; small-resnet's last block sees its body's, through every conv of the stem and blocks."""
    from npcnn.analysis.channels import receptive_field

    norm = Normalization(0.1307, 0.3081)
    lenet = Classifier(build_model("lenet5", rng=0), norm)
    assert receptive_field(lenet, "conv2") == {"size": (14, 14), "stride": (2, 2), "offset": (-2, -2)}
    wong = Classifier(build_model("wong-mnist", rng=0), norm)
    # two 4x4 convs, stride 2, padding 1: 4 + 3*2 = 10 pixels, stride 4, offset -1 - 1*2 = -3
    assert receptive_field(wong, "last") == {"size": (10, 10), "stride": (4, 4), "offset": (-3, -3)}
    resnet = Classifier(build_model("small-resnet", rng=0), norm)
    # the stem's 3x3 conv sees 3x3; block1's body adds two 3x3 convs at stride 1: 7x7
    assert receptive_field(resnet, "conv1") == {"size": (3, 3), "stride": (1, 1), "offset": (-1, -1)}
    assert receptive_field(resnet, "block1") == {"size": (7, 7), "stride": (1, 1), "offset": (-3, -3)}


def test_guided_backprop_and_deconvolution_reach_the_relus_inside_residual_blocks():
    """Captum's GuidedBackprop and Deconvolution hook every ReLU module, also those in a block's body; on the
    small ResNet's PyTorch twin (float64, random weights, noisy digits) npcnn's maps equal Captum's."""
    import torch
    from captum.attr import Deconvolution, GuidedBackprop
    from test_features import PixelTorch, digits
    from torch_oracle import rel_err

    model = build_model("small-resnet", rng=1, dtype=np.float64)
    clf = Classifier(model, Normalization(0.1307, 0.3081))
    assert any(isinstance(m, ReLU) for block in clf.body if isinstance(block, Residual) for m in block.modules())
    x = digits(3, seed=2)
    net, xt = PixelTorch(clf), torch.from_numpy(x[:, None])
    target = np.array([1, 4, 7])
    for ours, method in ((analysis.guided_backprop, GuidedBackprop), (analysis.deconvolution, Deconvolution)):
        got = ours(clf, x, target)
        ref = method(net).attribute(xt, target=torch.as_tensor(target)).detach().numpy()[:, 0]
        assert rel_err(got, ref) < 1e-10, ours.__name__
        if method is GuidedBackprop:
            guided = ref
    # the ReLUs inside the blocks matter: the guided rule at the top-level ReLUs only gives another map
    from npcnn.analysis.cam import _forward, _one_hot

    logits, _ = _forward(clf, clf.normalize(x[:, None]))
    g = _one_hot(logits, target)
    for layer in reversed(clf.body.layers):
        g = layer.backward(g, param_grads=False)
        g = np.maximum(g, 0) if isinstance(layer, ReLU) else g
    assert rel_err(g[:, 0] / clf.normalization.std, guided) > 1e-3
