"""ConvBatchNorm (Conv2d -> BatchNorm2d (-> ReLU) on the fast path) against the readable layers in float64:
training (conv step then batch norm, running statistics updated alike) and eval mode (the batch norm folded
into the conv), outputs, input gradients and every Parameter's gradient, on random shapes."""
import numba
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


# ------------------------------------------------------------------ the statistics taken by the conv's kernel
_STATS_CASES = [  # (n, c, f, h, k, s, p, winograd_forward): the direct kernel (the first three), im2col and
    (5, 3, 7, 9, 3, 1, 1, False), (2, 2, 3, 7, 1, 1, 0, False), (13, 5, 9, 6, 2, 2, 0, False),   # both Winograd
    (5, 4, 20, 9, 3, 1, 1, False), (6, 4, 5, 8, 3, 2, 1, False),                                  # kernels
    (4, 16, 16, 10, 3, 1, 1, True), (3, 16, 24, 11, 5, 1, 2, True),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", _STATS_CASES)
def test_conv_batchnorm_takes_the_batch_statistics_in_the_conv_kernel(case, dtype, monkeypatch):
    """In training, the conv step's kernel (kernels.conv_rows_forward, on npcnn's threads, or the direct one)
    sums each chunk's output while it is in cache, and the batch norm runs no statistics pass of its own; in
    backward the batch norm takes its sums and the conv's kernel its dL/dx, chunk by chunk
    (kernels.conv_rows_backward). Output, running statistics and every gradient equal the readable layers'
    (the one-pass variance and the fused dL/dx differ by rounding)."""
    from npcnn import kernels, parallel
    from test_kernels_fast import numba_threads
    n, c, f, h, k, s, p, winograd_forward = case
    rng = np.random.default_rng(n * 31 + h)
    x = (rng.standard_normal((n, c, h, h)) + 3.0).astype(dtype)       # a mean away from 0, as conv outputs have
    results = []
    for fused in (False, True):
        layers = _layers(c, f, k, s, p, True, True, True, seed=h + c, dtype=dtype)
        for layer in layers:
            layer.train()
        g = rng.standard_normal(layers[0].output_shape(x.shape)).astype(dtype) if not results else results[0][3]
        if fused:
            stats_passes, dx_passes = [], []
            real, real_bw = kernels.batchnorm_stats_rows, kernels.batchnorm_backward_rows
            monkeypatch.setattr(kernels, "batchnorm_stats_rows", lambda *a: stats_passes.append(1) or real(*a))
            monkeypatch.setattr(kernels, "batchnorm_backward_rows",
                                lambda *a: dx_passes.append(a[10].size) or real_bw(*a))
            step = ConvBatchNorm(*layers)
            with numba_threads(min(2, numba.config.NUMBA_NUM_THREADS)), parallel.one_blas_thread():
                assert parallel.kernel_gemm(dtype) is not None, "the kernels cannot call numpy's BLAS here"
                y = step.forward(x, winograd_forward=winograd_forward)
                dx = step.backward(g)
            assert step._conv_step.batch_stats is not None and stats_passes == []
            direct = case in _STATS_CASES[:3]
            assert step._conv_step._direct == direct
            # backward: the batch norm's sums alone (dx empty), its dL/dx in the conv's kernel; the direct
            # conv's step takes the batch norm's whole backward first
            assert len(dx_passes) == 1 and (dx_passes[0] > 0) == direct
        else:
            ref = nn.Sequential(*layers)
            y, dx = ref.forward(x), ref.backward(g)
        results.append((y, dx, [q.grad.copy() for layer in layers for q in layer.parameters()], g,
                        layers[1].running_mean.copy(), layers[1].running_var.copy()))
    (y0, dx0, g0, _, m0, v0), (y1, dx1, g1, _, m1, v1) = results
    tol = 1e-9 if dtype == np.float64 else 2e-4
    scale = lambda a: tol * max(1.0, np.abs(a).max())              # noqa: E731
    np.testing.assert_allclose(y1, y0, rtol=tol, atol=scale(y0))
    np.testing.assert_allclose(dx1, dx0, rtol=tol, atol=scale(dx0))
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=tol, atol=scale(b))
    np.testing.assert_allclose(m1, m0, rtol=1e-12 if dtype == np.float64 else 1e-6, atol=1e-12)
    np.testing.assert_allclose(v1, v0, rtol=1e-11 if dtype == np.float64 else 1e-5, atol=1e-12)


def test_channel_stats_one_pass_variance_is_accurate_far_from_zero():
    """channel_stats' one-pass variance (float64 sums of values and squares) against NumPy's two-pass one on
    float32 values up to ~5000 standard deviations from 0: relative error below float32's unit roundoff."""
    from npcnn.fast.conv_act import channel_stats
    rng = np.random.default_rng(2)
    f, rows, run_rows = 6, 20000, 16
    values = (rng.standard_normal((rows, f)) * rng.random(f) + 1000.0 * rng.random(f)).astype(np.float32)
    run = run_rows * f
    sums = np.zeros((2, 2, run))                     # two threads, as conv_rows_forward leaves them
    for t, part in enumerate((values[:rows // 2], values[rows // 2:])):
        flat = part.reshape(-1).astype(np.float64)
        for base in range(0, flat.size, run):
            seg = flat[base:base + run]
            sums[t, 0, :seg.size] += seg
            sums[t, 1, :seg.size] += seg * seg
    mean, var = channel_stats(sums, f, rows)
    v64 = values.astype(np.float64)
    np.testing.assert_allclose(mean, v64.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(var, v64.var(axis=0), rtol=2.0 ** -24)       # float32's unit roundoff
