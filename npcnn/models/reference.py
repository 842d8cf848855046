"""The reference network of the report: seed_cnn."""
import numpy as np

from ..nn import BatchNorm2d, Conv2d, Flatten, Linear, LogSoftmax, MaxPool2d, ReLU, Sequential
from ..nn.init import as_generator


def seed_cnn(batchnorm=False, num_classes=10, *, dtype=np.float32, rng=0):
    """The report's CNN for 1x28x28 images.

    conv(1->32, 3x3, p1) -> ReLU -> maxpool 2 -> [BN] -> conv(32->32, 3x3, p1) -> ReLU
    -> maxpool 2 -> [BN] -> flatten -> linear(1568->500) -> ReLU -> linear(500->10) -> log-softmax.

    799,078 parameters without BatchNorm (799,206 with). ``rng`` seeds the
    initialisation (an int, a Generator, or None for fresh entropy).
    """
    rng = as_generator(rng)
    layers = [Conv2d(1, 32, 3, padding=1, dtype=dtype, rng=rng), ReLU(), MaxPool2d(2)]
    if batchnorm:
        layers.append(BatchNorm2d(32, dtype=dtype))
    layers += [Conv2d(32, 32, 3, padding=1, dtype=dtype, rng=rng), ReLU(), MaxPool2d(2)]
    if batchnorm:
        layers.append(BatchNorm2d(32, dtype=dtype))
    layers += [
        Flatten(),
        Linear(32 * 7 * 7, 500, dtype=dtype, rng=rng),
        ReLU(),
        Linear(500, num_classes, dtype=dtype, rng=rng),
        LogSoftmax(dim=1),
    ]
    return Sequential(*layers)
