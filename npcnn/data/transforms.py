"""From uint8 images to network input: pixel scaling, normalisation and mini-batches.

Two spaces, named so they are not confused:

- pixel space: float images in [0, 1], ``[N, 1, H, W]`` (what a learner looks at,
  what attacks perturb), made by :func:`to_float_images`;
- normalised space: ``(x - mean) / std``, what the network is trained on, via
  :class:`Normalization`.
"""
import math
from dataclasses import dataclass

import numpy as np

_CHUNK = 1 << 20  # elements per chunk when reducing over a whole data set


def compute_mean_std(images):
    """Mean and standard deviation of all pixel values, in pixel space [0, 1].

    Parameters
    ----------
    images : array_like
        uint8 images (any shape; values 0..255 are divided by 255) or floating
        images already in [0, 1].

    Returns
    -------
    mean, std : float
        Over every pixel of every image (population std). MNIST train gives
        0.1307 and 0.3081. uint8 input is reduced exactly with integer sums, in
        chunks, so no full-size temporary is made.
    """
    a = np.asarray(images)
    if a.size == 0:
        raise ValueError("compute_mean_std: no images")
    flat = a.reshape(-1)
    n = flat.size
    if a.dtype == np.uint8:
        s = ss = 0
        for start in range(0, n, _CHUNK):
            c = flat[start:start + _CHUNK].astype(np.uint32)
            s += int(np.add.reduce(c, dtype=np.uint64))
            ss += int(np.add.reduce(c * c, dtype=np.uint64))
        # exact: var * (255 n)^2 = n * sum(x^2) - sum(x)^2
        return s / (255 * n), math.sqrt(n * ss - s * s) / (255 * n)
    if np.issubdtype(a.dtype, np.floating):
        chunks = [flat[i:i + _CHUNK] for i in range(0, n, _CHUNK)]
        mean = sum(float(np.add.reduce(c, dtype=np.float64)) for c in chunks) / n
        var = sum(float(np.add.reduce(np.square(c.astype(np.float64) - mean))) for c in chunks) / n  # two-pass
        return mean, math.sqrt(var)
    raise TypeError(f"compute_mean_std: expected uint8 or floating images, got {a.dtype}")


@dataclass(frozen=True)
class Normalization:
    """Per-data-set input normalisation ``z = (x - mean) / std``, with its inverse.

    ``x`` is in pixel space [0, 1]. Both directions keep the floating dtype of
    their input (float32 stays float32).

    Examples
    --------
    >>> norm = Normalization(*compute_mean_std(train_images))  # doctest: +SKIP
    >>> z = norm.to_normalized(to_float_images(train_images[:64]))  # doctest: +SKIP
    """

    mean: float
    std: float

    def __post_init__(self):
        mean, std = _scalar(self.mean, "mean"), _scalar(self.std, "std")
        if not math.isfinite(mean):
            raise ValueError(f"Normalization: mean must be finite, got {mean}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"Normalization: std must be finite and positive, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def from_images(cls, images):
        """The normalisation of a training set: ``Normalization(*compute_mean_std(images))``."""
        return cls(*compute_mean_std(images))

    def to_normalized(self, x):
        """Pixel space [0, 1] -> normalised space: ``(x - mean) / std``."""
        x = _floating(x, "to_normalized")
        return (x - x.dtype.type(self.mean)) / x.dtype.type(self.std)

    def to_pixel(self, z):
        """Normalised space -> pixel space: ``z * std + mean`` (the inverse of :meth:`to_normalized`)."""
        z = _floating(z, "to_pixel")
        return z * z.dtype.type(self.std) + z.dtype.type(self.mean)

    def as_dict(self):
        """``{'mean': float, 'std': float}``, e.g. to store in a model's ``.npz``."""
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`as_dict`; values may be 0-d arrays, as read back from an ``.npz``."""
        missing = [k for k in ("mean", "std") if k not in d]
        if missing:
            raise ValueError(f"Normalization.from_dict: missing key(s) {missing}; got keys {sorted(d)}")
        return cls(d["mean"], d["std"])


def _scalar(value, what):
    a = np.asarray(value)
    if a.size != 1 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"Normalization: {what} must be one real number, got {value!r}")
    return float(a.reshape(()))


def _floating(x, where):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"Normalization.{where}: expected floating images in pixel space [0, 1], got {x.dtype}; "
                        f"convert uint8 images with to_float_images() first")
    return x


def to_float_images(images, dtype=np.float32):
    """uint8 images -> pixel-space float images ``[N, 1, H, W]`` in [0, 1].

    Parameters
    ----------
    images : array_like
        ``[N, H, W]`` or ``[N, C, H, W]``; uint8 (divided by 255) or floating
        (taken to be in [0, 1] already, only cast).
    dtype : numpy dtype
        A floating dtype, float32 by default.

    Returns
    -------
    numpy.ndarray
        ``[N, 1, H, W]`` (or ``[N, C, H, W]``) of ``dtype``. A new array for
        uint8 input; floating input of the right dtype and shape is returned as is.
    """
    a = np.asarray(images)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"to_float_images: dtype must be floating, got {dtype}")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4:
        raise ValueError(f"to_float_images: expected images [N, H, W] or [N, C, H, W], got shape {list(a.shape)}")
    if a.dtype == np.uint8:
        out = np.empty(a.shape, dtype=dtype)
        np.divide(a, dtype.type(255), out=out)  # computed in `dtype`, correctly rounded, like torchvision
        return out
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(dtype, copy=False)
    raise TypeError(f"to_float_images: expected uint8 or floating images, got {a.dtype}")


def batches(images, labels, batch_size, shuffle=True, seed=None, drop_last=False, normalization=None):
    """Mini-batches ``(x, y)`` for training or evaluation.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``[N, H, W]`` / ``[N, 1, H, W]`` (scaled to [0, 1]) or floating
        ``[N, 1, H, W]`` / ``[N, H, W]`` already in pixel space.
    labels : numpy.ndarray
        Integer ``[N]``.
    batch_size : int
        Positive.
    shuffle : bool
        Visit the samples in a random order, a new one each epoch.
    seed : None, int or numpy.random.Generator
        Seed for ``np.random.default_rng`` (or a generator to draw from): the
        same seed gives the same sequence of epochs.
    drop_last : bool
        Drop the last batch if it is smaller than ``batch_size``.
    normalization : Normalization, optional
        Applied to ``x`` after scaling to [0, 1].

    Returns
    -------
    Batches
        Iterable, once per epoch, of ``x`` float32 ``[B, 1, H, W]`` and
        ``y`` int64 ``[B]``; ``len()`` is the number of batches. Each batch is
        converted on its own, so the data set is never copied whole. Unshuffled,
        unnormalised float32 input yields views of ``images``: do not modify them.
    """
    return Batches(images, labels, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                   normalization=normalization)


class Batches:
    """The iterable returned by :func:`batches`; each ``iter()`` is one epoch."""

    def __init__(self, images, labels, batch_size, *, shuffle=True, seed=None, drop_last=False,
                 normalization=None):
        images, labels = np.asarray(images), np.asarray(labels)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
        if images.ndim not in (3, 4):
            raise ValueError(f"batches: expected images [N, H, W] or [N, 1, H, W], got shape {list(images.shape)}")
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise TypeError(f"batches: expected uint8 or floating images, got {images.dtype}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"batches: expected integer labels [N], got {labels.dtype} {list(labels.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"batches: {len(images)} images but {len(labels)} labels")
        if normalization is not None and not isinstance(normalization, Normalization):
            raise TypeError(f"batches: normalization must be a Normalization, got {type(normalization).__name__}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.normalization = normalization
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def __len__(self):
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n, b = len(self.labels), self.batch_size
        order = self.rng.permutation(n) if self.shuffle else None
        stop = n - n % b if self.drop_last else n
        for start in range(0, stop, b):
            index = slice(start, start + b) if order is None else order[start:start + b]
            yield self._to_input(self.images[index]), self.labels[index].astype(np.int64)

    def _to_input(self, x):
        if x.ndim == 3:
            x = x[:, None]
        if x.dtype == np.uint8:
            out = np.empty(x.shape, dtype=np.float32)
            np.divide(x, np.float32(255), out=out)
        else:
            out = x.astype(np.float32, copy=False)
        if self.normalization is None:
            return out
        if np.may_share_memory(out, self.images):
            return self.normalization.to_normalized(out)
        out -= np.float32(self.normalization.mean)  # in place on our own fresh batch
        out /= np.float32(self.normalization.std)
        return out
