"""Layers with hand-written forward and backward passes (one concept per file)."""
from .activation import Dropout, LogSoftmax, ReLU, Softmax
from .avgpool import AdaptiveAvgPool2d, AvgPool2d
from .conv import Conv2d
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss, NLLLoss, NonFiniteLossError
from .module import Module, Parameter, Sequential
from .norm import BatchNorm1d, BatchNorm2d
from .pool import MaxPool2d
from .residual import Residual
from .smooth import LeakyReLU, Sigmoid, Tanh

__all__ = [
    "Parameter", "Module", "Sequential",
    "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "Linear", "Flatten",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "LogSoftmax", "Softmax", "Dropout", "Residual",
    "NLLLoss", "CrossEntropyLoss", "NonFiniteLossError",
]
