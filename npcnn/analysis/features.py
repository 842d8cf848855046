"""Filters and feature maps: what the convolutional layers learned, and what they see.

Works for any :class:`~npcnn.nn.Sequential` (the reference net with or
without BatchNorm): the conv layers are found by walking the layers, and are
named ``conv1``, ``conv2``, ... in order.

>>> maps = feature_maps(classifier, images)          # doctest: +SKIP
>>> maps["conv1"].shape                               # doctest: +SKIP
(2, 32, 28, 28)
"""
import numpy as np

from ..nn import Conv2d, ReLU

# the conv2 filters the report shows
REPORT_FILTERS = (15, 4, 1, 2, 8)


def _model(classifier):
    """The Sequential of a Classifier (without its LogSoftmax), or the Sequential itself."""
    return getattr(classifier, "body", classifier)


def conv_layers(classifier):
    """``{"conv1": Conv2d, "conv2": Conv2d, ...}`` in the order they appear in the Sequential.

    ``classifier``: a :class:`~npcnn.classifier.Classifier` or a :class:`~npcnn.nn.Sequential`.
    """
    convs = [layer for layer in _model(classifier) if isinstance(layer, Conv2d)]
    return {f"conv{i + 1}": layer for i, layer in enumerate(convs)}


def filters(classifier, conv2_filters=REPORT_FILTERS):
    """The learned kernels: all of conv1 ``[32, 1, 3, 3]`` and the chosen conv2 filters ``[k, 32, 3, 3]``.

    Returns a dict with ``conv1``, ``conv2`` (the chosen filters, in the order
    given) and ``conv2_filters`` (their indices). Copies, in float64.
    ``classifier``: a :class:`~npcnn.classifier.Classifier` or a :class:`~npcnn.nn.Sequential`.
    """
    convs = conv_layers(classifier)
    if len(convs) < 2:
        raise ValueError(f"the model has {len(convs)} Conv2d layer(s); filters() needs two")
    w1 = convs["conv1"].weight.data
    w2 = convs["conv2"].weight.data
    chosen = [int(i) for i in conv2_filters]
    bad = [i for i in chosen if not 0 <= i < w2.shape[0]]
    if bad:
        raise ValueError(f"filter {bad[0]} is out of range: conv2 has {w2.shape[0]} filters (0..{w2.shape[0] - 1})")
    return {"conv1": np.array(w1, dtype=np.float64), "conv2": np.array(w2[chosen], dtype=np.float64),
            "conv2_filters": np.array(chosen, dtype=np.int64)}


def feature_maps(classifier, images, post_activation=False, layers=None):
    """The outputs of each conv layer for pixel-space ``images`` [N, H, W] or [N, 1, H, W].

    Returns ``{"conv1": [N, C, H, W], "conv2": ...}``: the conv output itself
    (before the activation, as the report plots them), or, with
    ``post_activation=True``, the output of the ReLU that follows each conv
    (the first ReLU after it, BatchNorm or pooling in between allowed).
    The forward pass stops after the last map wanted; batches of
    ``classifier.batch_size`` images; eval mode.
    """
    model = _model(classifier)
    images = classifier._as_input(images)
    if len(images) == 0:
        raise ValueError("feature_maps: no images given")
    convs = conv_layers(model)
    wanted = list(convs) if layers is None else list(layers)
    unknown = [name for name in wanted if name not in convs]
    if unknown:
        raise ValueError(f"no layer {unknown[0]!r}; the model has {', '.join(convs) or 'no conv layers'}")
    classifier.model.eval()
    out = {name: [] for name in wanted}
    for i in range(0, len(images), classifier.batch_size):
        h = classifier.normalize(images[i:i + classifier.batch_size])
        todo, pending, seen = set(wanted), None, 0  # maps still to record; the conv awaiting its ReLU
        for layer in model:
            if not todo:
                break  # nothing later is needed
            h = layer.forward(h)
            if isinstance(layer, Conv2d):
                seen += 1
                name = f"conv{seen}"
                if name in todo and post_activation:
                    pending = name
                elif name in todo:
                    out[name].append(h.copy())
                    todo.discard(name)
            elif isinstance(layer, ReLU) and pending is not None:
                out[pending].append(h.copy())
                todo.discard(pending)
                pending = None
        if todo:
            raise ValueError(f"{sorted(todo)[0]} is not followed by a ReLU; use post_activation=False")
    return {name: np.concatenate(out[name]) for name in wanted}
