"""Winograd's convs (F(2x2, 3x3) written out, npcnn.kernels.winograd; F(m x m, r x r) from matrices,
npcnn.kernels.winograd_general) and the conv steps that take them (npcnn.fast.winograd): the transforms
are the paper's and compute a correlation, the kernels equal PyTorch's conv on random shapes, and
ConvAct / ConvReLUPool computed by them equal the readable layers, on one thread and shared."""
import contextlib

import numpy as np
import pytest
import torch

import npcnn.nn as nn
from npcnn import blas, fast, kernels, parallel
from npcnn.models import INPUT_SHAPES, build_model
from npcnn.fast import ConvAct, ConvReLUPool, conv_direct, fused, winograd
from npcnn.kernels.winograd import A_T, B_T, G, tiles, winograd_conv_rows, winograd_weights
from npcnn.kernels.winograd_general import (general_tiles, winograd_general_conv_rows, winograd_general_weights,
                                            winograd_weight_grad_chunk)
from torch_oracle import TOL, rel_err


def test_the_transforms_compute_a_2x2_correlation():
    """Y = A^T [(G g G^T) * (B^T d B)] A is the 2x2 cross-correlation of a 4x4 patch d with a 3x3
    kernel g: the module's matrices are Lavin & Gray's, and winograd_weights applies G g G^T."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
        y = A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T
        direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
        np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)
    w = rng.standard_normal((5, 4, 3, 3))
    u = winograd_weights(w)
    assert u.shape == (16, 4, 5) and u.dtype == w.dtype
    np.testing.assert_allclose(u[:, 2, 3].reshape(4, 4), G @ w[3, 2] @ G.T, rtol=1e-12)


#: (m, r, points) of the general kernel's tests: the one the steps use, F(2x2, 3x3), F(4x4, 3x3)
#: (and F(3, 2), for the transforms alone).
GENERAL = [(2, 5, (0, 1, -1, 2, -2)), (2, 3, (0, 1, -1)), (4, 3, (0, 1, -1, 2, -2)), (3, 2, (0, 1, -1))]


@pytest.mark.parametrize("m, r, points", GENERAL)
def test_toom_cook_transforms_compute_a_correlation(m, r, points):
    """toom_cook's (B^T, G, A^T) give the m-output correlation of an r-tap filter in 1-D and, applied
    on both sides, the m x m one in 2-D; for F(2, 3) the same products as Lavin & Gray's matrices."""
    bt, g, at = winograd.toom_cook(m, r, points)
    alpha = m + r - 1
    assert bt.shape == (alpha, alpha) and g.shape == (alpha, r) and at.shape == (m, alpha)
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(20):
        d, k = rng.standard_normal(alpha), rng.standard_normal(r)
        np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"), rtol=1e-11, atol=1e-11)
        d2, k2 = rng.standard_normal((alpha, alpha)), rng.standard_normal((r, r))
        direct = np.array([[np.sum(d2[i:i + r, j:j + r] * k2) for j in range(m)] for i in range(m)])
        np.testing.assert_allclose(at @ ((g @ k2 @ g.T) * (bt @ d2 @ bt.T)) @ at.T, direct, rtol=1e-10, atol=1e-10)
    if (m, r) == (2, 3):                         # per point, the same product as the written-out kernel's
        for j in range(alpha):
            np.testing.assert_allclose(np.einsum("i,k,t->ikt", at[:, j], g[j], bt[j]),
                                       np.einsum("i,k,t->ikt", A_T[:, j], G[j], B_T[j]), atol=1e-15)
    w = rng.standard_normal((5, 4, r, r))
    u = winograd_general_weights(w, g, np.empty((alpha * alpha, 4, 5)))
    np.testing.assert_allclose(u[:, 2, 3].reshape(alpha, alpha), g @ w[3, 2] @ g.T, rtol=1e-12, atol=1e-14)


def test_toom_cook_refuses_bad_points():
    with pytest.raises(ValueError, match="needs 3 distinct points"):
        winograd.toom_cook(2, 3, (0, 1, -1, 2))
    with pytest.raises(ValueError, match="distinct"):
        winograd.toom_cook(2, 3, (0, 1, 1))


def _kernel_configs(count, seed=0, r=3):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        p = int(rng.integers(0, r))
        h, w = int(rng.integers(1, 14)), int(rng.integers(1, 14))
        if h + 2 * p < r or w + 2 * p < r:
            continue
        out.append((int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 40)), h, w, p,
                    int(rng.integers(0, 3))))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", _kernel_configs(100))
def test_winograd_kernel_equals_torch_conv(config, dtype):
    """The kernel's rows equal torch.nn.functional.conv2d (3x3, stride 1) on 100 random shapes: odd and
    one-pixel sizes (tiles over the edges), paddings 0 to 2, 1 to 39 channels, and images
    [first, last) of a larger batch."""
    if blas.kernel_gemm(dtype) is None:
        pytest.fail("npcnn's kernels cannot call numpy's BLAS here, so the Winograd path cannot run")
    n, c, f, h, w, p, first = config
    rng = np.random.default_rng(sum(config))
    x = rng.standard_normal((first + n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x[first:]), torch.from_numpy(weight), padding=p).numpy()
    ho, wo = ref.shape[2:]
    th, tw = tiles(ho, wo)
    x3 = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(first + n, h, w * c)
    v, m = np.empty((16, n * th * tw + 3, c), dtype), np.empty((16, n * th * tw + 3, f), dtype)
    rows = np.full((n * ho * wo, f), np.nan, dtype)
    winograd_conv_rows(*blas.kernel_gemm(dtype), x3, first, first + n, c, p, p, ho, wo, winograd_weights(weight),
                       v, m, rows)
    got = rows.reshape(n, ho, wo, f).transpose(0, 3, 1, 2)
    assert rel_err(got, ref) < TOL[np.dtype(dtype)] / 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", _kernel_configs(60, seed=3, r=5))
@pytest.mark.parametrize("m, r, points", GENERAL[:3])
def test_general_winograd_kernel_equals_torch_conv(m, r, points, config, dtype):
    """winograd_general_conv_rows with toom_cook's transforms equals torch.nn.functional.conv2d (r x r,
    stride 1) on 60 random shapes each for F(2x2, 5x5), F(2x2, 3x3) and F(4x4, 3x3): sizes that leave
    partial tiles at the edges, paddings 0 to 4, 1 to 39 channels, images [first, last) of a batch."""
    if blas.kernel_gemm(dtype) is None:
        pytest.fail("npcnn's kernels cannot call numpy's BLAS here, so the Winograd path cannot run")
    n, c, f, h, w, p, first = config
    p = min(p, r - 1)
    if h + 2 * p < r or w + 2 * p < r:
        h, w = h + r, w + r
    rng = np.random.default_rng(sum(config))
    x = rng.standard_normal((first + n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((f, c, r, r)).astype(dtype)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x[first:]), torch.from_numpy(weight), padding=p).numpy()
    ho, wo = ref.shape[2:]
    bt, g, at = winograd.toom_cook(m, r, points)
    alpha = m + r - 1
    th, tw = general_tiles(ho, wo, m)
    x3 = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(first + n, h, w * c)
    u = winograd_general_weights(weight, g, np.empty((alpha * alpha, c, f), dtype))
    v, mm = np.empty((alpha * alpha, n * th * tw + 3, c), dtype), np.empty((alpha * alpha, n * th * tw + 3, f), dtype)
    rows = np.full((n * ho * wo, f), np.nan, dtype)
    winograd_general_conv_rows(*blas.kernel_gemm(dtype), x3, first, first + n, c, p, p, ho, wo, bt.astype(dtype),
                               at.astype(dtype), u, v, mm, rows)
    got = rows.reshape(n, ho, wo, f).transpose(0, 3, 1, 2)
    # F(4x4, 3x3) and F(2x2, 5x5) multiply by up to 8 in their transforms: a few units more of rounding
    assert rel_err(got, ref) < TOL[np.dtype(dtype)] / (10 if (m, r) == (2, 3) else 2)


@pytest.mark.parametrize("conv", [nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(64, 32, 3),
                                  nn.Conv2d(32, 64, 3, padding=2), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.Conv2d(32, 64, 5, padding=2), nn.Conv2d(40, 16, 5)])
def test_which_convs_take_winograd(conv):
    assert winograd.fits(conv, np.float32) and winograd.fits(conv, np.float64)
    for other in (nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(32, 32, 3, stride=2), nn.Conv2d(32, 32, 7),
                  nn.Conv2d(32, 12, 3), nn.Conv2d(32, 32, (3, 1)), nn.Conv2d(1, 32, 5), nn.Conv2d(6, 16, 5),
                  nn.Conv2d(32, 32, 5, stride=2)):
        assert not winograd.fits(other, np.float32)
    assert not winograd.fits(conv, np.float16)


def _step_configs(count, seed=1):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(1, 6)), int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(3, 12)),
             int(rng.integers(3, 12)), int(rng.integers(0, 3)), bool(rng.integers(0, 2))) for _ in range(count)]


def _winograd_setup(monkeypatch, spied, loop, min_channels, index=0):
    """Winograd from ``min_channels``, no direct kernels (for the few-channel convs), the chunk loop in
    Python (``loop == "python"``) or in kernels.conv_rows one image per chunk, and ``winograd.<spied>``
    spied on: returns the list of the sizes of the array at ``index`` of what it hands out (the Winograd
    weights, or the weight gradient's A; 0: im2col) and the context to run the step in (BLAS held to one
    thread for the shared kernel)."""
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_CHANNELS", min_channels)
    monkeypatch.setattr(conv_direct, "DIRECT_MAX_TAPS", 0)
    used, real_args = [], getattr(winograd, spied)
    monkeypatch.setattr(winograd, spied, lambda *a: used.append(real_args(*a)[index].size) or real_args(*a))
    if loop == "python":
        monkeypatch.setattr(parallel, "kernel_gemm", lambda dtype: None)
        return used, contextlib.nullcontext
    monkeypatch.setattr(fused, "NHWC_CHUNK_BYTES", 1)
    return used, parallel.one_blas_thread


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("method", ["winograd", "im2col"])
@pytest.mark.parametrize("loop", ["python", "numba kernel, one image per chunk"])
@pytest.mark.parametrize("step_kind", ["conv", "conv-relu", "conv-tanh", "conv-relu-pool"])
@pytest.mark.parametrize("config", _step_configs(12))
def test_conv_steps_in_inference_equal_the_readable_layers(config, step_kind, loop, method, kernel, monkeypatch):
    """ConvAct (no activation, ReLU, tanh) and ConvReLUPool in inference (``forward(x, inference=True)``)
    with every 3x3 or 5x5 conv taken by Winograd (WINOGRAD_MIN_CHANNELS = 1), or by im2col from the unpadded input
    (none taken by Winograd), equal the readable layers' forward in float64, from a caller's NCHW batch
    and from an NCHW view of channels-last memory, with the chunk loop in Python and in kernels.conv_rows
    (one image per chunk, shared among threads); their backward then refuses. The Winograd scratch is
    spied on to prove which path ran."""
    n, c, f, h, w, p, bias = config
    if step_kind.endswith("pool"):
        h, w = max(h, 4), max(w, 4)                  # at least one pooling window
    h, w = max(h, kernel + 1 - 2 * p), max(w, kernel + 1 - 2 * p)
    used, shared = _winograd_setup(monkeypatch, "kernel_args", loop, 1 if method == "winograd" else 10 ** 6)
    rng = np.random.default_rng(sum(config))
    layers = [nn.Conv2d(c, f, kernel, padding=p, bias=bias, dtype=np.float64, rng=2)]
    layers += {"conv": [], "conv-relu": [nn.ReLU()], "conv-tanh": [nn.Tanh()],
               "conv-relu-pool": [nn.ReLU(), nn.MaxPool2d(2)]}[step_kind]
    x = rng.standard_normal((n, c, h, w))
    if step_kind.endswith("pool"):
        monkeypatch.setattr(fused, "_path", lambda conv, pool: "nhwc")
        step = ConvReLUPool(*layers)
    else:
        step = ConvAct(*layers)
    ref = x
    for layer in layers:
        ref = layer.forward(ref)
    with shared():
        got = step.forward(x, inference=True)
        viewed = step.forward(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), inference=True)
    assert used == [(kernel + 1) ** 2 * c * f if method == "winograd" else 0] * 2, "not the path asked for"
    assert rel_err(got, ref) < 1e-12
    assert rel_err(viewed, ref) < 1e-12             # a fast step's output (NCHW view of channels last), read in place
    with pytest.raises(RuntimeError, match="inference=True"):
        step.backward(np.ones_like(got))
    with shared():                                   # a forward for training takes im2col, and backward runs
        assert rel_err(step.forward(x), ref) < 1e-12
        step.backward(np.ones_like(got))
    assert used[-1] == 0


def _conv_act_reference(shape, kernel, act, seed, weight_seed):
    """A float64 conv (with ``act``: None, "relu", "tanh") over a random batch, run by the readable layers:
    ``(conv, layers, x, g, (y, dL/dx, [dL/dW, dL/db]))`` for a random upstream gradient ``g``; the conv's
    gradients are zeroed again for the fast step to fill."""
    n, c, f, h, w, p, bias = shape
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(c, f, kernel, padding=p, bias=bias, dtype=np.float64, rng=weight_seed)
    layers = [conv] + ({"relu": [nn.ReLU()], "tanh": [nn.Tanh()]}[act] if act else [])
    x = rng.standard_normal((n, c, h, w))
    ref = x
    for layer in layers:
        ref = layer.forward(ref)
    g = rng.standard_normal(ref.shape)
    dx_ref = g
    for layer in reversed(layers):
        dx_ref = layer.backward(dx_ref)
    grads_ref = [prm.grad.copy() for prm in conv.parameters()]
    conv.zero_grad()
    return conv, layers, x, g, (ref, dx_ref, grads_ref)


@pytest.mark.parametrize("param_grads", [True, False])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("loop", ["python", "numba kernel, one image per chunk"])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
@pytest.mark.parametrize("config", _step_configs(8, seed=4))
def test_conv_act_input_grad_by_winograd_equals_the_readable_layers(config, act, loop, kernel, param_grads,
                                                                    monkeypatch):
    """ConvAct's backward in training computes dL/dx as the conv of dL/d(conv output) with the flipped,
    channel-swapped kernel by Winograd (WINOGRAD_MIN_CHANNELS = 1 here): dL/dx and the parameter
    gradients equal the readable layers' in float64, with the chunk loop in Python and in
    kernels.conv_rows, paddings 0 to k - 1 (and one more, where col2im must take over), from a caller's
    batch; the forward stays im2col. The scratch is spied on to prove which path ran."""
    n, c, f, h, w, p, bias = config
    p = p + 2 if p == 2 and kernel == 5 else p         # 0, 1, 4 for 5x5 (4 = k - 1), 0 to 2 for 3x3
    h, w = max(h, kernel + 1 - 2 * p), max(w, kernel + 1 - 2 * p)
    big_pad = p == kernel - 1 and n % 2 == 0           # now and then a padding of k, beyond Winograd's reach
    p = p + 1 if big_pad else p
    used, shared = _winograd_setup(monkeypatch, "input_grad_args", loop, 1)
    conv, layers, x, g, (ref, dx_ref, grads_ref) = _conv_act_reference(
        (n, c, f, h, w, p, bias), kernel, act, seed=sum(config) + kernel, weight_seed=2)
    step = ConvAct(*layers)
    with shared():
        assert rel_err(step.forward(x), ref) < 1e-12
        dx = step.backward(g, param_grads=param_grads)
    assert used == [0 if big_pad else (kernel + 1) ** 2 * c * f], "not the path asked for"
    assert rel_err(dx, dx_ref) < 1e-12
    for prm, want in zip(conv.parameters(), grads_ref):
        if param_grads:
            assert rel_err(prm.grad, want) < 1e-12
        else:
            assert not np.any(prm.grad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_flipped_weights_are_the_transform_of_the_flipped_kernel(dtype):
    """The backward's Winograd weights (the kernel flipped in both directions, its channels swapped) taken
    from the forward's by a permutation equal the transform of that kernel, for several channel counts."""
    rng = np.random.default_rng(11)
    for c, f in [(1, 1), (3, 5), (16, 16), (7, 2), (32, 64)]:
        weight = rng.standard_normal((f, c, 3, 3)).astype(dtype)
        got = winograd.flipped_weights(winograd_weights(weight))
        want = winograd_weights(np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)))
        assert got.shape == want.shape == (16, f, c) and got.dtype == dtype and got.flags.c_contiguous
        assert rel_err(got, want) < (1e-15 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("loop", ["python", "numba kernel, one image per chunk"])
def test_the_backward_reuses_the_forwards_winograd_weights_only_while_the_weights_are_unchanged(loop, monkeypatch):
    """After a forward by Winograd the backward's dL/dx takes its Winograd weights from the forward's (one
    transform a step, not two); if the weights change in between it transforms them again, and dL/dx is the
    readable layer's, which reads the weights at its backward."""
    calls = []
    transform = kernels.winograd_weights
    monkeypatch.setattr(kernels, "winograd_weights", lambda w: calls.append(w.shape) or transform(w))
    shared = parallel.one_blas_thread if loop.startswith("numba") else contextlib.nullcontext
    if loop.startswith("numba"):
        monkeypatch.setattr(fused, "NHWC_CHUNK_BYTES", 1)
    rng = np.random.default_rng(12)
    conv = nn.Conv2d(16, 16, 3, padding=1, dtype=np.float64, rng=12)
    x, g = rng.standard_normal((3, 16, 9, 7)), rng.standard_normal((3, 16, 9, 7))
    step = ConvAct(conv)
    for change in (False, True):
        calls.clear()
        with shared():
            step.forward(x, winograd_forward=True)
            if change:
                conv.weight.data *= 1.5
            dx = step.backward(g, param_grads=False)
        assert len(calls) == (2 if change else 1), calls
        conv.forward(x)                          # dL/dx of a conv depends on the weights and g alone
        assert rel_err(dx, conv.backward(g)) < 1e-12


@pytest.mark.parametrize("model", ["seed-cnn", "madry-mnist", "small-vgg"])
def test_only_a_forward_for_inference_takes_winograd_in_a_net_with_max_pools(model, monkeypatch):
    """A net with max-pools computes its forward for a backward (training, the attacks' input gradients) by
    im2col (so a constant background, as here, gives exactly equal conv outputs, and the max-pools route
    its gradient to each window's first position, as PyTorch does); only ``forward(x, inference=True)``
    takes Winograd (the nets' 32- and 64-channel 3x3 convs, Madry et al.'s 5x5), equal to it to rounding,
    and a backward after it raises."""
    assert not winograd.forward_may_take_winograd(build_model(model))
    used = []
    real_args = winograd.kernel_args
    monkeypatch.setattr(winograd, "kernel_args", lambda *a: used.append(a[-1]) or real_args(*a))
    net = fast.plan(build_model(model, rng=0).eval())
    shape = (3, *INPUT_SHAPES[model])
    x = np.full(shape, -0.4242, np.float32)          # MNIST's background after normalisation
    x[:, :, 10:18, 9:20] = 2.0                       # and a stroke
    exact = net.forward(x)
    assert used and not any(used)
    winograd_out = net.forward(x, inference=True)
    assert any(used[len(used) // 2:])
    assert rel_err(winograd_out, exact) < 1e-5
    with pytest.raises(RuntimeError, match="inference=True"):
        net.backward(np.ones_like(exact))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_net_without_max_pools_trains_with_a_winograd_forward(dtype, monkeypatch):
    """The small ResNet has no max-pool: its training forward computes the 16-, 32- and 64-channel 3x3 convs
    by Winograd too (``winograd_forward=False`` forces im2col), and the loss's gradients, dL/dx and every
    Parameter's, equal those of the readable layers (no fusion at all) to rounding; so does a
    batch-norm net in eval mode (the folded convs). float32 is compared in eval mode only: with a batch
    norm in training mode behind a conv, dL/dW of that conv is a small difference of large sums (the
    batch norm's backward removes the batch mean of the gradient), so float32 rounding of any method
    moves it by a few per cent (2.6e-2 for the stride-2 conv here on OpenBLAS's Haswell kernels, im2col
    and Winograd alike); float64 holds it to 1e-11."""
    used = []
    real_args = winograd.kernel_args
    monkeypatch.setattr(winograd, "kernel_args", lambda *a: used.append(a[-1]) or real_args(*a))
    model = build_model("small-resnet", dtype=dtype, rng=1)
    assert winograd.forward_may_take_winograd(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    g = rng.standard_normal((5, 10)).astype(dtype)
    tol = 1e-11 if dtype == np.float64 else 2e-4
    for training in ((True, False) if dtype == np.float64 else (False,)):
        model.train(training)
        results = {}
        for name, net, kwargs in (("readable", fast.plan(model, fuse=False), {}),
                                  ("im2col", fast.plan(model), {"winograd_forward": False}),
                                  ("winograd", fast.plan(model), {})):
            model.zero_grad()
            used.clear()
            y = net.forward(x.copy(), **kwargs)
            dx = net.backward(g.copy())
            results[name] = (y, dx, [p.grad.copy() for p in model.parameters()])
            if name != "readable":
                assert any(used) == (name == "winograd"), (name, used)
        for name in ("im2col", "winograd"):
            y, dx, grads = results[name]
            want_y, want_dx, want_grads = results["readable"]
            assert rel_err(y, want_y) < tol and rel_err(dx, want_dx) < tol, (name, training)
            assert all(rel_err(a, b) < tol for a, b in zip(grads, want_grads)), (name, training)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("transforms", ["F(2x2, 3x3) written out", "F(2x2, 3x3)", "F(4x4, 3x3)", "F(2x2, 5x5)"])
@pytest.mark.parametrize("config", [tuple(int(v) for v in np.random.default_rng(7 + i).integers(
    (1, 1, 1, 1, 1, 0), (5, 40, 40, 14, 14, 6))) for i in range(24)])
def test_winograd_weight_grad_chunk_equals_torch(config, transforms, dtype):
    """kernels.winograd_weight_grad_chunk sums, over two chunks of images, the transform-domain weight
    gradient whose ``G^T M G`` is PyTorch's dL/dW of the conv (random shapes, paddings past k - 1,
    partial edge tiles), with the written-out F(2x2, 3x3) input transform and the general one."""
    n, c, f, h, w, p = config
    r, m, points = {"F(2x2, 3x3) written out": (3, 2, None), "F(2x2, 3x3)": (3, 2, (0, 1, -1)),
                    "F(4x4, 3x3)": (3, 4, (0, 1, -1, 2, -2)), "F(2x2, 5x5)": (5, 2, (0, 1, -1, 2, -2))}[transforms]
    h, w = max(h, r + 1 - 2 * p), max(w, r + 1 - 2 * p)
    if points is None:
        bt, g_mat, a_mat = np.empty((0, 0)), G, A_T.T
    else:
        bt, g_mat, at = winograd.toom_cook(m, r, points)
        a_mat = at.T
    rng = np.random.default_rng(sum(config) + r + m)
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, r, r))
    ho, wo = h + 2 * p - r + 1, w + 2 * p - r + 1
    g = rng.standard_normal((n, f, ho, wo))
    w_t = torch.tensor(wt, requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(x), w_t, padding=p).backward(torch.tensor(g))
    x3 = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(n, h, w * c).astype(dtype)
    ga3 = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).reshape(n, ho, wo * f).astype(dtype)
    alpha = m + r - 1
    th, tw = general_tiles(ho, wo, m)
    tiles_max = max(1, n - 1) * th * tw + 1
    v, gv = np.empty((alpha ** 2, tiles_max, c), dtype), np.empty((alpha ** 2, tiles_max, f), dtype)
    m_acc = np.zeros((alpha ** 2, c, f), dtype)
    for first, last in ((0, 1), (1, n)):
        winograd_weight_grad_chunk(*blas.kernel_gemm(np.dtype(dtype)), x3, ga3[first:last], first, last, c, p, p,
                                   ho, wo, bt.astype(dtype), a_mat.astype(dtype), v, gv, m_acc)
    got = np.einsum("sp,stcf,tq->fcpq", g_mat, m_acc.astype(np.float64).reshape(alpha, alpha, c, f), g_mat)
    assert rel_err(got, w_t.grad) < (1e-12 if dtype == np.float64 else 5e-5)


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("loop", ["python", "numba kernel, one image per chunk"])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
@pytest.mark.parametrize("config", _step_configs(8, seed=9))
def test_conv_act_weight_grad_by_winograd_equals_the_readable_layers(config, act, loop, kernel, input_grad,
                                                                     monkeypatch):
    """ConvAct's backward computes dL/dW by Winograd (WINOGRAD_MIN_CHANNELS = 1 here): dL/dW, dL/db and dL/dx equal the readable layers' in float64, with the chunk loop in Python
    and in kernels.conv_rows, paddings 0 to k. The scratch is spied on to prove which path ran."""
    n, c, f, h, w, p, bias = config
    p = p + 2 if p == 2 and kernel == 5 else p + (n % 2 == 0)
    h, w = max(h, kernel + 1 - 2 * p), max(w, kernel + 1 - 2 * p)
    used, shared = _winograd_setup(monkeypatch, "weight_grad_args", loop, 1, index=1)
    conv, layers, x, g, (_, dx_ref, grads_ref) = _conv_act_reference(
        (n, c, f, h, w, p, bias), kernel, act, seed=sum(config) + kernel + 1, weight_seed=3)
    step = ConvAct(*layers)
    with shared():
        step.forward(x)
        dx = step.backward(g, param_grads=True, input_grad=input_grad)
    assert used and all(size > 0 for size in used), "not the path asked for"
    if input_grad:
        assert rel_err(dx, dx_ref) < 1e-12
    else:
        assert dx is None
    for prm, want in zip(conv.parameters(), grads_ref):
        assert rel_err(prm.grad, want) < 1e-12


def test_the_weight_grad_takes_winograd_where_the_forward_may():
    """By default the weight gradient takes Winograd for the convs the forward may take it for (3x3 / 5x5
    stride-1, WINOGRAD_MIN_CHANNELS = 16 channels in and out), and only when parameter gradients are asked."""
    step = ConvAct(nn.Conv2d(32, 32, 3, padding=1))
    for conv, want in ((nn.Conv2d(32, 32, 3, padding=1), True), (nn.Conv2d(32, 64, 5, padding=2), True),
                       (nn.Conv2d(16, 16, 3, padding=1), True), (nn.Conv2d(8, 16, 3, padding=1), False),
                       (nn.Conv2d(16, 8, 3, padding=1), False), (nn.Conv2d(32, 32, 3, stride=2), False),
                       (nn.Conv2d(32, 32, 1), False)):
        args = winograd.weight_grad_args(step, conv, np.float32, 2, 1, 14, 14, True)
        assert (args[1].size > 0) == (want and blas.kernel_gemm(np.float32) is not None), conv
    assert winograd.weight_grad_args(step, nn.Conv2d(32, 32, 3), np.float32, 2, 1, 14, 14, False)[1].size == 0
