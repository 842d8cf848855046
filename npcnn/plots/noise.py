"""Figures for the learned noise (the report's section 4): arrays in, a matplotlib Figure out.

Images are pixel space, drawn as in :mod:`npcnn.plots.attacks` (grey on [0, 1], or their own range when
they leave it, said in the title); noise on a diverging scale centred on zero.
"""
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter
import numpy as np

from .attacks import _name, _show, _show_diff


def noise_experiment(image, noise, adversarial, other, other_adversarial, predictions, class_names=None,
                     title="learned noise and its transfer"):
    """Digit, noise, digit + noise, other image, other image + noise.

    ``predictions``: five ``(class, probability)`` pairs, one per panel (the noise's own panel is
    shown without one: pass ``None``).
    """
    fig, axes = plt.subplots(1, 5, figsize=(11, 2.8))
    titles = ["digit", "noise", "digit + noise", "other image", "other + noise"]
    panels = [image, noise, adversarial, other, other_adversarial]
    for ax, name, img, pred in zip(axes, titles, panels, predictions):
        label = name if pred is None else f"{name}\n{_name(class_names, pred[0])} ({pred[1]:.3f})"
        if name == "noise":
            im = _show_diff(ax, img, label)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        else:
            _show(ax, img, label)
    fig.tight_layout()
    fig.suptitle(title, y=1.01)  # above the panels; save_figure crops to fit
    return fig


def noise_grid(images, noises, adversarial, others, other_adversarial, probabilities, other_probabilities, targets,
               transfer_rates, class_names=None, title="one noise per digit"):
    """One column per digit: the digit, its noise, digit + noise, another image, other + noise; the column's
    title gives the digit's target and its noise's transfer rate on the test set."""
    k = len(images)
    fig, axes = plt.subplots(5, k, figsize=(1.45 * k + 0.8, 8.2), squeeze=False)
    rows = ["digit", "noise", "digit + noise", "other image", "other + noise"]
    for j in range(k):
        t = targets[j]
        pa, po = probabilities[j], other_probabilities[j]
        _show(axes[0, j], images[j], f"to {_name(class_names, t)}\ntransfer {transfer_rates[j]:.0%}")
        _show_diff(axes[1, j], noises[j], f"L2 {np.linalg.norm(noises[j]):.1f}")
        _show(axes[2, j], adversarial[j], f"{_name(class_names, pa.argmax())} ({pa.max():.2f})")
        _show(axes[3, j], others[j])
        _show(axes[4, j], other_adversarial[j], f"{_name(class_names, po.argmax())} ({po.max():.2f})")
    for i, name in enumerate(rows):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def noise_sweep(lrs, l2, transfer_rate, accuracy, success, accuracy_clean, report_lr=None, title=None):
    """Left: transfer rate and the share of digits fooled against the noise's L2 norm; right: test accuracy
    with the noise. ``l2``, ``transfer_rate``, ``accuracy``, ``success`` are [L, K] (step size, digit); the
    lines join the means, the dots are the single noises, each mean is labelled with its step size."""
    l2, rate, acc, success = (np.asarray(a, dtype=np.float64) for a in (l2, transfer_rate, accuracy, success))
    x = l2.mean(axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4))
    left, right = axes
    left.plot(l2.ravel(), rate.ravel(), ".", color="tab:red", alpha=0.25)
    left.plot(x, rate.mean(axis=1), "o-", color="tab:red", label="transfer rate on the test set")
    left.plot(x, success.mean(axis=1), "s--", color="tab:gray", label="own digit fooled")
    left.set_ylabel("share")
    right.plot(l2.ravel(), acc.ravel(), ".", color="tab:blue", alpha=0.25)
    right.plot(x, acc.mean(axis=1), "o-", color="tab:blue", label="with the noise")
    right.axhline(accuracy_clean, color="k", lw=0.8, ls=":", label=f"clean ({accuracy_clean:.2%})")
    right.set_ylabel("test accuracy")
    for ax, y in ((left, rate.mean(axis=1)), (right, acc.mean(axis=1))):
        for lr, xi, yi in zip(lrs, x, y):
            ax.annotate(f"lr {lr:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if report_lr is not None and np.any(np.isclose(lrs, report_lr)):
            i = int(np.flatnonzero(np.isclose(lrs, report_lr))[0])
            ax.plot(x[i], y[i], "*", ms=16, color="gold", mec="k", label=f"the report's lr {report_lr:g}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=6)
        ax.set_xlabel("noise L2 norm (pixel units, log scale)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "learned noise against its step size", fontsize=10)
    fig.tight_layout()
    return fig


def noise_sweep_digits(lrs, noises, adversarial, probabilities, other_adversarial, other_probabilities, label, target,
                       other_label, class_names=None):
    """One digit's noise at each step size (columns): the noise, the digit with it, and another image with it,
    each titled with what the net says."""
    k = len(lrs)
    fig, axes = plt.subplots(3, k, figsize=(1.7 * k + 0.8, 5.6), squeeze=False)
    for j, lr in enumerate(lrs):
        pa, po = probabilities[j], other_probabilities[j]
        _show_diff(axes[0, j], noises[j], f"lr {lr:g}\nL2 {np.linalg.norm(noises[j]):.1f}")
        _show(axes[1, j], adversarial[j], f"{_name(class_names, pa.argmax())} ({pa.max():.2f})")
        _show(axes[2, j], other_adversarial[j], f"{_name(class_names, po.argmax())} ({po.max():.2f})")
    axes[0, 0].set_ylabel("noise", fontsize=8)
    axes[1, 0].set_ylabel(f"a {_name(class_names, label)} + noise", fontsize=8)
    axes[2, 0].set_ylabel(f"a {_name(class_names, other_label)} + noise", fontsize=8)
    fig.suptitle(f"a noise learned to make a {_name(class_names, label)} a {_name(class_names, target)}, "
                 f"at each step size", fontsize=10)
    fig.tight_layout()
    return fig
