"""Look inside a trained net: section 3 of the report, from a run folder, in one go.

    python examples/train_mnist.py --out runs/plain        # once: train (writes the run folder)
    python examples/look_inside.py runs/plain              # then: filters, feature maps, occlusion, saliency

Figures and arrays go to RUN_DIR/look_inside/ (or --out). The same pieces
are the commands ``npcnn inspect``, ``npcnn occlusion`` and ``npcnn saliency``.
Read on: each step is a few lines of the library.
"""
import argparse
import os
import sys

import numpy as np

import npcnn.plots  # noqa: F401  (files only, no window)
from npcnn.analysis import feature_maps, filters, integrated_gradients, occlusion, saliency, smoothgrad
from npcnn.cli import run_guarded
from npcnn.io import save_figure, save_npz
from npcnn.plots import inside
from npcnn.runs import Run


def look_inside(args):
    out = args.out or os.path.join(args.run_dir, "look_inside")

    # The run folder holds the trained net and its input normalisation. The classifier works on
    # pixel-space images in [0, 1] and hides the normalisation.
    run = Run.open(args.run_dir)
    clf = run.classifier
    names = clf.class_names

    # The same digits everywhere: one random test image per class, chosen when the net was trained.
    images, labels = run.test_data()
    indices, x, y = run.select(images, labels)             # x: [10, 28, 28] floats in [0, 1]
    print(f"{len(x)} test images: indices {indices.tolist()}, classes {y.tolist()}")

    # 3.1 What the filters look like. conv1 has 32 filters of 1x3x3; each conv2 filter has one
    # 3x3 slice per conv1 feature map. Red = positive weight, blue = negative, one scale per figure.
    w = filters(clf, conv2_filters=[15, 4, 1, 2, 8])
    save_figure(inside.conv1_filters(w["conv1"]), os.path.join(out, "conv1_filters.png"))
    save_figure(inside.conv2_filters(w["conv2"], w["conv2_filters"]), os.path.join(out, "conv2_filters.png"))

    # 3.2 What the layers see: the conv outputs for the digits 0 and 5, before the ReLU (as the
    # report); post_activation=True gives what the next layer actually receives.
    pick = [int(np.flatnonzero(y == d)[0]) for d in (0, 5)]
    maps = feature_maps(clf, x[pick])                      # {"conv1": [2, 32, 28, 28], "conv2": [2, 32, 14, 14]}
    for layer, m in maps.items():
        for k, i in enumerate(pick):
            fig = inside.feature_maps(m[k], x[i], layer, f"true {names[y[i]]}")
            save_figure(fig, os.path.join(out, f"{layer}_maps_class{y[i]}.png"))

    # 3.3 Occlusion: a black 10x10 patch slides over each image with stride 2 (10x10 positions,
    # 1,000 forward passes for the 10 images). Where the true class's probability drops, the net
    # was looking; the predicted-class map shows what it sees instead.
    r = occlusion(clf, x, y, patch=10, stride=2, fill=0.0)
    for k in range(len(x)):
        fig = inside.occlusion(x[k], r.probability[k], r.predicted[k], int(y[k]), names, r.patch, r.stride,
                               fill=r.fill, base_probability=r.base_probability[k])
        save_figure(fig, os.path.join(out, f"occlusion_class{y[k]}.png"))
        worst = np.unravel_index(r.probability[k].argmin(), r.grid_shape)
        flipped = (r.predicted[k] != y[k]).mean()
        print(f"  {names[y[k]]}: p = {r.base_probability[k]:.3f}; lowest {r.probability[k][worst]:.3f} with the "
              f"patch at row {worst[0] * r.stride[0]}, column {worst[1] * r.stride[1]}; "
              f"another class wins at {flipped:.0%} of the positions")
    save_figure(inside.occlusion_attribution(x, r.attribution, y, names),
                os.path.join(out, "occlusion_attribution.png"))

    # 3.4 Saliency: the gradient of the true class's logit with respect to the pixels, its
    # smoothed version (SmoothGrad) and integrated gradients from a black image.
    sal = {
        "saliency": saliency(clf, x, y),
        "smoothgrad": smoothgrad(clf, x, y, samples=25, stdev=0.15, seed=0),
        "integrated_gradients": integrated_gradients(clf, x, y, steps=50),
    }
    save_figure(inside.saliency(x, sal, y, names), os.path.join(out, "saliency.png"))

    save_npz(os.path.join(out, "look_inside.npz"), {
        "indices": indices, "images": x, "labels": y, **{f"{k}_maps": v for k, v in maps.items()},
        "occlusion_probability": r.probability, "occlusion_predicted": r.predicted,
        "occlusion_attribution": r.attribution, **sal,
    })
    print(f"figures and arrays written to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `npcnn train`")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/look_inside)")
    sys.exit(run_guarded(look_inside, parser.parse_args()))  # expected errors: one line, exit code 1
