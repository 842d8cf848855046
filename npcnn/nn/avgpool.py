"""Average pooling: a fixed window (AvgPool2d) and a fixed output size (AdaptiveAvgPool2d).

Both are linear maps, so each backward is the transpose of its forward: every output's gradient is
shared out evenly over the inputs its window averaged.
"""
import numpy as np

from .conv import _pair, conv_output_size
from .module import Module, check_input


def _is_channels_last(x):
    """True when ``x`` (N, C, H, W) is an NCHW view of channels-last memory (a fast conv step's output)."""
    return not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous


def _zeros(shape, dtype, channels_last):
    """Zeros of ``shape`` (N, C, H, W), laid out channels last (an NCHW view) or NCHW. The pools keep
    their input's layout: the window sums then run along contiguous memory either way, and a fast
    conv after the pool finds its input channels last."""
    if channels_last:
        n, c, h, w = shape
        return np.zeros((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)
    return np.zeros(shape, dtype=dtype)


def _shown(v):
    """A setting as the user gave it (an int, or a pair as a tuple), for the repr: PyTorch prints what it was given."""
    return tuple(v) if isinstance(v, (tuple, list)) else v if v is None else int(v)


class AvgPool2d(Module):
    r"""2-d average pooling, as ``torch.nn.AvgPool2d`` (floor mode, no divisor override).

    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = (H + 2p - kh) // s + 1``; ``stride`` defaults
    to ``kernel_size``; ``padding`` (at most half the kernel) adds zeros around the image.

    Forward: ``y[n, c, oy, ox] = sum of the window's kh*kw values / d``, where ``d = kh*kw``
    (``count_include_pad=True``, the default: the zeros of the padding count) or the number of the
    window's values that lie inside the image (``count_include_pad=False``).

    Backward: each ``y`` is a sum of its window's inputs divided by ``d``, so
    ``dL/dx[n, c, i, j] = sum over the windows (oy, ox) that contain (i, j) of dL/dy[n, c, oy, ox] / d``:
    the adjoint of the forward, written as the same loop over the kh*kw window offsets, adding
    instead of gathering (overlapping windows add their shares).

    The output (and the input gradient) keeps the input's memory layout: NCHW, or channels last
    when the input is an NCHW view of channels-last memory, as the fast path's convs return.
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride if stride is not None else kernel_size, "stride")
        self.padding = _pair(padding, "padding")
        self.count_include_pad = bool(count_include_pad)
        if min(self.kernel_size) <= 0 or min(self.stride) <= 0:
            raise ValueError(f"AvgPool2d: kernel_size and stride must be positive, got {kernel_size}, {stride}")
        if any(p < 0 or p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"AvgPool2d: padding must be between 0 and half the kernel size, got {self.padding} "
                             f"for kernel {self.kernel_size}")
        self._given = (_shown(kernel_size), _shown(stride if stride is not None else kernel_size), _shown(padding))

    def extra_repr(self):
        k, s, p = self._given                     # PyTorch prints these three (not count_include_pad)
        return f"kernel_size={k}, stride={s}, padding={p}"

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (n, c, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw))

    def _windows(self, ho, wo):
        """For each window offset (i, j): the strided slices of the padded image that offset touches."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for i in range(kh):
            for j in range(kw):
                yield (slice(None), slice(None), slice(i, i + sh * (ho - 1) + 1, sh),
                       slice(j, j + sw * (wo - 1) + 1, sw))

    def _divisor(self, h, w, ho, wo, dtype):
        """``d`` of every output position: kh*kw, or (count_include_pad=False) how many of the window's
        values lie inside the image, shape (Ho, Wo)."""
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if self.count_include_pad or (ph == 0 and pw == 0):
            return dtype.type(kh * kw)
        inside = np.zeros((1, 1, h + 2 * ph, w + 2 * pw), dtype=dtype)
        inside[:, :, ph:ph + h, pw:pw + w] = 1
        count = np.zeros((1, 1, ho, wo), dtype=dtype)
        for window in self._windows(ho, wo):
            count += inside[window]
        return count[0, 0]

    def checked_output_shape(self, x):
        """The output's shape for input ``x``, after checking ``x`` (4-d, a window that fits)."""
        check_input(self, x, 4)
        shape = self.output_shape(x.shape)
        if shape[2] <= 0 or shape[3] <= 0:
            raise ValueError(f"{self!r}: input of spatial size {x.shape[2:]} is smaller than the window")
        return shape

    def forward(self, x):
        _, _, ho, wo = self.checked_output_shape(x)
        n, c, h, w = x.shape
        (ph, pw) = self.padding
        self._channels_last = _is_channels_last(x)
        padded = x
        if ph or pw:
            padded = _zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype, self._channels_last)
            padded[:, :, ph:ph + h, pw:pw + w] = x
        total = _zeros((n, c, ho, wo), x.dtype, self._channels_last)
        for window in self._windows(ho, wo):             # add the window's values, one offset at a time
            total += padded[window]
        self._divisor_map = self._divisor(h, w, ho, wo, x.dtype)
        self._x_shape = x.shape
        total /= self._divisor_map
        return total

    def backward(self, grad_out, param_grads=True):
        n, c, h, w = self._x_shape
        _, _, ho, wo = grad_out.shape
        (ph, pw) = self.padding
        share = grad_out / self._divisor_map               # each output's gradient, split evenly
        dpadded = _zeros((n, c, h + 2 * ph, w + 2 * pw), grad_out.dtype, self._channels_last)
        for window in self._windows(ho, wo):             # the forward's loop, scattering instead of gathering
            dpadded[window] += share
        if ph or pw:
            return dpadded[:, :, ph:ph + h, pw:pw + w].copy(order="K")   # (in the same layout)
        return dpadded


def _bins(size, out):
    """PyTorch's adaptive bins: output ``i`` of ``out`` averages inputs ``floor(i*size/out)`` up to
    ``ceil((i+1)*size/out)`` (exclusive); neighbouring bins may overlap by one."""
    return [((i * size) // out, -(-(i + 1) * size // out)) for i in range(out)]   # integer floor and ceil


class AdaptiveAvgPool2d(Module):
    r"""Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool2d``.

    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo) with ``(Ho, Wo) = output_size`` (an int for a square;
    None in a pair keeps that input size). ``output_size=1`` is global average pooling, the end of a
    ResNet: ``y[n, c] = mean of x[n, c]`` over all H*W positions.

    Forward: output row ``oy`` averages input rows ``floor(oy*H/Ho) .. ceil((oy+1)*H/Ho) - 1`` (and
    the same for columns), PyTorch's rule; the bins tile the input exactly when Ho divides H.

    Backward: each ``y[n, c, oy, ox]`` is a mean over its bin of ``a`` values, so its gradient adds
    ``dL/dy[n, c, oy, ox] / a`` to every input of the bin (global pooling: ``dL/dx = dL/dy / (H*W)``
    at every position). Overlapping bins add their shares.
    """

    def __init__(self, output_size):
        pair = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
        if len(pair) != 2 or not all(v is None or (isinstance(v, (int, np.integer)) and v > 0) for v in pair):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be a positive int or a pair of them "
                             f"(None keeps the input's size), got {output_size!r}")
        self.output_size = output_size
        self._pair = tuple(None if v is None else int(v) for v in pair)

    def extra_repr(self):
        return f"output_size={_shown(self.output_size)}"

    def _size(self, h, w):
        oh, ow = self._pair
        return (h if oh is None else oh, w if ow is None else ow)

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        return (n, c, *self._size(h, w))

    def forward(self, x):
        check_input(self, x, 4)
        n, c, h, w = x.shape
        ho, wo = self._size(h, w)
        self._x_shape, self._channels_last = x.shape, _is_channels_last(x)
        if (ho, wo) == (1, 1):                             # global average pooling
            return x.mean(axis=(2, 3), keepdims=True, dtype=x.dtype)
        y = np.empty((n, c, ho, wo), dtype=x.dtype)
        for oy, (h0, h1) in enumerate(_bins(h, ho)):
            for ox, (w0, w1) in enumerate(_bins(w, wo)):
                y[:, :, oy, ox] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3), dtype=x.dtype)
        return y

    def backward(self, grad_out, param_grads=True):
        n, c, h, w = self._x_shape
        ho, wo = grad_out.shape[2:]
        dtype = grad_out.dtype
        if (ho, wo) == (1, 1):                   # every input value gets 1/(h*w) of its channel's gradient
            share = grad_out[:, :, 0, 0] / dtype.type(h * w)
            if self._channels_last:              # in the input's layout, as the pools keep it
                return np.broadcast_to(share[:, None, None, :], (n, h, w, c)).copy().transpose(0, 3, 1, 2)
            return np.broadcast_to(share[:, :, None, None], self._x_shape).copy()
        dx = np.zeros(self._x_shape, dtype=dtype)
        for oy, (h0, h1) in enumerate(_bins(h, ho)):
            for ox, (w0, w1) in enumerate(_bins(w, wo)):
                area = dtype.type((h1 - h0) * (w1 - w0))
                dx[:, :, h0:h1, w0:w1] += (grad_out[:, :, oy, ox] / area)[:, :, None, None]
        return dx
