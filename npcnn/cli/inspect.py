"""``npcnn inspect | occlusion | saliency RUN_DIR``: look inside a trained net.

Each command reads a run folder written by ``npcnn train``, works on the
run's chosen test images (``samples.json``: one per class, the same digits
everywhere; ``--indices`` picks others) and writes its own sub-folder::

    RUN_DIR/inspect/     conv1_filters.png, conv2_filters.png, conv{1,2}_maps_test<i>.png, feature_maps.npz
    RUN_DIR/occlusion/   occlusion_test<i>.png (one per image), attribution.png, occlusion.npz
    RUN_DIR/saliency/    saliency.png, saliency_test<i>.png, saliency.npz

The sub-folder is written under a temporary name and renamed when
complete, so a failed or interrupted command leaves the previous results
(or nothing), never a half-written folder. The work is done by
:mod:`npcnn.experiments.inside`; this module only parses the arguments.
"""
from . import positive_int

# this module serves three entries of npcnn.cli.COMMANDS
NAMES = ("inspect", "occlusion", "saliency")


def register(sub):
    """Add the parsers of this module's commands that are not registered yet (called once per COMMANDS entry)."""
    for name, (setup, func, help_text) in _COMMANDS.items():
        if name in sub.choices:
            continue
        p = sub.add_parser(name, help=help_text, description=(help_text[0].upper() + help_text[1:] + ". ") + _DOC.format(name=name))
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `npcnn train`")
        setup(p)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=func)


_DOC = ("Works on the run's chosen test images (samples.json, one per class) unless --indices is given; "
        "writes RUN_DIR/{name}/.")


def _add_indices(p):
    p.add_argument("--indices", type=int, nargs="+", metavar="I",
                   help="test-set indices of the images to use (default: the run's samples, one per class)")


def _setup_inspect(p):
    p.add_argument("--digits", type=int, nargs="+", default=[0, 5], metavar="D",
                   help="classes whose sample image's feature maps are drawn (default: 0 5)")
    _add_indices(p)
    p.add_argument("--filters", type=int, nargs="+", default=[15, 4, 1, 2, 8], metavar="F",
                   help="conv2 filters to draw (default: the report's 15 4 1 2 8)")
    p.add_argument("--post-activation", action="store_true",
                   help="feature maps after the ReLU (default: before the activation, as the report)")


def _setup_occlusion(p):
    p.add_argument("--patch", type=int, nargs="+", default=[10], metavar="P",
                   help="patch size in pixels: one value (square) or height width (default: 10)")
    p.add_argument("--stride", type=int, nargs="+", default=[2], metavar="S",
                   help="step between patch positions: one value or rows columns (default: 2)")
    p.add_argument("--fill", type=float, default=0.0, help="pixel value of the patch, 0 = black (default: 0.0)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="occluded images per forward pass (default: 256)")
    p.add_argument("--feature-layer", default="last",
                   help="Zeiler & Fergus's panels: the strongest map of this conv layer (conv1, conv2, ..., block1, "
                        "..., or last: conv2 in the reference net), its total activation as the patch moves and its "
                        "projection to pixels; 'none' leaves them out (default: last)")
    _add_indices(p)


def _setup_saliency(p):
    _add_indices(p)
    p.add_argument("--output", choices=["logit", "probability"], default="logit",
                   help="explain the true class's logit or its probability (default: logit)")
    p.add_argument("--steps", type=positive_int, default=50, help="integrated gradients steps (default: 50)")
    p.add_argument("--method", default="gausslegendre",
                   choices=["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"],
                   help="integrated gradients quadrature (default: gausslegendre, as Captum)")
    p.add_argument("--samples", type=positive_int, default=25, help="SmoothGrad noisy copies (default: 25)")
    p.add_argument("--stdev", type=float, default=0.15, help="SmoothGrad noise, in pixel units (default: 0.15)")
    p.add_argument("--seed", type=int, default=0, help="seeds the SmoothGrad noise (default: 0)")
    p.add_argument("--signed", action="store_true",
                   help="keep the sign of the gradients (default: absolute values, as Captum's Saliency)")


# --- the commands: keyword settings for npcnn.experiments.inside -------------

def run_inspect(args):
    from .. import experiments

    print(experiments.inspect(args.run_dir, digits=args.digits, indices=args.indices, filters=args.filters,
                              post_activation=args.post_activation, progress=not args.no_progress).describe())


def run_occlusion(args):
    from .. import experiments

    print(experiments.occlusion(args.run_dir, patch=args.patch, stride=args.stride, fill=args.fill,
                                batch_size=args.batch_size, indices=args.indices,
                                feature_layer=None if args.feature_layer == "none" else args.feature_layer,
                                progress=not args.no_progress).describe())


def run_saliency(args):
    from .. import experiments

    print(experiments.saliency(args.run_dir, indices=args.indices, output=args.output, steps=args.steps,
                               method=args.method, samples=args.samples, stdev=args.stdev, seed=args.seed,
                               signed=args.signed, progress=not args.no_progress).describe())


_COMMANDS = {
    "inspect": (_setup_inspect, run_inspect, "draw the learned filters and the feature maps of chosen digits"),
    "occlusion": (_setup_occlusion, run_occlusion,
                  "slide a patch over each image and map the true class's probability and the prediction"),
    "saliency": (_setup_saliency, run_saliency, "vanilla gradient, SmoothGrad and integrated gradients maps"),
}
