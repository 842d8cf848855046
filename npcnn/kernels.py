"""The numba kernels: the only gathers and scatters in npcnn that are not BLAS.

Everything here is a plain loop over arrays, compiled by numba. With
``NUMBA_DISABLE_JIT=1`` the same functions run as ordinary Python, so they can
be stepped through in a debugger (slowly). The layers in :mod:`npcnn.nn` call
these; this module knows nothing about layers.

Layout conventions
------------------
Images are NCHW. ``im2col`` writes a column matrix of shape ``(K, N*P)`` where
``K = C*kh*kw`` indexes ``(c, i, j)`` in the same order as a PyTorch conv weight
``(F, C, kh, kw)`` flattened to ``(F, K)``, and column ``n*P + oy*Wo + ox``
holds the receptive field of output pixel ``(oy, ox)`` of image ``n``. Then the
convolution is one GEMM: ``W(F, K) @ cols(K, N*P)``.

The loops are parallel over the batch (``prange``): each image writes a
disjoint slice of the output, so no two threads ever touch the same element,
and the scatter in ``col2im`` needs no atomics and no ``np.add.at``.
"""
import os

import numba
import numpy as np
from numba import njit, prange

# numba's default OpenMP layer spin-waits between parallel regions, and so
# does OpenBLAS between GEMMs; on a 2-core machine the two pools then fight
# for the cores and every kernel call waits milliseconds for a time slice
# (a training step measured 7x slower). The workqueue layer sleeps instead.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_OPTS = dict(cache=True, nogil=True)


@njit(parallel=True, **_OPTS)
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
                    for oy in range(ho):
                        y = oy * sh - ph + i
                        col = base + oy * wo
                        if y < 0 or y >= h:
                            for ox in range(wo):
                                cols[row, col + ox] = 0.0
                            continue
                        for ox in range(wo):
                            xx = ox * sw - pw + j
                            if xx >= 0 and xx < w:
                                cols[row, col + ox] = x[n, c, y, xx]
                            else:
                                cols[row, col + ox] = 0.0
    return cols


@njit(parallel=True, **_OPTS)
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
                    for oy in range(ho):
                        y = oy * sh - ph + i
                        if y < 0 or y >= h:
                            continue
                        col = base + oy * wo
                        for ox in range(wo):
                            xx = ox * sw - pw + j
                            if xx >= 0 and xx < w:
                                dx[n, c, y, xx] += cols[row, col + ox]
    return dx


@njit(parallel=True, **_OPTS)
def cols_to_nchw(out_cols, bias, n_img, out):
    """Turn the GEMM result (F, N*P) into NCHW (N, F, P) and add the bias.

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


@njit(parallel=True, **_OPTS)
def nchw_to_cols(g, out_cols):
    """Turn an NCHW gradient (N, F, P) into the GEMM layout (F, N*P)."""
    n_img, f_out, p = g.shape
    for n in prange(n_img):
        for f in range(f_out):
            for q in range(p):
                out_cols[f, n * p + q] = g[n, f, q]
    return out_cols


@njit(parallel=True, **_OPTS)
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


@njit(parallel=True, **_OPTS)
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
