"""The fused conv -> ReLU -> 2x2 max-pool computed directly, for convs with few weights per
filter (the ``small`` path of the fused layers; the reference net's first conv): forward, weight
gradient, and the input gradient of a 1-channel 3x3 stride-1 conv.
"""
import numpy as np
from numba import njit, prange

from ._compile import _kernel
from .pooling import _gradient_by_quadrant, _max4_relu_at, _split_by_quadrant, _window_labels


# A conv with few weights per filter (the first layer: 1 channel x 3x3 = 9) gains nothing from
# im2col + GEMM: the GEMM's inner dimension is 9, so it is a pass over memory, and the column
# matrix (9 rows, N*28*28 columns) and the conv output (32 x N*28*28) are written and read again
# only to be max-pooled. The kernels below compute the conv, bias, ReLU and 2x2 max-pool at once,
# and the weight gradient, from a zero-padded input ``xpad`` (N, C, H+2p, W+2p), so that no tap
# needs a bounds test (the input gradient of the 1x3x3 stride-1 conv has its own kernel, any other
# goes through ``pooling.winners_to_dense_nhwc`` and a GEMM). Pooled outputs are channels last,
# ``(N, Ho, Wo, F)``: the inner loops run over the filters, contiguous, and vectorise. For pooled
# pixel ``(oy, ox)`` the window's four conv outputs ``q = 0..3`` (row-major) start at input rows
# ``y0, y0+sh`` and columns ``x0, x0+sw`` of ``xpad``, with ``y0 = 2*oy*sh`` and ``x0 = 2*ox*sw``.
@njit(inline="always", error_model="numpy")
def _tap_of_quadrants(xpad, n, c, y, x, sh, sw):
    """One tap's input value for each of the window's four conv outputs (row-major): the tap of
    the top-left output sits at ``xpad[n, c, y, x]``, the others one conv stride right / down."""
    return xpad[n, c, y, x], xpad[n, c, y, x + sw], xpad[n, c, y + sh, x], xpad[n, c, y + sh, x + sw]


# The common case, one channel, 3x3 taps, stride 1 (the reference net's first layer), has its own
# loops in the kernels below. A 2x2 window's four conv outputs then read one 4x4 patch of the
# padded input: its 16 values are loaded once per pooled pixel into locals (``a0..d3``, rows a-d),
# and the loop over the filters, with the 9 taps written out, keeps the four sums in registers
# and vectorises (the general loops keep ``(4, F)`` sums in memory and run 9 short filter loops
# per pixel, each with its own vector-loop setup), so forward and weight gradient run faster.
def is_1x3x3_stride1(n_ch, kh, kw, sh, sw):
    """True for the conv the special loops below handle: one channel, 3x3 taps, stride 1."""
    return n_ch == 1 and kh == 3 and kw == 3 and sh == 1 and sw == 1


_is_1x3x3_stride1 = njit(inline="always", error_model="numpy")(is_1x3x3_stride1)   # the same test, in a kernel


@njit(inline="always", error_model="numpy")
def _dot3x3(wt, f, zero, t0, t1, t2, t3, t4, t5, t6, t7, t8):
    """Filter ``f``'s 3x3 taps ``wt[0..8, f]`` times the nine input values, summed tap by tap from 0
    as the general loop sums them.

    The leading ``zero +`` is not decoration: in ``w0*t0 + w1*t1 + ...`` either product may be the
    one fused into a multiply-add, and LLVM fused them differently in the window's four outputs, so
    two outputs over identical input patches came out one rounding apart and the pool's winner
    differed from PyTorch's tie rule (caught by the PGD-vs-torchattacks test). From ``0 + w0*t0``
    on, each step can only become ``fma(w_k, t_k, sum)``.
    """
    return (zero + wt[0, f] * t0 + wt[1, f] * t1 + wt[2, f] * t2 + wt[3, f] * t3 + wt[4, f] * t4
            + wt[5, f] * t5 + wt[6, f] * t6 + wt[7, f] * t7 + wt[8, f] * t8)


@njit(inline="always", error_model="numpy")
def _patch4x4(xpad, n, oy, ox):
    """The 16 values of the 4x4 patch of ``xpad[n, 0]`` under pooled pixel ``(oy, ox)``'s window
    (rows a-d, columns 0-3), the inputs of a 1-channel 3x3 stride-1 conv's four window outputs."""
    y, x = 2 * oy, 2 * ox
    ra, rb, rc, rd = xpad[n, 0, y], xpad[n, 0, y + 1], xpad[n, 0, y + 2], xpad[n, 0, y + 3]
    return (ra[x], ra[x + 1], ra[x + 2], ra[x + 3], rb[x], rb[x + 1], rb[x + 2], rb[x + 3],
            rc[x], rc[x + 1], rc[x + 2], rc[x + 3], rd[x], rd[x + 1], rd[x + 2], rd[x + 3])


@_kernel(size_arg=8, fma=True)   # size of the pooled output: threads from batch 42 on (reference net)
def direct_conv_relu_maxpool_nhwc(xpad, wt, bias, kh, kw, sh, sw, wc, out, argmax, zero):
    """``out = maxpool2x2(relu(conv(x) + bias))`` without the conv output ever being stored.

    ``wt`` (C*kh*kw, F) is the weight as a (F, C*kh*kw) matrix, transposed; ``out`` and ``argmax``
    (N, Ho, Wo, F): the pooled values, and the winner's flat index ``y*wc + x`` in the conv output
    plane (first maximum in row-major order, NaN wins, as PyTorch). Each conv value is summed tap
    by tap in the weight's order, then the bias is added. One channel, 3x3, stride 1 takes its
    own loop (see above); any other conv the general one.
    """
    n_img, n_ch = xpad.shape[0], xpad.shape[1]
    ho, wo, f_out = out.shape[1], out.shape[2], out.shape[3]
    if _is_1x3x3_stride1(n_ch, kh, kw, sh, sw):
        for n in prange(n_img):
            for oy in range(ho):
                for ox in range(wo):
                    a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3 = _patch4x4(xpad, n, oy, ox)
                    p0, p1, p2, p3 = _window_labels(oy, ox, wc)
                    o = out[n, oy, ox]
                    am = argmax[n, oy, ox]
                    for f in range(f_out):
                        b = bias[f]
                        best, pos = _max4_relu_at(_dot3x3(wt, f, zero, a0, a1, a2, b0, b1, b2, c0, c1, c2) + b,
                                                  _dot3x3(wt, f, zero, a1, a2, a3, b1, b2, b3, c1, c2, c3) + b,
                                                  _dot3x3(wt, f, zero, b0, b1, b2, c0, c1, c2, d0, d1, d2) + b,
                                                  _dot3x3(wt, f, zero, b1, b2, b3, c1, c2, c3, d1, d2, d3) + b,
                                                  p0, p1, p2, p3, zero)
                        o[f] = best
                        am[f] = pos
        return out
    for n in prange(n_img):
        acc = np.empty((4, f_out), dtype=xpad.dtype)
        for oy in range(ho):
            y0 = 2 * oy * sh
            for ox in range(wo):
                x0 = 2 * ox * sw
                acc[:] = zero
                for c in range(n_ch):
                    for i in range(kh):
                        for j in range(kw):
                            k = (c * kh + i) * kw + j
                            v0, v1, v2, v3 = _tap_of_quadrants(xpad, n, c, y0 + i, x0 + j, sh, sw)
                            for f in range(f_out):
                                w = wt[k, f]
                                acc[0, f] += w * v0
                                acc[1, f] += w * v1
                                acc[2, f] += w * v2
                                acc[3, f] += w * v3
                p0, p1, p2, p3 = _window_labels(oy, ox, wc)
                o = out[n, oy, ox]
                am = argmax[n, oy, ox]
                for f in range(f_out):
                    b = bias[f]
                    best, pos = _max4_relu_at(acc[0, f] + b, acc[1, f] + b, acc[2, f] + b, acc[3, f] + b,
                                              p0, p1, p2, p3, zero)
                    o[f] = best
                    am[f] = pos
    return out


@_kernel(size_arg=0, fma=True)
def direct_conv_weight_grad_nhwc(grad, argmax, out, xpad, kh, kw, sh, sw, wc, dw_part, db_part):
    """Weight and bias gradient of :func:`direct_conv_relu_maxpool_nhwc`, from ``grad`` (N, Ho, Wo, F).

    ``dW[k, f] += sum_q gq[q, f] * xpad[tap k of conv output q]``, where ``gq`` holds the gradient
    at each of the window's four conv outputs (zero except at the winner), so the loop over the
    filters has no branch and vectorises. All four products are taken, so a NaN or inf input
    reaches ``dW`` as in PyTorch's (dense) weight gradient. The images are dealt to
    ``len(dw_part)`` blocks (one per thread; contiguous ranges in the 1x3x3 loop, round-robin in the
    general one) with their own ``dw_part[b]`` (C*kh*kw, F) and ``db_part[b]`` (F); the
    caller sums them. One channel, 3x3, stride 1 takes its own loop: one pass over the filters per
    pooled pixel with the 4x4 input patch in locals (see above).
    """
    n_img, ho, wo, f_out = grad.shape
    n_ch = xpad.shape[1]
    n_blocks = dw_part.shape[0]
    if _is_1x3x3_stride1(n_ch, kh, kw, sh, sw):
        for blk in prange(n_blocks):
            # sums in arrays of the thread's own, copied out at the end: summing straight into
            # dw_part[blk] made two threads slower than one (the threads' blocks share cache lines)
            dw = np.zeros((kh * kw, f_out), dw_part.dtype)
            db = np.zeros(f_out, db_part.dtype)
            zero = grad.dtype.type(0)
            for n in range(blk * n_img // n_blocks, (blk + 1) * n_img // n_blocks):
                for oy in range(ho):
                    for ox in range(wo):
                        a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3 = _patch4x4(xpad, n, oy, ox)
                        p0, p1, p2, p3 = _window_labels(oy, ox, wc)
                        gv = grad[n, oy, ox]
                        am = argmax[n, oy, ox]
                        o = out[n, oy, ox]
                        for f in range(f_out):
                            g = gv[f] if o[f] > 0 else zero
                            g0, g1, g2, g3 = _split_by_quadrant(g, am[f], p0, p1, p2, p3, zero)
                            db[f] += g0 + g1 + g2 + g3
                            dw[0, f] += g0 * a0 + g1 * a1 + g2 * b0 + g3 * b1
                            dw[1, f] += g0 * a1 + g1 * a2 + g2 * b1 + g3 * b2
                            dw[2, f] += g0 * a2 + g1 * a3 + g2 * b2 + g3 * b3
                            dw[3, f] += g0 * b0 + g1 * b1 + g2 * c0 + g3 * c1
                            dw[4, f] += g0 * b1 + g1 * b2 + g2 * c1 + g3 * c2
                            dw[5, f] += g0 * b2 + g1 * b3 + g2 * c2 + g3 * c3
                            dw[6, f] += g0 * c0 + g1 * c1 + g2 * d0 + g3 * d1
                            dw[7, f] += g0 * c1 + g1 * c2 + g2 * d1 + g3 * d2
                            dw[8, f] += g0 * c2 + g1 * c3 + g2 * d2 + g3 * d3
            dw_part[blk] = dw
            db_part[blk] = db
        return dw_part
    for blk in prange(n_blocks):
        dw_part[blk] = 0.0
        db_part[blk] = 0.0
        gq = np.empty((4, f_out), dtype=grad.dtype)
        for n in range(blk, n_img, n_blocks):
            for oy in range(ho):
                y0 = 2 * oy * sh
                for ox in range(wo):
                    x0 = 2 * ox * sw
                    _gradient_by_quadrant(grad, argmax, out, n, oy, ox, wc, gq[0], gq[1], gq[2], gq[3])
                    for f in range(f_out):
                        db_part[blk, f] += gq[0, f] + gq[1, f] + gq[2, f] + gq[3, f]
                    for c in range(n_ch):
                        for i in range(kh):
                            for j in range(kw):
                                k = (c * kh + i) * kw + j
                                v0, v1, v2, v3 = _tap_of_quadrants(xpad, n, c, y0 + i, x0 + j, sh, sw)
                                for f in range(f_out):
                                    dw_part[blk, k, f] += gq[0, f] * v0 + gq[1, f] * v1 + gq[2, f] * v2 + gq[3, f] * v3
    return dw_part


@_kernel(size_arg=0, fma=True, reassoc=True)   # reassoc: the 16 sums over the filters vectorise
def direct_conv_input_grad_1x3x3(grad, argmax, out, wt, wc, ph, pw, dx):
    """Input gradient of :func:`direct_conv_relu_maxpool_nhwc` for one channel, 3x3, stride 1:
    ``dx`` (N, 1, H, W), overwritten, from ``grad`` (N, Ho, Wo, F), the winners and ``wt`` (9, F).

    A window's four conv outputs reach the 4x4 patch of the padded input under it; patch pixel
    ``(r, s)`` gets ``sum_f sum_q gq[q, f] * W[f, r - dy_q, s - dx_q]`` (taps inside the 3x3 only):
    16 sums over the filters (36 products per filter, as the forward), taken in one vectorised
    loop and added to a padded per-image plane, whose inside is then copied to ``dx``. This
    replaces the dense conv-output gradient (N*hc*wc, F), its GEMM and col2im, which wrote and
    read a large array mostly of zeros; the sums over the filters run in another order than BLAS's.
    """
    n_img, ho, wo, f_out = grad.shape
    h, w = dx.shape[2], dx.shape[3]
    for n in prange(n_img):
        zero = grad.dtype.type(0)
        dxp = np.zeros((h + 2 * ph, w + 2 * pw), dtype=dx.dtype)
        for oy in range(ho):
            for ox in range(wo):
                p0, p1, p2, p3 = _window_labels(oy, ox, wc)
                gv = grad[n, oy, ox]
                am = argmax[n, oy, ox]
                o = out[n, oy, ox]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
                for f in range(f_out):
                    g = gv[f] if o[f] > 0 else zero
                    g0, g1, g2, g3 = _split_by_quadrant(g, am[f], p0, p1, p2, p3, zero)
                    s00 += g0 * wt[0, f]
                    s01 += g0 * wt[1, f] + g1 * wt[0, f]
                    s02 += g0 * wt[2, f] + g1 * wt[1, f]
                    s03 += g1 * wt[2, f]
                    s10 += g0 * wt[3, f] + g2 * wt[0, f]
                    s11 += g0 * wt[4, f] + g1 * wt[3, f] + g2 * wt[1, f] + g3 * wt[0, f]
                    s12 += g0 * wt[5, f] + g1 * wt[4, f] + g2 * wt[2, f] + g3 * wt[1, f]
                    s13 += g1 * wt[5, f] + g3 * wt[2, f]
                    s20 += g0 * wt[6, f] + g2 * wt[3, f]
                    s21 += g0 * wt[7, f] + g1 * wt[6, f] + g2 * wt[4, f] + g3 * wt[3, f]
                    s22 += g0 * wt[8, f] + g1 * wt[7, f] + g2 * wt[5, f] + g3 * wt[4, f]
                    s23 += g1 * wt[8, f] + g3 * wt[5, f]
                    s30 += g2 * wt[6, f]
                    s31 += g2 * wt[7, f] + g3 * wt[6, f]
                    s32 += g2 * wt[8, f] + g3 * wt[7, f]
                    s33 += g3 * wt[8, f]
                y, x = 2 * oy, 2 * ox
                dxp[y, x] += s00
                dxp[y, x + 1] += s01
                dxp[y, x + 2] += s02
                dxp[y, x + 3] += s03
                dxp[y + 1, x] += s10
                dxp[y + 1, x + 1] += s11
                dxp[y + 1, x + 2] += s12
                dxp[y + 1, x + 3] += s13
                dxp[y + 2, x] += s20
                dxp[y + 2, x + 1] += s21
                dxp[y + 2, x + 2] += s22
                dxp[y + 2, x + 3] += s23
                dxp[y + 3, x] += s30
                dxp[y + 3, x + 1] += s31
                dxp[y + 3, x + 2] += s32
                dxp[y + 3, x + 3] += s33
        for y in range(h):
            src = dxp[y + ph, pw:pw + w]
            dst = dx[n, 0, y]
            for x in range(w):
                dst[x] = src[x]
    return dx
