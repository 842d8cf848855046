"""Adversarial training (npcnn.experiments.adversarial_training; ``npcnn train --adversarial``).

* Two training steps on PGD examples equal the same two steps in PyTorch (torchattacks.PGD for the
  attack, torch.optim.Adam for the step) in float64: the attack's input gradient and the step's parameter
  gradients both come from npcnn's own backward passes. Tie-aware: every image an attack passes through
  is away from the net's kinks, as in test_attacks.
* ``fraction`` replaces only the first rows of a batch; the attack is seeded by (seed, epoch, step).
* The watch keeps the best epoch's weights: the run's model.npz gives exactly the recorded best PGD
  accuracy on the watch batch; a collapse of it is called catastrophic overfitting.
* On 5,000 MNIST digits, one epoch: FGSM training makes the net more robust to PGD than plain training.
* Bad settings are one line naming the flag, and write nothing.
"""
import json
import os

import numpy as np
import pytest
import torch
import torchattacks
from test_attacks import DATA, _PixelNet, assert_tie_free, lifted
from test_features import make_classifier
from torch_oracle import to_torch

from npcnn.analysis import attacks as A
from npcnn.classifier import load_classifier
from npcnn.cli import main
from npcnn.data import load_mnist
from npcnn.experiments import TrainConfig, train_run
from npcnn.experiments.adversarial_training import ADVERSARIAL_RECIPE, AdversarialSettings, Perturb, Watch
from npcnn.experiments.training import with_recipe
from npcnn.nn import NLLLoss
from npcnn.optim import Adam
from npcnn.train import History


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist("test", root=DATA, download=False)
    return lifted(images[:6] / 255.0, seed=5), labels[:6].astype(np.int64)


def test_two_pgd_training_steps_equal_pytorch(digits):
    x, y = digits
    clf = make_classifier()                     # float64, fixed random weights
    model, norm = clf.model, clf.normalization
    settings = AdversarialSettings("pgd", eps=0.1, steps=3, step_size=0.03, random_start=False).resolved()
    twin = to_torch(model)                      # the same weights, float64, LogSoftmax at the end
    pixel_twin = _PixelNet(torch.nn.Sequential(*list(twin)[:-1]), norm)
    opt_t = torch.optim.Adam(twin.parameters(), lr=1e-3)
    perturb, opt, loss = Perturb(model, norm, settings, seed=0), Adam(model.parameters(), lr=1e-3), NLLLoss()
    for step in range(2):
        # npcnn: the hook, then one step in train mode (as npcnn.train.fit does)
        z_adv = perturb(clf.normalize(x[:, None]), y, 0, step)
        adv = norm.to_pixel(z_adv)[:, 0]
        model.train()
        out = model.forward(z_adv)
        loss.forward(out, y)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
        # PyTorch: torchattacks' PGD on the twin (eval mode), then one Adam step on the adversarial batch
        pixel_twin.eval()
        theirs = torchattacks.PGD(pixel_twin, eps=0.1, alpha=0.03, steps=3, random_start=False)(
            torch.tensor(x[:, None]), torch.tensor(y)).numpy()[:, 0]
        assert_tie_free(make_twin_classifier(twin, norm), [x, adv, theirs])
        np.testing.assert_allclose(adv, theirs, rtol=0, atol=1e-10)
        twin.train()
        opt_t.zero_grad()
        torch.nn.functional.nll_loss(twin((torch.tensor(theirs[:, None]) - norm.mean) / norm.std),
                                     torch.tensor(y)).backward()
        opt_t.step()
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=0, atol=1e-10, err_msg=f"{name}, step {step}")


def make_twin_classifier(twin, norm):
    """A classifier with the twin's current weights (for the tie check of the next step's images)."""
    clf = make_classifier()
    for p, q in zip(clf.model.parameters(), twin.parameters()):
        p.data[...] = q.detach().numpy()
    return clf


def test_fraction_replaces_the_first_rows_and_the_attack_is_seeded_by_the_step(digits):
    x, y = digits
    clf = make_classifier()
    z = clf.normalize(x[:, None])
    settings = AdversarialSettings("fgsm", eps=0.2, fraction=0.5).resolved()
    assert (settings.steps, settings.step_size) == (1, 0.25)             # Wong et al.: one step of 1.25 eps
    perturb = Perturb(clf.model, clf.normalization, settings, seed=3)
    out = perturb(z, y, 2, 7)
    np.testing.assert_array_equal(out[3:], z[3:])                        # half the batch stays clean
    expected = A.pgd(clf, np.clip(clf.normalization.to_pixel(z[:3]), 0, 1), y[:3], 0.2, steps=1, step_size=0.25,
                     seed=[3, 2, 7]).images
    np.testing.assert_allclose(clf.normalization.to_pixel(out[:3]), expected, atol=1e-12)
    assert np.abs(clf.normalization.to_pixel(out[:3]) - x[:3, None]).max() <= 0.2 + 1e-9
    assert not np.allclose(perturb(z, y, 2, 8)[:3], out[:3])             # another step, another random start


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Plain and FGSM-trained nets: one epoch on 5,000 digits each."""
    runs = {}
    for name, adversarial in (("plain", None), ("fgsm", "fgsm")):
        out = str(tmp_path_factory.mktemp("adv") / name)
        metrics = train_run(TrainConfig(limit=5000, epochs=1, data_dir=DATA, adversarial=adversarial), out,
                            progress=False, log=lambda *a: None)
        runs[name] = (out, metrics)
    return runs


def test_fgsm_training_makes_the_net_more_robust(trained):
    images, labels = load_mnist("test", root=DATA, download=False)
    x, y = images[:500] / np.float32(255), labels[:500].astype(np.int64)
    acc = {}
    for name, (out, metrics) in trained.items():
        clf = load_classifier(out)
        acc[name] = float(np.mean(A.pgd(clf, x, y, 0.2, steps=10).predicted == y))
    # measured: plain 11.0 %, FGSM-trained 48.4 % (PGD-10, eps 0.2, 500 test digits)
    assert acc["fgsm"] > acc["plain"] + 0.15, acc


def test_the_run_keeps_the_watchs_best_epoch(trained):
    out, metrics = trained["fgsm"]
    a = metrics["adversarial"]
    history = json.load(open(os.path.join(out, "history.json")))
    assert len(history["robust_accuracy"]) == 1 and a["best_epoch"] == 1
    assert a["watch_robust_accuracy"] == history["robust_accuracy"][0]
    assert not os.path.exists(os.path.join(out, "watch_best.npz"))      # its weights are model.npz now
    # the saved model gives the recorded accuracy on the watch batch again
    clf = load_classifier(out)
    images, labels = load_mnist("train", root=DATA, download=False)
    watch = Watch(clf.model, clf.normalization, AdversarialSettings().resolved(), images[:5000], labels[:5000], 0,
                  os.path.join(out, "unused.npz"))
    assert watch.robust_accuracy() == a["watch_robust_accuracy"]
    assert "robust_accuracy" not in json.load(open(os.path.join(trained["plain"][0], "history.json")))


def test_a_collapse_of_the_watch_is_called_catastrophic_overfitting(tmp_path):
    clf = make_classifier()
    images = (np.random.default_rng(0).random((20, 28, 28)) * 255).astype(np.uint8)
    watch = Watch(clf.model, clf.normalization, AdversarialSettings().resolved(), images, np.arange(20) % 10, 0,
                  str(tmp_path / "best.npz"))
    before = {k: v.copy() for k, v in clf.model.state_dict().items()}
    watch.robust_accuracy = lambda: 0.8
    watch(0)                                                            # epoch 1: 80 %, saved
    for p in clf.model.parameters():
        p.data *= 0.5
    watch.robust_accuracy = lambda: 0.1
    watch(1)                                                            # epoch 2: 10 %, not saved
    history = History(robust_accuracy=[0.8, 0.1])
    history.train_loss = [1.0, 1.0]
    lines = []
    info = watch.restore_best(history, log=lines.append)
    assert info["best_epoch"] == 1 and info["catastrophic_overfitting"] is True
    assert lines == ["catastrophic overfitting: the PGD accuracy of 20 training images fell from 80.00% (epoch 1) "
                     "to 10.00% (epoch 2); keeping epoch 1's weights"]
    for k, v in clf.model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("argv, message", [
    (["--eps", "0.1"], "--eps applies only with --adversarial fgsm or pgd"),
    (["--adversarial", "pgd", "--eps", "0"], "--eps must be in (0, 1] (pixel units), got 0"),
    (["--adversarial", "pgd", "--eps", "1.5"], "--eps must be in (0, 1] (pixel units), got 1.5"),
    (["--adversarial", "fgsm", "--attack-steps", "3"], "--attack-steps: FGSM takes one step, got 3"),
    (["--adversarial", "pgd", "--attack-steps", "0"], "--attack-steps must be a positive integer, got 0"),
    (["--adversarial", "pgd", "--attack-step-size", "-1"], "--attack-step-size must be > 0"),
    (["--adversarial", "pgd", "--adversarial-fraction", "0"], "--adversarial-fraction must be in (0, 1], got 0"),
    (["--no-random-start"], "--no-random-start applies only with --adversarial fgsm or pgd"),
])
def test_bad_adversarial_settings_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--data-dir", DATA, "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_adversarial_training_takes_wong_et_al_s_recipe_unless_told_otherwise():
    unset = dict(lr=None, batch_size=None, lr_schedule=None)     # what the CLI passes for flags not given
    assert with_recipe({**unset, "adversarial": "fgsm"}) == {**ADVERSARIAL_RECIPE, "adversarial": "fgsm"}
    assert ADVERSARIAL_RECIPE == {"batch_size": 100, "lr": 5e-3, "lr_schedule": "cyclic"}
    given = with_recipe({**unset, "adversarial": "pgd", "lr": 1e-3, "lr_schedule": "constant"})
    assert given == {"adversarial": "pgd", "lr": 1e-3, "lr_schedule": "constant", "batch_size": 100}
    assert with_recipe({**unset, "adversarial": None, "epochs": 3}) == {"adversarial": None, "epochs": 3}
    assert TrainConfig(**with_recipe(unset)) == TrainConfig()          # plain training: the report's settings
