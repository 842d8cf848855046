"""2-d convolution as im2col + one GEMM."""
import numpy as np

from .. import kernels
from .init import as_generator, default_uniform
from .module import Module, Parameter, check_dtype, check_input


def _pair(v, name):
    """An int or a pair of ints, as PyTorch accepts for kernel_size, stride and padding."""
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(a, (int, np.integer)) for a in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


class Conv2d(Module):
    r"""2-d cross-correlation, as ``torch.nn.Conv2d`` (groups=1, dilation=1).

    Shapes: x (N, C, H, W) -> y (N, F, Ho, Wo), ``Ho = (H + 2p - kh) // s + 1``.

    Forward: gather every receptive field into ``cols`` (C*kh*kw, N*Ho*Wo)
    (im2col), then one GEMM ``Y = W @ cols + b`` with W viewed as (F, C*kh*kw).

    Backward, with ``G = dL/dY`` in the same (F, N*Ho*Wo) layout:

    * ``dL/dW = G @ cols^T``           (F, C*kh*kw)
    * ``dL/db = sum of G over N, Ho, Wo``
    * ``dL/dcols = W^T @ G``, then col2im scatter-adds each column back onto
      the pixels it was gathered from (the adjoint of im2col) to give dL/dx.

    The ``cols`` buffer is kept between calls and reused while the input
    shape stays the same.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 *, dtype=np.float32, rng=None):
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if self.in_channels <= 0 or self.out_channels <= 0:
            raise ValueError(f"Conv2d: channels must be positive, got {in_channels}, {out_channels}")
        if min(self.kernel_size) <= 0 or min(self.stride) <= 0 or min(self.padding) < 0:
            raise ValueError(
                f"Conv2d: need kernel_size > 0, stride > 0, padding >= 0; got "
                f"{self.kernel_size}, {self.stride}, {self.padding}"
            )
        rng = as_generator(rng)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.weight = Parameter(default_uniform((self.out_channels, self.in_channels, kh, kw), fan_in, rng, dtype))
        self.bias = Parameter(default_uniform((self.out_channels,), fan_in, rng, dtype)) if bias else None
        self._cols = None

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def output_shape(self, input_shape):
        n, _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (n, self.out_channels, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw))

    def forward(self, x):
        check_input(self, x, 4, self.in_channels)
        check_dtype(self, x, self.weight.dtype)
        n, c, h, w = x.shape
        _, f, ho, wo = self.output_shape(x.shape)
        if ho <= 0 or wo <= 0:
            raise ValueError(
                f"{self!r}: input of spatial size {h}x{w} is smaller than the kernel "
                f"{self.kernel_size} with padding {self.padding}"
            )
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        k = c * kh * kw
        if self._cols is None or self._cols.shape != (k, n * ho * wo) or self._cols.dtype != x.dtype:
            self._cols = np.empty((k, n * ho * wo), dtype=x.dtype)
        x = np.ascontiguousarray(x)
        kernels.im2col(x, kh, kw, sh, sw, ph, pw, ho, wo, self._cols)
        out_cols = self.weight.data.reshape(f, k) @ self._cols
        bias = self.bias.data if self.bias is not None else np.zeros(f, dtype=x.dtype)
        y = np.empty((n, f, ho * wo), dtype=x.dtype)
        kernels.cols_to_nchw(out_cols, bias, n, y)
        self._x_shape = x.shape
        return y.reshape(n, f, ho, wo)

    def backward(self, grad_out, param_grads=True):
        n, c, h, w = self._x_shape
        f = self.out_channels
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = grad_out.shape[2:]
        g = np.empty((f, n * ho * wo), dtype=grad_out.dtype)
        kernels.nchw_to_cols(np.ascontiguousarray(grad_out).reshape(n, f, ho * wo), g)
        w2d = self.weight.data.reshape(f, -1)
        if param_grads:
            self.weight.accumulate((g @ self._cols.T).reshape(self.weight.shape))
            if self.bias is not None:
                self.bias.accumulate(g.sum(axis=1))
        dcols = w2d.T @ g
        dx = np.empty(self._x_shape, dtype=grad_out.dtype)
        kernels.col2im(dcols, kh, kw, sh, sw, ph, pw, ho, wo, dx)
        return dx
