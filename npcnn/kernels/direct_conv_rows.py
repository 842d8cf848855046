"""A stride-1 conv with few weights per filter (a first layer: 1x3x3, 1x5x5, 3x3x3), computed directly
in NCHW, without im2col: forward with bias and activation, weight gradient, input gradient.

With 9 or 25 taps per filter, im2col + GEMM is a pass over memory: the GEMM's inner dimension is
too short for BLAS to block, and the column matrix is 9 or 25 times the image. Here a filter's whole
output plane is built at once, as a sum over the taps ``(c, i, j)`` of ``w[f, c, i, j]`` times the
zero-padded input plane ``xpad[n, c]`` shifted by ``(i, j)``. With a stride of 1, shifting the plane
is shifting its flat memory by ``i*Wp + j``, so each tap is one long vectorised loop,
``wide[t] += w * xflat[c, i*Wp + j + t]``, over an output ``wide`` as wide as the padded input
(``Ho`` rows of ``Wp``; the ``Wp - Wo`` extra columns of each row are computed and dropped). The
forward takes the taps four at a time and the filters two at a time in each such loop (eight
multiply-adds per value read and written). The two gradients are the same loops read backwards, with the gradient spread to the same wide rows
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
from .rows import RELU, TANH, sums_runs, tanh_segment




@njit(inline="always", error_model="numpy")
def _taps_in_fours(w, hp, wp):
    """The taps ``(c, i, j)`` in groups of four: ``(w4, offsets)``, ``w4`` (F', T4) the weights with T4 the
    number of taps rounded up to a multiple of 4 (the extra taps weigh 0) and F' the filters rounded up
    to an even number (an extra filter of zeros), ``offsets`` (T4,) each tap's shift ``c*Hp*Wp + i*Wp + j``
    in the flat padded image."""
    f_out, n_ch, kh, kw = w.shape
    taps = n_ch * kh * kw
    w4 = np.zeros((f_out + f_out % 2, -(-taps // 4) * 4), dtype=w.dtype)
    offsets = np.zeros(w4.shape[1], dtype=np.int64)
    for c in range(n_ch):
        for i in range(kh):
            for j in range(kw):
                t = (c * kh + i) * kw + j
                offsets[t] = c * hp * wp + i * wp + j
                for f in range(f_out):
                    w4[f, t] = w[f, c, i, j]
    return w4, offsets


@njit(inline="always", error_model="numpy")
def _direct_image(xs, w4, offsets, bias, act, wp, planes, o):
    """One image of :func:`direct_conv_act_to_nhwc`: ``xs`` its flat padded input, ``planes`` (F', span)
    scratch, ``o`` (Ho, Wo, F) its output."""
    ho, wo, f_out = o.shape
    f_even, t4 = w4.shape
    span = planes.shape[1]
    for f in range(0, f_even, 2):
        pa, pb = planes[f], planes[f + 1]
        ba, bb = bias[f], bias[f + 1] if f + 1 < f_out else 0.0
        for t in range(span):
            pa[t] = ba
            pb[t] = bb
        for g in range(0, t4, 4):
            a0, a1, a2, a3 = w4[f, g], w4[f, g + 1], w4[f, g + 2], w4[f, g + 3]
            b0, b1, b2, b3 = w4[f + 1, g], w4[f + 1, g + 1], w4[f + 1, g + 2], w4[f + 1, g + 3]
            # open-ended slices: numba then knows the indices below are not negative (see normalization.py)
            s0, s1, s2, s3 = xs[offsets[g]:], xs[offsets[g + 1]:], xs[offsets[g + 2]:], xs[offsets[g + 3]:]
            for t in range(span):
                x0, x1, x2, x3 = s0[t], s1[t], s2[t], s3[t]
                pa[t] = pa[t] + a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                pb[t] = pb[t] + b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
        if act == TANH:
            tanh_segment(pa)
            tanh_segment(pb)
    relu = act == RELU
    for y in range(ho):
        oy = o[y]
        for x in range(wo):
            ox = oy[x]
            at = y * wp + x
            for f in range(f_out):
                v = planes[f, at]
                ox[f] = 0 if relu and v < 0 else v


@_kernel(size_arg=6, fma=True)
def direct_conv_act_to_nhwc(xpad, w, bias, act, kh, kw, out, sums_all):
    """``out[n, f] = act(conv(xpad[n], w[f]) + bias[f])`` for a stride-1 conv, ``act`` coded as in
    :mod:`npcnn.kernels.rows` (NONE, RELU, TANH); ``xpad`` (N, C, Hp, Wp) zero-padded, ``w`` (F, C, kh,
    kw), ``out`` (N, Ho, Wo, F): channels last, as the fast path's next steps want it.

    Per image, the filters' wide output planes (see the module's docstring) are built two filters and
    four taps at a time: one pass over a plane reads four shifted copies of the input once and updates
    two planes with eight multiply-adds per value, where a pass per tap and filter read and wrote a
    plane for each multiply-add (one thread, batch 1000: the small ResNet's 1->16 stem 24.6 -> 11.8 ms,
    Wong et al.'s 4x4 stride-2 first conv 8.9 -> 4.6 ms, LeNet-5's first conv with its tanh 22.6 -> 16.7
    ms). Each value starts from the bias and adds the taps in order, four at a time; then the activation,
    and the planes are written out channels last. With ``sums_all`` (workers, 2, run) float64, zeroed, not
    empty, worker ``t`` takes a ``workers``-th of the images and adds their outputs and squares into
    ``sums_all[t]`` (:func:`npcnn.kernels.rows.sums_runs`, a batch norm's statistics; ``run`` whole rows)."""
    n_img, ho, wo, f_out = out.shape
    n_ch, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    span = (ho - 1) * wp + wo                   # the wide output's length that is read back
    xflat = xpad.reshape(n_img, n_ch * hp * wp)
    w4, offsets = _taps_in_fours(w, hp, wp)
    f_even, t4 = w4.shape
    workers = sums_all.shape[0] if sums_all.shape[0] > 0 else n_img      # no sums: one image a task
    for task in prange(workers):
        planes = np.empty((f_even, span), dtype=out.dtype)
        for n in range(task * n_img // workers, (task + 1) * n_img // workers):
            _direct_image(xflat[n], w4, offsets, bias, act, wp, planes, out[n])
            if sums_all.shape[0] > 0:
                sums_runs(out[n].reshape(-1), sums_all[task, 0], sums_all[task, 1])
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
