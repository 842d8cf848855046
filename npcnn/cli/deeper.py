"""``npcnn cam | embedding | ablation | examples RUN_DIR``: look deeper into a trained net (issue "look deeper").

* ``cam``        Grad-CAM, guided backprop, guided Grad-CAM and deconvolution of chosen digits (RUN_DIR/cam/)

The work is done by :mod:`npcnn.experiments`; this module only parses the arguments.
"""


def _layer(text):
    """"conv1" / "conv2" or an index into the Sequential."""
    return int(text) if text.lstrip("-").isdigit() else text


def _setup_cam(p):
    p.add_argument("--layer", type=_layer, default="conv2",
                   help="the layer Grad-CAM looks at: conv1, conv2 (the output of the ReLU after it) or an index "
                        "into the network's layers (default: conv2)")
    p.add_argument("--target", type=int, help="the class explained (default: each image's predicted class)")
    p.add_argument("--indices", type=int, nargs="+", metavar="I",
                   help="test-set indices of the images (default: the run's samples, one per class)")


def run_cam(args):
    from .. import experiments

    print(experiments.cam(args.run_dir, layer=args.layer, target=args.target, indices=args.indices,
                          progress=not args.no_progress).describe())


_COMMANDS = {
    "cam": (_setup_cam, run_cam, "class activation maps: Grad-CAM, guided backprop, guided Grad-CAM, deconvolution"),
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
