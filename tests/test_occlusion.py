"""Occlusion (npcnn.analysis.occlusion): a plain loop over positions, and Captum, as oracles."""
import numpy as np
import pytest
import torch
from captum.attr import Occlusion

from test_features import PixelTorch, digits, make_classifier

from npcnn.analysis.occlusion import grid_size, occlusion, occlusion_masks


def loop_occlusion(clf, x, target, patch, stride, fill):
    """The obvious version: one position at a time, predict_proba on the occluded copies."""
    (ph, pw), (sh, sw) = patch, stride
    gh, gw = (28 - ph) // sh + 1, (28 - pw) // sw + 1
    prob = np.empty((len(x), gh, gw))
    pred = np.empty((len(x), gh, gw), dtype=np.int64)
    gap = np.empty((len(x), gh, gw))  # between the two most probable classes: is the argmax decided?
    for r in range(gh):
        for c in range(gw):
            occluded = x.copy()
            occluded[:, r * sh:r * sh + ph, c * sw:c * sw + pw] = fill
            p = clf.predict_proba(occluded)
            prob[:, r, c] = p[np.arange(len(x)), target]
            pred[:, r, c] = p.argmax(axis=1)
            top = np.sort(p, axis=1)
            gap[:, r, c] = top[:, -1] - top[:, -2]
    return prob, pred, gap


CASES = [  # patch, stride, fill
    (10, 2, 0.0),        # the report's
    (6, 4, 0.5),         # 28 - 6 not a multiple of 4: the last columns are never covered, nothing wraps
    ((4, 9), (4, 3), 1.0),
    ((28, 6), (1, 11), 0.2),
    (1, 9, 0.0),
]


@pytest.mark.parametrize("patch, stride, fill", CASES)
def test_occlusion_equals_a_plain_loop(patch, stride, fill):
    clf = make_classifier()
    x = digits(2)
    target = np.array([3, 7])
    r = occlusion(clf, x, target, patch=patch, stride=stride, fill=fill, batch_size=17)  # chunks cut mid-image
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    prob, pred, gap = loop_occlusion(clf, x, target, pair(patch), pair(stride), fill)
    assert r.probability.shape == prob.shape
    np.testing.assert_allclose(r.probability, prob, rtol=0, atol=1e-12)
    assert gap.min() > 1e-9  # no two classes within rounding of each other: the predicted class is decided
    np.testing.assert_array_equal(r.predicted, pred)
    if np.prod(pair(patch)) >= 36:
        assert len(np.unique(pred)) > 1  # the patch does change the prediction somewhere
    np.testing.assert_array_equal(r.target, target)
    np.testing.assert_allclose(r.base_probability, clf.predict_proba(x)[np.arange(2), target], atol=1e-12)


def test_report_settings_give_a_10x10_grid_and_default_target_is_the_prediction():
    clf = make_classifier()
    x = digits(2)
    r = occlusion(clf, x)  # patch 10, stride 2
    assert r.probability.shape == r.predicted.shape == (2, 10, 10)
    assert r.attribution.shape == (2, 28, 28)
    np.testing.assert_array_equal(r.target, clf.predict(x))
    rows, cols = r.positions()
    assert rows[-1] + 10 == 28 and cols[-1] + 10 == 28
    np.testing.assert_array_equal(occlusion(clf, x, batch_size=1000).probability, r.probability)


@pytest.mark.parametrize("size, patch, stride", [(28, 10, 2), (28, 5, 3), (28, 28, 1), (28, 1, 1), (28, 9, 20),
                                                  (28, 27, 2)])
def test_grid_size_and_masks_never_wrap(size, patch, stride):
    g = grid_size(size, patch, stride)
    assert g == (size - patch) // stride + 1
    assert (g - 1) * stride + patch <= size < g * stride + patch  # last patch fits; one more would not
    masks = occlusion_masks((size, size), (patch, patch), (stride, stride))
    assert masks.shape == (g * g, size, size)
    for k, m in enumerate(masks):
        r, c = divmod(k, g)
        box = np.zeros((size, size), bool)
        box[r * stride:r * stride + patch, c * stride:c * stride + patch] = True
        assert m.sum() == patch * patch  # the whole patch is on the image
        np.testing.assert_array_equal(m, box)


CAPTUM_CASES = [  # settings where our grid is Captum's: (H - patch) a multiple of the stride
    (10, 2, 0.0),
    ((4, 6), 2, 0.3),
    (7, (3, 7), 1.0),
]


@pytest.mark.parametrize("patch, stride, fill", CAPTUM_CASES)
@pytest.mark.parametrize("batchnorm", [False, True])
def test_attribution_equals_captum_occlusion(patch, stride, fill, batchnorm):
    clf = make_classifier(batchnorm)
    x = digits(2, seed=1)
    target = np.array([2, 5])
    r = occlusion(clf, x, target, patch=patch, stride=stride, fill=fill)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ref = Occlusion(PixelTorch(clf, "probability")).attribute(
        torch.from_numpy(x[:, None]), sliding_window_shapes=(1, ph, pw), strides=(1, sh, sw), baselines=fill,
        target=torch.from_numpy(target), perturbations_per_eval=64)
    ref = ref.detach().numpy()[:, 0]
    assert np.abs(ref).max() > 1e-3
    # Captum sums the differences in float64 but divides in float32 (``single_attrib.float() / weight``
    # in captum/attr/_core/feature_ablation.py): the reference is exact to float32 rounding only
    assert ref.dtype == np.float32
    np.testing.assert_allclose(r.attribution, ref, rtol=2.5e-7, atol=1e-12)


def test_attribution_is_the_mean_drop_over_covering_windows():
    clf = make_classifier()
    x = digits(1)
    r = occlusion(clf, x, [4], patch=(3, 5), stride=(4, 3))  # uncovered rows/columns at the border
    masks = occlusion_masks((28, 28), (3, 5), (4, 3))
    drop = r.base_probability[0] - r.probability[0].ravel()
    for i, j in [(0, 0), (5, 7), (13, 14), (27, 27), (26, 20)]:
        cover = masks[:, i, j]
        expected = drop[cover].mean() if cover.any() else 0.0
        assert r.attribution[0, i, j] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"patch": 29}, "does not fit"),
    ({"patch": (10, 30)}, "does not fit"),
    ({"patch": 0}, "at least 1x1"),
    ({"stride": 0}, "stride must be a positive"),
    ({"stride": -2}, "stride must be a positive"),
    ({"stride": (2, 0)}, "stride must be a positive"),
    ({"patch": 2.5}, "int or a pair"),
    ({"target": 10}, "target classes"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings_are_clear_errors(kwargs, message):
    clf = make_classifier()
    with pytest.raises(ValueError, match=message):
        occlusion(clf, digits(1), **kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (28, 28), (2, 28, 28, 1, 1), (0, 28, 28)])
def test_wrong_image_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="occlusion: (expected images|no images)"):
        occlusion(make_classifier(), np.zeros(shape))
