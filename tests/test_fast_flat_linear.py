"""FlatLinear (Flatten -> Linear on the fast path) against the two readable layers: same outputs and
gradients in float64 on random shapes, the channels-last path taken only where it pays, the same errors."""
import numpy as np
import pytest

import npcnn.nn as nn
from npcnn import fast
from npcnn.fast import FlatLinear
from npcnn.fast.flat_linear import flat_linear_length
from npcnn.models import build_model


def _configs(count, seed=5):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(2, 60)), int(rng.integers(1, 9)), int(rng.integers(1, 7)), int(rng.integers(1, 7)),
             int(rng.integers(1, 12)), bool(rng.integers(0, 2))) for _ in range(count)]


def _channels_last(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _both(n, c, h, w, out, bias, layout, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    flatten, linear = nn.Flatten(), nn.Linear(c * h * w, out, bias=bias, dtype=dtype, rng=seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    x = _channels_last(x) if layout == "channels last" else x
    g = rng.standard_normal((n, out)).astype(dtype)
    params = list(linear.parameters())

    linear.zero_grad()
    y_ref = linear.forward(flatten.forward(x))
    dx_ref = flatten.backward(linear.backward(g))
    grads_ref = [p.grad.copy() for p in params]

    linear.zero_grad()
    step = FlatLinear(flatten, linear)
    y = step.forward(x)
    dx = step.backward(g)
    return step, (y, dx, [p.grad.copy() for p in params]), (y_ref, dx_ref, grads_ref)


def test_the_configs_take_both_paths():
    assert 8 <= sum(c > 1 and h * w > 1 and n >= 4 * out for n, c, h, w, out, _ in _configs(24)) <= 20


@pytest.mark.parametrize("layout", ["channels last", "NCHW"])
@pytest.mark.parametrize("config", _configs(24))
def test_flat_linear_equals_flatten_then_linear_in_float64(config, layout):
    n, c, h, w, out, bias = config
    step, got, ref = _both(*config, layout)
    # (one channel or one pixel: channels last is NCHW too, and flattening it is free)
    took_cl = layout == "channels last" and c > 1 and h * w > 1 and n >= 4 * out
    assert step._cl == took_cl
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12, atol=1e-12)
    assert got[1].shape == (n, c, h, w)
    if took_cl:                                     # the gradient handed back stays channels last
        assert got[1].transpose(0, 2, 3, 1).flags.c_contiguous
    for a, b in zip(got[2], ref[2]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_flat_linear_float32_and_param_grads_off():
    step, got, ref = _both(400, 32, 7, 7, 100, True, "channels last", np.float32)
    assert step._cl and got[0].dtype == np.float32 and got[1].dtype == np.float32
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-5)
    linear = step.linear
    linear.zero_grad()
    step.forward(_channels_last(np.ones((400, 32, 7, 7), np.float32)))
    assert step._cl
    step.backward(np.ones((400, 100), np.float32), param_grads=False)
    assert linear.weight.grad is None or not linear.weight.grad.any()


def test_flat_linear_gives_the_readable_errors():
    step = FlatLinear(nn.Flatten(), nn.Linear(2 * 3 * 3, 4, rng=0))
    bad = _channels_last(np.zeros((40, 2, 3, 4), np.float32))        # 24 features, not 18
    with pytest.raises(ValueError) as fast_err:
        step.forward(bad)
    with pytest.raises(ValueError) as readable_err:
        step.linear.forward(step.flatten.forward(bad))
    assert str(fast_err.value) == str(readable_err.value)
    with pytest.raises(TypeError, match="float"):
        step.forward(_channels_last(np.zeros((40, 2, 3, 3), np.float64)))
    with pytest.raises(TypeError):
        FlatLinear(nn.Flatten(2), nn.Linear(3, 4))
    assert flat_linear_length([nn.Flatten(), nn.ReLU()], 0) == 0
    assert flat_linear_length([nn.Flatten()], 0) == 0


@pytest.mark.parametrize("model", ["wong-mnist", "lenet5", "madry-mnist"])
def test_zoo_nets_with_flat_linear_equal_the_readable_path(model):
    net = build_model(model, dtype=np.float64, rng=1)
    steps = fast.plan(net).steps()
    assert any(isinstance(s, FlatLinear) for s in steps)
    rng = np.random.default_rng(2)
    x = rng.random((500, 1, 28, 28))              # enough images for the channels-last path of wong's fc
    g = rng.standard_normal((500, 10))
    results = []
    for fuse in (False, True):
        net.zero_grad()
        plan = fast.plan(net, fuse=fuse)
        y = plan.forward(x)
        dx = plan.backward(g)
        results.append((y, dx, [p.grad.copy() for p in net.parameters()]))
    (y0, dx0, g0), (y1, dx1, g1) = results
    flat = next(s for s in plan.steps() if isinstance(s, FlatLinear))
    assert flat._cl == (model != "madry-mnist")     # Madry's fc of 1024 takes the readable layers
    np.testing.assert_allclose(y1, y0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
