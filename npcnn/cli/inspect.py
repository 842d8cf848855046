"""``npcnn inspect | occlusion | saliency RUN_DIR``: look inside a trained net.

Each command reads a run folder written by ``npcnn train``, works on the
run's chosen test images (``samples.json``: one per class, the same digits
everywhere; ``--indices`` picks others) and writes its own sub-folder::

    RUN_DIR/inspect/     conv1_filters.png, conv2_filters.png, conv{1,2}_maps_test<i>.png, feature_maps.npz
    RUN_DIR/occlusion/   occlusion_test<i>.png (one per image), attribution.png, occlusion.npz
    RUN_DIR/saliency/    saliency.png, saliency_test<i>.png, saliency.npz

The sub-folder is written under a temporary name and renamed when
complete, so a failed or interrupted command leaves the previous results
(or nothing), never a half-written folder.
"""
import contextlib
import os
import shutil
import tempfile

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


# --- shared steps -------------------------------------------------------------

def _pair(values, what):
    if len(values) not in (1, 2):
        raise ValueError(f"--{what} takes one or two numbers, got {len(values)}")
    return values[0] if len(values) == 1 else tuple(values)


def _load(args, indices=None, run=None):
    """The run, its classifier, and the chosen test images (indices, pixel images [N, 28, 28], labels)."""
    from ..runs import Run

    run = run or Run.open(args.run_dir)
    clf = run.classifier
    images, labels = run.test_data()
    idx, x, y = run.select(images, labels, indices if indices is not None else args.indices)
    if len(idx) == 0:
        raise ValueError("no images chosen")
    return run, clf, idx, x, y


@contextlib.contextmanager
def output_folder(run, name):
    """A fresh temporary folder inside the run; renamed onto ``RUN_DIR/name`` if the block succeeds."""
    final = run.file(name)
    if os.path.exists(final) and not os.path.isdir(final):
        raise ValueError(f"{final} exists and is not a folder")
    tmp = tempfile.mkdtemp(dir=run.path, prefix=f".{name}-partial-")
    try:
        yield tmp
        old = None
        if os.path.exists(final):
            old = tmp + "-old"
            os.replace(final, old)
        os.replace(tmp, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# --- the commands -------------------------------------------------------------

def run_inspect(args):
    import numpy as np

    from ..analysis.features import feature_maps, filters
    from ..io import save_figure, save_npz
    from ..plots import inside
    from ..runs import Run

    run = Run.open(args.run_dir)
    if args.indices is None:
        n = len(run.classifier.class_names)
        bad = [d for d in args.digits if not 0 <= d < n]
        if bad:
            raise ValueError(f"digit {bad[0]} is out of range: the classes are 0..{n - 1}")
        samples = run.sample_indices()
        indices = [samples[d] for d in args.digits]
    else:
        indices = args.indices
    run, clf, idx, x, y = _load(args, indices, run)
    w = filters(clf, args.filters)                        # validates the filter numbers
    maps = feature_maps(clf, x, post_activation=args.post_activation)
    names = clf.class_names
    with output_folder(run, "inspect") as out:
        save_figure(inside.conv1_filters(w["conv1"]), os.path.join(out, "conv1_filters.png"))
        save_figure(inside.conv2_filters(w["conv2"], w["conv2_filters"]), os.path.join(out, "conv2_filters.png"))
        for layer, m in maps.items():
            for k, (i, label) in enumerate(zip(idx, y)):
                fig = inside.feature_maps(m[k], x[k], layer, f"true {names[label]}, test image {i}",
                                          post_activation=args.post_activation)
                save_figure(fig, os.path.join(out, f"{layer}_maps_test{i}.png"))
        save_npz(os.path.join(out, "feature_maps.npz"), {
            "images": x, "labels": y, "indices": idx, "post_activation": args.post_activation,
            **maps, "conv1_weight": w["conv1"], "conv2_weight": w["conv2"], "conv2_filters": w["conv2_filters"],
            "class_names": np.array(names),
        })
    print(f"filters and feature maps of {len(idx)} image(s) written to {run.file('inspect')}")


def run_occlusion(args):
    import numpy as np

    from ..analysis.occlusion import check_settings, occlusion
    from ..io import save_figure, save_npz
    from ..plots import inside

    patch, stride = _pair(args.patch, "patch"), _pair(args.stride, "stride")
    run, clf, idx, x, y = _load(args)
    patch, stride = check_settings(x.shape[1:], patch, stride)   # before anything is written
    r = occlusion(clf, x, y, patch=patch, stride=stride, fill=args.fill, batch_size=args.batch_size,
                  progress=not args.no_progress)
    names = clf.class_names
    with output_folder(run, "occlusion") as out:
        for k, i in enumerate(idx):
            fig = inside.occlusion(x[k], r.probability[k], r.predicted[k], int(y[k]), names, patch, stride,
                                   fill=args.fill, base_probability=r.base_probability[k])
            save_figure(fig, os.path.join(out, f"occlusion_test{i}.png"))
        save_figure(inside.occlusion_attribution(x, r.attribution, y, names), os.path.join(out, "attribution.png"))
        save_npz(os.path.join(out, "occlusion.npz"), {
            "images": x, "labels": y, "indices": idx, "probability": r.probability, "predicted": r.predicted,
            "attribution": r.attribution, "base_probability": r.base_probability,
            "patch": np.array(patch), "stride": np.array(stride), "fill": np.array(args.fill),
            "class_names": np.array(names),
        })
    changed = int((r.predicted != y[:, None, None]).any(axis=(1, 2)).sum())
    print(f"occlusion of {len(idx)} image(s), {r.grid_shape[0]}x{r.grid_shape[1]} patch positions each: "
          f"{changed} image(s) change class somewhere; written to {run.file('occlusion')}")


def run_saliency(args):
    import numpy as np

    from ..analysis.saliency import integrated_gradients, saliency, smoothgrad
    from ..io import save_figure, save_npz
    from ..plots import inside

    if not args.stdev >= 0:
        raise ValueError(f"--stdev must be >= 0, got {args.stdev}")
    run, clf, idx, x, y = _load(args)
    absolute = not args.signed
    maps = {
        "saliency": saliency(clf, x, y, output=args.output, abs=absolute),
        "smoothgrad": smoothgrad(clf, x, y, output=args.output, samples=args.samples, stdev=args.stdev,
                                 abs=absolute, rng=args.seed),
        "integrated_gradients": integrated_gradients(clf, x, y, output=args.output, steps=args.steps,
                                                     method=args.method),
    }
    names = clf.class_names
    with output_folder(run, "saliency") as out:
        save_figure(inside.saliency(x, maps, y, names), os.path.join(out, "saliency.png"))
        for k, i in enumerate(idx):
            fig = inside.saliency(x[k:k + 1], {m: v[k:k + 1] for m, v in maps.items()}, y[k:k + 1], names,
                                  title=f"saliency of test image {i} (true {names[y[k]]}, {args.output})")
            save_figure(fig, os.path.join(out, f"saliency_test{i}.png"))
        save_npz(os.path.join(out, "saliency.npz"), {
            "images": x, "labels": y, "indices": idx, **maps, "output": np.array(args.output),
            "abs": np.array(absolute), "steps": np.array(args.steps), "method": np.array(args.method),
            "samples": np.array(args.samples), "stdev": np.array(args.stdev), "seed": np.array(args.seed),
            "class_names": np.array(names),
        })
    print(f"saliency maps of {len(idx)} image(s) written to {run.file('saliency')}")


_COMMANDS = {
    "inspect": (_setup_inspect, run_inspect, "draw the learned filters and the feature maps of chosen digits"),
    "occlusion": (_setup_occlusion, run_occlusion,
                  "slide a patch over each image and map the true class's probability and the prediction"),
    "saliency": (_setup_saliency, run_saliency, "vanilla gradient, SmoothGrad and integrated gradients maps"),
}
