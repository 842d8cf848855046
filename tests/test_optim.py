"""Adam and SGD against torch.optim, option by option, over many steps.

Two set-ups: (a) random quadratics, where each library computes the gradient
from its own current parameters (so any difference would compound), and
(b) a fixed sequence of random gradients fed to both. In float64 the
parameters agree to 1e-10 relative after every step.
"""
import itertools

import numpy as np
import pytest
import torch

from npcnn import SGD, Adam, Parameter
from npcnn.optim import lr_schedule
from torch_oracle import rel_err

torch.set_num_threads(1)

SHAPES = [(3, 4), (5,), (2, 3, 2, 2), ()]
STEPS = 60

ADAM_OPTIONS = [
    dict(lr=lr, betas=betas, eps=eps, weight_decay=wd, maximize=mx)
    for (lr, betas, eps), wd, mx in itertools.product(
        [(1e-3, (0.9, 0.999), 1e-8), (0.05, (0.8, 0.99), 1e-6), (0.3, (0.0, 0.5), 1e-3)],
        [0.0, 0.1],
        [False, True],
    )
]
SGD_OPTIONS = [
    dict(lr=lr, momentum=mom, nesterov=nest, weight_decay=wd, maximize=mx)
    for lr, (mom, nest), wd, mx in itertools.product(
        [0.01, 0.1], [(0.0, False), (0.9, False), (0.9, True), (0.5, True)], [0.0, 0.05], [False, True],
    )
]


def _make(cls_np, cls_t, opts, dtype, seed):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params = [Parameter(a.copy()) for a in init]
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = cls_np(params, **opts)
    extra = dict(foreach=False) if cls_t is not None else {}
    topt = cls_t(tparams, **opts, **extra)
    return rng, params, tparams, opt, topt


def _quadratics(rng, dtype, maximize):
    """Per tensor a random convex (for minimising) or concave (for maximising) quadratic: grad = A p - b."""
    out = []
    for s in SHAPES:
        n = int(np.prod(s, dtype=int))
        m = rng.standard_normal((n, n))
        a = m @ m.T / n + 0.5 * np.eye(n)
        out.append(((-a if maximize else a).astype(dtype), rng.standard_normal(n).astype(dtype)))
    return out


def _run(cls_np, cls_t, opts, dtype, mode, seed=0):
    rng, params, tparams, opt, topt = _make(cls_np, cls_t, opts, dtype, seed)
    quads = _quadratics(rng, dtype, opts.get("maximize", False)) if mode == "quadratic" else None
    worst = 0.0
    for step in range(STEPS):
        opt.zero_grad()
        topt.zero_grad()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            if mode == "quadratic":
                a, b = quads[i]
                p.grad = (a @ p.data.reshape(-1) - b).reshape(p.shape).astype(dtype)
                tp.grad = torch.from_numpy((a @ tp.detach().numpy().reshape(-1) - b).reshape(p.shape).astype(dtype))
            else:
                g = (rng.standard_normal(p.shape) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)
                p.grad = np.array(g)
                tp.grad = torch.from_numpy(np.array(g))
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            assert p.data.dtype == dtype and p.data.shape == tuple(tp.shape)
            worst = max(worst, rel_err(p.data, tp.detach()))
    return worst, params


@pytest.mark.parametrize("mode", ["quadratic", "random"])
@pytest.mark.parametrize("opts", ADAM_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_adam_matches_torch_float64(opts, mode):
    worst, _ = _run(Adam, torch.optim.Adam, opts, np.float64, mode)
    assert worst < 1e-10


@pytest.mark.parametrize("mode", ["quadratic", "random"])
@pytest.mark.parametrize("opts", SGD_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_sgd_matches_torch_float64(opts, mode):
    worst, _ = _run(SGD, torch.optim.SGD, opts, np.float64, mode)
    assert worst < 1e-10


@pytest.mark.parametrize("cls_np,cls_t,opts", [
    (Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    (Adam, torch.optim.Adam, dict(lr=0.01, maximize=True)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
])
def test_optimisers_float32_stay_float32_and_close(cls_np, cls_t, opts):
    worst, params = _run(cls_np, cls_t, opts, np.float32, "random")
    assert worst < 1e-4
    for p in params:
        assert p.data.dtype == np.float32


def test_optimisers_minimise_and_maximise():
    """Sanity independent of torch: descent finds the minimum of a convex quadratic, maximize the maximum
    of a concave one (both at 0)."""
    for cls, opts in [(Adam, dict(lr=0.05)), (SGD, dict(lr=0.05, momentum=0.9))]:
        for maximize in [False, True]:
            sign = -1.0 if maximize else 1.0
            p = Parameter(np.full(5, 3.0))
            opt = cls([p], maximize=maximize, **opts)
            f0 = sign * 0.5 * float(p.data @ p.data)
            for _ in range(200):
                p.grad = sign * p.data.copy()
                opt.step()
            f1 = sign * 0.5 * float(p.data @ p.data)
            assert abs(f1) < 1e-2 * abs(f0), (cls.__name__, maximize, f0, f1)


@pytest.mark.parametrize("cls_np,cls_t,opts", [
    (Adam, torch.optim.Adam, dict(lr=0.05)),
    (Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.1)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
])
def test_parameters_without_gradient_are_skipped_like_torch(cls_np, cls_t, opts):
    """A parameter whose grad is None is left alone (no weight decay, no momentum), as torch does,
    and when it starts receiving gradients later it is updated exactly as torch updates it."""
    rng, params, tparams, opt, topt = _make(cls_np, cls_t, opts, np.float64, 3)
    before = params[1].data.copy()
    for step in range(12):
        opt.zero_grad()
        topt.zero_grad()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            if i == 1 and step < 4:
                continue  # no gradient for parameter 1 during the first 4 steps
            g = rng.standard_normal(p.shape)
            p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        if step < 4:
            np.testing.assert_array_equal(params[1].data, before)
        for k, (p, tp) in enumerate(zip(params, tparams)):
            err = rel_err(p.data, tp.detach())
            assert err < 1e-10, f"step {step}, parameter {k}: relative error {err:.3e}"


def test_step_updates_in_place():
    """Layers hold references to their Parameter arrays: the optimiser must not rebind .data."""
    for cls, opts in [(Adam, dict(weight_decay=0.1)), (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1))]:
        p = Parameter(np.ones((2, 3), dtype=np.float32))
        data_id = id(p.data)
        view = p.data
        opt = cls([p], **opts)
        for _ in range(3):
            p.grad = np.ones((2, 3), dtype=np.float32)
            opt.step()
        assert id(p.data) == data_id
        assert view is p.data and not np.allclose(view, 1.0)


def test_grad_is_not_modified_by_step():
    for cls, opts in [(Adam, dict(weight_decay=0.1, maximize=True)),
                      (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True))]:
        p = Parameter(np.ones(4))
        opt = cls([p], **opts)
        for _ in range(3):
            g = np.arange(4.0)
            p.grad = g
            opt.step()
            np.testing.assert_array_equal(g, np.arange(4.0))


def test_adam_on_an_input_image_with_maximize():
    """The attack path: an image wrapped in a Parameter, ascended with maximize=True, as torch would."""
    rng = np.random.default_rng(5)
    img = rng.uniform(0, 1, (1, 1, 4, 4))
    w = rng.standard_normal((1, 1, 4, 4))
    p, tp = Parameter(img.copy()), torch.tensor(img.copy(), requires_grad=True)
    opt, topt = Adam([p], lr=0.01, maximize=True), torch.optim.Adam([tp], lr=0.01, maximize=True, foreach=False)
    for _ in range(20):
        p.grad = w * np.cos(p.data)  # d/dx sum(w * sin(x))
        tp.grad = torch.from_numpy(w * np.cos(tp.detach().numpy()))
        opt.step()
        topt.step()
    assert rel_err(p.data, tp.detach()) < 1e-10
    assert np.sum(w * np.sin(p.data)) > np.sum(w * np.sin(img))


def test_adam_state_dict_resumes_exactly():
    rng = np.random.default_rng(6)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(10)]
    init = [rng.standard_normal(s) for s in SHAPES]

    def run(split):
        params = [Parameter(a.copy()) for a in init]
        opt = Adam(params, lr=0.02, weight_decay=0.01)
        for step, gs in enumerate(grads):
            if step == split:
                saved = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
                opt = Adam(params, lr=0.02, weight_decay=0.01)
                opt.load_state_dict(saved)
            for p, g in zip(params, gs):
                p.grad = g.copy()
            opt.step()
        return [p.data for p in params]

    for a, b in zip(run(split=None), run(split=4)):
        np.testing.assert_array_equal(a, b)


def test_zero_grad_sets_none():
    p = Parameter(np.zeros(3))
    p.grad = np.ones(3)
    for opt in [Adam([p]), SGD([p], lr=0.1)]:
        p.grad = np.ones(3)
        opt.zero_grad()
        assert p.grad is None


@pytest.mark.parametrize("make,match", [
    (lambda p: Adam([]), "empty"),
    (lambda p: SGD([], lr=0.1), "empty"),
    (lambda p: Adam([np.zeros(3)]), "Parameter"),
    (lambda p: Adam([p], lr=0.0), "learning rate"),
    (lambda p: SGD([p], lr=-1.0), "learning rate"),
    (lambda p: Adam([p], betas=(1.0, 0.999)), "betas"),
    (lambda p: Adam([p], weight_decay=-1.0), "weight_decay"),
    (lambda p: SGD([p], lr=0.1, nesterov=True), "Nesterov"),
    (lambda p: SGD([p], lr=0.1, momentum=-0.5), "momentum"),
])
def test_bad_optimiser_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(Parameter(np.zeros(3)))


def test_adam_sets_subnormal_moments_to_zero():
    """A weight whose gradient turns 0 has its first moment shrink by beta1 every step; once it
    falls below float32's smallest normal number it is set to 0 (subnormals are slow), on both
    the numba path and the numpy path, and the weight stops moving."""
    import npcnn.nn as nn
    from npcnn.optim import Adam
    for contiguous in (True, False):
        data = np.ones((4, 6), np.float32)
        p = nn.Parameter(data if contiguous else data[:, ::2])
        opt = Adam([p], lr=1e-3)
        p.grad = np.full(p.data.shape, 1e-3, np.float32)
        opt.step()
        m, v, _ = opt.state[0]
        assert m.min() > 0 and v.min() > 0
        for _ in range(900):                             # 0.9**900 * 1e-4 ~ 1e-45: through the subnormals
            p.grad = np.zeros(p.data.shape, np.float32)
            opt.step()
            tiny = np.finfo(np.float32).tiny
            assert not ((np.abs(m) < tiny) & (m != 0)).any(), "a subnormal first moment was kept"
        assert (m == 0).all()
        before = p.data.copy()
        opt.step()
        np.testing.assert_array_equal(p.data, before)


def test_the_cyclic_schedule_rises_to_the_peak_at_two_fifths_and_falls_to_zero():
    f = lr_schedule("cyclic", 5e-3, 10)
    assert [f(t) for t in (0, 2, 4, 7, 10)] == pytest.approx([0, 2.5e-3, 5e-3, 2.5e-3, 0], abs=1e-18)
    assert f(3.9) < f(4) > f(4.1)
    assert lr_schedule("constant", 1e-3, 10) is None
    with pytest.raises(ValueError, match="--lr-schedule must be one of constant, cyclic, got 'step'"):
        lr_schedule("step", 1e-3, 10)
