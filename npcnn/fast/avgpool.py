"""Average pooling on the fast path: an AvgPool2d without padding whose input is channels last (a
fast conv step's output, as in LeNet-5) is pooled by one kernel pass, forward and backward.

The readable :class:`~npcnn.nn.AvgPool2d` adds its window one offset at a time over the whole batch:
on channels-last memory each of those passes runs along the C values of one pixel at a time (6 for
LeNet's first conv), so NumPy spends its time starting short loops. The kernels here
(:func:`npcnn.kernels.avgpool_nhwc` and its adjoint) do the same sums in the same (i, j) order, one
window after another. Any other input (NCHW, or padding) goes to the readable layer.
"""
import numpy as np

from .. import kernels
from ..nn.avgpool import AvgPool2d, _is_channels_last


def avgpool_length(layers, i):
    """1 when ``layers[i]`` is an AvgPool2d without padding (a :class:`FastAvgPool`), else 0."""
    layer = layers[i]
    return int(type(layer) is AvgPool2d and layer.padding == (0, 0))


class FastAvgPool:
    """:class:`~npcnn.nn.AvgPool2d` (no padding) with a layer's forward / backward contract: channels-last
    inputs by the kernels, returning an NCHW view of channels-last memory as the layer does; any other
    input by the layer itself."""

    def __init__(self, pool):
        if avgpool_length([pool], 0) != 1:
            raise TypeError(f"FastAvgPool needs an AvgPool2d without padding; got {pool!r}")
        self.pool = pool

    def __repr__(self):
        return f"FastAvgPool({self.pool!r})"

    def forward(self, x):
        self._kernel_path = _is_channels_last(x)
        if not self._kernel_path:
            return self.pool.forward(x)
        n, c, ho, wo = self.pool.checked_output_shape(x)
        (kh, kw), (sh, sw) = self.pool.kernel_size, self.pool.stride
        h, w = x.shape[2:]
        out = np.empty((n, ho, wo, c), dtype=x.dtype)
        kernels.avgpool_nhwc(x.transpose(0, 2, 3, 1).reshape(n, h, w * c), c, kh, kw, sh, sw, out.reshape(n, ho, -1))
        self._x_shape = x.shape
        return out.transpose(0, 3, 1, 2)

    def backward(self, grad_out, param_grads=True):
        if not self._kernel_path:
            return self.pool.backward(grad_out, param_grads=param_grads)
        n, c, h, w = self._x_shape
        (kh, kw), (sh, sw) = self.pool.kernel_size, self.pool.stride
        g = np.ascontiguousarray(grad_out.transpose(0, 2, 3, 1))
        dx = np.empty((n, h, w, c), dtype=grad_out.dtype)
        kernels.avgpool_backward_nhwc(g.reshape(n, g.shape[1], -1), c, kh, kw, sh, sw, dx.reshape(n, h, -1))
        return dx.transpose(0, 3, 1, 2)
