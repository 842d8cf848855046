"""Adam on the input: the report's section 4 (class images, targeted images, learned noise).

The image (or the noise) is wrapped in a :class:`~npcnn.nn.Parameter` and handed to the library's
one :class:`~npcnn.optim.Adam` with ``maximize=True``; one forward and one backward pass per step
for the whole batch.

* :func:`class_images`: the image each class's logit likes best, grown from noise.
* :func:`targeted`: real images pushed towards a target class (``logit_t - beta ||v - v0||^2``);
  :func:`target_pairs` picks the source images and targets; :func:`targeted_sweep` runs it for
  several betas at once.
* :func:`learn_noise`: an additive noise that makes the net call ``image + noise`` the target;
  :mod:`.transfer` adds it to other images and to a whole test set.

``space`` ("normalized" or "pixel") and ``bounds`` are explained in :mod:`npcnn.analysis.attacks`.
:data:`CLASS_IMAGE`, :data:`TARGETED` and :data:`NOISE` are the report's settings.
"""
import numpy as np

from ...nn.module import Parameter
from ...optim import Adam
from ...progress import progress_bar
from . import regularizers as R
from .checks import (_as_images, _check_bounds, _check_finite, _check_lr, _check_nonnegative, _check_space,
                     _check_steps, _labels, check_classes)
from .result import _finish

# the report's settings (step sizes in the normalised space)
CLASS_IMAGE = {"steps": 15_000, "lr": 0.05}
# the report gives no step size here; its code used torch.optim.Adam, whose default is lr 1e-3
TARGETED = {"steps": 1_000, "lr": 1e-3, "beta": 1e-4}
#: the betas of the sweep: no penalty, the report's, and up to where the penalty wins
SWEEP_BETAS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
NOISE = {"steps": 1_500, "lr": 0.005}
#: the recommended regularised set for class_images (readable digits); why each value: regularizers.py
REGULARIZED = R.REGULARIZED


class _Space:
    """Maps between pixel space and the space the optimisation runs in."""

    def __init__(self, classifier, space, bounds):
        self.classifier, self.space, self.bounds = classifier, _check_space(space), _check_bounds(bounds)
        dt = classifier.dtype.type
        self.mean, self.std = dt(classifier.normalization.mean), dt(classifier.normalization.std)
        self.lo = self.hi = None
        if self.bounds is not None:
            lo, hi = np.asarray(self.bounds, dtype=classifier.dtype)
            if space == "normalized":
                lo, hi = (lo - self.mean) / self.std, (hi - self.mean) / self.std
            self.lo, self.hi = lo, hi

    def from_pixel(self, x):
        return self.classifier.normalize(x) if self.space == "normalized" else x.copy()

    def to_pixel(self, v):
        return self.classifier.normalization.to_pixel(v) if self.space == "normalized" else v

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


def _adam_loop(classifier, what, param, point, objective, steps, lr, space, progress, project=None):
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
            _, gx = classifier.forward_backward(space.to_pixel(box["v"]), grad_fn)
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
    """``logit_t(v) - beta * ||v - v0||^2`` per image, with its gradients; ``beta`` one number, or one
    per image ([N], the sweep)."""
    rows = np.arange(len(targets))
    per_image = np.ndim(beta) > 0

    def objective(logits, v):
        value = logits[rows, targets].astype(np.float64)
        dlogits = np.zeros_like(logits)
        dlogits[rows, targets] = 1
        extra = None
        if per_image or beta:
            d = v - v0
            value = value - beta * np.sum((d * d).reshape(len(d), -1), axis=1, dtype=np.float64)
            if per_image:
                extra = d * (-2 * np.asarray(beta, dtype=d.dtype)).reshape(-1, *([1] * (d.ndim - 1)))
            else:
                extra = d * d.dtype.type(-2 * beta)
        return value, dlogits, extra

    return objective


def class_images(classifier, classes=None, *, steps=CLASS_IMAGE["steps"], lr=CLASS_IMAGE["lr"], seed=0,
                 space="normalized", bounds=None, image_shape=(28, 28), start=(0.0, 1.0), score="logit", l2=0.0,
                 blur_every=1, blur_sigma=0.0, jitter=0, frame=0, progress=True):
    """The image each class's logit likes best, grown from seeded noise (the report's "non-targeted attack").

    Starts from uniform noise in ``start`` (pixel space, ``np.random.default_rng(seed)``; default [0, 1]),
    then maximises ``score_c(x) - l2 * ||x||^2`` (``x`` the pixel image) with Adam, all classes in one batch
    (default: every class). ``score`` "logit" (the report) or "log_softmax" (``logit_c - logsumexp``: its
    gradient ``onehot - softmax`` fades as p_c -> 1, so a penalty then wins: with l2 0.001-0.1 the least
    sure class ended at p 0.35-0.99). The defaults are the report's loop; the regularisers, each off by
    default, are explained (with their math) in :mod:`.regularizers`:

    * ``l2`` >= 0: the penalty on the pixel-space image (pulls pixels to 0, MNIST's background);
    * ``blur_sigma`` >= 0 pixels, ``blur_every`` >= 1 steps: a Gaussian blur of the iterate after every
      ``blur_every``-th step but the last (sigma 0: none);
    * ``jitter`` >= 0 pixels: the net sees the image rolled by up to this much each step (shifts from
      ``np.random.default_rng(seed + 1)``), the gradient is rolled back;
    * ``frame`` >= 0 pixels: the outer border held at 0 (MNIST digits sit in the central 20 x 20).

    After each Adam step: blur, frame, bounds. :data:`REGULARIZED` (``regularized()``) is the
    recommended set: readable digits in ~2 s for 10 classes.

    Returns an :class:`AttackResult` with ``images`` [K, H, W] and ``history`` [steps, K] (at each step's
    forward pass, ``logit_c - l2 ||x||^2`` of the image before its step: the report's "cost" when l2 = 0).
    """
    steps, lr = _check_steps(steps), _check_lr(lr)
    (lo, hi), l2, blur_every, blur_sigma, jitter, frame = R.check_regularizers(
        score, start, l2, blur_every, blur_sigma, jitter, frame, image_shape)
    targets = check_classes(classifier, range(classifier.num_classes) if classes is None else classes)
    sp = _Space(classifier, space, bounds)
    x0 = lo + (hi - lo) * np.random.default_rng(seed).random((len(targets), 1, *image_shape))
    x0 = x0.astype(classifier.dtype)
    param = Parameter(sp.clip(sp.from_pixel(x0)))
    loop_space = R.JitteredSpace(sp, R.jitter_shifts(jitter, steps, seed + 1)) if jitter else sp
    done = [0]

    def project(v):  # after Adam's step: blur (every blur_every-th step but the last), frame, bounds
        done[0] += 1
        if blur_sigma and done[0] % blur_every == 0 and done[0] < steps:
            v[...] = R.gaussian_blur(v, blur_sigma)
        if frame:
            v[...] = sp.from_pixel(R.set_frame(np.array(sp.to_pixel(v)), frame))
        sp.clip(v)

    objective = R.class_objective(targets, score, l2, sp)
    history = _adam_loop(classifier, "class images", param, lambda: param.data, objective, steps, lr, loop_space,
                         progress, project)
    images = sp.final_pixels(param.data)
    settings = {"steps": steps, "lr": lr, "seed": seed, "space": space, "bounds": sp.bounds, "start": (lo, hi),
                "score": score, "l2": l2, "blur_every": blur_every, "blur_sigma": blur_sigma, "jitter": jitter,
                "frame": frame}
    return _finish(classifier, "class-image", images, x0, images - x0, targets, np.full(len(targets), -1), history,
                   (len(targets), *image_shape), settings)


def targeted(classifier, images, targets, *, labels=None, beta=TARGETED["beta"], steps=TARGETED["steps"],
             lr=TARGETED["lr"], space="normalized", bounds=None, progress=True):
    """Push each real image towards its target class: maximise ``logit_t(v) - beta * ||v - v0||^2``.

    ``v`` is the image in the optimisation space (``z`` by default, as the report), starting at the
    clean image ``v0``; the penalty is measured in that space. One Adam step per iteration for the whole
    batch; ``images`` [N, H, W] pixel space, ``targets`` [N]. The report gives beta and the steps but no
    step size: ``lr`` defaults to PyTorch's Adam default, 1e-3 (the report's code used ``torch.optim.Adam``).
    """
    beta = _check_beta(beta)
    steps, lr, x0, shape, targets, labels, sp, v0 = _start_from_images(
        classifier, "targeted", images, targets, labels, steps, lr, space, bounds)
    param = Parameter(sp.clip(v0.copy()))
    history = _adam_loop(classifier, "targeted", param, lambda: param.data, _logit_objective(targets, beta, v0),
                         steps, lr, sp, progress, sp.clip)
    adv = sp.final_pixels(param.data)
    settings = {"steps": steps, "lr": lr, "beta": float(beta), "space": space, "bounds": sp.bounds}
    return _finish(classifier, "targeted", adv, x0, adv - x0, targets, labels, history, shape, settings)


def targeted_sweep(classifier, images, targets, betas=SWEEP_BETAS, *, labels=None, steps=TARGETED["steps"],
                   lr=TARGETED["lr"], space="normalized", bounds=None, progress=True):
    """:func:`targeted` for every beta in ``betas``: a list of :class:`AttackResult`, one per beta, in order.

    All betas run as one batch (``len(betas) * N`` images, one Adam loop, each image with its own beta);
    Adam's update is per pixel, so each result is the one :func:`targeted` gives for that beta alone
    (up to the rounding of a larger batch). For the penalised optimum, the distance ``||v - v0||`` can only
    shrink as beta grows; after a finite number of Adam steps that holds closely, not exactly.
    """
    betas = [_check_beta(b) for b in np.atleast_1d(np.asarray(betas, dtype=np.float64))]
    if not betas:
        raise ValueError("betas: an empty sweep; give one or more values >= 0")
    steps, lr, x0, shape, targets, labels, sp, v0 = _start_from_images(
        classifier, "targeted", images, targets, labels, steps, lr, space, bounds)
    n, k = len(x0), len(betas)
    v0 = np.concatenate([v0] * k)
    per_image = np.repeat(np.asarray(betas, dtype=np.float64), n)
    param = Parameter(sp.clip(v0.copy()))
    history = _adam_loop(classifier, "targeted sweep", param, lambda: param.data,
                         _logit_objective(np.tile(targets, k), per_image, v0), steps, lr, sp, progress, sp.clip)
    adv = sp.final_pixels(param.data)
    out = []
    for j, beta in enumerate(betas):
        rows = slice(j * n, (j + 1) * n)
        settings = {"steps": steps, "lr": lr, "beta": beta, "space": space, "bounds": sp.bounds}
        out.append(_finish(classifier, "targeted", adv[rows], x0, adv[rows] - x0, targets, labels,
                           history[:, rows], shape, settings))
    return out


def _check_beta(beta):
    return _check_nonnegative(beta, "beta")


def _start_from_images(classifier, what, images, targets, labels, steps, lr, space, bounds):
    """The checked settings and starting point shared by the attacks that start from real images:
    ``steps, lr, x0`` (pixel space), the caller's ``shape``, ``targets``, ``labels``, the space and
    ``v0``, the clean images in that space."""
    steps, lr = _check_steps(steps), _check_lr(lr)
    x0, shape = _as_images(classifier, images)
    targets = check_classes(classifier, targets)
    if len(targets) != len(x0):
        raise ValueError(f"{what}: {len(x0)} images but {len(targets)} targets")
    sp = _Space(classifier, space, bounds)
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


def learn_noise(classifier, images, targets, *, labels=None, steps=NOISE["steps"], lr=NOISE["lr"], space="normalized",
                bounds=None, progress=True):
    """Learn an additive noise ``n`` (from zero) that makes the net call ``image + n`` the target.

    Maximises the target logit of ``v0 + n`` with Adam on ``n`` (``v0`` the clean image in the
    optimisation space). With ``bounds``, ``v0 + n`` is kept inside them. ``perturbation`` of the
    result is the noise in pixel units; ``images`` are the digits plus their noise.
    """
    steps, lr, x0, shape, targets, labels, sp, v0 = _start_from_images(
        classifier, "learn_noise", images, targets, labels, steps, lr, space, bounds)
    noise = Parameter(np.zeros_like(v0))

    def project(n):  # keep v0 + n inside the bounds
        if sp.lo is not None:
            np.clip(n, sp.lo - v0, sp.hi - v0, out=n)

    history = _adam_loop(classifier, "noise", noise, lambda: v0 + noise.data, _logit_objective(targets), steps, lr, sp,
                         progress, project)
    adv = sp.final_pixels(v0 + noise.data)
    pixel_noise = noise.data * sp.std if space == "normalized" else noise.data.copy()
    settings = {"steps": steps, "lr": lr, "space": space, "bounds": sp.bounds}
    return _finish(classifier, "noise", adv, x0, pixel_noise, targets, labels, history, shape, settings)
