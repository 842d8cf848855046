"""How robust is the net, honestly measured: test accuracy against the attack's budget, for one or more runs.

:func:`robustness` runs an untargeted attack (FGSM, PGD with restarts, APGD-CE / APGD-DLR) over the test set
at each eps and checks its own result for the signs of gradient masking (Athalye et al. 2018): accuracy
rising with eps, FGSM beating the iterative attack, the attack at eps 1 (where any image is reachable) not
reaching every image. Each sign found is a warning printed with the curves and kept in the ``.npz``.
"""
import os
from dataclasses import dataclass

import numpy as np

from ..analysis import attacks as A
from ..plots import attacks as plots
from .adversarial import FOLDER
from .common import StageOutput, Writer, open_run

DEFAULT_EPS = {"linf": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3], "l2": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]}
#: test images for the unbounded check (eps 1)
UNBOUNDED_IMAGES = 500


@dataclass
class RobustnessOutput(StageOutput):
    attack: str = "fgsm"
    eps: np.ndarray = None        # attack sizes, pixel units [E]
    accuracy: dict = None         # variant name -> test accuracy at each eps [E]
    images: int = 0               # test images used
    label: str = ""               # the attack as the figure names it (steps, restarts)
    warnings: dict = None         # variant name -> the signs of gradient masking seen (sentences)

    def describe(self):
        lines = [f"{name}: " + ", ".join(f"eps {e:g}: {a:.2%}" for e, a in zip(self.eps, acc))
                 for name, acc in self.accuracy.items()]
        lines += [f"warning ({name}): {w}" for name, ws in (self.warnings or {}).items() for w in ws]
        return "\n".join(lines + [f"{self.label}, {self.images:,} test images; written to {self.folder}"])


def _variant_names(runs):
    names = ["adversarial" if r.config.get("adversarial") else "batchnorm" if r.config.get("batchnorm") else "plain"
             for r in runs]
    if len(set(names)) < len(names):
        names = [os.path.basename(os.path.normpath(r.path)) for r in runs]
    if len(set(names)) < len(names):
        names = [os.path.normpath(r.path) for r in runs]
    return names


def attack_label(attack, steps, restarts):
    """``PGD (L-inf), 10 steps, 5 restarts``: the attack as a reader needs it to judge the number."""
    steps = A.DEFAULT_STEPS.get(attack) if steps is None else steps
    return (A.ATTACKS[attack] + (f", {steps} steps" if attack != "fgsm" else "")
            + (f", {restarts} restarts" if restarts > 1 else ""))


def robustness(run, *, attack="fgsm", eps=None, variants=(), steps=None, step_size=None, seed=0, random_start=True,
               restarts=1, limit=None, check=True, progress=True):
    """Test accuracy under an untargeted ``attack`` (one of :data:`npcnn.analysis.attacks.ATTACKS`) at each
    ``eps`` (pixel units; default 0 .. 0.3, or 0 .. 3 for pgd-l2), for this run and the ``variants`` (more runs,
    or their paths, on the same plot). ``steps`` default to the attack's (10 PGD, 100 APGD); PGD's step size
    to 2.5 * eps / steps, from a seeded random start unless ``random_start=False``; ``restarts`` random starts
    (an image counts as robust only if every restart fails). ``check``: look for the signs of gradient masking
    (for an iterative attack, FGSM at the same eps; the attack at eps 1 on the first 500 images).
    Returns a :class:`RobustnessOutput`."""
    if attack not in A.ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(A.ATTACKS)}")
    if steps is not None:
        A._check_steps(steps)
    restarts = A.evaluation._check_restarts(restarts)
    norm = "l2" if attack == "pgd-l2" else "linf"
    eps = np.asarray([A._check_eps(e) for e in (DEFAULT_EPS[norm] if eps is None else eps)], dtype=np.float64)
    if eps.size == 0:
        raise ValueError("--eps takes one or more values >= 0; got none")
    if norm == "linf" and eps.max() > 1:
        raise ValueError(f"--eps must be within the pixel range [0, 1] for an L-inf attack, got {eps.max():g}")
    if step_size is not None and not (np.isfinite(step_size) and step_size > 0):
        raise ValueError(f"--step-size must be positive, got {step_size:g}")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    run = open_run(run)
    runs = [run] + [open_run(v) for v in variants or []]
    datasets = {r.config.get("dataset") for r in runs}
    if len(datasets) > 1:
        raise ValueError(f"--variants: the runs were trained on different data sets ({', '.join(sorted(datasets))})")
    images, labels = run.test_data()
    if limit:
        images, labels = images[:limit], labels[:limit]
    eps = np.sort(eps)
    names = _variant_names(runs)
    settings = dict(attack=attack, steps=steps, step_size=step_size, seed=seed, random_start=random_start,
                    restarts=restarts, progress=progress)
    acc, warnings, one_step, unbounded = [], {}, [], []
    for name, r in zip(names, runs):
        acc.append(A.robustness_curve(r.classifier, images, labels, eps, desc=f"{name}: {attack}",
                                      **settings).accuracy)
        if not check:
            continue
        fgsm = (A.robustness_curve(r.classifier, images, labels, eps, attack="fgsm", progress=progress,
                                   desc=f"{name}: fgsm (check)").accuracy if attack in A.ITERATIVE else None)
        wide = (A.robustness_curve(r.classifier, images[:UNBOUNDED_IMAGES], labels[:UNBOUNDED_IMAGES], [1.0],
                                   desc=f"{name}: eps 1 (check)", **settings).accuracy[0]
                if norm == "linf" and attack in A.ITERATIVE else None)
        one_step.append(fgsm if fgsm is not None else np.full(len(eps), np.nan))
        unbounded.append(np.nan if wide is None else wide)
        warnings[name] = A.masking_warnings(eps, acc[-1], attack=attack, one_step=fgsm, unbounded=wide,
                                            images=len(labels))
    label = attack_label(attack, steps, restarts)
    out = Writer(run.file(FOLDER))
    out.figure(plots.robustness(eps, dict(zip(names, acc)), label,
                                title=f"test accuracy under {label} ({len(labels):,} test images)"),
               "robustness.png")
    out.npz("robustness.npz", {
        "attack": attack, "label": label, "eps": eps, "accuracy": np.asarray(acc), "variants": np.asarray(names),
        "variant_dirs": np.asarray([r.path for r in runs]), "images": len(labels),
        "steps": -1 if steps is None else steps, "step_size": np.nan if step_size is None else step_size,
        "random_start": random_start, "seed": seed, "restarts": restarts, "checked": check,
        "fgsm_accuracy": np.asarray(one_step) if check else np.empty((0, len(eps))),
        "unbounded_accuracy": np.asarray(unbounded, dtype=np.float64),
        "warnings": np.asarray([f"{n}: {w}" for n, ws in warnings.items() for w in ws], dtype=str)})
    return RobustnessOutput(folder=out.final, files=out.files, attack=attack, eps=eps, accuracy=dict(zip(names, acc)),
                            images=len(labels), label=label, warnings=warnings)
