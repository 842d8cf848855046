"""Regularisers for :func:`~npcnn.analysis.attacks.class_images`: images a person can read.

Maximising one logit alone over an unbounded image gives saturated texture: nothing in the objective
asks the image to look like anything. Each regulariser here adds one preference, after Simonyan et al.
(2014, "Deep inside convolutional networks") and Yosinski et al. (2015, "Understanding neural networks
through deep visualization"); jitter is DeepDream's (Mordvintsev et al. 2015). ``x`` is the pixel-space
image, ``v`` the iterate in the optimisation space (``x = v * std + mean`` in the normalised space,
``x = v`` in pixel space), ``f`` the class's score (its logit or its log-probability).

* **L2 penalty** (Simonyan et al.): maximise ``f(x) - l2 * ||x||^2``, the norm in *pixel* space, so it
  pulls every pixel towards 0, MNIST's background (in the normalised space it would pull towards the
  data set's mean grey, 0.13). Its gradient is ``-2 * l2 * x`` in pixel space, ``-2 * l2 * x * std`` in
  the normalised one (chain rule through ``x = v * std + mean``); it is added to the net's gradient
  before Adam's step, so Adam sees one objective.
* **Gaussian blur** (Yosinski et al.): every ``blur_every`` steps the iterate itself is replaced by
  ``G_sigma * v``, a separable Gaussian of standard deviation ``sigma`` pixels (truncated at 4 sigma,
  borders mirrored: ``scipy.ndimage.gaussian_filter``'s defaults). The kernel sums to 1 and a mirrored
  border keeps a constant image constant, so the blur commutes with ``x = v * std + mean``: it does the
  same in either space. It is not a gradient step: it removes the high frequencies the net's gradient
  puts in and Adam's state does not see it. A blur cannot leave [low, high].
* **Jitter** (DeepDream): each step the net is shown the image shifted by ``(dy, dx)``, each drawn
  uniformly from ``-jitter..jitter`` (one shift for the whole batch, ``np.roll``, wrapping round: MNIST's
  4-pixel empty border makes a wrap of 1-2 pixels harmless), and the gradient is shifted back before
  Adam's step. The iterate does not move; the step ascends ``f`` at a random translate of it, a
  stochastic gradient of ``E_shift f(shift(x))``: the image is asked to score well when moved a little,
  which a pixel pattern that exploits one alignment does not.
"""
import numpy as np

#: the Gaussian is cut at this many standard deviations (scipy.ndimage.gaussian_filter's default)
TRUNCATE = 4.0

#: the recommended regularised set for 28 x 28 digits (see class_images; why each value: the README of
#: this module's docstring and the measurements in the tests)
REGULARIZED = {"steps": 500, "lr": 0.05, "space": "pixel", "bounds": (0.0, 1.0), "start": (0.0, 0.1),
               "score": "logit", "l2": 0.05, "blur_every": 2, "blur_sigma": 0.6, "jitter": 2}
#: the keywords of class_images a settings dict may hold
SETTINGS = ("steps", "lr", "seed", "space", "bounds", "image_shape", "score", "start", "l2", "blur_every",
            "blur_sigma", "jitter", "progress")


def regularized(**overrides):
    """A copy of :data:`REGULARIZED` with ``overrides``: ``class_images(clf, **regularized(steps=1000))``."""
    bad = [k for k in overrides if k not in SETTINGS]
    if bad:
        raise ValueError(f"unknown class-image setting {bad[0]!r}; the settings are {', '.join(SETTINGS)}")
    return {**REGULARIZED, **overrides}


def check_regularizers(l2, blur_every, blur_sigma, jitter):
    """The settings as (float, int, float, int); a one-line ValueError naming a bad one and its range."""
    l2 = _number(l2, "l2")
    blur_sigma = _number(blur_sigma, "blur_sigma")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0 (0 = no penalty), got {l2:g}")
    if not (np.isfinite(blur_sigma) and blur_sigma >= 0):
        raise ValueError(f"blur_sigma must be a finite number >= 0 pixels (0 = no blur), got {blur_sigma:g}")
    if not _is_int(blur_every) or blur_every < 1:
        raise ValueError(f"blur_every must be an integer >= 1 (steps between blurs), got {blur_every!r}")
    if not _is_int(jitter) or jitter < 0:
        raise ValueError(f"jitter must be an integer >= 0 (pixels; 0 = no shift), got {jitter!r}")
    return l2, int(blur_every), blur_sigma, int(jitter)


def _number(value, name):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _is_int(value):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer, float, np.floating)) \
        and float(value) == int(value)


def gaussian_kernel(sigma, truncate=TRUNCATE):
    """The 1-D Gaussian weights ``exp(-k^2 / (2 sigma^2))`` for ``k = -r..r``, ``r = int(truncate * sigma + 0.5)``,
    divided by their sum (float64)."""
    r = int(truncate * float(sigma) + 0.5)
    k = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def gaussian_blur(images, sigma, truncate=TRUNCATE):
    """Blur ``images`` [..., H, W] over their last two axes with a Gaussian of ``sigma`` pixels; a new array.

    Separable: one 1-D pass down the columns, one along the rows, each a weighted sum of shifted copies
    of the image padded by mirroring (``d c b a | a b c d``, scipy's "reflect"). ``sigma == 0``: a copy.
    Equals ``scipy.ndimage.gaussian_filter(x, (0, .., sigma, sigma))`` to rounding.
    """
    x = np.asarray(images)
    if sigma == 0:
        return x.copy()
    w = gaussian_kernel(sigma, truncate).astype(x.dtype if x.dtype.kind == "f" else np.float64)
    r = len(w) // 2
    for axis in (-2, -1):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        p = np.pad(x, pad, mode="symmetric")
        out = np.zeros_like(x, dtype=w.dtype)
        for j, wj in enumerate(w):
            out += wj * np.take(p, np.arange(j, j + n), axis=axis)
        x = out
    return x


def jitter_shifts(jitter, steps, seed):
    """The shifts ``(dy, dx)`` of every step, [steps, 2] ints in ``-jitter..jitter``, from
    ``np.random.default_rng(seed)``; all zero when ``jitter == 0``."""
    if jitter == 0:
        return np.zeros((steps, 2), dtype=np.int64)
    return np.random.default_rng(seed).integers(-jitter, jitter + 1, size=(steps, 2))


def shift(images, dy_dx):
    """``images`` [..., H, W] rolled by ``(dy, dx)`` pixels (``np.roll``; a negative shift undoes it)."""
    return np.roll(images, tuple(int(s) for s in dy_dx), axis=(-2, -1))


def l2_penalty(x, l2):
    """``l2 * ||x||^2`` per image ([N] float64) and its gradient ``2 * l2 * x`` (pixel space, x's dtype)."""
    flat = x.reshape(len(x), -1)
    return l2 * np.sum(flat.astype(np.float64) ** 2, axis=1), x * x.dtype.type(2 * l2)


class JitteredSpace:
    """An optimisation space (see ``adam_loops._Space``) whose net sees a shifted image.

    ``to_pixel(v)``, called once per step by the Adam loop before the forward pass, takes the next shift
    and returns the shifted pixel image; ``pixel_grad_to_space(g)`` shifts the gradient back. Everything
    else is the wrapped space's.
    """

    def __init__(self, space, shifts):
        self.space, self.shifts, self.t = space, shifts, -1

    def __getattr__(self, name):
        return getattr(self.space, name)

    def to_pixel(self, v):
        self.t += 1
        return shift(self.space.to_pixel(v), self.shifts[self.t])

    def pixel_grad_to_space(self, g):
        return self.space.pixel_grad_to_space(shift(g, -self.shifts[self.t]))


def check_start(start):
    """The start noise's range ``(low, high)`` in pixels, ``0 <= low <= high <= 1``; a one-line ValueError otherwise."""
    try:
        low, high = (float(s) for s in start)
    except (TypeError, ValueError):
        raise ValueError(f"start must be (low, high), the range of the start noise in pixels, got {start!r}") from None
    if not 0 <= low <= high <= 1:
        raise ValueError(f"start must be (low, high) with 0 <= low <= high <= 1, got ({low:g}, {high:g})")
    return low, high


def class_mean_correlation(images, train_images, train_labels, classes):
    """Per image, the Pearson correlation over its pixels with the mean training image of its class.

    ``images`` [K, H, W] (or [K, 1, H, W]), ``train_images`` [N, H, W] (uint8 or floats: a correlation does
    not see the scale), ``train_labels`` [N], ``classes`` [K] the class of each image. Returns [K] float64,
    each in [-1, 1]; NaN for a constant image (its correlation is undefined).
    """
    x = np.asarray(images, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(x) != len(classes):
        raise ValueError(f"class_mean_correlation: {len(x)} images but {len(classes)} classes")
    train_images, train_labels = np.asarray(train_images), np.asarray(train_labels).reshape(-1)
    x = x.reshape(len(x), -1)
    out = np.empty(len(x), dtype=np.float64)
    for i, c in enumerate(classes):
        mask = train_labels == c
        if not mask.any():
            raise ValueError(f"class_mean_correlation: no training image of class {c}")
        m = train_images[mask].mean(axis=0, dtype=np.float64).reshape(-1)
        if m.size != x.shape[1]:
            raise ValueError(f"class_mean_correlation: images have {x.shape[1]} pixels, training images {m.size}")
        a, b = x[i] - x[i].mean(), m - m.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))
    return out


#: what class_images maximises: the class's logit (the report) or its log-probability
SCORES = ("logit", "log_softmax")


def class_objective(targets, score, l2, space):
    """``objective(logits, v) -> (value [N], d value / d logits, d value / dv from the penalty or None)``
    for the Adam loop: ``score_c - l2 * ||x||^2``, ``x = space.to_pixel(v)``.

    ``"logit"``: ``logit_c``, d/dlogits = onehot. ``"log_softmax"``: ``logit_c - logsumexp(logits)``,
    d/dlogits = ``onehot - softmax``. The penalty's gradient ``-2 * l2 * x`` goes through ``dx/dv``.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    rows = np.arange(len(targets))

    def objective(logits, v):
        value = logits[rows, targets].astype(np.float64)
        dlogits = np.zeros_like(logits)
        dlogits[rows, targets] = 1
        if score == "log_softmax":
            z = logits.astype(np.float64)
            lse = z.max(axis=1, keepdims=True)
            lse = lse + np.log(np.sum(np.exp(z - lse), axis=1, keepdims=True))
            value = value - lse[:, 0]
            dlogits = dlogits - np.exp(z - lse).astype(logits.dtype)
        if not l2:
            return value, dlogits, None
        penalty, grad = l2_penalty(space.to_pixel(v), l2)
        return value - penalty, dlogits, -space.pixel_grad_to_space(grad)

    return objective


def project_ink(x, ink, iters=60):
    """Project pixel images ``x`` [N, ...] onto ``{0 <= x <= 1, mean(x) <= ink}`` (Euclidean); a new array.

    The projection is ``clip(x - tau, 0, 1)`` with one ``tau >= 0`` per image: 0 when the clipped image
    already has mean <= ink, else the one where the mean is ``ink`` (the mean falls as tau grows; found
    by bisection on [0, max x], ``iters`` halvings, float64). A soft threshold: the faintest pixels go to
    0 first, the way an L1 budget (the total ink) makes a sparse image.
    """
    x64 = np.asarray(x, dtype=np.float64)
    flat = x64.reshape(len(x64), -1)
    lo = np.zeros(len(flat))
    hi = np.maximum(flat.max(axis=1), 0.0)
    over = np.clip(flat, 0, 1).mean(axis=1) > ink
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_much = np.clip(flat - mid[:, None], 0, 1).mean(axis=1) > ink
        lo, hi = np.where(too_much, mid, lo), np.where(too_much, hi, mid)
    tau = np.where(over, hi, 0.0)
    return np.clip(flat - tau[:, None], 0, 1).reshape(x64.shape).astype(np.asarray(x).dtype)
