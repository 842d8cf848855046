"""The checks every attack runs on its settings and inputs, with clear errors.

Step counts, step sizes, bounds, the input space, eps, class names or indices, the image batch
and its labels; and :func:`_check_finite`, which stops an attack whose objective or gradient
became NaN or infinite, naming the step.
"""
import numpy as np

from .result import NonFiniteAttackError

SPACES = ("normalized", "pixel")


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


def _check_nonnegative(value, name):
    """``value`` as a float, finite and >= 0; else a ValueError naming the setting."""
    value = float(value)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0, got {value:g}")
    return value


def _check_eps(eps):
    return _check_nonnegative(eps, "eps")


def check_classes(classifier, classes):
    """Class indices as an int array; a class may be given by index or by name. Clear error otherwise."""
    names = classifier.class_names or [str(i) for i in range(classifier.num_classes)]
    out = []
    for c in np.atleast_1d(np.asarray(classes, dtype=object)):
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
            continue
        try:
            i = int(c)
        except (TypeError, ValueError):
            i = None
        if i is None or i != float(c) or not 0 <= i < classifier.num_classes:
            raise ValueError(f"unknown class {c!r}: the net's classes are 0..{classifier.num_classes - 1} "
                             f"({', '.join(names)})")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def _as_images(classifier, images):
    """Pixel-space images as [N, 1, H, W] in the classifier's dtype (a copy), and the caller's shape."""
    x = np.asarray(images)
    shape = x.shape
    x = classifier._as_input(x)
    return np.array(x, dtype=classifier.dtype, copy=True), shape


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
