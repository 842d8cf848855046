"""The channels-last conv step (ConvAct), the residual block on the fast path (FastResidual) and the
kernel they add (col2im_nhwc), each against the readable layers they stand for."""
import contextlib

import numba
import numpy as np
import pytest

import npcnn.nn as nn
from npcnn import fast, kernels, parallel
from npcnn.fast import ConvAct, ConvReLUPool, FastResidual, conv_act, conv_direct
from npcnn.fast import fused
from npcnn.models import build_model
from test_kernels_fast import NEEDS_TWO_THREADS, numba_threads

ACTS = {"none": None, "relu": nn.ReLU, "tanh": nn.Tanh}


def _configs(count, seed=0):
    """Random conv settings: (n, c, f, h, w, kernel, stride, padding, bias)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        h, w = int(rng.integers(k[0], 16)), int(rng.integers(k[1], 16))
        if h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
            continue
        out.append((int(rng.integers(1, 6)), int(rng.integers(1, 7)), int(rng.integers(1, 9)), h, w, k, s, p,
                    bool(rng.integers(0, 2))))
    return out


def _readable(layers, x, g, param_grads=True, input_grad=True):
    for layer in layers:
        layer.zero_grad() if hasattr(layer, "zero_grad") else None
    y = x
    for layer in layers:
        y = layer.forward(y)
    d = g
    for layer in reversed(layers):
        d = layer.backward(d, param_grads=param_grads)
    grads = [None if p.grad is None else p.grad.copy() for p in layers[0].parameters()]
    return y, (d if input_grad else None), grads


def _fast(layers, x, g, param_grads=True, input_grad=True):
    layers[0].zero_grad()
    step = ConvAct(*layers)
    y = step.forward(x)
    d = step.backward(g, param_grads, input_grad)
    return y, d, [None if p.grad is None else p.grad.copy() for p in layers[0].parameters()]


def _close(a, b, tol):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("path", ["gemm", "gemm on numba's threads", "direct", "direct as wide GEMMs"])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("config", _configs(40))
def test_conv_act_equals_the_readable_layers_in_float64(config, act, path, monkeypatch):
    """Forward, dL/dx, dL/dW and dL/db of every shape (strides, paddings, one-pixel kernels, odd sizes),
    from a contiguous NCHW input and from an NCHW view of channels-last memory (a fast step's output),
    through the channels-last im2col + GEMM (its chunk loop in Python, and in kernels.conv_rows with one
    image per chunk, as inside a net's step), through the direct kernels (a strided conv over its
    input's phase planes) and through their GEMMs on wide columns (kernels.direct_conv_gemm, chunks of
    one image and of several)."""
    n, c, f, h, w, k, s, p, bias = config
    if path.startswith("direct"):
        monkeypatch.setattr(conv_direct, "DIRECT_MAX_TAPS", 10 ** 6)
        monkeypatch.setattr(conv_direct, "DIRECT_MAX_FILTERS", 10 ** 6)
        assert conv_direct.direct(nn.Conv2d(c, f, k, s, p))
    else:
        monkeypatch.setattr(conv_direct, "DIRECT_MAX_TAPS", 0)
    calls = []
    shared = contextlib.nullcontext
    if path == "gemm on numba's threads":
        monkeypatch.setattr(fused, "NHWC_CHUNK_BYTES", 1)
        backward = kernels.conv_rows_backward
        monkeypatch.setattr(kernels, "conv_rows_backward", lambda *a: calls.append(a) or backward(*a))
        shared = parallel.one_blas_thread
    elif path == "direct as wide GEMMs":
        monkeypatch.setattr(conv_direct, "WIDE_GEMM_MIN_FILTERS", 0)
        monkeypatch.setattr(fused, "NHWC_CHUNK_BYTES", 1 if n % 2 else 1 << 20)      # one image a chunk, or all
        for name in ("direct_conv_gemm_to_nhwc", "direct_conv_gemm_weight_grad"):
            kernel = getattr(kernels, name)
            monkeypatch.setattr(kernels, name, lambda *a, kernel=kernel: calls.append(a) or kernel(*a))
        shared = parallel.one_blas_thread
    rng = np.random.default_rng(sum(config[:5]))
    layers = [nn.Conv2d(c, f, k, s, p, bias=bias, dtype=np.float64, rng=1)]
    if ACTS[act] is not None:
        layers.append(ACTS[act]())
    x = rng.standard_normal((n, c, h, w))
    g = rng.standard_normal(layers[0].output_shape(x.shape))
    ref = _readable(layers, x, g)
    for inp in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        with shared():
            got = _fast(layers, inp, g)
        for a, b in zip(got, ref):
            if isinstance(a, list):
                for ga, gb in zip(a, b):
                    _close(ga, gb, 1e-12)
            else:
                _close(a, b, 1e-12)
    assert len(calls) == {"gemm on numba's threads": 2, "direct as wide GEMMs": 4}.get(path, 0)   # for both inputs


@pytest.mark.parametrize("param_grads,input_grad", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("stride,shared", [(1, False), (2, False), (2, True)])   # direct; GEMM: Python, numba loop
def test_conv_act_skips_what_is_not_asked(param_grads, input_grad, stride, shared):
    rng = np.random.default_rng(2)
    layers = [nn.Conv2d(3, 4, 3, stride, 1, dtype=np.float64, rng=2), nn.ReLU()]
    assert conv_direct.direct(layers[0]) == (stride == 1)
    x = rng.standard_normal((5, 3, 9, 9))
    g = rng.standard_normal(layers[0].output_shape(x.shape))
    ref = _readable(layers, x, g, param_grads=param_grads, input_grad=input_grad)
    with parallel.one_blas_thread(shared):
        y, dx, grads = _fast(layers, x, g, param_grads, input_grad)
    _close(y, ref[0], 1e-12)
    _close(dx, ref[1], 1e-12)
    for a, b in zip(grads, ref[2]):
        _close(a, b if param_grads else None, 1e-12)


@pytest.mark.parametrize("c,f,shared", [(16, 16, False), (1, 6, True), (1, 16, True)])   # GEMM, direct, wide GEMMs
def test_conv_act_float32_stays_float32_and_close(c, f, shared):
    rng = np.random.default_rng(3)
    layers = [nn.Conv2d(c, f, 3, padding=1, rng=3), nn.Tanh()]
    assert conv_direct.direct(layers[0]) == (c == 1)
    x = rng.standard_normal((6, c, 12, 12)).astype(np.float32)
    g = rng.standard_normal((6, f, 12, 12)).astype(np.float32)
    ref = _readable(layers, x, g)
    with parallel.one_blas_thread(shared):
        got = _fast(layers, x, g)
    assert got[0].dtype == got[1].dtype == got[2][0].dtype == np.float32
    _close(got[0], ref[0], 1e-5)
    _close(got[1], ref[1], 1e-5)
    for a, b in zip(got[2], ref[2]):
        _close(a, b, 1e-5)


@NEEDS_TWO_THREADS
@pytest.mark.parametrize("shared", ["python threads in turn", "python threads", "numba kernel"])
def test_conv_act_shared_among_threads_equals_one_thread(shared, monkeypatch):
    """One image per chunk (13 chunks), shared among npcnn's threads while BLAS runs on one: the output
    and every gradient equal one thread walking the chunks, to rounding. The chunks go to numba's threads
    (kernels.conv_rows) when the kernels can call BLAS, else to Python threads."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((13, 6, 9, 10)).astype(np.float32)
    g = rng.standard_normal((13, 5, 5, 5)).astype(np.float32)
    monkeypatch.setattr(fused, "NHWC_CHUNK_BYTES", 1)
    calls, real = [], parallel.run_threads
    if shared == "numba kernel":
        assert parallel.blas.kernel_gemm(np.float32) is not None, "the kernels cannot call numpy's BLAS here"
        for name, workers_at in (("conv_rows_forward", 16), ("conv_rows_backward", 19)):     # cols_all's position
            kernel = getattr(kernels, name)
            monkeypatch.setattr(kernels, name, lambda *a, k=kernel, i=workers_at: calls.append(a[i].shape[0]) or k(*a))
    else:
        monkeypatch.setattr(parallel, "kernel_gemm", lambda dtype: None)
    if shared == "python threads in turn":
        monkeypatch.setattr(parallel, "run_threads",
                            lambda fn, w: calls.append(w) or [fn(t) for t in range(w)] and None)
    elif shared == "python threads":
        monkeypatch.setattr(parallel, "run_threads", lambda fn, w: calls.append(w) or real(fn, w))
    results = []
    for threads in (numba.get_num_threads(), 1):
        with numba_threads(threads), parallel.one_blas_thread():
            layers = [nn.Conv2d(6, 5, 3, stride=2, padding=1, rng=3), nn.ReLU()]
            results.append(_fast(layers, x, g))
    assert calls[:2] == [numba.get_num_threads()] * 2 and calls[0] > 1      # forward and backward both shared
    (y1, d1, g1), (y2, d2, g2) = results
    for a, b in zip([y1, d1, *g1], [y2, d2, *g2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


@pytest.mark.parametrize("variant", ["parallel", "serial"])
@pytest.mark.parametrize("pad", [(0, 0), (1, 2), (3, 0)])
@pytest.mark.parametrize("k,s", [((3, 3), (1, 1)), ((4, 4), (2, 2)), ((1, 1), (2, 2)), ((5, 2), (1, 3))])
def test_col2im_nhwc_is_the_adjoint_of_im2col_nhwc(k, s, pad, variant):
    """im2col with padding equals im2col of the zero-padded input (so its padding taps are zeros, even
    where a window lies wholly on the padding); <im2col(x), d> == <x, col2im(d)> for random x and d; and
    col2im zeroes what it writes into."""
    rng = np.random.default_rng(7)
    n, c, h, w = 3, 4, 11, 9
    (ph, pw), hp, wp = pad, h + 2 * pad[0], w + 2 * pad[1]
    ho, wo = (hp - k[0]) // s[0] + 1, (wp - k[1]) // s[1] + 1
    x = rng.standard_normal((n, h, w, c))
    xp = np.zeros((n, hp, wp, c))
    xp[:, ph:ph + h, pw:pw + w] = x
    im2col, col2im = getattr(kernels.im2col_nhwc, variant), getattr(kernels.col2im_nhwc, variant)
    cols = np.full((n * ho * wo, k[0] * k[1] * c), np.nan)
    im2col(x.reshape(n, h, -1), c, k[0], k[1], s[0], s[1], ph, pw, ho, wo, cols)
    cols_of_padded = np.empty_like(cols)
    im2col(xp.reshape(n, hp, -1), c, k[0], k[1], s[0], s[1], 0, 0, ho, wo, cols_of_padded)
    np.testing.assert_array_equal(cols, cols_of_padded)
    d = rng.standard_normal(cols.shape)
    back = np.full((n, h, w * c), np.nan)              # garbage that must be overwritten
    col2im(d, c, k[0], k[1], s[0], s[1], ph, pw, ho, wo, back)
    assert np.isfinite(back).all()
    assert abs((cols * d).sum() - (x.reshape(n, h, -1) * back).sum()) < 1e-10 * np.abs(cols * d).sum()


@pytest.mark.parametrize("variant", ["parallel", "serial"])
def test_im2col_nhwc_equals_numpys_sliding_windows(variant):
    """Every row of im2col_nhwc is the window of the zero-padded input, taps in (i, j, c) order, and
    col2im_nhwc is its adjoint, on 60 random shapes: strides 1-3, kernels up to wider than the image (windows with no column inside it),
    padding up to the kernel's size, 1-17 channels."""
    rng = np.random.default_rng(11)
    im2col, col2im = getattr(kernels.im2col_nhwc, variant), getattr(kernels.col2im_nhwc, variant)
    for _ in range(60):
        (kh, kw), (sh, sw) = rng.integers(1, 6, 2).tolist(), rng.integers(1, 4, 2).tolist()
        ph, pw = int(rng.integers(0, kh + 1)), int(rng.integers(0, kw + 1))
        n, c = int(rng.integers(1, 4)), int(rng.choice([1, 3, 6, 16, 17]))
        h, w = int(rng.integers(max(1, kh - 2 * ph), 12)), int(rng.integers(max(1, kw - 2 * pw), 12))
        xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), np.float32)
        xp[:, ph:ph + h, pw:pw + w] = x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
        ho, wo = windows.shape[1:3]
        expected = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, kh * kw * c)   # (n, oy, ox) x (i, j, c)
        cols = np.full(expected.shape, np.nan, np.float32)
        im2col(x.reshape(n, h, w * c), c, kh, kw, sh, sw, ph, pw, ho, wo, cols)
        np.testing.assert_array_equal(cols, expected, err_msg=f"{(n, c, h, w, kh, kw, sh, sw, ph, pw)}")
        d = rng.standard_normal(cols.shape)                # and col2im is its adjoint on the same shapes
        back = np.full((n, h, w * c), np.nan)
        col2im(d, c, kh, kw, sh, sw, ph, pw, ho, wo, back)
        assert abs((cols * d).sum() - (x.reshape(n, h, -1) * back).sum()) <= 1e-9 * max(1.0, np.abs(cols * d).sum())


def test_plan_groups_every_zoo_net_into_fast_steps():
    """Which steps the fast path makes of each net: the triples, the other convs with their activation,
    the residual blocks with planned bodies."""
    def kinds(net):
        out = []
        for step in net.steps():
            if isinstance(step, FastResidual):
                out.append(("residual", kinds(step.body), step.shortcut and kinds(step.shortcut)))
            else:
                out.append(type(step).__name__)
        return out
    assert kinds(fast.plan(build_model("lenet5")))[:4] == ["ConvAct", "FastAvgPool", "ConvAct", "FastAvgPool"]
    assert kinds(fast.plan(build_model("wong-mnist"))) == ["ConvAct", "ConvAct", "FlatLinear", "ReLU", "Linear",
                                                          "LogSoftmax"]
    assert kinds(fast.plan(build_model("small-vgg")))[:4] == ["ConvAct", "ConvReLUPool", "ConvAct", "ConvReLUPool"]
    resnet = kinds(fast.plan(build_model("small-resnet")))
    assert resnet[:1] == ["ConvBatchNorm"]                        # conv -> BN -> ReLU, one step
    assert resnet[1] == ("residual", ["ConvBatchNorm", "ConvBatchNorm"], None)
    assert resnet[2][2] == ["ConvBatchNorm"]                      # the 1x1 stride-2 shortcut
    assert len(resnet) == 4 + 3                                   # each block's ReLU folded into its step
    assert resnet[4:] == ["AdaptiveAvgPool2d", "FlatLinear", "LogSoftmax"]
    assert all(step.relu is not None for step in fast.plan(build_model("small-resnet")).steps()[1:4])
    assert not any(isinstance(s, (ConvAct, ConvReLUPool)) for s in fast.plan(build_model("lenet5"), fuse=False).steps())


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_fast_residual_equals_the_readable_block_in_float64(relu, shared, monkeypatch):
    """The block (and the ReLU after it, folded in), identity and 1x1-conv shortcuts, against the readable
    layers run one after the other; also with npcnn sharing out the GEMMs (the kernels' path, as in a
    net's step), where a shortcut conv of more than 16 filters scatters its dL/dx onto the body's."""
    from npcnn.models.zoo import basic_block
    fused_sum, backward, scattered = kernels.batchnorm_add_rows, kernels.conv_rows_backward, []
    monkeypatch.setattr(kernels, "conv_rows_backward", lambda *a: scattered.append(a[25]) or backward(*a))
    context = parallel.one_blas_thread if shared else contextlib.nullcontext
    rng = np.random.default_rng(8)
    for stride, cin, cout in ((1, 4, 4), (2, 4, 6), (2, 4, 20)):
        block = basic_block(cin, cout, stride, dtype=np.float64, rng=int(stride))
        layers = nn.Sequential(block, nn.ReLU()) if relu else block
        x = rng.standard_normal((5, cin, 8, 8))
        y = layers.forward(x)
        g = rng.standard_normal(y.shape)
        block.zero_grad()
        dx = layers.backward(g)
        grads = [p.grad.copy() for p in block.parameters()]
        block.zero_grad()
        step = FastResidual(block, lambda part: fast.plan(part, fuse=True), nn.ReLU() if relu else None)
        # one pass for the body's batch norm and the shortcut's, if it has one; an identity shortcut needs its x
        # channels last as the body's output is (a fast step's output is), else the sum is NumPy's
        for x_in, expected_calls in ((x, [True] if cin != cout else []),
                                     (np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                                      [cin != cout])):
            calls = []
            with _kernel_variant(kernels, "batchnorm_add_rows", lambda *a: calls.append(a[10]) or fused_sum(*a)):
                with context():
                    np.testing.assert_allclose(step.forward(x_in), y, rtol=0, atol=1e-12)
            assert calls == expected_calls
        scattered.clear()
        with context():
            np.testing.assert_allclose(step.backward(g), dx, rtol=0, atol=1e-12)
        assert sum(scattered) == (shared and cout > 16)
        for p, ref in zip(block.parameters(), grads):
            np.testing.assert_allclose(p.grad, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shared", [False, True])
def test_conv_step_adds_its_input_gradient_onto_add_to(shared, monkeypatch):
    """``ConvAct.backward(..., add_to=A)`` returns A itself, holding A + dL/dx: scattered onto A by col2im in
    kernels.conv_rows_backward (on numba's threads, a channels-last A), added afterwards otherwise (a
    Winograd dL/dx, the direct path, Python's loop, an NCHW A); a residual block's shortcut uses it."""
    rng = np.random.default_rng(11)
    backward, flags = kernels.conv_rows_backward, []
    monkeypatch.setattr(kernels, "conv_rows_backward", lambda *a: flags.append(a[25]) or backward(*a))
    for c, f, k, s, p, h, scatters in ((6, 8, 1, 2, 0, 9, True), (5, 7, 3, 2, 1, 8, True),
                                       (16, 16, 3, 1, 1, 6, False), (1, 4, 3, 1, 1, 7, False)):
        conv = nn.Conv2d(c, f, k, s, p, bias=False, dtype=np.float64, rng=2)
        x = rng.standard_normal((3, c, h, h))
        g = rng.standard_normal(conv.output_shape(x.shape))
        ref = _readable([conv], x, g)
        for channels_last in (False, True):
            a0 = rng.standard_normal(x.shape)
            a = np.array(a0.transpose(0, 2, 3, 1), order="C").transpose(0, 3, 1, 2) if channels_last else a0.copy()
            conv.zero_grad()
            flags.clear()
            step = ConvAct(conv)
            with parallel.one_blas_thread() if shared else contextlib.nullcontext():
                step.forward(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
                assert step.backward(g, add_to=a) is a
            _close(a, a0 + ref[1], 1e-12)
            _close(conv.weight.grad, ref[2][0], 1e-12)
            assert flags == ([channels_last and scatters] if shared and not step._direct else [])


def test_fast_residual_plans_a_single_layer_body_and_shortcut():
    """A Residual whose body or shortcut is one layer (not a Sequential) runs on the fast path as the readable
    block does (they are planned as one-layer sequences sharing that layer)."""
    rng = np.random.default_rng(4)
    block = nn.Residual(nn.Conv2d(3, 5, 3, padding=1, dtype=np.float64, rng=0),
                        nn.Conv2d(3, 5, 1, dtype=np.float64, rng=1))
    model = nn.Sequential(block, nn.ReLU())
    x = rng.standard_normal((2, 3, 6, 6))
    y = model.forward(x)
    g = rng.standard_normal(y.shape)
    dx = model.backward(g)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    net = fast.plan(model)
    np.testing.assert_allclose(net.forward(x), y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(net.backward(g), dx, rtol=0, atol=1e-12)
    for p, ref in zip(model.parameters(), grads):
        np.testing.assert_allclose(p.grad, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["parallel", "serial"])
def test_batchnorm_add_rows_equals_the_batch_norms_then_the_sum(dtype, variant):
    """The residual block's one pass (its batch norms, the sum, the ReLU) gives, to the bit, what
    batchnorm_apply_rows for each batch norm and then add_relu give, NaN and infinities included; on a
    run of whole rows (several tiles) and on rows whose count leaves a short last tile."""
    rng = np.random.default_rng(6)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-30], dtype)
    for m, c in ((9, 5), (40 * 28 * 28, 16)):
        x, s = rng.standard_normal((2, m, c)).astype(dtype) * 3
        x.flat[:6], s.flat[:6] = special, special[::-1]
        stats = [rng.standard_normal(c).astype(dtype) for _ in range(4)]
        stats_s = [rng.standard_normal(c).astype(dtype) for _ in range(4)]
        stats[1], stats_s[1] = np.abs(stats[1]), np.abs(stats_s[1])                 # the inverse deviations
        run = kernels.run_length(x)
        for skip_norm in (False, True):
            for relu in (False, True):
                y, ys = np.empty_like(x), np.empty_like(s)
                kernels.batchnorm_apply_rows.serial(x, *stats, False, y, run)
                if skip_norm:
                    kernels.batchnorm_apply_rows.serial(s, *stats_s, False, ys, run)
                expected = np.empty_like(x)
                kernels.add_relu.serial(y.ravel(), (ys if skip_norm else s).ravel(), relu, expected.ravel())
                out = np.full_like(x, 7)
                getattr(kernels.batchnorm_add_rows, variant)(x, *stats, s, *stats_s, skip_norm, relu, out, run)
                np.testing.assert_array_equal(out, expected)


def test_fast_residual_adds_into_no_gradient_it_does_not_own():
    """The block's backward sums into the body's dL/dx in place, unless that is the caller's gradient
    itself (an eval-mode Dropout body hands it back unchanged, the identity shortcut adds it again)."""
    rng = np.random.default_rng(3)
    block = nn.Residual(nn.Sequential(nn.Dropout(0.5, rng=0)))
    block.eval()
    step = FastResidual(block, lambda part: fast.plan(part, fuse=True), nn.ReLU())
    x = rng.standard_normal((2, 3, 4, 4))
    y = step.forward(x)
    np.testing.assert_array_equal(y, np.maximum(2 * x, 0))
    g = rng.standard_normal(y.shape)
    kept = g.copy()
    np.testing.assert_array_equal(step.backward(g), 2 * kept * (y > 0))
    np.testing.assert_array_equal(g, kept)                     # the caller's gradient is left alone
    no_relu = FastResidual(block, lambda part: fast.plan(part, fuse=True))
    no_relu.forward(x)
    np.testing.assert_array_equal(no_relu.backward(g), 2 * kept)
    np.testing.assert_array_equal(g, kept)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["parallel", "serial"])
def test_add_relu_equals_numpy(dtype, variant):
    """The residual sum's kernel against NumPy, NaN and infinities included, in NCHW, in an NCHW view
    of channels-last memory, into one of their inputs, and through NumPy for layouts that differ."""
    from npcnn.fast.norm_act import add_relu
    rng = np.random.default_rng(5)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-30], dtype)
    for shape in [(3, 5, 7, 2), (40, 16, 28, 28)]:                # the second over several kernel blocks
        a = rng.standard_normal(shape).astype(dtype)
        b = rng.standard_normal(shape).astype(dtype)
        a.flat[:6], b.flat[:6] = special, special[::-1]
        for relu in (False, True):
            expected = np.maximum(a + b, 0) if relu else a + b
            for x, z in ((a, b), (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                                  np.ascontiguousarray(b.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)),
                         (a, np.ascontiguousarray(b.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))):
                kernel = getattr(kernels.add_relu, variant)
                with _kernel_variant(kernels, "add_relu", kernel):
                    out = add_relu(x, z, relu)
                    assert out.strides == x.strides
                    np.testing.assert_array_equal(out, expected)
                    inplace = x.copy(order="K")
                    assert add_relu(inplace, z, relu, out=inplace) is inplace
                    np.testing.assert_array_equal(inplace, expected)


@contextlib.contextmanager
def _kernel_variant(module, name, fn):
    """``module.name`` replaced by ``fn`` (one of a kernel's two compilations) inside the block."""
    saved = getattr(module, name)
    setattr(module, name, fn)
    try:
        yield
    finally:
        setattr(module, name, saved)


def test_phase_planes_round_trip_and_turn_a_strided_conv_into_a_stride_one_conv():
    rng = np.random.default_rng(11)
    a = rng.standard_normal((2, 3, 8, 9))
    q = conv_direct.to_phases(a, 2, 3)
    assert q.shape == (2, 18, 4, 3)
    np.testing.assert_array_equal(q[:, (1 * 2 + 1) * 3 + 2], a[:, 1, 1::2, 2::3])      # plane (c=1, u=1, v=2)
    np.testing.assert_array_equal(conv_direct.from_phases(q, 2, 3), a)
    assert conv_direct.to_phases(a, 1, 1) is a
    assert conv_direct.direct(nn.Conv2d(1, 8, 4, stride=2, padding=1))       # counted as 4 x 2x2 taps
    assert conv_direct.direct(nn.Conv2d(1, 16, 4, stride=2, padding=1))      # Wong et al.'s first
    assert not conv_direct.direct(nn.Conv2d(1, 32, 3, padding=1))            # too many filters
    assert not conv_direct.direct(nn.Conv2d(8, 8, 4, stride=2, padding=1))   # 32 x 2x2 taps
    assert conv_direct.direct(nn.Conv2d(1, 6, 5, padding=2))                 # LeNet-5's first


@pytest.mark.parametrize("variant", ["parallel", "serial"])
def test_pad_to_phases_equals_padding_then_to_phases(variant):
    """kernels.pad_to_phases is np.pad then to_phases, on 60 random shapes: strides 1-3, pads 0-2, padded
    extents shorter than the padded image (rows and columns never read) and longer (zeros past it), and
    an NCHW view of channels-last memory as the input."""
    rng = np.random.default_rng(12)
    kernel = getattr(kernels.pad_to_phases, variant)
    for trial in range(60):
        sh, sw = rng.integers(1, 4, 2).tolist()
        ph, pw = rng.integers(0, 3, 2).tolist()
        n, c, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 12)), int(rng.integers(1, 12))
        hq, wq = int(rng.integers(1, (h + 2 * ph) // sh + 3)), int(rng.integers(1, (w + 2 * pw) // sw + 3))
        x = rng.standard_normal((n, h, w, c)).transpose(0, 3, 1, 2) if trial % 2 else rng.standard_normal((n, c, h, w))
        big = np.zeros((n, c, max(hq * sh, h + 2 * ph), max(wq * sw, w + 2 * pw)))
        big[:, :, ph:ph + h, pw:pw + w] = x
        expected = conv_direct.to_phases(np.ascontiguousarray(big[:, :, :hq * sh, :wq * sw]), sh, sw)
        out = np.full((n, c * sh * sw, hq, wq), np.nan)
        kernel(x, ph, pw, sh, sw, out)
        np.testing.assert_array_equal(out, expected, err_msg=f"{(n, c, h, w, sh, sw, ph, pw, hq, wq)}")


def test_conv_act_rejects_what_it_cannot_run():
    with pytest.raises(TypeError, match="ConvAct needs"):
        ConvAct(nn.Conv2d(1, 2, 3), nn.Sigmoid())
    assert conv_act.conv_act_length([nn.Conv2d(1, 2, 3), nn.Sigmoid()], 0) == 1
    assert conv_act.conv_act_length([nn.ReLU()], 0) == 0


@pytest.mark.parametrize("direct", [True, False])
def test_conv_act_threaded_kernels_equal_the_readable_layers(direct, monkeypatch):
    """The kernels' threaded copies (from any size on), the weight gradient summed over per-thread blocks."""
    monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 0)
    monkeypatch.setattr(conv_direct, "DIRECT_MAX_TAPS", 10 ** 6 if direct else 0)
    monkeypatch.setattr(conv_direct, "DIRECT_MAX_FILTERS", 10 ** 6)
    rng = np.random.default_rng(9)
    layers = [nn.Conv2d(2, 5, (3, 2), 1, (1, 0), dtype=np.float64, rng=4), nn.ReLU()]
    x = rng.standard_normal((7, 2, 10, 9))
    g = rng.standard_normal(layers[0].output_shape(x.shape))
    ref = _readable(layers, x, g)
    with parallel.one_blas_thread():
        got = _fast(layers, x, g)
    for a, b in zip([got[0], got[1], *got[2]], [ref[0], ref[1], *ref[2]]):
        _close(a, b, 1e-12)


@pytest.mark.parametrize("k,s,p,include", [(2, 2, 0, True), (3, 2, 1, True), (3, 1, 1, False)])
def test_avgpool_keeps_a_channels_last_input_channels_last(k, s, p, include):
    """The same numbers from an NCHW input and from an NCHW view of channels-last memory, forward and
    backward; the second gives channels-last results, as the next fast conv wants them."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 5, 8, 7))
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    pool = nn.AvgPool2d(k, s, p, count_include_pad=include)
    y = pool.forward(x)
    g = rng.standard_normal(y.shape)
    dx = pool.backward(g)
    assert y.flags.c_contiguous and dx.flags.c_contiguous
    y_cl = pool.forward(x_cl)
    dx_cl = pool.backward(np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    assert y_cl.transpose(0, 2, 3, 1).flags.c_contiguous and dx_cl.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_allclose(y_cl, y, rtol=0, atol=1e-15)
    np.testing.assert_allclose(dx_cl, dx, rtol=0, atol=1e-15)


def test_global_average_pool_hands_back_its_input_layout():
    """AdaptiveAvgPool2d(1)'s gradient comes back in its input's layout (a ResNet's last block then reads
    it channels last, as its steps want it: no copy, no NumPy fallback), with the same numbers either way."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 5, 4, 6))
    g = rng.standard_normal((3, 5, 1, 1))
    pool = nn.AdaptiveAvgPool2d(1)
    pool.forward(x)
    dx = pool.backward(g)
    assert dx.flags.c_contiguous
    pool.forward(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    dx_cl = pool.backward(g)
    assert dx_cl.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_array_equal(dx_cl, dx)
    np.testing.assert_array_equal(dx, np.broadcast_to(g / 24, x.shape))


@pytest.mark.parametrize("variant", ["parallel", "serial"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,f", [(1, 1), (7, 3), (300, 16), (1000, 6)])   # runs that do and do not divide M
def test_rows_kernels_equal_numpy(m, f, dtype, variant):
    """The conv step's elementwise ends: bias (+ ReLU) in place, and the two derivatives from the output."""
    rng = np.random.default_rng(m * f)
    rows, bias, g = rng.normal(size=(m, f)).astype(dtype), rng.normal(size=f).astype(dtype), rng.normal(size=(m, f))
    g = g.astype(dtype)
    pick = lambda k: getattr(k, variant)                                          # noqa: E731
    for relu in (False, True):
        got = rows.copy()
        pick(kernels.bias_relu_rows)(got, np.tile(bias, kernels.run_length(got) // f), relu)
        want = rows + bias
        np.testing.assert_array_equal(got, np.maximum(want, 0) if relu else want)
    y = np.maximum(rows, 0)
    out = np.empty_like(g)
    pick(kernels.act_grad)(g, y, kernels.rows.RELU, out)
    np.testing.assert_array_equal(out, g * (y > 0))
    pick(kernels.act_grad)(g, y, kernels.rows.NONE, out)
    np.testing.assert_array_equal(out, g)
    y = np.tanh(rows)
    pick(kernels.act_grad)(g, y, kernels.rows.TANH, out)
    np.testing.assert_allclose(out, g * (1 - y * y), rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


def test_rows_kernels_keep_nan_as_numpy_does():
    rows = np.array([[np.nan, -1.0, 2.0]], dtype=np.float32)
    kernels.bias_relu_rows(rows, np.zeros(3, np.float32), True)
    assert np.isnan(rows[0, 0]) and rows[0, 1] == 0 and rows[0, 2] == 2
    out = np.empty((1, 3), np.float32)
    kernels.act_grad(np.array([[np.inf, np.nan, 5.0]], np.float32), np.array([[0.0, 0.0, 1.0]], np.float32),
                     kernels.rows.RELU, out)
    assert np.isnan(out[0, 0]) and np.isnan(out[0, 1]) and out[0, 2] == 5


@pytest.mark.parametrize("variant", ["parallel", "serial"])
def test_tanh32_is_within_an_ulp_of_the_exact_tanh(variant):
    """The float32 tanh of the conv steps against tanh in float64, rounded: on 3.1 million float32 values
    (every 2**-18 from 0 to 12, both signs, and 100,000 tiny ones), within 0.53 ulp below the clamp and one
    ulp anywhere; the specials as np.tanh gives them."""
    x = np.concatenate([np.arange(0, 12, 2.0 ** -18), np.geomspace(1e-38, 1, 100_000)]).astype(np.float32)
    x = np.concatenate([x, -x])
    got = x.copy()
    getattr(kernels.rows.tanh32_inplace, variant)(got)
    exact = np.tanh(x.astype(np.float64))
    ulps = np.abs(got - exact) / np.spacing(exact.astype(np.float32))
    assert ulps[np.abs(x) < kernels.rows.TANH_CLAMP].max() <= 0.53
    assert ulps.max() <= 1.0
    assert np.array_equal(np.sign(got), np.sign(x)) and np.abs(got).max() <= 1
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 100.0], np.float32)
    got = kernels.tanh_inplace(specials.copy())
    np.testing.assert_array_equal(got, np.tanh(specials))
    assert np.signbit(got[4])
    x64 = np.linspace(-3, 3, 101)                 # float64 keeps NumPy's tanh
    np.testing.assert_array_equal(kernels.tanh_inplace(x64.copy()), np.tanh(x64))


def _avgpool_configs(count, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        h, w = int(rng.integers(k[0], 13)), int(rng.integers(k[1], 13))
        out.append((int(rng.integers(1, 5)), int(rng.integers(1, 9)), h, w, k, s))
    return out


@pytest.mark.parametrize("variant", ["parallel", "serial"])
@pytest.mark.parametrize("config", _avgpool_configs(30))
def test_fast_avgpool_equals_the_readable_layer_in_float64(config, variant, monkeypatch):
    """FastAvgPool against AvgPool2d on random windows and strides (overlapping or not), from a
    channels-last input (the kernels) and from an NCHW one (the readable layer itself)."""
    n, c, h, w, k, s = config
    monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 0 if variant == "parallel" else 1 << 40)
    rng = np.random.default_rng(n * 100 + c * 10 + h)
    x = rng.standard_normal((n, c, h, w))
    pool = nn.AvgPool2d(k, s)
    y = pool.forward(x)
    g = rng.standard_normal(y.shape)
    dx = pool.backward(g)
    step = fast.FastAvgPool(pool)
    for layout in ("channels last", "nchw"):
        xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if layout == "channels last" else x
        y_fast = step.forward(xin)
        dx_fast = step.backward(np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
        assert step._kernel_path == (layout == "channels last" and c > 1)   # (one channel: both layouts are one)
        if step._kernel_path:       # results in the input's layout, as the readable layer keeps it
            assert y_fast.transpose(0, 2, 3, 1).flags.c_contiguous and dx_fast.transpose(0, 2, 3, 1).flags.c_contiguous
        np.testing.assert_allclose(y_fast, y, rtol=0, atol=1e-14)
        np.testing.assert_allclose(dx_fast, dx, rtol=0, atol=1e-14)


def test_fast_avgpool_float32_errors_and_planning():
    pool = nn.AvgPool2d(2)
    x = np.ascontiguousarray(np.random.default_rng(0).random((2, 5, 3, 6), dtype=np.float32)).transpose(0, 3, 1, 2)
    step = fast.FastAvgPool(pool)
    assert step.forward(x).dtype == np.float32
    np.testing.assert_allclose(step.forward(x), pool.forward(x), rtol=1e-6)
    with pytest.raises(ValueError, match="smaller than the window"):
        fast.FastAvgPool(nn.AvgPool2d(4)).forward(x)
    with pytest.raises(TypeError, match="without padding"):
        fast.FastAvgPool(nn.AvgPool2d(3, 1, 1))
    padded = fast.plan(nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.AvgPool2d(3, 1, 1)))
    assert [type(s).__name__ for s in padded.steps()] == ["ConvAct", "AvgPool2d"]   # padding: the readable layer


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels last", "gradient in another layout"])
@pytest.mark.parametrize("dims", [2, 1])
def test_batchnorm_relu_equals_the_readable_layers_in_float64(layout, training, dims, threads, monkeypatch):
    """BatchNorm -> ReLU as one step (the ReLU inside the batch norm's passes): the output, dL/dx and
    dL/dgamma, dL/dbeta equal the two readable layers', whatever the gradient's layout, on one thread
    and on the kernels' threaded builds (over several of their parts)."""
    if threads:
        for k in (kernels.batchnorm_stats_rows, kernels.batchnorm_apply_rows, kernels.batchnorm_backward_rows,
                  kernels.batchnorm_apply, kernels.batchnorm_backward):
            monkeypatch.setattr(k, "min_size", 0)
    rng = np.random.default_rng(11)
    shape = (6, 5, 4, 3) if dims == 2 else (9, 5)
    if threads:
        shape = (9, 5, 13, 17) if dims == 2 else (301, 5)         # 20 runs of rows, the last one short
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    if layout != "nchw" and dims == 2:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        if layout == "channels last":
            g = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    results = []
    for fused_step in (False, True):
        bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(5, dtype=np.float64)
        bn.weight.data[:] = rng.uniform(0.5, 2, 5) if not results else results[0][3]
        bn.train(training)
        layers = [bn, nn.ReLU()]
        step = fast.BatchNormReLU(*layers) if fused_step else None
        y = step.forward(x) if step else layers[1].forward(bn.forward(x))
        dx = step.backward(g) if step else bn.backward(layers[1].backward(g))
        results.append((y, dx, [p.grad.copy() for p in bn.parameters()], bn.weight.data.copy()))
    (y0, d0, p0, _), (y1, d1, p1, _) = results
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(d1, d0, rtol=0, atol=1e-13)
    for a, b in zip(p1, p0):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    assert (y1 == 0).any() and (y1 > 0).any()


def test_relu_grad_takes_the_kernel_only_for_alike_layouts(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "act_grad", lambda *a, k=kernels.act_grad: calls.append(1) or k(*a))
    rng = np.random.default_rng(3)
    y = np.maximum(rng.standard_normal((2, 3, 4, 5)), 0)
    g = rng.standard_normal(y.shape)
    y_cl = np.ascontiguousarray(y.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g_cl = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    from npcnn.fast.norm_act import relu_grad
    for gg, yy, kernel in ((g, y, True), (g_cl, y_cl, True), (g, y_cl, False), (g[:, :, ::2], y[:, :, ::2], False)):
        calls.clear()
        out = relu_grad(gg, yy)
        np.testing.assert_array_equal(out, gg * (yy > 0))
        assert bool(calls) == kernel
        assert out.strides == gg.strides or not kernel


@pytest.mark.parametrize("c", [1, 3])
def test_conv_act_keeps_its_own_copy_of_a_callers_batch(c):
    """A caller's NCHW batch (one channel is channels last too) changed in place between forward and
    backward does not change the weight gradient: ConvAct read a copy of it."""
    rng = np.random.default_rng(4)
    conv = nn.Conv2d(c, 32, 3, padding=1, dtype=np.float64, rng=1)
    assert not conv_direct.direct(conv)
    x = rng.standard_normal((2, c, 6, 6))
    g = rng.standard_normal((2, 32, 6, 6))
    _, _, want = _readable([conv], x.copy(), g)
    conv.zero_grad()
    step = ConvAct(conv)
    step.forward(x)
    x[...] = 0
    step.backward(g)
    np.testing.assert_allclose(conv.weight.grad, want[0], rtol=0, atol=1e-12)
