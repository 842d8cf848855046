"""How far each image is from the net's decision boundary: DeepFool (L2) and the smallest L-inf PGD budget.

* :func:`deepfool`: DeepFool (Moosavi-Dezfooli et al. 2016), L2, with ``torchattacks.DeepFool``'s (3.5.1)
  semantics. Its final perturbation is an estimate of the L2 distance to the nearest boundary.
* :func:`minimal_linf`: the smallest L-inf budget ``eps`` at which seeded PGD flips each image, by
  bisection on ``eps`` per image (:func:`~.pgd` with one ``eps`` per image); returns a
  :class:`MinimalLinfResult`.

Both are upper bounds on the true distance (each finds *an* adversarial image, not the closest one), in
pixel units, within [0, 1].
"""
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from ...progress import progress_bar
from .checks import _as_images, _check_finite, _check_nonnegative, _check_steps, _labels
from .gradient_attacks import pgd
from .result import _finish

DEEPFOOL = {"steps": 50, "overshoot": 0.02}            # torchattacks.DeepFool's defaults
MINIMAL_LINF = {"low": 0.0, "high": 1.0, "tol": 1e-3, "pgd_steps": 20, "seed": 0}


# --------------------------------------------------------------------------- checks

def _check_count(value, name, minimum=1):
    """``value`` as an int >= ``minimum``; else a ValueError naming the setting."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be {'a positive integer' if minimum == 1 else f'an integer >= {minimum}'}, "
                         f"got {value!r}")
    return int(value)


def check_deepfool(steps, overshoot):
    """DeepFool's settings checked (``steps`` a positive integer, ``overshoot`` >= 0), as (int, float)."""
    return _check_steps(steps), _check_nonnegative(overshoot, "overshoot")


def check_search(low, high, tol, pgd_steps):
    """The bisection's settings checked: ``0 <= low < high <= 1``, ``tol > 0``, ``pgd_steps`` >= 1."""
    low, high = float(low), float(high)
    if not (0 <= low < high <= 1):
        raise ValueError(f"low and high must satisfy 0 <= low < high <= 1 (pixel units), got low={low:g}, "
                         f"high={high:g}")
    tol = float(tol)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be > 0 (pixel units), got {tol:g}")
    return low, high, tol, _check_count(pgd_steps, "pgd_steps")


def _true_labels(classifier, labels, n):
    labels = _labels(labels, n)
    bad = labels[(labels < 0) | (labels >= classifier.num_classes)]
    if len(bad):
        raise ValueError(f"labels must be the true classes 0..{classifier.num_classes - 1}, got {bad[0]}")
    return labels


# --------------------------------------------------------------------------- DeepFool

def _jacobian(classifier, x):
    """Logits [M, C] and their input gradients [M, C, 1, H, W] (pixel space) in one forward-backward: C
    copies of each image, copy k back-propagating the one-hot of class k."""
    c = classifier.num_classes
    one_hot = np.tile(np.eye(c, dtype=classifier.dtype), (len(x), 1))
    z, g = classifier.forward_backward(np.repeat(x, c, axis=0), lambda _: one_hot)
    return z[::c], g.reshape((len(x), c) + x.shape[1:])


def _deepfool_step(classifier, s, idx, t):
    """One step for the images ``idx`` (all active): check, then move those still on their label. Updates
    the state ``s`` (adv, active, taken, across, history, labels, others, overshoot, steps) in place."""
    with np.errstate(over="ignore", invalid="ignore"):
        logits, jac = _jacobian(classifier, s.adv[idx])
    f = logits.astype(np.float64)
    w = jac.reshape(len(idx), len(f[0]), -1).astype(np.float64)
    _check_finite("deepfool", t + 1, s.steps, f, w)
    y, rows = s.labels[idx], np.arange(len(idx))
    wrong = s.others[y]                                               # [M, C - 1]
    f_k = np.take_along_axis(f, wrong, axis=1)
    s.history[t, idx] = f[rows, y] - f_k.max(axis=1)
    pred = f.argmax(axis=1)
    go = pred == y
    s.active[idx[~go]] = False
    s.across[idx[~go]] = pred[~go]
    if not go.any():
        return
    idx, f, w, y, wrong, f_k = idx[go], f[go], w[go], y[go], wrong[go], f_k[go]
    rows = np.arange(len(idx))
    f_p = f_k - f[rows, y][:, None]                                   # [M, C - 1]
    w_p = w[rows[:, None], wrong] - w[rows, y][:, None]               # [M, C - 1, HW]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.abs(f_p) / np.sqrt(np.sum(w_p * w_p, axis=2))
        nearest = np.argmin(value, axis=1)
        f_l, w_l = np.abs(f_p[rows, nearest]), w_p[rows, nearest]
        delta = f_l[:, None] * w_l / (np.sqrt(np.sum(w_l * w_l, axis=1)) ** 2)[:, None]
    _check_finite("deepfool", t + 1, s.steps, delta)
    s.across[idx] = wrong[rows, nearest]
    step = ((1 + s.overshoot) * delta).reshape(s.adv[idx].shape)
    s.adv[idx] = np.clip(s.adv[idx].astype(np.float64) + step, 0, 1).astype(classifier.dtype)
    s.taken[idx] += 1


def deepfool(classifier, images, labels, *, steps=DEEPFOOL["steps"], overshoot=DEEPFOOL["overshoot"],
             progress=False):
    """DeepFool (L2), as ``torchattacks.DeepFool(model, steps, overshoot)`` (3.5.1), in pixel space.

    At each step, for every image still classified as its label ``y``: the logits ``f`` and their
    jacobian ``w_k = df_k/dx`` (one batched forward-backward), then for each other class ``k``
    ``f'_k = f_k - f_y``, ``w'_k = w_k - w_y``, the distance to the linearised boundary
    ``|f'_k| / ||w'_k||_2`` and its nearest class ``l``; the step is

        ``x <- clip(x + (1 + overshoot) * |f'_l| w'_l / ||w'_l||^2, 0, 1)``

    (the overshoot multiplies every step, as torchattacks does, not the total perturbation as the
    paper does). An image stops at the first step whose forward pass no longer predicts ``y``; after
    ``steps`` steps it stops whether or not it is fooled (its last update is not re-checked). Ties go
    to the lowest class index, as ``torch.max`` / ``torch.min``. The arithmetic of the step runs in
    float64, the images stay in the classifier's dtype.

    Returns an :class:`AttackResult` ("deepfool", untargeted: ``targets`` -1) whose ``history`` [steps, N]
    holds the margin ``f_y - max_{k != y} f_k`` at the start of each step (carried on once an image stops)
    and whose ``settings`` are ``{"steps", "overshoot", "steps_taken", "boundary_class"}``: ``steps_taken``
    [N] the number of updates each image received (0 for an image misclassified from the start), and
    ``boundary_class`` [N] torchattacks' ``target_labels``: the prediction of an image that stopped fooled,
    else the class of the nearest linearised boundary at its last step (the label if it never stepped).

    Where a step is clipped at 0 or 1 it moves the margin ``f_y - f_l`` by less than ``(1 + overshoot)``
    times itself, and the image can converge onto the boundary without crossing it: the margin shrinks
    to exactly 0 in floating point, where ``|f'_l| = 0`` makes every further step 0 and the prediction
    (a tie, to the lower index) may stay ``y`` for all ``steps``. Such an image lies on the boundary, and
    its L2 is still the distance DeepFool found (the paper puts the overshoot on the total perturbation,
    after the loop, and does not clip).
    """
    steps, overshoot = check_deepfool(steps, overshoot)
    x0, shape = _as_images(classifier, images)
    n, c = len(x0), classifier.num_classes
    labels = _true_labels(classifier, labels, n)
    s = SimpleNamespace(adv=x0.copy(), active=np.ones(n, dtype=bool), taken=np.zeros(n, dtype=np.int64),
                        across=labels.copy(), history=np.zeros((steps, n)), labels=labels, steps=steps,
                        overshoot=overshoot, others=np.array([[k for k in range(c) if k != y] for y in range(c)],
                                                             dtype=np.int64).reshape(c, c - 1))
    chunk = max(1, classifier.batch_size // c)   # images per forward-backward (C copies each)
    for t in progress_bar(range(steps), desc="deepfool", disable=not progress, leave=False):
        if t:
            s.history[t] = s.history[t - 1]
        idx = np.flatnonzero(s.active)
        for i in range(0, len(idx), chunk):
            _deepfool_step(classifier, s, idx[i:i + chunk], t)
    adv, taken, across, history = s.adv, s.taken, s.across, s.history
    settings = {"steps": steps, "overshoot": overshoot, "steps_taken": taken, "boundary_class": across}
    return _finish(classifier, "deepfool", adv, x0, adv - x0, np.full(n, -1), labels, history, shape, settings)


# --------------------------------------------------------------------------- smallest L-inf budget

@dataclass
class MinimalLinfResult:
    """The smallest L-inf budget at which PGD flips each image (:func:`minimal_linf`); pixel units.

    Attributes
    ----------
    eps : ndarray [N]
        The budget found: PGD at ``eps`` flips the image and at ``eps_below`` (at most ``tol`` less) it
        does not. 0 for an image already misclassified; ``inf`` when PGD does not flip it even at ``high``.
    eps_below : ndarray [N]
        The largest budget tried that did not flip the image (``high`` when none did; NaN when the image
        is misclassified to begin with, or flipped already at ``low > 0``).
    images : ndarray
        PGD's image at ``eps`` (the clean image when eps is 0; PGD's image at ``high`` when eps is inf).
    start, labels, probabilities, settings
        The clean images, their true classes, ``classifier.predict_proba(images)``, the settings.
    """

    eps: np.ndarray
    eps_below: np.ndarray
    images: np.ndarray
    start: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def predicted(self):
        return self.probabilities.argmax(axis=1)

    @property
    def success(self):
        """[N] bool: the image at ``eps`` is not predicted as its label."""
        return self.predicted != self.labels

    @property
    def perturbation(self):
        return self.images - self.start

    @property
    def l2(self):
        d = self.perturbation.reshape(len(self.labels), -1).astype(np.float64)
        return np.sqrt(np.sum(d * d, axis=1))

    @property
    def linf(self):
        """[N] the largest pixel change actually made (<= eps)."""
        return np.abs(self.perturbation.reshape(len(self.labels), -1)).max(axis=1).astype(np.float64)


def minimal_linf(classifier, images, labels, *, low=MINIMAL_LINF["low"], high=MINIMAL_LINF["high"],
                 tol=MINIMAL_LINF["tol"], pgd_steps=MINIMAL_LINF["pgd_steps"], seed=MINIMAL_LINF["seed"],
                 progress=False):
    """The smallest L-inf budget (pixel units) at which untargeted PGD flips each image, by bisection.

    ``flips_i(eps)``: :func:`~.pgd` (one eps per image) with ``pgd_steps`` steps of ``2.5 * eps / pgd_steps`` (npcnn's
    :func:`~.pgd` default, Madry et al.'s rule; torchattacks' own default is ``alpha = 2/255``, 10 steps),
    a random start from ``seed`` (the same noise direction at every eps, scaled by it), then
    ``argmax logits != label``. PGD runs on the whole batch each time, one ``eps_i`` per image, so an
    image's outcome depends only on its own eps. The search: images misclassified already get eps 0;
    PGD at ``high``: those it does not flip get ``inf``; at ``low`` (when > 0): those it flips get
    ``low``; the rest bisect ``[lo, hi]`` (``flips(hi)``, not ``flips(lo)``) to ``hi - lo <= tol``,
    i.e. ``ceil(log2((high - low) / tol))`` PGD runs, and return ``eps = hi``, ``eps_below = lo``.

    ``flips(eps)`` need not be monotone in eps (PGD is a heuristic): the result is a transition of
    this PGD within ``tol``, an upper bound on the true smallest L-inf distance to the boundary.
    Defaults: ``low=0, high=1, tol=1e-3, pgd_steps=20, seed=0``. Returns a :class:`MinimalLinfResult`.
    """
    low, high, tol, pgd_steps = check_search(low, high, tol, pgd_steps)
    x0, shape = _as_images(classifier, images)
    n = len(x0)
    labels = _true_labels(classifier, labels, n)
    eps, below = np.zeros(n), np.full(n, np.nan)
    best = x0.copy()
    wrong = classifier.predict(x0) != labels
    rounds = int(np.ceil(np.log2((high - low) / tol)))
    bar = progress_bar(total=rounds + 2, desc="minimal L-inf", disable=not progress, leave=False)

    def flips(budget):
        r = pgd(classifier, x0, labels, budget, steps=pgd_steps, seed=seed)
        bar.update()
        return r.images, r.predicted != labels

    adv, f = flips(np.where(wrong, 0.0, high))
    never = ~wrong & ~f
    eps[never], below[never], best[never] = np.inf, high, adv[never]
    hi, lo = np.full(n, high), np.full(n, low)
    active = ~wrong & f
    best[active] = adv[active]
    at_low = np.zeros(n, dtype=bool)
    if low > 0:
        adv, f = flips(np.where(active, low, 0.0))
        at_low = active & f
        hi[at_low], best[at_low] = low, adv[at_low]
        active &= ~f
    else:
        bar.update()
    while active.any() and np.max(hi[active] - lo[active]) > tol:
        mid = np.where(active, (lo + hi) / 2, 0.0)
        adv, f = flips(mid)
        up, down = active & f, active & ~f
        hi[up], best[up] = mid[up], adv[up]
        lo[down] = mid[down]
    bar.close()
    done = ~wrong & ~never
    eps[done] = hi[done]
    below[done & ~at_low] = lo[done & ~at_low]
    settings = {"low": low, "high": high, "tol": tol, "pgd_steps": pgd_steps, "seed": seed,
                "step_size": "2.5 * eps / pgd_steps", "random_start": True}
    return MinimalLinfResult(eps=eps, eps_below=below, images=best.reshape(shape), start=x0.reshape(shape),
                             labels=labels, probabilities=classifier.predict_proba(best), settings=settings)
