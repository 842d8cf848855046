"""A residual block on the fast path: its body and shortcut planned as fast sequences, and the
ReLU that follows the block (as in a ResNet) folded into the addition."""
import numpy as np

from ..nn.activation import ReLU
from ..nn.residual import Residual
from .norm_act import relu_grad


def residual_length(layers, i):
    """How many layers from ``layers[i]`` a :class:`FastResidual` takes: 2 for a Residual followed by a
    ReLU, 1 for a Residual alone, 0 when ``layers[i]`` is not a Residual."""
    if type(layers[i]) is not Residual:
        return 0
    return 2 if i + 1 < len(layers) and type(layers[i + 1]) is ReLU else 1


class FastResidual:
    """:class:`~npcnn.nn.Residual` (and the ReLU after it, if given) with its body and shortcut each run
    as a fast sequence (``plan``), same math:

    * forward: ``s = body(x) + shortcut(x)``, then ``y = max(s, 0)`` in place when the ReLU is folded in;
    * backward: ``G = dL/dy * [y > 0]`` (the ReLU's rule, ``y > 0`` exactly where ``s > 0``), then
      ``dL/dx = body.backward(G) + shortcut.backward(G)`` (``+ G`` for the identity shortcut).
    """

    def __init__(self, residual, plan, relu=None):
        self.residual, self.relu = residual, relu
        self.body = plan(residual.body)
        self.shortcut = None if residual.shortcut is None else plan(residual.shortcut)

    def __repr__(self):
        return f"FastResidual({self.body!r}, {self.shortcut!r}, relu={self.relu is not None})"

    def forward(self, x):
        y = self.body.forward(x)
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        if y.shape != skip.shape:
            return self.residual.forward(x)        # which raises the readable block's one-line error
        y = y + skip                               # a new array (the body's last layer may keep its output)
        if self.relu is not None:
            np.maximum(y, 0, out=y)
        self._y = y
        return y

    def backward(self, grad_out, param_grads=True):
        if self.relu is not None:
            grad_out = relu_grad(grad_out, self._y)
        dx = self.body.backward(grad_out, param_grads=param_grads)
        if self.shortcut is None:
            return dx + grad_out
        return dx + self.shortcut.backward(grad_out, param_grads=param_grads)
