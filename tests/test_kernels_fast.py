"""The fast paths against plain NumPy references: numba kernels (serial and threaded copies),
the fused Conv2d->ReLU->MaxPool2d step, chunked convolution, the Adam kernel, and the
benchmark's NumPy baseline."""
import contextlib
import os
import sys

import numba
import numpy as np
import pytest

import npcnn.nn as nn
from npcnn import NLLLoss, fast, kernels, seed_cnn
from npcnn.fast import fused
from npcnn.optim import Adam

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))


def ref_im2col(x, kh, kw, s, p):
    """(C*kh*kw, N*Ho*Wo), column = output pixel, row = (c, i, j)."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.empty((c, kh, kw, n, ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, i, j] = xp[:, :, i:i + s * ho:s, j:j + s * wo:s].transpose(1, 0, 2, 3)
    return out.reshape(c * kh * kw, n * ho * wo), ho, wo


@pytest.mark.parametrize("variant", ["parallel", "serial"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (5, 1, 2), (1, 1, 0), (3, 3, 2)])
def test_im2col_col2im_against_reference(variant, dtype, k, s, p):
    rng = np.random.default_rng(k * 10 + s + p)
    x = rng.standard_normal((3, 2, 9, 8)).astype(dtype)
    ref, ho, wo = ref_im2col(x, k, k, s, p)
    cols = np.full(ref.shape, np.nan, dtype)
    getattr(kernels.im2col, variant)(x, k, k, s, s, p, p, ho, wo, cols)
    np.testing.assert_array_equal(cols, ref)
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>
    c = rng.standard_normal(ref.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    getattr(kernels.col2im, variant)(c, k, k, s, s, p, p, ho, wo, dx)
    assert np.isclose((ref * c).sum(), (x * dx).sum(), rtol=1e-4)


@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 0)])
def test_fused_bias_relu_maxpool_equals_unfused_including_ties_and_nan(pool):
    k, s, p = pool
    rng = np.random.default_rng(3)
    f, n, h, w = 4, 3, 8, 7
    out_cols = rng.standard_normal((f, n * h * w)).astype(np.float32)
    out_cols[:, ::5] = 0.0                        # ties
    out_cols[1, 7] = np.nan
    bias = rng.standard_normal(f).astype(np.float32)
    conv = (out_cols.reshape(f, n, h, w).transpose(1, 0, 2, 3) + bias[None, :, None, None])
    relu = np.maximum(conv, 0)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    ref, ref_arg = np.empty((n, f, ho, wo), np.float32), np.empty((n, f, ho, wo), np.int32)
    kernels.maxpool_forward(np.ascontiguousarray(relu), k, k, s, s, p, p, ho, wo, ref, ref_arg)
    out, arg = np.empty_like(ref), np.empty_like(ref_arg)
    kernels.bias_relu_maxpool(out_cols, bias, h, w, k, k, s, s, p, p, out, arg)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    g = rng.standard_normal(out.shape).astype(np.float32)
    dref = np.empty_like(relu)
    kernels.maxpool_backward(g, ref_arg, dref)
    dref *= conv > 0
    g_cols = np.full_like(out_cols, np.nan)
    kernels.maxpool_relu_backward(g, arg, out, h, w, g_cols)
    np.testing.assert_allclose(g_cols.reshape(f, n, h, w).transpose(1, 0, 2, 3), dref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_fused_sequential_equals_layer_by_layer(batchnorm):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    g = rng.standard_normal((5, 10)).astype(np.float32)
    res = []
    for fuse in (True, False):
        m = seed_cnn(batchnorm=batchnorm, rng=1)
        net = fast.plan(m, fuse=fuse)              # fused, or the readable layers one by one
        assert net.fuse == fuse and any(isinstance(s, fast.ConvReLUPool) for s in net.steps()) == fuse
        y = net.forward(x)
        dx = net.backward(g)
        res.append((y, dx, [p.grad for p in m.parameters()], m.state_dict()))
    (y1, d1, p1, s1), (y2, d2, p2, s2) = res
    # Same math; the direct first conv sums in another order than the GEMM, hence float32 rounding.
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-7)
    for a, b in zip(p1, p2):                 # sums over thousands of float32 terms
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    assert list(s1) == list(s2)


@pytest.mark.parametrize("seed", range(16))
def test_direct_conv_paths_equal_the_im2col_gemm_path(seed, monkeypatch):
    """A fused conv -> ReLU -> 2x2 pool computed directly ('small' and 'nhwc' kernels) equals
    the same triple through im2col + GEMM: outputs, winners, dL/dx, dL/dW, dL/db (float64)."""
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 5))
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    stride, pad = (int(rng.integers(1, 3)), int(rng.integers(1, 3))), (int(rng.integers(0, 3)), int(rng.integers(0, 2)))
    f = int(rng.integers(1, 9))
    x = rng.standard_normal((int(rng.integers(1, 5)), c, int(rng.integers(6, 13)), int(rng.integers(6, 13))))
    if rng.random() < 0.3:                                  # ties in the pooling windows, and exact zeros
        x = np.round(x)
    results = []
    for path in ("gemm", "small", "nhwc"):
        monkeypatch.setattr(fused, "_path", lambda conv, pool, path=path: path)
        layers = [nn.Conv2d(c, f, k, stride=stride, padding=pad, dtype=np.float64, rng=seed), nn.ReLU(),
                  nn.MaxPool2d(2)]
        step = fused.ConvReLUPool(*layers)
        y = step.forward(x)
        g = np.random.default_rng(seed + 100).standard_normal(y.shape)
        dx = step.backward(g, True)
        results.append((y, step.argmax.copy(), dx, layers[0].weight.grad.copy(), layers[0].bias.grad.copy()))
        assert step.backward(g, True, input_grad=False) is None
        dx_only = step.backward(g, False)
        np.testing.assert_allclose(dx_only, dx, rtol=1e-12, atol=1e-12)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("n, h, w, pad, ties", [(5, 28, 28, (1, 1), False), (5, 27, 13, (1, 0), True),
                                                (1, 9, 10, (2, 1), False), (3, 7, 7, (0, 0), True)])
def test_first_layer_kernels_equal_the_gemm_path(n, h, w, pad, ties, threads, monkeypatch):
    """The 1-channel 3x3 stride-1 conv (the reference net's first layer) has loops of its own in the
    'small' path (forward, weight gradient and a direct input gradient): they equal im2col + GEMM
    in float64, winners included, on odd sizes, paddings 0 to 2, inputs with ties, batch 1, and
    with threads as well as serially."""
    if threads:                                         # every kernel takes its threaded build
        monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 0)
    rng = np.random.default_rng(h * 100 + w)
    x = rng.standard_normal((n, 1, h, w))
    if ties:
        x = np.round(x)
    results = []
    for path in ("gemm", "small"):
        monkeypatch.setattr(fused, "_path", lambda conv, pool, path=path: path)
        layers = [nn.Conv2d(1, 11, 3, padding=pad, dtype=np.float64, rng=3), nn.ReLU(), nn.MaxPool2d(2)]
        step = fused.ConvReLUPool(*layers)
        y = step.forward(x)
        g = np.random.default_rng(7).standard_normal(y.shape)
        dx = step.backward(g, True)
        results.append((y, step.argmax.copy(), dx, layers[0].weight.grad.copy(), layers[0].bias.grad.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


#: Sharing work among threads cannot be seen with one thread (NUMBA_NUM_THREADS=1): those tests say so
NEEDS_TWO_THREADS = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                       reason="compares two threads with one: NUMBA_NUM_THREADS=1 allows only one")


@contextlib.contextmanager
def numba_threads(n):
    """numba's thread count set to ``n`` inside the block (npcnn's own threads follow it)."""
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


@NEEDS_TWO_THREADS
@pytest.mark.parametrize("shared", ["python threads in turn", "numba kernel"])
def test_channels_last_conv_shared_among_threads_equals_one_thread(shared, monkeypatch):
    """With several chunks, the channels-last conv shares them among threads while npcnn runs
    BLAS on one thread: the outputs, winners and gradients equal those of one thread walking the chunks.
    The chunks go to numba's threads (kernels.conv_rows) when the kernels can call BLAS, else to Python's."""
    from npcnn import kernels, parallel
    rng = np.random.default_rng(5)
    x = rng.standard_normal((13, 6, 9, 10)).astype(np.float32)
    g = rng.standard_normal((13, 5, 4, 5)).astype(np.float32)
    monkeypatch.setattr(fused, "NHWC_CHUNK_BYTES", 1)               # one image per chunk: 13 chunks
    calls = []
    if shared == "numba kernel":
        assert parallel.blas.kernel_gemm(np.float32) is not None, "the kernels cannot call numpy's BLAS here"
        kernel = kernels.conv_rows_relu_maxpool_forward
        monkeypatch.setattr(kernels, "conv_rows_relu_maxpool_forward",
                            lambda *a: calls.append(a[15].shape[0]) or kernel(*a))   # cols_all: (workers, ...)
    else:
        monkeypatch.setattr(parallel, "kernel_gemm", lambda dtype: None)
        monkeypatch.setattr(parallel, "run_threads", lambda fn, workers: calls.append(workers) or
                            [fn(t) for t in range(workers)] and None)   # record, run in turn
    results = []
    for threads in (numba.get_num_threads(), 1):
        with numba_threads(threads), parallel.one_blas_thread():
            layers = [nn.Conv2d(6, 5, 3, padding=1, rng=3), nn.ReLU(), nn.MaxPool2d(2)]
            assert fused._path(layers[0], layers[2]) == "nhwc"
            step = fused.ConvReLUPool(*layers)
            y = step.forward(x)
            dx = step.backward(g, True)
            results.append((y, step.argmax.copy(), dx, layers[0].weight.grad))
    assert calls[0] == numba.get_num_threads() > 1                     # the first run was shared out
    assert calls[1:] == ([1] if shared == "numba kernel" else [])      # (the Python loop: one thread, no hand-over)
    for a, b in zip(*results):                  # sums over the batch split differently: rounding
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


@NEEDS_TWO_THREADS
def test_channels_last_conv_in_real_threads_equals_one_thread(monkeypatch):
    """The same through the real thread pool, on a batch that does not split evenly."""
    from npcnn import parallel
    rng = np.random.default_rng(6)
    x = rng.standard_normal((11, 32, 14, 14)).astype(np.float32)
    calls = []
    real = parallel.run_threads
    monkeypatch.setattr(parallel, "kernel_gemm", lambda dtype: None)     # the Python threads' loop (numba's: above)
    monkeypatch.setattr(parallel, "run_threads", lambda fn, workers: calls.append(workers) or real(fn, workers))
    results = []
    for threads in (numba.get_num_threads(), 1):
        with numba_threads(threads):
            net = fast.plan(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, rng=4), nn.ReLU(), nn.MaxPool2d(2)))
            y = net.forward(x)
            dx = net.backward(np.ones_like(y))
            results.append((y, net.steps()[0].argmax.copy(), dx, net[0].weight.grad))
    assert calls and calls[0] == numba.get_num_threads() > 1             # the chunks were shared out
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 70, 30), (1, 1568, 500), (64, 1568, 500), (500, 64, 1568), (32, 2000, 288),
                                   (1000, 50, 30), (3, 4000, 700)])
def test_parallel_matmul_equals_matmul(shape, dtype, monkeypatch):
    """Inside one_blas_thread, GEMMs from SPLIT_MIN_MACS multiply-adds on are split by rows or
    columns among numba's threads, each calling numpy's BLAS on one thread (npcnn.blas): same
    product for C- and F-ordered operands and into a slice of a bigger ``out``; through numpy when
    an operand's layout is not one BLAS reads in place."""
    from npcnn import blas, parallel
    assert blas.gemm_functions() is not None           # numpy's wheel ships OpenBLAS: the fast path is tested
    blocks = []
    real = blas.gemm_blocks
    monkeypatch.setattr(blas, "gemm_blocks", lambda *args: blocks.append(len(args[-1]) - 1) or real(*args))
    m, k, n = shape
    rng = np.random.default_rng(m)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    ref = a.astype(np.float64) @ b
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(ref).max()) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    with parallel.one_blas_thread():
        np.testing.assert_allclose(parallel.matmul(a, b), ref, **tol)
        np.testing.assert_allclose(parallel.matmul(np.asfortranarray(a), np.asfortranarray(b)), ref, **tol)
        out = np.full((m + 2, n + 3), np.nan, dtype)
        parallel.matmul(a, b, out=out[1:-1, 2:-1])
        np.testing.assert_allclose(out[1:-1, 2:-1], ref, **tol)
        assert np.isnan(out[[0, -1]]).all() and np.isnan(out[:, [0, 1, -1]]).all()   # nothing written outside
        split = len(blocks)
        wide = np.repeat(a, 2, axis=1)[:, ::2]           # every other column: not a BLAS layout
        np.testing.assert_allclose(parallel.matmul(wide, b), ref, **tol)
        assert len(blocks) == split                      # ... so numpy did that one
    workers = min(numba.get_num_threads(), max(m, n) // 16)
    if m * k * n >= parallel.SPLIT_MIN_MACS and workers > 1:
        assert blocks == [workers] * 3                   # all three in-place products were split
    else:
        assert not blocks
    blocks.clear()
    np.testing.assert_allclose(parallel.matmul(a, b), ref, **tol)     # outside the block: plain np.matmul
    assert not blocks


def test_parallel_matmul_leaves_to_numpy_what_blas_cannot_take_in_place(monkeypatch):
    """An ``out`` that overlaps an operand, a read-only ``out`` and mismatched shapes go to
    np.matmul, which copies, raises or complains as usual."""
    from npcnn import blas, parallel
    monkeypatch.setattr(blas, "gemm_blocks", lambda *args: pytest.fail("gemm_blocks called"))
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 300)).astype(np.float32)
    b = rng.standard_normal((300, 300)).astype(np.float32)
    ref = a.astype(np.float64) @ b
    with parallel.one_blas_thread():
        c = a.copy()
        parallel.matmul(c, b, out=c)                     # in place over an operand
        np.testing.assert_allclose(c, ref, rtol=1e-4, atol=1e-3)
        frozen = np.zeros((300, 300), np.float32)
        frozen.flags.writeable = False
        with pytest.raises(ValueError):
            parallel.matmul(a, b, out=frozen)
        assert not frozen.any()
        with pytest.raises(ValueError):
            parallel.matmul(a, b[:200])                  # 300x300 @ 200x300
        with pytest.raises(ValueError):
            parallel.matmul(a, b, out=np.empty((300, 400), np.float32))


def test_sharing_is_per_thread():
    """Another Python thread is not inside this thread's block: its GEMMs stay plain numpy."""
    import threading
    from npcnn import parallel
    seen = {}
    with parallel.one_blas_thread():
        t = threading.Thread(target=lambda: seen.update(other=parallel.sharing()))
        t.start()
        t.join()
        seen["this"] = parallel.sharing()
    assert seen == {"this": True, "other": False} and not parallel.sharing()


def test_one_blas_thread_nests_and_restores():
    """The fast path's forward/backward hold BLAS to one thread and give the user's setting back, even
    after an error inside."""
    from threadpoolctl import threadpool_info, threadpool_limits
    from npcnn import parallel

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    with threadpool_limits(2, user_api="blas"):
        assert set(blas_threads()) == {2}
        with parallel.one_blas_thread():
            assert set(blas_threads()) == {1}
            with parallel.one_blas_thread():
                assert set(blas_threads()) == {1}
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {2}
        with pytest.raises(ZeroDivisionError):
            with parallel.one_blas_thread():
                1 / 0
        assert set(blas_threads()) == {2}
        net = fast.plan(nn.Sequential(nn.Linear(3, 2, rng=0)))
        with pytest.raises(ValueError):
            net.forward(np.zeros((5000, 4), np.float32))              # wrong width: a clear error
        assert set(blas_threads()) == {2}


def test_linear_on_a_large_batch_equals_numpy():
    rng = np.random.default_rng(0)
    lin = nn.Linear(50, 20, dtype=np.float64, rng=1)
    x = rng.standard_normal((700, 50))
    g = rng.standard_normal((700, 20))
    np.testing.assert_allclose(lin.forward(x), x @ lin.weight.data.T + lin.bias.data, rtol=1e-12)
    np.testing.assert_allclose(lin.backward(g), g @ lin.weight.data, rtol=1e-12)
    np.testing.assert_allclose(lin.weight.grad, g.T @ x, rtol=1e-12)


def test_reference_net_takes_the_direct_paths():
    layers = list(seed_cnn(rng=0))
    assert fused._path(layers[0], layers[2]) == "small" and fused._path(layers[3], layers[5]) == "nhwc"


def test_the_fast_path_leaves_the_layers_untouched():
    """A fused step only reads the three layers (and adds into the conv's Parameters): after a fast
    forward and backward, the layers run one by one give the same result, from their own state."""
    rng = np.random.default_rng(1)
    m = seed_cnn(rng=2)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    before = {k: set(vars(layer)) for k, layer in enumerate(m.layers)}
    net = fast.plan(m)
    y = net.forward(x)
    g = rng.standard_normal(y.shape).astype(np.float32)
    ref = net.backward(g, param_grads=False)
    assert {k: set(vars(layer)) for k, layer in enumerate(m.layers) if k in (1, 2, 4, 5)} == \
        {k: before[k] for k in (1, 2, 4, 5)}          # the ReLUs and pools got no state from the fast path
    m.forward(x)
    h = g
    for layer in reversed(m.layers):                   # one by one, as a learner might
        h = layer.backward(h, param_grads=False)
    np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-7)


def test_input_gradient_only_skips_parameter_gradients():
    m = seed_cnn(rng=3).eval()
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    for net in (m, fast.plan(m)):
        m.zero_grad()
        net.forward(x)
        dx = net.backward(np.ones((4, 10), np.float32), param_grads=False)
        assert all(p.grad is None for p in m.parameters())
        net.forward(x)
        np.testing.assert_array_equal(dx, net.backward(np.ones((4, 10), np.float32)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_conv_matches_unchunked(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 3, 10, 9)).astype(dtype)
    g = rng.standard_normal((7, 5, 10, 9)).astype(dtype)
    outs = []
    for chunk, cache in [(1 << 30, 1 << 30), (2000, 1 << 30), (2000, 100)]:
        conv = nn.Conv2d(3, 5, 3, padding=1, dtype=dtype, rng=0)
        conv._CHUNK_BYTES, conv._CACHE_BYTES = chunk, cache
        y = conv.forward(x)
        outs.append((y, conv.backward(g), conv.weight.grad, conv.bias.grad))
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):             # the weight gradient sums in a different order
            assert np.abs(a - b).max() <= (1e-5 if dtype == np.float32 else 1e-12) * np.abs(b).max()
            assert a.dtype == dtype


@pytest.mark.parametrize("maximize,wd", [(False, 0.0), (True, 0.1)])
def test_adam_kernel_matches_numpy_path(maximize, wd):
    rng = np.random.default_rng(5)
    a = nn.Parameter(rng.standard_normal((30, 7)))
    b = nn.Parameter(a.data.copy())
    oa = Adam([a], lr=0.01, maximize=maximize, weight_decay=wd)
    ob = Adam([b], lr=0.01, maximize=maximize, weight_decay=wd)
    for _ in range(5):
        g = rng.standard_normal(a.shape)
        a.grad, b.grad = g.copy(), g.copy()
        oa.step()
        # the reference: the plain-numpy update of the same step
        ob.t += 1
        ob.steps[0] += 1
        t = ob.steps[0]
        if ob.state[0] is None:
            ob.state[0] = (np.zeros_like(b.data), np.zeros_like(b.data), np.empty_like(b.data))
        ob._numpy_step(b, *ob.state[0], 0.9, 0.999, 0.01 / (1 - 0.9 ** t), np.sqrt(1 - 0.999 ** t))
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14)


def test_numpy_baseline_matches_npcnn():
    from numpy_baseline import NumpyNet
    m = seed_cnn(dtype=np.float64, rng=4)
    net = NumpyNet(m.state_dict())
    rng = np.random.default_rng(6)
    x, t = rng.random((4, 1, 28, 28)), rng.integers(0, 10, 4)
    loss, glogp = net.loss(x, t)
    dx = net.backward(glogp)
    loss_fn = NLLLoss()
    assert np.isclose(loss, loss_fn.forward(m.forward(x), t))
    np.testing.assert_allclose(dx, m.backward(loss_fn.backward()), rtol=1e-10, atol=1e-14)
    for k, p in m.named_parameters():
        np.testing.assert_allclose(net.grads[k], p.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("case", ["npcnn_first", "no_tbb", "omp_first"])
def test_threading_layer_is_tbb_or_workqueue_or_a_warning_says_why_not(case):
    """npcnn picks numba's TBB layer (a dependency on x86_64), workqueue where TBB cannot load, and
    warns when numba's threads already run another layer (OpenMP, which spins against OpenBLAS)."""
    import subprocess
    start = {"npcnn_first": "",
             "no_tbb": "import sys; sys.modules['numba.np.ufunc.tbbpool'] = None\n",   # the import fails
             "omp_first": "import numba; numba.config.THREADING_LAYER = 'omp'; numba.get_num_threads()\n"}[case]
    code = start + ("import warnings, numba\nwith warnings.catch_warnings(record=True) as w:\n"
                    "    warnings.simplefilter('always')\n    import npcnn\n"
                    "numba.get_num_threads()\n"
                    "print(numba.threading_layer(), sum('threading' in str(x.message) or 'layer' in "
                    "str(x.message) for x in w))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    from importlib import metadata
    try:
        metadata.version("tbb")                        # a dependency on Linux x86_64
        layer = "tbb"
    except metadata.PackageNotFoundError:
        layer = "workqueue"
    expected = {"npcnn_first": [layer, "0"],
                "no_tbb": ["workqueue", "0"], "omp_first": ["omp", "1"]}[case]
    assert out == expected


@pytest.mark.parametrize("batchnorm", [False, True])
def test_reference_net_with_own_gemm_threads_equals_blas_threads(batchnorm, monkeypatch):
    """The reference net's forward and backward give the same numbers whether npcnn shares out its
    GEMMs (BLAS on one thread, npcnn.parallel) or leaves the threading to BLAS."""
    from npcnn import parallel
    rng = np.random.default_rng(7)
    x = rng.random((40, 1, 28, 28), dtype=np.float32)
    g = rng.standard_normal((40, 10)).astype(np.float32)
    results = []
    for min_values in (0, 10 ** 12):
        monkeypatch.setattr(parallel, "OWN_THREADS_MIN_VALUES", min_values)
        net = fast.plan(seed_cnn(batchnorm=batchnorm, rng=0))
        y = net.forward(x)
        assert net._own_threads == (min_values == 0)
        dx = net.backward(g)
        results.append([y, dx] + [p.grad for p in net.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("by_rows", [False, True])
def test_blas_kernel_drives_a_32_bit_cblas_too(dtype, by_rows):
    """npcnn.blas also calls a cblas with 32-bit integers (LP64), as numpy builds other than the
    wheel's ship: here SciPy's own OpenBLAS, which has one. Transposed operands included."""
    import ctypes

    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
    from threadpoolctl import ThreadpoolController
    from npcnn import blas
    libs = [lib for lib in ThreadpoolController().select(user_api="blas").lib_controllers
            if hasattr(ctypes.CDLL(lib.filepath), "scipy_cblas_sgemm")]
    assert libs, "SciPy's LP64 OpenBLAS was not found"
    handle = ctypes.CDLL(libs[0].filepath)
    address = ctypes.cast(getattr(handle, "scipy_cblas_dgemm" if dtype == np.float64 else "scipy_cblas_sgemm"),
                          ctypes.c_void_p).value
    rng = np.random.default_rng(1)
    a = np.asfortranarray(rng.standard_normal((70, 40)).astype(dtype))      # used transposed
    b = rng.standard_normal((40, 90)).astype(dtype)
    out = np.zeros((70, 90), dtype)
    (ta, lda), (tb, ldb) = blas.operand(a), blas.operand(b)
    assert ta == blas.TRANS and tb == blas.NO_TRANS
    bounds = np.array([0, 32, 70 if by_rows else 90], np.int64)
    blas.gemm_blocks(address, dtype == np.float64, False, ta, tb, 70, 90, 40, a.ctypes.data, lda, b.ctypes.data,
                     ldb, out.ctypes.data, 90, a.itemsize, by_rows, bounds)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_without_a_callable_blas_the_fast_path_leaves_blas_its_threads(monkeypatch):
    """If npcnn cannot find numpy's cblas (another numpy build), the fast path neither limits BLAS nor
    splits GEMMs, and computes the same."""
    from threadpoolctl import threadpool_info
    from npcnn import blas, parallel
    rng = np.random.default_rng(8)
    x = rng.random((40, 1, 28, 28), dtype=np.float32)
    results = []
    for found in (True, False):
        if not found:
            monkeypatch.setattr(blas, "gemm_functions", lambda: None)
            monkeypatch.setattr(blas, "gemm_blocks", lambda *args: pytest.fail("gemm_blocks called"))
        net = fast.plan(seed_cnn(rng=0))
        before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        with parallel.one_blas_thread():
            inside = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
            assert inside == ([1] * len(before) if found else before)
        y = net.forward(x)
        results.append((y, net.backward(np.ones_like(y))))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_kernel_caches_are_dropped_when_any_kernel_source_changes(tmp_path):
    """numba checks only a kernel's own file; a helper inlined from another file must drop the cache too."""
    from npcnn.kernels._compile import _drop_stale_kernel_caches
    (tmp_path / "kernels").mkdir()
    sources = [tmp_path / "kernels" / "a.py", tmp_path / "kernels" / "b.py", tmp_path / "blas.py"]
    for path in sources:
        path.write_text(f"# {path.name}\n")
    caches = [tmp_path / "kernels" / "__pycache__" / "a.f-1.py311.nbi", tmp_path / "__pycache__" / "blas.g-2.py311.1.nbc"]

    def cache_again():
        for path in caches:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"compiled")
    cache_again()
    assert _drop_stale_kernel_caches(sources)                 # no stamp yet: dropped
    assert not any(path.exists() for path in caches)
    cache_again()
    assert not _drop_stale_kernel_caches(sources)             # nothing changed: kept
    assert all(path.exists() for path in caches)
    sources[1].write_text("# b.py, a helper a.py inlines, changed\n")
    assert _drop_stale_kernel_caches(sources)                 # one source changed: all dropped
    assert not any(path.exists() for path in caches)
    assert sources[0].exists() and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_batchnorm_sums_do_not_depend_on_the_threads(dtype, relu):
    """The row kernels take their sums in fixed parts, folded in a fixed order: the threaded and the
    serial builds give the same bits (statistics, both backward sums, dL/dx), and the statistics equal
    NumPy's float64 ones to rounding, on shapes from fewer runs than parts to many, with a short last run."""
    rng = np.random.default_rng(21)
    for m, c in [(7, 3), (100, 16), (4099, 16), (12544, 32), (3136, 64)]:
        x = (rng.standard_normal((m, c)) * 3 + 1).astype(dtype)
        g = rng.standard_normal((m, c)).astype(dtype)
        run = kernels.run_length(x)
        stats = {}
        for variant in ("parallel", "serial"):
            mean, var = np.empty(c), np.empty(c)
            getattr(kernels.batchnorm_stats_rows, variant)(x, mean, var, run)
            invstd = (1 / np.sqrt(var + 1e-5)).astype(dtype)
            y = np.maximum(x, 0) if relu else x
            sums, dx = (np.empty(c), np.empty(c)), np.empty_like(x)
            getattr(kernels.batchnorm_backward_rows, variant)(g, x, y, relu, mean.astype(dtype), invstd, invstd, True,
                                                              *sums, dx, run)
            stats[variant] = (mean, var, *sums, dx)
        for a, b in zip(stats["parallel"], stats["serial"]):
            np.testing.assert_array_equal(a, b)
        mean, var = stats["serial"][:2]
        np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-12)
        masked = g * (y > 0) if relu else g
        np.testing.assert_allclose(stats["serial"][2], masked.astype(np.float64).sum(axis=0), rtol=1e-9, atol=1e-9)
