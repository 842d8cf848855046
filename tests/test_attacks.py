"""The attacks (npcnn.analysis.attacks) against PyTorch and torchattacks, and on a trained net.

* Each Adam loop (class image, targeted, noise), 40-100 steps in float64 on fixed random weights, equals
  the same loop written with torch autograd + torch.optim.Adam (largest difference < 1e-8).
* FGSM / PGD / PGD-L2 (untargeted and targeted, no random start) equal torchattacks in float64: the
  torch model is made float64 and the normalisation sits inside it, so torchattacks sees [0, 1] inputs
  and computes in float64 like us.
* The beta sweep's batched loop: each beta's row equals that beta's loop in PyTorch.
* On a net trained to >= 98 %: class images, the 10 x 10 targeted matrix, the report's pairs at the default
  settings (PyTorch's Adam lr 1e-3) and across the beta sweep (L2 does not grow with beta), FGSM at eps 0.3.

The comparisons with PyTorch are tie-aware: every image an attack passes through (the start and every
iterate) is checked to be away from the net's kinks (``ties.kink_margin``). MNIST digits have exactly black
backgrounds, where max-pool windows hold equal values and rounding decides where the gradient goes, so
the comparisons start from ``lifted()`` digits: the same strokes on a faintly noisy grey, inside [0, 1].

The trained run is made once per session (1 epoch on 30,000 images: 98.2 % test accuracy, the
cheapest setting found that reaches 98 %) and shared with test_cli_attack.py.
"""
import os

import numpy as np
import pytest
import torch
import torchattacks
from test_features import make_classifier
from ties import kink_margin
from torch_oracle import to_torch

from npcnn.analysis import attacks as A
from npcnn.classifier import Classifier
from npcnn.data import Normalization
from npcnn.models import seed_cnn

DATA = os.environ.get("NPCNN_DATA", "/work/shared/data/mnist")
_CACHE = {}
#: float64 activations of the two libraries differ by ~1e-14 here (values up to ~30): images this far from
#: every kink are tie-free with a factor of 1,000 to spare
TIE_FREE = 1e-11


def lifted(x, seed=0):
    """Digits away from the kinks and from the [0, 1] bounds: 0.15 + 0.7 x + uniform(0, 0.05)."""
    return 0.15 + 0.7 * np.asarray(x, np.float64) + np.random.default_rng(seed).uniform(0, 0.05, np.shape(x))


def assert_tie_free(clf, images):
    """Every image in ``images`` (a list of batches) is at least TIE_FREE from every kink of the net."""
    margin = min(kink_margin(clf, batch) for batch in images)
    assert margin > TIE_FREE, f"an image passes within {margin:.2g} of a kink: the comparison would test rounding"


def trained_run_dir(tmp_path_factory):
    """A trained run folder, made once per test session (also used by test_cli_attack.py)."""
    if "run" not in _CACHE:
        from npcnn.experiments import TrainConfig, train_run

        out = str(tmp_path_factory.mktemp("attacks") / "run")
        metrics = train_run(TrainConfig(limit=30_000, epochs=1, data_dir=DATA), out, progress=False,
                            log=lambda *a: None)
        assert metrics["test_accuracy"] >= 0.98, metrics["test_accuracy"]
        _CACHE["run"] = out
    return _CACHE["run"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Same thread count on both sides: numpy's BLAS may use more, but torch on a busy 2-core machine
    with 2 threads ran the reference loops ~15x slower than with 1 (oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    from npcnn.runs import Run

    os.environ.setdefault("NPCNN_DATA", DATA)
    return Run.open(trained_run_dir(tmp_path_factory))


@pytest.fixture(scope="session")
def test_set(run):
    return run.test_data()


@pytest.fixture(scope="session")
def samples(run, test_set):
    """The run's one test digit per class: (pixel images [10, 28, 28] float32, labels [10])."""
    _, x, y = run.select(*test_set)
    return x, y


@pytest.fixture(scope="session")
def clf64():
    """A float64 Classifier with fixed random weights (sharpened: see test_features.make_classifier), and
    its torch twin taking normalised input. Not the trained net: a net trained here differs in its last
    bits from machine to machine, and with it where an attack's iterates go, so a check that they stay
    clear of the kinks would hold on one machine and not on another. These weights are the same on all."""
    clf = make_classifier()
    body = torch.nn.Sequential(*list(to_torch(clf.model).eval())[:-1])  # logits, as Classifier.body
    return clf, body


def torch_adam_loop(body, norm, x0, targets, steps, lr, *, space="normalized", bounds=None, beta=0.0, noise=False):
    """The report's loop in PyTorch: Adam(maximize=True) on the image (or on an additive noise).

    Returns (final pixel images, history [steps, N], every iterate in pixel space).
    """
    x0 = torch.tensor(np.asarray(x0, dtype=np.float64)[:, None])
    to_space = (lambda x: (x - norm.mean) / norm.std) if space == "normalized" else (lambda x: x)
    to_net = (lambda v: v) if space == "normalized" else (lambda x: (x - norm.mean) / norm.std)
    to_pixel = (lambda v: v * norm.std + norm.mean) if space == "normalized" else (lambda v: v)
    v0 = to_space(x0)
    lo = hi = None
    if bounds is not None:
        lo, hi = to_space(torch.tensor(float(bounds[0]))), to_space(torch.tensor(float(bounds[1])))
    param = torch.zeros_like(v0) if noise else v0.clone()
    if bounds is not None and not noise:
        param = torch.clamp(param, lo, hi)
    param.requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr, maximize=True)
    rows, t = torch.arange(len(targets)), torch.as_tensor(np.asarray(targets))
    history, iterates = [], []
    for _ in range(steps):
        opt.zero_grad()
        v = v0 + param if noise else param
        iterates.append(to_pixel(v.detach()).numpy()[:, 0].copy())
        obj = body(to_net(v))[rows, t]
        if beta:
            obj = obj - beta * ((v - v0) ** 2).sum(dim=(1, 2, 3))
        history.append(obj.detach().numpy().copy())
        obj.sum().backward()
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                if noise:
                    param.copy_(torch.clamp(v0 + param, lo, hi) - v0)
                else:
                    param.clamp_(lo, hi)
    v = (v0 + param if noise else param).detach()
    iterates.append(to_pixel(v).numpy()[:, 0])
    return iterates[-1], np.asarray(history), iterates


def _close(a, b, what):
    err = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    assert err < 1e-8, f"{what}: largest difference {err:.3g}"


@pytest.mark.parametrize("space, bounds", [("normalized", None), ("pixel", (0.0, 1.0))])
def test_class_image_loop_matches_torch(clf64, space, bounds):
    clf, body = clf64
    classes = [0, 4, 7]
    # bounded: steps of 0.05 pin pixels at 0 or 1 in flat patches (max-pool ties) by step 16; 0.02 does not
    steps, lr = (100, 0.05) if bounds is None else (40, 0.02)
    r = A.class_images(clf, classes, steps=steps, lr=lr, seed=3, space=space, bounds=bounds, progress=False)
    start = np.random.default_rng(3).random((3, 1, 28, 28))[:, 0]  # the documented start: uniform pixel noise
    images, history, iterates = torch_adam_loop(body, clf.normalization, start, classes, steps, lr,
                                                space=space, bounds=bounds)
    assert_tie_free(clf, iterates)
    _close(r.start, start, "start")
    _close(r.images, images, "images")
    _close(r.history, history, "history")
    assert r.history.shape == (steps, 3)
    if bounds is None:
        assert r.images.max() > 1 or r.images.min() < 0  # unbounded: it does leave [0, 1] (saved as is)
    else:
        assert r.images.min() >= 0 and r.images.max() <= 1


def test_targeted_loop_matches_torch(clf64, samples):
    clf, body = clf64
    x, y = samples
    src, tgt = np.array([1, 3, 8]), np.array([7, 5, 0])
    x = lifted(x[src])
    # beta 0.05 (not the report's 1e-4) so that the penalty visibly shapes the result
    r = A.targeted(clf, x, tgt, labels=y[src], beta=0.05, steps=100, lr=0.01, progress=False)
    images, history, iterates = torch_adam_loop(body, clf.normalization, x, tgt, 100, 0.01, beta=0.05)
    assert_tie_free(clf, iterates)
    _close(r.images, images, "images")
    _close(r.history, history, "history")
    _close(r.perturbation, images - x, "perturbation")


def test_targeted_sweep_rows_match_torch(clf64, samples):
    """Each beta's row of the one batched loop is the loop for that beta alone (Adam's update is per pixel)."""
    clf, body = clf64
    x, y = samples
    src, tgt = np.array([1, 3, 8]), np.array([7, 5, 0])
    x = lifted(x[src])
    rows = A.targeted_sweep(clf, x, tgt, [0.0, 0.05], labels=y[src], steps=100, lr=0.01, progress=False)
    assert [r.settings["beta"] for r in rows] == [0.0, 0.05]
    for r, beta in zip(rows, [0.0, 0.05]):
        images, history, iterates = torch_adam_loop(body, clf.normalization, x, tgt, 100, 0.01, beta=beta)
        assert_tie_free(clf, iterates)
        _close(r.images, images, f"images, beta {beta}")
        _close(r.history, history, f"history, beta {beta}")
        np.testing.assert_array_equal(r.probabilities, clf.predict_proba(r.images))


@pytest.mark.parametrize("space, bounds", [("normalized", None), ("pixel", (0.0, 1.0))])
def test_noise_loop_matches_torch(clf64, samples, space, bounds):
    clf, body = clf64
    x, y = samples
    src, tgt = np.array([0, 2]), np.array([8, 3])
    x = lifted(x[src])
    # bounded: steps of 0.005 pin flat patches at 0 or 1 (max-pool ties) by step 95; 0.002 does not
    lr = 0.005 if bounds is None else 0.002
    r = A.learn_noise(clf, x, tgt, labels=y[src], steps=100, lr=lr, space=space, bounds=bounds, progress=False)
    images, history, iterates = torch_adam_loop(body, clf.normalization, x, tgt, 100, lr, space=space,
                                                bounds=bounds, noise=True)
    assert_tie_free(clf, iterates)
    _close(r.images, images, "images")
    _close(r.history, history, "history")
    _close(r.perturbation, images - x, "noise (pixel units)")
    if bounds is not None:
        assert r.images.min() >= 0 and r.images.max() <= 1


class _PixelNet(torch.nn.Module):
    """torchattacks wants a model on [0, 1] inputs: the normalisation goes inside."""

    def __init__(self, net, norm):
        super().__init__()
        self.net, self.mean, self.std = net, norm.mean, norm.std

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd-l2"])
def test_fgsm_pgd_match_torchattacks(clf64, samples, name, targeted):
    clf, body = clf64
    x, y = samples
    x = lifted(x)
    tgt = (y + 3) % 10
    model = _PixelNet(body, clf.normalization).eval()

    def theirs(steps):
        if name == "fgsm":
            attack = torchattacks.FGSM(model, eps=0.1)
        elif name == "pgd":
            attack = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=steps, random_start=False)
        else:
            attack = torchattacks.PGDL2(model, eps=1.5, alpha=0.3, steps=steps, random_start=False)
        if targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack(torch.tensor(x[:, None]), torch.tensor(tgt if targeted else y)).numpy()[:, 0]

    if name == "fgsm":
        ours = A.fgsm(clf, x, y, 0.1, targets=tgt if targeted else None)
        assert_tie_free(clf, [x])  # FGSM takes one gradient, at x
    elif name == "pgd":
        ours = A.pgd(clf, x, y, 0.1, step_size=0.02, steps=10, random_start=False, targets=tgt if targeted else None)
    else:
        ours = A.pgd(clf, x, y, 1.5, norm="l2", step_size=0.3, steps=10, random_start=False,
                     targets=tgt if targeted else None)
    if name != "fgsm":  # every iterate PGD takes a gradient at
        assert_tie_free(clf, [x] + [theirs(k) for k in range(1, 10)])
    adv = theirs(10)
    assert adv.dtype == np.float64
    _close(ours.images, adv, name)
    assert ours.images.min() >= 0 and ours.images.max() <= 1
    if name == "pgd-l2":
        assert np.all(ours.l2 <= 1.5 + 1e-9)
    else:
        assert np.all(ours.linf <= 0.1 + 1e-12)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_random_start_is_seeded_and_stays_in_the_ball(run, samples, norm, eps):
    x, y = samples
    clf = run.classifier
    a = A.pgd(clf, x, y, eps, norm=norm, steps=2, random_start=True, seed=5)
    b = A.pgd(clf, x, y, eps, norm=norm, steps=2, random_start=True, seed=5)
    c = A.pgd(clf, x, y, eps, norm=norm, steps=2, random_start=True, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    size = a.l2 if norm == "l2" else a.linf
    assert np.all(size <= eps * (1 + 1e-5)) and a.images.min() >= 0 and a.images.max() <= 1


# --------------------------------------------------------------------------- on a trained net (>= 98 %)

def test_class_images_are_their_class(run):
    # 100 steps instead of 15,000: the target logit climbs ~1 per step (linear, see the cost curve),
    # and by step 100 every class is already at p > 0.999; the other 14,900 only raise it further.
    clf = run.classifier
    r = A.class_images(clf, steps=100, progress=False)
    assert r.images.shape == (10, 28, 28) and r.history.shape == (100, 10)
    np.testing.assert_array_equal(r.targets, np.arange(10))
    assert np.all(r.predicted == np.arange(10)), r.predicted
    assert np.all(r.confidence > 0.99), r.confidence
    assert np.all(r.success)
    assert np.all(r.history[-1] > r.history[0])
    np.testing.assert_array_equal(r.probabilities, clf.predict_proba(r.images))


def test_targeted_matrix_succeeds(run, samples):
    # The report's beta 1e-4 from x0, with 100 steps of 0.01 instead of 1,000 of the default 1e-3 (PyTorch's):
    # this checks the matrix, not the step size (that is test_targeted_defaults_...). At 0.01 success is
    # reached by ~100 steps (97 % here, 31 % at 50); later steps only add confidence and distance.
    x, y = samples
    clf = run.classifier
    src, tgt = A.target_pairs(y, "all")
    assert len(src) == 90 and np.all(y[src] != tgt)
    r = A.targeted(clf, x[src], tgt, labels=y[src], steps=100, lr=0.01, progress=False)
    s = r.summary()
    assert s["success_rate"] >= 0.9, s
    assert 0 < s["mean_linf"] and 0 < s["mean_l2"]
    np.testing.assert_array_equal(r.probabilities, clf.predict_proba(r.images))
    np.testing.assert_allclose(r.images - r.start, r.perturbation)
    # the report's pairs are the diagonal d -> d + 1 of the matrix
    rs, rt = A.target_pairs(y, "report")
    np.testing.assert_array_equal(rt, (y + 1) % 10)


@pytest.fixture(scope="session")
def report_sweep(run, samples):
    """The report's pairs (d -> d + 1) at every beta of the sweep, with the default steps and step size, in one
    batched loop (60 images; the same per beta as A.targeted alone: test_targeted_sweep_rows_match_torch)."""
    x, y = samples
    src, tgt = A.target_pairs(y, "report")
    return A.targeted_sweep(run.classifier, x[src], tgt, A.SWEEP_BETAS, labels=y[src], progress=False)


def test_targeted_defaults_are_pytorchs_adam_and_reach_the_report_pairs(run, report_sweep):
    import inspect

    from npcnn import experiments

    # the report gives no step size: PyTorch's Adam default, everywhere the attack is called
    assert A.TARGETED == {"steps": 1_000, "lr": 1e-3, "beta": 1e-4}
    for f in (A.targeted, A.targeted_sweep, experiments.targeted, experiments.targeted_sweep):
        assert inspect.signature(f).parameters["lr"].default == 1e-3, f
    # All 1,000 steps: this 1-epoch net needs them (600 steps: 8 of 10). 9 of 10 here (0 -> 1 ends as a 2,
    # 9 -> 0 reaches p = 0.92), at mean L2 6.6 and L-inf 0.49; on the 10-epoch full-MNIST net all 10, at 5.4
    # (the target, >= 90 %, is for that net: README). A net trained for one epoch on another CPU ends
    # on other weights, so this one asks for 8 of 10: one more near miss must not fail the suite.
    r = report_sweep[A.SWEEP_BETAS.index(A.TARGETED["beta"])]
    assert r.settings == {"steps": 1000, "lr": 1e-3, "beta": 1e-4, "space": "normalized", "bounds": None}
    s = r.summary()
    assert s["success_rate"] >= 0.8 and s["mean_l2"] <= 8, s
    np.testing.assert_array_equal(r.probabilities, run.classifier.predict_proba(r.images))


def test_l2_does_not_grow_with_beta(report_sweep):
    # At the penalised optimum the distance can only shrink as beta grows (for b1 < b2 and optima v1, v2, the
    # two optimality inequalities add up to (b2 - b1)(|v1 - v0|^2 - |v2 - v0|^2) >= 0). Adam stops after
    # 1,000 steps, not at the optimum, and below beta ~1e-3 the penalty barely acts: a pair's L2 moves by a few
    # hundredths either way (the batch's rounding alone does as much), so the mean may rise a little there
    # (it does not on this net; 5 % allowed, since another CPU trains another net).
    l2 = np.array([r.summary()["mean_l2"] for r in report_sweep])
    assert np.all(l2[1:] <= l2[:-1] * 1.05), l2
    # where the penalty acts (beta >= 1e-2), clearly less: here 6.66, 6.63, 6.43, 5.12, 1.57, 0.14
    assert l2[-1] < l2[-2] < l2[-3] < 0.9 * l2[0], l2
    assert report_sweep[-1].success_rate < report_sweep[0].success_rate   # beta 1: the penalty wins


def test_fgsm_eps_03_breaks_the_net(run, test_set):
    # the first 1,000 test images rather than 10,000 (a tenth of the time; clean accuracy is ~98 % there too)
    images, labels = test_set
    r = A.robustness_curve(run.classifier, images[:1000], labels[:1000], [0.0, 0.3], attack="fgsm", progress=False)
    assert r.accuracy[0] > 0.95
    assert r.accuracy[1] < 0.5, r.accuracy


def test_learned_noise_and_transfer(run, samples, test_set):
    x, y = samples
    clf = run.classifier
    r = A.learn_noise(clf, x[:1], [8], labels=y[:1], steps=150, progress=False)
    assert r.predicted[0] == 8
    np.testing.assert_allclose(r.images[0], x[0] + r.perturbation[0], atol=1e-5)
    images, labels = test_set
    images, labels = images[:300], labels[:300]
    t = A.transfer_noise(clf, r.perturbation[0], images, labels, 8, progress=False)
    noisy = clf.predict(images.astype(np.float32) / 255 + r.perturbation[0])
    clean = clf.predict(images.astype(np.float32) / 255)
    np.testing.assert_array_equal(t.predicted_noisy, noisy)
    assert t.transfer_rate == pytest.approx(np.mean(noisy[labels != 8] == 8))
    assert t.accuracy_clean == pytest.approx(np.mean(clean == labels))
    assert t.accuracy_noisy == pytest.approx(np.mean(noisy == labels))


# --------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def small_clf():
    return Classifier(seed_cnn(rng=0), Normalization(0.1307, 0.3081))


def test_nan_stops_the_attack_and_names_the_step(small_clf):
    # a step of 1e38 in float32 sends the image to ~1e38 and the logits to inf / nan at step 2
    with pytest.raises(A.NonFiniteAttackError, match="step 2 of 5"):
        A.class_images(small_clf, [3], steps=5, lr=1e38, progress=False)
    x = np.zeros((1, 28, 28), np.float32)
    x[0, 5, 5] = np.nan
    with pytest.raises(A.NonFiniteAttackError, match="step 1 of"):
        A.learn_noise(small_clf, x, [1], steps=3, progress=False)
    with pytest.raises(A.NonFiniteAttackError, match="step 1 of 3"):
        A.pgd(small_clf, x, [0], 0.1, steps=3, random_start=False)


@pytest.mark.parametrize("call, message", [
    (lambda c, x: A.class_images(c, [10], steps=1, progress=False), "unknown class 10"),
    (lambda c, x: A.class_images(c, ["cat"], steps=1, progress=False), "unknown class 'cat'"),
    (lambda c, x: A.class_images(c, steps=0, progress=False), "steps must be a positive integer"),
    (lambda c, x: A.class_images(c, steps=1, lr=-1, progress=False), "step size"),
    (lambda c, x: A.class_images(c, steps=1, bounds=(1, 0), progress=False), "low < high"),
    (lambda c, x: A.class_images(c, steps=1, space="z", progress=False), "space must be"),
    (lambda c, x: A.targeted(c, x, [1], beta=-1, steps=1, progress=False), "beta must be >= 0"),
    (lambda c, x: A.targeted(c, x, [1, 2], steps=1, progress=False), "1 images but 2 targets"),
    (lambda c, x: A.fgsm(c, x, [0], -0.1), "eps must be >= 0"),
    (lambda c, x: A.pgd(c, x, [0], 0.1, norm="l1"), "norm must be"),
    (lambda c, x: A.robustness_curve(c, x, [0], [0.1], attack="cw", progress=False), "unknown attack"),
])
def test_bad_arguments_are_clear_value_errors(small_clf, call, message):
    with pytest.raises(ValueError, match=message):
        call(small_clf, np.zeros((1, 28, 28), np.float32))


def test_result_semantics():
    p = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    common = dict(images=np.zeros((2, 2, 2)), start=np.zeros((2, 2, 2)), perturbation=np.array(
        [[[3.0, 4.0], [0, 0]], [[0, -1.0], [0, 0]]]), history=np.zeros((1, 2)), probabilities=p)
    t = A.AttackResult("targeted", targets=np.array([1, 2]), labels=np.array([0, 0]), **common)
    np.testing.assert_array_equal(t.success, [True, False])
    np.testing.assert_allclose(t.confidence, [0.9, 0.1])
    np.testing.assert_allclose(t.l2, [5.0, 1.0])
    np.testing.assert_allclose(t.linf, [4.0, 1.0])
    u = A.AttackResult("fgsm", targets=np.array([-1, -1]), labels=np.array([0, 0]), **common)
    np.testing.assert_array_equal(u.success, [True, False])
    np.testing.assert_allclose(u.confidence, [0.9, 0.8])
    assert u.success_rate == 0.5
