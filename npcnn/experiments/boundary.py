"""How fragile is each digit? The distance from each of the run's sample digits to the decision boundary.

:func:`boundary` runs two attacks on the run's 10 sample digits (one per class):

* DeepFool (L2, torchattacks' semantics, 50 steps, overshoot 0.02): the L2 length of the step that takes
  the digit to the nearest linearised class boundary, repeated until the class changes;
* the smallest L-inf budget ``eps`` at which seeded PGD (20 steps of ``2.5 * eps / 20``) flips the digit,
  by bisection to within ``tol`` (1e-3) pixel units.

It writes into ``RUN_DIR/attacks/``: ``boundary.png`` (the digits, DeepFool's and PGD's images),
``boundary_distances.png`` (both distances per digit as bars), then ``boundary.npz`` last. Every setting is
checked before anything is computed or written.
"""
from dataclasses import dataclass

import numpy as np

from ..analysis.attacks import boundary as B
from ..plots import boundary as plots
from .common import StageOutput, Writer, chosen_images, open_run

FOLDER = "attacks"


@dataclass
class BoundaryOutput(StageOutput):
    labels: np.ndarray = None             # [N] true classes of the sample digits
    deepfool: object = None               # B.deepfool's AttackResult
    minimal: B.MinimalLinfResult = None   # B.minimal_linf's result
    margin: np.ndarray = None             # [N] DeepFool image: logit of the label - the largest other logit

    def describe(self):
        d, m, y = self.deepfool, self.minimal, self.labels
        steps, across = d.settings["steps_taken"], d.settings["boundary_class"]
        lines = []
        for j, c in enumerate(y):
            fooled = f"-> {d.predicted[j]}" if d.predicted[j] != c else \
                f"ends on the {c}|{across[j]} boundary (logit margin {self.margin[j]:.2g})"
            pgd = f"-> {m.predicted[j]} at L-inf eps {m.eps[j]:.3f}" if np.isfinite(m.eps[j]) else \
                f"not flipped up to eps {m.settings['high']:g}"
            lines.append(f"digit {c}: DeepFool L2 {d.l2[j]:.3f} {fooled} after {steps[j]} steps; PGD {pgd}")
        finite = np.isfinite(m.eps)
        mean_linf = f"{m.eps[finite].mean():.4f}" if finite.any() else "n/a"
        lines.append(f"mean DeepFool L2 {d.l2.mean():.3f} ({int(d.success.sum())}/{len(y)} crossed); mean smallest "
                     f"L-inf {mean_linf} ({int(finite.sum())}/{len(y)} flipped, tol {m.settings['tol']:g}); "
                     f"pixel units; written to {self.folder}")
        return "\n".join(lines)


def boundary(run, *, steps=B.DEEPFOOL["steps"], overshoot=B.DEEPFOOL["overshoot"], tol=B.MINIMAL_LINF["tol"],
             pgd_steps=B.MINIMAL_LINF["pgd_steps"], seed=B.MINIMAL_LINF["seed"], progress=True):
    """DeepFool's L2 and the smallest PGD L-inf budget for each of the run's sample digits.

    ``steps``, ``overshoot``: DeepFool's (:func:`~npcnn.analysis.attacks.boundary.deepfool`); ``tol``,
    ``pgd_steps``, ``seed``: the bisection's (:func:`~npcnn.analysis.attacks.boundary.minimal_linf`, eps in
    [0, 1]). Returns a :class:`BoundaryOutput`.
    """
    steps, overshoot = B.check_deepfool(steps, overshoot)
    low, high, tol, pgd_steps = B.check_search(B.MINIMAL_LINF["low"], B.MINIMAL_LINF["high"], tol, pgd_steps)
    seed = B._check_count(seed, "seed", minimum=0)
    run = open_run(run)
    clf = run.classifier
    idx, x, y = chosen_images(run)
    d = B.deepfool(clf, x, y, steps=steps, overshoot=overshoot, progress=progress)
    m = B.minimal_linf(clf, x, y, low=low, high=high, tol=tol, pgd_steps=pgd_steps, seed=seed, progress=progress)
    logits = clf.logits(d.images).astype(np.float64)
    others = logits.copy()
    others[np.arange(len(y)), y] = -np.inf
    margin = logits[np.arange(len(y)), y] - others.max(axis=1)
    p_clean = clf.predict_proba(x)
    names = clf.class_names
    out = Writer(run.file(FOLDER))
    out.figure(plots.boundary_digits(x, d.images, m.images, y, p_clean, d.predicted, d.l2,
                                     d.settings["boundary_class"], m.predicted, m.eps, names,
                                     title=f"each digit pushed to the decision boundary: DeepFool ({steps} steps, "
                                           f"overshoot {overshoot:g}) and PGD's smallest L-inf eps "
                                           f"({pgd_steps} steps, tol {tol:g})"), "boundary.png")
    out.figure(plots.boundary_distances(y, d.l2, m.eps, names, high=high), "boundary_distances.png")
    finite = np.isfinite(m.eps)
    out.npz("boundary.npz", {
        "indices": idx, "images": x, "labels": y, "clean_probabilities": p_clean,
        "deepfool": d.images, "deepfool_predicted": d.predicted, "deepfool_probabilities": d.probabilities,
        "deepfool_l2": d.l2, "deepfool_linf": d.linf, "deepfool_steps": d.settings["steps_taken"],
        "deepfool_boundary_class": d.settings["boundary_class"], "deepfool_margin": margin,
        "deepfool_margin_history": d.history,
        "pgd": m.images, "pgd_predicted": m.predicted, "pgd_probabilities": m.probabilities, "pgd_eps": m.eps,
        "pgd_eps_below": m.eps_below, "pgd_l2": m.l2, "pgd_linf": m.linf,
        "mean_deepfool_l2": float(d.l2.mean()),
        "mean_pgd_eps": float(m.eps[finite].mean()) if finite.any() else np.nan,
        "steps": steps, "overshoot": overshoot, "tol": tol, "pgd_steps": pgd_steps, "seed": int(seed),
        "low": low, "high": high})
    return BoundaryOutput(folder=out.final, files=out.files, labels=y, deepfool=d, minimal=m, margin=margin)
