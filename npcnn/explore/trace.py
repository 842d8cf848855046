"""One image through the net, forward and backward, every layer kept: what the explorer shows.

:func:`trace` runs the readable layers of ``classifier.body`` (the net without its LogSoftmax) one by one,
keeping each layer's output, then runs them backward from the one-hot gradient of the target class's
logit with ``backward(g, param_grads=False)`` (the chain rule, no dL/dW), keeping the gradient that
arrives at each layer's output. So for layer ``i`` with output ``a_i``:

* ``activations[i] = a_i``                 (its forward output, batch dimension dropped)
* ``gradients[i] = dS_t / d a_i``          (``S_t`` the logit of the target class)
* ``input_gradient = dS_t / d x``          (pixel space: the net sees ``z = (x - mean) / std``, so
  ``d/dx = d/dz / std``)

:func:`conv_pixel` explains one output pixel of a conv layer, both ways:

* forward: the input patch under the kernel, the kernel, the products ``w * patch`` and their sum plus
  the bias, which is the pixel's value; and its receptive field on the input image;
* backward: where the pixel's gradient comes from. It feeds one element of the next weighted layer's
  input (through the ReLU, which passes the gradient only where the unit is on, and the max-pool, which
  passes it only to the winner of each window); that layer's gradient reaches the element as the sum of
  products ``w * dS/d(output)`` over every output that sees it, the backward twin of the forward sum.
"""
from dataclasses import dataclass

import numpy as np

from ..analysis.channels import receptive_field
from ..nn import Conv2d, Flatten, Linear, MaxPool2d

POINTWISE = ("ReLU", "BatchNorm2d", "Dropout")


@dataclass
class Trace:
    """One image's forward and backward pass through ``classifier.body``, layer by layer."""

    image: np.ndarray           # [H, W] the pixel-space input
    normalized: np.ndarray      # [1, 1, H, W] what the first layer sees
    probabilities: np.ndarray   # [C] from the classifier (its fast path, as Classifier.predict_proba)
    target: int                 # the class whose logit is differentiated
    activations: list           # per layer: its output [C, h, w] or [F]
    gradients: list             # per layer: dS_target / d output, same shapes
    input_gradient: np.ndarray  # [H, W] dS_target / dx in pixel space

    @property
    def prediction(self):
        return int(np.argmax(self.probabilities))


def layer_names(classifier):
    """Short, unique names of the layers of ``classifier.body``, each kind numbered in order: conv1, relu1,
    pool1, conv2, relu2, pool2, flatten, fc1, relu3, fc2 for the reference net."""
    short = {"Conv2d": "conv", "Linear": "fc", "ReLU": "relu", "MaxPool2d": "pool", "BatchNorm2d": "bn",
             "Dropout": "dropout", "Flatten": "flatten"}
    names, counts = [], {}
    for layer in classifier.body:
        key = short.get(type(layer).__name__, type(layer).__name__.lower())
        counts[key] = counts.get(key, 0) + 1
        names.append(key if key == "flatten" and counts[key] == 1 else f"{key}{counts[key]}")
    return names


def check_image(classifier, image):
    image = np.asarray(image, dtype=classifier.dtype)
    if image.ndim != 2:
        raise ValueError(f"trace: expected one image [H, W], got shape {image.shape}")
    return image


def trace(classifier, image, target=None):
    """The forward and backward pass of one pixel-space ``image`` [H, W]; ``target`` None: the predicted
    class. See the module doc."""
    image = check_image(classifier, image)
    probabilities = classifier.predict_proba(image[None])[0]   # first: the fast path shares the fc layers
    target = int(np.argmax(probabilities)) if target is None else int(target)
    if not 0 <= target < classifier.num_classes:
        raise ValueError(f"trace: target must be a class in 0..{classifier.num_classes - 1}, got {target}")
    classifier.model.eval()
    z = classifier.normalize(image[None, None])
    layers = classifier.body.layers
    activations, h = [], z
    for layer in layers:
        h = layer.forward(h)
        activations.append(np.array(h[0], copy=True))       # layers may reuse their buffers
    g = np.zeros((1, classifier.num_classes), dtype=classifier.dtype)
    g[0, target] = 1
    gradients = [None] * len(layers)
    for i in reversed(range(len(layers))):
        gradients[i] = np.array(g[0], copy=True)
        g = layers[i].backward(g, param_grads=False)
    dx = (g / classifier.dtype.type(classifier.normalization.std)).reshape(image.shape)
    return Trace(image, z, probabilities, target, activations, gradients, np.array(dx, copy=True))


def layer_input(t, index):
    """The input of layer ``index`` in trace ``t`` (batch dimension dropped)."""
    return t.normalized[0] if index == 0 else t.activations[index - 1]


def conv_pixel(classifier, t, index, channel, row, col):
    """Explain output pixel (``channel``, ``row``, ``col``) of the Conv2d at ``index`` in trace ``t``.

    Returns a dict of arrays and numbers (see the module doc): ``value``, ``bias``, ``kernel`` [Cin, kh, kw],
    ``patch`` [Cin, kh, kw] (the layer's input under the kernel, 0 in the padding), ``inside`` [kh, kw]
    (False where the kernel hangs over the border), ``products`` = kernel * patch, ``sum`` (products plus
    bias: equals ``value`` up to rounding), ``receptive_field`` (row0, row1, col0, col1) on the input
    image, ends exclusive, clipped to the image; and the backward side: ``gradient`` (dS/d this pixel),
    ``sends`` = gradient * kernel (what it adds to dS/d patch), and ``comes_from`` (see :func:`_comes_from`).
    Call it right after :func:`trace` made ``t``: the ReLUs and pools answer through their own backward,
    which reads what their last forward pass cached.
    """
    layers = classifier.body.layers
    conv = layers[index]
    if not isinstance(conv, Conv2d):
        raise ValueError(f"layer {index} is a {type(conv).__name__}, not a Conv2d")
    out = t.activations[index]
    if not (0 <= channel < out.shape[0] and 0 <= row < out.shape[1] and 0 <= col < out.shape[2]):
        raise ValueError(f"pixel ({channel}, {row}, {col}) is outside layer {index}'s output {list(out.shape)}")
    x = layer_input(t, index)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    inside = np.pad(np.ones(x.shape[1:], dtype=bool), ((ph, ph), (pw, pw)))
    r0, c0 = row * sh, col * sw
    patch = padded[:, r0:r0 + kh, c0:c0 + kw]
    kernel = conv.weight.data[channel]
    bias = float(conv.bias.data[channel]) if conv.bias is not None else 0.0
    products = kernel * patch
    name = next(n for n, i in _conv_indices(classifier).items() if i == index)
    rf = receptive_field(classifier, name)
    h, w = t.image.shape
    top, left = rf["offset"][0] + row * rf["stride"][0], rf["offset"][1] + col * rf["stride"][1]
    box = (max(top, 0), min(top + rf["size"][0], h), max(left, 0), min(left + rf["size"][1], w))
    gradient = float(t.gradients[index][channel, row, col])
    return {
        "layer": index, "name": name, "channel": channel, "row": row, "col": col,
        "value": float(out[channel, row, col]), "bias": bias, "kernel": kernel, "patch": patch,
        "inside": inside[r0:r0 + kh, c0:c0 + kw], "products": products,
        "sum": float(products.sum(dtype=np.float64) + bias),
        "receptive_field": tuple(int(v) for v in box),
        "gradient": gradient, "sends": gradient * kernel,
        "comes_from": _comes_from(classifier, t, index, (channel, row, col)),
    }


def _conv_indices(classifier):
    """``{"conv1": index in classifier.body, ...}``."""
    convs = [i for i, m in enumerate(classifier.body) if isinstance(m, Conv2d)]
    return {f"conv{k + 1}": i for k, i in enumerate(convs)}


def _comes_from(classifier, t, index, element):
    """Where ``dS/d a_index[element]`` comes from: the layers it passes on the way to the next weighted
    layer, and that layer's products.

    Returns ``{"path": [{"layer", "name", "rule", "factor"}...], "via": index of the weighted layer,
    "via_name", "element": its input element (a tuple), "products": array (Conv2d: [out, kh, kw] the
    weights times the output gradients that see the element, 0 where none; Linear: [out]), "sum":
    their sum = dS/d that element, "gradient": sum times the path's factors}``. A factor is 1 or 0 for a
    ReLU (on / off) and a max-pool (the window's winner or not), the scale ``gamma / sqrt(var + eps)``
    for an eval-mode BatchNorm.
    """
    layers, names = classifier.body.layers, layer_names(classifier)
    path, factor, e = [], 1.0, tuple(element)
    for j in range(index + 1, len(layers)):
        layer = layers[j]
        if isinstance(layer, (Conv2d, Linear)):
            products = _products_into(layer, t.gradients[j], e)
            total = float(products.sum(dtype=np.float64))
            return {"path": path, "via": j, "via_name": names[j], "element": [int(v) for v in e],
                    "products": products, "sum": total, "gradient": total * factor}
        kind = type(layer).__name__
        if kind in POINTWISE:
            f = _pointwise_factor(layer, t.gradients[j].shape, e, classifier.dtype)
            rule = ("on: passes the gradient" if f else "off: blocks the gradient") if kind == "ReLU" \
                else "scales the gradient"
        elif isinstance(layer, MaxPool2d):
            f, e = _pool_route(layer, t.gradients[j].shape, e, classifier.dtype)
            rule = "the window's winner: passes the gradient" if f else "not its window's max: gradient 0"
        elif isinstance(layer, Flatten):
            f, e = 1.0, (int(np.ravel_multi_index(e, layer_input(t, j).shape)),)
            rule = "reshapes"
        else:
            raise ValueError(f"cannot follow a gradient through a {kind}")
        path.append({"layer": j, "name": names[j], "rule": rule, "factor": float(f)})
        factor *= f
        if f == 0:
            return {"path": path, "via": None, "via_name": None, "element": [int(v) for v in e],
                    "products": None, "sum": 0.0, "gradient": 0.0}
    raise ValueError(f"layer {index} is not followed by a weighted layer")


def _onehot(shape, element, dtype):
    g = np.zeros((1,) + tuple(shape), dtype=dtype)
    g[(0,) + tuple(element)] = 1
    return g


def _pointwise_factor(layer, shape, e, dtype):
    """d out[e] / d in[e] of a pointwise layer, by its own backward (its cached forward decides)."""
    return float(layer.backward(_onehot(shape, e, dtype), param_grads=False)[(0,) + e])


def _pool_route(layer, out_shape, e, dtype):
    """A max-pool with windows that do not overlap: the output element whose window holds input ``e``, and
    1 if ``e`` won it (the layer's own backward says so, ties as it breaks them), else 0."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    if (kh, kw) != (sh, sw) or (ph, pw) != (0, 0):
        raise ValueError("cannot follow a gradient through an overlapping or padded max-pool")
    c, r, col = e
    out = (c, r // sh, col // sw)
    if out[1] >= out_shape[1] or out[2] >= out_shape[2]:
        return 0.0, out                        # cut off at the border: no window holds it
    back = layer.backward(_onehot(out_shape, out, dtype), param_grads=False)
    return float(back[0, c, r, col]), out


def _products_into(layer, grad_out, e):
    """The products ``w * dS/d(output)`` that sum to dS/d(input element ``e``) of a Conv2d or Linear."""
    w = layer.weight.data
    if isinstance(layer, Linear):
        return w[:, e[0]] * grad_out
    c, a, b = e
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    products = np.zeros((w.shape[0], kh, kw), dtype=w.dtype)
    for di in range(kh):
        i, ri = divmod(a + ph - di, sh)
        if ri or not 0 <= i < grad_out.shape[1]:
            continue
        for dj in range(kw):
            j, rj = divmod(b + pw - dj, sw)
            if rj or not 0 <= j < grad_out.shape[2]:
                continue
            products[:, di, dj] = w[:, c, di, dj] * grad_out[:, i, j]
    return products
