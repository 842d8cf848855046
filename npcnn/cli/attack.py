"""``npcnn attack RUN_DIR EXPERIMENT``: the report's section 4 on a trained run.

Experiments (the report's settings are the defaults):

* ``class-image``  the image each class likes best, grown from noise (15,000 Adam steps of 0.05);
* ``targeted``     real digits pushed to a target class (beta 1e-4, 1,000 steps; the report gives no
                   step size, so Adam's is PyTorch's default, 1e-3); ``--pairs all`` runs the full
                   10 x 10 source-to-target matrix; several ``--beta`` values run a sweep over beta;
* ``noise``        one noise per sample digit (1,500 steps of 0.005), each added to another random
                   image and to the whole test set; several ``--lr`` values run a sweep over the step size;
* ``boundary``     how fragile each sample digit is: DeepFool's L2 (50 steps, overshoot 0.02) and the
                   smallest L-inf budget at which PGD flips it (bisection to 1e-3);
* ``robustness``   test accuracy against eps under FGSM / PGD (with restarts) / APGD, for one or more runs,
                   checked for the signs of gradient masking;
* ``defense``      an adversarially trained RUN_DIR beside the standard net ``--against``: clean, FGSM,
                   PGD-50 x 10 restarts and APGD-CE + APGD-DLR at eps 0.3, and the curves against eps
                   (writes ``RUN_DIR/defense/``).

Writes ``RUN_DIR/attacks/`` (PNGs and one ``.npz`` per experiment, the ``.npz`` last).
Every argument is checked before anything is computed or written. The work is done by
:mod:`npcnn.experiments.adversarial`; this module only parses the arguments.
"""
EXPERIMENTS = ("class-image", "targeted", "noise", "boundary", "robustness", "defense")

# option -> experiments it applies to (anything else is an error, not silently ignored)
APPLIES = {
    "lr": ("class-image", "targeted", "noise"),
    "classes": ("class-image",),
    "regularized": ("class-image",),
    "l2": ("class-image",),
    "blur_every": ("class-image",),
    "blur_sigma": ("class-image",),
    "jitter": ("class-image",),
    "frame": ("class-image",),
    "beta": ("targeted",),
    "pairs": ("targeted",),
    "target": ("noise",),
    "indices": ("noise",),
    "overshoot": ("boundary",),
    "tol": ("boundary",),
    "pgd_steps": ("boundary",),
    "attack": ("robustness",),
    "eps": ("robustness", "defense"),
    "against": ("defense",),
    "curve_limit": ("defense",),
    "variants": ("robustness",),
    "step_size": ("robustness",),
    "limit": ("noise", "robustness", "defense"),
    "no_random_start": ("robustness",),
    "restarts": ("robustness",),
    "no_check": ("robustness",),
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
                                             "1500 noise, 50 DeepFool in boundary; robustness: 10 PGD, 100 "
                                             "APGD)")
    p.add_argument("--lr", type=float, nargs="*", metavar="LR",
                   help="Adam step size (default: 0.05 class-image and 0.005 noise, the report's; 0.001 targeted, "
                        "PyTorch's Adam default, as the report gives none there; in the normalised input space "
                        "unless --space pixel); noise: several values run a sweep over the noise's size, e.g. "
                        "--lr 0.0005 0.001 0.002 0.005 0.01 (attacks/noise_sweep.npz, noise_sweep.png, "
                        "noise_sweep_digits.png)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the starting noise (class-image), the other image each noise is tried on (noise), "
                        "PGD's random start (boundary, robustness; default 0)")
    p.add_argument("--classes", nargs="+", help="class-image: the classes to draw (default: all)")
    p.add_argument("--regularized", action="store_true",
                   help="class-image: the recommended regularised set instead of the report's setting: 500 Adam "
                        "steps of 0.05 in pixel space from uniform noise, bounded to [0, 1], the outer 4 pixels held "
                        "black (MNIST's empty border), blur 0.6 px every 2 steps, jitter 2 px (Yosinski et al. 2015)")
    p.add_argument("--l2", type=float, help="class-image --regularized: weight of the L2 penalty on the pixel-space "
                                            "image, >= 0 (default 0)")
    p.add_argument("--blur-every", type=int, help="class-image --regularized: blur every N steps, >= 1 (default 2)")
    p.add_argument("--blur-sigma", type=float, help="class-image --regularized: the blur's standard deviation in "
                                                    "pixels, >= 0; 0 turns it off (default 0.6)")
    p.add_argument("--frame", type=int, help="class-image --regularized: hold the outer N pixels at 0 (default 4)")
    p.add_argument("--jitter", type=int, help="class-image --regularized: random shift of up to N pixels each step, "
                                              ">= 0 (default 2)")
    p.add_argument("--beta", type=float, nargs="*", metavar="BETA",
                   help="targeted: weight of the squared-distance penalty, >= 0 (default 1e-4, the report's); "
                        "several values run a sweep instead, e.g. --beta 0 1e-4 1e-3 1e-2 1e-1 1: success, "
                        "target probability, L2 and L-inf against beta (attacks/targeted_sweep.npz, "
                        "targeted_sweep.png, targeted_sweep_digits.png)")
    p.add_argument("--pairs", choices=["report", "all"], help="targeted: one pair per digit d -> (d+1) %% 10 "
                                                              "(report, default) or all 90 pairs (all)")
    p.add_argument("--target", help="noise: the class every noise aims at (default: each digit d to (d + 1) %% 10; "
                                    "digits already of --target are left out)")
    p.add_argument("--indices", nargs="+", type=int, help="noise: test-set indices of the digits to learn a noise "
                                                          "for (default: the run's sample of each class)")
    p.add_argument("--overshoot", type=float, help="boundary: DeepFool's overshoot, >= 0 (default 0.02, "
                                                   "torchattacks')")
    p.add_argument("--tol", type=float, help="boundary: the L-inf bisection stops within this many pixel units, "
                                             "> 0 (default 0.001)")
    p.add_argument("--pgd-steps", type=int, help="boundary: PGD steps at each budget tried (default 20, step size "
                                                 "2.5 * eps / steps, random start)")
    p.add_argument("--attack", choices=["fgsm", "pgd", "pgd-l2", "apgd-ce", "apgd-dlr", "apgd-ce+dlr"],
                   help="robustness: the attack (default fgsm; apgd-ce / apgd-dlr: Auto-PGD, Croce & Hein 2020; "
                        "apgd-ce+dlr: both, an image robust only if both fail)")
    p.add_argument("--against", metavar="RUN_DIR",
                   help="defense: the standard net to compare the adversarially trained RUN_DIR with (required)")
    p.add_argument("--curve-limit", type=int, help="defense: test images for the curves against eps (default 1000)")
    p.add_argument("--restarts", type=int, help="robustness: random restarts of PGD / APGD; an image counts as "
                                                "robust only if every restart fails (default 1)")
    p.add_argument("--no-check", action="store_true",
                   help="robustness: skip the checks for gradient masking (FGSM beside an iterative attack, the "
                        "attack at eps 1 on 500 images)")
    p.add_argument("--eps", nargs="+", type=float, help="robustness: attack sizes in pixel units "
                                                        "(default 0 .. 0.3, or 0 .. 3 for pgd-l2); defense: the "
                                                        "table's one budget (default 0.3)")
    p.add_argument("--variants", nargs="+", metavar="RUN_DIR", help="robustness: more runs on the same plot "
                                                                    "(e.g. the BatchNorm variant)")
    p.add_argument("--step-size", type=float, help="robustness: PGD step size (default 2.5 * eps / steps)")
    p.add_argument("--no-random-start", action="store_true", help="robustness: PGD starts at the clean image")
    p.add_argument("--limit", type=int, help="noise, robustness, defense: use the first N test images only (for "
                                             "the transfer rate / the curve / the table)")
    p.add_argument("--bounds", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="keep images within these pixel values, clipping after each step (default: unbounded, "
                        "as the report)")
    p.add_argument("--space", choices=["normalized", "pixel"],
                   help="where Adam runs: the net's normalised input (default, as the report) or pixel space")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check_options(args):
    """An option given to an experiment it does not apply to is an error, not silently ignored."""
    given = {k for k in APPLIES if getattr(args, k, None) not in (None, False)}
    for k in sorted(given):
        if args.experiment not in APPLIES[k]:
            flag = "--" + k.replace("_", "-")
            raise ValueError(f"{flag} does not apply to `{args.experiment}` (only to {', '.join(APPLIES[k])})")


# experiment -> (the stage in npcnn.experiments, the options it takes besides --steps)
STAGES = {
    "class-image": ("class_images", ("lr", "seed", "classes", "bounds", "space", "l2", "blur_every", "blur_sigma",
                                     "jitter", "frame")),
    "targeted": ("targeted", ("lr", "beta", "pairs", "bounds", "space")),
    "noise": ("noise", ("lr", "seed", "target", "indices", "limit", "bounds", "space")),
    "boundary": ("boundary", ("overshoot", "tol", "pgd_steps", "seed")),
    "robustness": ("robustness", ("attack", "eps", "variants", "step_size", "limit", "seed", "restarts")),
    "defense": ("defense", ("against", "eps", "limit", "curve_limit", "seed")),
}


def settings(args):
    """The stage's keyword settings: the options given (the stage has the report's defaults for the rest)."""
    _check_options(args)
    name, options = STAGES[args.experiment]
    kwargs = {k: getattr(args, k) for k in ("steps",) + options if getattr(args, k) is not None}
    if "bounds" in kwargs:
        kwargs["bounds"] = tuple(kwargs["bounds"])
    if args.experiment == "robustness" and args.no_random_start:
        kwargs["random_start"] = False
    if args.experiment == "class-image" and args.regularized:
        kwargs["regularized"] = True
    if args.experiment == "robustness" and args.no_check:
        kwargs["check"] = False
    if args.experiment == "defense":
        if "steps" in kwargs:
            raise ValueError("--steps does not apply to `defense` (its attacks' steps are fixed: "
                             "npcnn.experiments.defense.TABLE)")
        if "against" not in kwargs:
            raise ValueError("defense needs --against RUN_DIR: the standard net to compare with")
        if "eps" in kwargs and len(kwargs["eps"]) != 1:
            raise ValueError(f"--eps takes one value for `defense` (the table's budget), got {len(kwargs['eps'])}")
        if "eps" in kwargs:
            kwargs["eps"] = kwargs["eps"][0]
    if "lr" in kwargs and len(kwargs["lr"]) != 1:
        if args.experiment != "noise":
            raise ValueError(f"--lr takes one value for `{args.experiment}` (several only for noise, a sweep), "
                             f"got {len(kwargs['lr'])}")
        name, kwargs["lrs"] = "noise_sweep", kwargs.pop("lr")
    elif "lr" in kwargs:
        kwargs["lr"] = kwargs["lr"][0]
    if "beta" in kwargs and len(kwargs["beta"]) != 1:   # several betas (or none, which the stage refuses): a sweep
        name, kwargs["betas"] = "targeted_sweep", kwargs.pop("beta")
    elif "beta" in kwargs:
        kwargs["beta"] = kwargs["beta"][0]
    return name, kwargs


def run(args):
    from .. import experiments

    name, kwargs = settings(args)
    result = getattr(experiments, name)(args.run_dir, progress=not args.no_progress, **kwargs)
    print(result.describe())
