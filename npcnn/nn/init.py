"""PyTorch's default initialisation, drawn from a seedable numpy Generator.

``Conv2d`` and ``Linear`` use ``kaiming_uniform_(a=sqrt(5))`` for the weight,
which works out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound
for the bias. Equal in distribution to PyTorch, so the reference net starts
(and trains) like PyTorch's; not equal in value, since the generators differ.
"""
import math

import numpy as np


def as_generator(rng):
    """Accept None, an int seed or a Generator; return a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def default_uniform(shape, fan_in, rng, dtype):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv/linear weights and biases."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
