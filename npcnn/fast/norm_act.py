"""BatchNorm followed by ReLU (a ResNet's pattern) on the fast path: the ReLU applied in place on the
batch norm's output, and its derivative taken from that output in one pass.

The readable :class:`~npcnn.nn.ReLU` keeps a mask and writes a new array (forward), then multiplies
by the mask into another (backward); here ``y = max(bn(x), 0)`` overwrites the batch norm's own
output (which nothing else holds: the batch norm keeps its input for its backward, not its output)
and ``dL/dbn = dL/dy * [y > 0]`` (``y > 0`` exactly where ``bn(x) > 0``) is
:func:`npcnn.kernels.act_grad`, whenever the gradient is laid out in memory as ``y`` is.
"""
import numpy as np

from .. import kernels
from ..nn.activation import ReLU
from ..nn.norm import BatchNorm1d, BatchNorm2d


def norm_act_length(layers, i):
    """2 when ``layers[i]`` is a BatchNorm1d/2d and a ReLU follows it (a :class:`BatchNormReLU`), else 0."""
    return 2 if (type(layers[i]) in (BatchNorm1d, BatchNorm2d) and i + 1 < len(layers)
                 and type(layers[i + 1]) is ReLU) else 0


def relu_grad(grad_out, y):
    """``grad_out * [y > 0]``, in one kernel pass when both are laid out alike and densely (NCHW, or an NCHW
    view of channels-last memory), else by NumPy."""
    if grad_out.strides == y.strides and grad_out.dtype == y.dtype:
        flat_g, flat_y = grad_out.ravel(order="K"), y.ravel(order="K")
        if np.may_share_memory(flat_g, grad_out) and np.may_share_memory(flat_y, y):   # views, not copies
            out = np.empty_like(grad_out)                    # the same layout (empty_like keeps it)
            flat_out = out.ravel(order="K")
            if np.may_share_memory(flat_out, out):
                kernels.act_grad(flat_g, flat_y, kernels.rows.RELU, flat_out)
                return out
    return grad_out * (y > 0)


class BatchNormReLU:
    """``max(bn(x), 0)`` with a layer's forward / backward contract (see the module's docstring)."""

    def __init__(self, bn, relu):
        if norm_act_length([bn, relu], 0) != 2:
            raise TypeError(f"BatchNormReLU needs a BatchNorm1d/2d and a ReLU; got {bn!r}, {relu!r}")
        self.bn, self.relu = bn, relu

    def __repr__(self):
        return f"BatchNormReLU({self.bn!r})"

    def forward(self, x):
        y = self.bn.forward(x)
        np.maximum(y, 0, out=y)
        self._y = y
        return y

    def backward(self, grad_out, param_grads=True):
        return self.bn.backward(relu_grad(grad_out, self._y), param_grads=param_grads)
