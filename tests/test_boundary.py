"""Distance to the decision boundary (npcnn.analysis.attacks.boundary) and its stage (npcnn.experiments.boundary).

* DeepFool equals ``torchattacks.DeepFool`` (3.5.1) in float64 on fixed random weights (test_attacks' ``clf64``):
  final images (< 1e-8), each image's step count, and torchattacks' target labels; tie-aware (every image a
  jacobian is taken at is TIE_FREE from the kinks, and no decision, top class or nearest boundary, is a near tie).
* The smallest L-inf budget: its PGD is npcnn's ``pgd`` (itself equal to torchattacks.PGD: test_attacks) bit for
  bit when the budgets are equal; PGD at the returned eps flips every digit and at ``eps_below`` (within tol)
  none; larger budgets flip too; ``low`` / ``high`` bound the search.
* On the session's trained net (~98 %): plausible distances, DeepFool ends on or across the boundary.
* The stage writes its files (the .npz last) and nothing on a bad setting; bad inputs are one-line errors.
"""
import os

import numpy as np
import pytest
import torch
import torchattacks
from test_attacks import DATA, _close, _PixelNet, assert_tie_free, lifted
from test_attacks import one_torch_thread, run, samples, test_set  # noqa: F401 (fixtures, shared with test_attacks)
from test_features import make_classifier
from torch_oracle import to_torch

from npcnn.analysis import attacks as A
from npcnn.analysis.attacks import boundary as B
from npcnn.classifier import Classifier
from npcnn.data import Normalization, load_mnist
from npcnn.models import seed_cnn

#: decisions (the top class, the nearest linearised boundary) closer than this would test rounding
DECISION_GAP = 1e-9


@pytest.fixture(scope="session")
def clf64():
    """test_attacks' float64 net with fixed random weights, and its torch twin on [0, 1] inputs."""
    clf = make_classifier()
    body = torch.nn.Sequential(*list(to_torch(clf.model).eval())[:-1])
    return clf, _PixelNet(body, clf.normalization).eval()


# --------------------------------------------------------------------------- DeepFool against torchattacks

class _RecordingDeepFool(torchattacks.DeepFool):
    """torchattacks.DeepFool, unchanged, recording per call: the image (when it steps), the gap between the two
    largest logits, the gap between the two nearest linearised boundaries, and each image's step count.
    ``label`` is ``labels[idx]``, a view into the attack's labels: its storage offset is the image's index."""

    def forward_return_target_labels(self, images, labels):
        self.taken, self.seen, self.gaps = np.zeros(len(images), np.int64), [], []
        adv, self.target_labels = super().forward_return_target_labels(images, labels)
        return adv, self.target_labels

    def _forward_indiv(self, image, label):
        with torch.no_grad():
            fs = self.get_logits(image)[0]
        top = torch.topk(fs, 2).values
        self.gaps.append(float(top[0] - top[1]))
        stop, pre, adv = super()._forward_indiv(image, label)
        if not stop:
            y = int(label)
            self.taken[label.storage_offset()] += 1
            self.seen.append(image.detach().numpy()[:, 0].copy())
            jac = torch.autograd.functional.jacobian(lambda t: self.get_logits(t)[0], image.detach())
            w = jac.reshape(len(fs), -1)
            value = torch.abs(fs - fs[y]) / torch.norm(w - w[y], dim=1)
            nearest = torch.sort(torch.cat([value[:y], value[y + 1:]])).values
            self.gaps.append(float(nearest[1] - nearest[0]))
        return stop, pre, adv


@pytest.fixture(scope="module")
def clf64_digits(clf64):
    """Lifted test digits for the random net: the first one it predicts as each class it predicts (0, 1, 3, 6, 9
    here), labelled with that prediction (DeepFool attacks them), and two labelled with a class the net does not
    predict (DeepFool stops at once)."""
    clf, _ = clf64
    images, labels = load_mnist("test", root=DATA, download=False)
    x = lifted(images[:300] / 255.0)
    pred = clf.predict(x)
    first = [int(np.flatnonzero(pred == c)[0]) for c in np.unique(pred)]
    assert len(first) >= 4, np.unique(pred)
    wrong = [i for i in range(300) if labels[i] != pred[i]][:2]
    idx = first + wrong
    return x[idx], np.concatenate([pred[first], labels[wrong]]).astype(np.int64)


@pytest.mark.parametrize("steps, overshoot", [(50, 0.02), (2, 0.02), (50, 0.5)])
def test_deepfool_matches_torchattacks(clf64, clf64_digits, steps, overshoot):
    clf, model = clf64
    x, y = clf64_digits
    ours = B.deepfool(clf, x, y, steps=steps, overshoot=overshoot)
    attack = _RecordingDeepFool(model, steps=steps, overshoot=overshoot)
    adv = attack(torch.tensor(x[:, None]), torch.tensor(y)).numpy()[:, 0]
    assert adv.dtype == np.float64
    assert_tie_free(clf, [x, adv] + attack.seen)
    assert min(attack.gaps) > DECISION_GAP, "a decision of DeepFool is a near tie: the comparison would test rounding"
    _close(ours.images, adv, f"DeepFool images, steps {steps}, overshoot {overshoot}")
    np.testing.assert_array_equal(ours.settings["steps_taken"], attack.taken)
    np.testing.assert_array_equal(ours.settings["boundary_class"], attack.target_labels.numpy())
    assert ours.attack == "deepfool" and np.all(ours.targets == -1)
    assert ours.history.shape == (steps, len(y))
    np.testing.assert_array_equal(ours.probabilities, clf.predict_proba(ours.images))
    taken = ours.settings["steps_taken"]
    assert np.all(taken[-2:] == 0) and np.all(ours.l2[-2:] == 0)   # misclassified from the start: untouched
    assert np.all(taken[:-2] >= 1)
    if steps == 50:     # these digits all cross, in a few steps
        assert np.all(ours.success) and np.all(taken < 10), taken
    else:
        assert taken.max() == steps


# --------------------------------------------------------------------------- the smallest L-inf budget

def pgd_linf(clf, x, y, eps, steps=20, seed=0):
    """The bisection's PGD: one budget per image, 2.5 * eps / steps, random start."""
    return A.pgd(clf, x, y, np.broadcast_to(eps, (len(x),)), steps=steps, seed=seed).images


def test_pgd_with_one_budget_per_image_is_pgd_when_the_budgets_are_equal(run, samples):
    x, y = samples
    clf = run.classifier
    for norm, eps in (("linf", 0.1), ("l2", 1.5)):
        ours = A.pgd(clf, x, y, np.full(len(x), eps), norm=norm, steps=5, seed=3)
        theirs = A.pgd(clf, x, y, eps, norm=norm, steps=5, seed=3)
        np.testing.assert_array_equal(ours.images, theirs.images)
    np.testing.assert_array_equal(pgd_linf(clf, x, y, 0.0, steps=3), x)   # eps 0: the clean digits
    # a budget per image: each image's result is the one it gets with its budget for the whole batch
    budgets = np.linspace(0.02, 0.2, len(x))
    mixed = pgd_linf(clf, x, y, budgets, steps=5, seed=3)
    for i in (0, 4, 9):
        alone = A.pgd(clf, x, y, budgets[i], steps=5, seed=3).images
        np.testing.assert_array_equal(mixed[i], alone[i])


@pytest.fixture(scope="session")
def minimal(run, samples):
    x, y = samples
    return B.minimal_linf(run.classifier, x, y)


@pytest.fixture(scope="session")
def fool(run, samples):
    x, y = samples
    return B.deepfool(run.classifier, x, y)


def test_minimal_linf_is_a_transition_of_its_pgd(run, samples, minimal):
    x, y = samples
    clf, m = run.classifier, minimal
    s = m.settings
    assert (s["low"], s["high"], s["tol"], s["pgd_steps"], s["seed"]) == (0.0, 1.0, 1e-3, 20, 0)
    assert np.all(np.isfinite(m.eps)) and np.all(m.success), m.eps
    assert np.all(m.eps - m.eps_below <= s["tol"]) and np.all(m.eps > m.eps_below) and np.all(m.eps_below >= 0)
    at = pgd_linf(clf, x, y, m.eps)
    np.testing.assert_array_equal(at, m.images)            # the image returned is PGD's at eps
    assert np.all(clf.predict(at) != y)
    assert np.all(clf.predict(pgd_linf(clf, x, y, m.eps_below)) == y)
    assert np.all(m.linf <= m.eps + 1e-6) and m.images.min() >= 0 and m.images.max() <= 1
    np.testing.assert_array_equal(m.probabilities, clf.predict_proba(m.images))


def test_minimal_linf_larger_budgets_flip_and_the_range_bounds_the_search(run, samples, minimal):
    x, y = samples
    clf, m = run.classifier, minimal
    for factor in (1.5, 2.0, 3.0):
        assert np.all(clf.predict(pgd_linf(clf, x, y, np.minimum(factor * m.eps, 1.0))) != y), factor
    lo, hi = np.sort(m.eps)[[2, 7]]            # a range holding some digits' budgets, not all
    r = B.minimal_linf(clf, x, y, low=lo, high=hi, tol=1e-3)
    inside = (m.eps > lo) & (m.eps <= hi)
    assert np.all(np.isinf(r.eps[m.eps > hi])) and np.all(r.eps_below[m.eps > hi] == hi)
    assert np.all(r.eps[m.eps <= lo] == lo) and np.all(np.isnan(r.eps_below[m.eps <= lo]))
    assert np.all((r.eps[inside] > lo) & (r.eps[inside] <= hi)), (r.eps, m.eps)
    assert np.all(~r.success[m.eps > hi]) and np.all(r.success[m.eps <= hi])
    # a digit the net already gets wrong needs no budget
    wrong = (y + 1) % 10
    r = B.minimal_linf(clf, x[:2], wrong[:2], tol=0.1)
    np.testing.assert_array_equal(r.eps, [0.0, 0.0])
    np.testing.assert_array_equal(r.images, x[:2])


def test_distances_on_the_trained_net_are_plausible(run, minimal, fool):
    # measured on this 1-epoch net: mean smallest L-inf 0.133 (0.057 .. 0.194), mean DeepFool L2 1.89 (0.69 .. 3.05)
    m, d = minimal, fool
    assert 0.03 < m.eps.mean() < 0.3, m.eps
    assert 0.8 < d.l2.mean() < 3.5, d.l2
    # DeepFool's perturbation (L-inf 0.16 .. 0.87 here) reaches the boundary: PGD with that budget does too
    assert np.all(m.eps <= d.linf), (m.eps, d.linf)
    # DeepFool ends across the boundary or on it: torchattacks' clipped steps can converge onto it without
    # crossing (8 of 10 here in float32, 6 of 10 in float64; without the clipping all 10 cross in 1-3 steps)
    logits = run.classifier.logits(d.images).astype(np.float64)
    rows = np.arange(len(d.labels))
    own = logits[rows, d.labels]
    logits[rows, d.labels] = -np.inf
    margin = own - logits.max(axis=1)
    assert np.all(d.success | (np.abs(margin) < 1e-3)), margin
    assert np.all(d.settings["steps_taken"] >= 1) and d.images.min() >= 0 and d.images.max() <= 1


# --------------------------------------------------------------------------- the stage

def test_boundary_stage_writes_its_files(run):
    from npcnn import io
    from npcnn.experiments.boundary import boundary

    r = boundary(run, progress=False)
    names = [os.path.basename(f) for f in r.files]
    assert names == ["boundary.png", "boundary_distances.png", "boundary.npz"]
    assert all(os.path.isfile(f) for f in r.files) and r.folder == run.file("attacks")
    z = io.load_npz(r.files[-1])
    for key in ("images", "labels", "deepfool", "deepfool_predicted", "deepfool_l2", "deepfool_linf", "deepfool_steps",
                "pgd", "pgd_predicted", "pgd_eps", "pgd_eps_below", "pgd_l2", "pgd_linf", "steps", "overshoot", "tol",
                "pgd_steps", "seed"):
        assert key in z, key
    np.testing.assert_array_equal(z["labels"], np.arange(10))
    assert z["deepfool"].shape == z["pgd"].shape == z["images"].shape == (10, 28, 28)
    np.testing.assert_allclose(z["deepfool_l2"], r.deepfool.l2)
    np.testing.assert_array_equal(z["pgd_eps"], r.minimal.eps)
    assert float(z["mean_deepfool_l2"]) == pytest.approx(r.deepfool.l2.mean())
    lines = r.describe().splitlines()
    assert len(lines) == 11 and lines[0].startswith("digit 0: DeepFool L2") and "mean DeepFool L2" in lines[-1]


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"overshoot": -0.1}, "overshoot must be >= 0"),
    ({"tol": 0}, "tol must be > 0"),
    ({"pgd_steps": 1.5}, "pgd_steps must be a positive integer"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_boundary_stage_bad_settings_write_nothing(run, settings, message):
    from npcnn.experiments.boundary import boundary

    folder = run.file("attacks")
    before = (sorted(os.listdir(run.path)), sorted(os.listdir(folder)) if os.path.isdir(folder) else None)
    with pytest.raises(ValueError, match=message):
        boundary(run, progress=False, **settings)
    assert (sorted(os.listdir(run.path)), sorted(os.listdir(folder)) if os.path.isdir(folder) else None) == before


# --------------------------------------------------------------------------- errors

def test_nan_stops_both_searches_and_names_the_step():
    clf = Classifier(seed_cnn(rng=0), Normalization(0.1307, 0.3081))
    x = np.full((1, 28, 28), 0.5, np.float32)
    x[0, 5, 5] = np.nan
    with pytest.raises(A.NonFiniteAttackError, match="deepfool: .* at step 1 of 3"):
        B.deepfool(clf, x, [0], steps=3)
    with pytest.raises(A.NonFiniteAttackError, match="pgd: .* at step 1 of 4"):
        B.minimal_linf(clf, x, [0], pgd_steps=4)


@pytest.mark.parametrize("call, message", [
    (lambda c, x: B.deepfool(c, x, [0], steps=0), "steps must be a positive integer, got 0"),
    (lambda c, x: B.deepfool(c, x, [0], steps=2.5), "steps must be a positive integer"),
    (lambda c, x: B.deepfool(c, x, [0], overshoot=-1), "overshoot must be >= 0, got -1"),
    (lambda c, x: B.deepfool(c, x, [10]), r"labels must be the true classes 0\.\.9, got 10"),
    (lambda c, x: B.deepfool(c, x, [0, 1]), "labels: expected 1, got 2"),
    (lambda c, x: B.minimal_linf(c, x, [0], low=-0.1), r"0 <= low < high <= 1 \(pixel units\), got low=-0.1"),
    (lambda c, x: B.minimal_linf(c, x, [0], high=1.5), "high=1.5"),
    (lambda c, x: B.minimal_linf(c, x, [0], low=0.5, high=0.5), "low=0.5, high=0.5"),
    (lambda c, x: B.minimal_linf(c, x, [0], tol=0), "tol must be > 0"),
    (lambda c, x: B.minimal_linf(c, x, [0], tol=float("nan")), "tol must be > 0"),
    (lambda c, x: B.minimal_linf(c, x, [0], pgd_steps=0), "pgd_steps must be a positive integer, got 0"),
    (lambda c, x: B.minimal_linf(c, x, [-1]), "labels must be the true classes"),
    (lambda c, x: A.pgd(c, x, [0], [-0.1]), "eps must be >= 0, got -0.1"),
])
def test_bad_arguments_are_one_line_value_errors(call, message):
    clf = Classifier(seed_cnn(rng=0), Normalization(0.1307, 0.3081))
    with pytest.raises(ValueError, match=message) as e:
        call(clf, np.zeros((1, 28, 28), np.float32))
    assert "\n" not in str(e.value)
