"""The channels-last conv steps' chunk loops (:class:`npcnn.fast.ConvAct`, and the forward of
:class:`npcnn.fast.ConvReLUPool`'s channels-last path) as threaded kernels.

The steps walk the batch a few images at a time: im2col into a column buffer that stays in cache,
one GEMM, the bias and the activation (forward); the activation's derivative, the weight-gradient
GEMM, the input-gradient GEMM and col2im (backward). Written in Python, with the chunks handed to
Python threads, that loop took LeNet-5's second conv (batch 64, two threads) 1.07 ms forward; here,
with numba's threads taking the chunks, each with its own buffers, and each GEMM a call of numpy's
own single-threaded BLAS (``npcnn.blas``; BLAS must be held to one thread, as
:func:`npcnn.parallel.one_blas_thread` does), 0.69 ms. Thread ``t`` of ``workers`` takes images
``[t*N/workers, (t+1)*N/workers)``, ``step`` at a time, as the Python loop deals them, and each chunk
is the same im2col and the same BLAS call, so the two loops give the same numbers.

For a 3x3 or 5x5 stride-1 conv the forward kernels can take Winograd instead of im2col + GEMM for
each chunk, chosen by the caller, who passes its transformed weights ``u`` (an empty ``u`` means
im2col) and the transforms ``bt``, ``at`` (empty: F(2x2, 3x3) as written out in
:func:`npcnn.kernels.winograd.winograd_conv_rows`; else
:func:`npcnn.kernels.winograd_general.winograd_general_conv_rows`; ``winograd_conv_chunk`` picks).

Activations are coded as in :mod:`npcnn.kernels.rows` (NONE, RELU, TANH), whose per-segment bodies
these kernels inline: the activation is applied to each chunk's rows while they are in cache.
"""
from numba import njit, prange

from ..blas import NO_TRANS, TRANS, _gemm, _gemm_acc
from ._compile import _OPTS
from .columns import col2im_image_nhwc, im2col_image_nhwc
from .normalization import batchnorm_dx_runs
from .pooling import bias_relu_maxpool_image_2x2
from .rows import NONE, RELU, TANH, act_grad_segment, bias_relu_segment, sums_runs, tanh_segment
from .winograd_general import winograd_conv_chunk, winograd_weight_grad_chunk


@njit(parallel=True, **_OPTS)
def conv_rows_forward(blas_fn, ilp64, x3, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, w_mat, bias_relu, bias_run, act,
                      cols_all, step, out, u, v_all, m_all, bt, at, sums_all):
    """``out`` (N*ho*wo, F) = act(im2col(x3) @ w_mat + bias), ``act`` NONE, RELU or TANH. ``x3``
    (N, H, W*C) channels last, not padded (im2col writes the padding's zeros), ``w_mat`` (kh*kw*C, F),
    ``bias_run`` the bias (zeros for none) repeated over a few whole rows (added, with the ReLU, only
    if ``bias_relu``: a bias-free conv without ReLU skips the pass), ``cols_all`` (workers,
    step*ho*wo, K) scratch, ``blas_fn`` the ?gemm address. With ``u`` the kernel's Winograd
    weights (alpha^2, C, F) (else empty), each chunk's conv is Winograd's instead, in the scratch
    ``v_all`` / ``m_all`` (workers, alpha^2, rows, C / F): F(2x2, 3x3) written out if ``bt`` is empty,
    else F(m x m, r x r) with the transforms ``bt`` (alpha, alpha) and ``at`` (m, alpha). With ``sums_all``
    (workers, 2, run) float64, zeroed, not empty: thread ``t`` adds its chunks' outputs and their squares,
    per position of a run of whole rows, into ``sums_all[t]`` while each chunk is in cache
    (:func:`npcnn.kernels.rows.sums_runs`; a batch norm's statistics without a pass of their own)."""
    n_img, workers, p = x3.shape[0], cols_all.shape[0], ho * wo
    k, f = w_mat.shape
    double = out.itemsize == 8
    for t in prange(workers):
        first, last = t * n_img // workers, (t + 1) * n_img // workers
        cols = cols_all[t]
        for a in range(first, last, step):
            b = min(last, a + step)
            rows = out[a * p:b * p]
            if u.shape[0] > 0:
                winograd_conv_chunk(blas_fn, ilp64, x3, a, b, n_ch, ph, pw, ho, wo, u, v_all[t], m_all[t], bt, at, rows)
            else:
                for n in range(a, b):
                    im2col_image_nhwc(x3, n, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, cols[(n - a) * p:(n - a + 1) * p])
                _gemm(blas_fn, double, ilp64, NO_TRANS, NO_TRANS, (b - a) * p, f, k, cols.ctypes.data, k,
                      w_mat.ctypes.data, f, rows.ctypes.data, f)
            if bias_relu:
                flat = rows.reshape(-1)
                for base in range(0, flat.size, bias_run.size):   # runs of whole rows, the bias repeated
                    bias_relu_segment(flat[base:base + bias_run.size], bias_run, act == RELU)
            if act == TANH:
                tanh_segment(rows.reshape(-1))
            if sums_all.shape[0] > 0:
                sums_runs(rows.reshape(-1), sums_all[t, 0], sums_all[t, 1])
    return out


@njit(parallel=True, **_OPTS)
def conv_rows_backward(blas_fn, ilp64, x3, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, g, y, act, w_t, param_grads,
                       input_grad, ga_all, cols_all, step, dw_part, has_bias, db_part, dx3, dx_accumulate, u, v_all,
                       m_all, bt, at, wbt, wa, wv_all, wg_all, wm_all, bn_y, bn_relu, bn_coef):
    """The backward of :func:`conv_rows_forward` from ``g`` = dL/dy (N*ho*wo, F) and the output ``y``:
    per chunk ``Ga = g * act'(y)``, then (if ``param_grads``) ``dw_part[t] += cols^T @ Ga`` and (if
    ``has_bias``) ``db_part[t] += sum of Ga's rows``; (if ``input_grad``) ``dcols = Ga @ w_t`` scattered
    by col2im onto ``dx3`` (N, H, W*C), each image's plane zeroed first unless ``dx_accumulate`` (then dL/dx
    is added to what ``dx3`` holds: a residual block's other gradient; not with Winograd). ``w_t`` (F, K);
    ``ga_all`` and ``cols_all`` (workers, step*ho*wo, F / K) scratch (``cols`` holds the columns, then, once the
    weight gradient has them, dcols); ``dw_part`` (workers, K, F), C-contiguous (BLAS adds each
    chunk's product into it, beta = 1), and ``db_part`` (workers, F) zeroed by the caller, who sums them.
    With ``u`` the Winograd weights of the kernel flipped and its channels swapped (alpha^2, F, C) (else
    empty), dL/dx is instead that conv of ``Ga`` (padded by ``k - 1 - p``)
    by Winograd, in the scratch ``v_all`` / ``m_all``, ``bt`` and ``at`` as in :func:`conv_rows_forward`. With
    ``wa`` not empty, the weight gradient is instead summed by Winograd into ``wm_all[t]`` (alpha^2, C, F)
    (:func:`npcnn.kernels.winograd_weight_grad_chunk`, its transforms ``wbt``, ``wa`` and scratch ``wv_all``,
    ``wg_all``), and ``dw_part`` is left alone. With ``bn_coef`` (5, run) not empty, a batch norm
    follows the conv (with ``act`` NONE): ``g`` is the gradient at the batch norm's output (after its ReLU if
    ``bn_relu``, ``bn_y`` that output), and each chunk's ``Ga`` is the batch norm's dL/dx, computed from ``g``,
    ``y`` (its input) and ``bn_coef`` (:func:`npcnn.kernels.normalization.batchnorm_dx_runs`) while in cache."""
    n_img, workers, p = x3.shape[0], cols_all.shape[0], ho * wo
    h, w = x3.shape[1], x3.shape[2] // n_ch
    f, k = w_t.shape
    double = g.itemsize == 8
    for t in prange(workers):
        first, last = t * n_img // workers, (t + 1) * n_img // workers
        cols, ga_buf, dw_t, db_t = cols_all[t], ga_all[t], dw_part[t], db_part[t]
        for a in range(first, last, step):
            b = min(last, a + step)
            m = (b - a) * p
            if bn_coef.shape[0] > 0:
                ga = ga_buf[:m]
                batchnorm_dx_runs(g[a * p:b * p].reshape(-1), y[a * p:b * p].reshape(-1), bn_y[a * p:b * p].reshape(-1),
                                  bn_relu, bn_coef, ga.reshape(-1))
            elif act == NONE:
                ga = g[a * p:b * p]
            else:
                ga = ga_buf[:m]
                act_grad_segment(g[a * p:b * p].reshape(-1), y[a * p:b * p].reshape(-1), act, ga.reshape(-1))
            if param_grads and wa.shape[0] > 0:
                winograd_weight_grad_chunk(blas_fn, ilp64, x3, ga.reshape(b - a, ho, wo * f), a, b, n_ch, ph, pw, ho,
                                           wo, wbt, wa, wv_all[t], wg_all[t], wm_all[t])
            elif param_grads:
                for n in range(a, b):
                    im2col_image_nhwc(x3, n, n_ch, kh, kw, sh, sw, ph, pw, ho, wo, cols[(n - a) * p:(n - a + 1) * p])
                _gemm_acc(blas_fn, double, ilp64, TRANS, NO_TRANS, k, f, m, cols.ctypes.data, k, ga.ctypes.data, f,
                          dw_t.ctypes.data, f)
            if param_grads and has_bias:
                for r in range(m):
                    for j in range(f):
                        db_t[j] += ga[r, j]
            if input_grad and u.shape[0] > 0:
                winograd_conv_chunk(blas_fn, ilp64, ga.reshape(b - a, ho, wo * f), 0, b - a, f, kh - 1 - ph,
                                    kw - 1 - pw, h, w, u, v_all[t], m_all[t], bt, at,
                                    dx3[a:b].reshape((b - a) * h * w, n_ch))
            elif input_grad:
                dcols = cols[:m]
                _gemm(blas_fn, double, ilp64, NO_TRANS, NO_TRANS, m, k, f, ga.ctypes.data, f, w_t.ctypes.data, k,
                      dcols.ctypes.data, k)
                for n in range(a, b):
                    col2im_image_nhwc(dcols[(n - a) * p:(n - a + 1) * p], n_ch, kh, kw, sh, sw, ph, pw, ho, wo,
                                      dx3[n], not dx_accumulate)
    return dx3


@njit(parallel=True, **_OPTS)
def conv_rows_relu_maxpool_forward(blas_fn, ilp64, x3, n_ch, kh, kw, sh, sw, ph, pw, hc, wc, w_mat, bias, zero,
                                   cols_all, rows_all, step, out, argmax, u, v_all, m_all, bt, at):
    """The forward of :class:`npcnn.fast.ConvReLUPool`'s channels-last path (``x3`` (N, H, W*C), padded
    by ``ph``, ``pw`` as it is read: 0 when the caller padded it already, as the backward's kernels need
    it; the conv's own in inference, where no copy is made): per chunk, im2col, ``rows = cols @ w_mat``
    into the thread's ``rows_all[t]`` (step*hc*wc, F), then bias + ReLU + 2x2 max-pool into ``out`` and ``argmax``
    (N, Ho, Wo, F) (:func:`npcnn.kernels.bias_relu_maxpool_nhwc_2x2`'s rule). ``u``, ``v_all``,
    ``m_all``, ``bt``, ``at``: the Winograd alternative, as in :func:`conv_rows_forward`."""
    n_img, workers, p = x3.shape[0], cols_all.shape[0], hc * wc
    k, f = w_mat.shape
    double = out.itemsize == 8
    for t in prange(workers):
        first, last = t * n_img // workers, (t + 1) * n_img // workers
        cols, rows = cols_all[t], rows_all[t]
        for a in range(first, last, step):
            b = min(last, a + step)
            if u.shape[0] > 0:
                winograd_conv_chunk(blas_fn, ilp64, x3, a, b, n_ch, ph, pw, hc, wc, u, v_all[t], m_all[t], bt, at,
                                    rows[:(b - a) * p])
            else:
                for n in range(a, b):
                    im2col_image_nhwc(x3, n, n_ch, kh, kw, sh, sw, ph, pw, hc, wc, cols[(n - a) * p:(n - a + 1) * p])
                _gemm(blas_fn, double, ilp64, NO_TRANS, NO_TRANS, (b - a) * p, f, k, cols.ctypes.data, k,
                      w_mat.ctypes.data, f, rows.ctypes.data, f)
            for n in range(a, b):
                bias_relu_maxpool_image_2x2(rows[(n - a) * p:(n - a + 1) * p], bias, hc, wc, out[n], argmax[n], zero)
    return out
