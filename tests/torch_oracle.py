"""PyTorch as the test oracle: the same model in both libraries, weights copied both ways.

Importable from any test file in ``tests/`` (pytest puts this folder on
``sys.path``)::

    from torch_oracle import to_torch, torch_state_from, load_into_npcnn, rel_err, TOL

* ``to_torch(m)``          an equivalent ``torch.nn.Module`` (same class per layer, same
                           hyper-parameters, same dtype, same train/eval mode, same
                           weights and buffers, same ``state_dict`` keys).
* ``torch_state_from(m)``  ``m.state_dict()`` as torch tensors (loadable by ``to_torch(m)``).
* ``load_into_npcnn(m, t)`` copy a torch module's (or state dict's) weights into ``m``.
* ``run_npcnn`` / ``run_torch`` one forward + backward with a given upstream gradient,
                           returning (y, dx, {name: param grad}) as numpy arrays.
* ``rel_err(a, b)``        ``max|a - b| / max(max|b|, tiny)`` (b is the reference).
* ``TOL[dtype]``           the per-dtype tolerance of the layer tests (1e-4 / 1e-10).
"""
from collections import OrderedDict

import numpy as np
import torch

import npcnn.nn as nn

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
TINY = 1e-30


def rel_err(a, b):
    """Largest absolute difference relative to the largest absolute value of the reference ``b``."""
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    assert a.shape == b.shape, f"shape mismatch {a.shape} vs {b.shape}"
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), TINY))


def to_numpy(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def module_dtype(m, default=np.float64):
    """The dtype of an npcnn module: of its first parameter or floating buffer, else ``default``."""
    for _, p in m.named_parameters():
        return np.dtype(p.dtype)
    for _, b in m.named_buffers():
        if np.asarray(b).dtype.kind == "f":
            return np.asarray(b).dtype
    return np.dtype(default)


class Residual(torch.nn.Module):
    """The PyTorch twin of :class:`npcnn.nn.Residual`: ``body(x) + shortcut(x)`` (identity if None),
    with the same ``body.*`` / ``shortcut.*`` state-dict keys."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def _torch_layer(layer):
    if isinstance(layer, nn.Sequential):
        return torch.nn.Sequential(*[_torch_layer(child) for child in layer])
    if isinstance(layer, nn.Residual):
        return Residual(_torch_layer(layer.body), None if layer.shortcut is None else _torch_layer(layer.shortcut))
    if isinstance(layer, nn.AvgPool2d):
        return torch.nn.AvgPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding,
                                  count_include_pad=layer.count_include_pad)
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return torch.nn.AdaptiveAvgPool2d(layer.output_size)
    if isinstance(layer, nn.Tanh):
        return torch.nn.Tanh()
    if isinstance(layer, nn.Sigmoid):
        return torch.nn.Sigmoid()
    if isinstance(layer, nn.LeakyReLU):
        return torch.nn.LeakyReLU(layer.negative_slope)
    if isinstance(layer, nn.Conv2d):
        return torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                               padding=layer.padding, bias=layer.bias is not None)
    if isinstance(layer, nn.MaxPool2d):
        return torch.nn.MaxPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        cls = torch.nn.BatchNorm2d if isinstance(layer, nn.BatchNorm2d) else torch.nn.BatchNorm1d
        return cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
    if isinstance(layer, nn.Linear):
        return torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, nn.ReLU):
        return torch.nn.ReLU()
    if isinstance(layer, nn.Flatten):
        return torch.nn.Flatten(layer.start_dim, layer.end_dim)
    if isinstance(layer, nn.LogSoftmax):
        return torch.nn.LogSoftmax(dim=layer.dim)
    if isinstance(layer, nn.Softmax):
        return torch.nn.Softmax(dim=layer.dim)
    if isinstance(layer, nn.Dropout):
        return torch.nn.Dropout(layer.p)
    raise TypeError(f"torch_oracle: no torch equivalent for {type(layer).__name__}")


def torch_state_from(m):
    """The npcnn module's state dict as torch tensors (copies), keyed exactly as npcnn keys it."""
    return OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in m.state_dict().items())


def to_torch(m, dtype=None):
    """An equivalent torch module with ``m``'s weights, buffers, dtype and train/eval mode."""
    dtype = np.dtype(dtype) if dtype is not None else module_dtype(m)
    t = _torch_layer(m).to(TORCH_DTYPE[dtype])
    t.load_state_dict(torch_state_from(m), strict=True)
    _copy_modes(m, t)
    return t


def _copy_modes(m, t):
    for name, child_m in m.children():        # a Sequential's layers, a Residual's body and shortcut
        _copy_modes(child_m, t[int(name)] if isinstance(m, nn.Sequential) else getattr(t, name))
    t.training = bool(m.training)


def load_into_npcnn(m, source):
    """Copy a torch module's (or torch state dict's) parameters and buffers into ``m``."""
    state = source.state_dict() if isinstance(source, torch.nn.Module) else source
    m.load_state_dict({k: to_numpy(v) for k, v in state.items()})
    return m


def run_npcnn(m, x, grad_out):
    """Forward ``x``, backward ``grad_out`` (fresh grads); returns (y, dx, {name: grad or None})."""
    m.zero_grad()
    y = m.forward(x)
    dx = m.backward(grad_out.copy())
    grads = {k: (None if p.grad is None else p.grad.copy()) for k, p in m.named_parameters()}
    return y, dx, grads


def run_torch(t, x, grad_out):
    """Forward ``x``, backward ``grad_out`` through a torch module; returns numpy (y, dx, {name: grad})."""
    t.zero_grad(set_to_none=True)
    # a C-contiguous copy: torch's channels-last kernels are not what is being compared (and its
    # BatchNorm2d backward on channels-last memory of shape (1, C, 1, W) is wrong in 2.13)
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    y = t(xt)
    y.backward(torch.from_numpy(np.array(grad_out, copy=True)))
    grads = {k: (None if p.grad is None else to_numpy(p.grad).copy()) for k, p in t.named_parameters()}
    return to_numpy(y).copy(), to_numpy(xt.grad).copy(), grads
