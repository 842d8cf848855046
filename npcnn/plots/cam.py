"""Figures for Grad-CAM, guided backprop, guided Grad-CAM and deconvolution: where the net looks.

Arrays in (:mod:`npcnn.analysis.cam` computes them), a matplotlib Figure out. One row per image:
the digit; its Grad-CAM map (scaled to [0, 1]) laid over it in a warm colour map; then the three input
maps, each on its own scale centred on zero (red: raising the pixel raises the class's score as the
method sees it, blue: lowers it).
"""
import matplotlib.pyplot as plt
import numpy as np

HEAT = "jet"
DIVERGING = "RdBu_r"
COLUMNS = ("guided backprop", "guided Grad-CAM", "deconvolution")


def _limit(a):
    m = float(np.max(np.abs(a))) if np.size(a) else 0.0
    return m if m > 0 else 1.0


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def cam(images, grad_cam, maps, targets, class_names, labels=None, probability=None, layer="conv2",
        titles=None, title=None):
    """One row per image: the digit, Grad-CAM over it, then each map of ``maps``.

    ``images`` [N, H, W] pixels in [0, 1]; ``grad_cam`` [N, H, W] in [0, 1] (the upsampled map scaled per
    image); ``maps`` {name: [N, H, W]} signed input maps (guided backprop, guided Grad-CAM,
    deconvolution, in that order when given); ``targets`` [N] the classes explained; ``labels`` [N] the
    true classes and ``probability`` [N] the net's probability of each target, if known; ``layer`` the
    Grad-CAM layer in words; ``titles`` one line per row (e.g. "test 17").
    """
    images = np.asarray(images)
    n = len(images)
    names = [m for m in COLUMNS if m in maps] + [m for m in maps if m not in COLUMNS]
    cols = 2 + len(names)
    fig, axes = plt.subplots(n, cols, figsize=(2.0 * cols + 0.6, 2.1 * n + 0.7), squeeze=False,
                             layout="constrained")
    heat = None
    for i in range(n):
        img = images[i].reshape(images.shape[-2:])
        t = class_names[int(targets[i])]
        ax = axes[i, 0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        head = titles[i] + ": " if titles is not None else ""
        true = f"true {class_names[int(labels[i])]}" if labels is not None else ""
        ax.set_title(f"{head}{true}", fontsize=8)
        p = f", p = {float(probability[i]):.2f}" if probability is not None else ""
        ax.set_ylabel(f"explaining {t}{p}", fontsize=8)
        ax = axes[i, 1]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        heat = ax.imshow(np.asarray(grad_cam[i]), cmap=HEAT, alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(f"Grad-CAM of {t}", fontsize=8)
        for j, m in enumerate(names):
            a = np.asarray(maps[m][i])
            v = _limit(a)
            ax = axes[i, 2 + j]
            ax.imshow(a, cmap=DIVERGING, vmin=-v, vmax=v)
            ax.set_title(f"{m} of {t}", fontsize=8)
        for ax in axes[i]:
            _bare(ax)
    fig.colorbar(heat, ax=axes[:, 1], location="bottom", fraction=0.04 / max(n, 1) * 2, pad=0.01,
                 label="Grad-CAM, scaled to 0..1 per image")
    fig.supxlabel("gradient maps: red raises the class's score, blue lowers it (each map on its own scale, "
                  "centred on zero)", fontsize=8)
    fig.suptitle(title or f"where the net looks: Grad-CAM at {layer}, and the guided gradients", fontsize=10)
    return fig
