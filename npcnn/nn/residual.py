"""The residual block: two paths from one input, added (He et al. 2016)."""
from .module import Module, Sequential


def chain_shape(module, shape):
    """The output shape of ``module`` for inputs of ``shape``, through a Sequential's layers and any
    ``output_shape`` a layer has (a layer without one keeps the shape, as the activations do)."""
    if isinstance(module, Sequential):
        for layer in module:
            shape = chain_shape(layer, shape)
        return tuple(shape)
    return tuple(module.output_shape(shape)) if hasattr(module, "output_shape") else tuple(shape)


def _indent(text):
    """A child's (possibly multi-line) repr, its later lines indented by two spaces, as PyTorch prints."""
    return text.replace("\n", "\n  ")


class Residual(Module):
    r"""``y = body(x) + shortcut(x)``; the shortcut is the identity when None (``y = body(x) + x``).

    ``body`` and ``shortcut`` are any modules (usually Sequentials) whose outputs have the same shape:
    a body that changes the channels or strides down needs a shortcut that does too (a 1x1 Conv2d
    with the same stride and a BatchNorm2d, as in ResNet). The ReLU that follows the addition in a
    ResNet block is not part of this module: put a ReLU after it.

    Backward: this is where two gradients add. ``x`` reaches ``y`` along two paths, so by the chain
    rule its gradient is the sum of the two paths' gradients, each computed from the same
    ``g = dL/dy`` (the addition passes ``g`` unchanged to both of its inputs)::

        dL/dx = body.backward(g) + shortcut.backward(g)       (+ g itself for the identity shortcut)

    The identity path is why deep residual nets train: ``g`` reaches ``x`` undiminished however
    small the body's gradient is. The parameter gradients of both paths are filled on the way
    (unless ``param_grads`` is False). State-dict keys name the paths as PyTorch does:
    ``body.0.weight``, ``shortcut.1.running_mean``.
    """

    def __init__(self, body, shortcut=None):
        if not isinstance(body, Module) or not (shortcut is None or isinstance(shortcut, Module)):
            raise TypeError(f"Residual: body and shortcut must be npcnn modules, got {type(body).__name__} and "
                            f"{type(shortcut).__name__}")
        self.body = body
        self.shortcut = shortcut

    def output_shape(self, input_shape):
        return chain_shape(self.body, input_shape)

    def forward(self, x):
        y = self.body.forward(x)
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        if y.shape != skip.shape:
            raise ValueError(f"Residual: the body gives shape {y.shape} but the shortcut gives {skip.shape} for an "
                             f"input of shape {x.shape}; give a shortcut that maps the input to the body's shape")
        return y + skip

    def backward(self, grad_out, param_grads=True):
        dx = self.body.backward(grad_out, param_grads=param_grads)   # the gradient along the body ...
        if self.shortcut is None:
            return dx + grad_out                                      # ... plus along the identity
        return dx + self.shortcut.backward(grad_out, param_grads=param_grads)   # ... plus along the shortcut

    def __repr__(self):
        lines = [f"  (body): {_indent(repr(self.body))}"]
        if self.shortcut is not None:
            lines.append(f"  (shortcut): {_indent(repr(self.shortcut))}")
        return "Residual(\n" + "\n".join(lines) + "\n)"

