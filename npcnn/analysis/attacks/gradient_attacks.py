"""FGSM and PGD with torchattacks' semantics, and accuracy under attack over a test set.

* :func:`fgsm`: one signed gradient step of size ``eps``.
* :func:`pgd`: projected gradient steps in an L-inf box (``norm="linf"``) or an L2 ball (``norm="l2"``).
(:mod:`.evaluation` runs them, and the stronger attacks, over a whole test set.)

All work in pixel space within [0, 1], ``eps`` in pixel units; the objective is the cross-entropy
of the true labels (untargeted) or minus that of the targets (targeted).
"""
import numpy as np

from ...classifier import softmax
from ...progress import progress_bar
from .checks import _as_images, _check_eps, _check_finite, _check_steps, _labels, check_classes
from .result import _finish

NORMS = ("linf", "l2")


def _ce_objective(labels, targets):
    """torchattacks' cost: mean cross-entropy (untargeted) or minus that of the target; per-image values."""
    cls = targets if targets is not None else labels
    sign = -1.0 if targets is not None else 1.0
    rows = np.arange(len(cls))

    def objective(logits):
        shifted = logits.astype(np.float64)
        shifted -= shifted.max(axis=1, keepdims=True)
        ce = np.log(np.sum(np.exp(shifted), axis=1)) - shifted[rows, cls]
        d = softmax(logits)
        d[rows, cls] -= 1
        d *= logits.dtype.type(sign / len(cls))
        return sign * ce, d

    return objective


def _ce_gradient(classifier, x, objective):
    box = {}

    def grad_fn(logits):
        box["value"], d = objective(logits)
        return d

    _, g = classifier.forward_backward(x, grad_fn)
    return box["value"], g


def _prepare(classifier, images, labels, targets, eps):
    """Checked settings; ``eps`` a number, or one per image ([N], for PGD)."""
    x0, shape = _as_images(classifier, images)
    eps = (_check_eps(eps) if np.ndim(eps) == 0 else
           np.broadcast_to(np.asarray([_check_eps(e) for e in np.ravel(eps)], dtype=np.float64), (len(x0),)))
    labels = _labels(labels, len(x0))
    if targets is not None:
        targets = check_classes(classifier, targets)
        if len(targets) != len(x0):
            raise ValueError(f"{len(x0)} images but {len(targets)} targets")
    elif np.any(labels < 0):
        raise ValueError("an untargeted attack needs the true labels")
    return eps, x0, shape, labels, targets


def fgsm(classifier, images, labels, eps, *, targets=None):
    """Fast gradient sign method, as ``torchattacks.FGSM``: ``x' = clip(x + eps * sign(grad), 0, 1)``.

    ``grad`` is the gradient of the batch-mean cross-entropy of the true labels (untargeted), or of
    minus that of ``targets`` (targeted, as ``set_mode_targeted_by_label``). ``eps`` in pixel units.
    """
    if np.ndim(eps):
        raise ValueError("fgsm takes one eps for the batch")
    eps, x0, shape, labels, targets = _prepare(classifier, images, labels, targets, eps)
    with np.errstate(over="ignore", invalid="ignore"):
        value, g = _ce_gradient(classifier, x0, _ce_objective(labels, targets))
    _check_finite("fgsm", 1, 1, value, g)
    dt = classifier.dtype.type
    adv = np.clip(x0 + dt(eps) * np.sign(g), 0, 1).astype(classifier.dtype, copy=False)
    settings = {"eps": eps}
    t = targets if targets is not None else np.full(len(x0), -1)
    return _finish(classifier, "fgsm", adv, x0, adv - x0, t, labels, value[None], shape, settings)


def pgd(classifier, images, labels, eps, *, norm="linf", step_size=None, steps=10, targets=None, random_start=True,
        seed=0, progress=False, probabilities=True):
    """Projected gradient descent, as ``torchattacks.PGD`` (``norm="linf"``) and ``PGDL2`` (``norm="l2"``).

    L-inf step: ``x += step_size * sign(grad)``, then back into the eps box around the clean image and
    into [0, 1]. L2 step: ``x += step_size * grad / (||grad|| + 1e-10)``, then scaled back into the L2
    ball of radius eps and clipped to [0, 1]. ``grad`` as in :func:`fgsm`. ``step_size`` defaults to
    ``2.5 * eps / steps``. ``random_start`` draws from ``np.random.default_rng(seed)``: uniform in the
    box (L-inf), or a random direction with a uniform radius in [0, eps] (L2), then clipped to [0, 1].
    ``eps`` may be one number per image ([N]): each image then has its own box (or ball) and default step
    size, and its iterates do not depend on the others' budgets (with all equal, the result is the same,
    bit for bit, as with the one number). ``probabilities=False`` skips the final forward pass that fills
    the result's ``probabilities`` (left None): the adversarial trainer needs only the images.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    steps = _check_steps(steps)
    eps, x0, shape, labels, targets = _prepare(classifier, images, labels, targets, eps)
    if step_size is not None and not (np.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"step size must be >= 0, got {step_size}")
    dt = classifier.dtype.type
    n = len(x0)
    e = np.reshape(eps, (-1, 1, 1, 1)) if np.ndim(eps) else np.float64(eps)   # per image, or one number
    alpha = 2.5 * e / steps if step_size is None else np.float64(step_size)
    adv = x0.copy()
    if random_start:
        rng = np.random.default_rng(seed)
        if norm == "linf":
            adv = adv + (-e + 2 * e * rng.random(adv.shape)).astype(classifier.dtype)   # = rng.uniform(-e, e)
        else:
            d = rng.standard_normal(adv.shape)
            d *= (rng.uniform(0, 1, size=n) * np.ravel(e) / np.linalg.norm(d.reshape(n, -1), axis=1))[:, None, None,
                                                                                                          None]
            adv = adv + d.astype(classifier.dtype)
        adv = np.clip(adv, 0, 1)
    e, alpha = np.asarray(e).astype(dt), np.asarray(alpha).astype(dt)
    e_flat = np.ravel(e) if np.ndim(e) else e
    objective = _ce_objective(labels, targets)
    history = np.empty((steps, n), dtype=np.float64)
    name = "pgd" if norm == "linf" else "pgd-l2"
    for t in progress_bar(range(steps), desc=name, disable=not progress, leave=False):
        with np.errstate(over="ignore", invalid="ignore"):
            history[t], g = _ce_gradient(classifier, adv, objective)
        _check_finite(name, t + 1, steps, history[t], g)
        if norm == "linf":
            adv = adv + alpha * np.sign(g)
            delta = np.clip(adv - x0, -e, e)
        else:
            gnorm = np.sqrt(np.sum((g * g).reshape(n, -1), axis=1)) + dt(1e-10)
            adv = adv + alpha * (g / gnorm[:, None, None, None])
            delta = adv - x0
            dnorm = np.sqrt(np.sum((delta * delta).reshape(n, -1), axis=1))
            with np.errstate(divide="ignore"):
                factor = np.minimum(e_flat / dnorm, dt(1))
            delta = delta * factor[:, None, None, None]
        adv = np.clip(x0 + delta, 0, 1).astype(classifier.dtype, copy=False)
    settings = {"eps": eps, "norm": norm, "step_size": 2.5 * eps / steps if step_size is None else step_size,
                "steps": steps, "random_start": bool(random_start), "seed": seed}
    tgt = targets if targets is not None else np.full(n, -1)
    return _finish(classifier, name, adv, x0, adv - x0, tgt, labels, history, shape, settings, probabilities)
