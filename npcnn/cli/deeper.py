"""``npcnn cam | embedding | ablation | examples RUN_DIR``: look deeper into a trained net (issue "look deeper").

* ``cam``        Grad-CAM, guided backprop, guided Grad-CAM and deconvolution of chosen digits (RUN_DIR/cam/)
* ``embedding``  the test set as a map: t-SNE or PCA of the last hidden layer (RUN_DIR/deeper/)
* ``ablation``   each channel of a conv layer zeroed: accuracy drop overall and per class (RUN_DIR/deeper/)
* ``channels``   the input each conv channel likes best, by activation maximisation (RUN_DIR/deeper/)
* ``examples``   the test-set patches that excite each channel most (Zeiler & Fergus) (RUN_DIR/deeper/)

The work is done by :mod:`npcnn.experiments`; this module only parses the arguments.
"""


def _layer(text):
    """A conv layer's name (conv1, conv2, block1, ..., last) or an index into the Sequential."""
    return int(text) if text.lstrip("-").isdigit() else text


def _setup_cam(p):
    p.add_argument("--layer", type=_layer, default="last",
                   help="the layer Grad-CAM looks at: a conv layer by name (conv1, conv2, ...; block1, ... for "
                        "residual blocks: the output of the ReLU after it), 'last' (the last of them: conv2 in the "
                        "reference net), or an index into the network's layers (default: last)")
    p.add_argument("--target", type=int, help="the class explained (default: each image's predicted class)")
    p.add_argument("--indices", type=int, nargs="+", metavar="I",
                   help="test-set indices of the images (default: the run's samples, one per class)")


def run_cam(args):
    from .. import experiments

    print(experiments.cam(args.run_dir, layer=args.layer, target=args.target, indices=args.indices,
                          progress=not args.no_progress).describe())


def _setup_embedding(p):
    p.add_argument("--method", choices=["tsne", "pca"], default="tsne", help="default: tsne (perplexity 30)")
    p.add_argument("--limit", type=int, help="the first N test images (default: all; t-SNE of 10,000 takes about "
                                             "a minute on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="default: 0")


def _setup_ablation(p):
    p.add_argument("--layer", default="last", help="the conv layer whose channels are zeroed: conv1, conv2, ..., "
                                                   "block1, ... or last (default: last, conv2 in the reference net)")
    p.add_argument("--limit", type=int, help="the first N test images (default: all)")


def _setup_examples(p):
    p.add_argument("--layer", default="last", help="the conv layer: conv1, conv2, ..., block1, ... or last (default: last, conv2 in the reference net)")
    p.add_argument("--k", type=int, default=9, help="patches per channel (default: 9, as Zeiler & Fergus)")
    p.add_argument("--limit", type=int, help="the first N test images (default: all)")


def _setup_channels(p):
    p.add_argument("--layer", default="last", help="the conv layer: conv1, conv2, ..., block1, ... or last (default: last, conv2 in the reference net)")
    p.add_argument("--steps", type=int, help="Adam steps (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seeds the starting noise and the jitter (default: 0)")


def run_channels(args):
    from .. import experiments

    print(experiments.channel_images(args.run_dir, layer=args.layer, steps=args.steps, seed=args.seed,
                                     progress=not args.no_progress).describe())


def run_embedding(args):
    from .. import experiments

    print(experiments.embedding(args.run_dir, method=args.method, limit=args.limit, seed=args.seed,
                                progress=not args.no_progress).describe())


def run_ablation(args):
    from .. import experiments

    print(experiments.ablation(args.run_dir, layer=args.layer, limit=args.limit,
                               progress=not args.no_progress).describe())


def run_examples(args):
    from .. import experiments

    print(experiments.dataset_examples(args.run_dir, layer=args.layer, k=args.k, limit=args.limit,
                                       progress=not args.no_progress).describe())


_COMMANDS = {
    "cam": (_setup_cam, run_cam, "class activation maps: Grad-CAM, guided backprop, guided Grad-CAM, deconvolution"),
    "embedding": (_setup_embedding, run_embedding, "the test set as a map: t-SNE or PCA of the last hidden layer"),
    "ablation": (_setup_ablation, run_ablation, "zero each channel of a conv layer: the accuracy drop per class"),
    "channels": (_setup_channels, run_channels, "the input each conv channel likes best (activation maximisation)"),
    "examples": (_setup_examples, run_examples, "the test-set patches that excite each conv channel most"),
}


def register(sub):
    """Add the parsers of this module's commands not registered yet (called once per COMMANDS entry)."""
    for name, (setup, func, help_text) in _COMMANDS.items():
        if name in sub.choices:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `npcnn train`")
        setup(p)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
