"""The architectures weights can be exchanged for, by name.

A safetensors file holds tensors, not a network: to read one, npcnn must know which network the
tensors belong to. ``--model NAME`` picks it from :data:`ARCHITECTURES`; a file npcnn wrote records
the name in its metadata (``npcnn_model``). The PyTorch twin of each entry is built from the same
layer list in the same order, so the state-dict keys (``0.weight``, ``3.running_mean``, ...) agree.

The model zoo's nets for 1x28x28 images are registered at the end, under their
:data:`npcnn.models.MODELS` names (which ``model.npz`` records as ``npz_architecture``).
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..models import INPUT_SHAPES, MODELS, PARAMETERS, seed_cnn


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


# --------------------------------------------------------------------------- the model zoo (npcnn.models.zoo)
_TORCH_ZOO = {
    "lenet5": """nn.Sequential(
    nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
    nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
    nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10),
    nn.LogSoftmax(dim=1))""",
    "madry-mnist": """nn.Sequential(
    nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 10), nn.LogSoftmax(dim=1))""",
    "wong-mnist": """nn.Sequential(
    nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10), nn.LogSoftmax(dim=1))""",
    "small-vgg": """nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10), nn.LogSoftmax(dim=1))""",
    "small-resnet": """# class Residual(nn.Module): forward(x) = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
# block(i, o, s) = Residual(nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
#                                         nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)),
#                           None if (i, s) == (o, 1) else nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False),
#                                                                        nn.BatchNorm2d(o)))
nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
    block(16, 16, 1), nn.ReLU(), block(16, 32, 2), nn.ReLU(), block(32, 64, 2), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10), nn.LogSoftmax(dim=1))""",
}
_ZOO_DESCRIPTIONS = {
    "lenet5": "LeNet-5, LeCun et al. 1998 (tanh, average pooling)",
    "madry-mnist": "Madry et al.'s MNIST net (MadryLab/mnist_challenge)",
    "wong-mnist": "Wong et al.'s MNIST net (locuslab/fast_adversarial)",
    "small-vgg": "a small VGG-style net (conv-conv-pool twice, fc 256)",
    "small-resnet": "a small ResNet (three basic blocks, BatchNorm, global average pooling)",
}


def _zoo_builder(name):
    return lambda num_classes=10, dtype=np.float32: MODELS[name](num_classes=num_classes, dtype=dtype)


for _name, _torch in _TORCH_ZOO.items():
    register(Architecture(
        _name, f"{_ZOO_DESCRIPTIONS[_name]} ({PARAMETERS[_name]:,} parameters)", _zoo_builder(_name),
        batchnorm=False, npz_architecture=_name, input_shape=INPUT_SHAPES[_name], torch=_torch))
