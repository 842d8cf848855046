"""Occlusion: slide a grey (or black) patch over the image and watch the prediction.

For each image and each position of a ``ph x pw`` patch on a grid with the
given stride, the patch's pixels are set to ``fill`` (in pixel space, 0 =
black) and the occluded image is classified. The result holds, on the grid
of patch positions (top-left corners ``r * sh``, ``c * sw``):

* ``probability[n, r, c]``  the probability of the target class with the patch there
* ``predicted[n, r, c]``    the predicted class with the patch there

and, per pixel, Captum's occlusion attribution
(``captum.attr.Occlusion(softmax_model).attribute(x, sliding_window_shapes=(1, ph, pw),
strides=(1, sh, sw), baselines=fill, target=t)``)::

    attribution[n, i, j] = mean over the windows covering (i, j) of (p_t(x) - p_t(x occluded there))

The grid has ``(H - ph) // sh + 1`` rows (10 for the report's 28-pixel
images, patch 10, stride 2): the patch never wraps round nor hangs off the
image. When ``(H - ph)`` is a multiple of the stride (the report's case)
these are exactly Captum's windows; otherwise Captum adds one last window
cut off at the border, which we leave out, and pixels no window covers get
attribution 0 (Captum: NaN).

All occluded copies of all images go through the net in chunks of
``batch_size`` images: memory is bounded by the chunk, whatever N is.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class OcclusionResult:
    """What :func:`occlusion` returns; arrays are indexed [image, grid row, grid column] or [image, H, W]."""

    probability: np.ndarray   # [N, Gh, Gw] probability of target[n] with the patch at each position
    predicted: np.ndarray     # [N, Gh, Gw] predicted class with the patch at each position
    attribution: np.ndarray   # [N, H, W]   Captum's per-pixel occlusion attribution
    target: np.ndarray        # [N] the class whose probability is tracked
    base_probability: np.ndarray  # [N] probability of target without any patch
    base_predicted: np.ndarray    # [N] predicted class without any patch
    patch: tuple              # (ph, pw)
    stride: tuple             # (sh, sw)
    fill: float

    @property
    def grid_shape(self):
        return self.probability.shape[1:]

    def positions(self):
        """Top-left pixel (row, column) of the patch at each grid cell: two arrays [Gh], [Gw]."""
        gh, gw = self.grid_shape
        return np.arange(gh) * self.stride[0], np.arange(gw) * self.stride[1]


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        a, b = v
        if not all(isinstance(t, (int, np.integer)) for t in (a, b)):
            raise TypeError
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"occlusion: {name} must be an int or a pair of ints, got {v!r}") from None


def grid_size(image_size, patch, stride):
    """Number of patch positions along one side: ``(size - patch) // stride + 1``."""
    return (int(image_size) - int(patch)) // int(stride) + 1


def occlusion_masks(image_shape, patch, stride):
    """Boolean masks [Gh * Gw, H, W], True where the patch sits, one per grid position (row-major)."""
    (h, w), (ph, pw), (sh, sw) = image_shape, patch, stride
    rows = np.arange(grid_size(h, ph, sh)) * sh
    cols = np.arange(grid_size(w, pw, sw)) * sw
    in_rows = (np.arange(h)[None, :] >= rows[:, None]) & (np.arange(h)[None, :] < rows[:, None] + ph)  # [Gh, H]
    in_cols = (np.arange(w)[None, :] >= cols[:, None]) & (np.arange(w)[None, :] < cols[:, None] + pw)  # [Gw, W]
    return (in_rows[:, None, :, None] & in_cols[None, :, None, :]).reshape(len(rows) * len(cols), h, w)


def check_settings(image_shape, patch, stride):
    """Validate patch and stride against an image shape (H, W); return them as pairs."""
    given = stride
    patch, stride = _pair(patch, "patch"), _pair(stride, "stride")
    h, w = image_shape
    if min(patch) <= 0:
        raise ValueError(f"occlusion: the patch must be at least 1x1 pixel, got {patch[0]}x{patch[1]}")
    if patch[0] > h or patch[1] > w:
        raise ValueError(f"occlusion: a {patch[0]}x{patch[1]} patch does not fit on a {h}x{w} image")
    if min(stride) <= 0:
        raise ValueError(f"occlusion: the stride must be a positive number of pixels, got {given}")
    return patch, stride


def occluded_batches(images, masks, fill, batch_size, progress=False, desc="occlusion"):
    """Every (image, patch position) pair, ``batch_size`` occluded images at a time (row-major: image, then
    position): yields ``(flat, image index, position index, occluded [B, H, W])``."""
    positions = len(masks)
    total = len(images) * positions
    fill_value = images.dtype.type(fill)
    chunks = range(0, total, int(batch_size))
    if progress:
        from ..progress import progress_bar
        chunks = progress_bar(chunks, desc=desc, unit="batch", leave=False)
    for start in chunks:
        flat = np.arange(start, min(start + int(batch_size), total))
        img, pos = flat // positions, flat % positions
        yield flat, img, pos, np.where(masks[pos], fill_value, images[img])   # one chunk at a time


def as_images(images, where="occlusion"):
    """[N, H, W] from [N, H, W] or [N, 1, H, W]; a ValueError naming ``where`` otherwise."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"{where}: expected images of shape [N, H, W] or [N, 1, H, W], got {np.shape(images)}")
    if len(images) == 0:
        raise ValueError(f"{where}: no images given")
    return images


def occlusion(classifier, images, target=None, patch=10, stride=2, fill=0.0, batch_size=256, progress=False):
    """Occlude each image with a ``patch`` of value ``fill`` at every grid position; see the module doc.

    Parameters
    ----------
    classifier : npcnn.classifier.Classifier
    images : array [N, H, W] or [N, 1, H, W], pixel space [0, 1]
    target : None, int or int array [N]
        The class whose probability is tracked (the true label, as the
        report). None: the class predicted for the unoccluded image.
    patch, stride : int or (h, w)
    fill : float, the value of the occluded pixels (pixel space)
    batch_size : int, occluded images per forward pass (bounds the memory)
    progress : bool, show a tqdm bar over the chunks

    Returns
    -------
    OcclusionResult
    """
    images = as_images(images)
    if int(batch_size) <= 0:
        raise ValueError(f"occlusion: batch_size must be positive, got {batch_size}")
    n, h, w = images.shape
    patch, stride = check_settings((h, w), patch, stride)
    fill = float(fill)
    dtype = classifier.dtype
    images = images.astype(dtype, copy=False)

    base = np.concatenate([classifier.predict_proba(images[i:i + int(batch_size)])  # same chunks: same buffers
                           for i in range(0, n, int(batch_size))])
    if target is None:
        target = base.argmax(axis=1)
    target = np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy()
    if np.any((target < 0) | (target >= base.shape[1])):
        raise ValueError(f"occlusion: target classes must be in 0..{base.shape[1] - 1}, got {target.tolist()}")

    masks = occlusion_masks((h, w), patch, stride)           # [P, H, W]
    gh, gw = grid_size(h, patch[0], stride[0]), grid_size(w, patch[1], stride[1])
    positions = len(masks)
    total = n * positions
    probability = np.empty(total, dtype=np.float64)
    predicted = np.empty(total, dtype=np.int64)
    for flat, img, pos, occluded in occluded_batches(images, masks, fill, batch_size, progress):
        p = classifier.predict_proba(occluded)
        probability[flat] = p[np.arange(len(flat)), target[img]]
        predicted[flat] = p.argmax(axis=1)

    probability = probability.reshape(n, positions)
    base_p = base[np.arange(n), target].astype(np.float64)
    # Captum: sum over windows of (p0 - p) * mask, divided by the number of windows covering the pixel
    flat_masks = masks.reshape(positions, h * w).astype(np.float64)
    counts = flat_masks.sum(axis=0)
    summed = (base_p[:, None] - probability) @ flat_masks
    attribution = np.divide(summed, counts, out=np.zeros_like(summed), where=counts > 0).reshape(n, h, w)
    return OcclusionResult(
        probability=probability.reshape(n, gh, gw),
        predicted=predicted.reshape(n, gh, gw),
        attribution=attribution,
        target=target,
        base_probability=base_p,
        base_predicted=base.argmax(axis=1),
        patch=patch, stride=stride, fill=fill,
    )
