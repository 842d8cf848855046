"""``npcnn attack RUN_DIR EXPERIMENT``: the report's section 4 on a trained run.

Experiments (the report's settings are the defaults):

* ``class-image``  the image each class likes best, grown from noise (15,000 Adam steps of 0.05);
* ``targeted``     real digits pushed to a target class (beta 1e-4, 1,000 steps); ``--pairs all``
                   runs the full 10 x 10 source-to-target matrix;
* ``noise``        a noise learned on one digit (1,500 steps of 0.005), then added to another
                   image and to the whole test set;
* ``robustness``   test accuracy against eps under FGSM / PGD, for one or more runs.

Writes ``RUN_DIR/attacks/`` (PNGs and one ``.npz`` per experiment, the ``.npz`` last).
Every argument is checked before anything is computed or written.
"""
import os

import numpy as np

EXPERIMENTS = ("class-image", "targeted", "noise", "robustness")
DEFAULT_EPS = {"fgsm": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3], "pgd": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
               "pgd-l2": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]}
NOISE_TARGET = 8

# option -> experiments it applies to (anything else is an error, not silently ignored)
APPLIES = {
    "lr": ("class-image", "targeted", "noise"),
    "classes": ("class-image",),
    "beta": ("targeted",),
    "pairs": ("targeted",),
    "target": ("noise",),
    "indices": ("noise",),
    "attack": ("robustness",),
    "eps": ("robustness",),
    "variants": ("robustness",),
    "step_size": ("robustness",),
    "limit": ("noise", "robustness"),
    "no_random_start": ("robustness",),
    "bounds": ("class-image", "targeted", "noise"),
    "space": ("class-image", "targeted", "noise"),
}


def register(sub):
    p = sub.add_parser("attack", help="fool a trained net: class images, targeted attacks, learned noise, "
                                      "robustness curves",
                       description="Adversarial experiments on a trained run (the report's section 4); "
                                   "writes RUN_DIR/attacks/.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `npcnn train`")
    p.add_argument("experiment", choices=EXPERIMENTS, metavar="EXPERIMENT",
                   help="one of: " + ", ".join(EXPERIMENTS))
    p.add_argument("--steps", type=int, help="optimisation steps (default: 15000 class-image, 1000 targeted, "
                                             "1500 noise, 10 for PGD)")
    p.add_argument("--lr", type=float, help="Adam step size (default: 0.05 class-image, 0.01 targeted, "
                                            "0.005 noise; in the normalised input space unless --space pixel)")
    p.add_argument("--seed", type=int, default=0, help="seeds the starting noise / PGD's random start (default 0)")
    p.add_argument("--classes", nargs="+", help="class-image: the classes to draw (default: all)")
    p.add_argument("--beta", type=float, help="targeted: weight of the squared-distance penalty (default 1e-4)")
    p.add_argument("--pairs", choices=["report", "all"], help="targeted: one pair per digit d -> (d+1) %% 10 "
                                                              "(report, default) or all 90 pairs (all)")
    p.add_argument("--target", help=f"noise: the class the noise aims at (default {NOISE_TARGET})")
    p.add_argument("--indices", nargs="+", type=int, help="noise: test-set index of the digit, then of the other "
                                                          "image (default: the run's samples of digits 0 and 1)")
    p.add_argument("--attack", choices=["fgsm", "pgd", "pgd-l2"], help="robustness: the attack (default fgsm)")
    p.add_argument("--eps", nargs="+", type=float, help="robustness: attack sizes in pixel units "
                                                        "(default 0 .. 0.3, or 0 .. 3 for pgd-l2)")
    p.add_argument("--variants", nargs="+", metavar="RUN_DIR", help="robustness: more runs on the same plot "
                                                                    "(e.g. the BatchNorm variant)")
    p.add_argument("--step-size", type=float, help="robustness: PGD step size (default 2.5 * eps / steps)")
    p.add_argument("--no-random-start", action="store_true", help="robustness: PGD starts at the clean image")
    p.add_argument("--limit", type=int, help="noise, robustness: use the first N test images only (for the "
                                             "transfer rate / the curve)")
    p.add_argument("--bounds", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="keep images within these pixel values, clipping after each step (default: unbounded, "
                        "as the report)")
    p.add_argument("--space", choices=["normalized", "pixel"],
                   help="where Adam runs: the net's normalised input (default, as the report) or pixel space")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check_options(args):
    """Everything that can be checked without the run: one clear ValueError, before any work."""
    from ..analysis.attacks import _check_bounds, _check_eps, _check_lr, _check_steps

    given = {k for k in APPLIES if getattr(args, k, None) not in (None, False)}
    for k in sorted(given):
        if args.experiment not in APPLIES[k]:
            flag = "--" + k.replace("_", "-")
            raise ValueError(f"{flag} does not apply to `{args.experiment}` (only to {', '.join(APPLIES[k])})")
    if args.steps is not None:
        _check_steps(args.steps)
    if args.lr is not None:
        _check_lr(args.lr)
    if args.beta is not None and not (np.isfinite(args.beta) and args.beta >= 0):
        raise ValueError(f"--beta must be >= 0, got {args.beta:g}")
    for e in args.eps or []:
        _check_eps(e)
    if args.step_size is not None and not (np.isfinite(args.step_size) and args.step_size > 0):
        raise ValueError(f"--step-size must be positive, got {args.step_size:g}")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    _check_bounds(args.bounds)
    if args.indices is not None and len(args.indices) != 2:
        raise ValueError(f"--indices takes two test-set indices (the digit, then the other image), "
                         f"got {len(args.indices)}")


def run(args):
    from ..runs import Run

    _check_options(args)
    run_ = Run.open(args.run_dir)
    out = run_.file("attacks")
    progress = not args.no_progress
    {"class-image": class_image, "targeted": targeted, "noise": noise,
     "robustness": robustness}[args.experiment](run_, args, out, progress)


def _space(args):
    return {"space": args.space or "normalized", "bounds": tuple(args.bounds) if args.bounds else None}


def _bounds_array(bounds):
    return np.asarray(bounds if bounds is not None else [np.nan, np.nan], dtype=np.float64)


def class_image(run_, args, out, progress):
    from ..analysis.attacks import CLASS_IMAGE, check_classes, class_images
    from ..io import save_figure, save_npz
    from ..plots import attacks as plots

    clf = run_.classifier
    classes = check_classes(clf, args.classes if args.classes else range(clf.num_classes))
    r = class_images(clf, classes, steps=args.steps or CLASS_IMAGE["steps"], lr=args.lr or CLASS_IMAGE["lr"],
                     seed=args.seed, progress=progress, **_space(args))
    names = clf.class_names
    save_figure(plots.class_images(r.images, r.history, r.targets, r.probabilities, names),
                os.path.join(out, "class_images.png"))
    for j, c in enumerate(r.targets):
        save_figure(plots.class_image(r.images[j], r.history[:, j], c, r.probabilities[j, c], names),
                    os.path.join(out, f"class_image_{c}.png"))
    save_npz(os.path.join(out, "class_image.npz"), {
        "images": r.images, "targets": r.targets, "probabilities": r.probabilities, "cost": r.history,
        "start": r.start, "steps": r.settings["steps"], "lr": r.settings["lr"], "seed": args.seed,
        "space": r.settings["space"], "bounds": _bounds_array(r.settings["bounds"])})
    for j, c in enumerate(r.targets):
        print(f"class {names[c] if names else c}: predicted {r.predicted[j]} with probability "
              f"{r.probabilities[j, r.predicted[j]]:.4f}; final logit {r.history[-1, j]:.2f}")
    print(f"{int(r.success.sum())}/{len(r.targets)} class images predicted as their class; written to {out}")


def targeted(run_, args, out, progress):
    from ..analysis.attacks import TARGETED, target_pairs
    from ..analysis.attacks import targeted as attack
    from ..io import save_figure, save_npz
    from ..plots import attacks as plots

    clf = run_.classifier
    images, labels = run_.test_data()
    idx, x, y = run_.select(images, labels)
    pairs = args.pairs or "report"
    src, tgt = target_pairs(y, pairs, clf.num_classes)
    r = attack(clf, x[src], tgt, labels=y[src], beta=TARGETED["beta"] if args.beta is None else args.beta,
               steps=args.steps or TARGETED["steps"], lr=args.lr or TARGETED["lr"], progress=progress,
               **_space(args))
    names = clf.class_names
    p_clean = clf.predict_proba(x)[src]
    report = np.flatnonzero(tgt == (y[src] + 1) % clf.num_classes)
    save_figure(plots.targeted_pairs(r.start[report], r.images[report], p_clean[report], r.probabilities[report],
                                     r.labels[report], r.targets[report], names),
                os.path.join(out, "targeted_pairs.png"))
    for i in report:
        save_figure(plots.targeted_pair(r.start[i], r.images[i], p_clean[i], r.probabilities[i], r.labels[i],
                                        r.targets[i], names),
                    os.path.join(out, f"targeted_{r.labels[i]}_to_{r.targets[i]}.png"))
    if pairs == "all":
        save_figure(plots.targeted_matrix(r.start, r.images, r.labels, r.targets, r.probabilities, names,
                                          clf.num_classes), os.path.join(out, "targeted_matrix.png"))
    s = r.summary()
    save_npz(os.path.join(out, "targeted.npz"), {
        "sources": r.start, "source_labels": r.labels, "source_indices": idx[src], "targets": r.targets,
        "adversarial": r.images, "probabilities": r.probabilities, "clean_probabilities": p_clean,
        "success": r.success, "confidence": r.confidence, "l2": r.l2, "linf": r.linf, "cost": r.history,
        "pairs": pairs, "beta": r.settings["beta"], "steps": r.settings["steps"], "lr": r.settings["lr"],
        "space": r.settings["space"], "bounds": _bounds_array(r.settings["bounds"]), **s})
    print(f"targeted ({pairs}, {len(tgt)} pairs): success {s['success_rate']:.1%}, mean confidence "
          f"{s['mean_confidence']:.4f}, mean L2 {s['mean_l2']:.3f}, mean Linf {s['mean_linf']:.3f} (pixel units); "
          f"written to {out}")


def noise(run_, args, out, progress):
    from ..analysis.attacks import NOISE, add_noise, check_classes, learn_noise, transfer_noise
    from ..io import save_figure, save_npz
    from ..plots import attacks as plots

    clf = run_.classifier
    target = int(check_classes(clf, [args.target if args.target is not None else NOISE_TARGET])[0])
    images, labels = run_.test_data()
    indices = args.indices if args.indices is not None else run_.sample_indices()[:2]
    idx, x, y = run_.select(images, labels, indices)
    if y[0] == target:
        raise ValueError(f"test image {idx[0]} is already of class {target}; choose another --target or --indices")
    sp = _space(args)
    r = learn_noise(clf, x[:1], [target], labels=y[:1], steps=args.steps or NOISE["steps"],
                    lr=args.lr or NOISE["lr"], progress=progress, **sp)
    n = r.perturbation[0]
    other_adv = add_noise(x[1], n, sp["bounds"]).astype(clf.dtype)
    p_other = clf.predict_proba(other_adv[None])[0]
    p_clean = clf.predict_proba(x)
    lim = args.limit or len(labels)
    t = transfer_noise(clf, n, images[:lim], labels[:lim], target, bounds=sp["bounds"], progress=progress)
    names = clf.class_names
    pa = r.probabilities[0]
    panels = [(p_clean[0].argmax(), p_clean[0].max()), None, (pa.argmax(), pa.max()),
              (p_clean[1].argmax(), p_clean[1].max()), (p_other.argmax(), p_other.max())]
    save_figure(plots.noise_experiment(x[0], n, r.images[0], x[1], other_adv, panels, names,
                                       title=f"noise learned to make test image {idx[0]} a "
                                             f"{names[target] if names else target}; transfer rate on {lim:,} test "
                                             f"images {t.transfer_rate:.1%}"),
                os.path.join(out, "noise.png"))
    save_npz(os.path.join(out, "noise.npz"), {
        "image": x[0], "label": y[0], "index": idx[0], "target": target, "noise": n, "adversarial": r.images[0],
        "probabilities": pa, "clean_probabilities": p_clean[0], "other_image": x[1], "other_label": y[1],
        "other_index": idx[1], "other_adversarial": other_adv, "other_probabilities": p_other,
        "other_clean_probabilities": p_clean[1], "transfer_rate": t.transfer_rate,
        "accuracy_clean": t.accuracy_clean, "accuracy_noisy": t.accuracy_noisy, "transfer_images": lim,
        "cost": r.history[:, 0],
        "steps": r.settings["steps"], "lr": r.settings["lr"], "space": r.settings["space"],
        "bounds": _bounds_array(r.settings["bounds"])})
    print(f"digit {idx[0]} (a {y[0]}) + noise: predicted {pa.argmax()} ({pa.max():.4f}); "
          f"other image {idx[1]} (a {y[1]}) + noise: predicted {p_other.argmax()} ({p_other.max():.4f})")
    print(f"the noise on {lim:,} test images: transfer rate {t.transfer_rate:.2%}, accuracy {t.accuracy_clean:.2%} -> "
          f"{t.accuracy_noisy:.2%}; written to {out}")


def _variant_names(runs):
    names = ["batchnorm" if r.config.get("batchnorm") else "plain" for r in runs]
    if len(set(names)) < len(names):
        names = [os.path.basename(os.path.normpath(r.path)) for r in runs]
    if len(set(names)) < len(names):
        names = [os.path.normpath(r.path) for r in runs]
    return names


def robustness(run_, args, out, progress):
    from ..analysis.attacks import ATTACKS, robustness_curve
    from ..io import save_figure, save_npz
    from ..plots import attacks as plots
    from ..runs import Run

    attack = args.attack or "fgsm"
    runs = [run_] + [Run.open(p) for p in args.variants or []]
    datasets = {r.config.get("dataset") for r in runs}
    if len(datasets) > 1:
        raise ValueError(f"--variants: the runs were trained on different data sets ({', '.join(sorted(datasets))})")
    eps = np.asarray(args.eps if args.eps else DEFAULT_EPS[attack], dtype=np.float64)
    steps = args.steps or 10
    images, labels = run_.test_data()
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    names = _variant_names(runs)
    acc = []
    for name, r in zip(names, runs):
        res = robustness_curve(r.classifier, images, labels, eps, attack=attack, steps=steps,
                               step_size=args.step_size, seed=args.seed, random_start=not args.no_random_start,
                               progress=progress, desc=f"{name}: {attack}")
        acc.append(res.accuracy)
        print(f"{name}: " + ", ".join(f"eps {e:g}: {a:.2%}" for e, a in zip(eps, res.accuracy)))
    acc = np.asarray(acc)
    label = ATTACKS[attack] + (f", {steps} steps" if attack != "fgsm" else "")
    save_figure(plots.robustness(eps, dict(zip(names, acc)), label,
                                 title=f"test accuracy under {label} ({len(labels):,} test images)"),
                os.path.join(out, "robustness.png"))
    save_npz(os.path.join(out, "robustness.npz"), {
        "attack": attack, "eps": eps, "accuracy": acc, "variants": np.asarray(names),
        "variant_dirs": np.asarray([r.path for r in runs]), "images": len(labels), "steps": steps,
        "step_size": np.nan if args.step_size is None else args.step_size,
        "random_start": not args.no_random_start, "seed": args.seed})
    print(f"written to {out}")
