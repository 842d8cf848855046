"""The elementwise ends of a channels-last conv step, each in one pass over its rows (M, F):
the bias and ReLU after the GEMM, and the activation's derivative before the backward GEMMs.

NumPy takes two passes for ``rows += bias; max(rows, 0)`` (and broadcasts the bias along rows of
only F values, one short inner loop per row), and three for ``g * (1 - y**2)``. Here the bias is
repeated to a run of whole rows (:func:`run_length`, as the channels-last batch-norm kernels do) so
that the loop over a run is long, contiguous and vectorised; the derivatives are flat loops. Every
inner loop indexes a slice from 0 (see :mod:`npcnn.kernels.normalization` for why). The per-segment
bodies are inlined into the conv steps' chunk kernels too (:mod:`npcnn.kernels.conv_rows`).
"""
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


@_kernel(size_arg=0)
def bias_relu_rows(rows, bias_run, relu):
    """In place on ``rows`` (M, F): ``rows + bias`` (per column), then ``max(., 0)`` if ``relu``;
    ``bias_run`` is the bias repeated over whole rows (:func:`run_length` values)."""
    flat, run = rows.reshape(-1), bias_run.size
    for t in prange((flat.size + run - 1) // run):
        bias_relu_segment(flat[t * run:(t + 1) * run], bias_run, relu)


@_kernel(size_arg=0)
def act_grad(g, y, act, out):
    """``out = g * act'(x)``, taken from the activation's output ``y`` (:func:`act_grad_segment`);
    C-contiguous arrays of one shape."""
    gf, yf, of = g.reshape(-1), y.reshape(-1), out.reshape(-1)
    for t in prange((gf.size + _BLOCK - 1) // _BLOCK):
        lo, hi = t * _BLOCK, min(gf.size, (t + 1) * _BLOCK)
        act_grad_segment(gf[lo:hi], yf[lo:hi], act, of[lo:hi])
