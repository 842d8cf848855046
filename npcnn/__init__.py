"""npcnn: a from-scratch convolutional neural network library in NumPy, with numba kernels.

Every layer has a hand-written forward and backward pass; the gradient with
respect to the input is a first-class result, so the same code trains a net,
explains it and attacks it.
"""
from . import allocator  # noqa: F401  (first: glibc's malloc tuned before any array is made)
from .classifier import Classifier, load_classifier
from .gradcheck import gradcheck, gradcheck_loss
from .models import MODELS, build_model, count_neurons, count_parameters, seed_cnn, summary
from .nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, CrossEntropyLoss, Dropout, Flatten,
                 LeakyReLU, Linear, LogSoftmax, MaxPool2d, Module, NLLLoss, Parameter, ReLU, Residual, Sequential,
                 Sigmoid, Softmax, Tanh)
from .optim import SGD, Adam

__version__ = "0.1.0"
