"""The elementwise ends of a channels-last conv step, each in one pass over its rows (M, F):
the bias and ReLU after the GEMM, tanh, and the activation's derivative before the backward GEMMs.

NumPy takes two passes for ``rows += bias; max(rows, 0)`` (and broadcasts the bias along rows of
only F values, one short inner loop per row), and three for ``g * (1 - y**2)``. Here the bias is
repeated to a run of whole rows (:func:`run_length`, as the channels-last batch-norm kernels do) so
that the loop over a run is long, contiguous and vectorised; the derivatives are flat loops. Every
inner loop indexes a slice from 0 (see :mod:`npcnn.kernels.normalization` for why). The per-segment
bodies are inlined into the conv steps' chunk kernels too (:mod:`npcnn.kernels.conv_rows`).

``tanh`` of float32 values is a rational function instead of NumPy's ``np.tanh``, which ran at 4 ns a
value here (18 ms for LeNet-5's first conv output at batch 1000, twice the conv itself): see
:func:`tanh32_segment`.
"""
import numpy as np
from numba import njit, prange

from ._compile import _kernel

#: Activations as the kernels code them.
NONE, RELU, TANH = 0, 1, 2

#: The derivative kernel's block of values per parallel iteration.
_BLOCK = 1 << 14


def run_length(rows):
    """Whole rows of ``rows`` (M, C) making a run of >= 512 values (or all of them): the length of the
    runs the rows kernels (and the channels-last batch-norm kernels) work in."""
    return min(rows.shape[0], -(-512 // rows.shape[1])) * rows.shape[1]


@njit(inline="always", error_model="numpy")
def sums_runs(flat, acc_sum, acc_sq):
    """``acc_sum[i] += flat[j]`` and ``acc_sq[i] += flat[j]**2`` for every ``j = i + k*run`` (``run`` =
    ``acc_sum.size``, whole rows), in float64 (a float32 value's square is exact there): a batch norm's sums,
    taken per position of a run of whole rows and folded per channel by the caller. Four runs are added
    per pass over the accumulators, which cost more than the values when loaded and stored for each."""
    run = acc_sum.size
    full = flat.size // run
    for r in range(0, full - 3, 4):
        s0, s1, s2, s3 = flat[r * run:], flat[(r + 1) * run:], flat[(r + 2) * run:], flat[(r + 3) * run:]
        for i in range(run):
            v0, v1, v2, v3 = np.float64(s0[i]), np.float64(s1[i]), np.float64(s2[i]), np.float64(s3[i])
            acc_sum[i] += (v0 + v1) + (v2 + v3)
            acc_sq[i] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
    for base in range(full // 4 * 4 * run, flat.size, run):
        seg = flat[base:base + run]
        for i in range(seg.size):
            v = np.float64(seg[i])
            acc_sum[i] += v
            acc_sq[i] += v * v


@njit(inline="always", error_model="numpy")
def bias_relu_segment(seg, bias_run, relu):
    """In place on ``seg`` (whole rows, at most ``bias_run.size`` values): ``+ bias``, then ``max(., 0)``
    if ``relu`` (NaN stays NaN, as ``np.maximum`` keeps it)."""
    for i in range(seg.size):
        v = seg[i] + bias_run[i]
        seg[i] = 0 if relu and v < 0 else v


@njit(inline="always", error_model="numpy")
def act_grad_segment(gf, yf, act, af):
    """``af = gf * act'``, the derivative taken from the output ``yf`` (flat, one length): ReLU
    ``[y > 0]`` (a NaN or infinite ``g`` where ``y <= 0`` gives NaN, as the product does in NumPy),
    tanh ``1 - y**2``, none ``1``."""
    if act == RELU:
        for i in range(af.size):
            af[i] = gf[i] if yf[i] > 0 else gf[i] * 0
    elif act == TANH:
        for i in range(af.size):
            af[i] = gf[i] * (1 - yf[i] * yf[i])
    else:
        for i in range(af.size):
            af[i] = gf[i]


#: tanh(x) = x P(u) / Q(u), u = (x / TANH_CLAMP)**2, on |x| < TANH_CLAMP; +-1 beyond (where tanh(x)
#: rounds to +-1 in float32, or, below 9.01, to the float32 one ulp under it). Fitted for this library
#: (iterated weighted least squares toward the least maximum relative error, degrees 5 and 4 in u):
#: relative error 1.3e-9 in float64 arithmetic, so at most 0.52 ulp off the exact tanh once rounded to
#: float32 (np.tanh's float32 loop: 1.37 ulp), checked on 3.1 million float32 values in
#: ``tests/test_fast_conv_act.py``.
TANH_CLAMP = 9.0
TANH_P = (0.9999999987235133, 11.081487698058618, 25.38778014966477, 14.8968834888134, 1.3190389932807383,
          -0.042698677388361604)
TANH_Q = (1.0, 38.081486691055574, 178.78805321113148, 209.42477119375522, 55.48812908560217)


@njit(inline="always", error_model="numpy")
def tanh32_segment(seg):
    """``seg = tanh(seg)`` in place, for float32 values: the rational function of :data:`TANH_P` and
    :data:`TANH_Q`, evaluated in float64 (Horner's rule) on ``x`` clamped to +-TANH_CLAMP (a NaN stays
    NaN), +-1 from the clamp on. Only arithmetic and comparisons, so the loop vectorises, unlike a call
    to ``tanhf`` per value."""
    p0, p1, p2, p3, p4, p5 = TANH_P
    q0, q1, q2, q3, q4 = TANH_Q
    for i in range(seg.size):
        x = np.float64(seg[i])
        x = TANH_CLAMP if x > TANH_CLAMP else -TANH_CLAMP if x < -TANH_CLAMP else x
        u = x * x * (1.0 / (TANH_CLAMP * TANH_CLAMP))
        p = ((((p5 * u + p4) * u + p3) * u + p2) * u + p1) * u + p0
        q = (((q4 * u + q3) * u + q2) * u + q1) * u + q0
        seg[i] = 1.0 if x == TANH_CLAMP else -1.0 if x == -TANH_CLAMP else x * p / q


@njit(inline="always", error_model="numpy")
def tanh_segment(seg):
    """``seg = tanh(seg)`` in place: :func:`tanh32_segment` for float32, libm's ``tanh`` for float64."""
    if seg.itemsize == 4:
        tanh32_segment(seg)
    else:
        for i in range(seg.size):
            seg[i] = np.tanh(seg[i])


@_kernel(size_arg=0, fma=True)
def tanh32_inplace(a):
    """``a = tanh(a)`` in place for a C-contiguous float32 array (:func:`tanh32_segment`)."""
    flat = a.reshape(-1)
    for t in prange((flat.size + _BLOCK - 1) // _BLOCK):
        tanh32_segment(flat[t * _BLOCK:min(flat.size, (t + 1) * _BLOCK)])


def tanh_inplace(a):
    """``a = tanh(a)`` in place: :func:`tanh32_inplace` for a C-contiguous float32 array, else ``np.tanh``
    (float64 keeps NumPy's correctly rounded-to-an-ulp tanh)."""
    if a.dtype == np.float32 and a.flags.c_contiguous:
        tanh32_inplace(a)
    else:
        np.tanh(a, out=a)
    return a


@_kernel(size_arg=0)
def bias_relu_rows(rows, bias_run, relu):
    """In place on ``rows`` (M, F): ``rows + bias`` (per column), then ``max(., 0)`` if ``relu``;
    ``bias_run`` is the bias repeated over whole rows (:func:`run_length` values)."""
    flat, run = rows.reshape(-1), bias_run.size
    for t in prange((flat.size + run - 1) // run):
        bias_relu_segment(flat[t * run:(t + 1) * run], bias_run, relu)


@njit(inline="always", error_model="numpy")
def add_relu_segment(a, b, relu, out):
    """``out = a + b``, then ``max(., 0)`` if ``relu`` (NaN stays NaN); flat, one length; ``out`` may be ``a``."""
    for i in range(out.size):
        v = a[i] + b[i]
        out[i] = 0 if relu and v < 0 else v


@_kernel(size_arg=0)
def add_relu(a, b, relu, out):
    """``out = a + b`` (then ``max(., 0)`` if ``relu``) for flat arrays of one length: a residual block's
    sum and the ReLU after it in one pass, or its two gradients' sum. ``out`` may be ``a`` or ``b``."""
    for t in prange((a.size + _BLOCK - 1) // _BLOCK):
        lo, hi = t * _BLOCK, min(a.size, (t + 1) * _BLOCK)
        add_relu_segment(a[lo:hi], b[lo:hi], relu, out[lo:hi])


@_kernel(size_arg=0)
def act_grad(g, y, act, out):
    """``out = g * act'(x)``, taken from the activation's output ``y`` (:func:`act_grad_segment`);
    C-contiguous arrays of one shape."""
    gf, yf, of = g.reshape(-1), y.reshape(-1), out.reshape(-1)
    for t in prange((gf.size + _BLOCK - 1) // _BLOCK):
        lo, hi = t * _BLOCK, min(gf.size, (t + 1) * _BLOCK)
        act_grad_segment(gf[lo:hi], yf[lo:hi], act, of[lo:hi])
