"""Adversarial training: every training batch replaced (in part) by adversarial examples of the net being trained.

Madry et al. 2018 train on PGD examples (``adversarial="pgd"``); Wong, Rice & Kolter 2020 ("Fast is better
than free") on one FGSM step from a random start, of size 1.25 eps (``adversarial="fgsm"``, the defaults
below). Both minimise ``E[max_{||d||_inf <= eps} loss(x + d, y)]``: the inner max by the attack, the outer min
by Adam.

Each batch: the attack runs on the net as it is now, through the library's own input gradients
(:func:`npcnn.analysis.attacks.pgd`, which equals torchattacks'), in pixel space within [0, 1] and the eps
box; the net is in eval mode for the attack (as TRADES' code does; BatchNorm then uses its running
statistics) and in train mode for the step. ``fraction`` of each batch (its first rows; the batches are
shuffled) is replaced by its adversarial version: 1.0 (Madry) trains on adversarial examples only, 0.5
mixes them half and half with clean ones (Goodfellow et al. 2015).

Catastrophic overfitting (FGSM training whose PGD accuracy collapses to 0 within an epoch while the clean
accuracy stays high; Wong et al. section 5) is watched: after every epoch, the PGD accuracy of a fixed
batch of training images (:class:`Watch`), and the weights of the epoch where it was best are kept
(``watch_best.npz``); the run ends with those, and says so when they are not the last epoch's.
"""
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..analysis import attacks as A
from ..classifier import Classifier
from ..io import load_npz, save_npz

METHODS = ("fgsm", "pgd")
#: adversarial training's batch size, peak lr and schedule unless given: Wong et al.'s MNIST recipe (batch
#: 100, Adam, cyclic lr 0 -> 5e-3 -> 0). FGSM training of the reference net, 10 epochs, eps 0.3, measured on
#: the 10,000 test images: with the report's constant lr 1e-3 and batch 64, 34.7 % under PGD-10; with this,
#: 99.05 % clean and 84.55 % under PGD-50 (step 0.01) with 10 restarts; PGD-5 training (steps of 0.1) with it:
#: 99.04 % clean, 92.61 % under PGD-50 x 10 and 90.68 % under APGD-CE + APGD-DLR (npcnn reproduce's robust net).
ADVERSARIAL_RECIPE = {"batch_size": 100, "lr": 5e-3, "lr_schedule": "cyclic"}
#: the watch: PGD on a fixed batch of training images after every epoch
WATCH = {"images": 512, "steps": 10}
#: a drop of the watch's PGD accuracy by this much from its best epoch is called catastrophic overfitting
COLLAPSE = 0.2


@dataclass
class AdversarialSettings:
    """How each training batch is attacked; eps and step sizes in pixel units."""

    method: str = "fgsm"
    eps: float = 0.3
    steps: Optional[int] = None        # default: 1 for fgsm, 10 for pgd
    step_size: Optional[float] = None  # default: 1.25 eps for fgsm (Wong et al.), 2.5 eps / steps for pgd
    random_start: bool = True
    fraction: float = 1.0

    def resolved(self):
        """The settings with their defaults filled in, checked; one-line errors naming the flag."""
        if self.method not in METHODS:
            raise ValueError(f"--adversarial must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not (np.isfinite(self.eps) and 0 < self.eps <= 1):
            raise ValueError(f"--eps must be in (0, 1] (pixel units), got {self.eps:g}")
        steps = self.steps if self.steps is not None else (1 if self.method == "fgsm" else 10)
        if self.method == "fgsm" and steps != 1:
            raise ValueError(f"--attack-steps: FGSM takes one step, got {steps}; use --adversarial pgd for more")
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"--attack-steps must be a positive integer, got {steps}")
        size = self.step_size if self.step_size is not None else (
            1.25 * self.eps if self.method == "fgsm" else 2.5 * self.eps / steps)
        if not (np.isfinite(size) and size > 0):
            raise ValueError(f"--attack-step-size must be > 0 (pixel units), got {size:g}")
        if not (np.isfinite(self.fraction) and 0 < self.fraction <= 1):
            raise ValueError(f"--adversarial-fraction must be in (0, 1], got {self.fraction:g}")
        return AdversarialSettings(self.method, float(self.eps), int(steps), float(size), bool(self.random_start),
                                   float(self.fraction))

    def describe(self):
        start = "from a random start in the eps box" if self.random_start else "from the clean image"
        return (f"{self.method.upper()} adversarial training: eps {self.eps:g}, {self.steps} step(s) of "
                f"{self.step_size:g} {start}, {self.fraction:.0%} of each batch adversarial")


class Perturb:
    """The ``perturb`` hook of :func:`npcnn.train.fit`: a normalised batch in, its adversarial version out."""

    def __init__(self, model, normalization, settings, seed):
        self.classifier = Classifier(model, normalization)   # the same layers: always the current weights
        self.normalization, self.settings, self.seed = normalization, settings, seed

    def attack(self, pixels, labels, seed):
        s = self.settings
        return A.pgd(self.classifier, pixels, labels, s.eps, steps=s.steps, step_size=s.step_size,
                     random_start=s.random_start, seed=seed, probabilities=False).images

    def __call__(self, x, y, epoch, step):
        k = int(round(self.settings.fraction * len(y)))
        if k == 0:
            return x
        pixels = np.clip(self.normalization.to_pixel(x[:k]), 0, 1)
        adv = self.attack(pixels, y[:k], seed=[self.seed, epoch, step])   # seeded by the step: resumable
        out = x.copy()
        out[:k] = self.classifier.normalize(adv)
        return out


class Watch:
    """After every epoch: the PGD accuracy of a fixed batch of training images; keeps the best epoch's
    weights in ``path`` (atomically), so a resumed run still knows them."""

    def __init__(self, model, normalization, settings, train_images, train_labels, seed, path):
        rng = np.random.default_rng([seed, 4321])
        idx = np.sort(rng.choice(len(train_labels), size=min(WATCH["images"], len(train_labels)), replace=False))
        self.images = train_images[idx].astype(np.float32) / np.float32(255)
        self.labels = np.asarray(train_labels[idx], dtype=np.int64)
        self.model, self.path = model, path
        self.classifier = Classifier(model, normalization)
        self.eps, self.seed = settings.eps, seed

    def robust_accuracy(self):
        r = A.pgd(self.classifier, self.images, self.labels, self.eps, steps=WATCH["steps"], seed=[self.seed, 99])
        return float(np.mean(r.predicted == self.labels))

    def best(self):
        """(epoch, robust accuracy) of the best epoch so far, or None."""
        if not os.path.isfile(self.path):
            return None
        d = load_npz(self.path)
        return int(d["epoch"]), float(d["robust_accuracy"])

    def __call__(self, epoch):
        acc = self.robust_accuracy()
        best = self.best()
        if best is None or acc > best[1]:
            arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            save_npz(self.path, {**arrays, "epoch": epoch + 1, "robust_accuracy": acc})
        return {"robust_accuracy": acc}

    def restore_best(self, history, log=print):
        """Load the best epoch's weights; a dict for metrics.json (and a line in the log when it is not the
        last epoch, and a warning when the watch collapsed)."""
        d = load_npz(self.path)
        epoch, best = int(d["epoch"]), float(d["robust_accuracy"])
        self.model.load_state_dict({k[6:]: v for k, v in d.items() if k.startswith("model.")})
        last = history.robust_accuracy[-1]
        collapsed = best - last >= COLLAPSE
        if log and collapsed:
            log(f"catastrophic overfitting: the PGD accuracy of {len(self.labels)} training images fell from "
                f"{best:.2%} (epoch {epoch}) to {last:.2%} (epoch {len(history)}); keeping epoch {epoch}'s weights")
        elif log and epoch != len(history):
            log(f"keeping epoch {epoch}'s weights: the best PGD accuracy of {len(self.labels)} training images "
                f"({best:.2%}; last epoch {last:.2%})")
        return {"best_epoch": epoch, "watch_robust_accuracy": best, "catastrophic_overfitting": bool(collapsed),
                "watch_images": len(self.labels), "watch_attack": f"PGD-{WATCH['steps']}, eps {self.eps:g}, "
                                                                 f"step 2.5 eps / {WATCH['steps']}, random start"}
