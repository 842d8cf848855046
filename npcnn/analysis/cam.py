"""Grad-CAM, guided backprop, deconvolution and guided Grad-CAM: where the net looks, by hand.

Every method walks ``classifier.body`` (the net without its LogSoftmax) with the readable layers (not the
fast path, whose fused Conv2d -> ReLU -> MaxPool2d steps hide the ReLU's backward): one forward pass per
chunk of ``classifier.batch_size`` images, then backward passes that call each layer's own
``backward(g, param_grads=False)`` (the chain rule, no dL/dW), except at a ReLU, whose rule is the
method's. For a ReLU ``y = max(x, 0)`` and the gradient ``g`` arriving at its output:

* ``"gradient"`` (the true derivative, Grad-CAM's):  ``dx = g * [x > 0]``
* ``"guided"`` (guided backprop, Springenberg et al. 2015): ``dx = max(g * [x > 0], 0)``: only positive
  gradients, and only where the forward input was positive (Captum's ``GuidedBackprop``: ReLU of the
  ReLU's ``grad_input``)
* ``"deconvolution"`` (Zeiler and Fergus 2014): ``dx = max(g, 0)``: the ReLU applied to the gradient,
  whatever the forward input (Captum's ``Deconvolution``: ReLU of the ReLU's ``grad_output``)

The score is the logit ``S_t`` of the target class ``t`` (``target=None``: the predicted class), so the
backward starts from the one-hot ``dS/dlogits``. The input maps are in pixel space: the net sees
``z = (x - mean) / std``, so ``d/dx = d/dz / std`` (what Captum gives for a torch model that normalises
inside its forward).

Grad-CAM (Selvaraju et al. 2017) at a layer with output ``A`` [N, K, h, w]:
``alpha_nk = mean_ij dS_t/dA_nkij`` and ``L_n = ReLU(sum_k alpha_nk A_nk)`` [N, h, w] (``relu=False``
keeps the sign), as Captum's ``LayerGradCam(..., relu_attributions=True)``; then upsampled to the input
size by :func:`interpolate`. Guided Grad-CAM is ``guided backprop * interpolate(L, input size, mode)``
with ``L`` rectified, as Captum's ``GuidedGradCam`` (whose default ``interpolate_mode`` is "nearest";
the paper's is "bilinear").

Which activation ``A``: ``layer="last"`` (the default) means the last conv block's rectified maps (conv2's
in ``seed_cnn()``; in a ResNet the last residual block's, after its ReLU: "block3" in small-resnet); ``layer="conv2"``
means conv2's: the output of the first
ReLU after that Conv2d (BatchNorm or pooling in between allowed; the conv's own output if no ReLU follows
before the next conv), as in the paper (Caffe's in-place ReLU makes "conv5_3" rectified) and as
pytorch-grad-cam users pick for VGG / ResNet. An integer ``layer`` is an index into ``classifier.body``
and means exactly that module's output: in ``seed_cnn()`` 3 is conv2 itself (Captum's
``LayerGradCam(model, conv2)``), 4 its ReLU (= "conv2"), 5 its max-pool; 4, 5, 6 with BatchNorm.
:func:`cam_layers` lists the choices. Why the ReLU: where a unit is off, the conv output enters the sum
with its negative value (its zero gradient adds nothing to alpha), so a channel with alpha > 0 pulls the
whole background below zero. On a net trained 2 epochs on MNIST (98.97 % test accuracy), Grad-CAM of the
true class is all zero (nothing left after the final ReLU) for 12.0 % of 1,000 test digits at conv2's
output and 1.7 % at its ReLU; 39 % against 55 % of the map's mass lies on the strokes (pixels > 0.2, 18 %
of the image).
"""
from dataclasses import dataclass

import numpy as np

from ..nn import Conv2d, ReLU, Residual, Sequential
from .features import _holds_conv, conv_layers

MODES = ("bilinear", "nearest")


@dataclass
class GradCam:
    """Grad-CAM of N images at one layer."""

    coarse: np.ndarray      # [N, h, w] at the layer's resolution
    upsampled: np.ndarray   # [N, H, W] bilinear to the input size (align_corners=False, as Captum / torch)
    scaled: np.ndarray      # [N, H, W] the upsampled map shifted and scaled to [0, 1] per image
    weights: np.ndarray     # alpha [N, K]: the spatial mean of dS_t/dA per channel
    target: np.ndarray      # [N] the classes explained
    layer: str              # which activation, in words ("conv2 + ReLU (layer 4)")
    index: int              # its index in classifier.body


@dataclass
class Explanation:
    """All four maps of N images from one forward pass (:func:`explain`)."""

    grad_cam: GradCam
    guided_backprop: np.ndarray   # [N, H, W]
    deconvolution: np.ndarray     # [N, H, W]
    guided_grad_cam: np.ndarray   # [N, H, W] guided_backprop * Grad-CAM upsampled with ``mode``
    mode: str                     # the upsampling of guided Grad-CAM's map
    logits: np.ndarray            # [N, C]


def cam_layers(classifier, size=(28, 28)):
    """``{index: description}`` of the layers of ``classifier.body`` whose output is a map [N, C, h, w]
    for inputs of ``size`` (the layers Grad-CAM can use), found by a forward pass of one black image."""
    classifier.model.eval()
    x = classifier.normalize(np.zeros((1, 1) + tuple(size), dtype=classifier.dtype))
    names = {id(c): name for name, c in conv_layers(classifier).items()}
    out, conv = {}, None
    for i, layer in enumerate(classifier.body):
        x = layer.forward(x)
        if x.ndim != 4:
            break
        if isinstance(layer, Conv2d):
            conv = names[id(layer)]
            out[i] = f"{conv} output (layer {i})"
        elif _holds_conv(layer):                   # a block (a Residual): its convs are inside
            conv = names[id(layer)]
            out[i] = f"{conv} output (layer {i})"
        else:
            out[i] = f"{type(layer).__name__}" + (f" after {conv}" if conv else "") + f" (layer {i})"
        if isinstance(layer, ReLU) and conv and out.get(i - 1, "").startswith(conv):
            out[i] = f"{conv} + ReLU (layer {i})"
    return out


def resolve_layer(classifier, layer, where="grad_cam", size=(28, 28)):
    """``(index into classifier.body, description)`` of ``layer`` (a conv name, "last" for the last conv
    block, or an index) for inputs of ``size``; a ValueError naming the argument and the choices otherwise."""
    convs = conv_layers(classifier)
    maps = cam_layers(classifier, size)
    choices = f"{', '.join(convs)} or an index {min(maps)}..{max(maps)}" if maps else "(none)"
    blocks = [i for i in maps if _holds_conv(classifier.body[i])]
    if (isinstance(layer, str) and layer in convs) or (layer == "last" and blocks):
        index = blocks[-1] if layer == "last" else next(i for i, m in enumerate(classifier.body) if m is convs[layer])
        relu = next((j for j in range(index + 1, max(maps) + 1)
                     if isinstance(classifier.body[j], ReLU) or _holds_conv(classifier.body[j])),
                    None)                          # the first ReLU after the conv, unless a conv comes first
        if relu is not None and isinstance(classifier.body[relu], ReLU):
            index = relu
        return index, maps[index]
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) and int(layer) in maps:
        return int(layer), maps[int(layer)]
    raise ValueError(f"{where}: layer must be {choices} (a layer with a [N, C, h, w] output), or \"last\" "
                     f"(the last conv block), got {layer!r}")


def _check_target(classifier, target, n, where):
    if target is None:
        return None
    t = np.asarray(target)
    if t.dtype.kind not in "iu" or t.ndim > 1 or (t.ndim == 1 and len(t) != n):
        raise ValueError(f"{where}: target must be a class number or one per image ({n}), got {target!r}")
    t = np.broadcast_to(t.astype(np.int64), (n,)).copy()
    if np.any((t < 0) | (t >= classifier.num_classes)):
        raise ValueError(f"{where}: target classes must be in 0..{classifier.num_classes - 1}, got {t.tolist()}")
    return t


def _images(classifier, images, where):
    x = classifier._as_input(images)
    if len(x) == 0:
        raise ValueError(f"{where}: no images given")
    return x.astype(classifier.dtype, copy=False)


def _forward(classifier, z, keep=None):
    """Logits of normalised inputs ``z`` through the readable layers (which cache what backward needs),
    and the output of layer ``keep``."""
    kept = None
    for i, layer in enumerate(classifier.body):
        z = layer.forward(z)
        if i == keep:
            kept = z
    return z, kept


def _backward(classifier, grad, rule="gradient", down_to=0, start=None):
    """The gradient at the input of layer ``down_to`` (0: the net's input), from ``grad`` at the output of
    layer ``start - 1`` (None: the logits), each layer's own backward except at a ReLU, where ``rule``
    decides (see the module's docstring). The layers must hold the caches of a forward pass."""
    for layer in reversed(classifier.body.layers[down_to:start]):
        grad = _backward_through(layer, grad, rule)
    return grad


def _backward_through(layer, grad, rule):
    """One layer's backward with ``rule`` at every ReLU, also at those inside it (a Residual's body, a nested
    Sequential: where Captum's hooks act too); the residual add passes ``grad`` to both paths and sums."""
    if isinstance(layer, ReLU) and rule == "deconvolution":
        return np.maximum(grad, 0)                                   # ReLU of the output gradient
    if isinstance(layer, ReLU) and rule == "guided":
        return np.maximum(layer.backward(grad, param_grads=False), 0)   # ReLU of g * [x > 0]
    if rule == "gradient" or not any(isinstance(m, ReLU) for m in layer.modules() if m is not layer):
        return layer.backward(grad, param_grads=False)
    if isinstance(layer, Sequential):
        for inner in reversed(layer.layers):
            grad = _backward_through(inner, grad, rule)
        return grad
    if isinstance(layer, Residual):
        skip = grad if layer.shortcut is None else _backward_through(layer.shortcut, grad, rule)
        return _backward_through(layer.body, grad, rule) + skip
    raise ValueError(f"the {rule} rule cannot reach the ReLUs inside a {type(layer).__name__}")


def _one_hot(logits, target):
    g = np.zeros_like(logits)
    g[np.arange(len(target)), target] = 1
    return g


def _run(classifier, images, target, layer, want, where, mode="nearest"):
    """One forward pass per chunk of ``classifier.batch_size`` images, then the backward passes ``want``
    asks for ("cam", "guided", "deconvolution"). Returns a dict of [N, ...] arrays."""
    x = _images(classifier, images, where)
    target = _check_target(classifier, target, len(x), where)
    index, described = resolve_layer(classifier, layer, where, x.shape[2:]) if "cam" in want else (None, None)
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    classifier.model.eval()
    inv_std = classifier.dtype.type(1 / classifier.normalization.std)
    parts = {k: [] for k in ("logits", "target", "acts", "grads", "guided", "deconvolution")}
    step = classifier.batch_size
    for a in range(0, len(x), step):
        logits, acts = _forward(classifier, classifier.normalize(x[a:a + step]), keep=index)
        t = logits.argmax(axis=1) if target is None else target[a:a + step]
        g = _one_hot(logits, t)
        parts["logits"].append(logits)
        parts["target"].append(t)
        if "cam" in want:
            parts["acts"].append(acts)
            parts["grads"].append(_backward(classifier, g, "gradient", down_to=index + 1))
        for rule in ("guided", "deconvolution"):
            if rule in want:
                parts[rule].append((_backward(classifier, g, rule) * inv_std)[:, 0])
    r = {k: np.concatenate(v) for k, v in parts.items() if v}
    return r, x.shape[2:], index, described


def _grad_cam(r, size, index, described, relu):
    acts, grads = r["acts"], r["grads"]
    weights = grads.mean(axis=(2, 3))                             # alpha_nk = mean_ij dS_t/dA_nkij
    coarse = np.einsum("nk,nkhw->nhw", weights, acts)             # sum_k alpha_nk A_nk
    if relu:
        coarse = np.maximum(coarse, 0)
    up = interpolate(coarse, size, "bilinear")
    return GradCam(coarse=coarse, upsampled=up, scaled=scale01(up), weights=weights, target=r["target"],
                   layer=described, index=index)


def grad_cam(classifier, images, target=None, layer="last", relu=True):
    """Grad-CAM of pixel-space ``images`` [N, H, W] (or [N, 1, H, W]) at ``layer`` for class ``target``
    (an int, one per image, or None: the predicted class). Returns a :class:`GradCam`: the map at the
    layer's resolution, bilinearly upsampled to the input size, and scaled to [0, 1] per image.

    ``layer``: "last" (the last conv block: conv2 in the reference net), "conv1", "conv2", ... (the output of
    the ReLU after that Conv2d) or an index into
    ``classifier.body`` (that module's output; :func:`cam_layers`). Equals Captum's
    ``LayerGradCam(model, module).attribute(x, target, relu_attributions=relu)`` and, upsampled,
    ``LayerAttribution.interpolate(..., interpolate_mode="bilinear")``.
    """
    r, size, index, described = _run(classifier, images, target, layer, ("cam",), "grad_cam")
    return _grad_cam(r, size, index, described, relu)


def guided_backprop(classifier, images, target=None):
    """Guided backprop [N, H, W]: ``dS_t/dx`` with every ReLU's backward ``max(g * [x > 0], 0)``
    (Captum's ``GuidedBackprop``)."""
    return _run(classifier, images, target, None, ("guided",), "guided_backprop")[0]["guided"]


def deconvolution(classifier, images, target=None):
    """Deconvolution [N, H, W]: ``dS_t/dx`` with every ReLU's backward ``max(g, 0)``, whatever the
    forward input (Captum's ``Deconvolution``)."""
    return _run(classifier, images, target, None, ("deconvolution",), "deconvolution")[0]["deconvolution"]


def guided_grad_cam(classifier, images, target=None, layer="last", mode="nearest"):
    """Guided Grad-CAM [N, H, W]: :func:`guided_backprop` times the rectified Grad-CAM upsampled to the
    input size with ``mode`` ("nearest", Captum ``GuidedGradCam``'s default, or "bilinear", the paper's)."""
    return _explain(classifier, images, target, layer, mode, ("cam", "guided"), "guided_grad_cam").guided_grad_cam


def explain(classifier, images, target=None, layer="last", mode="bilinear"):
    """All four maps from one forward pass (per chunk of images) and one backward pass per method: an
    :class:`Explanation`. Guided Grad-CAM's map is upsampled with ``mode`` (here "bilinear" by default,
    the paper's and the Grad-CAM map's; :func:`guided_grad_cam` defaults to Captum's "nearest")."""
    return _explain(classifier, images, target, layer, mode, ("cam", "guided", "deconvolution"), "explain")


def _explain(classifier, images, target, layer, mode, methods, where):
    r, size, index, described = _run(classifier, images, target, layer, methods, where, mode)
    cam = _grad_cam(r, size, index, described, relu=True)
    up = cam.upsampled if mode == "bilinear" else interpolate(cam.coarse, size, mode)
    return Explanation(grad_cam=cam, guided_backprop=r["guided"], deconvolution=r.get("deconvolution"),
                       guided_grad_cam=r["guided"] * up, mode=mode, logits=r["logits"])


def _weights_1d(n_in, n_out, mode):
    """The [n_out, n_in] matrix of 1-d interpolation, with torch's index arithmetic (CPU kernels)."""
    w = np.zeros((n_out, n_in))
    dst = np.arange(n_out)
    if mode == "nearest":          # src = min(floor(dst * (in / out)), in - 1), the scale in float32
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), n_in - 1)
        w[dst, src] = 1
        return w
    # bilinear, align_corners=False: src = max(scale (dst + 0.5) - 0.5, 0) between i0 = floor(src) and
    # i1 = min(i0 + 1, in - 1), weights 1 - lambda and lambda = src - i0
    src = np.maximum((n_in / n_out) * (dst + 0.5) - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0, 0, 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    w[dst, i0] += 1 - lam          # each row once per statement: plain fancy-index adds are exact
    w[dst, i1] += lam
    return w


def interpolate(maps, size, mode="bilinear"):
    """Maps [N, h, w] resized to ``size`` (H, W): ``torch.nn.functional.interpolate(maps[:, None], size,
    mode=mode)`` with ``align_corners=False`` (Captum's ``LayerAttribution.interpolate``), as one product
    ``W_y @ map @ W_x^T`` with the interpolation matrices; in the maps' dtype."""
    if mode not in MODES:
        raise ValueError(f"interpolate: mode must be one of {', '.join(MODES)}, got {mode!r}")
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"interpolate: expected maps of shape [N, h, w], got {maps.shape}")
    h, w = maps.shape[1:]
    wy = _weights_1d(h, int(size[0]), mode).astype(maps.dtype)
    wx = _weights_1d(w, int(size[1]), mode).astype(maps.dtype)
    return wy @ maps @ wx.T


def scale01(maps):
    """Each map [N, H, W] shifted and scaled to [0, 1]: ``(m - min) / (max - min)`` (all zeros where the
    map is constant), as pytorch-grad-cam shows its maps."""
    maps = np.asarray(maps)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0).astype(maps.dtype)
