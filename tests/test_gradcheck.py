"""Finite-difference checks (float64) of every layer and of the whole reference net, and proof that
the checker fails on deliberately broken backward passes."""
import numpy as np
import pytest

import npcnn.nn as nn
from npcnn.gradcheck import GradcheckResult, gradcheck, gradcheck_loss
from npcnn.models import seed_cnn

F64 = np.float64
N_RANDOM = 6  # random configurations per layer type


def _configs(seed, n=N_RANDOM):
    return [np.random.default_rng(seed + i) for i in range(n)]


def _check(layer, x, **kw):
    result = gradcheck(layer, x, verbose=True, **kw)
    assert isinstance(result, GradcheckResult)
    assert result.ok, f"{layer!r}: {result.errors} (skipped {result.skipped})"
    assert result.max_rel_error < 1e-4
    assert "input" in result.errors
    assert set(result.errors) == {"input"} | {k for k, _ in layer.named_parameters()}
    return result


# --------------------------------------------------------------------------- every layer
@pytest.mark.parametrize("rng", _configs(100), ids=range(N_RANDOM))
def test_conv2d(rng):
    while True:
        n, c, f = rng.integers(1, 4, size=3)
        h, w = rng.integers(1, 9, size=2)
        kh, kw = rng.integers(1, 4, size=2)
        sh, sw = rng.integers(1, 3, size=2)
        ph, pw = rng.integers(0, 3, size=2)
        if (h + 2 * ph - kh) >= 0 and (w + 2 * pw - kw) >= 0:
            break
    layer = nn.Conv2d(int(c), int(f), (int(kh), int(kw)), stride=(int(sh), int(sw)), padding=(int(ph), int(pw)),
                      bias=bool(rng.random() < 0.7), dtype=F64, rng=rng)
    _check(layer, rng.standard_normal((n, c, h, w)))


@pytest.mark.parametrize("rng", _configs(200), ids=range(N_RANDOM))
def test_maxpool2d(rng):
    while True:
        k = int(rng.integers(1, 4))
        s = int(rng.integers(1, 4))
        p = int(rng.integers(0, k // 2 + 1))
        h, w = rng.integers(k, 10, size=2)
        if (h + 2 * p - k) >= 0:
            break
    _check(nn.MaxPool2d(k, stride=s, padding=p), rng.standard_normal((2, 3, h, w)))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cls", [nn.BatchNorm2d, nn.BatchNorm1d])
@pytest.mark.parametrize("rng", _configs(300, 4), ids=range(4))
def test_batchnorm(rng, cls, mode):
    c = int(rng.integers(1, 5))
    shape = (int(rng.integers(2, 5)), c, *rng.integers(2, 6, size=2)) if cls is nn.BatchNorm2d else \
        (int(rng.integers(3, 7)), c, *([int(rng.integers(1, 5))] if rng.random() < 0.5 else []))
    layer = cls(c, affine=bool(rng.random() < 0.8), dtype=F64)
    if layer.affine:
        layer.weight.data[...] = rng.uniform(0.5, 2, c)
        layer.bias.data[...] = rng.standard_normal(c)
    layer.running_mean[...] = rng.standard_normal(c)
    layer.running_var[...] = rng.uniform(0.5, 2, c)
    layer.train(mode == "train")
    _check(layer, rng.standard_normal(shape) * 2 + 1)


@pytest.mark.parametrize("rng", _configs(400), ids=range(N_RANDOM))
def test_linear(rng):
    fin, fout = (int(v) for v in rng.integers(1, 8, size=2))
    lead = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(1, 3))))
    layer = nn.Linear(fin, fout, bias=bool(rng.random() < 0.7), dtype=F64, rng=rng)
    _check(layer, rng.standard_normal((*lead, fin)))


@pytest.mark.parametrize("rng", _configs(500), ids=range(N_RANDOM))
def test_parameter_free_layers(rng):
    shape = tuple(int(v) for v in rng.integers(1, 5, size=int(rng.integers(2, 5))))
    x = rng.standard_normal(shape)
    dim = int(rng.integers(-len(shape), len(shape)))
    _check(nn.ReLU(), x)
    _check(nn.Flatten(), x)
    _check(nn.Flatten(0, -2), x)
    _check(nn.LogSoftmax(dim=dim), x * 3)
    _check(nn.Softmax(dim=dim), x * 3)
    _check(nn.Dropout(0.5, rng=0).eval(), x)
    _check(nn.Dropout(0.0, rng=0), x)


def test_relu_kinks_are_skipped_not_failed():
    x = np.array([[-1.0, 0.0, 2.0, 0.0, -3.0, 1e-9]])
    result = gradcheck(nn.ReLU(), x, verbose=False)
    assert result.ok
    assert result.skipped["input"] >= 2


@pytest.mark.parametrize("rng", _configs(600), ids=range(N_RANDOM))
def test_losses(rng):
    n, c = int(rng.integers(1, 6)), int(rng.integers(2, 8))
    x = rng.standard_normal((n, c)) * 3
    t = rng.integers(0, c, size=n)
    assert gradcheck_loss(nn.CrossEntropyLoss(), x, t).ok
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    assert gradcheck_loss(nn.NLLLoss(), logp, t).ok


# --------------------------------------------------------------------------- whole nets
@pytest.mark.parametrize("batchnorm", [False, True])
def test_reference_net(batchnorm):
    rng = np.random.default_rng(7)
    net = seed_cnn(batchnorm=batchnorm, dtype=F64, rng=1)
    # every tensor, 5 random entries each: 2 forward passes per entry
    result = _check(net, rng.standard_normal((1, 1, 28, 28)), max_checks=5, rng=3)
    assert len(result.errors) == (13 if batchnorm else 9)


def test_small_mixed_net_every_entry():
    rng = np.random.default_rng(8)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=F64, rng=1), nn.ReLU(), nn.MaxPool2d(2, stride=1),
        nn.BatchNorm2d(3, dtype=F64), nn.Flatten(), nn.Linear(12, 5, dtype=F64, rng=2), nn.ReLU(),
        nn.BatchNorm1d(5, dtype=F64), nn.Linear(5, 4, dtype=F64, rng=3), nn.LogSoftmax(dim=1),
    )
    _check(net, rng.standard_normal((4, 2, 6, 6)))


# --------------------------------------------------------------------------- the checker can fail
class DoubleInputGradLinear(nn.Linear):
    def backward(self, grad_out, param_grads=True):
        return 2 * super().backward(grad_out, param_grads)


class SlightlyWrongWeightGradLinear(nn.Linear):
    def backward(self, grad_out, param_grads=True):
        dx = super().backward(grad_out, param_grads)
        if param_grads:
            self.weight.grad *= 1.01
        return dx


class NoBiasGradConv(nn.Conv2d):
    def backward(self, grad_out, param_grads=True):
        dx = super().backward(grad_out, param_grads)
        if param_grads and self.bias is not None:
            self.bias.grad[...] = 0
        return dx


class EvalFormulaBatchNorm(nn.BatchNorm1d):
    """Uses the eval-mode backward (ignores that mu and var depend on x) in training."""

    def backward(self, grad_out, param_grads=True):
        self._batch_stats = False
        return super().backward(grad_out, param_grads)


class HalfGradNLL(nn.NLLLoss):
    def backward(self):
        return 0.5 * super().backward()


def test_gradcheck_fails_on_broken_input_gradient(capsys):
    rng = np.random.default_rng(9)
    layer = DoubleInputGradLinear(4, 3, dtype=F64, rng=rng)
    result = gradcheck(layer, rng.standard_normal((5, 4)))
    assert not result.ok and not bool(result)
    assert result.errors["input"] > 0.4
    assert result.errors["weight"] < 1e-6 and result.errors["bias"] < 1e-6
    out = capsys.readouterr().out
    assert "input" in out and "analytic" in out and "numeric" in out  # both gradients shown


@pytest.mark.parametrize("make,x_shape,bad", [
    (lambda rng: SlightlyWrongWeightGradLinear(4, 3, dtype=F64, rng=rng), (5, 4), "weight"),
    (lambda rng: NoBiasGradConv(2, 3, 3, padding=1, dtype=F64, rng=rng), (2, 2, 5, 5), "bias"),
    (lambda rng: EvalFormulaBatchNorm(3, dtype=F64), (6, 3), "input"),
])
def test_gradcheck_fails_on_broken_layers(make, x_shape, bad):
    rng = np.random.default_rng(10)
    layer = make(rng)
    if isinstance(layer, nn.BatchNorm1d):
        layer.weight.data[...] = rng.uniform(0.5, 2, 3)
    result = gradcheck(layer, rng.standard_normal(x_shape), verbose=False)
    assert not result.ok
    assert result.errors[bad] > 1e-3


def test_gradcheck_fails_on_a_broken_layer_inside_a_net():
    rng = np.random.default_rng(11)
    net = nn.Sequential(nn.Linear(6, 5, dtype=F64, rng=1), nn.ReLU(), DoubleInputGradLinear(5, 4, dtype=F64, rng=2),
                        nn.LogSoftmax())
    result = gradcheck(net, rng.standard_normal((3, 6)), verbose=False)
    assert not result.ok
    assert result.errors["input"] > 0.4 and result.errors["0.weight"] > 0.4  # upstream of the broken layer
    assert result.errors["2.weight"] < 1e-6  # the broken layer's own weight gradient is right


def test_gradcheck_loss_fails_on_broken_loss():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 5))
    assert not gradcheck_loss(HalfGradNLL(), x, rng.integers(0, 5, size=4), verbose=False).ok


def test_gradcheck_requires_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(nn.Linear(3, 2, rng=0), np.zeros((2, 3)))
