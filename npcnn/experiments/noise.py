"""The report's learned noise: one noise per digit, each tried on another image and on the whole test set,
and the same for several step sizes (the noise's size) to show when a noise transfers.

* :func:`noise`        one noise per chosen digit (default: the run's sample of each class; the report's
                       figures 81-90), learned with the report's setting (1,500 Adam steps of 0.005 in the
                       normalised input space); each noise added to another random test image and to the
                       whole test set;
* :func:`noise_sweep`  the same for several step sizes (default 0.0005 .. 0.01): transfer rate and test
                       accuracy against the noise's L2 norm, the report's setting marked.

Targets: each digit d goes to ``(d + 1) % 10`` (the targeted pairs' rule, our choice: the report shows
one noise per digit without saying its rule), or every digit to ``target`` when given (digits already
of that class are left out). Both write into ``RUN_DIR/attacks/`` (PNGs, then one ``.npz``).
"""
from dataclasses import dataclass

import numpy as np

from ..analysis import attacks as A
from ..plots import noise as plots
from .adversarial import FOLDER, _bounds_array, _check_adam
from .common import StageOutput, Writer, open_run

#: the step sizes of the sweep: from a tenth of the report's to twice it
NOISE_LRS = (0.0005, 0.001, 0.002, 0.005, 0.01)


def _check_limit(limit):
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    return limit


def _check_lrs(lrs):
    """One or more step sizes, each > 0, sorted without repeats; an error naming --lr otherwise."""
    values = np.atleast_1d(np.asarray(lrs, dtype=np.float64)).ravel()
    if values.size == 0:
        raise ValueError("--lr takes one or more values, each a number > 0; got none")
    return np.unique([A._check_lr(v) for v in values])


@dataclass
class _Digits:
    """The digits the noises are learned on, their targets, and the other image each noise is tried on."""
    indices: np.ndarray         # [K] test-set indices
    images: np.ndarray          # [K, H, W] pixel space
    labels: np.ndarray          # [K]
    targets: np.ndarray         # [K]
    other_indices: np.ndarray   # [K] a random test image of neither the digit's class nor the target
    others: np.ndarray          # [K, H, W]
    other_labels: np.ndarray    # [K]
    left_out: list              # indices already of the target class


def _digits(run, clf, target, indices, seed):
    target = None if target is None else int(A.check_classes(clf, [target])[0])
    images, labels = run.test_data()
    idx, x, y = run.select(images, labels, indices)
    if len(idx) == 0:
        raise ValueError("--indices: give one or more test-set indices")
    if target is None:
        tgt = (y + 1) % clf.num_classes
        left_out = []
    else:
        t = target
        keep = y != t
        left_out = [int(i) for i in idx[~keep]]
        if not keep.any():
            raise ValueError(f"every chosen test image is already of class {t}; choose another --target or --indices")
        idx, x, y, tgt = idx[keep], x[keep], y[keep], np.full(int(keep.sum()), t)
    rng = np.random.default_rng(seed)
    other = np.array([rng.choice(np.flatnonzero((labels != a) & (labels != b))) for a, b in zip(y, tgt)])
    _, xo, yo = run.select(images, labels, other)
    return _Digits(idx, x, y, tgt, other, xo, yo, left_out), images, labels


def _names(clf):
    return clf.class_names


# --------------------------------------------------------------------------- one noise per digit

@dataclass
class NoiseOutput(StageOutput):
    attack: A.AttackResult = None        # the noises (perturbation), the digits + noise, their probabilities
    digits: _Digits = None
    other_probabilities: np.ndarray = None   # [K, C] the other image + its digit's noise
    transfers: list = None                   # one A.TransferResult per noise, on the (first ``limit``) test images

    def describe(self):
        r, d = self.attack, self.digits
        lines = []
        for k in range(len(d.labels)):
            t = self.transfers[k]
            lines.append(f"digit {d.indices[k]} (a {d.labels[k]}) -> {d.targets[k]}: predicted {r.predicted[k]} "
                         f"({r.probabilities[k].max():.4f}), noise L2 {r.l2[k]:.2f}; other image {d.other_indices[k]} "
                         f"(a {d.other_labels[k]}) + noise: {self.other_probabilities[k].argmax()}; transfer rate "
                         f"{t.transfer_rate:.2%}, accuracy {t.accuracy_clean:.2%} -> {t.accuracy_noisy:.2%}")
        fooled = int(np.sum(self.other_probabilities.argmax(axis=1) == d.targets))
        lines.append(f"{int(r.success.sum())}/{len(d.labels)} digits reach their target; {fooled}/{len(d.labels)} "
                     f"other images do; mean transfer rate on {len(self.transfers[0].labels):,} test images "
                     f"{np.mean([t.transfer_rate for t in self.transfers]):.2%}"
                     + (f"; left out (already the target): {d.left_out}" if d.left_out else "")
                     + f"; written to {self.folder}")
        return "\n".join(lines)


def _learn(clf, d, images, labels, steps, lr, space, bounds, limit, progress):
    """The noises for the digits ``d`` at one step size, tried on their other images and the test set."""
    r = A.learn_noise(clf, d.images, d.targets, labels=d.labels, steps=steps, lr=lr, space=space, bounds=bounds,
                      progress=progress)
    other_adv = np.stack([A.add_noise(o, n, bounds) for o, n in zip(d.others, r.perturbation)]).astype(clf.dtype)
    lim = limit or len(labels)
    transfers = A.transfer_noises(clf, r.perturbation, images[:lim], labels[:lim], d.targets, bounds=bounds,
                                  progress=progress)
    return r, other_adv, clf.predict_proba(other_adv), transfers


def noise(run, *, target=None, indices=None, steps=A.NOISE["steps"], lr=A.NOISE["lr"], limit=None,
          space="normalized", bounds=None, seed=0, progress=True):
    """One noise per chosen digit (default: the run's sample of each class), each to its target (default
    ``(d + 1) % 10``; ``target`` sends all there), learned by Adam with the report's setting; each added to
    another random test image (seeded) and to the first ``limit`` test images (default: all).
    Returns a :class:`NoiseOutput`."""
    bounds = _check_adam(steps, lr, space, bounds)
    _check_limit(limit)
    run = open_run(run)
    clf = run.classifier
    d, images, labels = _digits(run, clf, target, indices, seed)
    r, other_adv, p_other, transfers = _learn(clf, d, images, labels, steps, lr, space, bounds, limit, progress)
    p_clean, p_other_clean = clf.predict_proba(d.images), clf.predict_proba(d.others)
    rates = np.array([t.transfer_rate for t in transfers])
    names = _names(clf)
    out = Writer(run.file(FOLDER))
    out.figure(plots.noise_grid(d.images, r.perturbation, r.images, d.others, other_adv, r.probabilities, p_other,
                                d.targets, rates, names,
                                title=f"one noise per digit ({steps:,} Adam steps of {lr:g}); transfer rate on "
                                      f"{len(transfers[0].labels):,} test images"), "noise.png")
    for k in range(len(d.labels)):
        panels = [(p_clean[k].argmax(), p_clean[k].max()), None, (r.predicted[k], r.probabilities[k].max()),
                  (p_other_clean[k].argmax(), p_other_clean[k].max()), (p_other[k].argmax(), p_other[k].max())]
        out.figure(plots.noise_experiment(d.images[k], r.perturbation[k], r.images[k], d.others[k], other_adv[k],
                                          panels, names, title=f"noise learned to make test image {d.indices[k]} a "
                                          f"{names[d.targets[k]] if names else d.targets[k]}; transfer rate "
                                          f"{rates[k]:.1%}"), f"noise_{d.labels[k]}_to_{d.targets[k]}.png")
    out.npz("noise.npz", {
        "images": d.images, "labels": d.labels, "indices": d.indices, "targets": d.targets, "noises": r.perturbation,
        "adversarial": r.images, "probabilities": r.probabilities, "clean_probabilities": p_clean,
        "other_images": d.others, "other_labels": d.other_labels, "other_indices": d.other_indices,
        "other_adversarial": other_adv, "other_probabilities": p_other, "other_clean_probabilities": p_other_clean,
        "transfer_rate": rates, "accuracy_clean": transfers[0].accuracy_clean,
        "accuracy_noisy": np.array([t.accuracy_noisy for t in transfers]), "transfer_images": len(transfers[0].labels),
        "noise_l2": r.l2, "noise_linf": r.linf, "cost": r.history, "steps": steps, "lr": float(lr),
        "space": space, "bounds": _bounds_array(bounds), "seed": seed,
        "target_rule": "next" if target is None else "fixed"})
    return NoiseOutput(folder=out.final, files=out.files, attack=r, digits=d, other_probabilities=p_other,
                       transfers=transfers)


# --------------------------------------------------------------------------- the noise's size swept

@dataclass
class NoiseSweepOutput(StageOutput):
    lrs: np.ndarray = None      # [L] ascending
    curves: dict = None         # per step size, means over the noises: noise_l2, success_rate, transfer_rate,
    #                             accuracy_noisy [L]; accuracy_clean (one number)

    def describe(self):
        c = self.curves
        lines = [f"lr {lr:g}: noise L2 {l2:.2f}, own digit fooled {s:.0%}, transfer rate {t:.2%}, test accuracy "
                 f"{c['accuracy_clean']:.2%} -> {a:.2%}"
                 for lr, l2, s, t, a in zip(self.lrs, c["noise_l2"], c["success_rate"], c["transfer_rate"],
                                            c["accuracy_noisy"])]
        return "\n".join(lines + [f"noise sweep ({len(self.lrs)} step sizes; means over the noises); written to "
                                  f"{self.folder}"])


def noise_sweep(run, *, lrs=NOISE_LRS, target=None, indices=None, steps=A.NOISE["steps"], limit=None,
                space="normalized", bounds=None, seed=0, progress=True):
    """:func:`noise` for each step size in ``lrs`` (sorted, repeats dropped): the noise's L2 norm, the share
    of digits fooled, the transfer rate and the test accuracy with the noise, each a mean over the digits'
    noises (``noise_sweep.png``, the report's lr 0.005 marked); one digit's noise and its other image across
    the step sizes (``noise_sweep_digits.png``); ``noise_sweep.npz`` (one row per step size).
    Returns a :class:`NoiseSweepOutput`."""
    lrs = _check_lrs(lrs)
    bounds = _check_adam(steps, lrs[0], space, bounds)
    _check_limit(limit)
    run = open_run(run)
    clf = run.classifier
    d, images, labels = _digits(run, clf, target, indices, seed)
    rows = [_learn(clf, d, images, labels, steps, lr, space, bounds, limit, progress) for lr in lrs]
    noises = np.stack([r.perturbation for r, *_ in rows])
    l2, success = np.stack([r.l2 for r, *_ in rows]), np.stack([r.success for r, *_ in rows])
    rates = np.array([[t.transfer_rate for t in ts] for *_, ts in rows])
    acc = np.array([[t.accuracy_noisy for t in ts] for *_, ts in rows])
    acc_clean = rows[0][3][0].accuracy_clean
    curves = {"noise_l2": l2.mean(axis=1), "success_rate": success.mean(axis=1), "transfer_rate": rates.mean(axis=1),
              "accuracy_noisy": acc.mean(axis=1), "accuracy_clean": acc_clean}
    other_adv = np.stack([o for _, o, _, _ in rows])
    p_other = np.stack([p for _, _, p, _ in rows])
    n_test = len(rows[0][3][0].labels)
    out = Writer(run.file(FOLDER))
    out.figure(plots.noise_sweep(lrs, l2, rates, acc, success, acc_clean, report_lr=A.NOISE["lr"],
                                 title=f"learned noise against its step size ({len(d.labels)} digits, {steps:,} Adam "
                                       f"steps; {n_test:,} test images)"), "noise_sweep.png")
    out.figure(plots.noise_sweep_digits(lrs, noises[:, 0], np.stack([r.images[0] for r, *_ in rows]),
                                        np.stack([r.probabilities[0] for r, *_ in rows]), other_adv[:, 0],
                                        p_other[:, 0], d.labels[0], d.targets[0], d.other_labels[0], _names(clf)),
               "noise_sweep_digits.png")
    out.npz("noise_sweep.npz", {
        "lrs": lrs, "images": d.images, "labels": d.labels, "indices": d.indices, "targets": d.targets,
        "noises": noises, "probabilities": np.stack([r.probabilities for r, *_ in rows]), "success": success,
        "noise_l2": l2, "noise_linf": np.stack([r.linf for r, *_ in rows]), "transfer_rate": rates,
        "accuracy_noisy": acc, "accuracy_clean": acc_clean, "other_images": d.others, "other_labels": d.other_labels,
        "other_indices": d.other_indices, "other_adversarial": other_adv, "other_probabilities": p_other,
        "transfer_images": n_test, "steps": steps, "space": space, "bounds": _bounds_array(bounds), "seed": seed,
        "report_lr": A.NOISE["lr"], **{f"mean_{k}": v for k, v in curves.items() if k != "accuracy_clean"}})
    return NoiseSweepOutput(folder=out.final, files=out.files, lrs=lrs, curves=curves)
