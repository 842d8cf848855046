"""Zeiler & Fergus's occlusion panels (npcnn.analysis.feature_occlusion): the strongest feature map's total
activation under the moving patch, checked against a direct computation with the readable layers, and its
deconvnet projection against Captum's ``NeuronDeconvolution`` on the torch twin (float64, tie-free inputs)."""
import numpy as np
import pytest
import torch
from captum.attr import NeuronDeconvolution
from test_features import PixelTorch, digits, make_classifier
from ties import kink_margin
from torch_oracle import rel_err

from npcnn.analysis.feature_occlusion import feature_occlusion, project_feature_map, strongest_channels
from npcnn.analysis.occlusion import occlusion, occlusion_masks

pytestmark = [pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
              pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations")]


def body_output(clf, x, index):
    """The output of layer ``index`` of the body for pixel images [N, H, W], layer by layer."""
    z = clf.normalize(x[:, None])
    for layer in clf.body.layers[:index + 1]:
        z = layer.forward(z)
    return z


@pytest.mark.parametrize("batchnorm", [False, True])
def test_the_strongest_map_and_its_total_under_each_patch(batchnorm):
    clf = make_classifier(batchnorm)
    x = digits(3)
    r = feature_occlusion(clf, x, layer="conv2", patch=10, stride=2, batch_size=37)   # chunks cut images
    acts = body_output(clf, x, r.index)
    assert r.index == (5 if batchnorm else 4) and r.layer.startswith("conv2 + ReLU")
    totals = acts.sum(axis=(2, 3))
    np.testing.assert_array_equal(r.channel, totals.argmax(axis=1))
    np.testing.assert_allclose(r.base_activation, totals.max(axis=1), rtol=1e-12)
    masks = occlusion_masks((28, 28), (10, 10), (2, 2))
    assert r.activation.shape == (3, 10, 10) and r.projection.shape == (3, 28, 28)
    for n in range(3):
        occluded = np.where(masks, 0.0, x[n])                               # every position of image n
        want = body_output(clf, occluded, r.index)[:, r.channel[n]].sum(axis=(1, 2)).reshape(10, 10)
        np.testing.assert_allclose(r.activation[n], want, rtol=1e-12)
    # the patch over the strokes lowers the map somewhere; positions are the occlusion grid's
    assert (r.activation.min(axis=(1, 2)) < r.base_activation).all()
    assert occlusion(clf, x, patch=10, stride=2).probability.shape == r.activation.shape


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_the_projection_equals_captum_neuron_deconvolution(batchnorm, layer):
    clf = make_classifier(batchnorm)
    clf.batch_size = 3   # two chunks
    x = digits(5, seed=1)
    assert kink_margin(clf, x) > 1e-9
    k, _, index, _ = strongest_channels(clf, x, layer)
    got = project_feature_map(clf, x, k, layer)
    net = PixelTorch(clf)
    for n in range(len(x)):
        def selector(out, c=int(k[n])):
            return 0.5 * (out[:, c] ** 2).sum(dim=(1, 2))
        ref = NeuronDeconvolution(net, net.body[index]).attribute(torch.from_numpy(x[n:n + 1, None]),
                                                                  neuron_selector=selector)
        assert rel_err(got[n], ref.detach().numpy()[0, 0]) < 1e-10, (layer, n)
    # one channel number for all images works too, and differs from another channel's projection
    other = project_feature_map(clf, x, (int(k[0]) + 1) % 32, layer)
    assert rel_err(project_feature_map(clf, x, int(k[0]), layer)[0], got[0]) < 1e-14
    assert rel_err(other[0], got[0]) > 0.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer="conv9"), "layer must be conv1, conv2"),
    (dict(patch=40), "does not fit"),
    (dict(stride=0), "stride must be a positive"),
    (dict(batch_size=0), "batch_size must be positive"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        feature_occlusion(make_classifier(), digits(2), **kwargs)


def test_a_channel_out_of_range_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"channels must be in 0\.\.31"):
        project_feature_map(make_classifier(), digits(2), 32)
    with pytest.raises(ValueError, match="one per image"):
        project_feature_map(make_classifier(), digits(2), [1, 2, 3])
