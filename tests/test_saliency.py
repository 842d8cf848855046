"""Input gradients and saliency maps against PyTorch and Captum on the same weights (float64).

Every input here is checked to be away from the net's kinks (``ties.kink_margin``): where two max-pool
inputs are nearly equal, which one takes the gradient is decided by rounding, and that differs between
machines, so a comparison there would test rounding, not the library.
"""
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from captum.attr._utils.approximation_methods import approximation_parameters

from test_features import PixelTorch, digits, make_classifier
from ties import kink_margin, kink_pattern, reached_by_kinks
from torch_oracle import rel_err

from npcnn.analysis.saliency import METHODS, ig_points, integrated_gradients, saliency, smoothgrad

# Captum asks for input gradients itself and says so
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

TARGET = np.array([3, 8, 0])
#: float64 rounding moves the net's activations by ~1e-15: an input this far from every kink is tie-free
TIE_FREE = 1e-9
#: float32 rounding moves them by up to ~1.4e-6 here (float32 against float64 twin, both libraries):
#: kinks closer than this may be crossed differently by the two libraries
NEAR_KINK_FLOAT32 = 3e-5


def torch_input_gradient(clf, x, grad_logits):
    xt = torch.tensor(x, requires_grad=True)
    PixelTorch(clf)(xt[:, None]).backward(torch.from_numpy(grad_logits))
    return xt.grad.numpy()


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_input_gradient_equals_torch(batchnorm, dtype, tol):
    clf = make_classifier(batchnorm, dtype=dtype)
    clf.batch_size = 2  # chunks
    x = digits(3).astype(dtype)
    g = np.random.default_rng(1).normal(size=(3, 10)).astype(dtype)
    ours = clf.input_gradient(x, g)
    assert ours.shape == x.shape and ours.dtype == dtype
    ref = torch_input_gradient(clf, x, g)
    if dtype == np.float64:
        assert kink_margin(clf, x) > TIE_FREE
        assert rel_err(ours, ref) < tol
    else:  # tie-aware: compare the pixels that no kink within float32 rounding can reach (most of them)
        stable = ~reached_by_kinks(clf, x, NEAR_KINK_FLOAT32)
        assert stable.mean() > 0.6
        assert rel_err(ours[stable], ref[stable]) < tol


@pytest.mark.parametrize("batchnorm", [False, True])
def test_input_gradient_finite_differences(batchnorm):
    clf = make_classifier(batchnorm)
    rng = np.random.default_rng(2)
    x = digits(2, seed=3)
    g = rng.normal(size=(2, 10))
    f = lambda z: float(np.sum(g * clf.logits(z)))  # noqa: E731
    grad = clf.input_gradient(x, g)
    h = 1e-8  # the input's nearest kink is ~1e-7 away (kink_margin)
    pattern = kink_pattern(clf, x)
    for _ in range(3):  # random directions
        v = rng.normal(size=x.shape)
        # both ends on the same side of every kink as x: the difference quotient is the directional derivative
        assert all(np.array_equal(kink_pattern(clf, x + s * h * v), pattern) for s in (-1, 1))
        numeric = (f(x + h * v) - f(x - h * v)) / (2 * h)
        assert numeric == pytest.approx(np.sum(grad * v), rel=1e-6)
    for (n, i, j) in [(0, 14, 14), (1, 10, 20), (0, 3, 25)]:  # single pixels
        e = np.zeros_like(x)
        e[n, i, j] = h
        assert all(np.array_equal(kink_pattern(clf, x + s * e), pattern) for s in (-1, 1))
        assert (f(x + e) - f(x - e)) / (2 * h) == pytest.approx(grad[n, i, j], rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("output", ["logit", "probability"])
@pytest.mark.parametrize("absolute", [True, False])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_saliency_equals_captum(output, absolute, batchnorm):
    clf = make_classifier(batchnorm)
    x = digits(3)
    assert kink_margin(clf, x) > TIE_FREE
    ours = saliency(clf, x, TARGET, output=output, absolute=absolute)
    ref = Saliency(PixelTorch(clf, output)).attribute(torch.from_numpy(x[:, None]), target=torch.from_numpy(TARGET),
                                                      abs=absolute).detach().numpy()[:, 0]
    assert ours.shape == (3, 28, 28)
    assert rel_err(ours, ref) < 1e-10
    assert (ours >= 0).all() if absolute else (ours < 0).any()


def test_saliency_default_target_is_the_prediction():
    clf = make_classifier()
    x = digits(3)
    np.testing.assert_array_equal(saliency(clf, x), saliency(clf, x, clf.predict(x)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [2, 7, 50])
def test_ig_points_are_captums(method, steps):
    alphas, weights = ig_points(steps, method)
    ref_weights, ref_alphas = (f(steps) for f in approximation_parameters(method))
    # Captum multiplies by torch.tensor(step_sizes).float()
    np.testing.assert_array_equal(weights, np.float32(ref_weights))
    if method == "gausslegendre":
        np.testing.assert_array_equal(alphas, ref_alphas)
    else:  # torch.linspace in float32 vs numpy's rounded to float32: one float32 step at most
        np.testing.assert_allclose(alphas, ref_alphas, rtol=0, atol=6e-8)


@pytest.mark.parametrize("method, steps, tol", [("gausslegendre", 16, 1e-10), ("riemann_trapezoid", 12, 1e-6),
                                                ("riemann_middle", 5, 1e-6)])
@pytest.mark.parametrize("output", ["logit", "probability"])
def test_integrated_gradients_equal_captum(method, steps, tol, output):
    clf = make_classifier(batchnorm=True)
    x = digits(3)
    # a faint-noise baseline, not black: a black image (alpha = 0 of the trapezoid rule) is all ties
    baseline = np.random.default_rng(5).uniform(0, 0.05, x.shape)
    alphas, _ = ig_points(steps, method)
    assert min(kink_margin(clf, baseline + a * (x - baseline)) for a in alphas) > TIE_FREE
    ours = integrated_gradients(clf, x, TARGET, output=output, steps=steps, method=method, batch_size=7,
                                baseline=baseline)
    ref = IntegratedGradients(PixelTorch(clf, output)).attribute(
        torch.from_numpy(x[:, None]), baselines=torch.from_numpy(baseline[:, None]),
        target=torch.from_numpy(TARGET), n_steps=steps, method=method).detach().numpy()[:, 0]
    assert rel_err(ours, ref) < tol


def test_integrated_gradients_completeness_and_baseline():
    clf = make_classifier()
    x = digits(2)
    t = clf.predict(x)
    rows = np.arange(2)
    ig = integrated_gradients(clf, x, t, steps=64)
    gap = clf.logits(x)[rows, t] - clf.logits(np.zeros_like(x))[rows, t]
    np.testing.assert_allclose(ig.sum(axis=(1, 2)), gap, rtol=0.05)  # completeness, up to the quadrature
    baseline = x.copy()
    baseline[:, :14] = 0.2  # the baseline equals the image on the lower half: no attribution there
    ig = integrated_gradients(clf, x, t, steps=8, baseline=baseline)
    np.testing.assert_array_equal(ig[:, 14:], 0)
    assert np.abs(ig[:, :14]).max() > 0
    np.testing.assert_allclose(integrated_gradients(clf, x, t, steps=8, baseline=0.0),
                               integrated_gradients(clf, x, t, steps=8, baseline=np.zeros_like(x)), atol=1e-12)


@pytest.mark.parametrize("absolute", [True, False])
def test_smoothgrad_is_the_mean_saliency_of_noisy_copies(absolute):
    clf = make_classifier()
    x = digits(2)
    t = np.array([4, 9])
    samples, stdev, seed = 4, 0.2, 7
    ours = smoothgrad(clf, x, t, samples=samples, stdev=stdev, absolute=absolute, seed=seed, batch_size=3)
    assert ours.shape == (2, 28, 28)
    noise = np.random.default_rng(seed).normal(0.0, stdev, (samples, 2, 28, 28))
    assert min(kink_margin(clf, x + n) for n in noise) > TIE_FREE
    vanilla = Saliency(PixelTorch(clf))
    per_sample = [vanilla.attribute(torch.from_numpy((x + noise[s])[:, None]), target=torch.from_numpy(t),
                                    abs=absolute).detach().numpy()[:, 0] for s in range(samples)]
    assert rel_err(ours, np.mean(per_sample, axis=0)) < 1e-10
    assert rel_err(ours, saliency(clf, x, t, absolute=absolute)) > 1e-3  # the noise does something
    # the noise stream does not depend on the chunking
    np.testing.assert_allclose(smoothgrad(clf, x, t, samples=samples, stdev=stdev, absolute=absolute, seed=seed,
                                          batch_size=1000), ours, atol=1e-12)


def test_smoothgrad_without_noise_is_captum_noise_tunnel_vanilla():
    clf = make_classifier()
    x = digits(2)
    assert kink_margin(clf, x) > TIE_FREE
    t = np.array([4, 9])
    ours = smoothgrad(clf, x, t, samples=3, stdev=0.0)
    ref = NoiseTunnel(Saliency(PixelTorch(clf))).attribute(
        torch.from_numpy(x[:, None]), nt_type="smoothgrad", nt_samples=3, stdevs=0.0,
        target=torch.from_numpy(t), abs=True).detach().numpy()[:, 0]
    assert rel_err(ours, ref) < 1e-10
    assert rel_err(ours, saliency(clf, x, t)) < 1e-12


@pytest.mark.parametrize("func, kwargs, message", [
    (saliency, {"output": "loss"}, "output must be one of"),
    (saliency, {"target": 10}, "target classes"),
    (integrated_gradients, {"method": "simpson"}, "method must be one of"),
    (integrated_gradients, {"method": "riemann_left", "steps": 1}, "steps >= 2"),
    (integrated_gradients, {"steps": 0}, "steps must be >= 1"),
    (smoothgrad, {"samples": 0}, "samples must be positive"),
    (smoothgrad, {"stdev": -1.0}, "stdev must be >= 0"),
])
def test_bad_arguments_are_clear_errors(func, kwargs, message):
    with pytest.raises(ValueError, match=message):
        func(make_classifier(), digits(1), **kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (28,), (0, 28, 28)])
def test_wrong_image_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="(expected images|no images)"):
        saliency(make_classifier(), np.zeros(shape))
