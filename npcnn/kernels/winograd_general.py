"""Winograd's minimal filtering F(m x m, r x r) for any tile: the transforms as matrices.

:mod:`npcnn.kernels.winograd` writes F(2x2, 3x3)'s transforms out by hand. Here the same algorithm
takes its three matrices as arrays (``bt`` alpha x alpha, ``u`` from ``g`` and ``G``, ``at`` m x alpha,
alpha = m + r - 1; :func:`npcnn.fast.winograd.toom_cook` builds them from alpha - 1 points), so one
kernel serves F(2x2, 5x5) (Madry et al.'s second conv: 36 multiply-adds per channel pair and four
outputs instead of 100) as well as F(2x2, 3x3) and F(4x4, 3x3). For every output tile of m x m and
input channel, the alpha x alpha input patch ``d`` becomes ``V = B^T d B``; the alpha^2 GEMMs
``M[k] = V[k] @ U[k]`` sum over the channels; the tile's outputs are ``A^T M A``. The transforms run
along rows of tiles in long runs of (tiles per row x channels), skipping the matrices' zeros.
"""
import numpy as np
from numba import njit

from ..blas import NO_TRANS, TRANS, _gemm, _gemm_acc
from ._compile import _OPTS
from .winograd import _input_transform_image, grad_transform_image, transformed_weights, winograd_conv_rows


@njit(**_OPTS)
def general_tiles(ho, wo, m):
    """The m x m tiles covering an ``ho`` x ``wo`` output: (rows of tiles, columns of tiles)."""
    return (ho + m - 1) // m, (wo + m - 1) // m


def winograd_general_weights(weight, g_mat, u):
    """``u[alpha*s + t, c, f] = (G g G^T)[s, t]`` for ``g = weight[f, c]`` (F, C, r, r), ``G`` (alpha, r)
    ``g_mat``, summed in float64, written in ``u``'s dtype (alpha^2, C, F)
    (:func:`npcnn.kernels.winograd.transformed_weights`)."""
    return transformed_weights(weight, g_mat, u)


@njit(**_OPTS)
def _combine(coef, src, first, step, src_off, dst, n):
    """``dst[:n] = sum over q of coef[q] * src[row_q, src_off:src_off + n]``, ``row_q = (first + q * step)
    % len(src)``; zero coefficients skipped. (In every kernel here the innermost index is the loop's own
    counter, so that numba knows it is not negative and the loop vectorises, and no view is made in an
    inner loop: each costs numba a reference count.)"""
    count = src.shape[0]
    started = False
    for q in range(coef.size):
        c = coef[q]
        if c == 0.0:
            continue
        sv = src[(first + q * step) % count, src_off:src_off + n]
        if started:
            for i in range(n):
                dst[i] += c * sv[i]
        else:
            for i in range(n):
                dst[i] = c * sv[i]
            started = True
    if not started:
        dst[:n] = 0.0


@njit(**_OPTS)
def _row_transform_general(x3, n, y, n_ch, pw, tw, m, bt, line, hrows, slot):
    """``hrows[:, slot]`` (alpha, tw, C): ``d B`` of input row ``y`` of image ``n`` for every tile column
    ``j`` and channel (``hrows[t, slot, j, c] = sum_q d[q] * B^T[t, q]``, ``d`` the row's ``window``
    pixels from ``m*j - pw``), zeros for a row off the image. ``bt`` (alpha, window): B^T, window =
    alpha, or the weight gradient's A (alpha, m), window = m. ``line`` (m*tw + window - m, C) scratch,
    the row zero-padded."""
    h, w = x3.shape[1], x3.shape[2] // n_ch
    alpha, window = bt.shape
    zero = line.dtype.type(0)
    if y < 0 or y >= h:
        hrows[:, slot] = zero
        return
    width = line.shape[0]
    lo, hi = min(pw, width), min(width, w + pw)
    line[:lo] = zero
    line[hi:] = zero
    line[lo:hi] = x3[n, y, (lo - pw) * n_ch:(hi - pw) * n_ch].reshape(hi - lo, n_ch)
    for t in range(alpha):
        started = False
        for q in range(window):
            c = bt[t, q]
            if c == 0.0:
                continue
            for j in range(tw):
                if started:
                    for i in range(n_ch):
                        hrows[t, slot, j, i] += c * line[m * j + q, i]
                else:
                    for i in range(n_ch):
                        hrows[t, slot, j, i] = c * line[m * j + q, i]
            started = True
        if not started:
            hrows[t, slot] = zero


@njit(**_OPTS)
def _input_transform_general(x3, n, n_ch, ph, pw, th, tw, m, bt, line, hrows, v, base):
    """``v[s*alpha + t, (base + i*tw + j)*C + c]`` = entry (s, t) of ``B^T d B`` for tile (i, j) of image
    ``n``, channel c (``v`` flat per plane). Each input row's ``d B`` is computed once into ``hrows``
    (alpha, alpha, tw, C), entry t of row y in ``hrows[t, y % alpha]`` (a row of tiles reads ``window``
    rows and shares window - m with the next). ``bt`` (alpha, window): B^T (window = alpha), or A for
    the weight gradient's m x m tiles of dL/dy (window = m, :func:`winograd_weight_grad_chunk`)."""
    alpha, window = bt.shape
    run = tw * n_ch
    for q in range(window - m):
        _row_transform_general(x3, n, q - ph, n_ch, pw, tw, m, bt, line, hrows, q % alpha)
    for i in range(th):
        y0 = m * i - ph
        for q in range(window - m, window):
            _row_transform_general(x3, n, y0 + q, n_ch, pw, tw, m, bt, line, hrows, (m * i + q) % alpha)
        t0 = (base + i * tw) * n_ch
        for t in range(alpha):
            ring = hrows[t].reshape(alpha, run)
            for s in range(alpha):
                _combine(bt[s], ring, m * i, 1, 0, v[s * alpha + t, t0:t0 + run], run)


@njit(**_OPTS)
def _output_transform_general(mm, base, th, tw, ho, wo, at, srows, out):
    """``out`` (ho*wo, F) of one image = ``A^T M A`` of its tiles (``mm[s*alpha + t, (base + i*tw + j)*F
    + f]``, flat per plane): ``A^T M`` of a row of tiles in runs of tw*F into ``srows`` (m*alpha, tw, F),
    row ``r*alpha + t``, then ``A`` along each output row."""
    m, alpha = at.shape
    n_f = out.shape[1]
    run = tw * n_f
    for i in range(th):
        t0 = (base + i * tw) * n_f
        for t in range(alpha):
            for r in range(m):
                _combine(at[r], mm, t, alpha, t0, srows[r * alpha + t].reshape(run), run)
        for r in range(m):
            y = m * i + r
            if y >= ho:
                break
            for c in range(m):
                started = False
                for t in range(alpha):
                    a = at[c, t]
                    if a == 0.0:
                        continue
                    for j in range(tw):
                        x = m * j + c
                        if x >= wo:
                            break
                        if started:
                            for f in range(n_f):
                                out[y * wo + x, f] += a * srows[r * alpha + t, j, f]
                        else:
                            for f in range(n_f):
                                out[y * wo + x, f] = a * srows[r * alpha + t, j, f]
                    started = True


@njit(**_OPTS)
def winograd_general_conv_rows(blas_fn, ilp64, x3, first, last, n_ch, ph, pw, ho, wo, bt, at, u, v, mm, rows):
    """The r x r stride-1 conv (no bias) of images ``[first, last)`` of ``x3`` (N, H, W*C) channels
    last, padded by ``ph``, ``pw``, into ``rows`` ((last - first)*ho*wo, F), by F(m x m, r x r) with
    ``bt`` = B^T (alpha, alpha), ``at`` = A^T (m, alpha) (in ``x3``'s dtype) and ``u`` (alpha^2, C, F) the
    transformed weights (:func:`winograd_general_weights`); ``v`` (alpha^2, >= tiles, C) and ``mm``
    (alpha^2, >= tiles, F) scratch (a row more than the tiles keeps the planes off the same cache sets)."""
    m, alpha = at.shape
    th, tw = general_tiles(ho, wo, m)
    per_image, p = th * tw, ho * wo
    n_f = u.shape[2]
    n_tiles = (last - first) * per_image
    dt = x3.dtype
    line = np.empty((m * tw + alpha - m, n_ch), dtype=dt)
    hrows = np.empty((alpha, alpha, tw, n_ch), dtype=dt)
    v_flat, m_flat = v.reshape(alpha * alpha, -1), mm.reshape(alpha * alpha, -1)
    for n in range(first, last):
        _input_transform_general(x3, n, n_ch, ph, pw, th, tw, m, bt, line, hrows, v_flat, (n - first) * per_image)
    double = x3.itemsize == 8
    for k in range(alpha * alpha):
        _gemm(blas_fn, double, ilp64, NO_TRANS, NO_TRANS, n_tiles, n_f, n_ch, v[k].ctypes.data, n_ch,
              u[k].ctypes.data, n_f, mm[k].ctypes.data, n_f)
    srows = np.empty((m * alpha, tw, n_f), dtype=dt)
    for n in range(first, last):
        _output_transform_general(m_flat, (n - first) * per_image, th, tw, ho, wo, at, srows,
                                  rows[(n - first) * p:(n - first + 1) * p])
    return rows


@njit(**_OPTS)
def winograd_conv_chunk(blas_fn, ilp64, x3, first, last, n_ch, ph, pw, ho, wo, u, v, mm, bt, at, rows):
    """One chunk's conv by Winograd, as the conv steps' kernels and loops call it: F(2x2, 3x3) written out
    (:func:`npcnn.kernels.winograd.winograd_conv_rows`) when ``bt`` is empty, else
    :func:`winograd_general_conv_rows` with the transforms ``bt`` and ``at``."""
    if bt.shape[0] == 0:
        return winograd_conv_rows(blas_fn, ilp64, x3, first, last, n_ch, ph, pw, ho, wo, u, v, mm, rows)
    return winograd_general_conv_rows(blas_fn, ilp64, x3, first, last, n_ch, ph, pw, ho, wo, bt, at, u, v, mm, rows)


@njit(**_OPTS)
def winograd_weight_grad_chunk(blas_fn, ilp64, x3, ga3, first, last, n_ch, ph, pw, ho, wo, bt, a_mat, v, gv, m_acc):
    """Adds to ``m_acc`` (alpha^2, C, F) the transform-domain weight gradient of images ``[first, last)``:
    ``m_acc[k] += V[k]^T @ W[k]`` for each of the alpha^2 points ``k``. ``V`` (alpha^2, tiles, C): the input
    tiles transformed as the forward transforms them, ``B^T d B`` with ``d`` the alpha x alpha patch of
    ``x3`` (N, H, W*C) channels last, padded by ``ph``, ``pw``, under each m x m output tile (``bt`` = B^T,
    or empty for F(2x2, 3x3)'s written-out transform, :mod:`npcnn.kernels.winograd`); ``W`` (alpha^2,
    tiles, F): the m x m tiles ``g`` of ``ga3`` (last - first, ho, wo*F), dL/d(conv output), as ``A g A^T``
    (``a_mat`` = A, (alpha, m); zeros past the output's edge). The caller finishes with
    ``dL/dW[f, c] = G^T m_acc[:, c, f] G`` (F(r x r, m x m): the forward's F(m x m, r x r) with A and G
    trading places; :mod:`npcnn.fast.winograd` gives the derivation). ``v`` / ``gv`` (alpha^2, >= tiles,
    C / F) scratch; each ``m_acc[k]`` is summed by BLAS itself (beta = 1)."""
    alpha, m = a_mat.shape
    th, tw = general_tiles(ho, wo, m)
    per_image = th * tw
    n_f = ga3.shape[2] // wo
    n_tiles = (last - first) * per_image
    dt = x3.dtype
    line, line_g = np.empty((m * tw + alpha - m, n_ch), dtype=dt), np.empty((m * tw, n_f), dtype=dt)
    hrows, hrows_g = np.empty((alpha, alpha, tw, n_ch), dtype=dt), np.empty((alpha, alpha, tw, n_f), dtype=dt)
    v_flat, g_flat = v.reshape(alpha * alpha, -1), gv.reshape(alpha * alpha, -1)
    for n in range(first, last):
        base = (n - first) * per_image
        if bt.shape[0] == 0:                  # F(2x2, 3x3), written out (a_mat is its A)
            _input_transform_image(x3, n, n_ch, ph, pw, th, tw, line.reshape(-1), hrows.reshape(alpha, alpha, -1), v,
                                   base)
            grad_transform_image(ga3, n - first, n_f, th, tw, hrows_g[:2].reshape(2, alpha, -1), gv, base)
        else:
            _input_transform_general(x3, n, n_ch, ph, pw, th, tw, m, bt, line, hrows, v_flat, base)
            _input_transform_general(ga3, n - first, n_f, 0, 0, th, tw, m, a_mat, line_g, hrows_g, g_flat, base)
    double = x3.itemsize == 8
    for k in range(alpha * alpha):
        _gemm_acc(blas_fn, double, ilp64, TRANS, NO_TRANS, n_ch, n_f, n_tiles, v[k].ctypes.data, n_ch,
                  gv[k].ctypes.data, n_f, m_acc[k].ctypes.data, n_f)
    return m_acc
