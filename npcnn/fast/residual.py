"""A residual block on the fast path: its body and shortcut planned as fast sequences, and the
ReLU that follows the block (as in a ResNet) folded into the addition.

In a ResNet's basic block the body ends in a batch norm, and so does a projection shortcut. In
training each would write its normalised output, for the addition to read it back: here they leave
it (:meth:`npcnn.fast.ConvBatchNorm.forward_deferred`, their statistics taken), and one pass
computes ``max(bn(z) + bn_s(z_s), 0)`` (:func:`residual_sum`). The small ResNet's training step at
batch 64 writes and reads some 16 MB less.
"""
import numpy as np

from .. import kernels
from ..nn.activation import ReLU
from ..nn.residual import Residual
from .norm_act import add_relu, flat_views, relu_grad


def residual_length(layers, i):
    """How many layers from ``layers[i]`` a :class:`FastResidual` takes: 2 for a Residual followed by a
    ReLU, 1 for a Residual alone, 0 when ``layers[i]`` is not a Residual."""
    if type(layers[i]) is not Residual:
        return 0
    return 2 if i + 1 < len(layers) and type(layers[i + 1]) is ReLU else 1


class FastResidual:
    """:class:`~npcnn.nn.Residual` (and the ReLU after it, if given) with its body and shortcut each run
    as a fast sequence (``plan``), same math:

    * forward: ``s = body(x) + shortcut(x)``, then ``y = max(s, 0)`` when the ReLU is folded in (one pass,
      with the batch norms that end the body and the shortcut: :func:`residual_sum`);
    * backward: ``G = dL/dy * [y > 0]`` (the ReLU's rule, ``y > 0`` exactly where ``s > 0``), then
      ``dL/dx = body.backward(G) + shortcut.backward(G)`` (``+ G`` for the identity shortcut); a shortcut
      conv's col2im adds its share straight onto the body's dL/dx (``add_to``).
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
        y, bn = self.body.forward_deferred(x, inference, winograd_forward)
        skip, bn_skip = (x, None) if self.shortcut is None else self.shortcut.forward_deferred(x, inference,
                                                                                                winograd_forward)
        if y.shape != skip.shape:
            return self.residual.forward(x)        # which raises the readable block's one-line error
        # a new array: the body's last step may keep its output (a ConvAct with a ReLU does)
        self._y = residual_sum(y, bn, skip, bn_skip, self.relu is not None)
        return self._y

    def backward(self, grad_out, param_grads=True):
        if self.relu is not None:
            grad_out = relu_grad(grad_out, self._y)
        dx = self.body.backward(grad_out, param_grads=param_grads)
        # the sum goes into the body's dL/dx, which no step reads again, unless it is (a view of) the
        # other gradient or cannot be written (a readable Flatten hands back a view of its gradient)
        in_place = dx.flags.writeable and not np.may_share_memory(dx, grad_out)
        if self.shortcut is not None and in_place:     # the shortcut's conv scatters its dL/dx onto it
            return self.shortcut.backward(grad_out, param_grads=param_grads, add_to=dx)
        other = grad_out if self.shortcut is None else self.shortcut.backward(grad_out, param_grads=param_grads)
        in_place = in_place and not np.may_share_memory(dx, other)
        return add_relu(dx, other, False, out=dx if in_place else None)


def residual_sum(z, bn, skip, bn_skip, relu):
    """``bn(z) + bn_skip(skip)``, then ``max(., 0)`` if ``relu``, in a new array laid out as ``z``; ``bn`` and
    ``bn_skip`` are batch norms whose statistics are taken but not applied
    (:meth:`npcnn.fast.ConvBatchNorm.forward_deferred`), or None for a value to add as it is. One kernel pass
    (:func:`npcnn.kernels.batchnorm_add_rows`) when ``z`` and ``skip`` are laid out alike and densely and
    ``bn`` is given; else each batch norm by itself, then :func:`add_relu`."""
    out = np.empty_like(z)
    flats = flat_views(z, skip, out) if bn is not None else None
    if flats is None:
        z = z if bn is None else bn._normalized(z)
        skip = skip if bn_skip is None else bn_skip._normalized(skip)
        return add_relu(z, skip, relu, out=out)
    norms = [(b._mean, b._invstd, *b._affine(z.dtype)) for b in (bn, bn_skip if bn_skip is not None else bn)]
    c = z.shape[1]
    rows = [f.reshape(-1, c) for f in flats]
    kernels.batchnorm_add_rows(rows[0], *norms[0], rows[1], *norms[1], bn_skip is not None, relu, rows[2],
                               kernels.run_length(rows[0]))
    return out
