"""The layers the zoo needs, against PyTorch and against finite differences.

AvgPool2d, AdaptiveAvgPool2d, Tanh, Sigmoid, LeakyReLU and Residual each run over >= 100 randomized
configurations per dtype (seeded, invalid draws redrawn), with the helpers of test_layers_torch:
forward output, input gradient and every parameter gradient equal torch's autograd to 1e-4 (float32)
and 1e-10 (float64) relative, dtypes kept. Then a float64 finite-difference check of each
(npcnn.gradcheck), and their reprs as PyTorch prints them.
"""
import numpy as np
import pytest
import torch

import npcnn.nn as nn
from npcnn.gradcheck import gradcheck
from test_layers_torch import as_pair, assert_no_failures, compare, draw_configs, int_or_pair, out_size
from torch_oracle import to_torch

torch.set_num_threads(1)
DTYPES = [np.float32, np.float64]


# --------------------------------------------------------------------------- AvgPool2d
def gen_avgpool(rng):
    n, c = (int(v) for v in rng.integers(1, 6, size=2))
    h, w = (int(v) for v in rng.integers(1, 14, size=2))
    k = int_or_pair(rng, 1, 5)
    kh, kw = as_pair(k)
    s = None if rng.random() < 0.2 else int_or_pair(rng, 1, 3)
    sh, sw = as_pair(k if s is None else s)
    p = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))) if rng.random() < 0.5 else \
        int(rng.integers(0, min(kh, kw) // 2 + 1))
    ph, pw = as_pair(p)
    if out_size(h, kh, sh, ph) < 1 or out_size(w, kw, sw, pw) < 1:
        return None
    return dict(n=n, c=c, h=h, w=w, k=k, s=s, p=p, include_pad=bool(rng.random() < 0.7))


AVGPOOL_CONFIGS = draw_configs(gen_avgpool, seed=101)


def test_avgpool_configs_cover_the_space():
    cfgs = AVGPOOL_CONFIGS
    assert sum(c["s"] is not None and min(as_pair(c["s"])) < max(as_pair(c["k"])) for c in cfgs) >= 20   # overlapping
    assert sum(max(as_pair(c["p"])) > 0 and not c["include_pad"] for c in cfgs) >= 10
    assert sum(max(as_pair(c["p"])) > 0 and c["include_pad"] for c in cfgs) >= 10
    assert any(c["s"] is None for c in cfgs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_avgpool2d_matches_torch(dtype):
    rng = np.random.default_rng(110)
    fails = []
    for cfg in AVGPOOL_CONFIGS:
        layer = nn.AvgPool2d(cfg["k"], stride=cfg["s"], padding=cfg["p"], count_include_pad=cfg["include_pad"])
        x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
        fails += compare(layer, x, rng, f"AvgPool2d {cfg}")
    assert_no_failures(fails)


# --------------------------------------------------------------------------- AdaptiveAvgPool2d
def gen_adaptive(rng):
    n, c = (int(v) for v in rng.integers(1, 6, size=2))
    h, w = (int(v) for v in rng.integers(1, 14, size=2))
    r = rng.random()
    if r < 0.25:
        size = 1                                                   # global average pooling
    elif r < 0.6:
        size = int(rng.integers(1, 8))
    else:                                                          # a pair, maybe with None (= keep)
        size = tuple(None if rng.random() < 0.15 else int(rng.integers(1, 8)) for _ in range(2))
    return dict(n=n, c=c, h=h, w=w, size=size)


ADAPTIVE_CONFIGS = draw_configs(gen_adaptive, seed=102)


def test_adaptive_configs_cover_the_space():
    cfgs = ADAPTIVE_CONFIGS
    assert sum(c["size"] == 1 for c in cfgs) >= 15
    sizes = [as_pair(c["size"]) for c in cfgs]
    assert any(None in s for s in sizes)
    assert any(s[0] is not None and c["h"] % s[0] != 0 for s, c in zip(sizes, cfgs))    # overlapping bins
    assert any(s[0] is not None and s[0] > c["h"] for s, c in zip(sizes, cfgs))         # upsampling


@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_avgpool2d_matches_torch(dtype):
    rng = np.random.default_rng(120)
    fails = []
    for cfg in ADAPTIVE_CONFIGS:
        layer = nn.AdaptiveAvgPool2d(cfg["size"])
        x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
        fails += compare(layer, x, rng, f"AdaptiveAvgPool2d {cfg}")
    assert_no_failures(fails)


def test_global_average_pool_is_the_mean():
    x = np.random.default_rng(121).standard_normal((3, 4, 5, 6))
    layer = nn.AdaptiveAvgPool2d(1)
    np.testing.assert_allclose(layer(x)[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-14)
    np.testing.assert_allclose(layer.backward(np.ones((3, 4, 1, 1))), np.full(x.shape, 1 / 30), rtol=1e-14)


# --------------------------------------------------------------------------- Tanh, Sigmoid, LeakyReLU
def gen_elementwise(rng):
    nd = int(rng.integers(1, 5))
    return dict(shape=tuple(int(v) for v in rng.integers(1, 8, size=nd)), scale=float(rng.choice([0.3, 1, 3, 10])),
                slope=float(rng.choice([0.01, 0.1, 0.2, 0.5, 1.5, -0.3])), zeros=bool(rng.random() < 0.5))


ELEMENTWISE_CONFIGS = draw_configs(gen_elementwise, seed=103)


def _elementwise(kind, cfg):
    return {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "leaky_relu": nn.LeakyReLU(cfg["slope"])}[kind]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "leaky_relu"])
def test_elementwise_activations_match_torch(kind, dtype):
    rng = np.random.default_rng(130)
    fails = []
    for cfg in ELEMENTWISE_CONFIGS:
        # Scales stay moderate for the squashing curves: where every entry of a small tensor saturates, the
        # exact gradient 1 - y^2 (or y(1 - y)) is below the rounding of y in both libraries, and the relative
        # error of two correct results means nothing. Saturation itself is tested below.
        scale = cfg["scale"] if kind == "leaky_relu" else min(cfg["scale"], 1.5)
        x = (rng.standard_normal(cfg["shape"]) * scale).astype(dtype)
        if cfg["zeros"]:
            x[rng.random(x.shape) < 0.2] = 0.0      # LeakyReLU's kink: the slope there is negative_slope, as torch
        fails += compare(_elementwise(kind, cfg), x, rng, f"{kind} {cfg}")
    assert_no_failures(fails)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_without_overflow(dtype):
    x = np.array([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        y = nn.Sigmoid()(x)
        t = nn.Tanh()(x)
    np.testing.assert_allclose(y, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(t, torch.tanh(torch.from_numpy(x)).numpy(), rtol=1e-6)
    assert y.dtype == dtype and t.dtype == dtype


def test_activations_do_not_modify_input_or_gradient():
    rng = np.random.default_rng(131)
    for layer in [nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.1), nn.AvgPool2d(2, 1, 1), nn.AdaptiveAvgPool2d(2)]:
        x, g0 = rng.standard_normal((2, 3, 5, 5)), None
        x0 = x.copy()
        y = layer(x)
        g = rng.standard_normal(y.shape)
        g0 = g.copy()
        layer.backward(g)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(g, g0)


# --------------------------------------------------------------------------- Residual
def gen_residual(rng):
    n, c = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    h, w = (int(v) for v in rng.integers(2, 10, size=2))
    f = c if rng.random() < 0.4 else int(rng.integers(1, 6))
    s = int(rng.integers(1, 3))
    k = int(rng.choice([1, 3, 5]))
    bn = bool(rng.random() < 0.5)
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    if bn and n * ho * wo < 4:                      # training-mode BN needs a few values per channel
        return None
    if bn and c == 1:   # BN(conv) of one input channel is scale-invariant in a 1x1 weight: its gradient is
        return None     # exactly 0, and both libraries return rounding noise there
    return dict(n=n, c=c, f=f, h=h, w=w, s=s, k=k, bn=bn, act=str(rng.choice(["relu", "tanh", "leaky"])),
                shift=float(rng.choice([0.0, -0.5])))


RESIDUAL_CONFIGS = draw_configs(gen_residual, seed=104)


def make_residual(cfg, dtype, rng):
    """``Residual(conv k (stride s) -> [BN] -> act -> conv 3, shortcut)``, the shortcut the identity when the
    shape is kept, else a 1x1 conv with the same stride (and BN if the body has one)."""
    c, f, s, k, bn = cfg["c"], cfg["f"], cfg["s"], cfg["k"], cfg["bn"]
    act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "leaky": nn.LeakyReLU(0.1)}[cfg["act"]]
    conv1 = nn.Conv2d(c, f, k, stride=s, padding=k // 2, bias=not bn, dtype=dtype, rng=rng)
    if conv1.bias is not None:    # (a bias before a training-mode BN has a gradient of exactly 0: none, as in ResNet)
        conv1.bias.data += dtype(cfg["shift"])
    body = [conv1] + ([nn.BatchNorm2d(f, dtype=dtype)] if bn else []) + [act]
    body.append(nn.Conv2d(f, f, 3, padding=1, bias=not bn, dtype=dtype, rng=rng))
    shortcut = None
    if s != 1 or c != f:
        shortcut = nn.Sequential(nn.Conv2d(c, f, 1, stride=s, bias=False, dtype=dtype, rng=rng),
                                 *([nn.BatchNorm2d(f, dtype=dtype)] if bn else []))
    return nn.Residual(nn.Sequential(*body), shortcut)


def test_residual_configs_cover_the_space():
    kinds = {(cfg["s"] == 1 and cfg["c"] == cfg["f"], cfg["bn"]) for cfg in RESIDUAL_CONFIGS}
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}   # identity / projection, +-BN


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_matches_torch(dtype, mode):
    rng = np.random.default_rng(140)
    fails = []
    for cfg in RESIDUAL_CONFIGS:
        layer = make_residual(cfg, dtype, rng).train(mode == "train")
        for m in layer.modules():                 # non-trivial running statistics for eval mode
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean[...] = rng.standard_normal(m.num_features) * 0.3
                m.running_var[...] = rng.uniform(0.5, 2, m.num_features)
        x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
        fails += compare(layer, x, rng, f"Residual {mode} {cfg}")
    assert_no_failures(fails)


def test_residual_backward_is_the_sum_of_both_paths():
    """dL/dx = body.backward(g) + shortcut.backward(g); the identity shortcut adds g itself."""
    rng = np.random.default_rng(141)
    body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, dtype=np.float64, rng=1), nn.Tanh())
    x, g = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((2, 2, 5, 5))
    block = nn.Residual(body)
    block(x)
    dx = block.backward(g)
    body(x)
    np.testing.assert_allclose(dx, body.backward(g) + g, rtol=1e-13)


def test_residual_state_dict_keys_and_shape_error():
    block = make_residual(dict(c=2, f=4, s=2, k=3, bn=True, act="relu", shift=0.0), np.float32, 0)
    assert set(block.state_dict()) == set(to_torch(block).state_dict())
    assert "body.1.running_mean" in block.state_dict() and "shortcut.0.weight" in block.state_dict()
    bad = nn.Residual(nn.Conv2d(2, 3, 3, padding=1, rng=0))
    with pytest.raises(ValueError, match=r"body gives shape \(1, 3, 4, 4\) but the shortcut gives \(1, 2, 4, 4\)"):
        bad(np.zeros((1, 2, 4, 4), np.float32))


def test_residual_train_eval_reach_nested_layers():
    block = make_residual(dict(c=2, f=2, s=1, k=3, bn=True, act="relu", shift=0.0), np.float32, 0)
    block.eval()
    assert not any(m.training for m in block.modules())
    block.train()
    assert all(m.training for m in block.modules())


# --------------------------------------------------------------------------- finite differences (float64)
def _gradcheck(layer, x):
    result = gradcheck(layer, x, verbose=True)
    assert result.ok, f"{layer!r}: {result.errors} (skipped {result.skipped})"
    assert set(result.errors) == {"input"} | {k for k, _ in layer.named_parameters()}


@pytest.mark.parametrize("seed", range(4))
def test_gradcheck_new_layers(seed):
    rng = np.random.default_rng(150 + seed)
    x = rng.standard_normal((2, 2, int(rng.integers(3, 8)), int(rng.integers(3, 8))))
    k = int(rng.integers(1, 4))
    _gradcheck(nn.AvgPool2d(k, stride=int(rng.integers(1, 3)), padding=int(rng.integers(0, k // 2 + 1)),
                            count_include_pad=bool(seed % 2)), x)
    _gradcheck(nn.AdaptiveAvgPool2d(1), x)
    _gradcheck(nn.AdaptiveAvgPool2d((int(rng.integers(1, 5)), int(rng.integers(1, 5)))), x)
    _gradcheck(nn.Tanh(), x * 2)
    _gradcheck(nn.Sigmoid(), x * 2)
    _gradcheck(nn.LeakyReLU(0.1), x)


@pytest.mark.parametrize("cfg", RESIDUAL_CONFIGS[:6], ids=range(6))
def test_gradcheck_residual(cfg):
    cfg = dict(cfg, act="tanh" if cfg["act"] == "relu" else cfg["act"])
    layer = make_residual(cfg, np.float64, np.random.default_rng(160))
    x = np.random.default_rng(161).standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    result = gradcheck(layer, x, verbose=True, max_checks=20, rng=0)
    assert result.ok, f"{cfg}: {result.errors}"


def test_leaky_relu_kink_is_skipped_not_failed():
    result = gradcheck(nn.LeakyReLU(0.2), np.array([[-1.0, 0.0, 2.0, 0.0, -3.0, 1e-9]]), verbose=False)
    assert result.ok and result.skipped["input"] >= 2


# --------------------------------------------------------------------------- repr, as PyTorch prints it
REPR_CASES = [
    ((2,), {}), (((3, 2),), dict(stride=1, padding=(1, 0))), ((3, 2, 1), dict(count_include_pad=False)),
]


@pytest.mark.parametrize("args,kwargs", REPR_CASES, ids=range(len(REPR_CASES)))
def test_avgpool_repr_as_pytorch(args, kwargs):
    assert repr(nn.AvgPool2d(*args, **kwargs)) == repr(torch.nn.AvgPool2d(*args, **kwargs))


@pytest.mark.parametrize("layer", [
    nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((2, None)), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(),
    nn.LeakyReLU(0.2), nn.Residual(nn.Sequential(nn.Conv2d(1, 1, 3, rng=0), nn.ReLU())),
], ids=repr)
def test_repr_as_pytorch(layer):
    assert repr(layer) == repr(to_torch(layer, np.float32))
