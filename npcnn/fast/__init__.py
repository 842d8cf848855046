"""The fast path: the same net, run in fewer, larger steps. The readable layers stay as they are.

``npcnn.nn`` holds the layers a learner reads: each computes its own forward and backward, and
:class:`~npcnn.nn.Sequential` runs them one after another. This package runs the *same* layers,
with the same Parameters, faster:

* every Conv2d -> ReLU -> MaxPool2d triple becomes one :class:`~npcnn.fast.fused.ConvReLUPool`
  step (the conv output is never stored, the ReLU is folded into the pool's winners);
* every other Conv2d, with the ReLU or Tanh after it, becomes one :class:`~npcnn.fast.conv_act.ConvAct`
  step: channels last, im2col + GEMM a few images at a time so the columns stay in cache, or computed
  directly when the conv has few filters and few weights per filter (LeNet-5's first); its output stays
  channels last through BatchNorm, the pools and the activations, to the next conv;
* every Conv2d -> BatchNorm2d (-> ReLU) becomes a :class:`~npcnn.fast.conv_norm.ConvBatchNorm`: the
  conv step and the batch norm in training, one conv with the batch norm folded into its weights in
  eval mode;
* every Residual, with the ReLU after it, becomes a :class:`~npcnn.fast.residual.FastResidual`: its
  body and shortcut planned the same way, the ReLU applied in place on the sum;
* every AvgPool2d without padding becomes a :class:`~npcnn.fast.avgpool.FastAvgPool`: one kernel pass
  over a channels-last input (LeNet-5's pools, after its fast convs);
* every BatchNorm followed by a ReLU becomes a :class:`~npcnn.fast.norm_act.BatchNormReLU`: the ReLU in
  place on the batch norm's output, its derivative in one pass;
* every Flatten followed by a Linear becomes a :class:`~npcnn.fast.flat_linear.FlatLinear`: on a
  channels-last batch the weight's columns are reordered instead of the batch;
* BLAS is held to one thread while the net runs and npcnn shares its larger GEMMs among its own
  threads (:mod:`npcnn.parallel`), from batches big enough for that to pay. Without this, BLAS's
  threads spin between GEMMs while numba's run the kernels, and two cores serve four threads.

Training, the Classifier (so occlusion, saliency and the attacks) and the benchmarks use it::

    net = fast.plan(model)          # a FastSequential over model's layers
    out = net.forward(x)
    dx = net.backward(grad)         # dL/dW into model's Parameters, as model.backward would
    probs = net.forward(x, inference=True)   # no backward to follow: 3x3 convs may take Winograd
                                             # (as in training, in a net without max-pools)

The fusion is switched off with one setting: ``NPCNN_FAST=0`` in the environment, or
``npcnn.fast.FUSE = False`` (or ``plan(model, fuse=False)``). Every layer then runs its readable code in
``npcnn/nn/``, with the threads still arranged as above; the README gives the cost. Both give the same
results to rounding: ``tests/test_kernels_fast.py``, ``tests/test_reference_net.py`` and
``tests/test_layers_torch.py`` hold each against the other and against PyTorch.
"""
import os

from .. import parallel
from ..nn.module import Sequential
from .avgpool import FastAvgPool, avgpool_length
from .conv_act import ConvAct, conv_act_length
from .conv_norm import ConvBatchNorm, conv_norm_length
from .flat_linear import FlatLinear, flat_linear_length
from .fused import ConvReLUPool, fusable
from .norm_act import BatchNormReLU, add_relu, norm_act_length
from .residual import FastResidual, residual_length
from . import winograd as fast_winograd

__all__ = ["FUSE", "plan", "FastSequential", "ConvReLUPool", "ConvAct", "ConvBatchNorm", "FastResidual", "FastAvgPool",
           "BatchNormReLU", "FlatLinear", "fusable"]

#: The steps whose forward takes ``inference`` (the conv steps, and residual blocks, which hold some).
_TAKE_INFERENCE = (ConvReLUPool, ConvAct, ConvBatchNorm, FastResidual)

#: ... and those that also take ``winograd_forward`` (no max-pool inside them that could depend on it).
_TAKE_WINOGRAD = (ConvAct, ConvBatchNorm, FastResidual)

#: Fuse Conv2d -> ReLU -> MaxPool2d unless ``NPCNN_FAST=0``; set ``npcnn.fast.FUSE = False`` to switch it off.
FUSE = os.environ.get("NPCNN_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


class FastSequential:
    """A :class:`~npcnn.nn.Sequential`'s layers grouped into fast steps; forward / backward like it.

    ``fuse=False`` keeps every layer a step of its own (the readable code), threads still arranged.
    Everything but ``forward``, ``backward``, ``train`` and ``eval`` (parameters, ``state_dict()``,
    indexing, ...) is the model's own: the steps share its layer objects and Parameters. The grouping
    is redone at every forward, so a model changed in place is followed; each fused step keeps its
    scratch buffers from one call to the next, as long as its three layers stay in the model.
    """

    def __init__(self, model, fuse=True):
        self.model, self.fuse = model, bool(fuse)
        self._fused = {}        # (id(conv), id(relu), id(pool)) -> ConvReLUPool, buffers kept
        self._steps, self._inference = None, False

    def __getattr__(self, name):                    # parameters(), zero_grad(), state_dict(), layers, ...
        if name.startswith("__") or name in ("model", "fuse", "_fused", "_steps", "_own_threads", "_inference"):
            raise AttributeError(name)              # (copy and pickle ask before __init__ has run)
        return getattr(self.model, name)

    def __getitem__(self, i):
        return self.model[i]

    def __len__(self):
        return len(self.model)

    def __repr__(self):
        return f"FastSequential({self.steps()!r}, fuse={self.fuse})"

    def train(self, mode=True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def steps(self):
        """The model's layers as fast steps when fusing: each Conv2d -> ReLU -> MaxPool2d triple one
        ConvReLUPool, each Conv2d -> BatchNorm2d (-> ReLU) one ConvBatchNorm, any other Conv2d (with the
        ReLU or Tanh after it) one ConvAct, each Residual (with the ReLU after it) a FastResidual over its
        planned body and shortcut, each AvgPool2d without padding a FastAvgPool, each BatchNorm with a
        ReLU after it a BatchNormReLU, each Flatten with a Linear after it a FlatLinear; the other layers
        as they are."""
        layers, steps, fused, i = self.model.layers, [], {}, 0
        while i < len(layers):
            if self.fuse and fusable(layers, i):
                take, make = 3, ConvReLUPool
            elif self.fuse and (take := conv_norm_length(layers, i)):
                make = ConvBatchNorm
            elif self.fuse and (take := conv_act_length(layers, i)):
                make = ConvAct
            elif self.fuse and (take := residual_length(layers, i)):
                make = _residual_step
            elif self.fuse and (take := avgpool_length(layers, i)):
                make = FastAvgPool
            elif self.fuse and (take := norm_act_length(layers, i)):
                make = BatchNormReLU
            elif self.fuse and (take := flat_linear_length(layers, i)):
                make = FlatLinear
            else:
                steps.append(layers[i])
                i += 1
                continue
            key = tuple(id(layer) for layer in layers[i:i + take])
            fused[key] = self._fused.get(key) or make(*layers[i:i + take])
            steps.append(fused[key])
            i += take
        self._fused = fused     # steps whose layers left the model go, with their buffers
        return steps

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x, inference=False, winograd_forward=None):
        """The net's output. ``inference=True`` promises that no backward follows (the Classifier's logits,
        the evaluation after each epoch), and ``backward`` then raises. ``winograd_forward``: whether the
        conv steps may compute their forward by Winograd (:mod:`npcnn.fast.winograd`); by default in
        inference, and in training too for a net without max-pools
        (:func:`npcnn.fast.winograd.forward_may_take_winograd` says why only then)."""
        return self._forward(x, inference, winograd_forward, defer_last_norm=False)[0]

    def forward_deferred(self, x, inference=False, winograd_forward=None):
        """``(z, bn)``: :meth:`forward`, except that when the last step is a ConvBatchNorm that can leave its
        batch norm ``bn`` to the caller (:meth:`ConvBatchNorm.forward_deferred`), ``z`` is the output before
        it; else ``(forward(x), None)``. A residual block applies ``bn`` in the pass of its sum."""
        return self._forward(x, inference, winograd_forward, defer_last_norm=True)

    def _forward(self, x, inference, winograd_forward, defer_last_norm):
        if winograd_forward is None:
            winograd_forward = inference or fast_winograd.forward_may_take_winograd(self.model)
        self._own_threads = parallel.own_threads_pay(x)
        self._inference = inference
        with parallel.one_blas_thread(self._own_threads):   # npcnn shares out the GEMMs (npcnn.parallel)
            self._steps = self.steps()
            for i, step in enumerate(self._steps):
                if defer_last_norm and i == len(self._steps) - 1 and isinstance(step, ConvBatchNorm):
                    return step.forward_deferred(x, inference, winograd_forward)
                if isinstance(step, _TAKE_WINOGRAD):
                    x = step.forward(x, inference, winograd_forward)
                else:
                    x = step.forward(x, inference) if isinstance(step, _TAKE_INFERENCE) else step.forward(x)
            return x, None

    def backward(self, grad_out, param_grads=True, input_grad=True, add_to=None):
        """dL/dx of the whole net (parameter gradients added on the way, unless ``param_grads`` is False).

        ``input_grad=False`` says nobody needs dL/dx (training): a fused first step then skips it and
        None is returned. ``add_to``: an array dL/dx is added to, in place, and which is returned instead
        (a residual block's other gradient); a first step that is a conv step adds it as it scatters.
        """
        if self._steps is None:
            raise RuntimeError("FastSequential.backward called before forward")
        if self._inference:
            raise RuntimeError("FastSequential.backward after forward(x, inference=True): run forward(x) for a backward")
        with parallel.one_blas_thread(self._own_threads):
            steps = self._steps
            for step in reversed(steps):
                if add_to is not None and step is steps[0] and isinstance(step, (ConvAct, ConvBatchNorm)):
                    return step.backward(grad_out, param_grads, True, add_to=add_to)
                if isinstance(step, (ConvReLUPool, ConvAct, ConvBatchNorm)):
                    grad_out = step.backward(grad_out, param_grads, input_grad or step is not steps[0])
                else:
                    grad_out = step.backward(grad_out, param_grads=param_grads)
            return grad_out if add_to is None or grad_out is None else add_relu(add_to, grad_out, False, out=add_to)


def _residual_step(block, relu=None):
    """A Residual (and the ReLU after it) as a FastResidual, its body and shortcut planned with fusion."""
    # a body or shortcut that is a single layer is planned as a one-layer Sequential (sharing that layer)
    return FastResidual(block, lambda part: plan(part if isinstance(part, Sequential) else Sequential(part), fuse=True),
                        relu)


def plan(model, fuse=None):
    """``model`` (a Sequential) on the fast path: a new :class:`FastSequential` over its layers, fusing
    unless ``fuse`` (default: :data:`FUSE`) is False. Keep it and call it again and again: its fused
    steps keep their buffers. Anything that is not a Sequential is returned as is."""
    if not isinstance(model, Sequential):
        return model
    return FastSequential(model, FUSE if fuse is None else fuse)
