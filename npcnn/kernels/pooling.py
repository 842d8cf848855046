"""Max-pooling: the plain layer's forward and backward, and the fused ReLU -> 2x2 max-pool that
reads a conv's output straight from the GEMM (channel-major or channels last), with the helpers
that name a window's four conv outputs and route a pooled gradient to its winner.

Every kernel keeps PyTorch's rule for the winner: the first maximum in row-major window order,
and a NaN wins, so the gradients agree with PyTorch's even on ties.
"""
import numpy as np
from numba import njit, prange

from ._compile import _kernel
from .columns import cols_to_nchw


# --------------------------------------------------------------------------- max-pool (unfused)
@_kernel(size_arg=0)
def maxpool_forward(x, kh, kw, sh, sw, ph, pw, ho, wo, out, argmax):
    """Max over each window of ``x`` (N, C, H, W); padding counts as -inf.

    ``argmax`` (N, C, ho, wo) receives the flat index ``y*W + x`` of the
    winner inside its channel. Ties go to the first maximum in row-major
    window order and NaN wins, as in PyTorch's CPU kernel, so the gradients
    agree even on ties.
    """
    n_img, n_ch, h, w = x.shape
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for oy in range(ho):
            y0 = oy * sh - ph
            for ox in range(wo):
                x0 = ox * sw - pw
                best = -np.inf
                # PyTorch starts from the first in-image position of the window
                best_idx = max(y0, 0) * w + max(x0, 0)
                for i in range(kh):
                    y = y0 + i
                    if y < 0 or y >= h:
                        continue
                    for j in range(kw):
                        xx = x0 + j
                        if xx < 0 or xx >= w:
                            continue
                        v = x[n, c, y, xx]
                        if v > best or np.isnan(v):
                            best = v
                            best_idx = y * w + xx
                out[n, c, oy, ox] = best
                argmax[n, c, oy, ox] = best_idx
    return out


@_kernel(size_arg=2)
def maxpool_backward(grad_out, argmax, dx):
    """Route each output gradient to its window's winner; ``dx`` is overwritten.

    Overlapping windows (stride < kernel) may share a winner: their
    gradients add up. One thread owns one (image, channel) plane, so the
    additions never race.
    """
    n_img, n_ch, ho, wo = grad_out.shape
    w = dx.shape[3]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        dx[n, c] = 0.0
        for oy in range(ho):
            for ox in range(wo):
                idx = argmax[n, c, oy, ox]
                dx[n, c, idx // w, idx % w] += grad_out[n, c, oy, ox]
    return dx


# --------------------------------------------------------------------------- conv -> ReLU -> max-pool, fused
def bias_relu_maxpool(out_cols, bias, hc, wc, kh, kw, sh, sw, ph, pw, out, argmax):
    """``out = maxpool(relu(conv + bias))`` straight from the conv GEMM result.

    ``out_cols`` (F, N*hc*wc) is the conv output before the bias (the GEMM
    layout, see :mod:`npcnn.kernels.columns`); ``out`` and ``argmax`` are
    (N, F, Ho, Wo). For the common 2x2 / stride-2 window this is one pass and
    the conv output is never written out in NCHW, which saves the bias,
    layout and ReLU passes over the largest activation of the net; any other
    window takes those passes and then :func:`maxpool_forward`.

    ``argmax`` is exactly what :func:`maxpool_forward` records on the ReLU's
    output (PyTorch's rule: first maximum in row-major window order, NaN
    wins), so the unfused backward of MaxPool2d still works. ReLU is
    monotone, so ``max(relu(v)) = relu(max(v))``.
    """
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        _bias_relu_maxpool_2x2(out_cols, bias, hc, wc, out, argmax, out_cols.dtype.type(0))
    else:
        n, f = out.shape[:2]
        y = np.empty((n, f, hc * wc), dtype=out_cols.dtype)
        cols_to_nchw(out_cols, bias, n, y)
        np.maximum(y, 0, out=y)                       # ReLU; NaN passes through
        maxpool_forward(y.reshape(n, f, hc, wc), kh, kw, sh, sw, ph, pw, out.shape[2], out.shape[3], out, argmax)
    return out


@njit(inline="always", error_model="numpy")
def _max4_relu_at(v0, v1, v2, v3, p0, p1, p2, p3, zero):
    """Max and argmax over a 2x2 window's four conv values ``v0..v3`` (row-major), then ReLU;
    returns the max and the winner's label among ``p0..p3`` (its flat index in the conv plane).

    PyTorch's rule: the first maximum wins a tie, a NaN wins (and ReLU passes NaN through). The
    max is taken over the raw values, then the ReLU (``max(relu(v)) = relu(max(v))``): if the max
    is not > 0 and not NaN, all four ReLU'd values are 0 and the first wins the tie. That takes
    fewer compares than ReLU'ing all four first, and labels in the argmax's dtype (``int32``)
    keep a vectorised loop over the filters on 8 lanes; computing the index as
    ``top_left + (idx >> 1) * wc + (idx & 1)`` made LLVM widen it to int64 with a vector
    multiply, which was slower.
    """
    best = v0
    pos = p0
    if v1 > best or v1 != v1:
        best = v1
        pos = p1
    if v2 > best or v2 != v2:
        best = v2
        pos = p2
    if v3 > best or v3 != v3:
        best = v3
        pos = p3
    if not (best > 0 or best != best):
        best = zero
        pos = p0
    return best, pos


@njit(inline="always", error_model="numpy")
def _window_labels(oy, ox, wc):
    """Flat indices in the conv output plane of window ``(oy, ox)``'s four outputs, row-major, as int32."""
    p0 = np.int32(2 * oy * wc + 2 * ox)
    p2 = np.int32((2 * oy + 1) * wc + 2 * ox)
    return p0, np.int32(p0 + 1), p2, np.int32(p2 + 1)


@_kernel(size_arg=0)
def _bias_relu_maxpool_2x2(out_cols, bias, hc, wc, out, argmax, zero):
    """The common case of :func:`bias_relu_maxpool` (2x2 windows, stride 2, no padding),
    written out so the four candidates are plain local variables."""
    n_img, f_out, ho, wo = out.shape
    p = hc * wc
    for nf in prange(n_img * f_out):
        n = nf // f_out
        f = nf % f_out
        b = bias[f]
        for oy in range(ho):
            r0 = n * p + 2 * oy * wc
            for ox in range(wo):
                k = r0 + 2 * ox
                p0, p1, p2, p3 = _window_labels(oy, ox, wc)
                best, pos = _max4_relu_at(out_cols[f, k] + b, out_cols[f, k + 1] + b, out_cols[f, k + wc] + b,
                                          out_cols[f, k + wc + 1] + b, p0, p1, p2, p3, zero)
                out[n, f, oy, ox] = best
                argmax[n, f, oy, ox] = pos


@_kernel(size_arg=5)
def maxpool_relu_backward(grad_out, argmax, out, hc, wc, g_cols):
    """Backward of :func:`bias_relu_maxpool`: the conv-output gradient in GEMM layout.

    Each ``grad_out[n, f, oy, ox]`` goes to its window's winner, and only if
    the pooled value is > 0 (the ReLU's mask at the winner; everywhere else
    the pool's gradient is 0 anyway). ``g_cols`` (F, N*hc*wc) is
    overwritten, ready for the conv's weight and input GEMMs.
    """
    n_img, f_out, ho, wo = grad_out.shape
    p = hc * wc
    for nf in prange(n_img * f_out):
        n = nf // f_out
        f = nf % f_out
        base = n * p
        g_cols[f, base:base + p] = 0.0
        for oy in range(ho):
            for ox in range(wo):
                if out[n, f, oy, ox] > 0:
                    g_cols[f, base + argmax[n, f, oy, ox]] += grad_out[n, f, oy, ox]
    return g_cols


@njit(inline="always", error_model="numpy")
def bias_relu_maxpool_image_2x2(rows, bias, hc, wc, out, argmax, zero):
    """One image of :func:`bias_relu_maxpool_nhwc_2x2`: ``rows`` (hc*wc, F), ``out``/``argmax`` (Ho, Wo, F)."""
    ho, wo, f_out = out.shape
    for oy in range(ho):
        for ox in range(wo):
            r0 = 2 * oy * wc + 2 * ox
            p0, p1, p2, p3 = _window_labels(oy, ox, wc)
            v0, v1, v2, v3 = rows[r0], rows[r0 + 1], rows[r0 + wc], rows[r0 + wc + 1]
            o, am = out[oy, ox], argmax[oy, ox]
            for f in range(f_out):
                b = bias[f]
                best, pos = _max4_relu_at(v0[f] + b, v1[f] + b, v2[f] + b, v3[f] + b, p0, p1, p2, p3, zero)
                o[f] = best
                am[f] = pos


@_kernel(size_arg=0)
def bias_relu_maxpool_nhwc_2x2(rows, bias, hc, wc, out, argmax, zero):
    """:func:`bias_relu_maxpool` (2x2 windows, stride 2) from a channels-last conv output ``rows``
    (N*hc*wc, F) before the bias, into channels-last ``out`` and ``argmax`` (N, Ho, Wo, F)."""
    p = hc * wc
    for n in prange(out.shape[0]):
        bias_relu_maxpool_image_2x2(rows[n * p:(n + 1) * p], bias, hc, wc, out[n], argmax[n], zero)
    return out


# --------------------------------------------------------------------------- channels last: a pooled gradient's winner
# In the fused paths that keep the pool's output channels last, ``grad``, ``argmax`` and ``out`` are
# (N, Ho, Wo, F); these helpers give each of a window's four conv outputs its share of the gradient.
@njit(inline="always", error_model="numpy")
def _split_by_quadrant(g, pos, p0, p1, p2, p3, zero):
    """One filter's pooled gradient ``g`` (already 0 where the ReLU was off) as the gradients of the
    window's four conv outputs: ``g`` at the one whose label ``p0..p3`` equals the winner ``pos``, 0
    at the others. ``zero`` must be in ``g``'s dtype: a literal 0.0 (float64) drags a float32 loop into
    float64, on half as many vector lanes."""
    return (g if pos == p0 else zero, g if pos == p1 else zero, g if pos == p2 else zero,
            g if pos == p3 else zero)


@njit(inline="always", error_model="numpy")
def _gradient_by_quadrant(grad, argmax, out, n, oy, ox, wc, g0, g1, g2, g3):
    """``g0..g3[f]``: the gradient reaching conv output q = 0..3 of window ``(oy, ox)`` from filter
    f's pooled output (``grad`` where q won and the pooled value is > 0, else 0)."""
    p0, p1, p2, p3 = _window_labels(oy, ox, wc)
    zero = grad.dtype.type(0)
    gv, am, o = grad[n, oy, ox], argmax[n, oy, ox], out[n, oy, ox]
    for f in range(g0.shape[0]):
        g0[f], g1[f], g2[f], g3[f] = _split_by_quadrant(gv[f] if o[f] > 0 else zero, am[f], p0, p1, p2, p3, zero)


@_kernel(size_arg=0)
def winners_to_dense_nhwc(grad, argmax, out, hc, wc, g_rows):
    """The conv-output gradient of a fused conv -> ReLU -> 2x2 pool, dense and channels last:
    ``g_rows`` (N*hc*wc, F), overwritten, from the channels-last ``grad``, ``argmax`` and ``out``
    (N, Ho, Wo, F). Each window writes its four rows whole (the gradient at its winner, zeros
    elsewhere), so the filter loop has no branch; rows outside every window (odd sizes) get 0."""
    n_img, ho, wo, f_out = grad.shape
    for n in prange(n_img):
        base = n * hc * wc
        g_rows[base + 2 * ho * wc:base + hc * wc] = 0.0
        for oy in range(ho):
            for y in range(2 * oy, 2 * oy + 2):
                g_rows[base + y * wc + 2 * wo:base + (y + 1) * wc] = 0.0
            for ox in range(wo):
                r = base + 2 * oy * wc + 2 * ox
                _gradient_by_quadrant(grad, argmax, out, n, oy, ox, wc,
                                      g_rows[r], g_rows[r + 1], g_rows[r + wc], g_rows[r + wc + 1])
    return g_rows


# --------------------------------------------------------------------------- average pooling, channels last
# Each output row is built as one flat run of Wo*C values from the flat input rows it covers (index
# arithmetic, no array view per pixel: a view per window cost more than the window's additions).
@_kernel(size_arg=0)
def avgpool_nhwc(x3, n_ch, kh, kw, sh, sw, out3):
    """``out[n, oy, ox, c] = mean of x[n, oy*sh + i, ox*sw + j, c]`` over the kh*kw window offsets, no
    padding; channels last as flat rows: ``x3`` (N, H, W*C), ``out3`` (N, Ho, Wo*C). Each window is
    summed in (i, j) order, then divided by kh*kw, as :class:`~npcnn.nn.AvgPool2d` does.

    For one offset (i, j), output value ``k = ox*C + c`` of a row reads input value ``ox*sw*C + c``
    (+ ``j*C``) of row ``oy*sh + i``: :func:`_window_starts` lists those once, and each offset is one
    loop over the whole output row (a gather). Looping over the C channels of each window instead
    runs loops of 6 values for LeNet-5's first pool, and was 2.6x slower."""
    n_img, ho = out3.shape[0], out3.shape[1]
    d = kh * kw
    starts = _window_starts(out3.shape[2] // n_ch, n_ch, sw)
    for n in prange(n_img):
        for oy in range(ho):
            o = out3[n, oy]
            o[:] = 0.0
            for i in range(kh):
                r = x3[n, oy * sh + i]
                for j in range(kw):
                    rj = r[j * n_ch:]
                    for k in range(o.size):
                        o[k] += rj[starts[k]]
            for t in range(o.size):
                o[t] /= d
    return out3


@njit(inline="always", error_model="numpy")
def _window_starts(wo, n_ch, sw):
    """For each value ``k = ox*C + c`` of a channels-last output row, the input row's value ``ox*sw*C + c``
    (the window's first column, channel c)."""
    starts = np.empty(wo * n_ch, dtype=np.int64)
    for ox in range(wo):
        for c in range(n_ch):
            starts[ox * n_ch + c] = ox * sw * n_ch + c
    return starts


@_kernel(size_arg=0)
def avgpool_backward_nhwc(g3, n_ch, kh, kw, sh, sw, dx3):
    """The adjoint of :func:`avgpool_nhwc`: each output's gradient divided by kh*kw and added to every
    input of its window (overlapping windows add up); ``g3`` (N, Ho, Wo*C), ``dx3`` (N, H, W*C), which is
    zeroed first. Parallel over the images: each writes its own plane."""
    n_img, ho = g3.shape[0], g3.shape[1]
    d = kh * kw
    starts = _window_starts(g3.shape[2] // n_ch, n_ch, sw)
    for n in prange(n_img):
        dx3[n] = 0.0
        share = np.empty(g3.shape[2], dtype=g3.dtype)
        for oy in range(ho):
            g = g3[n, oy]
            for t in range(share.size):
                share[t] = g[t] / d                  # each output's gradient, split evenly
            for i in range(kh):
                r = dx3[n, oy * sh + i]
                for j in range(kw):
                    rj = r[j * n_ch:]                # a scatter, one offset at a time (as the forward's gather)
                    for k in range(share.size):
                        rj[starts[k]] += share[k]
    return dx3
