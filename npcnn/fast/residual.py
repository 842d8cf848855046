"""A residual block on the fast path: its body and shortcut planned as fast sequences, and the
ReLU that follows the block (as in a ResNet) folded into the addition."""
import numpy as np

from ..nn.activation import ReLU
from ..nn.residual import Residual
from .norm_act import add_relu, relu_grad


def residual_length(layers, i):
    """How many layers from ``layers[i]`` a :class:`FastResidual` takes: 2 for a Residual followed by a
    ReLU, 1 for a Residual alone, 0 when ``layers[i]`` is not a Residual."""
    if type(layers[i]) is not Residual:
        return 0
    return 2 if i + 1 < len(layers) and type(layers[i + 1]) is ReLU else 1


class FastResidual:
    """:class:`~npcnn.nn.Residual` (and the ReLU after it, if given) with its body and shortcut each run
    as a fast sequence (``plan``), same math:

    * forward: ``s = body(x) + shortcut(x)``, then ``y = max(s, 0)`` when the ReLU is folded in (one pass);
    * backward: ``G = dL/dy * [y > 0]`` (the ReLU's rule, ``y > 0`` exactly where ``s > 0``), then
      ``dL/dx = body.backward(G) + shortcut.backward(G)`` (``+ G`` for the identity shortcut).
    """

    def __init__(self, residual, plan, relu=None):
        self.residual, self.relu = residual, relu
        self.body = plan(residual.body)
        self.shortcut = None if residual.shortcut is None else plan(residual.shortcut)

    def __repr__(self):
        return f"FastResidual({self.body!r}, {self.shortcut!r}, relu={self.relu is not None})"

    def forward(self, x, inference=False, winograd_forward=None):
        """``inference``: no backward follows; ``winograd_forward``: the convs may take Winograd (both passed
        on to the body's and the shortcut's steps; None: only in inference)."""
        winograd_forward = inference if winograd_forward is None else winograd_forward
        y = self.body.forward(x, inference, winograd_forward)
        skip = x if self.shortcut is None else self.shortcut.forward(x, inference, winograd_forward)
        if y.shape != skip.shape:
            return self.residual.forward(x)        # which raises the readable block's one-line error
        # a new array: the body's last step may keep its output (a ConvAct with a ReLU does)
        self._y = add_relu(y, skip, self.relu is not None)
        return self._y

    def backward(self, grad_out, param_grads=True):
        if self.relu is not None:
            grad_out = relu_grad(grad_out, self._y)
        dx = self.body.backward(grad_out, param_grads=param_grads)
        other = grad_out if self.shortcut is None else self.shortcut.backward(grad_out, param_grads=param_grads)
        # the sum goes into the body's dL/dx, which no step reads again, unless it is (a view of) the
        # other gradient or cannot be written (a readable Flatten hands back a view of its gradient)
        in_place = dx.flags.writeable and not np.may_share_memory(dx, other)
        return add_relu(dx, other, False, out=dx if in_place else None)
