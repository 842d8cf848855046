"""Filters and feature maps: what the convolutional layers learned, and what they see.

Works for any :class:`~npcnn.nn.Sequential` (the reference net with or
without BatchNorm, and every net of :mod:`npcnn.models`): the conv layers are
found by walking the layers and named by the net's own structure, in order:
``conv1``, ``conv2``, ... for its Conv2d layers and ``block1``, ``block2``, ...
for the layers that hold convs inside (a residual block). ``"last"`` names the
last of them (conv2 in the reference net).

>>> maps = feature_maps(classifier, images)          # doctest: +SKIP
>>> maps["conv1"].shape                               # doctest: +SKIP
(2, 32, 28, 28)
"""
import numpy as np

from ..nn import Conv2d, LeakyReLU, ReLU, Sigmoid, Tanh

#: what counts as a conv's activation (``post_activation``): the first of these after it
ACTIVATIONS = (ReLU, LeakyReLU, Tanh, Sigmoid)

# the conv2 filters the report shows
REPORT_FILTERS = (15, 4, 1, 2, 8)


def _model(classifier):
    """The Sequential of a Classifier (without its LogSoftmax), or the Sequential itself."""
    return getattr(classifier, "body", classifier)


def _holds_conv(module):
    """Whether ``module`` is a Conv2d or holds one (a Residual block, a nested Sequential)."""
    return any(isinstance(m, Conv2d) for m in module.modules())


def conv_layers(classifier):
    """``{"conv1": Conv2d, "conv2": Conv2d, ...}`` in the order they appear in the Sequential; a layer that
    holds convs inside (a :class:`~npcnn.nn.Residual` block) is ``"block1"``, ``"block2"``, ...

    ``classifier``: a :class:`~npcnn.classifier.Classifier` or a :class:`~npcnn.nn.Sequential`.
    """
    out, convs, blocks = {}, 0, 0
    for layer in _model(classifier):
        if isinstance(layer, Conv2d):
            convs += 1
            out[f"conv{convs}"] = layer
        elif _holds_conv(layer):
            blocks += 1
            out[f"block{blocks}"] = layer
    return out


def layer_name(classifier, layer, where="--layer"):
    """The name of conv layer ``layer`` (a name of :func:`conv_layers`, or ``"last"``: the last of them);
    a ValueError naming the choices otherwise."""
    convs = conv_layers(classifier)
    if layer == "last" and convs:
        return list(convs)[-1]
    if isinstance(layer, str) and layer in convs:
        return layer
    raise ValueError(f"{where} must be one of {', '.join([*convs, 'last']) if convs else '(no conv layers)'}, "
                     f"got {layer!r}")


def out_channels(module):
    """The channels of a conv layer's output: a Conv2d's ``out_channels``, or a block's last conv's."""
    return [m for m in module.modules() if isinstance(m, Conv2d)][-1].out_channels


def filters(classifier, conv2_filters=REPORT_FILTERS):
    """The learned kernels: all of conv1 ``[32, 1, 3, 3]`` and the chosen conv2 filters ``[k, 32, 3, 3]``.

    Returns a dict with ``conv1``, ``conv2`` (the chosen filters, in the order
    given) and ``conv2_filters`` (their indices). Copies, in float64. conv1 and
    conv2 are the first two convs the net applies (in a residual net the second
    is the first conv of the first block).
    ``classifier``: a :class:`~npcnn.classifier.Classifier` or a :class:`~npcnn.nn.Sequential`.
    """
    convs = [m for m in _model(classifier).modules() if isinstance(m, Conv2d)]
    if len(convs) < 2:
        raise ValueError(f"the model has {len(convs)} Conv2d layer(s); filters() needs two")
    w1 = convs[0].weight.data
    w2 = convs[1].weight.data
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
    ``post_activation=True``, the output of the activation that follows each
    conv (the first ReLU, LeakyReLU, Tanh or Sigmoid after it, BatchNorm or
    pooling in between allowed). A block's map is its output (for a residual
    block: body + shortcut, before the ReLU that follows).
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
    names = {id(m): name for name, m in convs.items()}
    classifier.model.eval()
    out = {name: [] for name in wanted}
    for i in range(0, len(images), classifier.batch_size):
        h = classifier.normalize(images[i:i + classifier.batch_size])
        todo, pending = set(wanted), None  # maps still to record; the conv awaiting its activation
        for layer in model:
            if not todo:
                break  # nothing later is needed
            h = layer.forward(h)
            if id(layer) in names:
                name = names[id(layer)]
                if name in todo and post_activation:
                    pending = name
                elif name in todo:
                    out[name].append(h.copy())
                    todo.discard(name)
            elif isinstance(layer, ACTIVATIONS) and pending is not None:
                out[pending].append(h.copy())
                todo.discard(pending)
                pending = None
        if todo:
            raise ValueError(f"{sorted(todo)[0]} is not followed by an activation; use post_activation=False")
    return {name: np.concatenate(out[name]) for name in wanted}
