"""BatchNorm followed by ReLU (a ResNet's pattern) on the fast path: the ReLU applied in the batch
norm's own pass over its output, and its derivative in the batch norm's backward passes; and the
element-wise helpers the residual step shares (``g * [y > 0]``, ``a + b`` then ReLU).

The readable :class:`~npcnn.nn.ReLU` keeps a mask and writes a new array (forward), then multiplies
by the mask into another (backward): two more passes over memory. Here the batch norm's kernels
write ``y = max(bn(x), 0)`` directly, and its backward reads ``dL/dbn = dL/dy * [y > 0]`` (``y > 0``
exactly where ``bn(x) > 0``) on the fly, in the same passes that take its sums and dL/dx
(``BatchNorm._forward`` / ``_backward`` with ``relu=True``, :mod:`npcnn.kernels.normalization`).
"""
import numpy as np

from .. import kernels
from ..nn.activation import ReLU
from ..nn.norm import BatchNorm1d, BatchNorm2d


def norm_act_length(layers, i):
    """2 when ``layers[i]`` is a BatchNorm1d/2d and a ReLU follows it (a :class:`BatchNormReLU`), else 0."""
    return 2 if (type(layers[i]) in (BatchNorm1d, BatchNorm2d) and i + 1 < len(layers)
                 and type(layers[i + 1]) is ReLU) else 0


def flat_views(*arrays):
    """1-d views of ``arrays`` that walk them all in one memory order (so that element i of each is
    the same (n, c, h, w)): arrays of one dtype laid out alike and densely (NCHW, or an NCHW view of
    channels-last memory); None when they are not."""
    first = arrays[0]
    if any(a.strides != first.strides or a.shape != first.shape or a.dtype != first.dtype for a in arrays):
        return None
    flats = [a.ravel(order="K") for a in arrays]
    if not all(np.may_share_memory(f, a) for f, a in zip(flats, arrays)):   # ravel copied: not dense
        return None
    return flats


def relu_grad(grad_out, y):
    """``grad_out * [y > 0]``, in one kernel pass when both are laid out alike and densely, else by NumPy."""
    out = np.empty_like(grad_out)                         # the same layout (empty_like keeps it)
    flats = flat_views(grad_out, y, out)
    if flats is None:
        return np.multiply(grad_out, y > 0, out=out)
    kernels.act_grad(flats[0], flats[1], kernels.rows.RELU, flats[2])
    return out


def add_relu(a, b, relu, out=None):
    """``a + b``, then ``max(., 0)`` if ``relu``, into ``out`` (a new array laid out as ``a`` if None; it may
    be ``a`` itself): one kernel pass when ``a``, ``b`` and ``out`` are laid out alike and densely."""
    out = np.empty_like(a) if out is None else out
    flats = flat_views(a, b, out)
    if flats is None:
        np.add(a, b, out=out)
        if relu:
            np.maximum(out, 0, out=out)
    else:
        kernels.add_relu(flats[0], flats[1], relu, flats[2])
    return out


class BatchNormReLU:
    """``max(bn(x), 0)`` with a layer's forward / backward contract (see the module's docstring)."""

    def __init__(self, bn, relu):
        if norm_act_length([bn, relu], 0) != 2:
            raise TypeError(f"BatchNormReLU needs a BatchNorm1d/2d and a ReLU; got {bn!r}, {relu!r}")
        self.bn, self.relu = bn, relu

    def __repr__(self):
        return f"BatchNormReLU({self.bn!r})"

    def forward(self, x):
        return self.bn._forward(x, relu=True)

    def backward(self, grad_out, param_grads=True):
        return self.bn._backward(grad_out, param_grads, relu=True)
