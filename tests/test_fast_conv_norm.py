"""ConvBatchNorm (Conv2d -> BatchNorm2d (-> ReLU) on the fast path) against the readable layers in float64:
training (conv step then batch norm, running statistics updated alike) and eval mode (the batch norm folded
into the conv), outputs, input gradients and every Parameter's gradient, on random shapes."""
import numpy as np
import pytest

import npcnn.nn as nn
from npcnn import fast
from npcnn.fast import ConvBatchNorm
from npcnn.fast.conv_norm import conv_norm_length


def _configs(count, seed=11):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        k, s, p = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
        h = int(rng.integers(k + 1, 11))
        out.append((int(rng.integers(2, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 20)), h, k, s, p,
                    bool(rng.integers(0, 2)), bool(rng.integers(0, 2)), bool(rng.integers(0, 2))))
    return out


def _layers(c, f, k, s, p, conv_bias, affine, relu, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(c, f, k, stride=s, padding=p, bias=conv_bias, dtype=dtype, rng=seed)
    bn = nn.BatchNorm2d(f, affine=affine, dtype=dtype)
    bn.running_mean[...] = rng.standard_normal(f)
    bn.running_var[...] = rng.random(f) + 0.5
    if affine:
        bn.weight.data[...] = rng.standard_normal(f)
        bn.bias.data[...] = rng.standard_normal(f)
    return [conv, bn] + ([nn.ReLU()] if relu else [])


def _run(layers, x, g, training, fused):
    for layer in layers:
        layer.train(training)
        layer.zero_grad()
    net = fast.plan(nn.Sequential(*layers), fuse=fused)
    y = net.forward(x)
    dx = net.backward(g)
    grads = [p.grad.copy() for layer in layers for p in layer.parameters()]
    return y, dx, grads, layers[1].running_mean.copy(), layers[1].running_var.copy()


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("config", _configs(24))
def test_conv_batchnorm_equals_the_readable_layers_in_float64(config, training):
    n, c, f, h, k, s, p, conv_bias, affine, relu = config
    rng = np.random.default_rng(h * 7 + f)
    x = rng.standard_normal((n, c, h, h))
    results = []
    for fused in (False, True):
        layers = _layers(c, f, k, s, p, conv_bias, affine, relu, seed=h + c)
        plan = fast.plan(nn.Sequential(*layers), fuse=fused)
        g = rng.standard_normal(layers[0].output_shape(x.shape)) if not results else results[0][5]
        results.append((*_run(layers, x, g, training, fused), g))
        if fused:
            assert isinstance(plan.steps()[0], ConvBatchNorm) and len(plan.steps()) == 1
    (y0, dx0, g0, m0, v0, _), (y1, dx1, g1, m1, v1, _) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-10, atol=1e-10)
    assert len(g1) == len(g0) == 1 + conv_bias + 2 * affine
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m1, m0, rtol=1e-12, atol=1e-14)   # training updates the running statistics
    np.testing.assert_allclose(v1, v0, rtol=1e-12, atol=1e-14)   # alike (from channels-last memory, in
    if not training:                                              # another order); eval mode leaves them
        np.testing.assert_array_equal(m1, _layers(*config[1:3], *config[4:], seed=config[3] + config[1])[1].running_mean)


def test_conv_batchnorm_eval_float32_and_input_gradient_only():
    layers = _layers(3, 8, 3, 1, 1, False, True, True, seed=1, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((4, 3, 9, 9)).astype(np.float32)
    ref = nn.Sequential(*layers).eval()
    y_ref = ref.forward(x)
    step = ConvBatchNorm(*layers)
    y = step.forward(x)
    assert y.dtype == np.float32 and step._eval
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = np.ones_like(y)
    dx_ref = ref.backward(g, param_grads=False)
    for layer in layers:
        layer.zero_grad()
    dx = step.backward(g, param_grads=False)
    assert all(p.grad is None or not p.grad.any() for layer in layers for p in layer.parameters())
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    assert step.backward(g, param_grads=False, input_grad=False) is None


def test_conv_batchnorm_planning_and_errors():
    conv, bn, relu = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
    assert conv_norm_length([conv, bn, relu], 0) == 3
    assert conv_norm_length([conv, bn], 0) == 2
    assert conv_norm_length([conv, nn.ReLU()], 0) == 0
    assert conv_norm_length([conv, nn.BatchNorm1d(4)], 0) == 0
    with pytest.raises(ValueError, match="does not fit"):
        ConvBatchNorm(conv, nn.BatchNorm2d(5))
    with pytest.raises(TypeError):
        ConvBatchNorm(conv, nn.ReLU())
