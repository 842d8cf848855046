"""Element-wise activations, (log-)softmax and dropout."""
import numpy as np

from .init import as_generator
from .module import Module


class ReLU(Module):
    r"""``y = max(x, 0)``.

    Backward: ``dL/dx = dL/dy * [x > 0]`` (0 at x = 0, as PyTorch). The mask
    is kept from the forward pass; neither the input nor the incoming
    gradient is modified.
    """

    def forward(self, x):
        self._mask = x > 0
        return np.maximum(x, 0, dtype=x.dtype)

    def backward(self, grad_out, param_grads=True):
        return grad_out * self._mask


def check_dim(layer, x):
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError(f"{layer!r}: expected a floating-point numpy array, got {type(x).__name__}"
                        f"{'' if not isinstance(x, np.ndarray) else ' of dtype ' + str(x.dtype)}")
    if not -x.ndim <= layer.dim < x.ndim:
        raise ValueError(f"{layer!r}: dim={layer.dim} is out of range for an input of shape {x.shape}")


class LogSoftmax(Module):
    r"""``y = x - max(x) - log(sum(exp(x - max(x))))`` along ``dim`` (stable for any logits).

    Backward: with ``p = exp(y)``, ``dL/dx = g - p * sum(g)`` (sums along ``dim``).
    """

    def __init__(self, dim=1):
        self.dim = dim

    def extra_repr(self):
        return f"dim={self.dim}"

    def forward(self, x):
        check_dim(self, x)
        shifted = x - x.max(axis=self.dim, keepdims=True)
        self._y = shifted - np.log(np.exp(shifted).sum(axis=self.dim, keepdims=True))
        return self._y

    def backward(self, grad_out, param_grads=True):
        return grad_out - np.exp(self._y) * grad_out.sum(axis=self.dim, keepdims=True)


class Softmax(Module):
    r"""``y = exp(x - max) / sum(exp(x - max))`` along ``dim``.

    Backward: ``dL/dx = y * (g - sum(g * y))`` (sum along ``dim``).
    """

    def __init__(self, dim=1):
        self.dim = dim

    def extra_repr(self):
        return f"dim={self.dim}"

    def forward(self, x):
        check_dim(self, x)
        e = np.exp(x - x.max(axis=self.dim, keepdims=True))
        self._y = e / e.sum(axis=self.dim, keepdims=True)
        return self._y

    def backward(self, grad_out, param_grads=True):
        y = self._y
        return y * (grad_out - (grad_out * y).sum(axis=self.dim, keepdims=True))


class Dropout(Module):
    r"""Inverted dropout, as ``torch.nn.Dropout``: in training, each element is
    zeroed with probability ``p`` and the survivors scaled by ``1/(1-p)``; in
    eval mode it is the identity.

    Backward: ``dL/dx = dL/dy * mask / (1 - p)`` with the same mask.
    """

    def __init__(self, p=0.5, *, rng=None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = as_generator(rng)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        if self.p == 1.0:
            self._scale = np.zeros_like(x)
        else:
            keep = self.rng.random(x.shape) >= self.p
            self._scale = keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)
        return x * self._scale

    def backward(self, grad_out, param_grads=True):
        return grad_out if self._scale is None else grad_out * self._scale
