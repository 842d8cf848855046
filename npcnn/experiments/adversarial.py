"""The report's section 4, "fooling the net": class images, targeted attacks, learned noise, robustness.

The report's settings are the defaults:

* :func:`class_images`  the image each class likes best, grown from noise (15,000 Adam steps of 0.05);
* :func:`targeted`      real digits pushed to a target class (beta 1e-4, 1,000 steps; the report gives no
                        step size, so Adam's lr is PyTorch's default, 1e-3); ``pairs="all"`` runs the full
                        10 x 10 source-to-target matrix;
* :func:`targeted_sweep` the same for several betas (default 0, 1e-4, 1e-3, 1e-2, 0.1, 1): success, target
                        probability, L2 and L-inf against beta;
* :func:`noise`, :func:`noise_sweep` (in :mod:`.noise`): one noise learned per digit, tried on other images;
* :func:`robustness` (in :mod:`.robustness`): test accuracy against eps under FGSM / PGD / APGD.

Adam runs in the net's normalised input space unless ``space="pixel"``; ``bounds=(low, high)`` keeps the
images within those pixel values (default: unbounded, as the report). All write into
``RUN_DIR/attacks/`` (PNGs and one ``.npz`` per stage, each file atomically, the ``.npz`` last). Every
setting is checked before anything is computed or written.
"""
from dataclasses import dataclass

import numpy as np

from ..analysis import attacks as A
from ..plots import attacks as plots
from .common import StageOutput, Writer, chosen_images, open_run

FOLDER = "attacks"
PAIRS = ("report", "all")
SWEEP_SHOWN = (1, 2, 4, 7)   # source digits drawn across the betas (the report's 1 -> 2 and 2 -> 3 among them)
CURVES = ("success_rate", "mean_confidence", "mean_l2", "mean_linf")


@dataclass
class AttackOutput(StageOutput):
    attack: A.AttackResult = None   # images, history (the per-step cost), probabilities, success, settings, ...


def _check_adam(steps, lr, space, bounds):
    """The settings of the three Adam stages, checked; ``bounds`` as a pair of floats or None."""
    A._check_steps(steps)
    A._check_lr(lr)
    A._check_space(space)
    return A._check_bounds(bounds)


def _bounds_array(bounds):
    return np.asarray(bounds if bounds is not None else [np.nan, np.nan], dtype=np.float64)


# --------------------------------------------------------------------------- class images

@dataclass
class ClassImagesOutput(AttackOutput):
    class_names: list = None
    regularized: bool = False
    correlation: np.ndarray = None   # [K] Pearson correlation with the class's mean training image
    other_correlation: np.ndarray = None   # [K] mean correlation with the other classes' mean images

    def describe(self):
        r, names = self.attack, self.class_names
        lines = [f"class {names[c] if names else c}: predicted {r.predicted[j]} with probability "
                 f"{r.probabilities[j, r.predicted[j]]:.4f}; final cost {r.history[-1, j]:.2f}; correlation with "
                 f"the class's mean training image {self.correlation[j]:.3f}" for j, c in enumerate(r.targets)]
        what = "regularised class images" if self.regularized else "class images"
        lines.append(f"{int(r.success.sum())}/{len(r.targets)} {what} predicted as their class; mean correlation "
                     f"{np.nanmean(self.correlation):.3f} with the class's mean image, "
                     f"{np.nanmean(self.other_correlation):.3f} with the other classes'; written to {self.folder}")
        return "\n".join(lines)


#: the regulariser settings the class-image stage takes (None: the report's, or REGULARIZED's with regularized)
REGULARIZERS = ("score", "start", "l2", "blur_every", "blur_sigma", "jitter", "frame")


def _train_set(run):
    """The run's training images and labels (for the class means), from where its test set comes."""
    from ..data import load_dataset

    c = run.config
    return load_dataset(c["dataset"], "train", root=run.data_root(), allow_sample=c.get("data_source") == "sample")


def class_images(run, *, classes=None, steps=None, lr=None, seed=0, space=None, bounds=None, regularized=False,
                 score=None, start=None, l2=None, blur_every=None, blur_sigma=None, jitter=None, frame=None,
                 progress=True):
    """For each of ``classes`` (default: all; indices or names), the image its logit likes best, grown by
    Adam from seeded uniform noise: the report's setting (15,000 unbounded steps of 0.05 in the normalised
    space), or with ``regularized=True`` the recommended regularised set
    (:data:`npcnn.analysis.attacks.REGULARIZED`: bounded to [0, 1], a black 4-pixel frame, blur, jitter). Any setting
    given overrides either. Also: each image's correlation with its class's mean training image.
    Writes ``class_image[_regularized].npz`` and figures. Returns a :class:`ClassImagesOutput`."""
    given = dict(steps=steps, lr=lr, space=space, bounds=bounds, score=score, start=start, l2=l2,
                 blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter, frame=frame)
    given = {k: v for k, v in given.items() if v is not None}
    if not regularized and any(k in given for k in REGULARIZERS):
        flag = next(k for k in REGULARIZERS if k in given).replace("_", "-")
        raise ValueError(f"--{flag} is a regulariser: it applies with --regularized only")
    base = A.REGULARIZED if regularized else {**A.CLASS_IMAGE, "space": "normalized", "bounds": None}
    settings = {**base, **given}
    settings["bounds"] = _check_adam(settings["steps"], settings["lr"], settings["space"], settings["bounds"])
    run = open_run(run)
    clf = run.classifier
    classes = A.check_classes(clf, classes if classes else range(clf.num_classes))
    r = A.class_images(clf, classes, seed=seed, progress=progress, **settings)
    train = _train_set(run)
    correlation = A.class_mean_correlation(r.images, *train, r.targets)
    # the fairer measure: against every other class's mean too (a dark border alone correlates with them all)
    every = np.stack([A.class_mean_correlation(r.images, *train, np.full(len(r.targets), c))
                      for c in range(clf.num_classes)], axis=1)
    other_correlation = (every.sum(axis=1) - correlation) / (clf.num_classes - 1)
    names = clf.class_names
    tag = "_regularized" if regularized else ""
    out = Writer(run.file(FOLDER))
    out.figure(plots.class_images(r.images, r.history, r.targets, r.probabilities, names), f"class_images{tag}.png")
    if not regularized:
        for j, c in enumerate(r.targets):
            out.figure(plots.class_image(r.images[j], r.history[:, j], c, r.probabilities[j, c], names),
                       f"class_image_{c}.png")
    s = r.settings
    out.npz(f"class_image{tag}.npz", {
        "images": r.images, "targets": r.targets, "probabilities": r.probabilities, "cost": r.history,
        "start": r.start, "steps": s["steps"], "lr": s["lr"], "seed": seed, "space": s["space"],
        "bounds": _bounds_array(s["bounds"]), "regularized": regularized, "correlation": correlation,
        "other_correlation": other_correlation,
        "score": s["score"], "l2": s["l2"], "blur_every": s["blur_every"], "blur_sigma": s["blur_sigma"],
        "jitter": s["jitter"], "frame": s["frame"], "start_range": np.asarray(s["start"], dtype=np.float64)})
    return ClassImagesOutput(folder=out.final, files=out.files, attack=r, class_names=names, regularized=regularized,
                             correlation=correlation, other_correlation=other_correlation)


# --------------------------------------------------------------------------- targeted

@dataclass
class TargetedOutput(AttackOutput):
    pairs: str = "report"
    summary: dict = None   # success_rate, mean_confidence, mean_l2, mean_linf (pixel units)

    def describe(self):
        s = self.summary
        return (f"targeted ({self.pairs}, {len(self.attack.targets)} pairs): success {s['success_rate']:.1%}, "
                f"mean confidence {s['mean_confidence']:.4f}, mean L2 {s['mean_l2']:.3f}, mean Linf "
                f"{s['mean_linf']:.3f} (pixel units); written to {self.folder}")


def _check_betas(betas):
    """One or more betas, each >= 0, as a sorted array without repeats; an error naming --beta otherwise."""
    values = np.atleast_1d(np.asarray(betas, dtype=np.float64)).ravel()
    if values.size == 0:
        raise ValueError("--beta takes one or more values, each a number >= 0; got none")
    return np.unique([A._check_nonnegative(b, "--beta") for b in values])


def _check_pairs(pairs):
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be 'report' or 'all', got {pairs!r}")
    return pairs


def _pairs(run, pairs):
    """The run's sample digits and the (source, target) pairs: indices, images, labels, sources, targets."""
    idx, x, y = chosen_images(run)
    src, tgt = A.target_pairs(y, pairs, run.classifier.num_classes)
    return idx, x, y, src, tgt


def targeted(run, *, pairs="report", beta=A.TARGETED["beta"], steps=A.TARGETED["steps"], lr=A.TARGETED["lr"],
             space="normalized", bounds=None, progress=True):
    """Push the run's sample digits to other classes: maximise ``logit_t(v) - beta * ||v - v0||^2`` by Adam.
    ``pairs="report"``: each digit d to (d + 1) % 10; ``"all"``: every digit to every other class. The report
    gives no step size: ``lr`` is PyTorch's Adam default, 1e-3. Returns a :class:`TargetedOutput`."""
    bounds = _check_adam(steps, lr, space, bounds)
    beta = A._check_nonnegative(beta, "--beta")
    _check_pairs(pairs)
    run = open_run(run)
    clf = run.classifier
    idx, x, y, src, tgt = _pairs(run, pairs)
    r = A.targeted(clf, x[src], tgt, labels=y[src], beta=beta, steps=steps, lr=lr, space=space, bounds=bounds,
                   progress=progress)
    names = clf.class_names
    p_clean = clf.predict_proba(x)[src]
    report = np.flatnonzero(tgt == (y[src] + 1) % clf.num_classes)
    out = Writer(run.file(FOLDER))
    out.figure(plots.targeted_pairs(r.start[report], r.images[report], p_clean[report], r.probabilities[report],
                                    r.labels[report], r.targets[report], names), "targeted_pairs.png")
    for i in report:
        out.figure(plots.targeted_pair(r.start[i], r.images[i], p_clean[i], r.probabilities[i], r.labels[i],
                                       r.targets[i], names), f"targeted_{r.labels[i]}_to_{r.targets[i]}.png")
    if pairs == "all":
        out.figure(plots.targeted_matrix(r.start, r.images, r.labels, r.targets, r.probabilities, names,
                                         clf.num_classes), "targeted_matrix.png")
    s = r.summary()
    out.npz("targeted.npz", {
        "sources": r.start, "source_labels": r.labels, "source_indices": idx[src], "targets": r.targets,
        "adversarial": r.images, "probabilities": r.probabilities, "clean_probabilities": p_clean,
        "success": r.success, "confidence": r.confidence, "l2": r.l2, "linf": r.linf, "cost": r.history,
        "pairs": pairs, "beta": r.settings["beta"], "steps": r.settings["steps"], "lr": r.settings["lr"],
        "space": r.settings["space"], "bounds": _bounds_array(r.settings["bounds"]), **s})
    return TargetedOutput(folder=out.final, files=out.files, attack=r, pairs=pairs, summary=s)


# --------------------------------------------------------------------------- beta sweep

@dataclass
class TargetedSweepOutput(StageOutput):
    pairs: str = "report"
    betas: np.ndarray = None   # [B], ascending
    attacks: list = None       # one A.AttackResult per beta
    curves: dict = None        # success_rate, mean_confidence, mean_l2, mean_linf (pixel units): [B] each

    def describe(self):
        c = self.curves
        lines = [f"beta {b:g}: success {s:.1%}, mean target probability {p:.4f}, mean L2 {l2:.3f}, mean Linf "
                 f"{li:.3f}" for b, s, p, l2, li in zip(self.betas, *(c[k] for k in CURVES))]
        lines.append(f"targeted sweep ({self.pairs}, {len(self.attacks[0].targets)} pairs, {len(self.betas)} betas; "
                     f"distances in pixel units); written to {self.folder}")
        return "\n".join(lines)


def targeted_sweep(run, *, betas=A.SWEEP_BETAS, pairs="report", steps=A.TARGETED["steps"], lr=A.TARGETED["lr"],
                   space="normalized", bounds=None, progress=True):
    """:func:`targeted` for each of ``betas`` (sorted, repeats dropped), all in one Adam loop: success rate,
    target probability, L2 and L-inf against beta (``targeted_sweep.png``), a few digits across the betas
    (``targeted_sweep_digits.png``), and ``targeted_sweep.npz`` (one row per beta). Returns a
    :class:`TargetedSweepOutput`."""
    bounds = _check_adam(steps, lr, space, bounds)
    betas = _check_betas(betas)
    _check_pairs(pairs)
    run = open_run(run)
    clf = run.classifier
    idx, x, y, src, tgt = _pairs(run, pairs)
    rs = A.targeted_sweep(clf, x[src], tgt, betas, labels=y[src], steps=steps, lr=lr, space=space, bounds=bounds,
                          progress=progress)
    curves = {k: np.array([r.summary()[k] for r in rs]) for k in CURVES}
    shown = [int(np.flatnonzero(y[src] == d)[0]) for d in SWEEP_SHOWN if np.any(y[src] == d)] or [0]
    adv = np.stack([r.images for r in rs])
    probs = np.stack([r.probabilities for r in rs])
    l2, linf = np.stack([r.l2 for r in rs]), np.stack([r.linf for r in rs])
    confidence = np.stack([r.confidence for r in rs])
    out = Writer(run.file(FOLDER))
    out.figure(plots.beta_sweep(betas, curves, l2, linf, confidence,
                                report_beta=A.TARGETED["beta"], title=f"targeted attack against beta ({len(src)} "
                                f"pairs, {steps} Adam steps of {lr:g})"), "targeted_sweep.png")
    out.figure(plots.beta_sweep_digits(x[src][shown], adv[:, shown], probs[:, shown], l2[:, shown], y[src][shown],
                                       tgt[shown], betas, clf.class_names), "targeted_sweep_digits.png")
    out.npz("targeted_sweep.npz", {
        "betas": betas, "sources": x[src], "source_labels": y[src], "source_indices": idx[src], "targets": tgt,
        "clean_probabilities": clf.predict_proba(x)[src], "adversarial": adv, "probabilities": probs,
        "success": np.stack([r.success for r in rs]), "confidence": confidence,
        "l2": l2, "linf": linf, "cost": np.stack([r.history for r in rs]), "shown": np.asarray(shown),
        "pairs": pairs, "steps": steps, "lr": float(lr), "space": space, "bounds": _bounds_array(bounds), **curves})
    return TargetedSweepOutput(folder=out.final, files=out.files, pairs=pairs, betas=betas, attacks=rs, curves=curves)
