"""The report's "Defending the net": the standard net and the adversarially trained one, side by side.

:func:`defense` measures both nets the same way, on the same test images:

* the table, at one budget (L-inf ``eps`` 0.3 by default, the anchors' budget): clean accuracy, FGSM, PGD with
  ``restarts`` random starts (50 steps of 0.01, 10 restarts: the evaluation of Wong et al. 2020 and Madry et
  al.'s mnist_challenge), and APGD-CE then APGD-DLR on what CE left (an image is robust only if both fail:
  the first two attacks of AutoAttack), with the training time each net took (its ``metrics.json``);
* the curves: accuracy against eps for FGSM, PGD and APGD-CE + DLR (one start each), on ``curve_limit``
  images;
* the checks for gradient masking (:func:`npcnn.analysis.attacks.masking_warnings`): a curve that rises, FGSM
  beating PGD, PGD at eps 1 not reaching every image.

``run`` is the robust net's run folder (``npcnn train --adversarial ...``) and the results go to
``RUN_DIR/defense/``; ``against`` is the standard net's. The robust net's class images, saliency maps and
targeted attacks come from the usual stages run on its folder; the report puts them beside the standard net's.
"""
import os
from dataclasses import dataclass

import numpy as np

from ..analysis import attacks as A
from ..io import read_json
from ..plots import defense as plots
from .common import StageOutput, Writer, open_run

#: the table's attacks: name -> (attack, settings); steps and restarts as the anchors of the issue
TABLE = {"FGSM": ("fgsm", {}),
         "PGD-50, 10 restarts": ("pgd", {"steps": 50, "step_size": 0.01, "restarts": 10}),
         "APGD-CE + APGD-DLR": ("apgd-ce+dlr", {"steps": 100})}
CURVES = {"FGSM": ("fgsm", {}), "PGD-50": ("pgd", {"steps": 50, "step_size": 0.01}),
          "APGD-CE + APGD-DLR": ("apgd-ce+dlr", {"steps": 100})}
CURVE_EPS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
#: test images for the eps-1 check
UNBOUNDED_IMAGES = 200


@dataclass
class DefenseOutput(StageOutput):
    nets: list = None        # ["standard", "robust"]
    eps: float = 0.3
    table: dict = None       # net -> {"clean": acc, attack name: acc, ...}
    seconds: dict = None     # net -> training seconds
    warnings: list = None    # sentences: the signs of gradient masking seen
    images: int = 0

    def describe(self):
        lines = [f"{net}: clean {t['clean']:.2%}, " + ", ".join(f"{k} {v:.2%}" for k, v in t.items() if k != "clean")
                 + f" at eps {self.eps:g}; trained in {self.seconds[net]:.0f} s" for net, t in self.table.items()]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines + [f"{self.images:,} test images; written to {self.folder}"])


def _check(eps, limit, curve_limit, seed):
    eps = A._check_eps(eps)
    if not 0 < eps <= 1:
        raise ValueError(f"--eps must be in (0, 1] (pixel units), got {eps:g}")
    for name, value in (("limit", limit), ("curve-limit", curve_limit)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value <= 0):
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"--seed must be an integer, got {seed}")
    return float(eps)


def _pixels(images):
    return images.astype(np.float32) / np.float32(255)


def defense(run, *, against, eps=0.3, limit=None, curve_limit=1000, seed=0, progress=True):
    """Measure the robust net ``run`` and the standard net ``against`` as the module says, on the first
    ``limit`` test images (None: all) and the curves on the first ``curve_limit``. Returns a
    :class:`DefenseOutput`; writes ``defense.npz`` and ``defense_curves.png`` to ``RUN_DIR/defense/``."""
    eps = _check(eps, limit, curve_limit, seed)
    robust, standard = open_run(run), open_run(against)
    if not robust.config.get("adversarial"):
        raise ValueError(f"{robust.path}: not an adversarially trained run; train one with "
                         f"`npcnn train --adversarial fgsm --out {robust.path}`")
    if robust.config.get("dataset") != standard.config.get("dataset"):
        raise ValueError(f"--against: {standard.path} was trained on {standard.config.get('dataset')}, "
                         f"{robust.path} on {robust.config.get('dataset')}")
    images, labels = robust.test_data()
    labels = labels.astype(np.int64)
    x, y = images[:limit], labels[:limit]
    nets = {"standard": standard, "robust": robust}
    table, curves, seconds, warnings = {}, {}, {}, []
    for net, r in nets.items():
        clf = r.classifier
        row = {"clean": float(np.mean(clf.predict(_pixels(x)) == y))}
        for name, (attack, settings) in TABLE.items():
            row[name] = float(A.robustness_curve(clf, x, y, [eps], attack=attack, seed=seed, progress=progress,
                                                 desc=f"{net}: {name}", **settings).accuracy[0])
        table[net] = row
        cx, cy = x[:curve_limit], y[:curve_limit]
        curves[net] = {name: A.robustness_curve(clf, cx, cy, CURVE_EPS, attack=attack, seed=seed, progress=progress,
                                                desc=f"{net}: {name} curve", **settings).accuracy
                       for name, (attack, settings) in CURVES.items()}
        wide = A.robustness_curve(clf, x[:UNBOUNDED_IMAGES], y[:UNBOUNDED_IMAGES], [1.0], attack="pgd",
                                  progress=False, **CURVES["PGD-50"][1]).accuracy[0]
        for name in ("PGD-50", "APGD-CE + APGD-DLR"):
            warnings += [f"{net} net, {name}: {w}" for w in A.masking_warnings(
                CURVE_EPS, curves[net][name], attack=CURVES[name][0], one_step=curves[net]["FGSM"],
                unbounded=wide if name == "PGD-50" else None, images=len(cy))]
        seconds[net] = float(read_json(r.file("metrics.json")).get("train_seconds", np.nan))
    names = list(TABLE)
    out = Writer(robust.file("defense"))
    out.figure(plots.defense_curves(CURVE_EPS, curves, eps, len(x[:curve_limit])), "defense_curves.png")
    out.npz("defense.npz", {
        "nets": np.array(list(nets)), "run_dirs": np.array([r.path for r in nets.values()]), "eps": eps,
        "attacks": np.array(["clean", *names]),
        "accuracy": np.array([[table[n]["clean"], *(table[n][a] for a in names)] for n in nets]),
        "curve_eps": np.array(CURVE_EPS), "curve_attacks": np.array(list(CURVES)),
        "curves": np.array([[curves[n][a] for a in CURVES] for n in nets]),
        "train_seconds": np.array([seconds[n] for n in nets]), "images": len(y), "curve_images": len(cy),
        "seed": seed, "warnings": np.array(warnings, dtype=str),
        "settings": np.array([f"{k}: {a} {s}" for k, (a, s) in {**TABLE, **CURVES}.items()]),
    })
    return DefenseOutput(folder=out.final, files=out.files, nets=list(nets), eps=eps, table=table, seconds=seconds,
                         warnings=warnings, images=len(y))
