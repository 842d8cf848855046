"""Grad-CAM, guided backprop, deconvolution and guided Grad-CAM (npcnn.analysis.cam) against Captum.

In float64 on fixed random weights (with and without BatchNorm), every map equals Captum's on the torch
twin that normalises inside its forward (``PixelTorch``): ``LayerGradCam`` at conv1 and conv2 (their
outputs, their ReLUs, their pools), ``LayerAttribution.interpolate``, ``GuidedBackprop``,
``Deconvolution`` and ``GuidedGradCam``, to ~1e-15 relative. Every input is checked to be away from the
net's kinks (``ties.kink_margin``), so the comparisons test the library, not rounding at max-pool ties
or ReLU kinks. Then float32 against float64, the errors, and the stage on a trained run.
"""
import os

import numpy as np
import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam
from test_attacks import DATA, trained_run_dir
from test_features import PixelTorch, digits, make_classifier
from ties import _margins, kink_margin, reached_by_kinks
from torch_oracle import rel_err

from npcnn.analysis.cam import cam_layers, deconvolution, explain, grad_cam, guided_backprop, guided_grad_cam
from npcnn.analysis.cam import interpolate, resolve_layer, scale01
from npcnn.classifier import softmax
from npcnn.experiments.cam import cam as cam_stage
from npcnn.io import load_npz
from npcnn.runs import Run

pytestmark = [pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
              pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations")]

TARGET = np.array([3, 8, 0, 5])
TIE_FREE = 1e-9          # float64 rounding moves activations by ~1e-15 (see test_saliency.py)
NEAR_KINK_FLOAT32 = 3e-5  # float32 rounding moves them by up to ~1.4e-6
TOL64 = 1e-10


def images(n=4, seed=0):
    return digits(n, seed=seed)


def torch_targets(target, clf, x):
    """Captum's target: the given classes, or (None) the class the torch twin predicts."""
    if target is None:
        with torch.no_grad():
            return PixelTorch(clf)(torch.from_numpy(x[:, None])).argmax(dim=1)
    return torch.as_tensor(target)


def captum_grad_cam(clf, x, target, index, relu=True):
    net = PixelTorch(clf)
    out = LayerGradCam(net, net.body[index]).attribute(torch.from_numpy(x[:, None]),
                                                       target=torch_targets(target, clf, x), relu_attributions=relu)
    return out.detach().numpy()[:, 0], LayerAttribution.interpolate(out, x.shape[1:], "bilinear").detach().numpy()[:, 0]


def spatial_layers(batchnorm):
    """Every layer Grad-CAM can use, by the names and the indices: conv1/conv2 (their ReLUs), the conv
    outputs, the pools (and the BatchNorms)."""
    return ["conv1", "conv2"] + list(range(8 if batchnorm else 6))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_grad_cam_equals_captum_at_every_layer(batchnorm):
    clf = make_classifier(batchnorm)
    x = images()
    assert kink_margin(clf, x) > TIE_FREE
    for layer in spatial_layers(batchnorm):
        for target in ((TARGET, 7, None) if layer == "conv2" else (TARGET, None)):
            r = grad_cam(clf, x, target, layer=layer)
            coarse, up = captum_grad_cam(clf, x, target, r.index)
            assert r.coarse.shape == coarse.shape and r.upsampled.shape == (4, 28, 28)
            assert rel_err(r.coarse, coarse) < TOL64, (layer, target)
            assert rel_err(r.upsampled, up) < TOL64, (layer, target)
            assert r.coarse.min() >= 0     # (a random net's map may be all zero: nothing positive left)
            np.testing.assert_allclose(r.scaled, scale01(r.upsampled))
            assert r.weights.shape == (4, 32)
        signed = grad_cam(clf, x, TARGET, layer=layer, relu=False)
        assert rel_err(signed.coarse, captum_grad_cam(clf, x, TARGET, signed.index, relu=False)[0]) < TOL64
        assert signed.coarse.min() < 0
    # the names: the ReLU after each conv; the conv's own output is its index
    assert [resolve_layer(clf, n)[0] for n in ("conv1", "conv2")] == ([1, 5] if batchnorm else [1, 4])
    relu2 = 5 if batchnorm else 4
    assert grad_cam(clf, x, layer=relu2).layer == f"conv2 + ReLU (layer {relu2})"
    assert grad_cam(clf, x, layer=4 if batchnorm else 3).coarse.shape == (4, 14, 14)
    assert grad_cam(clf, x, layer=2).coarse.shape == (4, 14, 14)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_guided_backprop_and_deconvolution_equal_captum(batchnorm):
    clf = make_classifier(batchnorm)
    clf.batch_size = 3  # two chunks
    x = images(5)
    assert kink_margin(clf, x) > TIE_FREE
    net, xt = PixelTorch(clf), torch.from_numpy(x[:, None])
    for target in (np.array([3, 8, 0, 5, 1]), 2, None):
        for ours, method in ((guided_backprop, GuidedBackprop), (deconvolution, Deconvolution)):
            got = ours(clf, x, target)
            ref = method(net).attribute(xt, target=torch_targets(target, clf, x)).detach().numpy()[:, 0]
            assert got.shape == (5, 28, 28) and got.dtype == np.float64
            assert rel_err(got, ref) < TOL64, (ours.__name__, target)
    # not the plain gradient: the ReLU rules change the map
    plain = clf.input_gradient(x, np.eye(10)[[3, 8, 0, 5, 1]])
    assert rel_err(guided_backprop(clf, x, [3, 8, 0, 5, 1]), plain) > 0.1


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_grad_cam_equals_captum(batchnorm, mode):
    clf = make_classifier(batchnorm)
    x = images()
    assert kink_margin(clf, x) > TIE_FREE
    net, xt = PixelTorch(clf), torch.from_numpy(x[:, None])
    for layer in ("conv1", "conv2", 4 if batchnorm else 3, 6 if batchnorm else 5):
        index = resolve_layer(clf, layer)[0]
        for target in (TARGET, None):
            ours = guided_grad_cam(clf, x, target, layer=layer, mode=mode)
            ref = GuidedGradCam(net, net.body[index]).attribute(xt, target=torch_targets(target, clf, x),
                                                               interpolate_mode=mode).detach().numpy()[:, 0]
            assert rel_err(ours, ref) < TOL64, (layer, target)
    conv2 = net.body[resolve_layer(clf, "conv2")[0]]
    default = GuidedGradCam(net, conv2).attribute(xt, target=torch_targets(TARGET, clf, x))
    assert rel_err(guided_grad_cam(clf, x, TARGET), default.detach().numpy()[:, 0]) < TOL64  # both "nearest"


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("shape, size", [((7, 7), (28, 28)), ((14, 14), (28, 28)), ((5, 3), (13, 11)),
                                         ((28, 28), (14, 14)), ((6, 9), (6, 9)), ((4, 5), (17, 10))])
def test_interpolate_equals_torch(mode, shape, size):
    maps = np.random.default_rng(0).normal(size=(3,) + shape)
    ref = LayerAttribution.interpolate(torch.from_numpy(maps[:, None]), size, mode).numpy()[:, 0]
    ours = interpolate(maps, size, mode)
    assert ours.shape == (3,) + size
    assert rel_err(ours, ref) < 1e-14
    assert interpolate(maps.astype(np.float32), size, mode).dtype == np.float32


def test_explain_is_the_four_methods_from_one_forward():
    clf = make_classifier()
    clf.batch_size = 3
    x = images(5)
    t = np.array([3, 8, 0, 5, 1])
    e = explain(clf, x, t, layer="conv1", mode="nearest")
    np.testing.assert_array_equal(e.grad_cam.target, t)
    np.testing.assert_allclose(e.grad_cam.coarse, grad_cam(clf, x, t, layer="conv1").coarse, rtol=0, atol=1e-13)
    np.testing.assert_allclose(e.guided_backprop, guided_backprop(clf, x, t), rtol=0, atol=1e-13)
    np.testing.assert_allclose(e.deconvolution, deconvolution(clf, x, t), rtol=0, atol=1e-13)
    np.testing.assert_allclose(e.guided_grad_cam, guided_grad_cam(clf, x, t, layer="conv1"), rtol=0, atol=1e-13)
    np.testing.assert_allclose(e.logits, clf.logits(x), rtol=0, atol=1e-12)
    # target=None: the predicted class, from the same forward
    np.testing.assert_array_equal(grad_cam(clf, x).target, clf.predict(x))
    np.testing.assert_array_equal(guided_backprop(clf, x), guided_backprop(clf, x, clf.predict(x)))
    # NCHW input is the same
    np.testing.assert_array_equal(deconvolution(clf, x[:, None], t), deconvolution(clf, x, t))


def fc_relu_margin(clf, x):
    """The smallest |input| of the ReLUs after the last spatial layer (the fully connected ones)."""
    body, margins = _margins(clf, x)
    last = max(cam_layers(clf))
    return min(float(m.min()) for i, m in margins if i > last and isinstance(body[i], torch.nn.ReLU))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_float32_is_close_to_float64(batchnorm):
    c64, c32 = make_classifier(batchnorm), make_classifier(batchnorm, dtype=np.float32)
    x = images()
    # input maps: on the pixels no kink within float32 rounding can reach (most of them)
    stable = ~reached_by_kinks(c64, x, NEAR_KINK_FLOAT32)
    assert stable.mean() > 0.6
    # Grad-CAM at "conv2" (its ReLU): a max-pool tie above moves the gradient inside one window, which leaves
    # alpha (a spatial mean) alone, so only the fully connected ReLUs can flip it
    assert fc_relu_margin(c64, x) > NEAR_KINK_FLOAT32
    e64 = explain(c64, x, TARGET)
    e32 = explain(c32, x.astype(np.float32), TARGET)
    for name in ("coarse", "upsampled", "scaled", "weights"):
        assert getattr(e32.grad_cam, name).dtype == np.float32
        assert rel_err(getattr(e32.grad_cam, name), getattr(e64.grad_cam, name)) < 1e-5, name
    for name in ("guided_backprop", "deconvolution", "guided_grad_cam"):
        assert getattr(e32, name).dtype == np.float32
        assert rel_err(getattr(e32, name)[stable], getattr(e64, name)[stable]) < 1e-5, name


@pytest.mark.parametrize("func", [grad_cam, guided_grad_cam, explain])
@pytest.mark.parametrize("layer", ["conv3", "fc1", 9, -1, True, "3"])
def test_a_bad_layer_is_a_one_line_error(func, layer):
    with pytest.raises(ValueError, match=r"^\w+: layer must be conv1, conv2 or an index 0\.\.5 .*got") as e:
        func(make_classifier(), images(1), layer=layer)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("func", [grad_cam, guided_backprop, deconvolution, guided_grad_cam, explain])
@pytest.mark.parametrize("target, message", [(10, "target classes must be in 0..9"), (-1, "target classes"),
                                             ([1, 2, 3], "target must be a class number or one per image"),
                                             (2.5, "target must be")])
def test_a_bad_target_is_a_one_line_error(func, target, message):
    with pytest.raises(ValueError, match=f"^{func.__name__}: {message}") as e:
        func(make_classifier(), images(2), target)
    assert "\n" not in str(e.value)


def test_other_bad_arguments():
    clf = make_classifier()
    with pytest.raises(ValueError, match="guided_grad_cam: mode must be one of bilinear, nearest"):
        guided_grad_cam(clf, images(1), mode="bicubic")
    with pytest.raises(ValueError, match="no images"):
        grad_cam(clf, np.zeros((0, 28, 28)))
    with pytest.raises(ValueError, match="expected images"):
        guided_backprop(clf, np.zeros((2, 3, 28, 28)))


# --- the stage, on a trained net --------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    os.environ.setdefault("NPCNN_DATA", DATA)
    return Run.open(trained_run_dir(tmp_path_factory))


def test_the_stage_writes_figures_then_the_arrays(run):
    out = cam_stage(run)
    names = [os.path.basename(f) for f in out.files]
    assert names[0] == "cam.png" and names[-1] == "cam.npz"
    assert names[1:-1] == [f"cam_test{i}.png" for i in out.indices]
    assert all(os.path.getsize(f) > 0 for f in out.files)
    assert sorted(os.listdir(out.folder)) == sorted(names)
    a = load_npz(os.path.join(out.folder, "cam.npz"))
    n = len(out.indices)
    assert n == 10 and str(a["layer_described"]) == "conv2 + ReLU (layer 4)" and int(a["target"]) == -1
    np.testing.assert_array_equal(a["targets"], a["predicted"])
    assert (a["targets"] == a["labels"]).sum() >= 9       # a net at 98 %: its predictions are the true digits
    clf = run.classifier
    e = explain(clf, a["images"], None, layer="conv2", mode="bilinear")
    for key, ours in (("grad_cam", e.grad_cam.coarse), ("grad_cam_scaled", e.grad_cam.scaled),
                      ("guided_backprop", e.guided_backprop), ("deconvolution", e.deconvolution),
                      ("guided_grad_cam", e.guided_grad_cam)):
        np.testing.assert_array_equal(a[key], ours, err_msg=key)
    np.testing.assert_allclose(a["probability"], softmax(e.logits)[np.arange(n), a["targets"]])
    assert a["grad_cam"].shape == (n, 14, 14) and a["guided_backprop"].shape == (n, 28, 28)
    assert a["grad_cam_scaled"].min() >= 0 and a["grad_cam_scaled"].max() == 1
    # where the net looks: Grad-CAM's mass lies on the strokes far more than their share of the image
    ink = a["images"] > 0.2
    up = a["grad_cam_upsampled"]
    on_ink = (up * ink).sum() / up.sum()
    assert on_ink > 2 * ink.mean(), (on_ink, ink.mean())
    assert "10 image(s), each explaining its predicted class" in out.describe()


def test_the_stage_takes_a_target_a_layer_and_indices(run):
    out = cam_stage(run, layer=3, target=3, indices=[0, 1])
    np.testing.assert_array_equal(out.targets, [3, 3])
    np.testing.assert_array_equal(out.indices, [0, 1])
    assert out.maps.grad_cam.layer == "conv2 output (layer 3)" and "class 3" in out.describe()
    a = load_npz(os.path.join(out.folder, "cam.npz"))
    assert int(a["layer_index"]) == 3 and int(a["target"]) == 3 and str(a["layer"]) == "3"


@pytest.mark.parametrize("settings, message", [({"layer": "conv3"}, "cam: layer must be"), ({"layer": 8}, "layer"),
                                               ({"target": 10}, "--target must be a class number 0..9"),
                                               ({"target": True}, "--target"), ({"target": "3"}, "--target"),
                                               ({"indices": [10**6]}, "out of range")])
def test_a_bad_setting_raises_before_anything_is_written(run, settings, message):
    before = sorted(os.listdir(run.path))
    with pytest.raises((ValueError, IndexError), match=message):
        cam_stage(run, **settings)
    assert sorted(os.listdir(run.path)) == before
