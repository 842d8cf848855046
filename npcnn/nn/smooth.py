"""More element-wise activations: Tanh, Sigmoid (the smooth squashing curves of LeNet-era nets) and LeakyReLU.

Each keeps what its backward needs from the forward pass (the output for Tanh and Sigmoid, whose
derivatives are functions of the output; the input's sign for LeakyReLU) and never modifies its input
or the incoming gradient.
"""
import numpy as np

from .module import Module, check_input


class Tanh(Module):
    r"""``y = tanh(x)``, as ``torch.nn.Tanh``. Any shape.

    Backward: ``dtanh/dx = 1 - tanh(x)^2``, so ``dL/dx = dL/dy * (1 - y^2)``, computed from the
    output kept by the forward pass (no second ``tanh``).
    """

    def forward(self, x):
        check_input(self, x, None)
        self._y = np.tanh(x)
        return self._y

    def backward(self, grad_out, param_grads=True):
        y = self._y
        return grad_out * (1 - y * y)


class Sigmoid(Module):
    r"""``y = 1 / (1 + exp(-x))``, as ``torch.nn.Sigmoid``. Any shape.

    Computed without overflow for large ``|x|``: with ``e = exp(-|x|)`` (never above 1),
    ``y = 1 / (1 + e)`` where ``x >= 0`` and ``y = e / (1 + e)`` where ``x < 0``.

    Backward: ``dsigma/dx = sigma(x) * (1 - sigma(x))``, so ``dL/dx = dL/dy * y * (1 - y)``, from
    the output kept by the forward pass.
    """

    def forward(self, x):
        check_input(self, x, None)
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        return self._y

    def backward(self, grad_out, param_grads=True):
        y = self._y
        return grad_out * y * (1 - y)


class LeakyReLU(Module):
    r"""``y = x`` where ``x > 0``, ``y = negative_slope * x`` elsewhere, as ``torch.nn.LeakyReLU``.

    Backward: the slope of the piece ``x`` is on, ``dL/dx = dL/dy * (1 if x > 0 else negative_slope)``.
    At ``x = 0`` exactly (the kink, where there is no derivative) the slope is ``negative_slope``,
    as in PyTorch.
    """

    def __init__(self, negative_slope=0.01):
        self.negative_slope = float(negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"

    def forward(self, x):
        check_input(self, x, None)
        self._positive = x > 0
        slope = x.dtype.type(self.negative_slope)
        return np.where(self._positive, x, x * slope)

    def backward(self, grad_out, param_grads=True):
        slope = grad_out.dtype.type(self.negative_slope)
        return np.where(self._positive, grad_out, grad_out * slope)
