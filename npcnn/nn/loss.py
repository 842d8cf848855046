"""Losses: a scalar from (input, target), and its gradient with respect to input."""
import numpy as np

from .activation import LogSoftmax
from .module import check_input


class NonFiniteLossError(FloatingPointError):
    """The loss came out NaN or infinite: training has diverged or the input is broken."""


def _check_target(loss, x, target):
    target = np.asarray(target)
    if target.ndim != 1 or target.shape[0] != x.shape[0]:
        raise ValueError(f"{loss}: target must have shape ({x.shape[0]},), got {target.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{loss}: target must hold integer class indices, got dtype {target.dtype}")
    if target.size and (target.min() < 0 or target.max() >= x.shape[1]):
        raise ValueError(f"{loss}: class indices must be in [0, {x.shape[1] - 1}], got {target.min()}..{target.max()}")
    return target


def _finite(loss, value):
    if not np.isfinite(value):
        raise NonFiniteLossError(f"{loss}: the loss is {value}; training diverged or the input holds NaN/Inf")
    return value


class NLLLoss:
    r"""Negative log-likelihood of log-probabilities, mean over the batch.

    ``L = -1/N * sum_i x[i, t_i]`` for ``x`` (N, C) log-probabilities and
    integer targets ``t`` (N,).

    Backward: ``dL/dx[i, c] = -1/N`` where ``c = t_i``, 0 elsewhere.
    """

    def forward(self, input, target):
        check_input("NLLLoss", input, 2)
        self._t = _check_target("NLLLoss", input, target)
        self._shape, self._dtype = input.shape, input.dtype
        picked = input[np.arange(input.shape[0]), self._t]
        return _finite("NLLLoss", input.dtype.type(-picked.mean()))

    __call__ = forward

    def backward(self):
        n = self._shape[0]
        grad = np.zeros(self._shape, dtype=self._dtype)
        grad[np.arange(n), self._t] = -1.0 / n
        return grad


class CrossEntropyLoss:
    r"""Log-softmax followed by NLL, in one step: logits in, mean loss out.

    Backward: ``dL/dx = (softmax(x) - onehot(t)) / N``.
    """

    def __init__(self):
        self._log_softmax = LogSoftmax(dim=1)
        self._nll = NLLLoss()

    def forward(self, input, target):
        check_input("CrossEntropyLoss", input, 2)
        return self._nll.forward(self._log_softmax.forward(input), target)

    __call__ = forward

    def backward(self):
        return self._log_softmax.backward(self._nll.backward())
