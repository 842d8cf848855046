"""Batch normalisation: per-channel statistics, the affine normalisation and its backward, for
NCHW data (as ``(N, C, L)``) and for channels-last rows (as ``(M, C)``).
"""
import numpy as np
from numba import njit, prange

from ._compile import _OPTS, _kernel


# --------------------------------------------------------------------------- NCHW, as (N, C, L)
# One pass per quantity, per channel, over the (N, C, L) view; sums in float64. NumPy's version
# made a temporary array for every intermediate (centred, squared, xhat, y, and as many again in
# backward) and reduced over the non-contiguous axes (0, 2).
@_kernel(size_arg=0, fma=True, reassoc=True)   # float64 sums in any order: they vectorise
def batchnorm_stats(x3, mean, var):
    """Per channel of ``x3`` (N, C, L): the mean and the biased variance (two passes)."""
    n_img, n_ch, length = x3.shape
    m = n_img * length
    for c in prange(n_ch):
        s = 0.0
        for i in range(n_img):
            for j in range(length):
                s += x3[i, c, j]
        mu = s / m
        s2 = 0.0
        for i in range(n_img):
            for j in range(length):
                d = x3[i, c, j] - mu
                s2 += d * d
        mean[c] = mu
        var[c] = s2 / m


@_kernel(size_arg=0)
def batchnorm_apply(x3, mean, invstd, gamma, beta, y):
    """``y = gamma * (x - mean) * invstd + beta``, per channel, in one pass."""
    n_img, n_ch, length = x3.shape
    for c in prange(n_ch):
        mu, s, gm, bt = mean[c], invstd[c], gamma[c], beta[c]
        for i in range(n_img):
            for j in range(length):
                y[i, c, j] = (x3[i, c, j] - mu) * s * gm + bt


@_kernel(size_arg=0, fma=True, reassoc=True)
def batchnorm_backward(g3, x3, mean, invstd, scale, batch_stats, sum_g, sum_gx, dx):
    """``sum(g)`` and ``sum(g * xhat)`` per channel, then ``dx``: with batch statistics
    ``scale * (g - sum(g)/m - xhat * sum(g*xhat)/m)``, else ``scale * g``. ``xhat = (x - mean) *
    invstd`` is recomputed from the forward's input (as the forward computed it, to rounding)
    rather than stored: one array less to write in forward and to keep."""
    n_img, n_ch, length = g3.shape
    m = n_img * length
    for c in prange(n_ch):
        mu, s = mean[c], invstd[c]
        s1 = 0.0
        s2 = 0.0
        for i in range(n_img):
            for j in range(length):
                s1 += g3[i, c, j]
                s2 += g3[i, c, j] * ((x3[i, c, j] - mu) * s)
        sum_g[c] = s1
        sum_gx[c] = s2
        k = scale[c]
        a = s1 / m if batch_stats else 0.0
        b = s2 / m if batch_stats else 0.0
        for i in range(n_img):
            for j in range(length):
                dx[i, c, j] = (g3[i, c, j] - a - ((x3[i, c, j] - mu) * s) * b) * k


# --------------------------------------------------------------------------- channels last, as (M, C) rows
# The same three kernels for channels-last data, the layout of a fused conv's output: ``x2`` (M, C)
# with M = N*H*W rows. A per-channel loop over that layout strides through memory, and a loop over
# the C channels of each row is too short to vectorise well (numba/LLVM pay a loop setup per row).
# So the rows are taken a tile at a time as one flat run of ``run`` values (whole rows,
# ``run = tile*C``), and every per-channel quantity is expanded to a run of the same length (the
# channel's value repeated for each row of the tile): the loops over a run are long and
# contiguous, and vectorise. Sums go into run-long float64 accumulators, folded per channel at the
# end; M need not be a multiple of the tile. Every inner loop indexes slices from 0
# (``src = flat[base:base + run]; src[i]``): indexed as ``flat[base + i]``, numba must allow for a
# negative index, and that test alone kept the loop scalar. These kernels are memory-bound:
# threads pay little below a few MB (a ResNet's first BatchNorm, 64x16x28x28 float32 = 3.2 MB: forward
# 0.85 -> 0.70 ms, backward 1.10 -> 0.95 ms with two threads; at 0.8 MB they gain nothing).
_BN_MIN_SIZE = 1 << 19


@njit(inline="always", error_model="numpy")
def _fold_channels(acc, n_ch, scale, out):
    """``out[c] = scale * sum_j acc[j*n_ch + c]``: a run of per-row sums folded per channel."""
    for c in range(n_ch):
        s = 0.0
        for j in range(c, acc.size, n_ch):
            s += acc[j]
        out[c] = s * scale


@njit(inline="always", error_model="numpy")
def _as_run(values, run, dtype):
    """Per-channel ``values`` (C,) repeated to a run of ``run`` values (whole rows), in ``dtype``."""
    out = np.empty(run, dtype=dtype)
    for i in range(run):
        out[i] = values[i % values.size]
    return out


@njit(**_OPTS, fastmath={"contract", "reassoc"})   # no prange: one pass per statistic, on one thread
def batchnorm_stats_rows(x2, mean, var, run):
    """Per column of ``x2`` (M, C): the mean and the biased variance (two passes, float64 sums)."""
    m, n_ch = x2.shape
    flat = x2.reshape(-1)
    acc = np.zeros(run)
    for base in range(0, flat.size, run):
        src = flat[base:base + run]
        for i in range(src.size):
            acc[i] += src[i]
    _fold_channels(acc, n_ch, 1.0 / m, mean)
    mean_run = _as_run(mean, run, mean.dtype)
    acc[:] = 0.0
    for base in range(0, flat.size, run):
        src = flat[base:base + run]
        for i in range(src.size):
            d = src[i] - mean_run[i]
            acc[i] += d * d
    _fold_channels(acc, n_ch, 1.0 / m, var)


@_kernel(size_arg=0, min_size=_BN_MIN_SIZE)
def batchnorm_apply_rows(x2, mean, invstd, gamma, beta, y, run):
    """:func:`batchnorm_apply` on channels-last rows ``x2`` and ``y`` (M, C). Parallel over tiles."""
    flat, out = x2.reshape(-1), y.reshape(-1)
    mu, s, gm, bt = (_as_run(mean, run, y.dtype), _as_run(invstd, run, y.dtype), _as_run(gamma, run, y.dtype),
                     _as_run(beta, run, y.dtype))
    for t in prange((flat.size + run - 1) // run):
        src, dst = flat[t * run:(t + 1) * run], out[t * run:(t + 1) * run]
        for i in range(src.size):
            dst[i] = (src[i] - mu[i]) * s[i] * gm[i] + bt[i]


@_kernel(size_arg=0, fma=True, reassoc=True, min_size=_BN_MIN_SIZE)
def batchnorm_backward_rows(g2, x2, mean, invstd, scale, batch_stats, sum_g, sum_gx, dx, run):
    """:func:`batchnorm_backward` on channels-last rows ``g2``, ``x2`` and ``dx`` (M, C)."""
    m, n_ch = g2.shape
    g, xf, d = g2.reshape(-1), x2.reshape(-1), dx.reshape(-1)
    mu, s, k = _as_run(mean, run, g2.dtype), _as_run(invstd, run, g2.dtype), _as_run(scale, run, g2.dtype)
    acc_g = np.zeros(run)
    acc_gx = np.zeros(run)
    for base in range(0, g.size, run):
        g_t, x_t = g[base:base + run], xf[base:base + run]
        for i in range(g_t.size):
            acc_g[i] += g_t[i]
            acc_gx[i] += g_t[i] * ((x_t[i] - mu[i]) * s[i])
    _fold_channels(acc_g, n_ch, 1.0, sum_g)
    _fold_channels(acc_gx, n_ch, 1.0, sum_gx)
    a = _as_run(sum_g, run, g2.dtype)                 # in the data's dtype, so the loop below vectorises
    b = _as_run(sum_gx, run, g2.dtype)                # on 16 float32 lanes (the NCHW kernel keeps float64)
    if batch_stats:
        a /= m
        b /= m
    else:
        a[:] = 0.0
        b[:] = 0.0
    for t in prange((g.size + run - 1) // run):
        lo, hi = t * run, min(g.size, (t + 1) * run)
        g_t, x_t, d_t = g[lo:hi], xf[lo:hi], d[lo:hi]
        for i in range(g_t.size):
            d_t[i] = (g_t[i] - a[i] - ((x_t[i] - mu[i]) * s[i]) * b[i]) * k[i]
