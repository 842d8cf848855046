"""The optimiser's update: one Adam step over a flat parameter array, in place."""
import numpy as np
from numba import prange

from ._compile import _kernel


@_kernel(size_arg=0)
def adam_update(p, g, m, v, sign, weight_decay, b1, c1, b2, c2, step_size, bc2_sqrt, eps, tiny):
    """One Adam step for flat arrays, in place, in one pass over memory.

    ``d = sign*g + weight_decay*p``, ``m = b1*m + c1*d``, ``v = b2*v + c2*d^2``,
    ``p -= step_size * m / (sqrt(v)/bc2_sqrt + eps)``, with ``c1 = 1-b1`` and
    ``c2 = 1-b2`` passed in. Pass every scalar in the arrays' dtype
    (``np.float32(...)``) and the arithmetic stays in that dtype, as PyTorch's
    does: a Python ``1 - b1`` computed in here would be a float64 and would drag
    the whole loop into float64, one element at a time instead of a vector.

    One deliberate difference from PyTorch: ``m`` and ``v`` below ``tiny`` (the
    dtype's smallest normal number, 1.2e-38 in float32) are set to 0. A weight
    whose gradient stays 0 (a dead ReLU unit's) has its ``m`` shrink by ``b1``
    every step through the subnormal range, where every operation costs the CPU
    many times its usual time: on MNIST enough such entries pile up to slow whole
    training steps down after the first epoch. The update they would give is
    below 1e-30.
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
