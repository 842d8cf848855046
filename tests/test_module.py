"""The Module contract: parameters and gradients, modes, state dicts (and torch interop), save/load, summary."""
import os

import numpy as np
import pytest
import torch

import npcnn
import npcnn.nn as nn
from npcnn.models import count_neurons, count_parameters, seed_cnn, summary
from torch_oracle import load_into_npcnn, rel_err, run_npcnn, to_numpy, to_torch, torch_state_from

torch.set_num_threads(1)


def _small_net(dtype=np.float64, seed=0):
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=seed), nn.ReLU(), nn.MaxPool2d(2),
        nn.BatchNorm2d(3, dtype=dtype), nn.Flatten(), nn.Linear(3 * 3 * 3, 4, dtype=dtype, rng=seed + 1),
        nn.ReLU(), nn.BatchNorm1d(4, dtype=dtype), nn.LogSoftmax(dim=1),
    )


# --------------------------------------------------------------------------- Parameter and gradients
def test_parameter_grad_none_until_backward_then_accumulates():
    p = nn.Parameter(np.zeros((2, 2), dtype=np.float32))
    assert p.grad is None and p.shape == (2, 2) and p.dtype == np.float32 and p.size == 4
    g = np.ones((2, 2))
    p.accumulate(g)
    assert p.grad.dtype == np.float32
    g[...] = 5  # the first call stored a copy
    p.accumulate(np.ones((2, 2)))
    np.testing.assert_array_equal(p.grad, 2.0)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_gradients_accumulate_and_zero_grad_resets(batchnorm):
    rng = np.random.default_rng(0)
    net = seed_cnn(batchnorm=batchnorm, dtype=np.float64, rng=1)
    x = rng.standard_normal((3, 1, 28, 28))
    g = rng.standard_normal((3, 10))
    for p in net.parameters():
        assert p.grad is None
    net(x)
    dx1 = net.backward(g.copy())
    once = {k: p.grad.copy() for k, p in net.named_parameters()}
    net(x)
    dx2 = net.backward(g.copy())
    np.testing.assert_allclose(dx1, dx2, rtol=1e-12, atol=1e-300)
    for k, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[k], rtol=1e-12, atol=1e-15, err_msg=k)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net(x)
    net.backward(g.copy())
    for k, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, once[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_accumulation_over_two_different_batches_equals_torch():
    rng = np.random.default_rng(1)
    net = _small_net()
    twin = to_torch(net)
    for _ in range(2):
        x = rng.standard_normal((4, 2, 6, 7))
        g = rng.standard_normal((4, 4))
        net.backward(net(x) * 0 + g)
        xt = torch.from_numpy(x)
        twin(xt).backward(torch.from_numpy(g))
    for k, p in twin.named_parameters():
        assert rel_err(dict(net.named_parameters())[k].grad, p.grad) < 1e-10, k


@pytest.mark.parametrize("batchnorm", [False, True])
def test_param_grads_false_gives_input_gradient_only(batchnorm):
    rng = np.random.default_rng(2)
    net = seed_cnn(batchnorm=batchnorm, dtype=np.float64, rng=2)
    x = rng.standard_normal((2, 1, 28, 28))
    g = rng.standard_normal((2, 10))
    net(x)
    dx_full = net.backward(g.copy())
    saved = {k: p.grad.copy() for k, p in net.named_parameters()}
    # grads present: left unchanged
    net(x)
    dx_only = net.backward(g.copy(), param_grads=False)
    np.testing.assert_array_equal(dx_only, dx_full)
    for k, p in net.named_parameters():
        np.testing.assert_array_equal(p.grad, saved[k], err_msg=k)
    # grads absent: stay None
    net.zero_grad()
    net(x)
    dx_only = net.backward(g.copy(), param_grads=False)
    np.testing.assert_array_equal(dx_only, dx_full)
    assert all(p.grad is None for p in net.parameters())


def test_backward_does_not_modify_upstream_gradient():
    rng = np.random.default_rng(3)
    net = _small_net()
    x = rng.standard_normal((4, 2, 6, 7))
    g = rng.standard_normal((4, 4))
    g0 = g.copy()
    net(x)
    net.backward(g)
    np.testing.assert_array_equal(g, g0)


def _layers_for_aliasing(dtype=np.float64):
    return [
        (nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=0), (2, 2, 5, 6)),
        (nn.MaxPool2d(2, stride=1), (2, 2, 5, 6)),
        (nn.BatchNorm2d(2, dtype=dtype), (2, 2, 5, 6)),
        (nn.BatchNorm1d(2, dtype=dtype), (4, 2)),
        (nn.Linear(6, 3, dtype=dtype, rng=0), (2, 6)),
        (nn.ReLU(), (2, 2, 5, 6)),
        (nn.Flatten(), (2, 2, 5, 6)),
        (nn.LogSoftmax(), (4, 5)),
        (nn.Softmax(), (4, 5)),
        (nn.Dropout(0.5, rng=0), (4, 5)),
        (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=0), nn.ReLU(), nn.MaxPool2d(2)), (2, 2, 5, 6)),
        (seed_cnn(batchnorm=True, dtype=dtype, rng=0), (2, 1, 28, 28)),
    ]


@pytest.mark.parametrize("index", range(12))
def test_outputs_and_gradients_survive_later_calls(index):
    """Layers reuse scratch buffers between calls: what they hand out (outputs, input gradients,
    parameter gradients after zero_grad) must not be overwritten by the next call."""
    layer, shape = _layers_for_aliasing()[index]
    rng = np.random.default_rng(index)
    x1, x2 = rng.standard_normal(shape), rng.standard_normal(shape)
    y1 = layer(x1)
    y1_copy = y1.copy()
    g1 = rng.standard_normal(y1.shape)
    dx1 = layer.backward(g1)
    dx1_copy = dx1.copy()
    grads1 = {k: p.grad for k, p in layer.named_parameters()}  # references, not copies
    grads1_copy = {k: v.copy() for k, v in grads1.items()}
    layer.zero_grad()
    y2 = layer(x2)
    layer.backward(rng.standard_normal(y2.shape))
    np.testing.assert_array_equal(y1, y1_copy, err_msg="output overwritten by the next forward")
    np.testing.assert_array_equal(dx1, dx1_copy, err_msg="input gradient overwritten by the next backward")
    for k in grads1:
        np.testing.assert_array_equal(grads1[k], grads1_copy[k], err_msg=f"{k}.grad of the first call overwritten")
    assert not np.shares_memory(y1, x1) or isinstance(layer, (nn.Flatten, nn.Dropout))


# --------------------------------------------------------------------------- traversal and modes
def test_named_parameters_and_modes():
    net = _small_net()
    names = [k for k, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias", "7.weight", "7.bias"]
    assert [id(p) for p in net.parameters()] == [id(p) for _, p in net.named_parameters()]
    assert len(net) == 9 and net[5] is net.layers[5] and list(net) == net.layers
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 3, rng=0)), nn.ReLU())
    assert [k for k, _ in nested.named_parameters()] == ["0.0.weight", "0.0.bias"]
    nested.eval()
    assert not nested[0][0].training


def test_conv_and_linear_init_bounds_like_torch():
    conv = nn.Conv2d(4, 6, (3, 2), rng=0)
    lin = nn.Linear(50, 7, rng=0)
    for layer, fan_in in [(conv, 4 * 3 * 2), (lin, 50)]:
        bound = 1 / np.sqrt(fan_in)
        for p in layer.parameters():
            assert p.dtype == np.float32
            assert np.abs(p.data).max() <= bound and np.abs(p.data).max() > 0.8 * bound
    np.testing.assert_array_equal(nn.Linear(5, 3, rng=4).weight.data, nn.Linear(5, 3, rng=4).weight.data)
    assert nn.Conv2d(1, 2, 3, bias=False, rng=0).bias is None


# --------------------------------------------------------------------------- state dicts and torch interop
@pytest.mark.parametrize("batchnorm", [False, True])
def test_state_dict_keys_equal_torch(batchnorm):
    net = seed_cnn(batchnorm=batchnorm, rng=0)
    twin = to_torch(net)
    keys, keys_t = list(net.state_dict()), list(twin.state_dict())
    assert sorted(keys) == sorted(keys_t)
    assert len(keys) == len(set(keys))
    if batchnorm:
        assert {"3.num_batches_tracked", "7.num_batches_tracked", "3.running_mean", "7.running_var"} <= set(keys)
    else:
        assert keys == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"]
    for k, v in net.state_dict().items():
        assert tuple(v.shape) == tuple(twin.state_dict()[k].shape), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_torch_state_dict_loads_into_npcnn_and_back(batchnorm, dtype):
    rng = np.random.default_rng(4)
    torch.manual_seed(0)
    ref = seed_cnn(batchnorm=batchnorm, dtype=dtype, rng=0)
    twin = to_torch(ref)
    # a torch net with its own (torch-initialised) weights and some trained BN statistics
    for m in twin.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    twin.train()
    for _ in range(2):
        twin(torch.from_numpy(rng.standard_normal((4, 1, 28, 28)).astype(dtype)))
    twin.eval()
    # torch -> npcnn
    net = seed_cnn(batchnorm=batchnorm, dtype=dtype, rng=99)
    load_into_npcnn(net, twin)
    net.eval()
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[k], to_numpy(v), err_msg=k)
        assert net.state_dict()[k].dtype == to_numpy(v).dtype, k
    x = rng.standard_normal((3, 1, 28, 28)).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert rel_err(net(x), twin(torch.from_numpy(x))) < tol
    # npcnn -> torch
    net2 = seed_cnn(batchnorm=batchnorm, dtype=dtype, rng=5)
    if batchnorm:
        net2.train()
        net2(rng.standard_normal((4, 1, 28, 28)).astype(dtype))
    twin2 = to_torch(ref)
    twin2.load_state_dict(torch_state_from(net2), strict=True)
    for k, v in twin2.state_dict().items():
        np.testing.assert_array_equal(to_numpy(v), net2.state_dict()[k], err_msg=k)
    net2.eval()
    twin2.eval()
    assert rel_err(net2(x), twin2(torch.from_numpy(x))) < tol


def test_state_dict_is_a_snapshot():
    net = _small_net()
    state = net.state_dict()
    state["0.weight"][...] = 123.0
    state["3.running_mean"][...] = 7.0
    assert not np.any(net[0].weight.data == 123.0)
    assert not np.any(net[3].running_mean == 7.0)


def test_load_state_dict_copies_in_place_and_restores_buffers():
    a, b = _small_net(seed=0), _small_net(seed=10)
    rng = np.random.default_rng(5)
    for _ in range(3):
        a(rng.standard_normal((4, 2, 6, 7)))
    weight_array = b[0].weight.data
    b.load_state_dict(a.state_dict())
    assert b[0].weight.data is weight_array  # in place: optimisers holding the Parameter still see it
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=k)
    assert int(b[3].num_batches_tracked) == 3
    # the restored counter keeps counting (momentum=None uses it)
    b(rng.standard_normal((4, 2, 6, 7)))
    assert int(b[3].num_batches_tracked) == 4 and int(a[3].num_batches_tracked) == 3


def test_load_state_dict_rejects_bad_keys_and_shapes():
    net = _small_net()
    state = net.state_dict()
    missing = dict(state)
    del missing["0.bias"]
    with pytest.raises(KeyError, match="0.bias"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match="extra.weight"):
        net.load_state_dict({**state, "extra.weight": np.zeros(1)})
    bad = dict(state)
    bad["5.weight"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=r"5\.weight.*\(5, 5\).*\(4, 27\)"):
        net.load_state_dict(bad)


# --------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip_is_exact(tmp_path, dtype):
    rng = np.random.default_rng(6)
    net = seed_cnn(batchnorm=True, dtype=dtype, rng=1)
    for _ in range(2):
        net(rng.standard_normal((4, 1, 28, 28)).astype(dtype))
    path = tmp_path / "model.npz"
    net.save(path, epoch=np.array(3))
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == set(net.state_dict()) | {"epoch"}
        for k, v in net.state_dict().items():
            assert f[k].dtype == v.dtype, k
            np.testing.assert_array_equal(f[k], v, err_msg=k)
        assert int(f["epoch"]) == 3
    other = seed_cnn(batchnorm=True, dtype=dtype, rng=2)
    assert other.load(path) is other
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v, err_msg=k)
    net.eval()
    other.eval()
    x = rng.standard_normal((2, 1, 28, 28)).astype(dtype)
    np.testing.assert_array_equal(net(x), other(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temp file left behind


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    net = _small_net()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    path = tmp_path / "model.npz"
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    net = _small_net()
    path = tmp_path / "model.npz"
    net.save(path)
    before = path.read_bytes()
    net[0].weight.data[...] += 1.0

    def broken_savez(file, **arrays):
        file.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        net.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_save_creates_folder_and_accepts_str(tmp_path):
    net = _small_net()
    path = os.path.join(str(tmp_path), "a", "b", "m.npz")
    net.save(path)
    assert os.path.exists(path)
    _small_net(seed=3).load(path)


# --------------------------------------------------------------------------- summary and counts
def test_summary_counts_reference_net():
    net = seed_cnn(rng=0)
    assert count_parameters(net) == 799_078
    assert count_neurons(net) == 10_014
    text = summary(net)
    assert "799,078" in text and "10,014" in text
    bn = seed_cnn(batchnorm=True, rng=0)
    assert count_parameters(bn) == 799_206
    assert count_neurons(bn) == 10_014
    assert "799,206" in summary(bn)
    # torch agrees on the parameter counts
    assert sum(p.numel() for p in to_torch(net).parameters()) == 799_078
    assert sum(p.numel() for p in to_torch(bn).parameters()) == 799_206


def test_summary_output_shapes():
    rows = npcnn.models.summary_rows(seed_cnn(batchnorm=True, rng=0))
    shapes = [r["output_shape"] for r in rows]
    assert shapes[0] == [32, 28, 28] and shapes[2] == [32, 14, 14]
    assert [32, 7, 7] in shapes and [1568] in shapes and shapes[-1] == [10]


def test_public_api_reexports():
    for name in ["Conv2d", "MaxPool2d", "BatchNorm2d", "BatchNorm1d", "Linear", "ReLU", "Flatten", "LogSoftmax",
                 "Softmax", "NLLLoss", "CrossEntropyLoss", "Parameter", "Module", "Sequential", "Adam", "SGD",
                 "seed_cnn", "summary", "gradcheck"]:
        assert hasattr(npcnn, name), name


def test_torch_oracle_round_trip_helpers():
    """The oracle itself: to_torch copies weights, buffers, dtype and mode; load_into_npcnn copies back."""
    net = _small_net(dtype=np.float32)
    net.eval()
    twin = to_torch(net)
    assert not twin.training and not any(m.training for m in twin.modules())
    assert all(p.dtype == torch.float32 for p in twin.parameters())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(to_numpy(twin.state_dict()[k]), v)
    x = np.random.default_rng(7).standard_normal((2, 2, 6, 7)).astype(np.float32)
    g = np.ones((2, 4), dtype=np.float32)
    y, _, _ = run_npcnn(net, x, g)
    assert rel_err(y, twin(torch.from_numpy(x))) < 1e-5
    with torch.no_grad():
        twin[0].weight.add_(1.0)
    load_into_npcnn(net, twin)
    np.testing.assert_array_equal(net[0].weight.data, to_numpy(twin[0].weight))
