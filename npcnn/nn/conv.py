"""2-d convolution as im2col + one GEMM."""
import numpy as np

from .. import kernels, parallel
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

    The scratch buffers (columns, GEMM output, gradients) are kept between
    calls and reused while the input shape stays the same; large batches are
    processed in chunks of images (see ``_CHUNK_BYTES``).
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

    # The column matrix of a whole batch can be large (conv2 at batch 1000:
    # 225 MB). Up to _CACHE_BYTES it is built once and kept for the weight
    # gradient; above that the batch is walked in chunks of images whose
    # columns take about _CHUNK_BYTES (one scratch buffer), and backward
    # rebuilds them chunk by chunk.
    _CHUNK_BYTES = 8 << 20
    _CACHE_BYTES = 64 << 20

    def _geometry(self, x):
        check_input(self, x, 4, self.in_channels)
        check_dtype(self, x, self.weight.dtype)
        n, c, h, w = x.shape
        _, f, ho, wo = self.output_shape(x.shape)
        if ho <= 0 or wo <= 0:
            raise ValueError(
                f"{self!r}: input of spatial size {h}x{w} is smaller than the kernel "
                f"{self.kernel_size} with padding {self.padding}"
            )
        return n, ho, wo

    def _buffer(self, name, shape, dtype):
        """A scratch array kept on the layer and reused while its shape and dtype stay the same."""
        buf = self.__dict__.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            self.__dict__[name] = buf
        return buf

    def _chunks(self, n, p, k, itemsize):
        """Image ranges [a, b): the whole batch when its columns are cached, else chunks."""
        if n * p * k * itemsize <= self._CACHE_BYTES:
            return [(0, n)]
        step = max(1, self._CHUNK_BYTES // max(1, p * k * itemsize))
        return [(a, min(n, a + step)) for a in range(0, n, step)]

    def _forward_cols(self, x):
        """The convolution without bias in GEMM layout: ``out_cols`` (F, N*Ho*Wo), a reused buffer.

        Caches what backward needs (the input, and the columns when they fit).
        """
        n, ho, wo = self._geometry(x)
        x = np.ascontiguousarray(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        f, k, p = self.out_channels, self.in_channels * kh * kw, ho * wo
        w2d = self.weight.data.reshape(f, k)
        chunks = self._chunks(n, p, k, x.itemsize)
        cols = self._buffer("_cols", (k, (chunks[0][1] - chunks[0][0]) * p), x.dtype)
        out_cols = self._buffer("_out_cols", (f, n * p), x.dtype)
        for a, b in chunks:
            c = cols[:, :(b - a) * p]
            kernels.im2col(x[a:b], kh, kw, sh, sw, ph, pw, ho, wo, c)
            parallel.matmul(w2d, c, out=out_cols[:, a * p:b * p])
        self._x, self._cached, self._out_hw = x, len(chunks) == 1, (ho, wo)
        return out_cols

    def forward(self, x):
        out_cols = self._forward_cols(x)
        n, f, (ho, wo) = x.shape[0], self.out_channels, self._out_hw
        bias = self.bias.data if self.bias is not None else np.zeros(f, dtype=x.dtype)
        y = np.empty((n, f, ho * wo), dtype=x.dtype)
        kernels.cols_to_nchw(out_cols, bias, n, y)
        return y.reshape(n, f, ho, wo)

    def backward(self, grad_out, param_grads=True):
        n, f, ho, wo = grad_out.shape
        g = self._buffer("_g_cols", (f, n * ho * wo), grad_out.dtype)
        kernels.nchw_to_cols(np.ascontiguousarray(grad_out).reshape(n, f, ho * wo), g)
        return self._backward_cols(g, param_grads)

    def _backward_cols(self, g, param_grads=True, input_grad=True):
        """Backward from the output gradient in GEMM layout ``g`` (F, N*Ho*Wo); returns dL/dx (NCHW).

        With ``input_grad=False`` (the first layer in training) dL/dx is not computed: None.
        """
        x = self._x
        n = x.shape[0]
        f = self.out_channels
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        (ho, wo), k = self._out_hw, self.in_channels * kh * kw
        p = ho * wo
        w2d = self.weight.data.reshape(f, k)
        chunks = self._chunks(n, p, k, x.itemsize)
        if param_grads:
            if self._cached:                       # dL/dW = g @ cols^T, one GEMM over the batch
                dw = parallel.matmul(g, self._cols.T)
            else:                                  # rebuild the columns chunk by chunk
                dw = np.zeros((f, k), dtype=x.dtype)
                cols = self._buffer("_cols", (k, (chunks[0][1] - chunks[0][0]) * p), x.dtype)
                for a, b in chunks:
                    c = cols[:, :(b - a) * p]
                    kernels.im2col(x[a:b], kh, kw, sh, sw, ph, pw, ho, wo, c)
                    dw += parallel.matmul(g[:, a * p:b * p], c.T)
            self.weight.accumulate(dw.reshape(self.weight.shape), owned=True)
            if self.bias is not None:
                self.bias.accumulate(g.sum(axis=1), owned=True)
        if not input_grad:
            return None
        dx = np.empty(x.shape, dtype=x.dtype)
        dcols = self._buffer("_dcols", (k, (chunks[0][1] - chunks[0][0]) * p), x.dtype)
        for a, b in chunks:                        # dL/dcols = W^T @ g, scattered back by col2im
            d = dcols[:, :(b - a) * p]
            parallel.matmul(w2d.T, g[:, a * p:b * p], out=d)
            kernels.col2im(d, kh, kw, sh, sw, ph, pw, ho, wo, dx[a:b])
        return dx
