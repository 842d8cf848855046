"""Optimisers: they update any :class:`~npcnn.nn.Parameter`, an input image included.

The update rules are PyTorch's (``torch.optim.Adam`` / ``SGD``, single-tensor
path), including the order of ``maximize`` and ``weight_decay``.
"""
import math

import numpy as np

from . import kernels
from .nn.module import Parameter


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not all(isinstance(p, Parameter) for p in self.params):
            raise TypeError(f"{type(self).__name__}: every parameter must be an npcnn Parameter")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: learning rate must be positive, got {lr}")
        self.lr = float(lr)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _direction(self, p):
        """The gradient to descend: -grad when maximising (before weight decay, as PyTorch)."""
        return -p.grad if self.maximize else p.grad


class Adam(Optimizer):
    r"""Adam (Kingma & Ba), as ``torch.optim.Adam``.

    With ``g`` the gradient (negated when ``maximize``, plus ``weight_decay * p``)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Each step updates each parameter in place in one pass over memory (a
    numba kernel, :func:`npcnn.kernels.adam_update`), so no array is
    allocated per step. Unlike PyTorch, moments below the dtype's smallest
    normal number are set to 0: subnormal arithmetic is ~100x slower on the
    CPU, and the weights of dead units would otherwise carry them for ever
    (see the kernel).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False):
        super().__init__(params, lr)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"Adam: eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        self.betas, self.eps, self.weight_decay, self.maximize = tuple(betas), eps, weight_decay, maximize
        self.state = [None] * len(self.params)
        self.steps = [0] * len(self.params)   # per parameter, as torch: one that gets its first
        self.t = 0                            # gradient late starts its bias correction at step 1

    def state_dict(self):
        """Step count and moment estimates, as plain arrays (for checkpoints)."""
        out = {"t": np.array(self.t)}
        for i, s in enumerate(self.state):
            if s is not None:
                out[f"{i}.exp_avg"], out[f"{i}.exp_avg_sq"] = s[0].copy(), s[1].copy()
                out[f"{i}.step"] = np.array(self.steps[i])
        return out

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for i, p in enumerate(self.params):
            if f"{i}.exp_avg" in state:
                m = np.array(state[f"{i}.exp_avg"], dtype=p.dtype)
                v = np.array(state[f"{i}.exp_avg_sq"], dtype=p.dtype)
                self.state[i] = (m, v, np.empty_like(p.data))
                self.steps[i] = int(state.get(f"{i}.step", self.t))
            else:
                self.state[i] = None
                self.steps[i] = 0

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        constants = {}          # per dtype: the kernel's constants in that dtype, made once a step
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            self.steps[i] += 1
            t = self.steps[i]
            bc2_sqrt = math.sqrt(1.0 - b2 ** t)
            step_size = self.lr / (1.0 - b1 ** t)
            if self.state[i] is None:
                self.state[i] = (np.zeros_like(p.data), np.zeros_like(p.data), np.empty_like(p.data))
            m, v, tmp = self.state[i]
            if p.data.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous:
                # the fast path: one numba pass reads g, m, v, p and writes m, v, p
                dt = p.dtype.type
                if dt not in constants:
                    constants[dt] = (dt(-1.0 if self.maximize else 1.0), dt(self.weight_decay), dt(b1), dt(1 - b1),
                                     dt(b2), dt(1 - b2))
                sign, weight_decay, b1_, c1, b2_, c2 = constants[dt]
                kernels.adam_update(p.data.reshape(-1), np.ascontiguousarray(p.grad, dtype=p.dtype).reshape(-1),
                                    m.reshape(-1), v.reshape(-1), sign, weight_decay, b1_, c1, b2_, c2, dt(step_size),
                                    dt(bc2_sqrt), dt(self.eps), np.finfo(p.dtype).tiny)
            else:
                self._numpy_step(p, m, v, tmp, b1, b2, step_size, bc2_sqrt)

    def _numpy_step(self, p, m, v, tmp, b1, b2, step_size, bc2_sqrt):
        """The same update in plain numpy (for parameters that are not contiguous arrays)."""
        g = self._direction(p)
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        dt = p.dtype.type
        m *= dt(b1)
        m += dt(1 - b1) * g
        v *= dt(b2)
        np.multiply(g, g, out=tmp)
        tmp *= dt(1 - b2)
        v += tmp
        tiny = np.finfo(p.dtype).tiny                  # subnormal moments to 0, as the kernel does
        m[np.abs(m) < tiny] = 0
        v[v < tiny] = 0
        np.sqrt(v, out=tmp)
        tmp /= dt(bc2_sqrt)
        tmp += dt(self.eps)
        np.divide(m, tmp, out=tmp)
        tmp *= dt(step_size)
        p.data -= tmp


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    With ``g`` the gradient (negated when ``maximize``, plus ``weight_decay * p``)::

        buf = g                      (first step)
        buf = momentum * buf + g     (later steps)
        d = g + momentum * buf if nesterov else buf
        p -= lr * d
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False, maximize=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: Nesterov momentum requires a positive momentum")
        self.momentum, self.weight_decay, self.nesterov, self.maximize = momentum, weight_decay, nesterov, maximize
        self.buffers = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = self._direction(p)
            if self.weight_decay:
                d = d + self.weight_decay * p.data
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = np.array(d, copy=True)
                else:
                    self.buffers[i] *= p.dtype.type(self.momentum)
                    self.buffers[i] += d
                d = d + self.momentum * self.buffers[i] if self.nesterov else self.buffers[i]
            p.data -= p.dtype.type(self.lr) * d


LR_SCHEDULES = ("constant", "cyclic")


def lr_schedule(name, lr, epochs):
    """The learning rate as a function of training progress ``t`` in epochs (epoch + share of it done), or
    None for ``"constant"`` (the optimiser's own ``lr`` throughout).

    ``"cyclic"`` (Wong, Rice & Kolter 2020, their MNIST and CIFAR-10 runs): linear from 0 up to ``lr`` over
    the first 2/5 of the training, then linear back down to 0 at its end; a step's rate is taken at the
    progress the step completes (``epoch + (step + 1) / steps per epoch``).
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {name!r}")
    if name == "constant":
        return None
    peak, end = 2 * epochs / 5, float(epochs)
    return lambda t: float(np.interp(t, [0.0, peak, end], [0.0, lr, 0.0]))
