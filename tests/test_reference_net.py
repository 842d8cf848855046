"""The reference network (seed_cnn) in npcnn and in PyTorch, same weights, same batches.

Forward / backward of the whole net agree, and 5 Adam steps on NLL of the
log-softmax output land on the same parameters (and BatchNorm running
statistics): largest absolute difference over the largest absolute value
below 1e-3 in float32 and 1e-8 in float64.
"""
import numpy as np
import pytest
import torch

from npcnn import Adam, NLLLoss, fast, seed_cnn
from torch_oracle import TOL, rel_err, run_npcnn, run_torch, to_numpy, to_torch

torch.set_num_threads(1)

STEP_TOL = {np.float32: 1e-3, np.float64: 1e-8}
DTYPES = [np.float32, np.float64]


def _batches(dtype, steps, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, size=n)) for _ in range(steps)]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_net_forward_backward_matches_torch(batchnorm, dtype, fuse):
    rng = np.random.default_rng(1)
    net = seed_cnn(batchnorm=batchnorm, dtype=dtype, rng=3)
    twin = to_torch(net)
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    g = rng.standard_normal((5, 10)).astype(dtype)
    # the fast path fuses Conv2d -> ReLU -> MaxPool2d; it and the readable layers must both agree with torch
    y, dx, grads = run_npcnn(fast.plan(net, fuse=fuse), x, g)
    y_t, dx_t, grads_t = run_torch(twin, x, g)
    assert set(grads) == set(grads_t)
    tol = TOL[np.dtype(dtype)]
    assert rel_err(y, y_t) < tol
    assert rel_err(dx, dx_t) < tol
    for k in grads_t:
        assert grads[k].dtype == dtype, k
        assert rel_err(grads[k], grads_t[k]) < tol, k


def _train_npcnn(net, batches):
    opt = Adam(net.parameters(), lr=1e-3)
    loss_fn, losses = NLLLoss(), []
    net.train()
    for x, t in batches:
        opt.zero_grad()
        losses.append(float(loss_fn(net(x), t)))
        net.backward(loss_fn.backward())
        opt.step()
    return losses


def _train_torch(twin, batches, dtype):
    opt = torch.optim.Adam(twin.parameters(), lr=1e-3, foreach=False)
    loss_fn, losses = torch.nn.NLLLoss(), []
    twin.train()
    for x, t in batches:
        opt.zero_grad()
        loss = loss_fn(twin(torch.from_numpy(x.astype(dtype))), torch.from_numpy(t))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _global_rel(a, b, keys):
    """Largest absolute difference over the largest absolute value, across all the named tensors."""
    diff = max(float(np.max(np.abs(np.asarray(a[k], np.float64) - to_numpy(b[k])))) for k in keys)
    return diff / max(float(np.max(np.abs(to_numpy(b[k])))) for k in keys)


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_five_adam_steps_match_torch(batchnorm, dtype):
    steps = 5
    net = seed_cnn(batchnorm=batchnorm, dtype=dtype, rng=7)
    init = net.state_dict()
    twin = to_torch(net)
    batches = _batches(dtype, steps)
    losses = _train_npcnn(net, batches)
    losses_t = _train_torch(twin, batches, dtype)
    tol = STEP_TOL[dtype]
    np.testing.assert_allclose(losses, losses_t, rtol=tol)
    assert losses[-1] != losses[0]

    state, state_t = net.state_dict(), twin.state_dict()
    assert set(state) == set(state_t)
    params = [k for k, _ in net.named_parameters()]
    stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert bool(stats) == batchnorm
    # the optimiser really moved the weights, by several times the tolerance (5 steps of lr 1e-3 against
    # a largest entry of ~0.33, or 1.0 for BN's gamma)
    assert _global_rel(state, {k: init[k] for k in params}, params) > 3 * tol
    # the whole model, as one measure
    err = _global_rel(state, state_t, params)
    assert err < tol, f"parameters: relative difference {err:.3e} >= {tol:.0e}"
    if stats:
        err = _global_rel(state, state_t, stats)
        assert err < tol, f"running stats: relative difference {err:.3e} >= {tol:.0e}"
    for k in state:
        if k.endswith("num_batches_tracked"):
            assert int(state[k]) == int(state_t[k]) == steps, k
        else:
            assert state[k].dtype == dtype, k
    # and tensor by tensor
    if dtype == np.float64:
        for k in params + stats:
            err = rel_err(state[k], state_t[k])
            assert err < tol, f"{k}: relative difference {err:.3e} >= {tol:.0e}"
    # float32, per tensor: not compared after Adam steps. An entry whose gradient is ~0 takes a step
    # of sign(rounding noise) * lr, so which entries of a tensor end up lr-sized apart is luck (even
    # torch float32 sits ~1e-3 of fc1's largest entry away from torch float64, and a conv's 288
    # weights may or may not have such an entry). The whole model is compared above; the float32
    # accuracy of the gradients themselves, per tensor, is tested below against float64.


def _norm_err(a, b):
    a, b = np.asarray(to_numpy(a), np.float64), np.asarray(to_numpy(b), np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_float32_gradients_are_as_accurate_as_torch(batchnorm):
    """One backward of the whole net in float32, ours and torch's, against ours in float64 (= torch's
    float64, see above): per parameter, ours is no further from it than torch's (3x margin)."""
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((64, 1, 28, 28)), rng.integers(0, 10, 64)
    net = seed_cnn(batchnorm=batchnorm, dtype=np.float32, rng=7)
    net64 = seed_cnn(batchnorm=batchnorm, dtype=np.float64, rng=7)
    net64.load_state_dict({k: np.asarray(v, np.float64) for k, v in net.state_dict().items()})
    twin = to_torch(net).train()
    grads = []
    for model, xx in ((net, x.astype(np.float32)), (net64, x)):
        loss = NLLLoss()
        loss.forward(model.forward(xx), t)
        model.backward(loss.backward())
        grads.append([p.grad for p in model.parameters()])
    torch.nn.functional.nll_loss(twin(torch.from_numpy(x.astype(np.float32))), torch.from_numpy(t)).backward()
    for (name, _), ours, exact, theirs in zip(net.named_parameters(), grads[0], grads[1], twin.parameters()):
        e_ours, e_torch = _norm_err(ours, exact), _norm_err(theirs.grad, exact)
        assert e_ours <= max(1e-6, 3 * e_torch), f"{name}: npcnn float32 {e_ours:.2e}, torch float32 {e_torch:.2e}"


def test_reference_net_eval_after_training_matches_torch():
    """After BN train steps, eval mode (running stats) gives the same predictions and input gradient."""
    dtype = np.float64
    net = seed_cnn(batchnorm=True, dtype=dtype, rng=11)
    twin = to_torch(net).train()
    for x, _ in _batches(dtype, 3, n=8, seed=5):
        net(x)
        twin(torch.from_numpy(x))
    net.eval()
    twin.eval()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1, 28, 28))
    g = rng.standard_normal((4, 10))
    y, dx, grads = run_npcnn(net, x, g)
    y_t, dx_t, grads_t = run_torch(twin, x, g)
    assert rel_err(y, y_t) < 1e-10
    assert rel_err(dx, dx_t) < 1e-10
    for k in grads_t:
        assert rel_err(grads[k], grads_t[k]) < 1e-10, k
