"""Fully connected layer and Flatten."""
import numpy as np

from .. import parallel
from .init import as_generator, default_uniform
from .module import Module, Parameter, check_dtype, check_input


class Linear(Module):
    r"""``y = x W^T + b``, as ``torch.nn.Linear``.

    Shapes: x (*, in_features) -> y (*, out_features); W (out, in), b (out,).

    Backward, with X and G = dL/dy flattened to 2-d (rows = samples):

    * ``dL/dW = G^T @ X``
    * ``dL/db = sum of G over rows``
    * ``dL/dx = G @ W``
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if self.in_features <= 0 or self.out_features <= 0:
            raise ValueError(f"Linear: features must be positive, got {in_features}, {out_features}")
        rng = as_generator(rng)
        self.weight = Parameter(default_uniform((self.out_features, self.in_features), self.in_features, rng, dtype))
        self.bias = Parameter(default_uniform((self.out_features,), self.in_features, rng, dtype)) if bias else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def output_shape(self, input_shape):
        return (*input_shape[:-1], self.out_features)

    def forward(self, x):
        check_input(self, x, None, self.in_features, channel_axis=-1)
        check_dtype(self, x, self.weight.dtype)
        self._x = x
        y = parallel.matmul(x.reshape(-1, self.in_features), self.weight.data.T)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_out, param_grads=True):
        if param_grads:
            x2 = self._x.reshape(-1, self.in_features)
            g2 = grad_out.reshape(-1, self.out_features)
            self.weight.accumulate(parallel.matmul(g2.T, x2), owned=True)
            if self.bias is not None:
                self.bias.accumulate(g2.sum(axis=0), owned=True)
        g2 = grad_out.reshape(-1, self.out_features)
        return parallel.matmul(g2, self.weight.data).reshape(*grad_out.shape[:-1], self.in_features)


class Flatten(Module):
    """Flatten dims ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``.

    Backward: reshape the gradient back to the input's shape.
    """

    def __init__(self, start_dim=1, end_dim=-1):
        self.start_dim = start_dim
        self.end_dim = end_dim

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def output_shape(self, input_shape):
        nd = len(input_shape)
        s, e = self.start_dim % nd, self.end_dim % nd
        return (*input_shape[:s], int(np.prod(input_shape[s:e + 1])), *input_shape[e + 1:])

    def forward(self, x):
        self._x_shape = x.shape
        return x.reshape(self.output_shape(x.shape))

    def backward(self, grad_out, param_grads=True):
        return grad_out.reshape(self._x_shape)
