"""The direct path's stride-1 conv with few weights per filter (:mod:`npcnn.kernels.direct_conv_rows`)
as one BLAS GEMM per chunk of images, on "wide" columns built by copying, not by gathering.

The direct kernels build a filter's output plane as a sum over taps of the padded input plane shifted
by ``i*Wp + j`` (``xflat[c, i*Wp + j + t]`` for ``t`` over the wide output: ``Ho`` rows of ``Wp``, the
``Wp - Wo`` extra columns computed and dropped). Those shifted planes, one per tap ``(c, i, j)``, are the
rows of a (taps, wide positions) matrix ``colsT`` made by copying contiguous runs, where im2col of one
channel gathers its values one at a time. So the conv is one GEMM,

    wide (positions, F) = colsT^T @ W (taps, F),        W[(c*kh + i)*kw + j, f] = w[f, c, i, j],

whose result is already channels last (the next steps' layout), at BLAS's speed: with 16 filters and 9
or 16 taps OpenBLAS runs 40-50 G multiply-adds/s per thread on a chunk that stays in cache, where the
direct loops ran about 30 and then wrote their planes out channels last value by value (the first conv
of Wong et al.'s net, 1000 images on two threads of a 2-core AMD EPYC Zen 4: 1.82 -> 1.39 ms). Each
image's output rows are then the wide rows' first ``Wo`` positions, read with the bias, the activation
and (for a batch norm) the sums of the values and their squares while in cache.

The weight gradient is the same GEMM the other way round, ``dW (taps, F) += colsT @ Gwide``, with the
gradient at the conv's output spread onto the wide rows (zeros in the extra columns), and dL/db its sum.
The input gradient stays the direct kernel's (:func:`npcnn.kernels.direct_conv_input_grad_nchw`).

Thread ``t`` of ``workers`` takes images ``[t*N/workers, (t+1)*N/workers)``, ``step`` at a time, each
with its own scratch ``cols_all[t]`` (taps, step*Ho*Wp) and ``wide_all[t]`` (step*Ho*Wp, F); each GEMM is
a single-threaded call of numpy's own BLAS (:mod:`npcnn.blas`; BLAS held to one thread by the caller).
"""
from numba import njit, prange

from ..blas import NO_TRANS, TRANS, _gemm, _gemm_acc
from ._compile import _OPTS
from .rows import NONE, RELU, TANH, act_grad_segment, sums_runs, tanh_segment


@njit(inline="always", error_model="numpy")
def _wide_columns(xflat, a, b, n_ch, hp, kh, kw, wp, span, plane, cols):
    """``cols[tap, (n - a)*plane + q] = xflat[n, c*hp*wp + i*wp + j + q]`` for the images ``a <= n < b``, every
    tap ``(c, i, j)`` and ``q < span``; the last ``plane - span`` positions of each image are zeroed."""
    for c in range(n_ch):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                off = c * hp * wp + i * wp + j
                for n in range(a, b):
                    src = xflat[n, off:off + span]
                    dst = row[(n - a) * plane:(n - a + 1) * plane]
                    for q in range(span):
                        dst[q] = src[q]
                    for q in range(span, plane):
                        dst[q] = 0


@njit(parallel=True, **_OPTS)
def direct_conv_gemm_to_nhwc(blas_fn, ilp64, xpad, w_kf, bias_run, act, kh, kw, out, cols_all, wide_all, step,
                             sums_all):
    """``out[n] = act(conv(xpad[n], w) + bias)`` channels last, ``out`` (N, Ho, Wo, F), from ``xpad`` (N, C,
    Hp, Wp) zero-padded for a stride-1 ``kh`` x ``kw`` conv and ``w_kf`` (C*kh*kw, F) the weights as rows of
    taps; ``bias_run`` the bias repeated over one output row (Wo*F; zeros for none); ``act`` coded as in
    :mod:`npcnn.kernels.rows`. ``cols_all`` (workers, C*kh*kw, step*Ho*Wp) and ``wide_all`` (workers,
    step*Ho*Wp, F) the threads' scratch. With ``sums_all`` (workers, 2, run) float64, zeroed, not empty,
    thread ``t`` adds its images' outputs and their squares into ``sums_all[t]``
    (:func:`npcnn.kernels.rows.sums_runs`, a batch norm's statistics; ``run`` whole rows within an image)."""
    n_img, ho, wo, f_out = out.shape
    n_ch, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    span, plane, taps = (ho - 1) * wp + wo, ho * wp, w_kf.shape[0]
    xflat = xpad.reshape(n_img, n_ch * hp * wp)
    workers = cols_all.shape[0]
    double = out.itemsize == 8
    relu = act == RELU
    for t in prange(workers):
        cols, wide = cols_all[t], wide_all[t]
        first, last = t * n_img // workers, (t + 1) * n_img // workers
        for a in range(first, last, step):
            b = min(last, a + step)
            _wide_columns(xflat, a, b, n_ch, hp, kh, kw, wp, span, plane, cols)
            _gemm(blas_fn, double, ilp64, TRANS, NO_TRANS, (b - a) * plane, f_out, taps, cols.ctypes.data,
                  cols.shape[1], w_kf.ctypes.data, f_out, wide.ctypes.data, f_out)
            for n in range(a, b):
                o = out[n].reshape(ho, wo * f_out)
                for y in range(ho):
                    src = wide[(n - a) * plane + y * wp:(n - a) * plane + y * wp + wo].reshape(-1)
                    dst = o[y]
                    for i in range(dst.size):
                        v = src[i] + bias_run[i]
                        dst[i] = 0 if relu and v < 0 else v
                    if act == TANH:
                        tanh_segment(dst)
                if sums_all.shape[0] > 0:
                    sums_runs(out[n].reshape(-1), sums_all[t, 0], sums_all[t, 1])
    return out


@njit(parallel=True, **_OPTS)
def direct_conv_gemm_weight_grad(blas_fn, ilp64, xpad, g, y, act, kh, kw, cols_all, wide_all, step, dw_part,
                                 db_part):
    """dL/dW and dL/db of :func:`direct_conv_gemm_to_nhwc` from ``g`` (N, Ho, Wo, F), the gradient at its
    output ``y`` (the derivative of ``act`` taken from ``y``, as :func:`npcnn.kernels.rows.act_grad_segment`
    does): per chunk, ``Ga = g * act'(y)`` spread onto the wide rows of ``wide_all[t]`` (zeros in the
    extra columns), the wide columns rebuilt in ``cols_all[t]``, then ``dw_part[t] += colsT @ Gwide``
    (C*kh*kw, F) and ``db_part[t] += Ga``'s rows, per position of one output row (Wo*F; the caller folds
    them per filter and sums the threads' parts, all zeroed by the caller)."""
    n_img, ho, wo, f_out = g.shape
    n_ch, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    span, plane, taps = (ho - 1) * wp + wo, ho * wp, dw_part.shape[1]
    xflat = xpad.reshape(n_img, n_ch * hp * wp)
    workers = cols_all.shape[0]
    double = g.itemsize == 8
    for t in prange(workers):
        cols, wide, dw_t, db_t = cols_all[t], wide_all[t], dw_part[t], db_part[t]
        first, last = t * n_img // workers, (t + 1) * n_img // workers
        for a in range(first, last, step):
            b = min(last, a + step)
            for n in range(a, b):
                gn, yn = g[n].reshape(ho, wo * f_out), y[n].reshape(ho, wo * f_out)
                wn = wide[(n - a) * plane:(n - a + 1) * plane].reshape(ho, wp * f_out)
                for r in range(ho):
                    dst = wn[r]
                    if act == NONE:
                        src = gn[r]
                        for i in range(src.size):
                            dst[i] = src[i]
                    else:
                        act_grad_segment(gn[r], yn[r], act, dst[:wo * f_out])
                    for i in range(wo * f_out, wp * f_out):
                        dst[i] = 0
                    for i in range(wo * f_out):
                        db_t[i] += dst[i]
            _wide_columns(xflat, a, b, n_ch, hp, kh, kw, wp, span, plane, cols)
            _gemm_acc(blas_fn, double, ilp64, NO_TRANS, NO_TRANS, taps, f_out, (b - a) * plane, cols.ctypes.data,
                      cols.shape[1], wide.ctypes.data, f_out, dw_t.ctypes.data, f_out)
    return dw_part
