"""Conv2d -> ReLU -> MaxPool2d as one step: what :class:`Sequential` runs when it meets that triple.

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

The three layer objects keep their state as if they had run one after
another, so the state dict, the parameters and even calling their
``backward`` one by one stay as in the unfused net (the ReLU recomputes its
mask only if asked). The paths sum in different orders, so they agree to
rounding, not to the bit.
"""
import numba
import numpy as np

from .. import kernels, parallel
from .activation import ReLU
from .conv import Conv2d
from .pool import MaxPool2d


def fusable(layers, i):
    """True when ``layers[i:i+3]`` is exactly Conv2d, ReLU, MaxPool2d (subclasses are left alone)."""
    return (i + 2 < len(layers) and type(layers[i]) is Conv2d and type(layers[i + 1]) is ReLU
            and type(layers[i + 2]) is MaxPool2d)


#: Convs with at most this many weights per filter (C*kh*kw) take the ``small`` path.
DIRECT_MAX_WEIGHTS = 16


def _path(conv, pool):
    """'small', 'nhwc' (both need a 2x2 / stride 2 pool) or 'gemm'."""
    if not (pool.kernel_size == (2, 2) and pool.stride == (2, 2) and pool.padding == (0, 0)):
        return "gemm"
    if conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] <= DIRECT_MAX_WEIGHTS:
        return "small"
    return "nhwc"


def conv_relu_pool_forward(conv, relu, pool, x):
    path = _path(conv, pool)
    if path == "gemm":
        out_cols = conv._forward_cols(x)               # (F, N*Ho*Wo), bias not added
    else:                                              # the conv is computed below
        _, hc, wc = conv._geometry(x)
        conv._x, conv._cached, conv._out_hw = x, False, (hc, wc)
    n, f, (hc, wc) = x.shape[0], conv.out_channels, conv._out_hw
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
        argmax = pool._argmax_buffer(shape)
        kernels.bias_relu_maxpool(out_cols, bias, hc, wc, kh, kw, sh, sw, ph, pw, out, argmax)
    else:                                              # pooled output channels last, returned as an NCHW view
        nhwc = (shape[0], shape[2], shape[3], shape[1])
        out_nhwc = np.empty(nhwc, dtype=x.dtype)
        argmax_nhwc = pool._argmax_buffer(nhwc, "_argmax_nhwc")
        if path == "small":
            wt = np.ascontiguousarray(conv.weight.data.reshape(f, -1).T)
            kernels.direct_conv_relu_maxpool_nhwc(_padded(conv, x), wt, bias, ckh, ckw, csh, csw, wc, out_nhwc,
                                                  argmax_nhwc, zero)
        else:
            _conv_channels_last_pooled(conv, x, hc, wc, bias, out_nhwc, argmax_nhwc, zero)
        out, pool._argmax = out_nhwc.transpose(0, 3, 1, 2), argmax_nhwc.transpose(0, 3, 1, 2)
        pool._out_nhwc = out_nhwc
    pool._x_shape, pool._out, pool._path = conv_shape, out, path
    relu._mask, relu._mask_from = None, (conv, x)     # recomputed only if relu.backward is called alone
    return out


def _padded(conv, x):
    """``x`` (N, C, H, W) zero-padded as the conv pads it, in a buffer kept on the conv for backward."""
    n, c, h, w = x.shape
    ph, pw = conv.padding
    xpad = conv._buffer("_xpad", (n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    if ph or pw:
        xpad[:, :, :ph], xpad[:, :, ph + h:], xpad[:, :, :, :pw], xpad[:, :, :, pw + w:] = 0, 0, 0, 0
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    return xpad


#: The channels-last column matrix is built and multiplied this many bytes at a time, so that
#: it stays in the CPU's cache between im2col writing it and the GEMM reading it.
NHWC_CHUNK_BYTES = 1 << 20


def _conv_channels_last_pooled(conv, x, hc, wc, bias, out, argmax, zero):
    """The conv as im2col on the padded channels-last input and ``rows = cols @ W`` (W as
    (kh*kw*C, F)), then bias + ReLU + 2x2 max-pool into ``out`` and ``argmax``, a few images at a
    time: each chunk's columns and conv output ``rows`` (N*hc*wc, F) stay in cache between the
    kernel that writes them and the one that reads them.

    With more than one chunk, while npcnn shares out the GEMMs (:func:`npcnn.parallel.sharing`),
    each thread takes its share of the images and walks them chunk by chunk: its own im2col,
    single-threaded GEMM and pooling.
    """
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), f = conv.kernel_size, conv.stride, conv.out_channels
    xp = _padded_channels_last(conv, x)
    xp3 = xp.reshape(n, xp.shape[1], -1)               # (N, Hp, Wp*C)
    w_mat = np.ascontiguousarray(conv.weight.data.transpose(2, 3, 1, 0)).reshape(kh * kw * c, f)
    p, k = hc * wc, kh * kw * c
    step = max(1, NHWC_CHUNK_BYTES // (p * k * x.itemsize))
    workers = min(numba.get_num_threads(), -(-n // step)) if parallel.sharing() else 1
    # the kernels of a chunk run on one thread each when the chunks are shared among threads
    im2col, pool = ((kernels.im2col_nhwc.serial, kernels.bias_relu_maxpool_nhwc_2x2.serial) if workers > 1
                    else (kernels.im2col_nhwc, kernels.bias_relu_maxpool_nhwc_2x2))

    def run(t):
        first, last = t * n // workers, (t + 1) * n // workers
        cols = conv._buffer(f"_cols_nhwc{t}", (min(last - first, step) * p, k), x.dtype)
        rows = conv._buffer(f"_rows{t}", (min(last - first, step) * p, f), x.dtype)
        for a in range(first, last, step):
            b = min(last, a + step)
            chunk_cols, chunk_rows = cols[:(b - a) * p], rows[:(b - a) * p]
            im2col(xp3[a:b], c, kh, kw, sh, sw, hc, wc, chunk_cols)
            np.matmul(chunk_cols, w_mat, out=chunk_rows)
            pool(chunk_rows, bias, hc, wc, out[a:b], argmax[a:b], zero)

    if workers == 1:
        run(0)
    else:
        parallel.run_threads(run, workers)


def _padded_channels_last(conv, x):
    """``x`` (N, C, H, W) as a zero-padded (N, H+2p, W+2p, C) buffer kept on the conv for backward."""
    n, c, h, w = x.shape
    ph, pw = conv.padding
    xp = conv._buffer("_xp", (n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    x_nhwc = x.transpose(0, 2, 3, 1)
    if x_nhwc.flags.c_contiguous:                      # x is a view of channels-last memory (a fused conv's output)
        kernels.pad_channels_last(x_nhwc.reshape(n, h, w * c), ph, pw, xp.reshape(n, h + 2 * ph, -1))
    else:
        if ph or pw:
            xp[:, :ph], xp[:, ph + h:], xp[:, :, :pw], xp[:, :, pw + w:] = 0, 0, 0, 0
        xp[:, ph:ph + h, pw:pw + w] = x_nhwc
    return xp


def conv_relu_pool_backward(conv, relu, pool, grad_out, param_grads, input_grad=True):
    """Returns dL/dx, or None when ``input_grad`` is False (the first layer of a net in training)."""
    n, f, hc, wc = pool._x_shape
    if pool._path == "small":
        return _small_backward(conv, pool, grad_out, param_grads, input_grad)
    grad_out = np.ascontiguousarray(grad_out)
    if pool._path == "nhwc":
        return _nhwc_backward(conv, pool, grad_out, param_grads, input_grad)
    g = conv._buffer("_g_cols", (f, n * hc * wc), grad_out.dtype)
    kernels.maxpool_relu_backward(grad_out, pool._argmax, pool._out, hc, wc, g)
    return conv._backward_cols(g, param_grads, input_grad)


def _small_backward(conv, pool, grad_out, param_grads, input_grad):
    x, f = conv._x, conv.out_channels
    n, c = x.shape[:2]
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    _, _, hc, wc = pool._x_shape
    grad = np.ascontiguousarray(grad_out.transpose(0, 2, 3, 1))          # (N, Ho, Wo, F), as the forward wrote
    if param_grads:
        blocks = min(n, numba.get_num_threads())
        dw_part = np.empty((blocks, c * kh * kw, f), dtype=x.dtype)
        db_part = np.empty((blocks, f), dtype=x.dtype)
        kernels.direct_conv_weight_grad_nhwc(grad, pool._argmax_nhwc, pool._out_nhwc, conv._xpad, kh, kw, sh, sw,
                                             wc, dw_part, db_part)
        conv.weight.accumulate(dw_part.sum(axis=0).T.reshape(conv.weight.shape), owned=True)
        if conv.bias is not None:
            conv.bias.accumulate(db_part.sum(axis=0), owned=True)
    if not input_grad:
        return None
    if kernels.is_1x3x3_stride1(c, kh, kw, sh, sw):    # the reference net's first conv: a kernel of its own
        wt = np.ascontiguousarray(conv.weight.data.reshape(f, -1).T)
        ph, pw = conv.padding
        dx = np.empty(x.shape, dtype=x.dtype)
        return kernels.direct_conv_input_grad_1x3x3(grad, pool._argmax_nhwc, pool._out_nhwc, wt, wc, ph, pw, dx)
    # any other small conv: dL/dx as Conv2d's own backward computes it (GEMM with the dense
    # conv-output gradient, then col2im)
    g_rows = conv._buffer("_g_rows", (n * hc * wc, f), x.dtype)
    kernels.winners_to_dense_nhwc(grad, pool._argmax_nhwc, pool._out_nhwc, hc, wc, g_rows)
    return conv._backward_cols(g_rows.T, param_grads=False, input_grad=True)


def _nhwc_backward(conv, pool, grad_out, param_grads, input_grad):
    x, xp, f = conv._x, conv._xp, conv.out_channels
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    wc = pool._x_shape[3]
    xp3 = xp.reshape(n, xp.shape[1], -1)                      # (N, Hp, Wp*C): taps j, c as one run
    if param_grads:
        blocks = min(n, numba.get_num_threads())
        dw_part = np.empty((blocks, f, kh, kw * c), dtype=x.dtype)
        db_part = np.empty((blocks, f), dtype=x.dtype)
        kernels.winners_weight_grad_nhwc(grad_out, pool._argmax_nhwc, pool._out_nhwc, xp3, c, sh, sw, wc, dw_part, db_part)
        conv.weight.accumulate(dw_part.sum(axis=0).reshape(f, kh, kw, c).transpose(0, 3, 1, 2), owned=False)
        if conv.bias is not None:
            conv.bias.accumulate(db_part.sum(axis=0), owned=True)
    if not input_grad:
        return None
    wf3 = np.ascontiguousarray(conv.weight.data.transpose(0, 2, 3, 1)).reshape(f, kh, kw * c)
    dxp = conv._buffer("_dxp", xp.shape, x.dtype)
    kernels.winners_input_grad_nhwc(grad_out, pool._argmax_nhwc, pool._out_nhwc, wf3, c, sh, sw, wc, dxp.reshape(xp3.shape))
    # channels last, returned as an NCHW view (a copy: dxp is reused by the next call)
    return np.ascontiguousarray(dxp[:, ph:ph + h, pw:pw + w]).transpose(0, 3, 1, 2)
