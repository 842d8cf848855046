"""Strong attacks for an honest robustness evaluation: PGD with random restarts, and Auto-PGD.

* :func:`pgd_restarts`: :func:`~.gradient_attacks.pgd` from ``restarts`` random starts; an image counts as
  robust only if every restart fails (torchattacks' ``MultiAttack`` rule, Madry et al.'s mnist_challenge).
* :func:`apgd`: Auto-PGD (Croce & Hein 2020) with the cross-entropy or the DLR loss, as ``torchattacks.APGD``
  3.5.1, step for step.
* :func:`apgdt`: its targeted version with the targeted DLR loss, as ``torchattacks.APGDT`` (L-inf).

All work in pixel space within [0, 1], ``eps`` in pixel units (one number, or one per image), and take
one forward and one backward pass of the whole batch per step (``classifier.forward_backward``).

The APGD step (L-inf), with ``P`` the projection onto the eps box around the clean ``x`` and [0, 1]::

    z      = P(x_k + eta_k * sign(grad L(x_k)))
    x_k+1  = P(x_k + a (z - x_k) + (1 - a)(x_k - x_k-1)),       a = 1 at the first step, 0.75 after

(L2: ``grad / ||grad||`` instead of the sign, ``P`` onto the L2 ball.) The step size starts at ``eta = 2 eps``
and is halved, per image, at checkpoints: the first after ``p = max(int(0.22 steps), 1)`` steps, each next
interval ``max(int(0.03 steps), 1)`` steps shorter, but never shorter than ``max(int(0.06 steps), 1)``. At a
checkpoint an image's step is halved (and it goes back to its best point so far, with that point's gradient)
when its loss rose in at most ``rho * p`` of the last ``p`` steps (p the current interval), or when the step was
not halved at the previous checkpoint and the best loss has not improved since. (As in torchattacks, "the last p
steps" at the first checkpoint compare the first step's loss with 0, a history row not yet written, instead of
with the start's loss.)

The DLR loss (logits z sorted z_(1) >= z_(2) >= ...)::

    DLR(z, y)      = -(z_y - max_{i != y} z_i) / (z_(1) - z_(3) + 1e-12)
    DLR_t(z, y, t) = -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)          (targeted, APGD-T)
"""
import numpy as np

from ...classifier import softmax
from ...progress import progress_bar
from .checks import _check_finite, _check_steps
from .gradient_attacks import NORMS, _prepare, pgd
from .result import _finish

LOSSES = ("ce", "dlr")


def _check_count(value, name):
    try:
        ok = not isinstance(value, bool) and float(value).is_integer() and value >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_common(norm, steps, rho=0.5):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not (np.isfinite(rho) and 0 < rho < 1):
        raise ValueError(f"rho must be in (0, 1), got {rho!r}")
    return _check_steps(steps)


def _objective(kind, labels, targets=None, scale=1.0):
    """Per-image loss values (float64) and the gradient of ``scale * sum(loss)`` w.r.t. the logits.

    ``kind``: "ce" (cross-entropy), "dlr", or "dlr-t" (targeted DLR towards ``targets``).
    """
    rows = np.arange(len(labels))

    def objective(logits):
        z = logits.astype(np.float64)
        if kind == "ce":
            shifted = z - z.max(axis=1, keepdims=True)
            d = softmax(logits)
            d[rows, labels] -= 1
            d *= logits.dtype.type(scale)
            return np.log(np.sum(np.exp(shifted), axis=1)) - shifted[rows, labels], d
        order = np.argsort(z, axis=1)          # ascending, as torch.sort: order[:, -1] is the top class
        zs = np.take_along_axis(z, order, axis=1)
        d = np.zeros_like(z)
        if kind == "dlr":
            ind = (order[:, -1] == labels).astype(np.float64)          # 1 where the top class is the label
            num = z[rows, labels] - zs[:, -2] * ind - zs[:, -1] * (1.0 - ind)
            den = zs[:, -1] - zs[:, -3] + 1e-12
            other = np.where(ind == 1, order[:, -2], order[:, -1])
            top = [(order[:, -1], 1.0), (order[:, -3], -1.0)]
        else:
            num = z[rows, labels] - z[rows, targets]
            den = zs[:, -1] - 0.5 * zs[:, -3] - 0.5 * zs[:, -4] + 1e-12
            other = targets
            top = [(order[:, -1], 1.0), (order[:, -3], -0.5), (order[:, -4], -0.5)]
        d[rows, labels] -= scale / den           # L = -num / den: dL/dnum = -1 / den, dL/dden = num / den^2
        d[rows, other] += scale / den
        for cls, w in top:
            d[rows, cls] += w * scale * num / den ** 2
        return -num / den, d.astype(logits.dtype)

    return objective


def _step(classifier, x, y, objective, what, step, steps):
    """One forward + backward: (loss [n] float64, input gradient, still classified right [n])."""
    box = {}

    def grad_fn(logits):
        box["value"], d = objective(logits)
        box["right"] = logits.argmax(axis=1) == y
        return d

    with np.errstate(over="ignore", invalid="ignore"):
        _, g = classifier.forward_backward(x, grad_fn)
    _check_finite(what, step, steps, box["value"], g)
    return box["value"], g, box["right"]


def _per_image(eps, n, dtype):
    return np.broadcast_to(np.asarray(eps, dtype=np.float64), (n,)).reshape(-1, 1, 1, 1).astype(dtype)


# --------------------------------------------------------------------------- PGD with restarts

def pgd_restarts(classifier, images, labels, eps, *, restarts=5, steps=10, step_size=None, seed=0, norm="linf",
                 progress=False):
    """PGD (:func:`~.gradient_attacks.pgd`, torchattacks' steps) from ``restarts`` random starts.

    Restart ``r`` is ``pgd(..., seed=seed)`` (r = 0) or ``pgd(..., seed=[seed, r])`` (r >= 1), on the whole
    batch (simple to check, at the cost of attacking images an earlier restart already fooled; the restarts
    stop once every image is fooled). Per image the result keeps the first restart that fools it (torchattacks'
    ``MultiAttack``); an image no restart fools (robust: every restart failed, as in Madry et al.'s
    mnist_challenge) keeps the restart with the highest cross-entropy at its final image (the earliest on a tie;
    ``MultiAttack`` would return the clean image there, with the same accuracy). ``history`` is [steps, N]: the
    kept restart's. ``settings["fooled_per_restart"]``: how many images each restart fooled first.
    ``step_size`` defaults to ``2.5 * eps / steps``.
    """
    restarts = _check_count(restarts, "restarts")
    steps = _check_common(norm, steps)
    eps, x0, shape, labels, _ = _prepare(classifier, images, labels, None, eps)
    n = len(x0)
    best, best_loss, history = x0.copy(), np.full(n, -np.inf), np.zeros((steps, n), dtype=np.float64)
    left = np.ones(n, dtype=bool)           # not fooled by any restart so far
    fooled_per_restart = []
    for r in progress_bar(range(restarts), desc=f"pgd x{restarts}", disable=not progress, leave=False):
        run = pgd(classifier, x0, labels, eps, norm=norm, step_size=step_size, steps=steps,
                  seed=seed if r == 0 else [*np.atleast_1d(seed).tolist(), r])
        logits = classifier.logits(run.images).astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        loss = np.log(np.sum(np.exp(shifted), axis=1)) - shifted[np.arange(n), labels]
        fooled = logits.argmax(axis=1) != labels
        keep = left & (fooled | (loss > best_loss))
        best[keep], best_loss[keep], history[:, keep] = run.images.reshape(x0.shape)[keep], loss[keep], \
            run.history[:, keep]
        fooled_per_restart.append(int(np.sum(left & fooled)))
        left &= ~fooled
        if not left.any():
            break
    settings = {**run.settings, "restarts": restarts, "fooled_per_restart": fooled_per_restart}
    return _finish(classifier, f"{run.attack}-restarts", best, x0, best - x0, np.full(n, -1), labels, history,
                   shape, settings)


def _apgd_run(classifier, x, y, e, u, objective, steps, rho, norm, what):
    """One APGD run from the random draw ``u``, as ``APGD.attack_single_run``.

    Returns (still classified right [n], the last misclassified iterate (the start if none), loss history).
    """
    dt = classifier.dtype.type
    n = len(x)
    k, k_min, k_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    if norm == "linf":
        t = 2 * u - 1
        x_adv = x + e * t / np.abs(t.reshape(n, -1)).max(axis=1).reshape(-1, 1, 1, 1)
    else:
        x_adv = x + e * u / (np.sqrt(np.sum(u ** 2, axis=(1, 2, 3), keepdims=True)) + dt(1e-12))
    x_adv = np.clip(x_adv, 0, 1)
    lo, hi = x - e, x + e

    def l2_project(v):
        d = v - x
        dn = np.sqrt(np.sum(d ** 2, axis=(1, 2, 3), keepdims=True))
        return d, dn

    loss_best, g, right = _step(classifier, x_adv, y, objective, what, 0, steps)
    x_best, x_best_adv, g_best, right = x_adv.copy(), x_adv.copy(), g.copy(), right.copy()
    eta = e * dt(2.0)
    x_old = x_adv.copy()
    history = np.zeros((steps, n), dtype=np.float64)
    since, loss_last, reduced_last = 0, loss_best.copy(), np.ones(n, dtype=bool)
    for i in range(steps):
        grad2 = x_adv - x_old
        x_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        if norm == "linf":
            z = np.clip(np.minimum(np.maximum(x_adv + eta * np.sign(g), lo), hi), 0, 1)
            x_adv = np.clip(np.minimum(np.maximum(x_adv + (z - x_adv) * a + grad2 * (1 - a), lo), hi), 0, 1)
        else:
            z = x_adv + eta * g / (np.sqrt(np.sum(g ** 2, axis=(1, 2, 3), keepdims=True)) + dt(1e-12))
            d, dn = l2_project(z)
            z = np.clip(x + d / (dn + dt(1e-12)) * np.minimum(e, dn), 0, 1)
            d, dn = l2_project(x_adv + (z - x_adv) * a + grad2 * (1 - a))
            x_adv = np.clip(x + d / (dn + dt(1e-12)) * np.minimum(e, dn + dt(1e-12)), 0, 1)
        loss, g, now_right = _step(classifier, x_adv, y, objective, what, i + 1, steps)
        right &= now_right
        x_best_adv[~now_right] = x_adv[~now_right]
        history[i] = loss
        better = loss > loss_best
        x_best[better], g_best[better], loss_best[better] = x_adv[better], g[better], loss[better]
        since += 1
        if since == k:                                   # a checkpoint
            rose = sum(history[i - c] > history[i - c - 1] for c in range(k))   # row -1: not yet written (0)
            halve = (rose <= k * rho) | (~reduced_last & (loss_last >= loss_best))
            reduced_last, loss_last = halve.copy(), loss_best.copy()
            if halve.any():
                eta[halve] /= 2.0
                x_adv[halve], g[halve] = x_best[halve], g_best[halve]
            since, k = 0, max(k - k_decr, k_min)
    return right, x_best_adv, history


def _apgd_restarts(classifier, name, x0, shape, labels, eps, runs, steps, rho, norm, seed, progress, settings):
    """torchattacks' ``perturb(cheap=True)``: each run in ``runs`` (restarts, and target classes for APGD-T)
    attacks the images still classified right; one ``np.random.default_rng(seed)`` draws every start."""
    dt, n = classifier.dtype, len(x0)
    e = _per_image(eps, n, dt)
    logits0 = classifier.logits(x0)
    right = logits0.argmax(axis=1) == labels
    adv = x0.copy()
    history = np.repeat(_objective(runs[0][0], labels, runs[0][1])(logits0)[0][None], steps, axis=0)
    rng = np.random.default_rng(seed)
    for j, (kind, targets) in enumerate(progress_bar(runs, desc=name, disable=not progress, leave=False)):
        idx = np.flatnonzero(right)
        if not len(idx):
            continue
        size = (len(idx),) + x0.shape[1:]
        u = rng.random(size, dtype=dt) if norm == "linf" else rng.standard_normal(size, dtype=dt)
        objective = _objective(kind, labels[idx], None if targets is None else targets[idx])
        still, adv_j, hist = _apgd_run(classifier, x0[idx], labels[idx], e[idx], u, objective, steps, rho, norm,
                                       f"{name} (run {j + 1} of {len(runs)})")
        right[idx[~still]] = False
        adv[idx[~still]] = adv_j[~still]
        history[:, idx] = hist
    return _finish(classifier, name, adv, x0, adv - x0, np.full(n, -1), labels, history, shape, settings)


def apgd(classifier, images, labels, eps, *, norm="linf", loss="ce", steps=100, n_restarts=1, seed=0, rho=0.75,
         progress=False):
    """Auto-PGD (Croce & Hein 2020), untargeted, as ``torchattacks.APGD`` 3.5.1 (``eot_iter=1``).

    ``loss``: "ce" (cross-entropy) or "dlr" (see the module). Images the net already gets wrong are not
    attacked. Each of the ``n_restarts`` runs attacks the images no earlier run fooled, from a random start
    on the sphere of the ball: L-inf ``x + eps * t / max|t|``, t = 2 U - 1, U uniform in [0, 1) (torch.rand),
    L2 ``x + eps * t / ||t||``, t standard normal (torch.randn); both then clipped to [0, 1]. Every draw comes
    from one ``np.random.default_rng(seed)``, in torchattacks' order (torch's generator would give other
    numbers: tests/test_strong.py hands torchattacks these draws). A fooled image returns the last iterate
    that fooled it in the run that fooled it; any other image returns clean, as torchattacks does.
    ``history`` [steps, N]: the loss per step of the last run on each image (the clean loss if none ran).
    """
    steps = _check_common(norm, steps, rho)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    n_restarts = _check_count(n_restarts, "n_restarts")
    eps, x0, shape, labels, _ = _prepare(classifier, images, labels, None, eps)
    settings = {"eps": eps, "norm": norm, "loss": loss, "steps": steps, "n_restarts": n_restarts, "seed": seed,
                "rho": rho}
    name = f"apgd-{loss}" if norm == "linf" else f"apgd-{loss}-l2"
    return _apgd_restarts(classifier, name, x0, shape, labels, eps, [(loss, None)] * n_restarts, steps, rho, norm,
                          seed, progress, settings)


def apgdt(classifier, images, labels, eps, *, steps=100, n_restarts=1, n_target_classes=None, seed=0, rho=0.75,
          progress=False):
    """Targeted Auto-PGD (APGD-T, L-inf), as ``torchattacks.APGDT`` 3.5.1 with ``n_classes`` the net's classes.

    For each target rank c = 2 .. n_target_classes + 1 (default: every class but the top one), the images
    still classified right get ``n_restarts`` runs of :func:`apgd`'s loop on the targeted DLR loss, pushing
    towards the class with the c-th largest clean logit. Draws, restarts and returned images as :func:`apgd`.
    """
    steps = _check_common("linf", steps, rho)
    n_restarts = _check_count(n_restarts, "n_restarts")
    c = classifier.num_classes
    n_target_classes = c - 1 if n_target_classes is None else _check_count(n_target_classes, "n_target_classes")
    if c < 4 or n_target_classes > c - 1:
        raise ValueError(f"n_target_classes must be at most {c - 1} (and the net needs 4+ classes), "
                         f"got {n_target_classes}")
    eps, x0, shape, labels, _ = _prepare(classifier, images, labels, None, eps)
    order = np.argsort(classifier.logits(x0), axis=1)
    runs = [("dlr-t", order[:, -rank]) for rank in range(2, n_target_classes + 2) for _ in range(n_restarts)]
    settings = {"eps": eps, "norm": "linf", "loss": "dlr-targeted", "steps": steps, "n_restarts": n_restarts,
                "n_target_classes": n_target_classes, "seed": seed, "rho": rho}
    return _apgd_restarts(classifier, "apgdt", x0, shape, labels, eps, runs, steps, rho, "linf", seed, progress,
                          settings)
