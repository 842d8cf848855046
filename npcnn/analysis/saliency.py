"""Saliency maps: which pixels move the score of a class, by the gradient.

Three methods, all in pixel space and batched through
:meth:`~npcnn.classifier.Classifier.forward_backward` (one forward and one
input-only backward pass per chunk of images), with Captum's conventions:

* :func:`saliency`: the gradient ``dS_t/dx`` (``captum.attr.Saliency``; its
  ``abs=True`` default is our ``absolute=True``).
* :func:`smoothgrad`: the mean of the saliency of ``samples`` noisy copies
  ``x + N(0, stdev^2)`` (``captum.attr.NoiseTunnel(Saliency(...)).attribute(
  x, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev)``; the absolute
  value, if asked for, is taken per noisy copy, before the mean, as Captum).
* :func:`integrated_gradients`: ``(x - x0) * integral_0^1 dS_t/dx(x0 + a (x - x0)) da``
  by a quadrature over ``steps`` points (``captum.attr.IntegratedGradients``
  with ``n_steps=steps``, ``method=...``; Captum's default ``gausslegendre``).

The score ``S_t`` is the logit of class ``t`` (``output="logit"``) or its
softmax probability (``output="probability"``). ``target=None`` means the
class the net predicts for each image.
"""
import numpy as np

from ..classifier import softmax

OUTPUTS = ("logit", "probability")
METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def _prepare(classifier, images, target):
    images = classifier._as_input(images)[:, 0]
    if len(images) == 0:
        raise ValueError("saliency: no images given")
    if target is None:
        target = classifier.predict(images)
    target = np.broadcast_to(np.asarray(target, dtype=np.int64), (len(images),)).copy()
    if np.any((target < 0) | (target >= classifier.num_classes)):
        raise ValueError(f"saliency: target classes must be in 0..{classifier.num_classes - 1}, got {target.tolist()}")
    return images.astype(classifier.dtype, copy=False), target


def score_gradient(output):
    """``(logits, target) -> dS/dlogits`` for the score ``S`` = the target's logit or probability."""
    if output not in OUTPUTS:
        raise ValueError(f"saliency: output must be one of {', '.join(OUTPUTS)}, got {output!r}")

    def grad(logits, target):
        rows = np.arange(len(target))
        if output == "logit":
            g = np.zeros_like(logits)
            g[rows, target] = 1
            return g
        p = softmax(logits)                      # dp_t/dz_j = p_t (delta_tj - p_j)
        g = -p * p[rows, target][:, None]
        g[rows, target] += p[rows, target]
        return g

    return grad


def _gradients(classifier, images, target, output, batch_size=None):
    """``dS_target/dx`` [M, H, W] for pixel-space images [M, H, W], in chunks of ``batch_size``."""
    grad = score_gradient(output)
    batch_size = int(batch_size or classifier.batch_size)
    out = np.empty(images.shape, dtype=classifier.dtype)
    for i in range(0, len(images), batch_size):
        sl = slice(i, i + batch_size)
        dx = classifier.forward_backward(images[sl], lambda z, t=target[sl]: grad(z, t))[1]
        out[sl] = dx.reshape(out[sl].shape)
    return out


def saliency(classifier, images, target=None, output="logit", absolute=True):
    """Vanilla gradient ``dS_t/dx`` [N, H, W] of ``images`` (its absolute value when ``absolute``), as
    ``captum.attr.Saliency`` (whose ``abs`` is our ``absolute``)."""
    images, target = _prepare(classifier, images, target)
    g = _gradients(classifier, images, target, output)
    return np.abs(g) if absolute else g


def smoothgrad(classifier, images, target=None, output="logit", samples=25, stdev=0.15, absolute=True, seed=0,
               batch_size=None):
    """SmoothGrad [N, H, W]: the mean of :func:`saliency` over ``samples`` copies ``images + noise``.

    ``noise`` has shape [samples, N, H, W], drawn in one stream from
    ``np.random.default_rng(seed)`` as ``normal(0, stdev)``: the result equals
    ``mean_s saliency(images + noise[s])``. No clipping to [0, 1] (as Captum).
    With ``absolute`` the absolute value is taken per noisy copy, before the mean.
    """
    images, target = _prepare(classifier, images, target)
    if int(samples) <= 0:
        raise ValueError(f"smoothgrad: samples must be positive, got {samples}")
    if not stdev >= 0:
        raise ValueError(f"smoothgrad: stdev must be >= 0, got {stdev}")
    rng = np.random.default_rng(seed)
    n = len(images)
    total = int(samples) * n
    batch_size = int(batch_size or classifier.batch_size)
    acc = np.zeros(images.shape, dtype=np.float64)
    for start in range(0, total, batch_size):
        flat = np.arange(start, min(start + batch_size, total))        # (sample, image) pairs, sample-major
        img = flat % n
        noisy = images[img] + rng.normal(0.0, stdev, (len(flat),) + images.shape[1:]).astype(images.dtype)
        g = _gradients(classifier, noisy, target[img], output, batch_size)
        _sum_by_image(acc, img, np.abs(g) if absolute else g)
    return (acc / int(samples)).astype(classifier.dtype)


def _sum_by_image(acc, img, values):
    """``acc[img[k]] += values[k]`` for every k, as one GEMM with a one-hot matrix (images repeat in a batch)."""
    onehot = (np.arange(len(acc))[:, None] == img[None, :]).astype(np.float64)   # (N, B)
    acc += (onehot @ values.reshape(len(img), -1).astype(np.float64)).reshape(acc.shape)


def ig_points(steps, method="gausslegendre"):
    """Captum's quadrature for integrated gradients: (alphas [steps], weights [steps]) on [0, 1].

    ``gausslegendre``: the Gauss-Legendre nodes mapped to [0, 1], exactly
    Captum's. ``riemann_*``: Captum takes the points from ``torch.linspace``
    in float32; here they are the float64 points rounded to float32 (equal
    to within one float32 rounding step, 6e-8). Captum multiplies the
    gradients by the weights converted to float32, and so do we: the same
    numbers, so the results equal Captum's in float64.
    """
    steps = int(steps)
    if method not in METHODS:
        raise ValueError(f"integrated_gradients: method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "gausslegendre":
        if steps < 1:
            raise ValueError(f"integrated_gradients: steps must be >= 1, got {steps}")
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = 0.5 * (1 + nodes), 0.5 * weights
    else:
        if steps < 2:
            raise ValueError(f"integrated_gradients: {method} needs steps >= 2, got {steps}")
        start, end = {"riemann_trapezoid": (0, 1), "riemann_left": (0, 1 - 1 / steps),
                      "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
                      "riemann_right": (1 / steps, 1)}[method]
        alphas = np.linspace(start, end, steps).astype(np.float32).astype(np.float64)
        weights = np.full(steps, 1 / steps)
        if method == "riemann_trapezoid":
            weights[0] /= 2
            weights[-1] /= 2
    return alphas, weights.astype(np.float32).astype(np.float64)


def integrated_gradients(classifier, images, target=None, output="logit", baseline=0.0, steps=50,
                         method="gausslegendre", batch_size=None):
    """Integrated gradients [N, H, W] from ``baseline`` (a pixel value or an array like ``images``; 0 = black).

    For each image ``x`` of ``images`` and its baseline ``x0``:
    ``(x - x0) * sum_k w_k dS_t/dx(x0 + a_k (x - x0))`` with Captum's points
    and weights (:func:`ig_points`); all ``steps * N`` interpolated images go
    through the net in chunks. The attributions sum to about
    ``S_t(x) - S_t(x0)`` (completeness), closer with more steps.
    """
    images, target = _prepare(classifier, images, target)
    alphas, weights = ig_points(steps, method)
    x0 = np.broadcast_to(np.asarray(baseline, dtype=images.dtype), images.shape)
    n = len(images)
    total = len(alphas) * n
    batch_size = int(batch_size or classifier.batch_size)
    acc = np.zeros(images.shape, dtype=np.float64)
    for start in range(0, total, batch_size):
        flat = np.arange(start, min(start + batch_size, total))        # (step, image) pairs, step-major
        step, img = flat // n, flat % n
        a = alphas[step].astype(images.dtype)[:, None, None]
        g = _gradients(classifier, x0[img] + a * (images[img] - x0[img]), target[img], output, batch_size)
        _sum_by_image(acc, img, g * weights[step][:, None, None])
    return ((images - x0) * acc).astype(classifier.dtype)
