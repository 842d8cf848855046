"""A stride-1 conv with few weights per filter (a first layer: 1x3x3, 1x5x5, 3x3x3), computed directly
in NCHW, without im2col: forward with bias and activation, weight gradient, input gradient.

With 9 or 25 taps per filter, im2col + GEMM is a pass over memory: the GEMM's inner dimension is
too short for BLAS to block, and the column matrix is 9 or 25 times the image. Here a filter's whole
output plane is built at once, as a sum over the taps ``(c, i, j)`` of ``w[f, c, i, j]`` times the
zero-padded input plane ``xpad[n, c]`` shifted by ``(i, j)``. With a stride of 1, shifting the plane
is shifting its flat memory by ``i*Wp + j``, so each tap is one long vectorised loop,
``wide[t] += w * xflat[c, i*Wp + j + t]``, over an output ``wide`` as wide as the padded input
(``Ho`` rows of ``Wp``; the ``Wp - Wo`` extra columns of each row are computed and dropped). The two
gradients are the same loops read backwards, with the gradient spread to the same wide rows
(zeros in the extra columns):

* ``dL/dW[f, c, i, j] = sum over n, y, x of G[n, f, y, x] * xpad[n, c, y + i, x + j]`` (a dot product
  of two rows per tap), ``dL/db[f] = sum of G[n, f]``;
* ``dL/dxpad[n, c, y + i, x + j] += w[f, c, i, j] * G[n, f, y, x]`` (a scaled row added per tap),
  whose interior is dL/dx.

``G`` is the gradient at the conv's output, after the activation's derivative (the caller applies it),
indexed (N, F, Ho, Wo) in any memory order (the fast path passes an NCHW view of channels-last memory:
each (n, f) plane is read once, into the wide rows).
"""
import numpy as np
from numba import njit, prange

from ._compile import _kernel
from .rows import RELU, TANH, bias_relu_segment, tanh_segment




@_kernel(size_arg=6, fma=True)
def direct_conv_act_to_nhwc(xpad, w, bias, act, kh, kw, out):
    """``out[n, f] = act(conv(xpad[n], w[f]) + bias[f])`` for a stride-1 conv, ``act`` coded as in
    :mod:`npcnn.kernels.rows` (NONE, RELU, TANH); ``xpad`` (N, C, Hp, Wp) zero-padded, ``w`` (F, C, kh,
    kw), ``out`` (N, Ho, Wo, F): channels last, as the fast path's next steps want it. Each value is
    summed tap by tap in the weight's order, then the bias is added and the activation applied, a row
    of the output plane at a time, before the row is written out channels last."""
    n_img, ho, wo, f_out = out.shape
    n_ch, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    span = (ho - 1) * wp + wo                   # the wide output's length that is read back
    xflat = xpad.reshape(n_img, n_ch, hp * wp)
    for n in prange(n_img):
        wide = np.empty(span, dtype=out.dtype)
        bias_run = np.empty(wo, dtype=out.dtype)
        for f in range(f_out):
            wide[:] = 0.0
            for c in range(n_ch):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[f, c, i, j]
                        src = xflat[n, c, i * wp + j:i * wp + j + span]
                        for t in range(span):
                            wide[t] += wv * src[t]
            bias_run[:] = bias[f]
            for y in range(ho):
                row = wide[y * wp:y * wp + wo]
                bias_relu_segment(row, bias_run, act == RELU)
                if act == TANH:
                    tanh_segment(row)
                o = out[n, y]
                for x in range(wo):
                    o[x, f] = row[x]
    return out


@njit(inline="always", error_model="numpy")
def _spread(g, n, f, wp, wide):
    """``g[n, f]`` (Ho, Wo) into the wide rows of ``wide`` (zeros in the extra columns)."""
    ho, wo = g.shape[2], g.shape[3]
    wide[:] = 0.0
    for y in range(ho):
        row = wide[y * wp:y * wp + wo]
        grow = g[n, f, y]
        for x in range(wo):
            row[x] = grow[x]


@_kernel(size_arg=0, fma=True, reassoc=True)
def direct_conv_weight_grad_nchw(g, xpad, kh, kw, dw_part, db_part):
    """dL/dW and dL/db of :func:`direct_conv_act_to_nhwc` from ``g`` (N, F, Ho, Wo), the gradient at the
    conv output. The images are dealt to ``len(dw_part)`` blocks (one per thread) in contiguous
    ranges, each summing into its own ``dw_part[b]`` (F, C, kh, kw) and ``db_part[b]`` (F); the
    caller sums the blocks."""
    n_img, f_out, ho, wo = g.shape
    n_ch, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    span = (ho - 1) * wp + wo
    xflat = xpad.reshape(n_img, n_ch, hp * wp)
    n_blocks = dw_part.shape[0]
    for blk in prange(n_blocks):
        dw = np.zeros(dw_part.shape[1:], dtype=dw_part.dtype)
        db = np.zeros(f_out, dtype=db_part.dtype)
        wide = np.empty(span, dtype=g.dtype)
        zero = g.dtype.type(0)          # sums in the gradient's precision, so that they vectorise
        for n in range(blk * n_img // n_blocks, (blk + 1) * n_img // n_blocks):
            for f in range(f_out):
                _spread(g, n, f, wp, wide)
                s = zero
                for t in range(span):
                    s += wide[t]
                db[f] += s
                for c in range(n_ch):
                    for i in range(kh):
                        for j in range(kw):
                            src = xflat[n, c, i * wp + j:i * wp + j + span]
                            s = zero
                            for t in range(span):
                                s += wide[t] * src[t]
                            dw[f, c, i, j] += s
        dw_part[blk] = dw
        db_part[blk] = db
    return dw_part


@_kernel(size_arg=0, fma=True)
def direct_conv_input_grad_nchw(g, w, kh, kw, dxpad):
    """dL/dxpad of :func:`direct_conv_act_to_nhwc` from ``g`` (N, F, Ho, Wo); ``dxpad`` (N, C, Hp, Wp)
    is zeroed first. Each image writes its own plane: the images run in parallel without atomics."""
    n_img, f_out, ho, wo = g.shape
    n_ch, hp, wp = dxpad.shape[1], dxpad.shape[2], dxpad.shape[3]
    span = (ho - 1) * wp + wo
    dflat = dxpad.reshape(n_img, n_ch, hp * wp)
    for n in prange(n_img):
        dxpad[n] = 0.0
        wide = np.empty(span, dtype=g.dtype)
        for f in range(f_out):
            _spread(g, n, f, wp, wide)
            for c in range(n_ch):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[f, c, i, j]
                        dst = dflat[n, c, i * wp + j:i * wp + j + span]
                        for t in range(span):
                            dst[t] += wv * wide[t]
    return dxpad
