"""What each conv channel likes best (npcnn.analysis.channel_images; ``npcnn channels``).

* The probe's "logits" are each channel's mean activation after the conv's ReLU, and its input gradient is
  PyTorch autograd's for the same weights (float64, tie-free inputs).
* On the session's trained net: each channel image lies in [0, 1] and drives its channel harder than every
  test image does (the issue's target), and the stage writes its files.
"""
import numpy as np
import pytest
import torch
from test_attacks import DATA, trained_run_dir  # noqa: F401
from test_attacks import one_torch_thread, run, test_set  # noqa: F401 (fixtures, shared with test_attacks)
from test_features import PixelTorch, digits, make_classifier
from ties import kink_margin

from npcnn.analysis.channel_images import ChannelProbe, visualize_channels


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("layer, index", [("conv1", 1), ("conv2", None)])
def test_probe_is_the_channel_means_and_their_gradient(batchnorm, layer, index):
    clf = make_classifier(batchnorm=batchnorm)
    probe = ChannelProbe(clf, layer)
    x = digits(3)
    assert kink_margin(clf, x) > 1e-9
    w = np.random.default_rng(1).normal(size=(3, probe.num_classes))
    means, grad = probe.forward_backward(x[:, None], lambda m: w)
    twin = PixelTorch(clf)
    xt = torch.tensor(x[:, None], requires_grad=True)
    a = twin.body[:probe.index + 1]((xt - twin.mean) / twin.std)
    m = a.mean(dim=(2, 3))
    (m * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(means, m.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    if index is not None:
        assert probe.index == index


def test_channel_images_beat_every_test_image(run, test_set):
    images, _ = test_set
    r = visualize_channels(run.classifier, "conv2", channels=[0, 5, 9, 21], test_images=images, progress=False)
    assert r.images.shape == (4, 28, 28) and r.images.min() >= 0 and r.images.max() <= 1
    assert np.all(r.ratio > 1), r.ratio
    assert r.history.shape == (300, 4) and r.history[-1].mean() > r.history[0].mean()


def test_stage_writes_its_files_and_bad_channels_are_named(run):
    from npcnn import experiments
    from npcnn.io import load_npz

    out = experiments.channel_images(run, layer="conv1", steps=20, progress=False)
    d = load_npz(run.file("deeper", "channels_conv1.npz"))
    assert d["images"].shape == (32, 28, 28) and out.files[-1].endswith("channels_conv1.npz")
    np.testing.assert_allclose(d["ratio"], d["activation"] / d["best_test"])
    with pytest.raises(ValueError, match=r"channels must be in 0..31 for conv2, got \[32\]"):
        visualize_channels(run.classifier, "conv2", channels=[32], progress=False)
    with pytest.raises(ValueError, match="layer must be conv1, conv2"):
        visualize_channels(run.classifier, "conv3", progress=False)
