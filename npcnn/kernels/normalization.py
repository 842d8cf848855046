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


@njit(inline="always", error_model="numpy")
def _relu_if(v, relu, zero):
    """``max(v, 0)`` if ``relu`` (NaN stays NaN, as ``np.maximum`` keeps it), else ``v``. ``zero`` is a zero
    of the data's dtype: a literal 0 would turn the loop's arithmetic into float64."""
    return zero if relu and v < 0 else v


@njit(inline="always", error_model="numpy")
def _masked(g, y, relu, zero):
    """The ReLU's rule on the batch norm's output ``y = max(bn, 0)``: ``g * [y > 0]`` if ``relu``, else ``g``."""
    return g if not relu or y > 0 else zero


@_kernel(size_arg=0)
def batchnorm_apply(x3, mean, invstd, gamma, beta, relu, y):
    """``y = gamma * (x - mean) * invstd + beta``, per channel, in one pass; then ``max(y, 0)`` if ``relu``."""
    n_img, n_ch, length = x3.shape
    zero = np.zeros(1, dtype=y.dtype)[0]
    for c in prange(n_ch):
        mu, s, gm, bt = mean[c], invstd[c], gamma[c], beta[c]
        for i in range(n_img):
            for j in range(length):
                y[i, c, j] = _relu_if((x3[i, c, j] - mu) * s * gm + bt, relu, zero)


@_kernel(size_arg=0, fma=True, reassoc=True)
def batchnorm_backward(g3, x3, y3, relu, mean, invstd, scale, batch_stats, sum_g, sum_gx, dx):
    """``sum(g)`` and ``sum(g * xhat)`` per channel, then ``dx``: with batch statistics
    ``scale * (g - sum(g)/m - xhat * sum(g*xhat)/m)``, else ``scale * g``. ``xhat = (x - mean) *
    invstd`` is recomputed from the forward's input (as the forward computed it, to rounding)
    rather than stored: one array less to write in forward and to keep. With ``relu`` the forward
    applied a ReLU, ``y3`` is its output and ``g`` is the gradient after it: ``g * [y > 0]`` is used."""
    n_img, n_ch, length = g3.shape
    m = n_img * length
    zero = np.zeros(1, dtype=g3.dtype)[0]
    for c in prange(n_ch):
        mu, s = mean[c], invstd[c]
        s1 = 0.0
        s2 = 0.0
        for i in range(n_img):
            for j in range(length):
                gv = _masked(g3[i, c, j], y3[i, c, j], relu, zero)
                s1 += gv
                s2 += gv * ((x3[i, c, j] - mu) * s)
        sum_g[c] = s1
        sum_gx[c] = s2
        k = scale[c]
        a = s1 / m if batch_stats else 0.0
        b = s2 / m if batch_stats else 0.0
        for i in range(n_img):
            for j in range(length):
                dx[i, c, j] = (_masked(g3[i, c, j], y3[i, c, j], relu, zero) - a - ((x3[i, c, j] - mu) * s) * b) * k


# --------------------------------------------------------------------------- channels last, as (M, C) rows
# The same three kernels for channels-last data, the layout of a fused conv's output: ``x2`` (M, C)
# with M = N*H*W rows. A per-channel loop over that layout strides through memory, and a loop over
# the C channels of each row is too short to vectorise well (numba/LLVM pay a loop setup per row).
# So the rows are taken a tile at a time as one flat run of ``run`` values (whole rows,
# ``run = tile*C``), and every per-channel quantity is expanded to a run of the same length (the
# channel's value repeated for each row of the tile): the loops over a run are long and
# contiguous, and vectorise. Sums go into run-long float64 accumulators, one per part of the data
# (:data:`_BN_PARTS` parts of whole runs, which the threads share out), folded per channel and over the
# parts in a fixed order at the end: the sums do not depend on the number of threads. M need not be a
# multiple of the tile. Every inner loop indexes slices from 0 (``src = flat[base:base + run]; src[i]``):
# indexed as ``flat[base + i]``, numba must allow for a negative index, and that test alone kept the
# loop scalar. These kernels are memory-bound: threads pay from about 1 MB (on a 2-core AMD EPYC, two
# threads against one: a ResNet's first BatchNorm, 64x16x28x28 float32 = 3.2 MB, statistics 0.21 -> 0.15 ms,
# backward 0.44 -> 0.26-0.30 ms; 64x32x14x14 = 1.6 MB, 0.106 -> 0.083-0.099 and 0.23 -> 0.15-0.19 ms; at
# 0.8 MB they gain little).
_BN_MIN_SIZE = 1 << 18

#: The parts the channels-last sums are taken in (each with its own accumulators).
_BN_PARTS = 8


@njit(inline="always", error_model="numpy")
def _part_bounds(size, run, part, parts):
    """The values ``[lo, hi)`` of part ``part`` of ``parts``: whole runs of ``run`` values (the last run may be short)."""
    n_runs = (size + run - 1) // run
    return (part * n_runs // parts) * run, min(size, ((part + 1) * n_runs // parts) * run)


@njit(inline="always", error_model="numpy")
def _fold_channels(acc, n_ch, scale, out):
    """``out[c] = scale * sum_p sum_j acc[p, j*n_ch + c]``: the parts' runs of per-row sums folded per channel."""
    for c in range(n_ch):
        s = 0.0
        for p in range(acc.shape[0]):
            row = acc[p]
            for j in range(c, row.size, n_ch):
                s += row[j]
        out[c] = s * scale


@njit(inline="always", error_model="numpy")
def _as_run(values, run, dtype):
    """Per-channel ``values`` (C,) repeated to a run of ``run`` values (whole rows), in ``dtype``."""
    out = np.empty(run, dtype=dtype)
    for i in range(run):
        out[i] = values[i % values.size]
    return out


@_kernel(size_arg=0, fma=True, reassoc=True, min_size=_BN_MIN_SIZE)
def batchnorm_stats_rows(x2, mean, var, run):
    """Per column of ``x2`` (M, C): the mean and the biased variance (two passes, float64 sums). Parallel over parts."""
    m, n_ch = x2.shape
    flat = x2.reshape(-1)
    acc = np.zeros((_BN_PARTS, run))
    for part in prange(_BN_PARTS):
        lo, hi = _part_bounds(flat.size, run, part, _BN_PARTS)
        a = acc[part]
        for base in range(lo, hi, run):
            src = flat[base:base + run]
            for i in range(src.size):
                a[i] += src[i]
    _fold_channels(acc, n_ch, 1.0 / m, mean)
    mean_run = _as_run(mean, run, mean.dtype)
    acc[:] = 0.0
    for part in prange(_BN_PARTS):
        lo, hi = _part_bounds(flat.size, run, part, _BN_PARTS)
        a = acc[part]
        for base in range(lo, hi, run):
            src = flat[base:base + run]
            for i in range(src.size):
                d = src[i] - mean_run[i]
                a[i] += d * d
    _fold_channels(acc, n_ch, 1.0 / m, var)


@_kernel(size_arg=0, min_size=_BN_MIN_SIZE)
def batchnorm_apply_rows(x2, mean, invstd, gamma, beta, relu, y, run):
    """:func:`batchnorm_apply` on channels-last rows ``x2`` and ``y`` (M, C). Parallel over tiles."""
    flat, out = x2.reshape(-1), y.reshape(-1)
    mu, s, gm, bt = (_as_run(mean, run, y.dtype), _as_run(invstd, run, y.dtype), _as_run(gamma, run, y.dtype),
                     _as_run(beta, run, y.dtype))
    zero = np.zeros(1, dtype=y.dtype)[0]
    for t in prange((flat.size + run - 1) // run):
        src, dst = flat[t * run:(t + 1) * run], out[t * run:(t + 1) * run]
        for i in range(src.size):
            dst[i] = _relu_if((src[i] - mu[i]) * s[i] * gm[i] + bt[i], relu, zero)


@_kernel(size_arg=0, min_size=_BN_MIN_SIZE)
def batchnorm_add_rows(x2, mean, invstd, gamma, beta, s2, s_mean, s_invstd, s_gamma, s_beta, skip_norm, relu, y, run):
    """``y = bn(x2) + (bn_s(s2) if skip_norm else s2)``, then ``max(., 0)`` if ``relu``, on channels-last rows
    (M, C): a residual block's last batch norm, its shortcut's (or the identity), their sum and the ReLU after
    it in one pass, where :func:`batchnorm_apply_rows` and :func:`npcnn.kernels.add_relu` took two (three)
    and wrote the normalised rows out to read them back. Each batch norm's value is rounded as
    :func:`batchnorm_apply_rows` rounds it, so the result is the same to the bit. Parallel over tiles."""
    flat, skip, out = x2.reshape(-1), s2.reshape(-1), y.reshape(-1)
    mu, s, gm, bt = (_as_run(mean, run, y.dtype), _as_run(invstd, run, y.dtype), _as_run(gamma, run, y.dtype),
                     _as_run(beta, run, y.dtype))
    smu, ss, sgm, sbt = (_as_run(s_mean, run, y.dtype), _as_run(s_invstd, run, y.dtype),
                         _as_run(s_gamma, run, y.dtype), _as_run(s_beta, run, y.dtype))
    zero = np.zeros(1, dtype=y.dtype)[0]
    for t in prange((flat.size + run - 1) // run):
        src, sk, dst = flat[t * run:(t + 1) * run], skip[t * run:(t + 1) * run], out[t * run:(t + 1) * run]
        if skip_norm:
            for i in range(src.size):
                a = (src[i] - mu[i]) * s[i] * gm[i] + bt[i]
                b = (sk[i] - smu[i]) * ss[i] * sgm[i] + sbt[i]
                dst[i] = _relu_if(a + b, relu, zero)
        else:
            for i in range(src.size):
                dst[i] = _relu_if((src[i] - mu[i]) * s[i] * gm[i] + bt[i] + sk[i], relu, zero)


@_kernel(size_arg=0, fma=True, reassoc=True, min_size=_BN_MIN_SIZE)
def batchnorm_backward_rows(g2, x2, y2, relu, mean, invstd, scale, batch_stats, sum_g, sum_gx, dx, run):
    """:func:`batchnorm_backward` on channels-last rows ``g2``, ``x2``, ``y2`` and ``dx`` (M, C). Parallel
    over parts (the sums), then over tiles (``dx``). An empty ``dx`` stops after the sums (a conv step
    computes ``dx`` itself, chunk by chunk, :func:`batchnorm_dx_runs`)."""
    m, n_ch = g2.shape
    g, xf, yf, d = g2.reshape(-1), x2.reshape(-1), y2.reshape(-1), dx.reshape(-1)
    mu, s, k = _as_run(mean, run, g2.dtype), _as_run(invstd, run, g2.dtype), _as_run(scale, run, g2.dtype)
    acc_g = np.zeros((_BN_PARTS, run))
    acc_gx = np.zeros((_BN_PARTS, run))
    zero = np.zeros(1, dtype=g2.dtype)[0]            # a zero of the data's dtype (0.0 would make the loops float64)
    for part in prange(_BN_PARTS):
        lo, hi = _part_bounds(g.size, run, part, _BN_PARTS)
        ag, agx = acc_g[part], acc_gx[part]
        for base in range(lo, hi, run):
            g_t, x_t, y_t = g[base:base + run], xf[base:base + run], yf[base:base + run]
            if relu:                                  # (two loops: a test of relu inside one slowed both)
                for i in range(g_t.size):
                    gv = g_t[i] if y_t[i] > 0 else zero
                    ag[i] += gv
                    agx[i] += gv * ((x_t[i] - mu[i]) * s[i])
            else:
                for i in range(g_t.size):
                    ag[i] += g_t[i]
                    agx[i] += g_t[i] * ((x_t[i] - mu[i]) * s[i])
    _fold_channels(acc_g, n_ch, 1.0, sum_g)
    _fold_channels(acc_gx, n_ch, 1.0, sum_gx)
    if d.size == 0:
        return
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
        g_t, x_t, y_t, d_t = g[lo:hi], xf[lo:hi], yf[lo:hi], d[lo:hi]
        if relu:
            for i in range(g_t.size):
                d_t[i] = ((g_t[i] if y_t[i] > 0 else zero) - a[i] - ((x_t[i] - mu[i]) * s[i]) * b[i]) * k[i]
        else:
            for i in range(g_t.size):
                d_t[i] = (g_t[i] - a[i] - ((x_t[i] - mu[i]) * s[i]) * b[i]) * k[i]


def batchnorm_dx_coefficients(mean, invstd, scale, sum_g, sum_gx, m, batch_stats, run, dtype):
    """The per-channel coefficients of the batch norm's ``dx`` (:func:`batchnorm_dx_runs`) as runs of
    ``run`` values (whole channels-last rows), in ``dtype``: rows mean, invstd, ``sum(g)/m``,
    ``sum(g*xhat)/m`` (zeros without batch statistics) and scale, (5, run)."""
    coef = np.empty((5, run // mean.size, mean.size), dtype=dtype)
    rows = (mean, invstd, sum_g / m if batch_stats else 0.0, sum_gx / m if batch_stats else 0.0, scale)
    for i, values in enumerate(rows):
        coef[i] = values                              # the channel's value repeated down the run
    return coef.reshape(5, run)


@njit(inline="always", error_model="numpy")
def batchnorm_dx_runs(g, x, y, relu, coef, dx):
    """``dx = ((g * [y > 0] if relu else g) - a - ((x - mean) * invstd) * b) * scale`` on flat channels-last
    rows (whole rows, from a row's start), the coefficients as runs ``coef`` (5, run) from
    :func:`batchnorm_dx_coefficients`: the dx pass of :func:`batchnorm_backward_rows`, for a conv step
    that computes its chunk of ``Ga`` this way while the chunk is in cache (``npcnn.fast.ConvBatchNorm``)."""
    run = coef.shape[1]
    mu, s, a, b, k = coef[0], coef[1], coef[2], coef[3], coef[4]
    zero = np.zeros(1, dtype=dx.dtype)[0]
    for base in range(0, g.size, run):
        count = min(run, g.size - base)
        g_t, x_t, y_t, d_t = g[base:], x[base:], y[base:], dx[base:]
        if relu:
            for i in range(count):
                d_t[i] = ((g_t[i] if y_t[i] > 0 else zero) - a[i] - ((x_t[i] - mu[i]) * s[i]) * b[i]) * k[i]
        else:
            for i in range(count):
                d_t[i] = (g_t[i] - a[i] - ((x_t[i] - mu[i]) * s[i]) * b[i]) * k[i]
