"""The elementwise ends of a channels-last conv step, each in one pass over its rows (M, F):
the bias and ReLU after the GEMM, and the activation's derivative before the backward GEMMs.

NumPy takes two passes for ``rows += bias; max(rows, 0)`` (and broadcasts the bias along rows of
only F values, one short inner loop per row), and three for ``g * (1 - y**2)``. Here the bias is
repeated to a run of whole rows (as the channels-last batch-norm kernels do) so that the loop over
a run is long, contiguous and vectorised; the derivatives are flat loops. Every inner loop indexes
a slice from 0 (see :mod:`npcnn.kernels.normalization` for why).
"""
from numba import prange

from ._compile import _kernel
from .normalization import _as_run


@_kernel(size_arg=0)
def bias_relu_rows(rows, bias, relu, run):
    """In place on ``rows`` (M, F): ``rows + bias`` (per column), then ``max(., 0)`` if ``relu``
    (NaN stays NaN, as ``np.maximum`` keeps it). ``run`` is a multiple of F (whole rows)."""
    flat = rows.reshape(-1)
    b = _as_run(bias, run, rows.dtype)
    for t in prange((flat.size + run - 1) // run):
        seg = flat[t * run:(t + 1) * run]
        for i in range(seg.size):
            v = seg[i] + b[i]
            seg[i] = 0 if relu and v < 0 else v


@_kernel(size_arg=0)
def relu_grad(g, y, out):
    """``out = g * [y > 0]`` (ReLU's derivative taken from its output ``y``), arrays of one shape; a
    NaN or infinite ``g`` where ``y <= 0`` gives NaN, as the product does in NumPy."""
    gf, yf, of = g.reshape(-1), y.reshape(-1), out.reshape(-1)
    for i in prange(gf.size):
        of[i] = gf[i] if yf[i] > 0 else gf[i] * 0


@_kernel(size_arg=0, fma=True)
def tanh_grad(g, y, out):
    """``out = g * (1 - y**2)`` (tanh's derivative taken from its output ``y``), arrays of one shape."""
    gf, yf, of = g.reshape(-1), y.reshape(-1), out.reshape(-1)
    for i in prange(gf.size):
        of[i] = gf[i] * (1 - yf[i] * yf[i])
