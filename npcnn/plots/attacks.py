"""Figures for the attacks (the report's section 4): arrays in, a matplotlib Figure out.

Images are pixel space. Those still inside [0, 1] are drawn on the fixed
grey scale (black 0, white 1); the unbounded experiments may leave [0, 1],
and then the image is scaled to its own range, which the title states.
Differences and noise use a diverging scale centred on zero.
"""
import matplotlib.pyplot as plt
import numpy as np

DIVERGING = "RdBu_r"


def _name(class_names, c):
    return class_names[c] if class_names is not None else str(c)


def _show(ax, img, title="", fontsize=8, scale=None):
    """A pixel-space image on [0, 1], or on its own range when it leaves [0, 1] (said in the title).

    ``scale=(lo, hi)`` fixes the grey scale instead (a grid sharing one scale).
    """
    img = np.asarray(img).reshape(np.shape(img)[-2:])
    lo, hi = float(img.min()), float(img.max())
    if scale is not None:
        ax.imshow(img, cmap="gray", vmin=scale[0], vmax=scale[1])
    elif lo >= 0 and hi <= 1:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        title = f"{title}\n[{lo:.2f}, {hi:.2f}]" if title else f"[{lo:.2f}, {hi:.2f}]"
    ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])


def _show_diff(ax, d, title="", fontsize=8):
    d = np.asarray(d).reshape(np.shape(d)[-2:])
    m = float(np.abs(d).max()) or 1.0
    im = ax.imshow(d, cmap=DIVERGING, vmin=-m, vmax=m)
    ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def class_image(image, cost, target, probability, class_names=None):
    """One class image from noise: the image with its probability, and the cost (logit) per step."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3), gridspec_kw={"width_ratios": [1, 1.6]})
    _show(a, image, f"class {_name(class_names, target)}: p = {probability:.4f}", fontsize=9)
    b.plot(np.arange(1, len(cost) + 1), cost)
    b.set_xlabel("step")
    b.set_ylabel(f"logit of class {_name(class_names, target)} (cost)")
    b.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def class_images(images, costs, targets, probabilities, class_names=None,
                 title="the image each class likes best, grown from noise"):
    """All class images on one page: each image with its probability above its cost curve.

    ``costs`` [steps, K], ``probabilities`` [K, C].
    """
    k = len(images)
    fig, axes = plt.subplots(2, k, figsize=(1.7 * k, 3.9), squeeze=False)
    costs = np.asarray(costs)
    for j in range(k):
        t = int(targets[j])
        _show(axes[0, j], images[j], f"{_name(class_names, t)}: p={probabilities[j][t]:.3f}")
        ax = axes[1, j]
        ax.plot(np.arange(1, len(costs) + 1), costs[:, j], lw=1)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("step", fontsize=7)
        ax.grid(alpha=0.3)
    axes[1, 0].set_ylabel("logit (cost)", fontsize=8)
    fig.tight_layout()
    fig.suptitle(title, y=1.01)  # above the panels; save_figure crops to fit
    return fig


def _bars(ax, p_before, p_after, label, target, class_names):
    c = np.arange(len(p_before))
    ax.bar(c - 0.2, p_before, 0.4, label="original", color="tab:blue")
    ax.bar(c + 0.2, p_after, 0.4, label="adversarial", color="tab:red")
    ax.set_xticks(c, [_name(class_names, i) for i in c], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(f"{_name(class_names, label)} -> {_name(class_names, target)}", fontsize=8)


def targeted_pair(original, adversarial, p_original, p_adversarial, label, target, class_names=None):
    """Original / adversarial / difference, and both probability vectors as bars."""
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.6), gridspec_kw={"width_ratios": [1, 1, 1, 1.7]})
    po, pa = np.asarray(p_original), np.asarray(p_adversarial)
    _show(axes[0], original, f"original: {_name(class_names, po.argmax())} ({po.max():.3f})")
    _show(axes[1], adversarial, f"adversarial: {_name(class_names, pa.argmax())} ({pa.max():.3f})")
    d = np.asarray(adversarial, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    im = _show_diff(axes[2], d, f"difference (L2 {np.sqrt(np.sum(d * d)):.2f}, Linf {np.abs(d).max():.2f})")
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    _bars(axes[3], po, pa, label, target, class_names)
    fig.tight_layout()
    return fig


def targeted_pairs(originals, adversarials, p_originals, p_adversarials, labels, targets, class_names=None,
                   title="targeted attack: one pair per digit"):
    """Several pairs, one row each: original, adversarial, difference, probability bars."""
    n = len(originals)
    fig, axes = plt.subplots(n, 4, figsize=(9, 2.0 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.8]})
    for i in range(n):
        po, pa = np.asarray(p_originals[i]), np.asarray(p_adversarials[i])
        _show(axes[i, 0], originals[i], f"{_name(class_names, po.argmax())} ({po.max():.3f})")
        _show(axes[i, 1], adversarials[i], f"{_name(class_names, pa.argmax())} ({pa.max():.3f})")
        d = np.asarray(adversarials[i], dtype=np.float64) - np.asarray(originals[i], dtype=np.float64)
        _show_diff(axes[i, 2], d, f"diff, Linf {np.abs(d).max():.2f}")
        _bars(axes[i, 3], po, pa, labels[i], targets[i], class_names)
    fig.tight_layout()
    fig.suptitle(title, y=1.01)  # above the panels; save_figure crops to fit
    return fig


def targeted_matrix(sources, adversarial, source_labels, targets, probabilities, class_names=None,
                    num_classes=10, title="every digit to every class (rows: source, columns: target)"):
    """The source-to-target matrix as one grid of images.

    The diagonal shows the clean source; each off-diagonal cell the adversarial image with the
    probability of its target, framed green when the net predicts the target, red when not. All
    cells share one grey scale: [0, 1], widened to the images' range when they leave it.
    """
    scale = (min(0.0, float(np.min(adversarial))), max(1.0, float(np.max(adversarial))))
    if scale != (0.0, 1.0):
        title = f"{title}\n(one grey scale for all: [{scale[0]:.2f}, {scale[1]:.2f}] pixel units)"
    fig, axes = plt.subplots(num_classes, num_classes, figsize=(1.25 * num_classes, 1.35 * num_classes))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    probabilities = np.asarray(probabilities)
    for i in range(len(targets)):
        r, c = int(source_labels[i]), int(targets[i])
        ax = axes[r, c]
        p = probabilities[i]
        ok = p.argmax() == c
        _show(ax, adversarial[i], f"p={p[c]:.2f}", fontsize=7, scale=scale)
        for s in ax.spines.values():
            s.set_edgecolor("green" if ok else "red")
            s.set_linewidth(2)
        if r != c:
            _show(axes[r, r], sources[i], "source", fontsize=7, scale=scale)
    for c in range(num_classes):
        axes[0, c].set_title(f"to {_name(class_names, c)}\n" + axes[0, c].get_title(), fontsize=7)
        axes[c, 0].set_ylabel(f"{_name(class_names, c)}", fontsize=9)
    fig.tight_layout()
    fig.suptitle(title, y=1.01)  # above the panels; save_figure crops to fit
    return fig


def _beta_axis(ax, betas):
    """x axis over beta: symmetric-log when the sweep includes 0 (0 stays on the axis), log when it does not."""
    betas = np.asarray(betas, dtype=np.float64)
    positive = betas[betas > 0]
    if len(positive) and positive.min() != betas.min():
        ax.set_xscale("symlog", linthresh=float(positive.min()))
    elif len(positive) > 1:
        ax.set_xscale("log")
    if len(betas) > 1:
        ax.set_xlim(betas.min(), betas.max())   # the end points' markers are drawn unclipped
    ax.set_xticks(betas, [f"{b:g}" for b in betas], fontsize=7, rotation=45)
    ax.minorticks_off()
    ax.set_xlabel("beta", fontsize=8)
    ax.grid(alpha=0.3)


def beta_sweep(betas, curves, l2, linf, confidence, report_beta=None, title="targeted attack against beta"):
    """Success rate, target probability, L2 and L-inf against beta: means as lines, the pairs' range shaded.

    ``curves``: {"success_rate", "mean_confidence", "mean_l2", "mean_linf"} -> [B]; ``l2``, ``linf``,
    ``confidence``: [B, N] per pair. ``report_beta`` is marked when it lies in the sweep's range.
    """
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3))
    panels = [("success_rate", None, "success rate"), ("mean_confidence", confidence, "probability of the target"),
              ("mean_l2", l2, "L2 distance (pixel units)"), ("mean_linf", linf, "L-inf distance (pixel units)")]
    for ax, (key, per_pair, label) in zip(axes, panels):
        ax.plot(betas, curves[key], "o-", color="tab:red", label="mean over pairs", clip_on=False)
        if per_pair is not None:
            per_pair = np.asarray(per_pair)
            ax.fill_between(betas, per_pair.min(axis=1), per_pair.max(axis=1), color="tab:red", alpha=0.15,
                            label="range over pairs")
        if key in ("success_rate", "mean_confidence"):
            ax.set_ylim(-0.02, 1.05)
        else:
            ax.set_ylim(bottom=0)
        if report_beta is not None and np.min(betas) <= report_beta <= np.max(betas):
            ax.axvline(report_beta, color="k", ls="--", lw=1, label=f"the report's beta ({report_beta:g})")
        _beta_axis(ax, betas)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.suptitle(title, y=1.0, va="bottom")  # above the panels; save_figure crops to fit
    return fig


def beta_sweep_digits(sources, adversarial, probabilities, l2, labels, targets, betas, class_names=None,
                      title="a few test images across the betas"):
    """Rows: source digits; columns: the source, then its adversarial image at each beta.

    ``sources`` [K, H, W]; ``adversarial`` [B, K, H, W]; ``probabilities`` [B, K, C]; ``l2`` [B, K]. Each cell
    shows the target's probability and the L2 distance, framed green when the net predicts the target, red
    when not. All cells share one grey scale: [0, 1], widened to the images' range when they leave it.
    """
    k, b = len(sources), len(betas)
    scale = (min(0.0, float(np.min(adversarial))), max(1.0, float(np.max(adversarial))))
    if scale != (0.0, 1.0):
        title = f"{title}\n(one grey scale for all: [{scale[0]:.2f}, {scale[1]:.2f}] pixel units)"
    fig, axes = plt.subplots(k, b + 1, figsize=(1.45 * (b + 1), 1.6 * k + 0.3), squeeze=False)
    for i in range(k):
        t = int(targets[i])
        _show(axes[i, 0], sources[i], "source" if i == 0 else "", scale=scale)
        axes[i, 0].set_ylabel(f"{_name(class_names, labels[i])} -> {_name(class_names, t)}", fontsize=9)
        for j in range(b):
            p = np.asarray(probabilities[j][i])
            head = f"beta {betas[j]:g}\n" if i == 0 else ""
            ax = axes[i, j + 1]
            _show(ax, adversarial[j][i], f"{head}p={p[t]:.2f}, L2 {float(l2[j][i]):.2f}", fontsize=7, scale=scale)
            for side in ax.spines.values():
                side.set_edgecolor("green" if p.argmax() == t else "red")
                side.set_linewidth(2)
    fig.tight_layout()
    fig.suptitle(title, y=1.0, va="bottom")  # above the panels; save_figure crops to fit
    return fig


def robustness(eps, accuracy, attack="FGSM", title=None):
    """Test accuracy against eps, one line per variant: ``accuracy`` is {name: [E]}."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (name, acc), marker in zip(accuracy.items(), "osd^v<>"):
        ax.plot(eps, acc, marker + "-", label=name)
    ax.set_xlabel("eps (pixel units)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"robustness to {attack}")
    fig.tight_layout()
    return fig
