"""Figures for "how fragile is each digit?": distances to the decision boundary, arrays in, a Figure out.

* :func:`boundary_digits`: one column per digit: the clean digit, DeepFool's image (its class and L2), and
  the PGD image at the smallest L-inf budget that flips it (its class and eps).
* :func:`boundary_distances`: DeepFool's L2 and the smallest PGD L-inf budget per digit as bars; the most
  fragile digit (the smallest distance) in red.

All images are pixel space in [0, 1] (both attacks clip), drawn on the fixed grey scale; distances in
pixel units.
"""
import matplotlib.pyplot as plt
import numpy as np

from .attacks import _name, _show


def _frame(ax, fooled):
    for side in ax.spines.values():
        side.set_edgecolor("tab:red" if fooled else "tab:gray")
        side.set_linewidth(2 if fooled else 1)


def boundary_digits(clean, deepfool, pgd, labels, clean_probabilities, deepfool_predicted, deepfool_l2,
                    boundary_class, pgd_predicted, pgd_eps, class_names=None,
                    title="each digit pushed to the decision boundary"):
    """Three rows, one column per digit: clean (label, probability), DeepFool, smallest-eps PGD.

    ``clean``, ``deepfool``, ``pgd`` [N, H, W]; ``clean_probabilities`` [N, C]; per digit: ``labels``,
    ``deepfool_predicted``, ``deepfool_l2``, ``boundary_class`` (the class across DeepFool's boundary),
    ``pgd_predicted``, ``pgd_eps`` (inf: not flipped). A DeepFool image still predicted as its label
    sits on the boundary to ``boundary_class`` (said in its title). Fooled images are framed red.
    """
    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(1.45 * n, 5.4), squeeze=False)
    for j in range(n):
        y = int(labels[j])
        p = np.asarray(clean_probabilities[j])
        _show(axes[0, j], clean[j], f"{_name(class_names, y)}: p={p[y]:.3f}")
        d, b = int(deepfool_predicted[j]), int(boundary_class[j])
        head = f"-> {_name(class_names, d)}" if d != y else f"on {_name(class_names, y)}|{_name(class_names, b)}"
        _show(axes[1, j], deepfool[j], f"{head}\nL2 {float(deepfool_l2[j]):.2f}")
        _frame(axes[1, j], d != y)
        e, q = float(pgd_eps[j]), int(pgd_predicted[j])
        _show(axes[2, j], pgd[j], f"-> {_name(class_names, q)}\neps {e:.3f}" if np.isfinite(e) else "not flipped")
        _frame(axes[2, j], q != y)
    for row, text in enumerate(["clean", "DeepFool (L2)", "PGD, smallest\nL-inf eps"]):
        axes[row, 0].set_ylabel(text, fontsize=9)
    fig.tight_layout()
    fig.suptitle(f"{title}\n(red frame: the net's class changed)", y=1.0, va="bottom")  # save_figure crops to fit
    return fig


def _bar_panel(ax, names, values, label, fmt, high=None):
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    shown = np.where(finite, values, high if high is not None else 0.0)
    colors = np.array(["tab:blue"] * len(values), dtype=object)
    if finite.any():
        colors[np.flatnonzero(finite)[np.argmin(values[finite])]] = "tab:red"
    x = np.arange(len(values))
    bars = ax.bar(x, shown, color=list(colors))
    for i in np.flatnonzero(~finite):
        bars[i].set_hatch("//")
        bars[i].set_facecolor("white")
        bars[i].set_edgecolor("tab:gray")
    for i, v in enumerate(values):
        ax.text(i, shown[i], format(v, fmt) if np.isfinite(v) else "none", ha="center", va="bottom", fontsize=7)
    if finite.any():
        mean = float(values[finite].mean())
        ax.axhline(mean, color="k", ls="--", lw=1, label=f"mean {mean:.3f}" + ("" if finite.all() else
                                                                                  f" ({finite.sum()} flipped)"))
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_xlabel("digit", fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.set_ylim(0, max(float(shown.max()) * 1.2, 1e-6))
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def boundary_distances(labels, deepfool_l2, pgd_eps, class_names=None, high=None,
                       title="how far each digit is from the decision boundary (smaller: more fragile)"):
    """Two bar charts over the digits: DeepFool's L2 and the smallest PGD L-inf budget (pixel units).

    ``pgd_eps`` inf (not flipped within ``high``) is drawn as a hatched bar at ``high``. The smallest
    finite distance in each panel is red; the dashed line is the mean over the finite ones.
    """
    names = [_name(class_names, int(c)) for c in labels]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    _bar_panel(axes[0], names, deepfool_l2, "DeepFool L2 distance (pixel units)", ".2f")
    _bar_panel(axes[1], names, pgd_eps, "smallest PGD L-inf eps (pixel units)", ".3f", high=high)
    fig.tight_layout()
    fig.suptitle(title, y=1.0, va="bottom")  # above the panels; save_figure crops to fit
    return fig
