"""The nets npcnn builds: the report's reference net, the model zoo, their summaries and their files.

* :mod:`.reference`  ``seed_cnn``, the report's net
* :mod:`.zoo`        LeNet-5, Madry et al.'s and Wong et al.'s MNIST nets, a small VGG, a small ResNet
* :mod:`.catalog`    ``MODELS = {name: builder}``, ``INPUT_SHAPES``, ``build_model(name)``: the names
                     ``npcnn train --model NAME`` and the model files use
* :mod:`.summary`    parameter and neuron counts, the summary table
* :mod:`.files`      ``save_model`` / ``load_model``: weights, normalisation and the net's name in one .npz
"""
from .catalog import INPUT_SHAPES, MODELS, PARAMETERS, build_model, check_input_shape, model_name
from .files import MODEL_FORMAT, ModelFileError, load_model, save_model
from .reference import seed_cnn
from .summary import count_neurons, count_parameters, layer_neurons, summary, summary_rows
from .zoo import basic_block, lenet5, madry_mnist, small_resnet, small_vgg, small_vgg_cifar, wong_mnist

__all__ = [
    "seed_cnn", "lenet5", "madry_mnist", "wong_mnist", "small_vgg", "small_vgg_cifar", "small_resnet", "basic_block",
    "MODELS", "INPUT_SHAPES", "PARAMETERS", "build_model", "check_input_shape", "model_name",
    "count_parameters", "count_neurons", "layer_neurons", "summary", "summary_rows",
    "save_model", "load_model", "ModelFileError", "MODEL_FORMAT",
]
