"""Layers with hand-written forward and backward passes (one concept per file)."""
from .activation import Dropout, LogSoftmax, ReLU, Softmax
from .conv import Conv2d
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss, NLLLoss, NonFiniteLossError
from .module import Module, Parameter, Sequential
from .norm import BatchNorm1d, BatchNorm2d
from .pool import MaxPool2d

__all__ = [
    "Parameter", "Module", "Sequential",
    "Conv2d", "MaxPool2d", "BatchNorm1d", "BatchNorm2d", "Linear", "Flatten",
    "ReLU", "LogSoftmax", "Softmax", "Dropout",
    "NLLLoss", "CrossEntropyLoss", "NonFiniteLossError",
]
