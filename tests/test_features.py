"""Filters and feature maps (npcnn.analysis.features) against PyTorch on the same weights.

This file also holds the small helpers the other look-inside tests import:
a float64 classifier with non-trivial weights (with or without BatchNorm),
its PyTorch twin working in pixel space, and digit-like test images.
"""
import numpy as np
import pytest
import torch

from torch_oracle import rel_err, to_torch

from npcnn.analysis.features import conv_layers, feature_maps, filters
from npcnn.classifier import Classifier
from npcnn.data import Normalization
from npcnn.models import seed_cnn
from npcnn.nn import BatchNorm2d, Conv2d, Linear, ReLU, Sequential

MEAN, STD = 0.1307, 0.3081
TOL64 = 1e-10


def make_classifier(batchnorm=False, seed=0, dtype=np.float64):
    """The reference net with random weights, sharpened so its softmax is far from uniform;
    BatchNorm layers get random affine parameters and running statistics."""
    rng = np.random.default_rng(seed)
    model = seed_cnn(batchnorm=batchnorm, dtype=dtype, rng=seed)
    for layer in model:
        if isinstance(layer, BatchNorm2d):
            c = layer.num_features
            layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
            layer.bias.data[...] = rng.normal(0, 0.3, c)
            layer.running_mean[...] = rng.normal(0, 0.5, c)
            layer.running_var[...] = rng.uniform(0.5, 2.0, c)
    model[-2].weight.data *= 8  # logits of a few units: predictions change under occlusion
    return Classifier(model, Normalization(MEAN, STD), class_names=[str(i) for i in range(10)], batch_size=64)


class PixelTorch(torch.nn.Module):
    """The classifier's net in PyTorch, taking pixel-space images: (x - mean) / std, the body, then
    optionally softmax (``output="probability"``)."""

    def __init__(self, classifier, output="logit"):
        super().__init__()
        self.body = to_torch(Sequential(*classifier.model.layers[:-1])).eval()
        self.mean, self.std = classifier.normalization.mean, classifier.normalization.std
        self.output = output

    def forward(self, x):
        z = self.body((x - self.mean) / self.std)
        return torch.softmax(z, dim=1) if self.output == "probability" else z


def digits(n=4, seed=0, noise=0.05):
    """Digit-like pixel images [n, 28, 28] in [0, 1]: a few bright strokes, with faint noise everywhere.

    The noise (``(1 - noise) * strokes + uniform(0, noise)``, no flat patch left) keeps the images away from the net's kinks: on an exactly black
    background every max-pool window holds four nearly equal values, and which one wins (so where the
    gradient goes) is decided by rounding, which differs between BLAS kernels and machines. ``noise=0``
    gives exact black, for tests that want it.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    out = np.zeros((n, 28, 28))
    for k in range(n):
        for _ in range(3):
            (y0, x0), (y1, x1) = rng.uniform(5, 23, (2, 2))
            t = np.linspace(0, 1, 40)[:, None, None]
            d = np.hypot(yy - (y0 + t * (y1 - y0)), xx - (x0 + t * (x1 - x0))).min(axis=0)
            out[k] = np.maximum(out[k], np.clip(1.6 - d, 0, 1))
    if noise:
        out = (1 - noise) * out + np.random.default_rng([seed, 1]).uniform(0, noise, out.shape)
    return out


def torch_intermediates(classifier, x, post_activation):
    """Outputs of each Conv2d (or of the ReLU after it) of the torch twin, keyed conv1, conv2."""
    body = PixelTorch(classifier).body
    h = (torch.from_numpy(x[:, None]) - MEAN) / STD
    out, seen, pending = {}, 0, None
    for layer in body:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv2d):
            seen += 1
            if post_activation:
                pending = f"conv{seen}"
            else:
                out[f"conv{seen}"] = h.detach().numpy()
        elif isinstance(layer, torch.nn.ReLU) and pending:
            out[pending], pending = h.detach().numpy(), None
    return out


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("post_activation", [False, True])
def test_feature_maps_equal_torch_intermediates(batchnorm, post_activation):
    clf = make_classifier(batchnorm)
    clf.batch_size = 3  # several chunks
    x = digits(5)
    ours = feature_maps(clf, x, post_activation=post_activation)
    ref = torch_intermediates(clf, x, post_activation)
    assert sorted(ours) == ["conv1", "conv2"] == sorted(ref)
    assert ours["conv1"].shape == (5, 32, 28, 28) and ours["conv2"].shape == (5, 32, 14, 14)
    for name in ours:
        assert rel_err(ours[name], ref[name]) < TOL64, name
    if post_activation:
        assert all(m.min() >= 0 for m in ours.values())
    else:
        assert all(m.min() < 0 for m in ours.values())  # before the ReLU: negative values are kept


def test_feature_maps_accept_nchw_and_one_layer():
    clf = make_classifier()
    x = digits(2)
    both = feature_maps(clf, x)
    only = feature_maps(clf, x[:, None], layers=["conv1"])
    assert list(only) == ["conv1"]
    np.testing.assert_array_equal(only["conv1"], both["conv1"])
    with pytest.raises(ValueError, match="no layer 'conv3'"):
        feature_maps(clf, x, layers=["conv3"])


def test_feature_maps_reject_bad_images():
    clf = make_classifier()
    with pytest.raises(ValueError, match="shape"):
        feature_maps(clf, np.zeros((2, 3, 28, 28)))
    with pytest.raises(ValueError, match="shape"):
        feature_maps(clf, np.zeros((28, 28, 1, 1, 1)))


def test_post_activation_needs_an_activation():
    net = Sequential(Conv2d(1, 2, 3, dtype=np.float64), ReLU(), Conv2d(2, 2, 3, dtype=np.float64))
    from npcnn.nn import Flatten, LogSoftmax
    model = Sequential(*net.layers, Flatten(), Linear(2 * 24 * 24, 3, dtype=np.float64), LogSoftmax())
    clf = Classifier(model, Normalization(0.0, 1.0))
    assert feature_maps(clf, digits(1))["conv2"].shape == (1, 2, 24, 24)
    with pytest.raises(ValueError, match="conv2 is not followed by an activation"):
        feature_maps(clf, digits(1), post_activation=True)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_conv_layers_found_generically(batchnorm):
    clf = make_classifier(batchnorm)
    convs = conv_layers(clf)
    assert list(convs) == ["conv1", "conv2"]
    layers = clf.model.layers
    assert layers.index(convs["conv1"]) == 0
    assert layers.index(convs["conv2"]) == (4 if batchnorm else 3)


def test_filters_selects_the_report_filters():
    clf = make_classifier(batchnorm=True)
    w = filters(clf)
    w1, w2 = clf.model[0].weight.data, clf.model[4].weight.data
    assert w["conv1"].shape == (32, 1, 3, 3) and w["conv2"].shape == (5, 32, 3, 3)
    np.testing.assert_array_equal(w["conv1"], w1)
    np.testing.assert_array_equal(w["conv2"], w2[[15, 4, 1, 2, 8]])
    np.testing.assert_array_equal(w["conv2_filters"], [15, 4, 1, 2, 8])
    w["conv1"][...] = 0  # a copy: the model is untouched
    assert np.abs(clf.model[0].weight.data).max() > 0
    with pytest.raises(ValueError, match="filter 32 is out of range"):
        filters(clf, [0, 32])
