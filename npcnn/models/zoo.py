"""The model zoo: classic CNNs built from npcnn's layers, each as PyTorch users build it.

Every builder returns a :class:`~npcnn.nn.Sequential` that ends in ``Linear -> LogSoftmax`` (what the
:class:`~npcnn.classifier.Classifier` and training expect), takes ``num_classes`` and the keyword
arguments ``dtype`` and ``rng`` (an int seed, a Generator, or None), and initialises its weights as
PyTorch's defaults do (:func:`npcnn.nn.init.default_uniform`). The parameter counts below are for 10
classes and are checked against each net's PyTorch twin in ``tests/test_zoo.py``.

==================  ==========  ===========================================================
builder             parameters  the net
==================  ==========  ===========================================================
lenet5                  61,706  LeCun et al. 1998 on 28x28: tanh, average pooling
madry_mnist          3,274,634  Madry et al. 2018 (MadryLab/mnist_challenge)
wong_mnist             166,406  Wong et al. 2020 (locuslab/fast_adversarial, mnist_net)
small_vgg              870,634  conv-conv-pool twice, 32 and 64 channels, fc 256 (1x28x28)
small_vgg_cifar      1,116,970  the same for 3x32x32 images
small_resnet            77,754  stem + three residual blocks (16, 32, 64 ch.), BN, global pool
==================  ==========  ===========================================================
"""
import numpy as np

from ..nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, LogSoftmax, MaxPool2d,
                  ReLU, Residual, Sequential, Tanh)
from ..nn.init import as_generator


def lenet5(num_classes=10, *, dtype=np.float32, rng=0):
    """LeNet-5 (LeCun et al. 1998) as PyTorch users build it for 28x28 MNIST: 61,706 parameters.

    conv(1->6, 5x5, p2) -> tanh -> avgpool 2 -> conv(6->16, 5x5) -> tanh -> avgpool 2 -> flatten (400)
    -> fc 120 -> tanh -> fc 84 -> tanh -> fc 10 -> log-softmax. The padding of 2 gives the 32x32 input
    of the paper's C1; its sub-sampling layers had a trainable scale and bias and its C3 a partial
    connection table, both dropped here as in the usual modern rendering.
    """
    rng = as_generator(rng)
    return Sequential(
        Conv2d(1, 6, 5, padding=2, dtype=dtype, rng=rng), Tanh(), AvgPool2d(2),
        Conv2d(6, 16, 5, dtype=dtype, rng=rng), Tanh(), AvgPool2d(2),
        Flatten(), Linear(16 * 5 * 5, 120, dtype=dtype, rng=rng), Tanh(),
        Linear(120, 84, dtype=dtype, rng=rng), Tanh(),
        Linear(84, num_classes, dtype=dtype, rng=rng), LogSoftmax(dim=1))


def madry_mnist(num_classes=10, *, dtype=np.float32, rng=0):
    """Madry et al.'s MNIST net (MadryLab/mnist_challenge, ``model.py``): 3,274,634 parameters.

    conv(1->32, 5x5, p2) -> ReLU -> maxpool 2 -> conv(32->64, 5x5, p2) -> ReLU -> maxpool 2
    -> flatten (3136) -> fc 1024 -> ReLU -> fc 10 -> log-softmax.
    """
    rng = as_generator(rng)
    return Sequential(
        Conv2d(1, 32, 5, padding=2, dtype=dtype, rng=rng), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, 5, padding=2, dtype=dtype, rng=rng), ReLU(), MaxPool2d(2),
        Flatten(), Linear(64 * 7 * 7, 1024, dtype=dtype, rng=rng), ReLU(),
        Linear(1024, num_classes, dtype=dtype, rng=rng), LogSoftmax(dim=1))


def wong_mnist(num_classes=10, *, dtype=np.float32, rng=0):
    """Wong et al.'s MNIST net (locuslab/fast_adversarial, ``mnist_net``): 166,406 parameters.

    conv(1->16, 4x4, s2, p1) -> ReLU -> conv(16->32, 4x4, s2, p1) -> ReLU -> flatten (32*7*7)
    -> fc 100 -> ReLU -> fc 10 -> log-softmax. Strided convolutions, no pooling.
    """
    rng = as_generator(rng)
    return Sequential(
        Conv2d(1, 16, 4, stride=2, padding=1, dtype=dtype, rng=rng), ReLU(),
        Conv2d(16, 32, 4, stride=2, padding=1, dtype=dtype, rng=rng), ReLU(),
        Flatten(), Linear(32 * 7 * 7, 100, dtype=dtype, rng=rng), ReLU(),
        Linear(100, num_classes, dtype=dtype, rng=rng), LogSoftmax(dim=1))


def small_vgg(num_classes=10, *, input_shape=(1, 28, 28), dtype=np.float32, rng=0):
    """A small VGG-style net (Simonyan and Zisserman 2015's pattern, two stages):
    870,634 parameters on 1x28x28, 1,116,970 on 3x32x32.

    [conv 3x3 p1 -> ReLU -> conv 3x3 p1 -> ReLU -> maxpool 2] with 32, then 64 channels
    -> flatten -> fc 256 -> ReLU -> fc 10 -> log-softmax. ``input_shape`` (C, H, W) sets the first
    conv's channels and the first fc's width (64 * H/4 * W/4).
    """
    c, h, w = input_shape
    rng = as_generator(rng)

    def conv(cin, cout):
        return Conv2d(cin, cout, 3, padding=1, dtype=dtype, rng=rng)

    return Sequential(
        conv(c, 32), ReLU(), conv(32, 32), ReLU(), MaxPool2d(2),
        conv(32, 64), ReLU(), conv(64, 64), ReLU(), MaxPool2d(2),
        Flatten(), Linear(64 * (h // 4) * (w // 4), 256, dtype=dtype, rng=rng), ReLU(),
        Linear(256, num_classes, dtype=dtype, rng=rng), LogSoftmax(dim=1))


def small_vgg_cifar(num_classes=10, *, dtype=np.float32, rng=0):
    """:func:`small_vgg` for 3x32x32 images (CIFAR-10's shape): 1,116,970 parameters."""
    return small_vgg(num_classes, input_shape=(3, 32, 32), dtype=dtype, rng=rng)


def basic_block(cin, cout, stride=1, *, dtype=np.float32, rng=None):
    """ResNet's basic block without its final ReLU (He et al. 2016):
    ``Residual(conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN, shortcut)``; put a ReLU after it.

    The shortcut is the identity when the shape is kept, else a 1x1 conv with the block's stride
    and a BatchNorm (the paper's option B). Convs feeding a BatchNorm have no bias (its beta is one).
    """
    rng = as_generator(rng)
    body = Sequential(
        Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, dtype=dtype, rng=rng), BatchNorm2d(cout, dtype=dtype),
        ReLU(),
        Conv2d(cout, cout, 3, padding=1, bias=False, dtype=dtype, rng=rng), BatchNorm2d(cout, dtype=dtype))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = Sequential(Conv2d(cin, cout, 1, stride=stride, bias=False, dtype=dtype, rng=rng),
                              BatchNorm2d(cout, dtype=dtype))
    return Residual(body, shortcut)


def small_resnet(num_classes=10, *, in_channels=1, widths=(16, 32, 64), dtype=np.float32, rng=0):
    """A small ResNet (He et al. 2016's CIFAR design with one block per stage, "ResNet-8"): 77,754
    parameters on 1-channel images.

    conv 3x3 (-> 16) -> BN -> ReLU -> [basic block -> ReLU] at 16, 32 (stride 2), 64 (stride 2)
    channels -> global average pooling -> flatten -> fc 10 -> log-softmax. Any image size works
    (the global pooling removes the spatial size); ``in_channels`` is the images' channels.
    """
    rng = as_generator(rng)
    layers = [Conv2d(in_channels, widths[0], 3, padding=1, bias=False, dtype=dtype, rng=rng),
              BatchNorm2d(widths[0], dtype=dtype), ReLU()]
    cin = widths[0]
    for i, cout in enumerate(widths):
        layers += [basic_block(cin, cout, 1 if i == 0 else 2, dtype=dtype, rng=rng), ReLU()]
        cin = cout
    layers += [AdaptiveAvgPool2d(1), Flatten(), Linear(cin, num_classes, dtype=dtype, rng=rng), LogSoftmax(dim=1)]
    return Sequential(*layers)
