"""Copies between layouts: receptive fields gathered into a column matrix (and scattered back),
the conv GEMM's result turned into NCHW (and back), and the channels-last padding and columns of
the fused ``nhwc`` path.

``im2col`` writes a column matrix of shape ``(K, N*P)`` where ``K = C*kh*kw`` indexes ``(c, i, j)``
in the same order as a PyTorch conv weight ``(F, C, kh, kw)`` flattened to ``(F, K)``, and column
``n*P + oy*Wo + ox`` holds the receptive field of output pixel ``(oy, ox)`` of image ``n``. Then
the convolution is one GEMM: ``W(F, K) @ cols(K, N*P)``, whose result (F, N*P) ("channel-major")
the fused pooling kernels read directly.

For a fixed ``(c, i, j)`` and output row ``oy``, the ``Wo`` entries of a row of ``cols`` come from
one contiguous run of the input row ``y = oy*s - p + i`` (for stride 1), so the innermost loops
copy runs with no per-element bounds test: the part of the run that falls on the padding is
zeroed separately. That lets LLVM vectorise them.
"""
import numpy as np
from numba import njit, prange

from ._compile import _OPTS, _kernel


# --------------------------------------------------------------------------- im2col / col2im
@njit(**_OPTS)
def _valid_range(j, sw, pw, wo, w):
    """The output columns ``ox`` whose input column ``ox*sw - pw + j`` lies inside [0, w)."""
    lo = 0
    while lo < wo and lo * sw - pw + j < 0:
        lo += 1
    hi = wo
    while hi > lo and (hi - 1) * sw - pw + j >= w:
        hi -= 1
    return lo, hi


@_kernel(size_arg=9)
def im2col(x, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    """Gather receptive fields of ``x`` (N, C, H, W) into ``cols`` (C*kh*kw, N*ho*wo).

    Out-of-image positions (the zero padding) are written as 0.
    """
    n_img, n_ch, h, w = x.shape
    p = ho * wo
    for n in prange(n_img):
        base = n * p
        for c in range(n_ch):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    lo, hi = _valid_range(j, sw, pw, wo, w)
                    off = j - pw
                    for oy in range(ho):
                        y = oy * sh - ph + i
                        col = base + oy * wo
                        if y < 0 or y >= h:
                            for ox in range(wo):
                                cols[row, col + ox] = 0.0
                            continue
                        # the padding's zeros by explicit loops: a numba slice costs more than these few stores
                        for ox in range(lo):
                            cols[row, col + ox] = 0.0
                        for ox in range(hi, wo):
                            cols[row, col + ox] = 0.0
                        # the run as two slices indexed from 0: indexed as ``cols[row, col + ox]``,
                        # numba must allow for a negative index, and that test keeps the loop scalar
                        src = x[n, c, y, lo * sw + off:(hi - 1) * sw + off + 1:sw]
                        dst = cols[row, col + lo:col + hi]
                        for k in range(hi - lo):
                            dst[k] = src[k]
    return cols


@_kernel(size_arg=0)
def col2im(cols, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    """Scatter-add ``cols`` (C*kh*kw, N*ho*wo) back into ``dx`` (N, C, H, W).

    The adjoint of :func:`im2col`: every input pixel receives the sum of the
    column entries it was copied to; entries that fell on the padding are
    dropped. ``dx`` is overwritten.
    """
    n_img, n_ch, h, w = dx.shape
    p = ho * wo
    for n in prange(n_img):
        base = n * p
        dx[n] = 0.0
        for c in range(n_ch):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    lo, hi = _valid_range(j, sw, pw, wo, w)
                    off = j - pw
                    for oy in range(ho):
                        y = oy * sh - ph + i
                        if y < 0 or y >= h:
                            continue
                        col = base + oy * wo
                        src = cols[row, col + lo:col + hi]     # slices indexed from 0, as in im2col
                        dst = dx[n, c, y, lo * sw + off:(hi - 1) * sw + off + 1:sw]
                        for k in range(hi - lo):
                            dst[k] += src[k]
    return dx


# --------------------------------------------------------------------------- layout changes
@_kernel(size_arg=0)
def cols_to_nchw(out_cols, bias, n_img, out):
    """Turn the GEMM result (F, N*P) into NCHW ``out`` (N, F, P) and add the bias.

    Fusing the bias into this copy saves one pass over the output.
    """
    f_out, total = out_cols.shape
    p = total // n_img
    for n in prange(n_img):
        for f in range(f_out):
            b = bias[f]
            for q in range(p):
                out[n, f, q] = out_cols[f, n * p + q] + b
    return out


@_kernel(size_arg=0)
def nchw_to_cols(g, out_cols):
    """Turn an NCHW gradient (N, F, P) into the GEMM layout (F, N*P)."""
    n_img, f_out, p = g.shape
    for n in prange(n_img):
        for f in range(f_out):
            for q in range(p):
                out_cols[f, n * p + q] = g[n, f, q]
    return out_cols


# --------------------------------------------------------------------------- channels last (the fused ``nhwc`` path)
# For a conv with many input channels (the second layer: 32 x 3x3 = 288 weights per filter) the
# fused path works on a zero-padded channels-last copy of the input, ``xp`` (N, H+2p, W+2p, C):
# im2col then copies C contiguous values per tap instead of one short image row at a time, the
# GEMM gives a channels-last conv output that ``pooling.bias_relu_maxpool_nhwc_2x2`` reads filter
# by filter, and the backward (``winners_grad.py``) visits only the pool's winners, with
# contiguous loops over channels (no col2im).
@_kernel(size_arg=0)
def pad_channels_last(x3, ph, pw, xp3):
    """Zero-pad channels-last images ``x3`` (N, H, W*C) into ``xp3`` (N, H+2ph, (W+2pw)*C):
    the border is zeroed and each image row copied as one contiguous run."""
    n_img, h, run = x3.shape
    left = (xp3.shape[2] - run) // 2                         # pw*C
    for n in prange(n_img):
        xp3[n, :ph] = 0.0
        xp3[n, ph + h:] = 0.0
        for y in range(h):
            dst = xp3[n, ph + y]
            dst[:left] = 0.0
            dst[left + run:] = 0.0
            src = x3[n, y]
            for k in range(run):
                dst[left + k] = src[k]
    return xp3


@_kernel(size_arg=5)
def pad_to_phases(x, ph, pw, sh, sw, xq):
    """``x`` (N, C, H, W) zero-padded by (ph, pw) and cut into its sh*sw phase planes, in one pass:
    ``xq[n, (c*sh + u)*sw + v, yq, xq_] = xpad[n, c, yq*sh + u, xq_*sw + v]`` with ``xpad`` the padded
    image (zeros outside ``x``; the padded extent is ``Hq*sh`` x ``Wq*sw``, rows and columns of ``x``
    past it are not read). The same as padding, then ``npcnn.fast.conv_act.to_phases`` (stride 1: the
    padding alone), without the padded copy in between (Wong et al.'s first conv at batch 1000, two
    threads: 0.63 ms before, 0.36-0.61 ms here, on a 2-core AMD EPYC). Each row's columns ``k0 <= k < k1``
    read the image, the others are zeros: no test per value (0.40 -> 0.25 ms for that conv, on a Zen 4 EPYC).
    Stride 1 keeps a test per value, which LLVM vectorises on the unit stride (the ResNet stem's padding at
    batch 1000, 0.13 ms, took 0.14-0.26 the other way)."""
    n_img, n_ch, h, w = x.shape
    hq, wq = xq.shape[2], xq.shape[3]
    if sh == 1 and sw == 1:
        for n in prange(n_img):
            for c in range(n_ch):
                for yq in range(hq):
                    y = yq - ph
                    dst = xq[n, c, yq]
                    if y < 0 or y >= h:
                        dst[:] = 0.0
                        continue
                    src = x[n, c, y]
                    for k in range(wq):
                        col = k - pw
                        dst[k] = src[col] if 0 <= col < w else 0.0
        return xq
    for n in prange(n_img):
        for c in range(n_ch):
            for u in range(sh):
                for v in range(sw):
                    plane = xq[n, (c * sh + u) * sw + v]
                    # the phase's columns inside the image: 0 <= k*sw + v - pw < w
                    k0 = min(wq, max(0, -(-(pw - v) // sw)))
                    k1 = max(k0, min(wq, (w - 1 + pw - v) // sw + 1))
                    for yq in range(hq):
                        y = yq * sh + u - ph
                        dst = plane[yq]
                        if y < 0 or y >= h:
                            dst[:] = 0.0
                            continue
                        dst[:k0] = 0.0
                        dst[k1:] = 0.0
                        src = x[n, c, y, k0 * sw + v - pw:]        # open-ended slices: indices >= 0
                        inside = dst[k0:]
                        for k in range(k1 - k0):
                            inside[k] = src[k * sw]
    return xq


@njit(inline="always", error_model="numpy")
def _taps_inside(ox, sw, pw, kw, w):
    """For the window of output column ``ox``: its first input column ``x0 = ox*sw - pw`` and the taps
    ``j0 <= j < j1`` that fall inside the image (0 <= x0 + j < w); the others read the zero padding."""
    x0 = ox * sw - pw
    return x0, max(0, -x0), min(kw, w - x0)


@njit(inline="always", error_model="numpy")
def _interior_columns(sw, pw, kw, w, wo):
    """The output columns ``lo <= ox < hi`` whose whole window lies inside the image's width."""
    lo = _valid_range(0, sw, pw, wo, w)[0]
    return lo, max(lo, _valid_range(kw - 1, sw, pw, wo, w)[1])


@njit(inline="always", error_model="numpy")
def _edge_window_row(xrow, n_ch, kw, sw, pw, w, ox, flat, d):
    """One kernel row of the window of output column ``ox``, which reaches over the padding, into ``flat``
    from offset ``d`` (unsigned): the taps inside the image copied from ``xrow`` (the input row, W*C) as one
    run, the others zeroed."""
    x0, j0, j1 = _taps_inside(ox, sw, pw, kw, w)
    run = np.uint64(kw * n_ch)
    if j1 <= j0:                                   # the whole kernel row on the padding
        for k in range(run):
            flat[d + k] = 0.0
        return
    a, b = np.uint64(j0 * n_ch), np.uint64(j1 * n_ch)
    s = np.uint64((x0 + j0) * n_ch)                # >= 0: tap j0 is inside
    for k in range(a):
        flat[d + k] = 0.0
    for k in range(b - a):
        flat[d + a + k] = xrow[s + k]
    for k in range(b, run):
        flat[d + k] = 0.0


@njit(inline="always", error_model="numpy")
def im2col_image_nhwc(x3, n, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    """Image ``n``'s receptive fields as the ho*wo rows of ``cols`` (see :func:`im2col_nhwc`), the
    padding written as zeros (``x3`` is not padded).

    Output row by kernel row: the windows whose columns all lie inside the image (all but a few at the
    left and right edges) are each one run of kw*C values of the input row, copied with no test per
    window; the few at the edges copy the part inside (:func:`_edge_window_row`). The offsets are unsigned
    (``np.uint64``, built from unsigned values only): numba then knows no index is negative, drops its
    wrap-around test and vectorises the copies, with no view made per window (a view per window and kernel
    row cost about as much as its copy; one view of each input row instead: Wong et al.'s second conv,
    1000 images on two threads, 0.86 -> 0.6 ms)."""
    h, w = x3.shape[1], x3.shape[2] // n_ch
    run = kw * n_ch
    width = kh * run                               # the length of a row of cols
    lo, hi = _interior_columns(sw, pw, kw, w, wo)
    flat = cols.reshape(-1)
    run_u, width_u, windows = np.uint64(run), np.uint64(width), np.uint64(hi - lo)
    src_step = np.uint64(sw * n_ch)
    for oy in range(ho):
        for i in range(kh):
            y = oy * sh - ph + i
            row0 = np.uint64(oy * wo * width + i * run)          # window ox's run starts at row0 + ox*width
            if y < 0 or y >= h:
                for ox in range(np.uint64(wo)):
                    d = row0 + ox * width_u
                    for k in range(run_u):
                        flat[d + k] = 0.0
                continue
            xrow = x3[n, y]
            first = row0 + np.uint64(lo) * width_u
            s0 = np.uint64((lo * sw - pw) * n_ch) if windows > 0 else np.uint64(0)   # the window at lo is inside
            for q in range(windows):
                d, s = first + q * width_u, s0 + q * src_step
                for k in range(run_u):
                    flat[d + k] = xrow[s + k]
            for ox in range(lo):
                _edge_window_row(xrow, n_ch, kw, sw, pw, w, ox, flat, row0 + np.uint64(ox) * width_u)
            for ox in range(hi, wo):
                _edge_window_row(xrow, n_ch, kw, sw, pw, w, ox, flat, row0 + np.uint64(ox) * width_u)


@njit(inline="always", error_model="numpy")
def col2im_image_nhwc(dcols, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, dx2, zero_first):
    """The ho*wo rows of ``dcols`` added back onto one image's plane ``dx2`` (H, W*C), zeroed first if
    ``zero_first`` (else added to what it holds); the taps on the padding are dropped (see :func:`col2im_nhwc`)."""
    h, w = dx2.shape[0], dx2.shape[1] // n_ch
    run = kw * n_ch
    width = kh * run
    if zero_first:
        dx2[:] = 0.0
    flat = dcols.reshape(-1)
    for oy in range(ho):
        for i in range(kh):
            y = oy * sh - ph + i
            if y < 0 or y >= h:
                continue
            drow = dx2[y]                          # one view per input row; unsigned offsets, as im2col's
            for ox in range(wo):
                x0, j0, j1 = _taps_inside(ox, sw, pw, kw, w)
                if j1 <= j0:
                    continue
                d = np.uint64((x0 + j0) * n_ch)
                s = np.uint64((oy * wo + ox) * width + i * run + j0 * n_ch)
                for k in range(np.uint64((j1 - j0) * n_ch)):
                    drow[d + k] += flat[s + k]


@_kernel(size_arg=10)
def im2col_nhwc(x3, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    """Receptive fields of the channels-last input, given as ``x3`` (N, H, W*C), as rows of ``cols``
    (N*ho*wo, kh*kw*C), taps in (i, j, c) order, zeros where a tap falls on the padding (ph, pw): for
    each kernel row i, the taps inside the image are one contiguous run of the input row, copied as one."""
    p = ho * wo
    for n in prange(x3.shape[0]):
        im2col_image_nhwc(x3, n, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, cols[n * p:(n + 1) * p])
    return cols


@_kernel(size_arg=0)
def col2im_nhwc(dcols, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, dx3):
    """The adjoint of :func:`im2col_nhwc`: each row of ``dcols`` (N*ho*wo, kh*kw*C) added back onto the
    channels-last input it was gathered from, ``dx3`` (N, H, W*C), which is zeroed first (the taps on
    the padding are dropped). Each image's rows go to its own plane, so the images run in parallel
    without atomics."""
    p = ho * wo
    for n in prange(dx3.shape[0]):
        col2im_image_nhwc(dcols[n * p:(n + 1) * p], n_ch, kh, kw, sh, sw, ph, pw, ho, wo, dx3[n], True)
    return dx3
