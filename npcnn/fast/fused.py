"""Conv2d -> ReLU -> MaxPool2d as one step: what the fast path (:mod:`npcnn.fast`) runs for that triple.

Nothing here is new math; it is the three layers' own forward and backward,
reordered so that the conv output (the largest activation of the reference
net: 32x28x28 per image after conv1) is never stored in NCHW:

* forward: the conv result (no bias yet) goes straight into one kernel that
  adds the bias, applies the ReLU and max-pools (``max(relu(v)) =
  relu(max(v))``, ReLU being monotone);
* backward: a pooled gradient reaches only its window's winner, and only if
  the pooled value is > 0 (the ReLU's mask at the winner).

That saves the bias/layout pass, the ReLU forward and backward passes and
the mask. How the conv itself is computed depends on the triple (``_path``):

* ``"small"`` (few weights per filter, like the first layer's 1x3x3, and a
  2x2 / stride-2 pool): the conv is computed inside the pooling kernel,
  tap by tap, on a zero-padded copy of the input, and so is its weight
  gradient (``kernels.direct_conv_relu_maxpool_nhwc``,
  ``kernels.direct_conv_weight_grad_nhwc``); the input gradient of a 1-channel
  3x3 stride-1 conv (the first layer's) has a direct kernel too
  (``kernels.direct_conv_input_grad_1x3x3``), any other goes through a dense
  conv-output gradient and :class:`Conv2d`'s GEMM + col2im;
* ``"nhwc"`` (any other conv before a 2x2 / stride-2 pool, like the second
  layer): im2col + GEMM on a channels-last copy of the input, and a backward
  that visits only the winners (``kernels.im2col_nhwc``,
  ``kernels.winners_weight_grad_nhwc``, ``kernels.winners_input_grad_nhwc``): no col2im;
* ``"gemm"`` (anything else): im2col + GEMM as :class:`Conv2d` alone does it.

The first two store the pooled output (and the winners) channels last and
return it as an NCHW *view* of that memory (``out_nhwc.transpose(0, 3, 1, 2)``):
shape and values are those of the NCHW result, but the next fused conv can
copy it into its channels-last buffer row by row, and its loops over the
filters are contiguous. The ``"nhwc"`` backward returns its input gradient
the same way.

:class:`ConvReLUPool` owns everything the step keeps between forward and
backward (the input, padded copies, the winners, the pooled output, scratch
buffers); of the three layers it reads the hyper-parameters and the conv's
Parameters, into which the gradients go. The exception is the gemm path: it
borrows the conv's own im2col + GEMM halves (``Conv2d._forward_cols`` /
``_backward_cols``), which keep the conv's input and columns on the conv, as
``Conv2d.forward`` does.
The paths sum in different orders, so they agree with the layers run one by
one to rounding, not to the bit (``tests/test_kernels_fast.py``).
"""
import numpy as np

from .. import kernels, parallel
from . import winograd
from ..nn.activation import ReLU
from ..nn.conv import Conv2d
from ..nn.pool import MaxPool2d


def fusable(layers, i):
    """True when ``layers[i:i+3]`` is exactly Conv2d, ReLU, MaxPool2d (subclasses are left alone)."""
    return (i + 2 < len(layers) and type(layers[i]) is Conv2d and type(layers[i + 1]) is ReLU
            and type(layers[i + 2]) is MaxPool2d)


#: Convs with at most this many weights per filter (C*kh*kw) take the ``small`` path.
DIRECT_MAX_WEIGHTS = 16

#: The channels-last column matrix is built and multiplied this many bytes at a time, so that it
#: stays in the CPU's cache between im2col writing it and the GEMM reading it. 128 KiB fits any
#: core's L2 with room for the GEMM's packed panels (1 MiB until December 2026: Wong et al.'s net
#: at batch 1000, second conv 5.8 -> 5.1 ms, whole inference 10.8 -> 9.9 ms; LeNet-5 15.3 -> 14.2
#: ms; the zoo's training steps at batch 64 level within noise; a 2-core AMD EPYC Zen 4 with
#: OpenBLAS's SkylakeX kernels).
NHWC_CHUNK_BYTES = 1 << 17


def _path(conv, pool):
    """'small', 'nhwc' (both need a 2x2 / stride 2 pool) or 'gemm'."""
    if not (pool.kernel_size == (2, 2) and pool.stride == (2, 2) and pool.padding == (0, 0)):
        return "gemm"
    if conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] <= DIRECT_MAX_WEIGHTS:
        return "small"
    return "nhwc"


def channels_last(x, xs):
    """``x`` (N, C, H, W) as channels-last memory (N, H, W, C): that memory itself when ``x`` is an NCHW
    view of it (a fast step's output, which must not change until backward), else ``x`` copied into
    ``xs`` (a caller's batch, even of one channel: callers may change it in place once forward has
    returned)."""
    if not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous:
        return x.transpose(0, 2, 3, 1)
    return padded_channels_last(x, 0, 0, xs)


def padded_channels_last(x, ph, pw, xp):
    """``x`` (N, C, H, W) zero-padded by (ph, pw) into ``xp`` (N, H+2ph, W+2pw, C), which is returned.
    An ``x`` that is an NCHW view of channels-last memory (a fast step's output) is copied row by row."""
    n, c, h, w = x.shape
    x_nhwc = x.transpose(0, 2, 3, 1)
    if x_nhwc.flags.c_contiguous:
        kernels.pad_channels_last(x_nhwc.reshape(n, h, w * c), ph, pw, xp.reshape(n, h + 2 * ph, -1))
    else:
        if ph or pw:
            xp[:, :ph], xp[:, ph + h:], xp[:, :, :pw], xp[:, :, pw + w:] = 0, 0, 0, 0
        xp[:, ph:ph + h, pw:pw + w] = x_nhwc
    return xp


class ScratchBuffers:
    """A fast step's scratch arrays, kept from one call to the next."""

    def _buffer(self, name, shape, dtype):
        """A scratch array kept on this step and reused while its shape and dtype stay the same."""
        buffers = self.__dict__.setdefault("_scratch", {})   # (not Module._buffers: no state here)
        buf = buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = buffers[name] = np.empty(shape, dtype=dtype)
        return buf


class ConvReLUPool(ScratchBuffers):
    """``pool(relu(conv(x)))`` in one step, with the same forward / backward contract as a layer.

    ``forward(x)`` returns the pooled output (N, F, Ho, Wo); ``backward(grad_out, param_grads=True,
    input_grad=True)`` adds dL/dW and dL/db into the conv's Parameters and returns dL/dx (None when
    ``input_grad`` is False: the first step of a net in training needs no input gradient).
    After a forward, ``argmax`` holds the winners as :class:`MaxPool2d` numbers them
    (``(N, F, Ho, Wo)``, the flat index into the conv output's ``hc * wc`` plane).
    """

    def __init__(self, conv, relu, pool):
        if not fusable([conv, relu, pool], 0):
            raise TypeError(f"ConvReLUPool needs Conv2d, ReLU, MaxPool2d; got {conv!r}, {relu!r}, {pool!r}")
        self.conv, self.relu, self.pool = conv, relu, pool

    def __repr__(self):
        return f"ConvReLUPool({self.conv!r}, {self.pool!r})"

    # ------------------------------------------------------------------ forward
    def forward(self, x, inference=False):
        """``inference``: no backward follows (the conv may then take Winograd, :mod:`npcnn.fast.winograd`)."""
        conv, pool = self.conv, self.pool
        path = _path(conv, pool)
        self._inference = inference
        if path == "gemm":
            out_cols = conv._forward_cols(x)           # (F, N*Ho*Wo), bias not added
            hc, wc = conv._out_hw
        else:                                          # the conv is computed below
            _, hc, wc = conv._geometry(x)
        n, f = x.shape[0], conv.out_channels
        conv_shape = (n, f, hc, wc)
        shape = pool.output_shape(conv_shape)
        if shape[2] <= 0 or shape[3] <= 0:
            raise ValueError(f"{pool!r}: input of spatial size {(hc, wc)} is smaller than the window")
        (kh, kw), (sh, sw), (ph, pw) = pool.kernel_size, pool.stride, pool.padding
        bias = conv.bias.data if conv.bias is not None else np.zeros(f, dtype=x.dtype)
        zero = x.dtype.type(0)
        (ckh, ckw), (csh, csw) = conv.kernel_size, conv.stride
        if path == "gemm":
            out = np.empty(shape, dtype=x.dtype)
            argmax = self._buffer("argmax", shape, np.int32)
            kernels.bias_relu_maxpool(out_cols, bias, hc, wc, kh, kw, sh, sw, ph, pw, out, argmax)
            self.argmax = argmax
        else:                                          # pooled output channels last, returned as an NCHW view
            nhwc = (shape[0], shape[2], shape[3], shape[1])
            out_nhwc = np.empty(nhwc, dtype=x.dtype)
            argmax_nhwc = self._buffer("argmax_nhwc", nhwc, np.int32)
            if path == "small":
                wt = np.ascontiguousarray(conv.weight.data.reshape(f, -1).T)
                kernels.direct_conv_relu_maxpool_nhwc(self._padded(x), wt, bias, ckh, ckw, csh, csw, wc, out_nhwc,
                                                      argmax_nhwc, zero)
            else:
                self._conv_channels_last_pooled(x, hc, wc, bias, out_nhwc, argmax_nhwc, zero, inference)
            out, self.argmax = out_nhwc.transpose(0, 3, 1, 2), argmax_nhwc.transpose(0, 3, 1, 2)
            self._out_nhwc, self._argmax_nhwc = out_nhwc, argmax_nhwc
        self._x, self._conv_shape, self._out, self._path = x, conv_shape, out, path
        return out

    def _padded(self, x):
        """``x`` (N, C, H, W) zero-padded as the conv pads it, in a buffer kept for backward."""
        n, c, h, w = x.shape
        ph, pw = self.conv.padding
        xpad = self._buffer("xpad", (n, c, h + 2 * ph, w + 2 * pw), x.dtype)
        if ph or pw:
            xpad[:, :, :ph], xpad[:, :, ph + h:], xpad[:, :, :, :pw], xpad[:, :, :, pw + w:] = 0, 0, 0, 0
        xpad[:, :, ph:ph + h, pw:pw + w] = x
        self._xpad = xpad
        return xpad

    def _conv_channels_last_pooled(self, x, hc, wc, bias, out, argmax, zero, inference=False):
        """The conv as im2col on the padded channels-last input and ``rows = cols @ W`` (W as
        (kh*kw*C, F)), then bias + ReLU + 2x2 max-pool into ``out`` and ``argmax``, a few images at a
        time: each chunk's columns and conv output ``rows`` (N*hc*wc, F) stay in cache between the
        kernel that writes them and the one that reads them. A conv that :func:`npcnn.fast.winograd.fits`
        is computed by Winograd (F(2x2, 3x3), F(2x2, 5x5)) instead of im2col + GEMM when ``inference``; in inference
        the input is also read unpadded (im2col and Winograd write the padding's zeros themselves), since
        only the backward's kernels need the padded copy (batch 1000: the small VGG's second conv
        106 -> 93 ms by im2col, the reference net's second 20-23 -> 16-17 ms by Winograd).

        With more than one chunk, while npcnn shares out the GEMMs (:func:`npcnn.parallel.sharing`),
        each thread takes its share of the images and walks them chunk by chunk: its own im2col,
        single-threaded GEMM and pooling. The threads are numba's, running the same loop as one kernel
        (:func:`npcnn.kernels.conv_rows_relu_maxpool_forward`), whenever the kernels can call BLAS
        themselves (:func:`npcnn.parallel.kernel_gemm`); else Python's, running ``run`` below.
        """
        conv = self.conv
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), f = conv.kernel_size, conv.stride, conv.out_channels
        w_mat = np.ascontiguousarray(conv.weight.data.transpose(2, 3, 1, 0)).reshape(kh * kw * c, f)
        p, k = hc * wc, kh * kw * c
        step = max(1, NHWC_CHUNK_BYTES // (p * k * x.itemsize))
        workers = min(parallel.num_threads(), -(-n // step)) if parallel.sharing() else 1
        # the kernels of a chunk run on one thread each when the chunks are shared among threads
        im2col, pool = ((kernels.im2col_nhwc.serial, kernels.bias_relu_maxpool_nhwc_2x2.serial) if workers > 1
                        else (kernels.im2col_nhwc, kernels.bias_relu_maxpool_nhwc_2x2))

        gemm = parallel.kernel_gemm(x.dtype)
        if gemm is not None:
            workers = min(parallel.num_threads(), -(-n // step))
        wino = winograd.kernel_args(self, conv, x.dtype, workers, min(n, step), hc, wc, inference)  # empty: im2col
        if inference:           # im2col and Winograd pad as they read; no backward will read a padded copy
            (ph, pw), x3 = conv.padding, channels_last(x, self._buffer("xs", (n, h, w, c), x.dtype)).reshape(n, h, -1)
        else:                   # im2col and the backward read the padded copy
            xp = self._padded_channels_last(x)
            (ph, pw), x3 = (0, 0), xp.reshape(n, xp.shape[1], -1)        # (N, Hp, Wp*C)

        def run(t):
            first, last = t * n // workers, (t + 1) * n // workers
            rows = self._buffer(f"rows{t}", (min(last - first, step) * p, f), x.dtype)
            for a in range(first, last, step):
                b = min(last, a + step)
                chunk_rows = rows[:(b - a) * p]
                if wino[0].size:
                    winograd.conv_rows(wino, t, x3, a, b, c, ph, pw, hc, wc, chunk_rows)
                else:
                    chunk_cols = self._buffer(f"cols_nhwc{t}", (min(last - first, step) * p, k), x.dtype)[:(b - a) * p]
                    im2col(x3[a:b], c, kh, kw, sh, sw, ph, pw, hc, wc, chunk_cols)
                    np.matmul(chunk_cols, w_mat, out=chunk_rows)
                pool(chunk_rows, bias, hc, wc, out[a:b], argmax[a:b], zero)

        if gemm is not None:                    # the same loop, on numba's threads (kernels.conv_rows)
            rows = min(n, step) * p
            kernels.conv_rows_relu_maxpool_forward(
                *gemm, x3, c, kh, kw, sh, sw, ph, pw, hc, wc, w_mat, bias, zero,
                self._buffer("cols_all", (workers, 0 if wino[0].size else rows, k), x.dtype),
                self._buffer("rows_all", (workers, rows, f), x.dtype), step, out, argmax, *wino)
        elif workers == 1:
            run(0)
        else:
            parallel.run_threads(run, workers)

    def _padded_channels_last(self, x):
        """``x`` (N, C, H, W) as a zero-padded (N, H+2p, W+2p, C) buffer kept for backward."""
        n, c, h, w = x.shape
        ph, pw = self.conv.padding
        self._xp = padded_channels_last(x, ph, pw, self._buffer("xp", (n, h + 2 * ph, w + 2 * pw, c), x.dtype))
        return self._xp

    # ------------------------------------------------------------------ backward
    def backward(self, grad_out, param_grads=True, input_grad=True):
        """dL/dx, or None when ``input_grad`` is False (the first layer of a net in training)."""
        if getattr(self, "_inference", False):
            raise RuntimeError("ConvReLUPool.backward after forward(x, inference=True): run forward(x) for a backward")
        n, f, hc, wc = self._conv_shape
        if self._path == "small":
            return self._small_backward(grad_out, param_grads, input_grad)
        grad_out = np.ascontiguousarray(grad_out)
        if self._path == "nhwc":
            return self._nhwc_backward(grad_out, param_grads, input_grad)
        g = self._buffer("g_cols", (f, n * hc * wc), grad_out.dtype)
        kernels.maxpool_relu_backward(grad_out, self.argmax, self._out, hc, wc, g)
        return self.conv._backward_cols(g, param_grads, input_grad)

    def _small_backward(self, grad_out, param_grads, input_grad):
        conv, x = self.conv, self._x
        f = conv.out_channels
        n, c = x.shape[:2]
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        _, _, hc, wc = self._conv_shape
        grad = np.ascontiguousarray(grad_out.transpose(0, 2, 3, 1))      # (N, Ho, Wo, F), as the forward wrote
        if param_grads:
            blocks = min(n, parallel.num_threads())
            dw_part = np.empty((blocks, c * kh * kw, f), dtype=x.dtype)
            db_part = np.empty((blocks, f), dtype=x.dtype)
            kernels.direct_conv_weight_grad_nhwc(grad, self._argmax_nhwc, self._out_nhwc, self._xpad, kh, kw, sh, sw,
                                                 wc, dw_part, db_part)
            conv.weight.accumulate(dw_part.sum(axis=0).T.reshape(conv.weight.shape), owned=True)
            if conv.bias is not None:
                conv.bias.accumulate(db_part.sum(axis=0), owned=True)
        if not input_grad:
            return None
        ph, pw = conv.padding
        if kernels.is_1x3x3_stride1(c, kh, kw, sh, sw):    # the reference net's first conv: a kernel of its own
            wt = np.ascontiguousarray(conv.weight.data.reshape(f, -1).T)
            dx = np.empty(x.shape, dtype=x.dtype)
            return kernels.direct_conv_input_grad_1x3x3(grad, self._argmax_nhwc, self._out_nhwc, wt, wc, ph, pw, dx)
        # any other small conv: dL/dx as Conv2d's backward computes it, from the dense conv-output
        # gradient: dL/dcols = W^T @ G, then col2im
        g_rows = self._buffer("g_rows", (n * hc * wc, f), x.dtype)
        kernels.winners_to_dense_nhwc(grad, self._argmax_nhwc, self._out_nhwc, hc, wc, g_rows)
        dcols = parallel.matmul(conv.weight.data.reshape(f, -1).T, g_rows.T)
        dx = np.empty(x.shape, dtype=x.dtype)
        kernels.col2im(np.ascontiguousarray(dcols), kh, kw, sh, sw, ph, pw, hc, wc, dx)
        return dx

    def _nhwc_backward(self, grad_out, param_grads, input_grad):
        conv, x, xp = self.conv, self._x, self._xp
        f = conv.out_channels
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        wc = self._conv_shape[3]
        xp3 = xp.reshape(n, xp.shape[1], -1)                  # (N, Hp, Wp*C): taps j, c as one run
        if param_grads:
            blocks = min(n, parallel.num_threads())
            dw_part = np.empty((blocks, f, kh, kw * c), dtype=x.dtype)
            db_part = np.empty((blocks, f), dtype=x.dtype)
            kernels.winners_weight_grad_nhwc(grad_out, self._argmax_nhwc, self._out_nhwc, xp3, c, sh, sw, wc,
                                             dw_part, db_part)
            conv.weight.accumulate(dw_part.sum(axis=0).reshape(f, kh, kw, c).transpose(0, 3, 1, 2), owned=False)
            if conv.bias is not None:
                conv.bias.accumulate(db_part.sum(axis=0), owned=True)
        if not input_grad:
            return None
        wf3 = np.ascontiguousarray(conv.weight.data.transpose(0, 2, 3, 1)).reshape(f, kh, kw * c)
        dxp = self._buffer("dxp", xp.shape, x.dtype)
        kernels.winners_input_grad_nhwc(grad_out, self._argmax_nhwc, self._out_nhwc, wf3, c, sh, sw, wc,
                                        dxp.reshape(xp3.shape))
        # channels last, returned as an NCHW view (a copy: dxp is reused by the next call)
        return np.ascontiguousarray(dxp[:, ph:ph + h, pw:pw + w]).transpose(0, 3, 1, 2)
