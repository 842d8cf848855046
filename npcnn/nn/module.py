"""Parameter, Module and Sequential: the layer contract.

Every layer implements two methods::

    forward(x)          -> y       caches on ``self`` what backward needs
    backward(grad_out)  -> grad_x  adds dL/dparam into each ``Parameter.grad``

``backward`` must be called after the ``forward`` whose result it
differentiates. Gradients *accumulate* into ``.grad`` as in PyTorch, so call
``zero_grad()`` (or the optimiser's) between steps.
"""
from collections import OrderedDict

import numpy as np

from ..io import load_npz, save_npz


class Parameter:
    """A trainable array and its gradient.

    ``data`` is updated in place by the optimisers; ``grad`` is ``None`` until
    a backward pass fills it, and has the shape and dtype of ``data``.
    Anything can be a Parameter, an input image included: the attacks wrap
    the image in one and hand it to the same :class:`~npcnn.optim.Adam`.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.asarray(data)
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def accumulate(self, grad, owned=False):
        """Add ``grad`` into ``self.grad`` (the first call stores a copy).

        ``owned=True`` promises that nobody else holds ``grad`` (a fresh
        result), so the first call may keep it without copying.
        """
        if self.grad is None:
            if owned and isinstance(grad, np.ndarray) and grad.dtype == self.data.dtype \
                    and grad.shape == self.data.shape and grad.flags.c_contiguous:
                self.grad = grad
            else:
                self.grad = np.array(grad, dtype=self.data.dtype, copy=True, order="C")   # as Adam's kernel reads it
        else:
            self.grad += grad

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and of :class:`Sequential`.

    Parameters are found by looking at the instance attributes, in the order
    they were set, like PyTorch; buffers (state that is saved but not
    trained, such as BatchNorm's running statistics) are the attribute names
    listed in ``_buffers``.
    """

    _buffers = ()
    training = True

    # --- the contract ---------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out, param_grads=True):
        """Return dL/dx; add dL/dparam to each Parameter unless ``param_grads`` is False."""
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # --- modes ------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    # --- traversal ----------------------------------------------------------
    def children(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def modules(self):
        yield self
        for _, child in self.children():
            yield from child.modules()

    def named_parameters(self, prefix=""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for name in self._buffers:
            yield prefix + name, getattr(self, name)
        for name, child in self.children():
            yield from child.named_buffers(prefix + name + ".")

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # --- saving -------------------------------------------------------------
    def state_dict(self):
        """Parameters and buffers by PyTorch-style key (``0.weight``, ``3.running_mean``).

        The arrays are copies, so the dict is a snapshot.
        """
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = p.data.copy()
        for name, b in self.named_buffers():
            state[name] = np.array(b, copy=True)
        return state

    def load_state_dict(self, state):
        """Copy arrays from ``state`` into this module (keys and shapes must match exactly)."""
        own = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = set(own) | set(buffers)
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, value in state.items():
            value = np.asarray(value)
            target = own[name].data if name in own else buffers[name]
            if np.shape(target) != value.shape:
                raise ValueError(
                    f"load_state_dict: {name} has shape {value.shape}, expected {np.shape(target)}"
                )
            if name in own:
                own[name].data[...] = value
            else:
                self._set_buffer(name, value)

    def _set_buffer(self, dotted, value):
        *path, leaf = dotted.split(".")
        owner = self
        for part in path:
            owner = owner[int(part)] if isinstance(owner, Sequential) else getattr(owner, part)
        current = getattr(owner, leaf)
        if isinstance(current, np.ndarray) and current.ndim > 0:
            current[...] = value
        else:
            setattr(owner, leaf, np.asarray(value, dtype=np.asarray(current).dtype))

    def save(self, path, **extra):
        """Write the state dict (and any ``extra`` arrays) to ``path`` as ``.npz``, atomically."""
        save_npz(path, {**self.state_dict(), **extra})

    def load(self, path):
        """Load a state dict written by :meth:`save` (extra keys are ignored)."""
        arrays = load_npz(path)
        own = {k for k, _ in self.named_parameters()} | {k for k, _ in self.named_buffers()}
        self.load_state_dict({k: v for k, v in arrays.items() if k in own})
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``backward(grad, param_grads=False)`` returns only the gradient with
    respect to the network's input and skips every dL/dW GEMM: that is the
    path the occlusion and attack tools use.

    This is the plain container a learner reads: every layer runs its own
    forward and backward. Training and the analysis tools run the same layers
    through :func:`npcnn.fast.plan`, which fuses Conv2d -> ReLU -> MaxPool2d.
    """

    def __init__(self, *layers):
        self.layers = list(layers)

    def children(self):
        return [(str(i), m) for i, m in enumerate(self.layers)]

    def named_parameters(self, prefix=""):
        for name, child in self.children():
            yield from child.named_parameters(prefix + name + ".")

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out, param_grads=True, input_grad=True):
        """dL/dx of the whole net: each layer's backward, last layer first (parameter gradients added
        on the way, unless ``param_grads`` is False).

        ``input_grad`` is accepted for the fast path's sake (:mod:`npcnn.fast`, where False lets the
        first step skip dL/dx in training); here dL/dx is always computed.
        """
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out, param_grads=param_grads)
        return grad_out

    def __repr__(self):
        inner = "\n".join(f"  ({i}): " + repr(layer).replace("\n", "\n  ")   # nested blocks indented
                           for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


def check_input(layer, x, ndim, channels=None, channel_axis=1):
    """Raise a clear error naming ``layer`` when ``x`` has the wrong rank, channels or dtype."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: expected a numpy array, got {type(x).__name__}")
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim or ())
    if ndims and x.ndim not in ndims:
        want = " or ".join(f"{d}-d" for d in ndims)
        raise ValueError(f"{layer}: expected a {want} input, got shape {x.shape}")
    if x.ndim == 0:
        raise ValueError(f"{layer}: expected an array with at least one dimension, got a scalar")
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(
            f"{layer}: expected {channels} channels at axis {channel_axis}, got shape {x.shape}"
        )
    if x.dtype.kind != "f":
        raise TypeError(f"{layer}: expected a floating-point input, got dtype {x.dtype}")


def check_dtype(layer, x, dtype):
    """A layer never silently changes dtype: mixing float32 and float64 is an error."""
    if x.dtype != dtype:
        raise TypeError(
            f"{layer}: input dtype {x.dtype} does not match the layer's parameters ({dtype}); "
            f"convert the input with x.astype({np.dtype(dtype).name!r}) or build the layer with dtype={x.dtype.name!r}"
        )
