"""The fast path: the same net, run in fewer, larger steps. The readable layers stay as they are.

``npcnn.nn`` holds the layers a learner reads: each computes its own forward and backward, and
:class:`~npcnn.nn.Sequential` runs them one after another. This package runs the *same* layers,
with the same Parameters, faster:

* every Conv2d -> ReLU -> MaxPool2d triple becomes one :class:`~npcnn.fast.fused.ConvReLUPool`
  step (the conv output is never stored, the ReLU is folded into the pool's winners);
* BLAS is held to one thread while the net runs and npcnn shares its larger GEMMs among its own
  threads (:mod:`npcnn.parallel`), from batches big enough for that to pay.

Training, the Classifier (so occlusion, saliency and the attacks) and the benchmarks use it::

    net = fast.plan(model)          # a FastSequential over model's layers, or model itself when off
    out = net.forward(x)
    dx = net.backward(grad)         # dL/dW into model's Parameters, as model.backward would

It is switched off with one setting: ``NPCNN_FAST=0`` in the environment, or ``fast.ENABLED = False``
(then ``plan`` returns the model unchanged and every layer runs its readable code; a training
step of the reference net is then about 2x slower: see docs/performance.md). Both give the same
results to rounding: ``tests/test_kernels_fast.py``, ``tests/test_reference_net.py`` and
``tests/test_layers_torch.py`` hold each against the other and against PyTorch.
"""
import os
import weakref

from .. import parallel
from .fused import ConvReLUPool, fusable

__all__ = ["ENABLED", "plan", "FastSequential", "ConvReLUPool", "fusable"]

#: The fast path is on unless ``NPCNN_FAST=0``; set ``npcnn.fast.ENABLED = False`` to switch it off.
ENABLED = os.environ.get("NPCNN_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


class FastSequential:
    """A :class:`~npcnn.nn.Sequential`'s layers grouped into fast steps; forward / backward like it.

    Everything but ``forward`` and ``backward`` (parameters, ``train()`` / ``eval()``,
    ``state_dict()``, indexing) is the model's own: the steps share its layer objects and Parameters.
    The grouping is redone at every forward, so a model changed in place is followed; each fused step
    keeps its scratch buffers from one call to the next.
    """

    def __init__(self, model):
        self.model = model
        self._fused = {}        # (id(conv), id(relu), id(pool)) -> ConvReLUPool, buffers kept

    def __getattr__(self, name):                    # parameters(), train(), eval(), layers, ...
        return getattr(self.model, name)

    def __getitem__(self, i):
        return self.model[i]

    def __len__(self):
        return len(self.model)

    def __repr__(self):
        return f"FastSequential({self.steps()!r})"

    def steps(self):
        """The model's layers, each Conv2d -> ReLU -> MaxPool2d triple as one ConvReLUPool."""
        layers, steps, i = self.model.layers, [], 0
        while i < len(layers):
            if fusable(layers, i):
                key = tuple(id(layer) for layer in layers[i:i + 3])
                if key not in self._fused:
                    self._fused[key] = ConvReLUPool(*layers[i:i + 3])
                steps.append(self._fused[key])
                i += 3
            else:
                steps.append(layers[i])
                i += 1
        return steps

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        self._own_threads = parallel.own_threads_pay(x)
        with parallel.one_blas_thread(self._own_threads):   # npcnn shares out the GEMMs (npcnn.parallel)
            self._steps = self.steps()
            for step in self._steps:
                x = step.forward(x)
            return x

    def backward(self, grad_out, param_grads=True, input_grad=True):
        """dL/dx of the whole net (parameter gradients added on the way, unless ``param_grads`` is False).

        ``input_grad=False`` says nobody needs dL/dx (training): a fused first step then skips it and
        None is returned.
        """
        with parallel.one_blas_thread(getattr(self, "_own_threads", True)):
            steps = self._steps
            for step in reversed(steps):
                if isinstance(step, ConvReLUPool):
                    grad_out = step.backward(grad_out, param_grads, input_grad or step is not steps[0])
                else:
                    grad_out = step.backward(grad_out, param_grads=param_grads)
            return grad_out


_PLANS = weakref.WeakKeyDictionary()   # model -> its FastSequential (kept: its fused steps own buffers)


def plan(model, enabled=None):
    """``model`` (a Sequential) on the fast path, or ``model`` itself when the fast path is off
    (``enabled=False``, or ``ENABLED`` is False). Anything that is not a Sequential is returned as is.
    Cheap to call every time: one FastSequential is kept per model."""
    from ..nn.module import Sequential

    if not (ENABLED if enabled is None else enabled) or not isinstance(model, Sequential):
        return model
    if model not in _PLANS:
        _PLANS[model] = FastSequential(model)
    return _PLANS[model]
