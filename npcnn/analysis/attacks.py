"""Adversarial images: fooling a trained classifier through its own backward pass.

Every attack works on a batch (many images, many targets) with one forward
and one backward pass per step for the whole batch, via
:meth:`npcnn.classifier.Classifier.forward_backward` (input gradient only,
parameter gradients skipped).

Two families:

* **Adam on the input** (the report's section 4): :func:`class_images`,
  :func:`targeted`, :func:`learn_noise`. The image (or the noise) is wrapped
  in a :class:`~npcnn.nn.Parameter` and handed to the library's one
  :class:`~npcnn.optim.Adam` with ``maximize=True``.
* **Sign / L2 steps in pixel space** (torchattacks' semantics):
  :func:`fgsm`, :func:`pgd`, and :func:`robustness_curve` over a test set.

The input space is explicit
---------------------------
``space="normalized"`` (the default of the Adam experiments, as in the
report) optimises ``z = (x - mean) / std``, the net's own input; the report's
step sizes refer to it. The gradient there is ``dL/dz = dL/dx * std``.
``space="pixel"`` optimises ``x`` itself. ``bounds=(low, high)`` are always
pixel values; when given, the image is clipped into them after every step
(in the normalised space the equivalent ``(bound - mean) / std``). Without
bounds nothing stops the image leaving [0, 1]: the report's experiments did
not bound it, and the results are kept as they are, in pixel units.
FGSM and PGD always work in pixel space within [0, 1], ``eps`` in pixel units.

Every result stores pixel-space images, whatever space the optimisation ran
in, and ``probabilities`` are exactly ``clf.predict_proba(result.images)``.
"""
from dataclasses import dataclass, field

import numpy as np

from ..classifier import softmax
from ..nn.module import Parameter
from ..optim import Adam
from ..progress import progress_bar

SPACES = ("normalized", "pixel")
NORMS = ("linf", "l2")

# the report's settings (step sizes in the normalised space)
CLASS_IMAGE = {"steps": 15_000, "lr": 0.05}
TARGETED = {"steps": 1_000, "lr": 0.01, "beta": 1e-4}  # the report gives no step size here; 0.01 is ours
NOISE = {"steps": 1_500, "lr": 0.005}


class NonFiniteAttackError(ValueError):
    """The objective or the gradient became NaN or infinite during an attack."""


# --------------------------------------------------------------------------- results

@dataclass
class AttackResult:
    """What an attack returns; all images in pixel space, shaped like the input ([N, H, W] or [N, 1, H, W]).

    Attributes
    ----------
    attack : str
        "class-image", "targeted", "noise", "fgsm", "pgd" or "pgd-l2".
    images : ndarray
        The final images (for ``learn_noise``: the digit plus the noise).
    start : ndarray
        The starting images (the noise for a class image, the clean digit otherwise).
    perturbation : ndarray
        ``images - start`` (for ``learn_noise``: the learned noise itself).
    targets : ndarray [N]
        The class each image is pushed towards; -1 for an untargeted attack.
    labels : ndarray [N]
        The true class of each start image; -1 when unknown (noise).
    history : ndarray [steps, N]
        The objective per step, evaluated at the forward pass of that step
        (before its update): the target logit for class images and noise,
        ``logit_t - beta ||v - v0||^2`` for targeted, the cross-entropy
        (``-CE`` of the target when targeted) for FGSM / PGD.
    probabilities : ndarray [N, C]
        ``clf.predict_proba(images)``.
    settings : dict
        The settings the attack ran with.
    """

    attack: str
    images: np.ndarray
    start: np.ndarray
    perturbation: np.ndarray
    targets: np.ndarray
    labels: np.ndarray
    history: np.ndarray
    probabilities: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def targeted(self):
        return bool(np.all(self.targets >= 0))

    @property
    def predicted(self):
        return self.probabilities.argmax(axis=1)

    @property
    def success(self):
        """[N] bool: predicted as the target (targeted) or not as the true label (untargeted)."""
        if self.targeted:
            return self.predicted == self.targets
        return self.predicted != self.labels

    @property
    def confidence(self):
        """[N]: probability of the target (targeted) or of the predicted class (untargeted)."""
        cls = self.targets if self.targeted else self.predicted
        return self.probabilities[np.arange(len(cls)), cls]

    @property
    def success_rate(self):
        return float(np.mean(self.success)) if len(self.targets) else float("nan")

    @property
    def l2(self):
        """[N] L2 norm of the pixel-space perturbation."""
        d = self.perturbation.reshape(len(self.targets), -1).astype(np.float64)
        return np.sqrt(np.sum(d * d, axis=1))

    @property
    def linf(self):
        """[N] largest absolute pixel change."""
        return np.abs(self.perturbation.reshape(len(self.targets), -1)).max(axis=1).astype(np.float64)

    def summary(self):
        """Success rate, mean confidence, mean L2 and L-inf distance, as a dict of floats."""
        return {"success_rate": self.success_rate, "mean_confidence": float(np.mean(self.confidence)),
                "mean_l2": float(np.mean(self.l2)), "mean_linf": float(np.mean(self.linf))}


@dataclass
class TransferResult:
    """A learned noise added to many images (:func:`transfer_noise`)."""

    target: int
    labels: np.ndarray          # [N] true classes
    predicted_clean: np.ndarray  # [N]
    predicted_noisy: np.ndarray  # [N]
    target_probability: np.ndarray  # [N] probability of the target with the noise

    @property
    def accuracy_clean(self):
        return float(np.mean(self.predicted_clean == self.labels))

    @property
    def accuracy_noisy(self):
        return float(np.mean(self.predicted_noisy == self.labels))

    @property
    def transfer_rate(self):
        """Share of the images not of the target class that the noise makes the net call the target."""
        other = self.labels != self.target
        return float(np.mean(self.predicted_noisy[other] == self.target)) if other.any() else float("nan")


@dataclass
class RobustnessResult:
    """Accuracy on a test set under an attack of growing size (:func:`robustness_curve`)."""

    attack: str
    eps: np.ndarray       # [E] pixel units
    accuracy: np.ndarray  # [E]
    settings: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- checks

def _check_steps(steps):
    if isinstance(steps, bool) or int(steps) != steps or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return int(steps)


def _check_lr(lr):
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"step size (lr) must be positive, got {lr}")
    return float(lr)


def _check_bounds(bounds):
    if bounds is None:
        return None
    if len(bounds) != 2:
        raise ValueError(f"bounds must be (low, high), got {bounds}")
    low, high = float(bounds[0]), float(bounds[1])
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"bounds must have low < high, got low={bounds[0]}, high={bounds[1]}")
    return low, high


def _check_space(space):
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    return space


def _check_eps(eps):
    eps = float(eps)
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be >= 0, got {eps:g}")
    return eps


def check_classes(clf, classes):
    """Class indices as an int array; a class may be given by index or by name. Clear error otherwise."""
    names = clf.class_names or [str(i) for i in range(clf.num_classes)]
    out = []
    for c in np.atleast_1d(np.asarray(classes, dtype=object)):
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
            continue
        try:
            i = int(c)
        except (TypeError, ValueError):
            i = None
        if i is None or i != float(c) or not 0 <= i < clf.num_classes:
            raise ValueError(f"unknown class {c!r}: the net's classes are 0..{clf.num_classes - 1} "
                             f"({', '.join(names)})")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def _as_images(clf, images):
    """Pixel-space images as [N, 1, H, W] in the classifier's dtype (a copy), and the caller's shape."""
    x = np.asarray(images)
    shape = x.shape
    x = clf._as_input(x)
    return np.array(x, dtype=clf.dtype, copy=True), shape


def _labels(labels, n, what="labels"):
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"{what}: expected {n}, got {len(labels)}")
    return labels


def _check_finite(what, step, steps, *arrays):
    for a in arrays:
        if not np.isfinite(np.sum(a)):
            raise NonFiniteAttackError(
                f"{what}: the objective or its gradient became NaN or infinite at step {step} of {steps}; "
                f"try a smaller step size, or bounds (0, 1)")


# --------------------------------------------------------------------------- Adam on the input

class _Space:
    """Maps between pixel space and the space the optimisation runs in."""

    def __init__(self, clf, space, bounds):
        self.clf, self.space, self.bounds = clf, _check_space(space), _check_bounds(bounds)
        dt = clf.dtype.type
        self.mean, self.std = dt(clf.normalization.mean), dt(clf.normalization.std)
        self.lo = self.hi = None
        if self.bounds is not None:
            lo, hi = np.asarray(self.bounds, dtype=clf.dtype)
            if space == "normalized":
                lo, hi = (lo - self.mean) / self.std, (hi - self.mean) / self.std
            self.lo, self.hi = lo, hi

    def from_pixel(self, x):
        return self.clf.normalize(x) if self.space == "normalized" else x.copy()

    def to_pixel(self, v):
        return self.clf.normalization.to_pixel(v) if self.space == "normalized" else v

    def final_pixels(self, v):
        """The saved pixel images: a new array, clipped to the bounds (removes the rounding of z -> x)."""
        x = np.array(self.to_pixel(v), copy=True)
        if self.bounds is not None:
            np.clip(x, *self.bounds, out=x)
        return x

    def pixel_grad_to_space(self, g):
        return g * self.std if self.space == "normalized" else g

    def clip(self, v):
        if self.lo is not None:
            np.clip(v, self.lo, self.hi, out=v)
        return v


def _adam_loop(clf, what, param, point, objective, steps, lr, space, progress, project=None):
    """Run ``steps`` Adam ascent steps on ``param``.

    ``point()`` gives the current image in the optimisation space;
    ``objective(logits, v) -> (value [N], d value / d logits [N, C], extra d value / dv or None)``.
    ``project(param.data)`` runs after each step (the bounds). Returns the history [steps, N].
    One forward and one backward per step. Overflow inside a layer shows up as inf / nan in the
    objective or the gradient, and :func:`_check_finite` stops the attack naming the step, so
    numpy's own overflow warnings are silenced here.
    """
    opt = Adam([param], lr=lr, maximize=True)
    history = None
    box = {}

    def grad_fn(logits):
        box["value"], dlogits, box["extra"] = objective(logits, box["v"])
        return dlogits

    for t in progress_bar(range(steps), desc=what, disable=not progress, leave=False, mininterval=0.5):
        with np.errstate(over="ignore", invalid="ignore"):
            box["v"] = point()
            _, gx = clf.forward_backward(space.to_pixel(box["v"]), grad_fn)
            g = space.pixel_grad_to_space(gx)
            if box["extra"] is not None:
                g = g + box["extra"]
            _check_finite(what, t + 1, steps, box["value"], g)
            if history is None:
                history = np.empty((steps, len(box["value"])), dtype=np.float64)
            history[t] = box["value"]
            param.grad = g
            opt.step()
            if project is not None:
                project(param.data)
    return history


def _logit_objective(targets, beta=0.0, v0=None):
    """``logit_t(v) - beta * ||v - v0||^2`` per image, with its gradients."""
    rows = np.arange(len(targets))

    def objective(logits, v):
        value = logits[rows, targets].astype(np.float64)
        dlogits = np.zeros_like(logits)
        dlogits[rows, targets] = 1
        extra = None
        if beta:
            d = v - v0
            value = value - beta * np.sum((d * d).reshape(len(d), -1), axis=1, dtype=np.float64)
            extra = d * d.dtype.type(-2 * beta)
        return value, dlogits, extra

    return objective


def _finish(clf, attack, images, start, perturbation, targets, labels, history, shape, settings):
    images = images.reshape(shape)
    return AttackResult(attack=attack, images=images, start=start.reshape(shape),
                        perturbation=perturbation.reshape(shape), targets=np.asarray(targets, dtype=np.int64),
                        labels=np.asarray(labels, dtype=np.int64), history=history,
                        probabilities=clf.predict_proba(images), settings=settings)


def class_images(clf, classes=None, *, steps=CLASS_IMAGE["steps"], lr=CLASS_IMAGE["lr"], seed=0,
                 space="normalized", bounds=None, image_shape=(28, 28), progress=True):
    """The image each class's logit likes best, grown from seeded noise (the report's "non-targeted attack").

    Starts from uniform noise in [0, 1] (pixel space, ``np.random.default_rng(seed)``), then maximises
    ``logit_c`` with Adam. All classes in one batch (default: every class).

    Returns an :class:`AttackResult` with ``images`` [K, H, W] and ``history`` [steps, K] (the logit, the
    report's "cost").
    """
    steps, lr = _check_steps(steps), _check_lr(lr)
    targets = check_classes(clf, range(clf.num_classes) if classes is None else classes)
    sp = _Space(clf, space, bounds)
    rng = np.random.default_rng(seed)
    x0 = rng.random((len(targets), 1, *image_shape)).astype(clf.dtype)
    param = Parameter(sp.clip(sp.from_pixel(x0)))
    history = _adam_loop(clf, "class images", param, lambda: param.data, _logit_objective(targets),
                         steps, lr, sp, progress, sp.clip)
    images = sp.final_pixels(param.data)
    settings = {"steps": steps, "lr": lr, "seed": seed, "space": space, "bounds": sp.bounds}
    return _finish(clf, "class-image", images, x0, images - x0, targets, np.full(len(targets), -1), history,
                   (len(targets), *image_shape), settings)


def targeted(clf, images, targets, *, labels=None, beta=TARGETED["beta"], steps=TARGETED["steps"],
             lr=TARGETED["lr"], space="normalized", bounds=None, progress=True):
    """Push each real image towards its target class: maximise ``logit_t(v) - beta * ||v - v0||^2``.

    ``v`` is the image in the optimisation space (``z`` by default, as the report), starting at the
    clean image ``v0``; the penalty is measured in that space. One Adam step per iteration for the whole
    batch; ``images`` [N, H, W] pixel space, ``targets`` [N].
    """
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be >= 0, got {beta}")
    steps, lr, x0, shape, targets, labels, sp, v0 = _start_from_images(
        clf, "targeted", images, targets, labels, steps, lr, space, bounds)
    param = Parameter(sp.clip(v0.copy()))
    history = _adam_loop(clf, "targeted", param, lambda: param.data, _logit_objective(targets, beta, v0),
                         steps, lr, sp, progress, sp.clip)
    adv = sp.final_pixels(param.data)
    settings = {"steps": steps, "lr": lr, "beta": float(beta), "space": space, "bounds": sp.bounds}
    return _finish(clf, "targeted", adv, x0, adv - x0, targets, labels, history, shape, settings)


def _start_from_images(clf, what, images, targets, labels, steps, lr, space, bounds):
    """The checked settings and starting point shared by the attacks that start from real images:
    ``steps, lr, x0`` (pixel space), the caller's ``shape``, ``targets``, ``labels``, the space and
    ``v0``, the clean images in that space."""
    steps, lr = _check_steps(steps), _check_lr(lr)
    x0, shape = _as_images(clf, images)
    targets = check_classes(clf, targets)
    if len(targets) != len(x0):
        raise ValueError(f"{what}: {len(x0)} images but {len(targets)} targets")
    sp = _Space(clf, space, bounds)
    return steps, lr, x0, shape, targets, _labels(labels, len(x0)), sp, sp.from_pixel(x0)


def target_pairs(labels, pairs="report", num_classes=10):
    """Source-image indices and targets for the targeted experiment.

    ``labels`` are the classes of the candidate sources (e.g. the run's one sample per class).
    ``"report"``: each source d goes to ``(d + 1) % num_classes`` (one pair per digit, our choice: the
    report shows one pair per digit without a rule). ``"all"``: every source to every other class
    (the 10 x 10 matrix without its diagonal: 90 pairs), ordered by source then target.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if pairs == "report":
        return np.arange(len(labels)), (labels + 1) % num_classes
    if pairs == "all":
        src = [i for i, d in enumerate(labels) for t in range(num_classes) if t != d]
        tgt = [t for d in labels for t in range(num_classes) if t != d]
        return np.asarray(src, dtype=np.int64), np.asarray(tgt, dtype=np.int64)
    raise ValueError(f"pairs must be 'report' or 'all', got {pairs!r}")


def learn_noise(clf, images, targets, *, labels=None, steps=NOISE["steps"], lr=NOISE["lr"], space="normalized",
                bounds=None, progress=True):
    """Learn an additive noise ``n`` (from zero) that makes the net call ``image + n`` the target.

    Maximises the target logit of ``v0 + n`` with Adam on ``n`` (``v0`` the clean image in the
    optimisation space). With ``bounds``, ``v0 + n`` is kept inside them. ``perturbation`` of the
    result is the noise in pixel units; ``images`` are the digits plus their noise.
    """
    steps, lr, x0, shape, targets, labels, sp, v0 = _start_from_images(
        clf, "learn_noise", images, targets, labels, steps, lr, space, bounds)
    noise = Parameter(np.zeros_like(v0))

    def project(n):  # keep v0 + n inside the bounds
        if sp.lo is not None:
            np.clip(n, sp.lo - v0, sp.hi - v0, out=n)

    history = _adam_loop(clf, "noise", noise, lambda: v0 + noise.data, _logit_objective(targets), steps, lr, sp,
                         progress, project)
    adv = sp.final_pixels(v0 + noise.data)
    pixel_noise = noise.data * sp.std if space == "normalized" else noise.data.copy()
    settings = {"steps": steps, "lr": lr, "space": space, "bounds": sp.bounds}
    return _finish(clf, "noise", adv, x0, pixel_noise, targets, labels, history, shape, settings)


def add_noise(images, noise, bounds=None):
    """``images + noise`` (pixel space), clipped into ``bounds`` when given."""
    out = np.asarray(images) + np.asarray(noise).reshape(np.shape(images)[-2:])
    bounds = _check_bounds(bounds)
    return np.clip(out, *bounds) if bounds is not None else out


def transfer_noise(clf, noise, images, labels, target, *, bounds=None, batch_size=1000, progress=True):
    """Add one learned noise (pixel units, [H, W]) to every image and see what the net says.

    ``images`` uint8 [N, H, W] or pixel-space floats. Returns a :class:`TransferResult`: accuracy
    with and without the noise and the transfer rate (images not of the target class now predicted
    as the target).
    """
    target = int(check_classes(clf, [target])[0])
    labels = np.asarray(labels, dtype=np.int64)
    images = np.asarray(images)
    clean, noisy, prob = [], [], []
    for i in progress_bar(range(0, len(images), batch_size), desc="noise on the test set", disable=not progress,
                  leave=False):
        x = images[i:i + batch_size]
        x = x.astype(clf.dtype) / clf.dtype.type(255) if x.dtype == np.uint8 else x.astype(clf.dtype)
        clean.append(clf.predict(x))
        p = clf.predict_proba(add_noise(x, noise, bounds).astype(clf.dtype))
        noisy.append(p.argmax(axis=1))
        prob.append(p[:, target])
    return TransferResult(target=target, labels=labels, predicted_clean=np.concatenate(clean),
                          predicted_noisy=np.concatenate(noisy), target_probability=np.concatenate(prob))


# --------------------------------------------------------------------------- FGSM and PGD (torchattacks' semantics)

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


def _ce_gradient(clf, x, objective):
    box = {}

    def grad_fn(logits):
        box["value"], d = objective(logits)
        return d

    _, g = clf.forward_backward(x, grad_fn)
    return box["value"], g


def _prepare(clf, images, labels, targets, eps):
    eps = _check_eps(eps)
    x0, shape = _as_images(clf, images)
    labels = _labels(labels, len(x0))
    if targets is not None:
        targets = check_classes(clf, targets)
        if len(targets) != len(x0):
            raise ValueError(f"{len(x0)} images but {len(targets)} targets")
    elif np.any(labels < 0):
        raise ValueError("an untargeted attack needs the true labels")
    return eps, x0, shape, labels, targets


def fgsm(clf, images, labels, eps, *, targets=None):
    """Fast gradient sign method, as ``torchattacks.FGSM``: ``x' = clip(x + eps * sign(grad), 0, 1)``.

    ``grad`` is the gradient of the batch-mean cross-entropy of the true labels (untargeted), or of
    minus that of ``targets`` (targeted, as ``set_mode_targeted_by_label``). ``eps`` in pixel units.
    """
    eps, x0, shape, labels, targets = _prepare(clf, images, labels, targets, eps)
    with np.errstate(over="ignore", invalid="ignore"):
        value, g = _ce_gradient(clf, x0, _ce_objective(labels, targets))
    _check_finite("fgsm", 1, 1, value, g)
    dt = clf.dtype.type
    adv = np.clip(x0 + dt(eps) * np.sign(g), 0, 1).astype(clf.dtype, copy=False)
    settings = {"eps": eps}
    t = targets if targets is not None else np.full(len(x0), -1)
    return _finish(clf, "fgsm", adv, x0, adv - x0, t, labels, value[None], shape, settings)


def pgd(clf, images, labels, eps, *, norm="linf", step_size=None, steps=10, targets=None, random_start=True,
        seed=0, progress=False):
    """Projected gradient descent, as ``torchattacks.PGD`` (``norm="linf"``) and ``PGDL2`` (``norm="l2"``).

    L-inf step: ``x += step_size * sign(grad)``, then back into the eps box around the clean image and
    into [0, 1]. L2 step: ``x += step_size * grad / (||grad|| + 1e-10)``, then scaled back into the L2
    ball of radius eps and clipped to [0, 1]. ``grad`` as in :func:`fgsm`. ``step_size`` defaults to
    ``2.5 * eps / steps``. ``random_start`` draws from ``np.random.default_rng(seed)``: uniform in the
    box (L-inf), or a random direction with a uniform radius in [0, eps] (L2), then clipped to [0, 1].
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    steps = _check_steps(steps)
    eps, x0, shape, labels, targets = _prepare(clf, images, labels, targets, eps)
    step_size = 2.5 * eps / steps if step_size is None else float(step_size)
    if not (np.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"step size must be >= 0, got {step_size}")
    dt = clf.dtype.type
    n = len(x0)
    adv = x0.copy()
    if random_start:
        rng = np.random.default_rng(seed)
        if norm == "linf":
            adv = adv + rng.uniform(-eps, eps, size=adv.shape).astype(clf.dtype)
        else:
            d = rng.standard_normal(adv.shape)
            d *= (rng.uniform(0, 1, size=n) * eps / np.linalg.norm(d.reshape(n, -1), axis=1))[:, None, None, None]
            adv = adv + d.astype(clf.dtype)
        adv = np.clip(adv, 0, 1)
    objective = _ce_objective(labels, targets)
    history = np.empty((steps, n), dtype=np.float64)
    name = "pgd" if norm == "linf" else "pgd-l2"
    for t in progress_bar(range(steps), desc=name, disable=not progress, leave=False):
        with np.errstate(over="ignore", invalid="ignore"):
            history[t], g = _ce_gradient(clf, adv, objective)
        _check_finite(name, t + 1, steps, history[t], g)
        if norm == "linf":
            adv = adv + dt(step_size) * np.sign(g)
            delta = np.clip(adv - x0, -dt(eps), dt(eps))
        else:
            gnorm = np.sqrt(np.sum((g * g).reshape(n, -1), axis=1)) + dt(1e-10)
            adv = adv + dt(step_size) * (g / gnorm[:, None, None, None])
            delta = adv - x0
            dnorm = np.sqrt(np.sum((delta * delta).reshape(n, -1), axis=1))
            with np.errstate(divide="ignore"):
                factor = np.minimum(dt(eps) / dnorm, dt(1))
            delta = delta * factor[:, None, None, None]
        adv = np.clip(x0 + delta, 0, 1).astype(clf.dtype, copy=False)
    settings = {"eps": eps, "norm": norm, "step_size": step_size, "steps": steps, "random_start": bool(random_start),
                "seed": seed}
    tgt = targets if targets is not None else np.full(n, -1)
    return _finish(clf, name, adv, x0, adv - x0, tgt, labels, history, shape, settings)


ATTACKS = {"fgsm": "FGSM (L-inf)", "pgd": "PGD (L-inf)", "pgd-l2": "PGD (L2)"}


def run_attack(clf, attack, images, labels, eps, *, steps=10, step_size=None, seed=0, random_start=True,
               targets=None):
    """One of :data:`ATTACKS` by name."""
    if attack == "fgsm":
        return fgsm(clf, images, labels, eps, targets=targets)
    if attack in ("pgd", "pgd-l2"):
        return pgd(clf, images, labels, eps, norm="linf" if attack == "pgd" else "l2", step_size=step_size,
                   steps=steps, targets=targets, random_start=random_start, seed=seed)
    raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")


def robustness_curve(clf, images, labels, eps, *, attack="fgsm", steps=10, step_size=None, seed=0,
                     random_start=True, batch_size=500, progress=True, desc=None):
    """Accuracy under an untargeted attack for each ``eps`` (pixel units), over a whole test set in batches.

    ``images`` uint8 [N, H, W] or pixel-space floats; ``eps=0`` is the clean accuracy. PGD's
    step size defaults to ``2.5 * eps / steps`` for each eps. The cross-entropy is averaged per batch,
    as torchattacks does (this only matters through PGD-L2's 1e-10).
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    eps = np.asarray([_check_eps(e) for e in np.atleast_1d(eps)], dtype=np.float64)
    if attack != "fgsm":
        _check_steps(steps)
    labels = np.asarray(labels, dtype=np.int64)
    images = np.asarray(images)
    correct = np.zeros(len(eps), dtype=np.int64)
    starts = range(0, len(images), batch_size)
    bar = progress_bar(total=len(eps) * len(starts), desc=desc or f"robustness ({attack})", disable=not progress,
               leave=False)
    for b, i in enumerate(starts):
        x = images[i:i + batch_size]
        x = x.astype(clf.dtype) / clf.dtype.type(255) if x.dtype == np.uint8 else x.astype(clf.dtype)
        y = labels[i:i + batch_size]
        for k, e in enumerate(eps):
            if e == 0:
                pred = clf.predict(x)
            else:
                r = run_attack(clf, attack, x, y, e, steps=steps, step_size=step_size, seed=[seed, b],
                               random_start=random_start)
                pred = r.predicted
            correct[k] += int(np.sum(pred == y))
            bar.update()
    bar.close()
    settings = {"steps": steps, "step_size": step_size, "seed": seed, "random_start": random_start,
                "images": len(labels)}
    return RobustnessResult(attack=attack, eps=eps, accuracy=correct / max(len(labels), 1), settings=settings)
