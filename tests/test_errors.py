"""Bad input gets a clear error that names the layer and the expected and received shapes,
not a deep numpy traceback (or, worse, a silently wrong answer)."""
import re

import numpy as np
import pytest

import npcnn.nn as nn
from npcnn.models import seed_cnn
from npcnn.nn import NonFiniteLossError

f32, f64 = np.float32, np.float64


def _shape(s):
    return re.escape(str(tuple(s)))


# --------------------------------------------------------------------------- rank and channels
@pytest.mark.parametrize("layer,bad_shape,expect", [
    (nn.Conv2d(3, 4, 3), (3, 28, 28), r"4-d"),
    (nn.Conv2d(3, 4, 3), (1, 1, 3, 28, 28), r"4-d"),
    (nn.MaxPool2d(2), (8, 8), r"4-d"),
    (nn.MaxPool2d(2), (2, 1, 3, 8, 8), r"4-d"),
    (nn.BatchNorm2d(3), (4, 3, 8), r"4-d"),
    (nn.BatchNorm1d(3), (4, 3, 8, 8), r"2-d or 3-d"),
    (nn.BatchNorm1d(3), (4,), r"2-d or 3-d"),
])
def test_wrong_number_of_dimensions_names_layer_and_shapes(layer, bad_shape, expect):
    x = np.zeros(bad_shape, dtype=f32)
    with pytest.raises(ValueError, match=type(layer).__name__) as info:
        layer(x)
    msg = str(info.value)
    assert re.search(expect, msg), msg
    assert re.search(_shape(bad_shape), msg), msg


@pytest.mark.parametrize("layer,bad_shape,expected", [
    (nn.Conv2d(3, 4, 3), (2, 1, 28, 28), "3"),
    (nn.BatchNorm2d(8), (2, 4, 5, 5), "8"),
    (nn.BatchNorm1d(8), (2, 4), "8"),
    (nn.BatchNorm1d(8), (2, 4, 7), "8"),
    (nn.Linear(1568, 500), (2, 1500), "1568"),
    (nn.Linear(6, 2), (2, 3, 5), "6"),
])
def test_wrong_channels_names_layer_expected_and_received(layer, bad_shape, expected):
    x = np.zeros(bad_shape, dtype=f32)
    with pytest.raises(ValueError, match=type(layer).__name__) as info:
        layer(x)
    msg = str(info.value)
    assert re.search(rf"\b{expected}\b", msg), msg
    assert _shape(bad_shape).replace("\\", "") in msg.replace("\\", ""), msg


@pytest.mark.parametrize("layer,bad_shape", [
    (nn.LogSoftmax(dim=1), (5,)),
    (nn.Softmax(dim=1), (5,)),
    (nn.LogSoftmax(dim=2), (3, 5)),
])
def test_softmax_layers_with_missing_dim_name_the_layer(layer, bad_shape):
    """A dim the input does not have: the error should say which layer and what shape it got
    (torch: "Dimension out of range"), not numpy's bare AxisError from deep inside."""
    with pytest.raises((ValueError, IndexError), match=type(layer).__name__) as info:
        layer(np.zeros(bad_shape, dtype=f32))
    assert _shape(bad_shape).replace("\\", "") in str(info.value).replace("\\", "")


def test_reference_net_bad_inputs_are_reported_by_the_layer_that_sees_them():
    net = seed_cnn(rng=0)
    with pytest.raises(ValueError, match=r"Conv2d.*4-d.*\(8, 28, 28\)"):
        net(np.zeros((8, 28, 28), dtype=f32))  # forgot the channel axis
    with pytest.raises(ValueError, match=r"Conv2d.*1 channels.*\(8, 3, 28, 28\)"):
        net(np.zeros((8, 3, 28, 28), dtype=f32))  # RGB into a grey-scale net
    with pytest.raises(ValueError, match=r"Linear.*1568.*\(8, 2048\)"):
        net(np.zeros((8, 1, 32, 32), dtype=f32))  # wrong image size reaches fc1 as the wrong width


def test_input_smaller_than_window():
    with pytest.raises(ValueError, match=r"Conv2d.*2x2.*kernel"):
        nn.Conv2d(1, 1, 5)(np.zeros((1, 1, 2, 2), dtype=f32))
    with pytest.raises(ValueError, match="MaxPool2d"):
        nn.MaxPool2d(3)(np.zeros((1, 1, 2, 2), dtype=f32))


def test_batchnorm_training_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match=r"BatchNorm1d.*more than 1 value"):
        nn.BatchNorm1d(4)(np.zeros((1, 4), dtype=f32))
    with pytest.raises(ValueError, match=r"BatchNorm2d.*more than 1 value"):
        nn.BatchNorm2d(4)(np.zeros((1, 4, 1, 1), dtype=f32))
    bn = nn.BatchNorm1d(4).eval()  # eval mode is fine with a single sample
    assert bn(np.ones((1, 4), dtype=f32)).shape == (1, 4)


# --------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Conv2d(1, 2, 3), (1, 1, 5, 5)),
    (lambda: nn.Linear(4, 2), (3, 4)),
    (lambda: nn.BatchNorm2d(2), (2, 2, 3, 3)),
    (lambda: nn.BatchNorm1d(2), (3, 2)),
    (lambda: seed_cnn(rng=0), (2, 1, 28, 28)),
])
def test_float64_into_float32_layer_is_a_type_error(make, shape):
    layer = make()
    with pytest.raises(TypeError, match=r"float64.*float32"):
        layer(np.zeros(shape, dtype=f64))
    assert layer(np.zeros(shape, dtype=f32)).dtype == f32


def test_float32_into_float64_layer_is_a_type_error():
    with pytest.raises(TypeError, match=r"float32.*float64"):
        nn.Conv2d(1, 2, 3, dtype=f64)(np.zeros((1, 1, 5, 5), dtype=f32))


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv2d(1, 2, 3), (1, 1, 5, 5)),
    (nn.Linear(4, 2), (3, 4)),
    (nn.MaxPool2d(2), (1, 1, 4, 4)),
])
def test_integer_input_is_a_type_error(layer, shape):
    with pytest.raises(TypeError, match=type(layer).__name__):
        layer(np.zeros(shape, dtype=np.uint8))


def test_non_array_input_is_a_type_error():
    with pytest.raises(TypeError, match="Conv2d"):
        nn.Conv2d(1, 1, 1)([[[[1.0]]]])


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("loss", [nn.NLLLoss(), nn.CrossEntropyLoss()], ids=["nll", "ce"])
def test_non_finite_loss_raises(loss):
    x = np.zeros((3, 4), dtype=f32)
    x[1, 2] = np.nan
    with pytest.raises(NonFiniteLossError, match="NaN|nan"):
        loss(x, np.array([0, 2, 1]))
    x = np.zeros((3, 4), dtype=f64)
    x[0, 0] = np.inf if isinstance(loss, nn.CrossEntropyLoss) else -np.inf
    with pytest.raises(NonFiniteLossError), np.errstate(invalid="ignore"):
        loss(x, np.array([0, 2, 1]))
    assert issubclass(NonFiniteLossError, FloatingPointError)


@pytest.mark.parametrize("loss", [nn.NLLLoss(), nn.CrossEntropyLoss()], ids=["nll", "ce"])
def test_bad_targets(loss):
    x = np.zeros((3, 4), dtype=f32)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        loss(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        loss(x, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        loss(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        loss(x, np.array([[0, 1, 2]]))
    with pytest.raises(TypeError, match="integer"):
        loss(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"2-d"):
        loss(np.zeros((3, 4, 2), dtype=f32), np.array([0, 1, 2]))


# --------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("make,exc,match", [
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "channels"),
    (lambda: nn.Conv2d(1, 4, 0), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(1, 4, 3, stride=0), ValueError, "stride"),
    (lambda: nn.Conv2d(1, 4, 3, padding=-1), ValueError, "padding"),
    (lambda: nn.Conv2d(1, 4, (3, 3, 3)), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(1, 4, 2.5), ValueError, "kernel_size"),
    (lambda: nn.MaxPool2d(2, padding=2), ValueError, "padding"),
    (lambda: nn.MaxPool2d((4, 2), padding=(1, 2)), ValueError, "padding"),
    (lambda: nn.MaxPool2d(0), ValueError, "kernel_size"),
    (lambda: nn.Linear(0, 3), ValueError, "features"),
    (lambda: nn.BatchNorm2d(0), ValueError, "num_features"),
])
def test_bad_constructor_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
