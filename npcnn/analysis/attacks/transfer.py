"""A learned noise added to other images: does what fooled one digit fool the rest?

* :func:`add_noise`: ``images + noise`` (pixel space), clipped into ``bounds`` when given.
* :func:`transfer_noises`: several noises, each added to every image of a test set; the clean
  predictions are computed once. :func:`transfer_noise` is the same for one noise.

The transfer rate of a noise aimed at class ``t`` is the share of the images not of class ``t`` that
the net calls ``t`` once the noise is added (:class:`TransferResult`).
"""
import numpy as np

from ...progress import progress_bar
from .checks import _check_bounds, check_classes
from .result import TransferResult


def add_noise(images, noise, bounds=None):
    """``images + noise`` (pixel space), clipped into ``bounds`` when given."""
    out = np.asarray(images) + np.asarray(noise).reshape(np.shape(images)[-2:])
    bounds = _check_bounds(bounds)
    return np.clip(out, *bounds) if bounds is not None else out


def _pixels(classifier, x):
    dtype = classifier.dtype
    return x.astype(dtype) / dtype.type(255) if x.dtype == np.uint8 else x.astype(dtype)


def transfer_noises(classifier, noises, images, labels, targets, *, bounds=None, batch_size=1000, progress=True):
    """Add each learned noise (pixel units, [K, H, W]) to every image; one :class:`TransferResult` per noise.

    ``images`` uint8 [N, H, W] or pixel-space floats; ``targets`` [K], the class each noise aims at.
    """
    noises = np.asarray(noises)
    targets = check_classes(classifier, targets)
    if noises.ndim != 3 or len(noises) != len(targets):
        raise ValueError(f"noises must be [K, H, W] with one target each; got shape {noises.shape} and "
                         f"{len(targets)} targets")
    bounds = _check_bounds(bounds)
    labels = np.asarray(labels, dtype=np.int64)
    images = np.asarray(images)
    k = len(noises)
    clean = np.empty(len(images), dtype=np.int64)
    noisy = np.empty((k, len(images)), dtype=np.int64)
    prob = np.empty((k, len(images)), dtype=np.float64)
    starts = range(0, len(images), batch_size)
    bar = progress_bar(total=len(starts) * k, desc="noise on the test set", disable=not progress, leave=False)
    for i in starts:
        x = _pixels(classifier, images[i:i + batch_size])
        rows = slice(i, i + len(x))
        clean[rows] = classifier.predict(x)
        for j in range(k):
            p = classifier.predict_proba(add_noise(x, noises[j], bounds).astype(classifier.dtype))
            noisy[j, rows] = p.argmax(axis=1)
            prob[j, rows] = p[:, targets[j]]
            bar.update()
    bar.close()
    return [TransferResult(target=int(targets[j]), labels=labels, predicted_clean=clean, predicted_noisy=noisy[j],
                           target_probability=prob[j]) for j in range(k)]


def transfer_noise(classifier, noise, images, labels, target, *, bounds=None, batch_size=1000, progress=True):
    """Add one learned noise (pixel units, [H, W]) to every image and see what the net says.

    ``images`` uint8 [N, H, W] or pixel-space floats. Returns a :class:`TransferResult`: accuracy
    with and without the noise and the transfer rate (images not of the target class now predicted
    as the target).
    """
    noise = np.asarray(noise)
    return transfer_noises(classifier, noise.reshape(1, *noise.shape[-2:]), images, labels, [target], bounds=bounds,
                           batch_size=batch_size, progress=progress)[0]
