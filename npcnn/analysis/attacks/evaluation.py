"""Accuracy under attack over a whole test set, and the checks that keep it honest.

* :data:`ATTACKS`: every untargeted attack by name: FGSM, PGD (L-inf, L2; with restarts), APGD with the
  cross-entropy or the DLR loss (Croce & Hein 2020).
* :func:`run_attack`: one of them on one batch; :func:`worst_of_apgd`: APGD-CE, then APGD-DLR where it failed.
* :func:`robustness_curve`: accuracy for each ``eps`` over a whole test set, in batches.
* :func:`masking_warnings`: the signs of gradient masking (Athalye, Carlini & Wagner 2018) that a set of
  curves can show: accuracy rising with eps, a one-step attack beating the iterative one, an unbounded
  attack that does not reach every image.
"""
from dataclasses import replace

import numpy as np

from ...progress import progress_bar
from .checks import _check_eps, _check_steps
from .gradient_attacks import fgsm, pgd
from .result import RobustnessResult
from .strong import apgd, pgd_restarts

ATTACKS = {"fgsm": "FGSM (L-inf)", "pgd": "PGD (L-inf)", "pgd-l2": "PGD (L2)", "apgd-ce": "APGD-CE (L-inf)",
           "apgd-dlr": "APGD-DLR (L-inf)", "apgd-ce+dlr": "APGD-CE + APGD-DLR (L-inf, worst of the two per image)"}
ITERATIVE = ("pgd", "pgd-l2", "apgd-ce", "apgd-dlr", "apgd-ce+dlr")
#: steps when none are given: torchattacks' PGD default 10, its APGD default 100
DEFAULT_STEPS = {"pgd": 10, "pgd-l2": 10, "apgd-ce": 100, "apgd-dlr": 100, "apgd-ce+dlr": 100}


def _check_restarts(restarts):
    if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
        raise ValueError(f"--restarts must be a positive integer, got {restarts}")
    return int(restarts)


def run_attack(classifier, attack, images, labels, eps, *, steps=None, step_size=None, seed=0, random_start=True,
               targets=None, restarts=1):
    """One of :data:`ATTACKS` by name; ``steps=None`` is the attack's default (:data:`DEFAULT_STEPS`)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    restarts = _check_restarts(restarts)
    steps = DEFAULT_STEPS.get(attack) if steps is None else steps
    if attack == "fgsm":
        return fgsm(classifier, images, labels, eps, targets=targets)
    norm = "l2" if attack == "pgd-l2" else "linf"
    if attack == "apgd-ce+dlr":
        return worst_of_apgd(classifier, images, labels, eps, steps=steps, restarts=restarts, seed=seed)
    if attack.startswith("apgd"):
        return apgd(classifier, images, labels, eps, loss=attack.split("-")[1], steps=steps, n_restarts=restarts,
                    seed=seed)
    if restarts > 1:
        return pgd_restarts(classifier, images, labels, eps, restarts=restarts, steps=steps, step_size=step_size,
                            seed=seed, norm=norm)
    return pgd(classifier, images, labels, eps, norm=norm, step_size=step_size, steps=steps, targets=targets,
               random_start=random_start, seed=seed)


def worst_of_apgd(classifier, images, labels, eps, *, steps=100, restarts=1, seed=0):
    """APGD-CE, then APGD-DLR on the images it did not fool (the first two attacks of AutoAttack's standard
    version, Croce & Hein 2020): an image counts as robust only if both fail. Returns the CE result with
    the rows DLR fooled replaced by DLR's (their history too); ``attack`` "apgd-ce+dlr"."""
    ce = apgd(classifier, images, labels, eps, loss="ce", steps=steps, n_restarts=restarts, seed=seed)
    result = replace(ce, attack="apgd-ce+dlr", images=ce.images.copy(), perturbation=ce.perturbation.copy(),
                     history=ce.history.copy(), probabilities=ce.probabilities.copy(),
                     settings={**ce.settings, "loss": "ce+dlr"})
    left = np.flatnonzero(~ce.success)
    if len(left):
        e = np.asarray(eps)[left] if np.ndim(eps) else eps
        dlr = apgd(classifier, ce.start[left], ce.labels[left], e, loss="dlr", steps=steps, n_restarts=restarts,
                   seed=[seed, 1] if np.ndim(seed) == 0 else [*seed, 1])
        fooled = left[dlr.success]
        for name in ("images", "perturbation", "probabilities"):
            getattr(result, name)[fooled] = getattr(dlr, name)[dlr.success]
        result.history[:, fooled] = dlr.history[:, dlr.success]
    return result


def robustness_curve(classifier, images, labels, eps, *, attack="fgsm", steps=None, step_size=None, seed=0,
                     random_start=True, restarts=1, batch_size=500, progress=True, desc=None):
    """Accuracy under an untargeted attack for each ``eps`` (pixel units), over a whole test set in batches.

    ``images`` uint8 [N, H, W] or pixel-space floats; ``eps=0`` is the clean accuracy. PGD's step size
    defaults to ``2.5 * eps / steps`` for each eps; ``restarts`` random starts for PGD (an image counts as
    robust only if every restart fails) and APGD. The cross-entropy is averaged per batch, as torchattacks
    does (this only matters through PGD-L2's 1e-10).
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    eps = np.asarray([_check_eps(e) for e in np.atleast_1d(eps)], dtype=np.float64)
    steps = DEFAULT_STEPS.get(attack) if steps is None else steps
    if attack != "fgsm":
        _check_steps(steps)
    restarts = _check_restarts(restarts)
    labels = np.asarray(labels, dtype=np.int64)
    images = np.asarray(images)
    correct = np.zeros(len(eps), dtype=np.int64)
    starts = range(0, len(images), batch_size)
    bar = progress_bar(total=len(eps) * len(starts), desc=desc or f"robustness ({attack})", disable=not progress,
                       leave=False)
    for b, i in enumerate(starts):
        x = images[i:i + batch_size]
        dtype = classifier.dtype
        x = x.astype(dtype) / dtype.type(255) if x.dtype == np.uint8 else x.astype(dtype)
        y = labels[i:i + batch_size]
        for k, e in enumerate(eps):
            if e == 0:
                pred = classifier.predict(x)
            else:
                r = run_attack(classifier, attack, x, y, e, steps=steps, step_size=step_size, seed=[seed, b],
                               random_start=random_start, restarts=restarts)
                pred = r.predicted
            correct[k] += int(np.sum(pred == y))
            bar.update()
    bar.close()
    settings = {"steps": steps, "step_size": step_size, "seed": seed, "random_start": random_start,
                "restarts": restarts, "images": len(labels)}
    return RobustnessResult(attack=attack, eps=eps, accuracy=correct / max(len(labels), 1), settings=settings)


def masking_warnings(eps, accuracy, *, attack, one_step=None, unbounded=None, images=1):
    """The signs of gradient masking a robustness evaluation shows, as sentences (none: no sign seen).

    ``accuracy`` [E] under ``attack`` at ``eps`` (ascending); ``one_step`` [E] the accuracy under FGSM at the
    same eps (for an iterative attack); ``unbounded`` the accuracy under the attack at eps 1 (the whole pixel
    range: a working attack reaches every image). Differences of less than one image in ``images`` are noise.
    """
    eps, accuracy = np.asarray(eps, np.float64), np.asarray(accuracy, np.float64)
    slack = 1.0 / max(images, 1)
    out = []
    rises = np.flatnonzero(np.diff(accuracy) > slack)
    if len(rises):
        i = int(rises[0])
        out.append(f"accuracy rises from {accuracy[i]:.2%} at eps {eps[i]:g} to {accuracy[i + 1]:.2%} at eps "
                   f"{eps[i + 1]:g}: a larger budget should never help the net")
    if one_step is not None and attack in ITERATIVE:
        beats = np.flatnonzero(np.asarray(one_step, np.float64) < accuracy - slack)
        if len(beats):
            i = int(beats[0])
            out.append(f"FGSM (one step) leaves {one_step[i]:.2%} at eps {eps[i]:g}, less than {attack}'s "
                       f"{accuracy[i]:.2%}: an iterative attack should be at least as strong")
    if unbounded is not None and unbounded > slack:
        out.append(f"{attack} at eps 1 (any image reachable) still leaves {unbounded:.2%} correct: the attack is "
                   f"not reaching images it should")
    return out
