"""Max pooling."""
import numpy as np

from .. import kernels
from .conv import _pair, conv_output_size
from .module import Module, check_input


class MaxPool2d(Module):
    r"""2-d max pooling, as ``torch.nn.MaxPool2d`` (dilation=1, floor mode).

    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo); ``stride`` defaults to
    ``kernel_size``; padding (at most half the kernel) counts as -inf.

    Backward: the gradient of a max is 1 at the winner and 0 elsewhere, so
    each ``dL/dy[n, c, oy, ox]`` is added to ``dL/dx`` at the position that
    won that window (remembered by the forward pass). Ties go to the first
    maximum in row-major window order, as in PyTorch, so the two agree even
    on the all-zero windows that follow a ReLU.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride if stride is not None else kernel_size, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) <= 0 or min(self.stride) <= 0:
            raise ValueError(f"MaxPool2d: kernel_size and stride must be positive, got {kernel_size}, {stride}")
        if any(p < 0 or p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"MaxPool2d: padding must be between 0 and half the kernel size, got {self.padding} "
                f"for kernel {self.kernel_size}"
            )

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (n, c, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw))

    def forward(self, x):
        check_input(self, x, 4)
        _, _, ho, wo = shape = self.output_shape(x.shape)
        if ho <= 0 or wo <= 0:
            raise ValueError(f"{self!r}: input of spatial size {x.shape[2:]} is smaller than the window")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        y = np.empty(shape, dtype=x.dtype)
        argmax = self._argmax_buffer(shape)
        kernels.maxpool_forward(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, ho, wo, y, argmax)
        self._x_shape = x.shape
        return y

    def _argmax_buffer(self, shape):
        """The winners' positions, (N, C, Ho, Wo) int32: one buffer reused while the shape stays."""
        buf = getattr(self, "_argmax", None)
        if buf is None or buf.shape != tuple(shape):
            buf = self._argmax = np.empty(shape, dtype=np.int32)
        return buf

    def backward(self, grad_out, param_grads=True):
        dx = np.empty(self._x_shape, dtype=grad_out.dtype)
        kernels.maxpool_backward(np.ascontiguousarray(grad_out), self._argmax, dx)
        return dx
