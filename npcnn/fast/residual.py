"""A residual block on the fast path: its body and shortcut planned as fast sequences."""


class FastResidual:
    """:class:`~npcnn.nn.Residual` with its body and shortcut each run as a fast sequence (``plan``),
    same math: ``y = body(x) + shortcut(x)``, ``dL/dx = body.backward(g) + shortcut.backward(g)``
    (``+ g`` for the identity shortcut)."""

    def __init__(self, residual, plan):
        self.residual = residual
        self.body = plan(residual.body)
        self.shortcut = None if residual.shortcut is None else plan(residual.shortcut)

    def __repr__(self):
        return f"FastResidual({self.body!r}, {self.shortcut!r})"

    def forward(self, x):
        y = self.body.forward(x)
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        if y.shape != skip.shape:
            return self.residual.forward(x)        # which raises the readable block's one-line error
        return y + skip

    def backward(self, grad_out, param_grads=True):
        dx = self.body.backward(grad_out, param_grads=param_grads)
        if self.shortcut is None:
            return dx + grad_out
        return dx + self.shortcut.backward(grad_out, param_grads=param_grads)
