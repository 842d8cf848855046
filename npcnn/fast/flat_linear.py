"""Flatten -> Linear on a channels-last batch, without putting the batch back in NCHW order.

:class:`~npcnn.nn.Flatten` flattens each image in (c, y, x) order, the order of the Linear's weight
columns. A fast step's output is an NCHW *view* of channels-last memory, (y, x, c) order, so flattening
it copies the whole batch (2.3 ms of Wong et al.'s net's 33 ms at batch 1000), and the gradient that
Flatten hands back is NCHW, which the conv step before it copies back to channels last. Here the
*weight's* columns are reordered instead, ``W_cl[o, (y, x, c)] = W[o, (c, y, x)]``, and

* forward: ``y = X_cl @ W_cl^T + b``, ``X_cl`` the batch's memory as it is, (N, H*W*C);
* backward: ``dL/dW_cl = G^T @ X_cl``, reordered back to the weight's (c, y, x) columns;
  ``dL/db = sum of G's rows``; ``dL/dX_cl = G @ W_cl``, returned as an NCHW view of channels-last
  memory, as the steps before expect it.

Each output is the same dot product with its terms in another order, so it agrees with the readable
layers to rounding (``tests/test_fast_flat_linear.py``). The reordered weight (and its gradient) is a
copy the size of the weight, where the readable layers copy the batch (and its gradient), so the step
takes this path only when the batch has at least :data:`MIN_IMAGES_PER_OUTPUT` images per output of the
Linear (Wong's fc of 100 at batch 1000: 4.6 -> 3.0 ms forward on a 2-core AMD EPYC; at batch 128,
where the weight is as large as the batch, the backward was 0.71 ms readable and 1.06 here); any other
input (NCHW, one channel, or a Flatten of other dims) goes through the two readable layers.
"""
import numpy as np

from .. import parallel
from ..nn.avgpool import _is_channels_last
from ..nn.linear import Flatten, Linear
from ..nn.module import check_dtype, check_input


#: The channels-last path needs a batch of at least this many images per output of the Linear.
MIN_IMAGES_PER_OUTPUT = 4


def flat_linear_length(layers, i):
    """2 when ``layers[i:i+2]`` is a Flatten of all but the batch dim followed by a Linear, else 0."""
    if type(layers[i]) is not Flatten or i + 1 >= len(layers) or type(layers[i + 1]) is not Linear:
        return 0
    flatten = layers[i]
    return 2 if flatten.start_dim == 1 and flatten.end_dim == -1 else 0


class FlatLinear:
    """``linear(flatten(x))`` with a layer's forward / backward contract; the weight's columns reordered
    to the batch's channels-last memory when that pays (see the module's docstring)."""

    def __init__(self, flatten, linear):
        if flat_linear_length([flatten, linear], 0) != 2:
            raise TypeError(f"FlatLinear needs Flatten(1, -1) and a Linear; got {flatten!r}, {linear!r}")
        self.flatten, self.linear = flatten, linear

    def __repr__(self):
        return f"FlatLinear({self.flatten!r}, {self.linear!r})"

    def forward(self, x):
        linear = self.linear
        self._cl = (isinstance(x, np.ndarray) and x.ndim == 4 and _is_channels_last(x)
                    and len(x) >= MIN_IMAGES_PER_OUTPUT * linear.out_features)
        if not self._cl:
            return linear.forward(self.flatten.forward(x))
        n, c, h, w = x.shape
        xs = x.transpose(0, 2, 3, 1).reshape(n, h * w * c)          # the memory as it is: no copy
        check_input(linear, xs, None, linear.in_features, channel_axis=-1)
        check_dtype(linear, xs, linear.weight.dtype)
        w_cl = linear.weight.data.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, h * w * c)
        y = parallel.matmul(xs, w_cl.T)
        if linear.bias is not None:
            y += linear.bias.data
        self._xs, self._w_cl, self._x_shape = xs, w_cl, x.shape
        return y

    def backward(self, grad_out, param_grads=True):
        if not self._cl:
            return self.flatten.backward(self.linear.backward(grad_out, param_grads=param_grads))
        linear, (n, c, h, w) = self.linear, self._x_shape
        if param_grads:
            dw_cl = parallel.matmul(grad_out.T, self._xs)
            linear.weight.accumulate(dw_cl.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(-1, c * h * w),
                                     owned=True)
            if linear.bias is not None:
                linear.bias.accumulate(grad_out.sum(axis=0), owned=True)
        dxs = parallel.matmul(grad_out, self._w_cl)
        return dxs.reshape(n, h, w, c).transpose(0, 3, 1, 2)
