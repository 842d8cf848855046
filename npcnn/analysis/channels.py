"""What each channel of a conv layer does for the whole test set: how much the net needs it, and what it
responds to most.

* :func:`channel_ablation`: Captum's ``LayerFeatureAblation`` on a conv layer's output with one group per
  channel and baseline 0: every output channel in turn set to zero for all images, the rest of the net
  run on; accuracy (overall and per class) and the target logit's change, per channel.
* :func:`top_activations`: Zeiler & Fergus's dataset examples: for each channel, the ``k`` (image,
  position) pairs of the set with the largest activation after the conv's ReLU, and the input patch each
  position sees (:func:`receptive_field`, computed from the layers' kernels, strides and paddings).

>>> r = channel_ablation(classifier, images, labels, layer="conv2")   # doctest: +SKIP
>>> r.drop.shape, r.class_drop.shape                                   # doctest: +SKIP
((32,), (32, 10))
"""
from dataclasses import dataclass

import numpy as np

from .. import fast
from ..nn import AvgPool2d, Conv2d, MaxPool2d, Residual, Sequential
from .embedding import _batches, as_pixels
from .features import _model, conv_layers, feature_maps, layer_name, out_channels

#: layers that change neither the spatial size nor which input pixels a unit sees
_POINTWISE = ("ReLU", "LeakyReLU", "Tanh", "Sigmoid", "BatchNorm2d", "Dropout")


def _conv(classifier, layer):
    """(index of the named conv layer in the Sequential, the layer, its name: "last" resolved), with an error
    naming the choices."""
    name = layer_name(classifier, layer)
    module = conv_layers(classifier)[name]
    return next(i for i, m in enumerate(_model(classifier)) if m is module), module, name


def check_channels(classifier, layer, channels):
    """The channels of ``layer`` to use (default: all), as an int64 array; an error naming the range."""
    n = out_channels(_conv(classifier, layer)[1])
    if channels is None:
        return np.arange(n, dtype=np.int64)
    chosen = np.atleast_1d(np.asarray(channels)).ravel()
    if chosen.size == 0 or chosen.dtype.kind not in "iu" or chosen.min() < 0 or chosen.max() >= n \
            or len(np.unique(chosen)) < len(chosen):
        raise ValueError(f"--channels must be distinct integers in 0..{n - 1} ({layer} has {n}), got {channels}")
    return chosen.astype(np.int64)


# --------------------------------------------------------------------------- ablation

@dataclass
class AblationResult:
    """One conv layer's channels, each ablated (its output set to 0) in turn, on N labelled images.

    ``logit_change[i, k]``: target (true-class) logit of image i with nothing ablated minus with channel
    ``channels[k]`` ablated (Captum's sign: > 0 means the channel helped). Accuracies are fractions; a
    class with no image has NaN class accuracies. ``drop = base_accuracy - accuracy`` (and per class).
    """
    layer: str
    channels: np.ndarray           # [K]
    labels: np.ndarray             # [N]
    base_logit: np.ndarray         # [N] target logit, nothing ablated
    logit_change: np.ndarray       # [N, K]
    base_accuracy: float
    base_class_accuracy: np.ndarray   # [num_classes]
    accuracy: np.ndarray           # [K]
    class_accuracy: np.ndarray     # [K, num_classes]
    counts: np.ndarray             # images per class [num_classes]

    @property
    def drop(self):
        """Overall accuracy drop per ablated channel [K] (fraction; negative = better without it)."""
        return self.base_accuracy - self.accuracy

    @property
    def class_drop(self):
        """Per-class accuracy drop [K, num_classes]."""
        return self.base_class_accuracy[None, :] - self.class_accuracy

    def ranking(self):
        """Positions into ``channels``, the largest drop first (ties: lower channel first)."""
        return np.lexsort((self.channels, -self.drop))


def _class_accuracy(correct, labels, num_classes):
    """[..., N] booleans -> [..., num_classes] accuracy per class (NaN for a class with no image)."""
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.stack([correct[..., labels == c].sum(axis=-1) for c in range(num_classes)], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan), counts


def channel_ablation(classifier, images, labels, layer="last", channels=None, batch_size=1000, progress=False):
    """Set each output channel of conv ``layer`` to zero in turn (for every image and position) and run the
    rest of the net: accuracy overall and per class, and the true-class logit's change, per channel.

    This is :class:`captum.attr.LayerFeatureAblation` on that Conv2d's output with ``layer_baselines=0``
    and a ``layer_mask`` grouping each channel (``target`` = the labels): its attribution for channel c,
    image i is ``logit_target(x_i) - logit_target(x_i, channel c zeroed)``, our ``logit_change[i, k]``.
    Zeroing the conv's output equals zeroing that filter's weights and bias. ``images``: uint8 [N, H, W]
    or pixel-space floats; ``labels`` [N]. With BatchNorm after the pool, the zeroed channel leaves it as
    BatchNorm's image of 0, as in Captum. The layers before and after the conv run on the fast path
    once per batch (the head once, the tail once per channel). Returns an :class:`AblationResult`.
    """
    j, _, layer = _conv(classifier, layer)
    chosen = check_channels(classifier, layer, channels)
    images, labels = np.asarray(images), np.asarray(labels).astype(np.int64)
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"channel_ablation: {len(images)} images and {len(labels)} labels")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    nc = classifier.num_classes
    if labels.min() < 0 or labels.max() >= nc:
        raise ValueError(f"labels must be in 0..{nc - 1}")
    model = _model(classifier)
    head, tail = fast.plan(Sequential(*model.layers[:j + 1])), fast.plan(Sequential(*model.layers[j + 1:]))
    classifier.model.eval()
    n, rows = len(labels), np.arange(len(labels))
    base = np.empty(n, dtype=classifier.dtype)
    base_correct = np.empty(n, dtype=bool)
    change = np.empty((n, len(chosen)), dtype=classifier.dtype)
    correct = np.empty((len(chosen), n), dtype=bool)
    for i in _batches(n, batch_size, progress, f"ablation {layer}"):
        x = classifier._as_input(as_pixels(images[i:i + batch_size], classifier.dtype))
        sl, r, y = slice(i, i + len(x)), rows[:len(x)], labels[i:i + len(x)]
        h = np.array(head.forward(classifier.normalize(x)))       # the conv's output [B, C, H, W], a copy
        logits = tail.forward(h.copy())
        base[sl], base_correct[sl] = logits[r, y], logits.argmax(axis=1) == y
        for k, c in enumerate(chosen):
            ablated = h.copy()
            ablated[:, c] = 0
            logits = tail.forward(ablated)
            change[sl, k] = base[sl] - logits[r, y]
            correct[k, sl] = logits.argmax(axis=1) == y
    base_class, counts = _class_accuracy(base_correct, labels, nc)
    class_acc, _ = _class_accuracy(correct, labels, nc)
    return AblationResult(layer=layer, channels=chosen, labels=labels, base_logit=base, logit_change=change,
                          base_accuracy=float(base_correct.mean()), base_class_accuracy=base_class,
                          accuracy=correct.mean(axis=1), class_accuracy=class_acc, counts=counts)


# --------------------------------------------------------------------------- dataset examples

def receptive_field(classifier, layer="last"):
    """Which input pixels one unit of conv ``layer``'s output sees, from the kernels, strides and paddings
    of the layers up to it (activations, BatchNorm2d and Dropout change nothing; a residual block's is its
    body's, which covers its shortcut's).

    Returns ``{"size": (Rh, Rw), "stride": (Jh, Jw), "offset": (Oh, Ow)}``: unit (r, c) sees input rows
    ``Oh + r*Jh .. Oh + r*Jh + Rh - 1`` (and the columns likewise), before clipping at the image border.
    Through a layer with kernel k, stride s, padding p: ``O -= p*J``, ``R += (k - 1)*J``, ``J *= s``.
    The reference net: conv1 3x3 (offset -1), after the 2x2 pool 4x4 (stride 2), conv2 8x8 (offset -3).
    """
    j, _, layer = _conv(classifier, layer)
    size, stride, offset = np.ones(2, np.int64), np.ones(2, np.int64), np.zeros(2, np.int64)

    def through(modules):
        nonlocal size, stride, offset
        for m in modules:
            if isinstance(m, (Conv2d, MaxPool2d, AvgPool2d)):
                k, s, p = (np.array(v, dtype=np.int64) for v in (m.kernel_size, m.stride, m.padding))
                offset = offset - p * stride
                size = size + (k - 1) * stride
                stride = stride * s
            elif isinstance(m, Residual):
                through(m.body if isinstance(m.body, Sequential) else [m.body])
            elif type(m).__name__ not in _POINTWISE:
                raise ValueError(f"receptive_field: cannot follow a {type(m).__name__} before {layer}")

    through(list(_model(classifier))[:j + 1])
    return {"size": tuple(int(v) for v in size), "stride": tuple(int(v) for v in stride),
            "offset": tuple(int(v) for v in offset)}


@dataclass
class TopActivations:
    """For each channel of one conv layer, its ``k`` strongest (image, position) pairs, strongest first.

    ``boxes[c, i] = (row0, row1, col0, col1)``: the receptive field of that position clipped at the image
    border (ends exclusive); ``patches[c, i]`` is the [Rh, Rw] receptive field itself, the image's pixels
    where it lies inside the image and NaN where it hangs over the border.
    """
    layer: str
    indices: np.ndarray       # [C, k] image indices into the images given
    positions: np.ndarray     # [C, k, 2] (row, col) in the conv layer's output map
    values: np.ndarray        # [C, k] the activation after the conv's ReLU
    patches: np.ndarray       # [C, k, Rh, Rw] float64 pixels in [0, 1], NaN outside the image
    boxes: np.ndarray         # [C, k, 4]
    receptive_field: dict     # size, stride, offset (see receptive_field())


def _top_k(values, ids, k):
    """Per row of ``values`` [C, M] the k largest, ties to the smaller id; returns (values, ids) [C, k]."""
    c, m = values.shape
    kth = np.partition(values, m - k, axis=1)[:, m - k:m - k + 1]      # the k-th largest of each row
    out_v, out_i = np.empty((c, k), values.dtype), np.empty((c, k), np.int64)
    for row in range(c):
        above = np.flatnonzero(values[row] > kth[row])
        tied = np.flatnonzero(values[row] == kth[row])
        keep = np.concatenate([above, tied[np.argsort(ids[row, tied], kind="stable")][:k - len(above)]])
        order = np.lexsort((ids[row, keep], -values[row, keep]))
        out_v[row], out_i[row] = values[row, keep[order]], ids[row, keep[order]]
    return out_v, out_i


def _candidates(maps, first_id, k, floor):
    """The values of ``maps`` [B, C, h, w] that can still be among each channel's k largest, as [C, M]
    values and ids (``first_id`` + the row-major index over (image, row, col)), padded with -inf.

    A bound that keeps the selection exact: the k largest per-image maxima of a channel are k values of
    its map, so its k-th largest value is at least the k-th largest of them; with ``floor`` (the k-th best
    value of the batches before, whose ids are all smaller) a later value must exceed it to enter. Only
    values at or above the bound are kept, which is few, instead of sorting all B*h*w per channel.
    """
    b, c, h, w = maps.shape
    flat = maps.reshape(b, c, h * w)
    peaks = flat.max(axis=2).T                                            # [C, B]
    if k <= b:
        bound = np.partition(peaks, b - k, axis=1)[:, b - k]             # k-th largest image peak
    else:
        bound = np.full(c, -np.inf, maps.dtype)                           # fewer images than k: no bound
    keep = flat >= bound[None, :, None]
    if floor is not None:
        keep &= flat > floor[None, :, None]
    img, ch, pos = np.nonzero(keep)
    counts = np.bincount(ch, minlength=c)
    width = max(int(counts.max(initial=0)), 1)
    vals = np.full((c, width), -np.inf, maps.dtype)
    ids = np.full((c, width), np.iinfo(np.int64).max, np.int64)
    order = np.argsort(ch, kind="stable")
    slot = np.arange(len(ch)) - np.repeat(np.cumsum(counts) - counts, counts)
    vals[ch[order], slot] = flat[img, ch, pos][order]
    ids[ch[order], slot] = first_id + img[order] * (h * w) + pos[order]
    return vals, ids


def top_activations(classifier, images, layer="last", k=9, batch_size=1000, progress=False):
    """Zeiler & Fergus's dataset examples: for each channel of conv ``layer``, the ``k`` (image, position)
    pairs of ``images`` with the largest activation after that conv's activation (ties: the earlier image, then
    the earlier position in row-major order), and the input patch each of them sees.

    ``images``: uint8 [N, H, W] or pixel-space floats [N, H, W] / [N, 1, H, W]. The maps come from
    :func:`~npcnn.analysis.features.feature_maps` in batches of ``batch_size``; only the running top k are
    kept. Returns a :class:`TopActivations`.
    """
    layer = _conv(classifier, layer)[2]                        # checks the layer
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    rf = receptive_field(classifier, layer)
    best_v = best_i = None
    for i in _batches(len(images), batch_size, progress, f"top {layer}"):
        x = as_pixels(images[i:i + batch_size], classifier.dtype)
        maps = feature_maps(classifier, x, post_activation=True, layers=[layer])[layer]   # [B, C, h, w]
        b, c, h, w = maps.shape
        if best_v is None:
            if not (isinstance(k, (int, np.integer)) and 0 < k <= len(images) * h * w):
                raise ValueError(f"--k must be an integer in 1..{len(images) * h * w}, got {k}")
            shape = (h, w)
        vals, ids = _candidates(maps, i * h * w, k,
                                None if best_v is None or best_v.shape[1] < k else best_v[:, -1])
        if best_v is not None:
            vals, ids = np.concatenate([best_v, vals], axis=1), np.concatenate([best_i, ids], axis=1)
        best_v, best_i = _top_k(vals, ids, min(k, vals.shape[1]))
    if best_v is None:
        raise ValueError("top_activations: no images given")
    img_idx, pos = np.divmod(best_i, shape[0] * shape[1])
    positions = np.stack(np.divmod(pos, shape[1]), axis=-1)
    (rh, rw), (jh, jw), (oh, ow) = rf["size"], rf["stride"], rf["offset"]
    big_h, big_w = images.shape[-2:]
    top = oh + positions[..., 0] * jh
    left = ow + positions[..., 1] * jw
    boxes = np.stack([np.clip(top, 0, big_h), np.clip(top + rh, 0, big_h),
                      np.clip(left, 0, big_w), np.clip(left + rw, 0, big_w)], axis=-1)
    patches = np.full(best_v.shape + (rh, rw), np.nan)
    for ch, j in np.ndindex(*best_v.shape):
        r0, r1, c0, c1 = boxes[ch, j]
        patches[ch, j, r0 - top[ch, j]:r1 - top[ch, j], c0 - left[ch, j]:c1 - left[ch, j]] = \
            as_pixels(images[img_idx[ch, j], r0:r1, c0:c1], np.dtype(np.float64))
    return TopActivations(layer=layer, indices=img_idx, positions=positions, values=best_v, patches=patches,
                          boxes=boxes, receptive_field=rf)
