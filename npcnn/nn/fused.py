"""Conv2d -> ReLU -> MaxPool2d as one step: what :class:`Sequential` runs when it meets that triple.

Nothing here is new math; it is the three layers' own forward and backward,
reordered so that the conv output (the largest activation of the reference
net: 32x28x28 per image after conv1) is never written to memory:

* forward: the conv GEMM result (pixel-major, no bias yet) goes straight into
  one kernel that adds the bias, applies the ReLU and max-pools
  (``max(relu(v)) = relu(max(v))``, ReLU being monotone);
* backward: one kernel routes each pooled gradient to its window's winner if
  the pooled value is > 0 (the ReLU mask at the winner) and writes it in the
  layout the conv's GEMMs read.

That saves the bias/layout pass, the ReLU forward and backward passes, the
mask, and the layout pass of the conv backward. The three layer objects keep
their state as if they had run one after another, so the state dict, the
parameters and even calling their ``backward`` one by one stay exactly as in
the unfused net (the ReLU recomputes its mask only if asked).
"""
import numpy as np

from .. import kernels
from .activation import ReLU
from .conv import Conv2d
from .pool import MaxPool2d


def fusable(layers, i):
    """True when ``layers[i:i+3]`` is exactly Conv2d, ReLU, MaxPool2d (subclasses are left alone)."""
    return (i + 2 < len(layers) and type(layers[i]) is Conv2d and type(layers[i + 1]) is ReLU
            and type(layers[i + 2]) is MaxPool2d)


def conv_relu_pool_forward(conv, relu, pool, x):
    out_cols = conv._forward_cols(x)                   # (F, N*Ho*Wo), bias not added
    n, f, (hc, wc) = x.shape[0], conv.out_channels, conv._out_hw
    conv_shape = (n, f, hc, wc)
    shape = pool.output_shape(conv_shape)
    if shape[2] <= 0 or shape[3] <= 0:
        raise ValueError(f"{pool!r}: input of spatial size {(hc, wc)} is smaller than the window")
    (kh, kw), (sh, sw), (ph, pw) = pool.kernel_size, pool.stride, pool.padding
    bias = conv.bias.data if conv.bias is not None else np.zeros(f, dtype=x.dtype)
    out = np.empty(shape, dtype=x.dtype)
    argmax = pool._argmax_buffer(shape)
    kernels.bias_relu_maxpool(out_cols, bias, hc, wc, kh, kw, sh, sw, ph, pw, out, argmax)
    pool._x_shape, pool._out = conv_shape, out
    relu._mask, relu._mask_from = None, (conv, x)     # recomputed only if relu.backward is called alone
    return out


def conv_relu_pool_backward(conv, relu, pool, grad_out, param_grads):
    n, f, hc, wc = pool._x_shape
    g = conv._buffer("_g_cols", (f, n * hc * wc), grad_out.dtype)
    kernels.maxpool_relu_backward(np.ascontiguousarray(grad_out), pool._argmax, pool._out, hc, wc, g)
    return conv._backward_cols(g, param_grads)
