"""Every net npcnn can build, by name: what ``npcnn train --model NAME`` and a model file's name refer to.

``MODELS[name](num_classes=10, dtype=np.float32, rng=0)`` builds the net; ``INPUT_SHAPES[name]`` is the
(C, H, W) of the images it takes. Names are written with hyphens; an underscore is accepted in their
place (``seed_cnn`` is ``seed-cnn``).
"""
from .reference import seed_cnn
from .zoo import lenet5, madry_mnist, small_resnet, small_vgg, small_vgg_cifar, wong_mnist

MODELS = {
    "seed-cnn": seed_cnn,                 # the report's reference net (batchnorm=True adds BatchNorm2d)
    "lenet5": lenet5,
    "madry-mnist": madry_mnist,
    "wong-mnist": wong_mnist,
    "small-vgg": small_vgg,
    "small-vgg-cifar": small_vgg_cifar,
    "small-resnet": small_resnet,
}

INPUT_SHAPES = {name: (1, 28, 28) for name in MODELS}
INPUT_SHAPES["small-vgg-cifar"] = (3, 32, 32)

#: parameters of each net for 10 classes (tests/test_zoo.py counts them in npcnn and in the PyTorch twin)
PARAMETERS = {"seed-cnn": 799_078, "lenet5": 61_706, "madry-mnist": 3_274_634, "wong-mnist": 166_406,
              "small-vgg": 870_634, "small-vgg-cifar": 1_116_970, "small-resnet": 77_754}


def model_name(name):
    """The registered spelling of ``name``; a ValueError listing the known names otherwise."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return key


def build_model(name, num_classes=10, *, batchnorm=False, dtype=None, rng=0):
    """The net called ``name`` (see :data:`MODELS`). ``batchnorm`` applies to the reference net only."""
    import numpy as np

    name = model_name(name)
    dtype = np.float32 if dtype is None else dtype
    if batchnorm and name != "seed-cnn":
        raise ValueError(f"--batchnorm applies only to the reference net (seed-cnn), not to {name}")
    if name == "seed-cnn":
        return seed_cnn(batchnorm=batchnorm, num_classes=num_classes, dtype=dtype, rng=rng)
    return MODELS[name](num_classes=num_classes, dtype=dtype, rng=rng)


def check_input_shape(name, shape, source="the data"):
    """A ValueError in one line naming the model, the shape it expects and the one it received, unless
    ``shape`` (C, H, W) is what the model called ``name`` takes."""
    name = model_name(name)
    want, got = tuple(INPUT_SHAPES[name]), tuple(int(s) for s in shape)
    if want != got:
        raise ValueError(f"model {name} expects inputs of shape {'x'.join(map(str, want))}, "
                         f"but {source} gives {'x'.join(map(str, got))}")
