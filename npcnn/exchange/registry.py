"""The architectures weights can be exchanged for, by name.

A safetensors file holds tensors, not a network: to read one, npcnn must know which network the
tensors belong to. ``--model NAME`` picks it from :data:`ARCHITECTURES`; a file npcnn wrote records
the name in its metadata (``npcnn_model``). The PyTorch twin of each entry is built from the same
layer list in the same order, so the state-dict keys (``0.weight``, ``3.running_mean``, ...) agree.

The model zoo adds its nets here with :func:`register`.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..models import seed_cnn


@dataclass(frozen=True)
class Architecture:
    """A named network builder: ``build(num_classes, dtype)`` -> an npcnn Sequential ending in LogSoftmax.

    ``batchnorm`` and ``npz_architecture`` say how :func:`npcnn.models.save_model` records it in a
    run folder's ``model.npz``; ``torch`` is the PyTorch code that builds the same net (for the
    README and the error messages).
    """

    name: str
    description: str
    build: Callable
    batchnorm: bool
    npz_architecture: str = "seed_cnn"
    input_shape: tuple = (1, 28, 28)
    torch: str = ""


ARCHITECTURES = {}


def register(arch):
    """Add an :class:`Architecture` under its name (a name is registered once)."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    ARCHITECTURES[arch.name] = arch
    return arch


def get(name):
    """The :class:`Architecture` called ``name``; a ValueError listing the known names otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def name_of(batchnorm, npz_architecture="seed_cnn"):
    """The registered name of a run folder's net (as ``model.npz`` records it)."""
    for arch in ARCHITECTURES.values():
        if arch.npz_architecture == npz_architecture and arch.batchnorm == bool(batchnorm):
            return arch.name
    raise ValueError(f"no exchange name for architecture {npz_architecture!r} (batchnorm={bool(batchnorm)})")


_TORCH_SEED = """nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),{bn1}
    nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),{bn2}
    nn.Flatten(), nn.Linear(32 * 7 * 7, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1))"""

register(Architecture(
    "seed-cnn", "the report's reference CNN (799,078 parameters)",
    lambda num_classes=10, dtype=np.float32: seed_cnn(False, num_classes, dtype=dtype), batchnorm=False,
    torch=_TORCH_SEED.format(bn1="", bn2="")))
register(Architecture(
    "seed-cnn-bn", "the reference CNN with BatchNorm2d after each max-pool (799,206 parameters)",
    lambda num_classes=10, dtype=np.float32: seed_cnn(True, num_classes, dtype=dtype), batchnorm=True,
    torch=_TORCH_SEED.format(bn1=" nn.BatchNorm2d(32),", bn2=" nn.BatchNorm2d(32),")))
