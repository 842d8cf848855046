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
convolution is one GEMM: ``W(F, K) @ cols(K, N*P)``, whose result (F, N*P)
("channel-major") the fused pooling kernels read directly.

For a fixed ``(c, i, j)`` and output row ``oy``, the ``Wo`` entries of a row of
``cols`` come from one contiguous run of the input row ``y = oy*s - p + i``
(for stride 1), so the innermost loops below copy runs with no per-element
bounds test: the part of the run that falls on the padding is zeroed
separately. That lets LLVM vectorise them.

The loops are parallel over the batch (``prange``): each image writes a
disjoint slice of the output, so no two threads ever touch the same element,
and the scatter in ``col2im`` needs no atomics and no numpy unbuffered scatter-add.
"""
import functools
import os
import types

import numba
import numpy as np
from numba import njit, prange

# numba's threading layer. Its usual first choice when TBB is missing, OpenMP, spin-waits between
# parallel regions, and so does OpenBLAS between GEMMs; on a 2-core machine the two pools then fight
# for the cores and every kernel call waits milliseconds for a time slice (a training step measured
# 3x slower). TBB's threads spin only briefly, and a parallel region costs ~1.5 us (measured);
# numba's own workqueue layer never spins but costs ~150 us per region on these machines, which ate
# the gain of two threads at batch 64 (a training step ran 4 % slower than with TBB). So npcnn asks
# for TBB first (the ``tbb`` package, a dependency where it has wheels) and falls back to workqueue;
# OpenMP only if both fail (it never does: workqueue is built in).
_FAST_LAYERS = ("tbb", "workqueue")
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]
    try:  # too late if something already started numba's threads (numba.get_num_threads() does)
        _started = numba.threading_layer()
    except ValueError:  # not started yet: the usual case
        _started = None
    if _started not in (None, *_FAST_LAYERS):
        import warnings
        warnings.warn(f"numba's threads were started with the {_started!r} layer before npcnn was "
                      "imported; npcnn's kernels may run several times slower. Import npcnn first, "
                      "or set NUMBA_THREADING_LAYER=tbb (or workqueue).", RuntimeWarning, stacklevel=2)

# ``error_model="numpy"``: a division by zero gives inf/nan (or 0 for integers) as in NumPy instead
# of raising. numba's default ("python") tests every division for zero, and that test keeps LLVM
# from vectorising any loop that divides (Adam's update ran 3.4x slower with it, measured).
_OPTS = dict(cache=True, nogil=True, error_model="numpy")

# Below this many elements (of the array named by ``size_arg``) a kernel runs on
# the calling thread: a parallel region costs ~1.5 us with TBB but ~150 us with
# workqueue (measured), an OpenBLAS thread still spinning after a GEMM takes the
# second core for a while, and a parallel region waits for its slowest thread.
# The attack and occlusion loops run many small batches and gain most from this.
PARALLEL_MIN_SIZE = 1 << 18


def _kernel(size_arg, fma=False, min_size=None, reassoc=False):
    """Compile ``fn`` twice: with threads over ``prange`` and serially; pick by the size of one argument.

    The serial copy gets its own name so numba's on-disk cache keeps the two apart; ``min_size``
    (default :data:`PARALLEL_MIN_SIZE`) is the size from which threads pay. ``fma=True``
    lets LLVM fuse ``a += b * c`` into one fused multiply-add (numba's ``fastmath={"contract"}``:
    one rounding instead of two, nothing else about IEEE arithmetic changes). ``reassoc=True``
    (with ``fma``) also lets it reorder sums, so that a dot product vectorises: the sum is then
    taken in another order, as BLAS takes it.
    """
    opts = dict(_OPTS, fastmath={"contract", "reassoc"} if reassoc else {"contract"}) if fma else _OPTS

    def wrap(fn):
        parallel = njit(parallel=True, **opts)(fn)
        serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                       fn.__defaults__, fn.__closure__)
        serial_fn.__qualname__ = fn.__qualname__ + "_serial"
        serial = njit(**opts)(serial_fn)

        return _Dispatch(fn, parallel, serial, size_arg, min_size)
    return wrap


class _Dispatch:
    """Calls the threaded or the serial compilation; looks like a numba dispatcher otherwise."""

    def __init__(self, fn, parallel, serial, size_arg, min_size):
        functools.update_wrapper(self, fn)
        self.parallel, self.serial, self.size_arg, self.min_size = parallel, serial, size_arg, min_size

    def __call__(self, *args):
        big = args[self.size_arg].size >= (PARALLEL_MIN_SIZE if self.min_size is None else self.min_size)
        return (self.parallel if big else self.serial)(*args)

    @property
    def signatures(self):
        return list(self.parallel.signatures) + list(self.serial.signatures)

    @property
    def nopython_signatures(self):
        return list(self.parallel.nopython_signatures) + list(self.serial.nopython_signatures)


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


# --------------------------------------------------------------------------- conv -> ReLU -> max-pool, fused
def bias_relu_maxpool(out_cols, bias, hc, wc, kh, kw, sh, sw, ph, pw, out, argmax):
    """``out = maxpool(relu(conv + bias))`` straight from the conv GEMM result.

    ``out_cols`` (F, N*hc*wc) is the conv output before the bias (the GEMM
    layout, see the module docstring); ``out`` and ``argmax`` are
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
    multiply (the first conv's forward at batch 64: int32 labels 0.60 -> 0.52 ms, max before ReLU
    0.52 -> 0.39 ms).
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


# --------------------------------------------------------------------------- small convs, computed directly
# A conv with few weights per filter (the first layer: 1 channel x 3x3 = 9) gains nothing from
# im2col + GEMM: the GEMM's inner dimension is 9, so it is a pass over memory, and the column
# matrix (9 rows, N*28*28 columns) and the conv output (32 x N*28*28) are written and read again
# only to be max-pooled. The kernels below compute the conv, bias, ReLU and 2x2 max-pool at once,
# and the weight gradient, from a zero-padded input ``xpad`` (N, C, H+2p, W+2p), so that no tap
# needs a bounds test (the input gradient of the 1x3x3 stride-1 conv has its own kernel, any other
# goes through ``winners_to_dense_nhwc`` and a GEMM). Pooled outputs are channels last,
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
# per pixel, each with its own vector-loop setup). Forward and weight gradient ran 2-2.7x faster.
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


@njit(inline="always", error_model="numpy")
def _split_by_quadrant(g, pos, p0, p1, p2, p3, zero):
    """One filter's pooled gradient ``g`` (already 0 where the ReLU was off) as the gradients of the
    window's four conv outputs: ``g`` at the one whose label ``p0..p3`` equals the winner ``pos``, 0
    at the others. ``zero`` must be in ``g``'s dtype: a literal 0.0 (float64) drags a float32 loop into
    float64 (the weight gradient ran 2x slower)."""
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
            # dw_part[blk] made two threads slower than one (0.57 vs 0.45 ms at batch 64, measured)
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
    replaces the dense conv-output gradient (N*hc*wc, F), its GEMM and col2im (measured 2-3x
    faster at batch 10-90); the sums over the filters run in another order than BLAS's.
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


# --------------------------------------------------------------------------- convs with many channels, channels last
# For a conv with many input channels (the second layer: 32 x 3x3 = 288 weights per filter) the
# fused path works on a zero-padded channels-last copy of the input, ``xp`` (N, H+2p, W+2p, C):
# im2col then copies C contiguous values per tap instead of one short image row at a time, the
# GEMM gives a channels-last conv output that the pooling kernel reads filter by filter, and the
# backward visits only the pool's winners, with contiguous loops over channels (no col2im).
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


@_kernel(size_arg=8)
def im2col_nhwc(xp3, n_ch, kh, kw, sh, sw, ho, wo, cols):
    """Receptive fields of the padded channels-last input, given as ``xp3`` (N, Hp, Wp*C), as rows
    of ``cols`` (N*ho*wo, kh*kw*C), taps in (i, j, c) order: for each kernel row i, the kw*C values
    are one contiguous run of the input row, copied as one."""
    n_img = xp3.shape[0]
    run = kw * n_ch
    for n in prange(n_img):
        for oy in range(ho):
            for ox in range(wo):
                row = cols[(n * ho + oy) * wo + ox]
                x0 = ox * sw * n_ch
                for i in range(kh):
                    src = xp3[n, oy * sh + i, x0:x0 + run]
                    dst = row[i * run:(i + 1) * run]
                    for k in range(run):
                        dst[k] = src[k]
    return cols


@_kernel(size_arg=0)
def bias_relu_maxpool_nhwc_2x2(rows, bias, hc, wc, out, argmax, zero):
    """:func:`bias_relu_maxpool` (2x2 windows, stride 2) from a channels-last conv output ``rows``
    (N*hc*wc, F) before the bias, into channels-last ``out`` and ``argmax`` (N, Ho, Wo, F)."""
    n_img, ho, wo, f_out = out.shape
    for n in prange(n_img):
        for oy in range(ho):
            for ox in range(wo):
                r0 = (n * hc + 2 * oy) * wc + 2 * ox
                p0, p1, p2, p3 = _window_labels(oy, ox, wc)
                v0, v1, v2, v3 = rows[r0], rows[r0 + 1], rows[r0 + wc], rows[r0 + wc + 1]
                o, am = out[n, oy, ox], argmax[n, oy, ox]
                for f in range(f_out):
                    b = bias[f]
                    best, pos = _max4_relu_at(v0[f] + b, v1[f] + b, v2[f] + b, v3[f] + b, p0, p1, p2, p3, zero)
                    o[f] = best
                    am[f] = pos
    return out


# The backward of the channels-last path visits only the pool's winners (``out`` and ``argmax``
# channels last, (N, Ho, Wo, F), as the forward wrote them; ``grad_out`` NCHW). A pooled gradient
# ``g = grad_out[n, f, oy, ox]`` reaches the conv output only at its window's winner ``(y, x)``,
# and only if the pooled value is > 0 (the ReLU's mask); the other three quarters of the conv
# outputs have zero gradient. From a winner, for each kernel row ``i``, the ``kw*C`` weights
# ``W[f, i, :, :]`` meet one contiguous run of ``kw*C`` values of the padded input row
# ``xp[n, y*sh + i, x*sw : x*sw + kw, :]``, so the kernels below take the arrays flattened to
# ``(..., rows, cols*C)`` and loop over that run. Weight and input gradient are two passes: one
# loop doing both ran slower than the two apart (measured: 5.5 ms against 2.2 + 1.9 ms).
#
# Both kernels first list the live winners (a branch-free compaction: every entry is written and
# the count advances only if ``out > 0``; a branch on ``out > 0`` is taken at random half the
# time and mispredicts), then run over the runs of several winners that share a destination at
# once: ``dst[k] += g0*s0[k] + ... + g7*s7[k]`` loads and stores ``dst`` once per 8 winners
# instead of once per winner (one store and two loads per multiply-add made the loop wait on
# the stores). The runs are indexed with unsigned offsets into flat arrays: numba adds a
# negative-index fix-up to every signed index, and slicing a run costs a bounds clamp per slice.
@njit(**_OPTS)
def _tap_offsets(rows, wc, sh, sw, n_ch, row_len):
    """Flat offset in one padded channels-last image (Hp, Wp*C) of the receptive field's first
    value, for each conv output position ``y*wc + x`` (y < rows): ``y*sh*row_len + x*sw*C``."""
    table = np.empty(rows * wc, np.uint64)
    for y in range(rows):
        for x in range(wc):
            table[y * wc + x] = y * sh * row_len + x * sw * n_ch
    return table


@_kernel(size_arg=3, fma=True, min_size=1 << 15)   # much work per element: threads pay early
def winners_weight_grad_nhwc(grad_out, argmax, out, xp3, n_ch, sh, sw, wc, dw_part, db_part):
    """``dW[f, i, j, c] = sum g * xp[n, y+i, x+j, c]`` and ``db[f] = sum g`` over the winners.

    ``xp3`` is the padded input (N, Hp, Wp*C). The images are dealt round-robin to
    ``len(dw_part)`` blocks, each summing into its own ``dw_part[b]`` (F, kh, kw*C) and
    ``db_part[b]`` (F): the caller adds the blocks up. All arrays C-contiguous.

    For each image and filter the live winners are listed first (offset of the receptive field,
    gradient); then each row ``dW[f, i]`` gets 8 winners' runs per pass (then 2, then 1).
    """
    n_img, f_out, ho, wo = grad_out.shape
    n_blocks, kh, run = dw_part.shape[0], dw_part.shape[2], dw_part.shape[3]
    row_len = xp3.shape[2]
    img_len = xp3.shape[1] * row_len
    n_pix = ho * wo
    table = _tap_offsets(2 * ho, wc, sh, sw, n_ch, row_len)   # winners lie in the first 2*ho conv rows
    xf = xp3.reshape(-1)
    go = grad_out.reshape(n_img, f_out, n_pix)
    am = argmax.reshape(n_img, n_pix, f_out)
    live = out.reshape(n_img, n_pix, f_out)
    urun = np.uint64(run)
    for blk in prange(n_blocks):
        offs = np.empty(n_pix, np.uint64)
        gs = np.empty(n_pix, dw_part.dtype)
        dwf = dw_part[blk].reshape(-1)
        dwf[:] = 0.0
        db_part[blk] = 0.0
        for n in range(blk, n_img, n_blocks):
            base = np.uint64(n * img_len)
            for f in range(f_out):
                m = 0
                for p in range(n_pix):
                    offs[m] = base + table[am[n, p, f]]
                    gs[m] = go[n, f, p]
                    m += 1 if live[n, p, f] > 0 else 0
                db = db_part[blk, f]
                for j in range(m):
                    db += gs[j]
                db_part[blk, f] = db
                for i in range(kh):
                    d0 = np.uint64((f * kh + i) * run)
                    r = np.uint64(i * row_len)
                    j = 0
                    while j + 8 <= m:
                        g0, g1, g2, g3 = gs[j], gs[j + 1], gs[j + 2], gs[j + 3]
                        g4, g5, g6, g7 = gs[j + 4], gs[j + 5], gs[j + 6], gs[j + 7]
                        o0, o1, o2, o3 = offs[j] + r, offs[j + 1] + r, offs[j + 2] + r, offs[j + 3] + r
                        o4, o5, o6, o7 = offs[j + 4] + r, offs[j + 5] + r, offs[j + 6] + r, offs[j + 7] + r
                        for k in range(urun):
                            dwf[d0 + k] += (g0 * xf[o0 + k] + g1 * xf[o1 + k] + g2 * xf[o2 + k] + g3 * xf[o3 + k]
                                            + g4 * xf[o4 + k] + g5 * xf[o5 + k] + g6 * xf[o6 + k] + g7 * xf[o7 + k])
                        j += 8
                    while j + 2 <= m:
                        g0, g1 = gs[j], gs[j + 1]
                        o0, o1 = offs[j] + r, offs[j + 1] + r
                        for k in range(urun):
                            dwf[d0 + k] += g0 * xf[o0 + k] + g1 * xf[o1 + k]
                        j += 2
                    if j < m:
                        g0 = gs[j]
                        o0 = offs[j] + r
                        for k in range(urun):
                            dwf[d0 + k] += g0 * xf[o0 + k]
    return dw_part


@_kernel(size_arg=8, fma=True, min_size=1 << 15)   # size of dxp3, the whole batch's gradient
def winners_input_grad_nhwc(grad_out, argmax, out, wf3, n_ch, sh, sw, wc, dxp3):
    """``dxp[n, y+i, x+j, c] += g * W[f, i, j, c]`` over the winners, into the zeroed ``dxp3``
    (N, Hp, Wp*C); ``wf3`` is the weight as (F, kh, kw*C). Parallel over images; all arrays
    C-contiguous.

    Pooled pixel by pixel, the live filters are listed by the quadrant of their winner: the
    filters of one quadrant share the destination, so each row of it gets 4 filters' weight runs
    per pass (then 2, then 1).
    """
    n_img, f_out, ho, wo = grad_out.shape
    kh, run = wf3.shape[1], wf3.shape[2]
    row_len = dxp3.shape[2]
    wfl = wf3.reshape(-1)
    urun = np.uint64(run)
    for n in prange(n_img):
        dxf = dxp3[n].reshape(-1)
        dxf[:] = 0.0
        w_off = np.empty((4, f_out), np.uint64)             # per quadrant: offsets of W[f] in wfl
        gl = np.empty((4, f_out), wf3.dtype)                # and their gradients
        cnt = np.empty(4, np.int64)
        for oy in range(ho):
            for ox in range(wo):
                top_left = 2 * oy * wc + 2 * ox
                cnt[:] = 0
                for f in range(f_out):
                    d = argmax[n, oy, ox, f] - top_left
                    dy = 1 if d >= wc else 0
                    q = 2 * dy + d - dy * wc                   # 0..3, row-major in the window
                    c = cnt[q]
                    w_off[q, c] = f * kh * run
                    gl[q, c] = grad_out[n, f, oy, ox]
                    cnt[q] = c + (1 if out[n, oy, ox, f] > 0 else 0)
                for q in range(4):
                    m = cnt[q]
                    if m == 0:
                        continue
                    y = (2 * oy + (q >> 1)) * sh
                    x0 = (2 * ox + (q & 1)) * sw * n_ch
                    for i in range(kh):
                        d0 = np.uint64((y + i) * row_len + x0)
                        r = np.uint64(i * run)
                        j = 0
                        while j + 4 <= m:
                            g0, g1, g2, g3 = gl[q, j], gl[q, j + 1], gl[q, j + 2], gl[q, j + 3]
                            w0, w1 = w_off[q, j] + r, w_off[q, j + 1] + r
                            w2, w3 = w_off[q, j + 2] + r, w_off[q, j + 3] + r
                            for k in range(urun):
                                dxf[d0 + k] += g0 * wfl[w0 + k] + g1 * wfl[w1 + k] + g2 * wfl[w2 + k] + g3 * wfl[w3 + k]
                            j += 4
                        while j + 2 <= m:
                            g0, g1 = gl[q, j], gl[q, j + 1]
                            w0, w1 = w_off[q, j] + r, w_off[q, j + 1] + r
                            for k in range(urun):
                                dxf[d0 + k] += g0 * wfl[w0 + k] + g1 * wfl[w1 + k]
                            j += 2
                        if j < m:
                            g0 = gl[q, j]
                            w0 = w_off[q, j] + r
                            for k in range(urun):
                                dxf[d0 + k] += g0 * wfl[w0 + k]
    return dxp3


# --------------------------------------------------------------------------- batch normalisation
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


# The same three kernels for channels-last data, the layout of a fused conv's output: ``x2`` (M, C)
# with M = N*H*W rows. A per-channel loop over that layout strides through memory, and a loop over
# the C channels of each row is too short to vectorise well (numba/LLVM pay a loop setup per row:
# 3x slower, measured). So the rows are taken a tile at a time as one flat run of ``run`` values
# (whole rows, ``run = tile*C``), and every per-channel quantity is expanded to a run of the same
# length (the channel's value repeated for each row of the tile): the loops over a run are long and
# contiguous, and vectorise. Sums go into run-long float64 accumulators, folded per channel at the
# end; M need not be a multiple of the tile. Every inner loop indexes slices from 0
# (``src = flat[base:base + run]; src[i]``): indexed as ``flat[base + i]``, numba must allow for a
# negative index, and that test alone kept the loop scalar (4x slower, measured). These kernels
# are memory-bound: threads do not pay below a few MB.
_BN_MIN_SIZE = 1 << 21


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


# --------------------------------------------------------------------------- optimiser
@_kernel(size_arg=0)
def adam_update(p, g, m, v, sign, weight_decay, b1, c1, b2, c2, step_size, bc2_sqrt, eps, tiny):
    """One Adam step for flat arrays, in place, in one pass over memory.

    ``d = sign*g + weight_decay*p``, ``m = b1*m + c1*d``, ``v = b2*v + c2*d^2``,
    ``p -= step_size * m / (sqrt(v)/bc2_sqrt + eps)``, with ``c1 = 1-b1`` and
    ``c2 = 1-b2`` passed in. Pass every scalar in the arrays' dtype
    (``np.float32(...)``) and the arithmetic stays in that dtype, as PyTorch's
    does: a Python ``1 - b1`` computed in here would be a float64 and would drag
    the whole loop into float64, one element at a time (3.4x slower, measured).

    One deliberate difference from PyTorch: ``m`` and ``v`` below ``tiny`` (the
    dtype's smallest normal number, 1.2e-38 in float32) are set to 0. A weight
    whose gradient stays 0 (a dead ReLU unit's) has its ``m`` shrink by ``b1``
    every step through the subnormal range, where every operation costs the CPU
    ~100 cycles: on MNIST 150,000 such entries made training steps 30 % slower
    after the first epoch (measured). The update they would give is below 1e-30.
    """
    zero = tiny - tiny                                  # 0 in the arrays' dtype (a literal 0.0 is a float64)
    for i in prange(p.size):
        d = sign * g[i] + weight_decay * p[i]
        mi = b1 * m[i] + c1 * d
        vi = b2 * v[i] + c2 * d * d
        if abs(mi) < tiny:
            mi = zero
        if vi < tiny:
            vi = zero
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


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
